"""Checks of user options, shared by the measures and their handlers.

Each measure validates its options in one place (an options dataclass or a ``check_*`` function next
to the measure); the handler calls the same code at construction, so an option that cannot work is
refused before training starts, with the same message the function would give. These helpers keep
the messages uniform: every error names the option.

Example:
    >>> check_int("steps", 3, 1)
    3
    >>> check_int("steps", 0, 1)
    Traceback (most recent call last):
    ...
    ValueError: steps must be at least 1, got 0
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_int", "check_choice", "check_positive", "check_nonnegative", "check_bool", "check_fraction"]


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``; TypeError/ValueError naming ``name`` else."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """``value`` if it is one of ``choices``; ValueError naming ``name`` else."""
    if not isinstance(value, (str, int, float, type(None))) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_positive(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """``value`` as a float if it is a positive number (finite unless ``allow_inf``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (value > 0 and (math.isfinite(value) or (allow_inf and value == math.inf))):
        raise ValueError(f"{name} must be a positive {'' if allow_inf else 'finite '}number, got {value}")
    return float(value)


def check_nonnegative(name: str, value: Any, *, allow_inf: bool = False, unit: str = "") -> float:
    """``value`` as a float if it is a number ``≥ 0`` (finite unless ``allow_inf``); ``unit`` ends the message.

    Example:
        >>> check_nonnegative("warm_start_noise", 0)
        0.0
        >>> check_nonnegative("zero_tol", -1.0)
        Traceback (most recent call last):
        ...
        ValueError: zero_tol must be a non-negative finite number, got -1.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (value >= 0 and (math.isfinite(value) or (allow_inf and value == math.inf))):
        kind = "number" if allow_inf else "finite number"
        raise ValueError(f"{name} must be a non-negative {kind}{unit}, got {value}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool; TypeError naming ``name`` else."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_fraction(name: str, value: Any) -> float:
    """``value`` as a float if it is a number in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)
