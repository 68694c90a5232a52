"""``clfast train``: trains a strategy over a whole benchmark stream and reports the accuracy matrix.

After every training experience the model is evaluated on the whole test stream; the rows of the
accuracy matrix are those evaluations. Prints the matrix, average accuracy, forgetting and timings; with
``--out`` writes ``results.json``, ``accuracy_matrix.csv`` and the metric history (``metrics.json``,
``metrics.csv``); with ``--plot`` an ``accuracy_matrix.png`` heatmap. With ``--checkpoint-dir`` a checkpoint
follows every experience, and ``--resume`` continues from it (:mod:`clfast.cli.resume`).
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from typing import Any

import torch

from .. import distributed as dist
from . import parallel, resume
from .errors import CLIError
from .report import format_report, summarize, write_outputs
from .setup import Run, build_run, resolve_options


def run_train(args: argparse.Namespace) -> int:
    """Runs ``clfast train`` with parsed arguments; returns the exit code (errors raise
    :class:`clfast.cli.errors.CLIError`). The torch thread count is restored on return (the command may run
    inside another program, e.g. the tests)."""
    resolve_options(args)
    threads = torch.get_num_threads()
    try:
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        with parallel.process_group(args):
            if not dist.is_main_process():  # under torchrun, rank 0 alone prints and writes
                args.quiet, args.plot, args.out = True, False, None
            return _run_train(args)
    finally:
        torch.set_num_threads(threads)


def _run_train(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    run = build_run(args)
    setup_s = time.perf_counter() - t_start
    if not args.quiet:
        print(_header(args, run))
    start, resumed = 0, {}
    if args.resume:
        start, resumed = resume.load_for_resume(args, run.strategy)
        if not args.quiet:
            print(f"clfast train: resuming after {start} experience(s) from {args.checkpoint_dir}")
    timings = _train_stream(args, run, start, resumed)
    run.evaluator.close()
    timings.update(total_s=time.perf_counter() - t_start, setup_s=setup_s)
    summary = summarize(args, run.benchmark, run.strategy, run.evaluator, timings)
    if not dist.is_main_process():
        return 0
    print(format_report(summary))
    if run.out_dir is not None:
        write_outputs(summary, run.out_dir, args.plot)
    return 0


def _header(args: argparse.Namespace, run: Run) -> str:
    bench = run.benchmark
    return (f"clfast train: {args.strategy} on {args.scenario} ({len(bench.train_stream)} experiences, "
            f"{bench.n_classes} classes), model {run.model_name} "
            f"({sum(p.numel() for p in run.model.parameters()):,} parameters), device {run.device}")


def _train_stream(args: argparse.Namespace, run: Run, start: int, resumed: dict[str, Any]) -> dict[str, Any]:
    """Trains on the experiences from ``start`` on, evaluating on the test stream after each and writing a
    checkpoint after each with ``--checkpoint-dir``; returns the training and evaluation times (those of the
    interrupted run included)."""
    train_exp_s: list[float] = list(resumed.get("train_exp_s", []))
    eval_s = float(resumed.get("eval_s", 0.0))
    for position, exp in enumerate(run.benchmark.train_stream):
        if position < start:
            continue
        if args.checkpoint_every is not None:
            checkpoints = run.strategy.in_experience_checkpoints
            checkpoints.every = args.checkpoint_every
            checkpoints.writer = functools.partial(_save_inside, args, position,
                                                   {"train_exp_s": list(train_exp_s), "eval_s": eval_s})
        t0 = time.perf_counter()
        try:
            run.strategy.train(exp)
        except ValueError as err:  # the plugins and ops refuse NaN/inf: a diverged training ends with a message
            hint = " (training diverged? a smaller --reg-lambda or --lr may help)" if "NaN or inf" in str(err) else ""
            raise CLIError(f"experience {exp.current_experience}: {err}{hint}") from err
        train_exp_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        metrics = run.strategy.eval(run.benchmark.test_stream)
        eval_s += time.perf_counter() - t0
        if not args.quiet:
            acc = metrics.get(f"Top1_Acc_Exp/eval_phase/test_stream/Task{exp.task_label:03d}/"
                              f"Exp{exp.current_experience:03d}", math.nan)
            print(f"  exp {exp.current_experience} classes {list(exp.classes_in_this_experience)}: "
                  f"trained in {train_exp_s[-1]:.2f} s, test accuracy on it {100 * acc:.1f}%")
        if args.checkpoint_dir is not None:  # rank 0 writes, or under FSDP2 every rank its shards
            resume.save_after_experience(args, run.strategy, position + 1,
                                         {"train_exp_s": train_exp_s, "eval_s": eval_s})
    return {"train_per_experience_s": train_exp_s, "eval_s": eval_s}


def _save_inside(args: argparse.Namespace, position: int, extra: dict[str, Any], strategy: Any,
                 in_experience: dict[str, Any]) -> None:
    resume.save_after_experience(args, strategy, position, extra, in_experience=in_experience)
