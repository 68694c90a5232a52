"""Summaries of an accuracy matrix ``A[i][j]`` = accuracy on test experience j after training experience i.

Entries that were never measured are NaN. These functions are plain arithmetic on a list of rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Matrix = Sequence[Sequence[float]]


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def average_accuracy(matrix: Matrix, row: int = -1) -> float:
    """Mean accuracy over the experiences measured in one row (default: the last one, after all training)."""
    if not matrix:
        raise ValueError("the accuracy matrix is empty")
    vals = _finite(matrix[row])
    return sum(vals) / len(vals) if vals else math.nan


def average_accuracy_per_step(matrix: Matrix, seen_only: bool = False) -> list[float]:
    """``average_accuracy`` of every row; with ``seen_only``, row i averages columns 0..i (experiences seen)."""
    out = []
    for i, r in enumerate(matrix):
        vals = _finite(r[: i + 1] if seen_only else r)
        out.append(sum(vals) / len(vals) if vals else math.nan)
    return out


def forgetting(matrix: Matrix) -> list[float]:
    """Avalanche's per-experience forgetting after the last row: ``A[j][j] - A[last][j]`` for j < last.

    ``A[j][j]`` is the accuracy measured right after training on j (Avalanche's "initial" value, not
    the maximum over time). Experiences not yet trained (j >= last) get NaN.
    """
    if not matrix:
        raise ValueError("the accuracy matrix is empty")
    last = len(matrix) - 1
    out = []
    for j in range(len(matrix[last])):
        out.append(matrix[j][j] - matrix[last][j] if j < last and j < len(matrix[j]) else math.nan)
    return out


def average_forgetting(matrix: Matrix) -> float:
    """Mean of :func:`forgetting` over the experiences it is defined for (0 when none, like Avalanche)."""
    vals = _finite(forgetting(matrix))
    return sum(vals) / len(vals) if vals else 0.0


def format_matrix(matrix: Matrix, percent: bool = True) -> str:
    """A text table: one row per training experience, one column per test experience."""
    if not matrix:
        return "(empty accuracy matrix)"
    n_cols = max(len(r) for r in matrix)
    head = "after exp  " + " ".join(f"{'exp ' + str(j):>7}" for j in range(n_cols))
    lines = [head]
    for i, r in enumerate(matrix):
        cells = []
        for j in range(n_cols):
            v = r[j] if j < len(r) else math.nan
            cells.append("-".rjust(7) if math.isnan(v) else (f"{v * 100:7.1f}" if percent else f"{v:7.3f}"))
        lines.append(f"{i:>9}  " + " ".join(cells))
    return "\n".join(lines)
