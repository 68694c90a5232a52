"""``argparse`` value types of the command line, built on :mod:`clfast._checks` (the one set of range checks).

Each type turns a string into a value or raises ``argparse.ArgumentTypeError``, which ``argparse`` prints as
``argument --NAME: expected ..., got ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from .._checks import check_float, check_int


def _value_type(convert: Callable[[str], Any], check: Callable[[Any], Any], not_parsed: str,
                out_of_range: str) -> Callable[[str], Any]:
    """A type that converts the text (else "expected ``not_parsed``") and checks the value (else "expected
    ``out_of_range``"); the checker's own message is replaced by one phrased for the command line."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {not_parsed}, got {text!r}") from None
        try:
            return check(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {out_of_range}, got {text}") from None

    return parse


def int_arg(low: int) -> Callable[[str], int]:
    """An integer ``>= low`` (:func:`clfast._checks.check_int`)."""
    what = "a positive integer" if low == 1 else f"an integer >= {low}"
    return _value_type(int, lambda v: check_int("value", v, low=low), what, what)


def float_arg(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``low_open``; :func:`clfast._checks.check_float`)."""
    bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
    return _value_type(float, lambda v: check_float("value", v, low=low, high=high, low_open=low_open),
                       "a number", f"a number in {bound}")


def device_arg(text: str) -> str:
    """A torch device string naming the CPU or an available CUDA device (kept as text: it is part of the
    run's configuration, which is written as JSON)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a device: {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"only cpu and cuda are supported, got {text!r}")
    return text
