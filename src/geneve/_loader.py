"""Loading a user's modifier from ``MODULE:CALLABLE`` (``MODULE`` alone means ``:modifier``)."""

from __future__ import annotations

import importlib
from typing import cast

from ._pipeline import Modifier

__all__ = ["RulesError", "load_modifier"]


class RulesError(Exception):
    """The --rules value does not name a callable that can be imported."""


def load_modifier(spec: str) -> Modifier:
    module_name, _, attr = spec.partition(":")
    attr = attr or "modifier"
    if not module_name:
        raise RulesError(f"--rules {spec!r}: expected MODULE:CALLABLE")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or the module's own code failing
        raise RulesError(f"--rules {spec!r}: cannot import {module_name}: {err}") from err
    target: object = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise RulesError(f"--rules {spec!r}: {module_name} has no {attr}") from None
    if not callable(target):
        raise RulesError(f"--rules {spec!r}: {attr} is not callable")
    return cast(Modifier, target)
