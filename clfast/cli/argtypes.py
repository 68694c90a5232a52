"""``argparse`` value types of the command line, built on :mod:`clfast._checks` (the one set of range checks).

Each type turns a string into a value or raises ``argparse.ArgumentTypeError``, which ``argparse`` prints as
``argument --NAME: expected ..., got ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._checks import check_float, check_int
from ..evaluation.plot import MATPLOTLIB_MISSING, require_matplotlib
from .errors import CLIError


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


def comma_list(text: str, check: Callable[[str], str], option: str) -> list[str]:
    """The items of ``--OPTION a,b,c``, each passed through ``check`` (which raises ValueError for a bad one),
    without repeats, in order; an empty list or a bad item is a usage :class:`CLIError` naming the option."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise CLIError(f"argument --{option}: expected a comma-separated list", usage=True)
    try:
        return list(dict.fromkeys(check(s) for s in items))
    except ValueError as err:
        raise CLIError(f"argument --{option}: {err}", usage=True) from None


def strength_pairs(pairs: Sequence[str], names: Sequence[str], what: str) -> dict[str, float]:
    """``--strength NAME=VALUE`` (repeatable) as ``{NAME: VALUE}``: NAME one of ``names`` (``what`` says what it
    names), VALUE a number in [0, 1e15]; anything else is a usage :class:`CLIError`."""
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in names:
            raise CLIError(f"argument --strength: {pair!r}: {what} is one of {', '.join(names)}", usage=True)
        try:
            out[name] = float_arg(0.0, 1e15)(value)
        except argparse.ArgumentTypeError as err:
            raise CLIError(f"argument --strength: {pair!r}: {err}", usage=True) from None
    return out


def output_dir(out: Path | None, plot: bool) -> Path | None:
    """Where a command writes its files: ``--out``, else the current directory when only ``--plot`` is given, else
    nowhere. With ``--plot`` matplotlib must be importable (a :class:`CLIError` saying how to install it)."""
    if plot:
        try:
            require_matplotlib()
        except ImportError:
            raise CLIError(f"--plot: {MATPLOTLIB_MISSING}") from None
    return out if out is not None else (Path(".") if plot else None)
