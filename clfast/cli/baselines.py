"""``clfast reproduce avalanche-baselines``: the reproduction targets that Avalanche's continual-learning-baselines
set for SI and RWalk on task-incremental Split-MNIST, run with clfast's plugins under that set-up.

The set-up (the baselines' for both): Split-MNIST in five tasks of two digits (0/1, ..., 8/9) with task labels, a
multi-head MLP with two hidden layers of 256 units and a 2-unit head per task (:class:`clfast.nn.MultiHeadMLP`),
inputs normalised with MNIST's mean 0.1307 and standard deviation 0.3081, Adam at lr 1e-3, 10 epochs of
minibatches of 64 per task (shuffled, the last one kept), evaluated after the last task on the whole test stream.
SI: ``SynapticIntelligencePlugin(si_lambda=1, eps=0.1)`` (Avalanche's definition otherwise: Ω clipped above at
0.001), target 97%. RWalk: ``RWalkPlugin(ewc_lambda=0.1, ewc_alpha=0.9, delta_t=10)``, target 99%. The figure is
the stream accuracy (all test samples of the five tasks together), the metric the baselines check; the mean of the
per-task accuracies is reported too.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..evaluation import AccuracyMatrix, EvaluationPlugin
from ..nn import MultiHeadMLP
from ..plugins import RWalkPlugin, SynapticIntelligencePlugin
from ..scenarios import three_scenarios_split_mnist
from ..strategies import Naive
from .argtypes import comma_list, device_arg, int_arg, output_dir
from .report import json_safe, sem

#: Per method: the plugin, its keywords and the baselines' target stream accuracy (%).
METHODS: dict[str, dict[str, Any]] = {
    "si": {"plugin": SynapticIntelligencePlugin, "kwargs": {"si_lambda": 1.0, "eps": 0.1}, "target": 97.0},
    "rwalk": {"plugin": RWalkPlugin, "kwargs": {"ewc_lambda": 0.1, "ewc_alpha": 0.9, "delta_t": 10}, "target": 99.0},
}
SETUP = {"benchmark": "Split-MNIST, task-incremental, 5 tasks of 2 digits (0/1 ... 8/9)", "hidden_layers": [256, 256],
         "heads": "2 units per task", "inputs": "(x - 0.1307) / 0.3081", "optimizer": "adam", "lr": 1e-3,
         "epochs": 10, "batch_size": 64, "metric": "stream accuracy after the last task (%)"}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def add_baselines_parser(which: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``clfast reproduce avalanche-baselines [options]``."""
    q = which.add_parser("avalanche-baselines", help="Avalanche's SI and RWalk targets on task-incremental "
                                                     "Split-MNIST",
                         description="Runs SI and RWalk under the set-up of Avalanche's continual-learning-baselines "
                                     "and prints the stream accuracy against their targets (97%%, 99%%).")
    q.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default %(default)s)")
    q.add_argument("--seeds", type=int_arg(1), default=1, help="runs per method, seeds 0, 1, ... (default "
                                                               "%(default)s)")
    q.add_argument("--epochs", type=int_arg(1), default=SETUP["epochs"], help="per task (default %(default)s)")
    q.add_argument("--device", type=device_arg, default="cpu", help="default %(default)s")
    q.add_argument("--threads", type=int_arg(1), default=1, help="torch threads (default %(default)s)")
    q.add_argument("--out", type=Path, default=None, help="directory for results.json")
    return q


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - MNIST_MEAN) / MNIST_STD


def _method(name: str) -> str:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return name


def run_one(method: str, seed: int, epochs: int, device: str) -> dict[str, Any]:
    """One run of ``method`` under the set-up; returns the stream accuracy and per-task accuracies (%) and the
    training time."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    bench = three_scenarios_split_mnist("task", train_transform=_normalise, eval_transform=_normalise)
    model = MultiHeadMLP(784, SETUP["hidden_layers"][0], len(SETUP["hidden_layers"]), initial_out_features=2)
    spec = METHODS[method]
    evaluator = EvaluationPlugin(AccuracyMatrix())
    strategy = Naive(model, torch.optim.Adam(model.parameters(), lr=SETUP["lr"]), nn.CrossEntropyLoss(),
                     train_mb_size=SETUP["batch_size"], train_epochs=epochs, eval_mb_size=1000, device=device,
                     plugins=[spec["plugin"](**spec["kwargs"])], evaluator=evaluator)
    t0 = time.perf_counter()
    for exp in bench.train_stream:
        strategy.train(exp)
    train_s = time.perf_counter() - t0
    strategy.eval(bench.test_stream)
    per_task = [100 * a for a in evaluator.accuracy_matrix("test")[-1]]
    sizes = [len(exp.dataset) for exp in bench.test_stream]
    stream = sum(a * n for a, n in zip(per_task, sizes, strict=True)) / sum(sizes)
    return {"method": method, "seed": seed, "stream_accuracy": stream, "per_task": per_task,
            "average_accuracy": sum(per_task) / len(per_task), "train_s": train_s,
            "iterations": strategy.clock.train_iterations}


def run_baselines(args: argparse.Namespace) -> int:
    """Runs ``clfast reproduce avalanche-baselines``; the torch thread count is restored on return."""
    methods = comma_list(args.methods, _method, "methods")
    out_dir = output_dir(args.out, False)
    threads = torch.get_num_threads()
    runs = []
    try:
        torch.set_num_threads(args.threads)
        for seed in range(args.seeds):
            for m in methods:
                r = run_one(m, seed, args.epochs, args.device)
                runs.append(r)
                print(f"  {m:<6} seed {seed}  stream accuracy {r['stream_accuracy']:6.2f}%  (trained in "
                      f"{r['train_s']:.1f} s)", flush=True)
    finally:
        torch.set_num_threads(threads)
    results = {}
    lines = ["", f"Avalanche's baselines, task-incremental Split-MNIST ({args.seeds} seed(s), {args.epochs} epochs "
                 "per task): stream accuracy (%)",
             f"  {'method':<7} {'target':>7} {'clfast':>16} {'per-task mean':>14}"]
    for m in methods:
        values = [r["stream_accuracy"] for r in runs if r["method"] == m]
        spread = sem(values)
        results[m] = {"target": METHODS[m]["target"], "mean": statistics.fmean(values), "sem": spread,
                      "runs": values, "kwargs": METHODS[m]["kwargs"]}
        mean_tasks = statistics.fmean(r["average_accuracy"] for r in runs if r["method"] == m)
        cell = f"{results[m]['mean']:.2f}" + ("" if spread is None else f" ± {spread:.2f}")
        lines.append(f"  {m:<7} {METHODS[m]['target']:>7.1f} {cell:>16} {mean_tasks:>14.2f}")
    print("\n".join(lines))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        doc = {"setup": {**SETUP, "epochs": args.epochs}, "results": results, "runs": runs}
        (out_dir / "results.json").write_text(json.dumps(json_safe(doc), indent=2))
    return 0
