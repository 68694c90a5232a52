"""What ``clfast train`` reports: the summary of a run, its text report, ``results.json``,
``accuracy_matrix.csv``, the ``accuracy_matrix.png`` heatmap and the model digest."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..distributed import unwrap
from ..evaluation import EvaluationPlugin, average_accuracy, forgetting, format_matrix
from ..evaluation.plot import plot_accuracy_matrix
from ..sharding import whole


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None``, paths as strings and tuples as lists (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def sem(values: Sequence[float]) -> float | None:
    """Standard error of the mean: the sample standard deviation (n − 1) over √n; None for one value."""
    if len(values) < 2:
        return None
    return statistics.stdev(values) / math.sqrt(len(values))


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's state (names, dtypes, shapes, bytes): equal digests mean identical models. A
    DistributedDataParallel wrapper is looked through (its names would carry a ``module.`` prefix); FSDP2's
    sharded tensors are gathered whole (a collective: every rank calls this)."""
    h = hashlib.sha256()
    for name, t in unwrap(model).state_dict().items():
        t = whole(t).detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def summarize(args: argparse.Namespace, benchmark: Any, strategy: Any, evaluator: EvaluationPlugin,
              timings: dict[str, Any]) -> dict[str, Any]:
    """The run's summary (``results.json``): configuration, scenario, accuracy matrix, average accuracy,
    forgetting, timings (``timings`` holds total_s, setup_s, eval_s and train_per_experience_s), last metric
    values and the model digest."""
    matrix = evaluator.accuracy_matrix("test")
    last = evaluator.get_last_metrics()
    iterations = strategy.clock.train_iterations
    train_s = sum(timings["train_per_experience_s"])
    return {
        "config": {k: json_safe(v) for k, v in vars(args).items() if k != "command"},
        "scenario": {"n_experiences": len(benchmark.train_stream), "n_classes": benchmark.n_classes,
                     "classes_per_experience": [list(e.classes_in_this_experience) for e in benchmark.train_stream]},
        "accuracy_matrix": matrix,
        "average_accuracy": average_accuracy(matrix),
        "stream_accuracy": last.get("Top1_Acc_Stream/eval_phase/test_stream/Task000"),
        "forgetting": forgetting(matrix),
        "average_forgetting": last.get("StreamForgetting/eval_phase/test_stream"),
        "timings": {"total_s": timings["total_s"], "setup_s": timings["setup_s"], "train_s": train_s,
                    "eval_s": timings["eval_s"], "train_per_experience_s": timings["train_per_experience_s"],
                    "train_iterations": iterations,
                    "train_iteration_mean_s": train_s / iterations if iterations else None},
        "metrics": last,
        "model_sha256": model_digest(strategy.model),
    }


def format_report(summary: dict[str, Any]) -> str:
    """The printed report: accuracy matrix (percent), averages, forgetting, timings."""
    t = summary["timings"]
    fg = ", ".join("-" if not math.isfinite(v) else f"{100 * v:.1f}" for v in summary["forgetting"])
    per_exp = ", ".join(f"{s:.2f}" for s in t["train_per_experience_s"])
    lines = [
        "",
        "accuracy matrix (%): row i = after training experience i, column j = test experience j",
        format_matrix(summary["accuracy_matrix"]),
        "",
        f"average accuracy (last row):   {100 * summary['average_accuracy']:.2f}%",
    ]
    if summary["stream_accuracy"] is not None:
        lines.append(f"stream accuracy (all samples): {100 * summary['stream_accuracy']:.2f}%")
    if summary["average_forgetting"] is not None:
        lines.append(f"average forgetting:            {100 * summary['average_forgetting']:.2f}%  "
                     f"(per experience: {fg})")
    it = t["train_iteration_mean_s"]
    lines += [
        f"time: total {t['total_s']:.2f} s (setup {t['setup_s']:.2f} s, train {t['train_s']:.2f} s, "
        f"eval {t['eval_s']:.2f} s)",
        f"      per training experience: {per_exp} s; "
        + (f"{1e3 * it:.2f} ms per iteration ({t['train_iterations']} iterations)" if it else ""),
    ]
    return "\n".join(lines)


def write_outputs(summary: dict[str, Any], out_dir: Path, plot: bool) -> None:
    """``results.json`` and ``accuracy_matrix.csv`` (unmeasured entries empty) into ``out_dir``; with ``plot``
    also ``accuracy_matrix.png``."""
    (out_dir / "results.json").write_text(json.dumps(json_safe(summary), indent=2))
    with (out_dir / "accuracy_matrix.csv").open("w", newline="") as f:
        w = csv.writer(f)
        matrix = summary["accuracy_matrix"]
        n_cols = max((len(r) for r in matrix), default=0)
        w.writerow(["after_exp", *[f"exp{j}" for j in range(n_cols)]])
        for i, row in enumerate(matrix):
            w.writerow([i, *["" if not math.isfinite(v) else f"{v:.6f}" for v in row]])
    if plot:
        cfg = summary["config"]
        plot_accuracy_matrix(summary["accuracy_matrix"], out_dir / "accuracy_matrix.png",
                             title=f"{cfg['strategy']} on {cfg['scenario']}")
