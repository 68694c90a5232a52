"""Accuracy-matrix heatmap, per-method bar charts and accuracy against cost (matplotlib, imported only here and
only when called)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

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


def plot_method_bars(results: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str | os.PathLike[str],
                     title: str = "") -> None:
    """Writes one bar chart per group (``results[group][method]`` with ``"mean"`` and ``"sem"``, in %, the SEM
    None for a single run) side by side as a PNG, the SEM as error bars. Uses the Agg canvas directly."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = list(results)
    width = max((len(results[g]) for g in groups), default=1)
    fig = Figure(figsize=(1.0 + (0.6 * width + 0.8) * max(len(groups), 1), 3.6))
    FigureCanvasAgg(fig)
    for k, group in enumerate(groups):
        ax = fig.add_subplot(1, max(len(groups), 1), k + 1)
        names = list(results[group])
        means = [results[group][m]["mean"] for m in names]
        errors = [results[group][m]["sem"] or 0.0 for m in names]
        ax.bar(range(len(names)), means, yerr=errors, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_title(group, fontsize=9)
        if k == 0:
            ax.set_ylabel("accuracy (%)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)


def plot_accuracy_vs_cost(results: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str],
                          title: str = "") -> None:
    """Writes a scatter plot of final average accuracy (%) against cost (time per iteration over Naive's), one
    labelled point per strategy (``results[name]["accuracy"]`` and ``["cost_over_naive"]``, each with ``"mean"``
    and ``"sem"``, the SEM None for a single run), the SEMs as error bars, as a PNG."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, r in results.items():
        acc, cost = r["accuracy"], r["cost_over_naive"]
        ax.errorbar(cost["mean"], acc["mean"], xerr=cost["sem"] or 0.0, yerr=acc["sem"] or 0.0, fmt="o",
                    capsize=3)
        ax.annotate(name, (cost["mean"], acc["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("time per training iteration over Naive's")
    ax.set_ylabel("final average accuracy (%)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
