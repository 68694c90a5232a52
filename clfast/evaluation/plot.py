"""Accuracy-matrix heatmap (matplotlib, imported only here and only when called)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

MATPLOTLIB_MISSING = "plotting needs matplotlib: pip install matplotlib (or pip install 'clfast[plot]')"


def require_matplotlib() -> None:
    """Raises ``ImportError`` with an install hint when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(MATPLOTLIB_MISSING) from err


def plot_accuracy_matrix(matrix: Sequence[Sequence[float]], path: str | os.PathLike[str],
                         title: str = "accuracy matrix") -> None:
    """Writes ``matrix`` (rows: after training experience i; columns: test experience j) as a PNG heatmap
    with the values in percent. Uses the Agg canvas directly, leaving pyplot's backend alone."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = len(matrix), max((len(r) for r in matrix), default=0)
    data = [[(r[j] if j < len(r) else math.nan) for j in range(n_cols)] for r in matrix]
    fig = Figure(figsize=(1.0 + 0.7 * max(n_cols, 2), 0.8 + 0.6 * max(n_rows, 2)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(data, vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(n_rows):
        for j in range(n_cols):
            v = data[i][j]
            if not math.isnan(v):
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=8,
                        color="black" if v > 0.6 else "white")
    ax.set_xticks(range(n_cols))
    ax.set_yticks(range(n_rows))
    ax.set_xlabel("test experience")
    ax.set_ylabel("after training experience")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
