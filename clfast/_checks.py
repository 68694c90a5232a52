"""Hyper-parameter validation shared by the public constructors: a clear ``TypeError``/``ValueError`` that
names the argument."""

from __future__ import annotations

import math
from typing import Any


def check_float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float in [low, high] (each end open with ``low_open`` / ``high_open``), else a
    clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    below = low is not None and (value < low or (low_open and value == low))
    above = high is not None and (value > high or (high_open and value == high))
    if below or above:
        # The whole allowed interval, in interval notation (a missing bound is the open end at infinity).
        left = "(-inf" if low is None else f"{'(' if low_open else '['}{low}"
        right = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {left}, {right}, got {value}")
    return value


def is_int(value: Any) -> bool:
    """True for a Python ``int`` that is not a ``bool`` (``True`` is an ``int`` to ``isinstance``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, *, low: int, high: int | None = None,
              type_error: type[Exception] = TypeError) -> int:
    """``value`` if it is an int (not a bool) in [low, high], else a clear error.

    A value that is not an int raises ``type_error``: ``TypeError`` by default; the templates pass
    ``ValueError``, the error they have always raised for a bad minibatch size or epoch count.
    """
    if not is_int(value):
        raise type_error(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool, else a ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """``value`` if it is one of ``choices``, else a ``ValueError`` that lists them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
