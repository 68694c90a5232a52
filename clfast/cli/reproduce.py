"""``clfast reproduce three-scenarios``: the Split-MNIST comparison of van de Ven & Tolias (2019) under their
protocol (:mod:`clfast.cli.protocol`), one run per (setting, method, seed); prints one table per setting (mean ±
SEM over the seeds of the final average accuracy, in %) and writes ``results.json`` (``runs.json``: every run;
``results.png`` with ``--plot``).

Runs are independent (each seeds its own generators), so ``--jobs N`` runs N at a time in worker processes of
``--threads`` threads each: on a machine with C cores, ``--jobs C --threads 1`` is the fastest for this small MLP.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ..evaluation.plot import plot_method_bars
from ..plugins.per_sample import SAMPLE_LABELS
from .argtypes import comma_list, device_arg, int_arg, output_dir, strength_pairs
from .baselines import add_baselines_parser, run_baselines
from .protocol import (
    ACTIVE_CLASSES,
    BENCHMARKS,
    HPARAM_DEFAULTS,
    HPARAMS,
    PAPER_METHODS,
    PROTOCOL,
    SETTINGS,
    Options,
    check_method,
    method_config,
    method_name,
    run_one,
)
from .report import json_safe, sem

#: The methods ``--strength`` takes.
_STRENGTH_METHODS = ("ewc", "online-ewc", "si", "mas", "rwalk")
SETTING_NAMES = {"task": "task-incremental", "domain": "domain-incremental", "class": "class-incremental"}
BENCHMARK_NAMES = {"split-mnist": "Split-MNIST", "split-digits": "Split-Digits"}


def add_reproduce_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``clfast reproduce three-scenarios|avalanche-baselines [options]``."""
    p = sub.add_parser("reproduce", help="reproduce a published comparison under its protocol")
    which = p.add_subparsers(dest="study", required=True)
    q = which.add_parser("three-scenarios", help="van de Ven & Tolias (2019), Split-MNIST in the three settings",
                         description="Runs the methods of van de Ven & Tolias (2019), 'Three scenarios for continual "
                                     "learning', on Split-MNIST under their protocol and prints mean ± SEM over the "
                                     "seeds of the final average accuracy.")
    q.add_argument("--seeds", type=int_arg(1), default=5, help="runs per method and setting (default %(default)s)")
    q.add_argument("--first-seed", type=int_arg(0), default=1,
                   help="seeds are FIRST_SEED, FIRST_SEED+1, ... (the authors' comparison starts at 1; default "
                        "%(default)s); a seed fixes the digit order, the initialisation and the shuffles")
    q.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated (default %(default)s)")
    q.add_argument("--methods", default=",".join(PAPER_METHODS),
                   help="comma-separated from none, ewc, online-ewc, si (the paper's; default %(default)s) and "
                        "clfast's mas, rwalk, replay, replay+REGULARISER (e.g. replay+si)")
    q.add_argument("--iterations", type=int_arg(1), default=2000, help="per task (default %(default)s)")
    q.add_argument("--hparams", choices=sorted(HPARAMS), default="paper",
                   help="the authors' hyper-parameters of the paper's code or of their repository today (with its "
                        "Fisher labels and active classes) (default %(default)s)")
    q.add_argument("--fisher-labels", choices=SAMPLE_LABELS, default=None,
                   help="EWC's per-sample Fisher at the predicted class, the target, or all classes weighted "
                        "(default: pred with --hparams paper, all with current)")
    q.add_argument("--fisher-samples", type=int_arg(1), default=None,
                   help="at most this many samples per Fisher pass (default: all, as the paper)")
    q.add_argument("--active-classes", choices=ACTIVE_CLASSES, default=None,
                   help="class-incremental training: the output units of the classes seen so far or all 10 "
                        "(default: so-far with --hparams paper, all with current)")
    q.add_argument("--strength", action="append", default=[], metavar="METHOD=VALUE",
                   help="override a method's strength (ewc, online-ewc: the authors' λ; si: c; mas, rwalk: "
                        "clfast's); repeatable")
    q.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="split-mnist",
                   help="split-digits (8x8 digits) for quick checks (default %(default)s)")
    q.add_argument("--device", type=device_arg, default="cpu", help="default %(default)s")
    q.add_argument("--threads", type=int_arg(1), default=1, help="torch threads per run (default %(default)s)")
    q.add_argument("--jobs", type=int_arg(1), default=1, help="runs at a time, in worker processes (default "
                                                             "%(default)s)")
    q.add_argument("--out", type=Path, default=None, help="directory for results.json and runs.json")
    q.add_argument("--plot", action="store_true", help="also write results.png (into --out, default .)")
    add_baselines_parser(which)
    return q


def _setting(name: str) -> str:
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; choose from {', '.join(SETTINGS)}")
    return name


def run_reproduce(args: argparse.Namespace) -> int:
    """Runs ``clfast reproduce three-scenarios`` (or ``avalanche-baselines``: :mod:`clfast.cli.baselines`); the torch
    thread count is restored on return."""
    if args.study == "avalanche-baselines":
        return run_baselines(args)
    settings = comma_list(args.settings, _setting, "settings")
    methods = comma_list(args.methods, check_method, "methods")
    defaults = HPARAM_DEFAULTS[args.hparams]
    options = Options(iterations=args.iterations, hparams=args.hparams,
                      fisher_labels=args.fisher_labels or defaults["fisher_labels"],
                      fisher_samples=args.fisher_samples,
                      active_classes=args.active_classes or defaults["active_classes"], benchmark=args.benchmark,
                      device=args.device, strengths=strength_pairs(args.strength, _STRENGTH_METHODS, "METHOD"))
    out_dir = output_dir(args.out, args.plot)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    jobs = [(s, m, seed) for s in settings for m in methods for seed in seeds]
    print(f"clfast reproduce three-scenarios: {len(jobs)} runs ({', '.join(settings)} x "
          f"{', '.join(methods)} x seeds {seeds[0]}..{seeds[-1]}), {args.iterations} iterations per task, "
          f"{args.jobs} at a time")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(args.threads)
        runs = _run_all(jobs, options, args.jobs, args.threads)
    finally:
        torch.set_num_threads(threads)
    results = {s: {m: _summary([r["accuracy"] for r in runs if r["setting"] == s and r["method"] == m])
                   for m in methods} for s in settings}
    for s in settings:
        print(format_table(s, results[s], len(seeds), options))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        document = {"protocol": _protocol(options, settings, methods, seeds), "results": results}
        (out_dir / "results.json").write_text(json.dumps(json_safe(document), indent=2))
        (out_dir / "runs.json").write_text(json.dumps(json_safe(runs), indent=2))
        if args.plot:
            plot_method_bars({SETTING_NAMES[s]: {method_name(m): r for m, r in results[s].items()}
                              for s in settings}, out_dir / "results.png",
                             title=f"{BENCHMARK_NAMES[args.benchmark]}, {len(seeds)} seed(s): final average "
                                   "accuracy (%), mean ± SEM")
    return 0


def _run_all(jobs: list[tuple[str, str, int]], options: Options, n_jobs: int, threads: int) -> list[dict[str, Any]]:
    """Every run, in ``jobs`` order, each reported as it ends."""
    if n_jobs == 1:
        return [_report(run_one(*job, options)) for job in jobs]
    # spawn: a fork of a process that has run torch may hang in its thread pools
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=context, initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(run_one, *job, options) for job in jobs]
        return [_report(f.result()) for f in futures]


def _report(run: dict[str, Any]) -> dict[str, Any]:
    ms = 1e3 * run["train_s"] / max(run["iterations"], 1)
    print(f"  {run['setting']:<6} {method_name(run['method']):<16} seed {run['seed']:<3} "
          f"{run['accuracy']:6.2f}%  (trained in {run['train_s']:.1f} s, {ms:.2f} ms per iteration)", flush=True)
    return run


def _summary(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "sem": sem(values), "runs": values}


def format_table(setting: str, results: dict[str, dict[str, Any]], n_seeds: int, options: Options) -> str:
    """One setting's table: a row per method, mean ± SEM in %."""
    lines = ["", f"{BENCHMARK_NAMES[options.benchmark]}, {SETTING_NAMES[setting]} ({n_seeds} "
                 f"seed{'s' if n_seeds > 1 else ''}, {options.iterations} iterations per task, --hparams "
                 f"{options.hparams})", f"  {'method':<16} accuracy (%)"]
    for m, r in results.items():
        spread = "" if r["sem"] is None else f" ± {r['sem']:.2f}"
        lines.append(f"  {method_name(m):<16} {r['mean']:6.2f}{spread}")
    return "\n".join(lines)


def _protocol(options: Options, settings: list[str], methods: list[str], seeds: list[int]) -> dict[str, Any]:
    """``results.json``'s "protocol": the fixed protocol, this run's options and every method's configuration."""
    return {**PROTOCOL, "paper": "van de Ven & Tolias (2019), Three scenarios for continual learning",
            "benchmark": options.benchmark, "iterations_per_task": options.iterations, "seeds": seeds,
            "digit_order": "clfast.scenarios.authors_digit_order(seed)", "hparams": options.hparams,
            "fisher_labels": options.fisher_labels, "fisher_samples": options.fisher_samples,
            "active_classes": options.active_classes, "device": options.device, "settings": settings,
            "methods": methods, "configs": {s: {m: method_config(m, s, options) for m in methods} for s in settings}}
