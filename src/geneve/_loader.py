"""Loading a user's modifier from ``MODULE:CALLABLE`` (``MODULE`` alone means ``:modifier``).

``CALLABLE`` is the modifier itself, or a factory marked with :func:`modifier_factory`: called
once, without arguments, at load time, it returns the modifier (say, one configured from the
environment); a ``ValueError`` it raises is the one-line reason the load fails.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, as the backport (a dependency on 3.10 only)
    import tomli as tomllib

from ._pipeline import Modifier, check_modifier

__all__ = ["RulesError", "RulesSource", "load_modifier", "load_rules", "modifier_factory"]

_FACTORY = "__geneve_modifier_factory__"
_F = TypeVar("_F", bound=Callable[[], object])


class RulesError(Exception):
    """The --rules value does not name a callable that can be imported."""


def modifier_factory(function: _F) -> _F:
    """Mark ``function`` as a factory: ``--rules MODULE:function`` loads what it returns."""
    setattr(function, _FACTORY, True)
    return function


def load_modifier(spec: str, *, reload: bool = False) -> Modifier:
    """The modifier ``spec`` names; with ``reload``, its module is read again first (SIGHUP)
    and a factory is called again."""
    target = _lookup(spec, "--rules", reload, default="modifier")
    attr = spec.partition(":")[2] or "modifier"
    if getattr(target, _FACTORY, False) and callable(target):
        try:
            target = target()
        except ValueError as err:  # the factory's word on its configuration
            raise RulesError(f"--rules {spec!r}: {err}") from err
    if not callable(target):
        raise RulesError(f"--rules {spec!r}: {attr} is not callable")
    try:
        check_modifier(target)
    except TypeError as err:
        raise RulesError(f"--rules {spec!r}: {err}") from None
    return cast(Modifier, target)


@dataclass(frozen=True)
class RulesSource:
    """Where a modifier comes from, so that a reload (SIGHUP) can read it again.

    ``rules``: ``MODULE:CALLABLE`` as :func:`load_modifier` takes it. Or ``factory``: a
    ``MODULE:CALLABLE`` called with one argument, the table read from the TOML file
    ``config`` (an empty one without a file), which returns the modifier: rules that take
    arguments. A reload imports the module and reads the file again.
    """

    rules: str | None = None
    factory: str | None = None
    config: str | None = None

    def __str__(self) -> str:
        if self.factory is not None:
            return f"{self.factory}({self.config or ''})"
        return self.rules or ""


def load_rules(source: RulesSource | str, *, reload: bool = False) -> Modifier:
    """The modifier ``source`` names (a string is ``RulesSource(rules=...)``)."""
    if isinstance(source, str):
        return load_modifier(source, reload=reload)
    if source.factory is None:
        if source.config is not None:
            raise RulesError("--rules-config needs --rules-factory: the factory takes the table")
        if source.rules is None:
            raise RulesError("no rules named")
        return load_modifier(source.rules, reload=reload)
    table: dict[str, Any] = {}
    if source.config is not None:
        try:
            with open(source.config, "rb") as stream:
                table = tomllib.load(stream)
        except OSError as err:
            raise RulesError(f"--rules-config {source.config}: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise RulesError(f"--rules-config {source.config}: not TOML: {err}") from None
    factory = _import(source.factory, "--rules-factory", reload)
    try:
        target = factory(table)
    except (ValueError, TypeError, KeyError) as err:  # the factory's word on its table
        why = f"{type(err).__name__}: {err}"
        raise RulesError(f"--rules-factory {source.factory!r}: {why}") from err
    try:
        check_modifier(target)
    except TypeError as err:
        raise RulesError(
            f"--rules-factory {source.factory!r} returned no modifier: {err}"
        ) from None
    return cast(Modifier, target)


def _lookup(spec: str, flag: str, reload: bool, default: str | None) -> object:
    """What ``MODULE:NAME`` names (``MODULE`` alone: ``default``, when there is one), its
    module imported, or read again with ``reload``; RulesError in one line otherwise."""
    module_name, _, attr = spec.partition(":")
    attr = attr or (default or "")
    if not module_name or not attr:
        raise RulesError(f"{flag} {spec!r}: expected MODULE:CALLABLE")
    try:
        module = importlib.import_module(module_name)
        if reload:
            importlib.invalidate_caches()
            module = importlib.reload(module)
    except (Exception, SystemExit, KeyboardInterrupt) as err:  # not found, or its code failing
        why = f"{type(err).__name__} {err}".strip() if not isinstance(err, Exception) else err
        raise RulesError(f"{flag} {spec!r}: cannot import {module_name}: {why}") from err
    target: object = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise RulesError(f"{flag} {spec!r}: {module_name} has no {attr}") from None
        except Exception as err:  # a __getattr__ of the module's own that fails
            raise RulesError(f"{flag} {spec!r}: reading {attr} failed: {err}") from err
    return target


def _import(spec: str, flag: str, reload: bool) -> Callable[[Any], object]:
    target = _lookup(spec, flag, reload, default=None)
    if not callable(target):
        raise RulesError(f"{flag} {spec!r}: {spec.partition(':')[2]} is not callable")
    return cast(Callable[[Any], object], target)
