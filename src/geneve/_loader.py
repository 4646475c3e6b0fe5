"""Loading a user's modifier from ``MODULE:CALLABLE`` (``MODULE`` alone means ``:modifier``).

``CALLABLE`` is the modifier itself, or a factory marked with :func:`modifier_factory`: called
once, without arguments, at load time, it returns the modifier (say, one configured from the
environment); a ``ValueError`` it raises is the one-line reason the load fails.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeVar, cast

from ._pipeline import Modifier, check_modifier

__all__ = ["RulesError", "load_modifier", "modifier_factory"]

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
    module_name, _, attr = spec.partition(":")
    attr = attr or "modifier"
    if not module_name:
        raise RulesError(f"--rules {spec!r}: expected MODULE:CALLABLE")
    try:
        module = importlib.import_module(module_name)
        if reload:
            importlib.invalidate_caches()
            module = importlib.reload(module)
    except (Exception, SystemExit, KeyboardInterrupt) as err:  # not found, or its code failing
        why = f"{type(err).__name__} {err}".strip() if not isinstance(err, Exception) else err
        raise RulesError(f"--rules {spec!r}: cannot import {module_name}: {why}") from err
    target: object = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise RulesError(f"--rules {spec!r}: {module_name} has no {attr}") from None
        except Exception as err:  # a __getattr__ of the module's own that fails
            raise RulesError(f"--rules {spec!r}: reading {attr} failed: {err}") from err
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
