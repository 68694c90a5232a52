"""What ``clfast train`` builds before it trains: the options that depend on the strategy, the benchmark,
the model, the evaluator and the strategy.

Every special case of ``--strategy ar1`` lives here: its defaults (``AR1_DEFAULTS``), its own options
(``--rm-size``, ``--inc-lr``, ``--image-size``), the image transform, the MobileNetV1 and AR1's keywords.
The regularisation strategies (``--strategy mas|rwalk|si|ewc``, ``--reg-lambda``) come from the plugin
registry (:data:`clfast.plugins.registry.PLUGINS`).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..evaluation import CSVLogger, EvaluationPlugin, InteractiveLogger, JSONLogger, default_metrics
from ..models import MODELS
from ..nn import MobileNetV1
from ..plugins.registry import PLUGINS
from ..scenarios import SCENARIOS
from ..strategies import STRATEGIES
from ..strategies.regularized import regularized
from .argtypes import output_dir
from .errors import CLIError
from .parallel import wrap_model

DEFAULTS = {"strategy": "naive", "scenario": "split-digits", "n_experiences": 5, "epochs": 4, "mb_size": 32,
            "lr": 0.05, "momentum": 0.9, "seed": 0, "model": "mlp", "device": "cpu", "threads": 1,
            "precision": "32", "accumulate_grad_batches": 1, "optimizer": "sgd"}
#: ``--optimizer``: torch.optim's, built from the options (``--momentum`` applies to SGD only).
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, args: torch.optim.SGD(params, lr=args.lr, momentum=args.momentum),
    "adam": lambda params, args: torch.optim.Adam(params, lr=args.lr),
    "adamw": lambda params, args: torch.optim.AdamW(params, lr=args.lr),
}
#: The ``--lr`` default with Adam/AdamW (torch's and the common one).
ADAM_LR = 1e-3

#: ``--strategy ar1``: a MobileNetV1 (random initialisation) on images upsampled to ``image_size`` px with 3 channels.
#: Chosen for a CPU run of Split-MNIST in a few minutes on 2 cores (32 px is the smallest size MobileNetV1 takes
#: here); the other defaults are AR1's (``clfast.strategies.AR1``). ``rm_size`` is a maximum: by default the memory
#: holds at most the first experience (it is filled once, from that experience, and keeps its size for good).
AR1_DEFAULTS = {"epochs": 1, "mb_size": 32, "lr": 0.01, "inc_lr": 0.001, "rm_size": 4000, "image_size": 32}
#: Per-scenario overrides of ``AR1_DEFAULTS``: Split-Digits' experiences are ~300 images (~10 iterations an epoch),
#: too few for a network trained from scratch in one epoch.
AR1_SCENARIO_DEFAULTS: dict[str, dict[str, Any]] = {"split-digits": {"epochs": 4}}
_STRATEGY_DEPENDENT = ("epochs", "mb_size", "lr")
_AR1_ONLY = ("rm_size", "inc_lr", "image_size")
_AR1_MIN_IMAGE_SIZE = 32


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


def _ar1_default(args: argparse.Namespace, key: str) -> Any:
    """``--strategy ar1``'s default for ``key`` on ``args.scenario``."""
    return AR1_SCENARIO_DEFAULTS.get(getattr(args, "scenario", None), {}).get(key, AR1_DEFAULTS[key])


def resolve_options(args: argparse.Namespace) -> None:
    """Fills the options whose default depends on the strategy and refuses combinations that do not apply
    (:class:`CLIError`; ar1-only options elsewhere are usage errors)."""
    ar1 = args.strategy == "ar1"
    adam = getattr(args, "optimizer", "sgd") != "sgd"
    if ar1 and adam:
        raise CLIError("argument --optimizer: AR1 builds its own SGD (--lr, --inc-lr)", usage=True)
    if getattr(args, "lr", None) is None and adam:
        args.lr = ADAM_LR
    for key in _STRATEGY_DEPENDENT:
        if getattr(args, key, None) is None:
            setattr(args, key, _ar1_default(args, key) if ar1 else DEFAULTS[key])
    for key in _AR1_ONLY:
        if getattr(args, key, None) is None:
            # AR1's default rm_size waits for the benchmark (_benchmark: capped at the first experience)
            setattr(args, key, _ar1_default(args, key) if ar1 and key != "rm_size" else None)
        elif not ar1:
            raise CLIError(f"argument --{key.replace('_', '-')}: applies to --strategy ar1 only", usage=True)
    if ar1 and args.image_size < _AR1_MIN_IMAGE_SIZE:
        raise CLIError(f"argument --image-size: MobileNetV1 needs at least {_AR1_MIN_IMAGE_SIZE} px, "
                       f"got {args.image_size}", usage=True)
    if getattr(args, "reg_lambda", None) is not None and args.strategy not in PLUGINS:
        raise CLIError(f"--reg-lambda applies to {sorted(PLUGINS)}, not {args.strategy}")
    if args.resume and args.checkpoint_dir is None:
        raise CLIError("--resume needs --checkpoint-dir")
    if getattr(args, "parallel", "none") == "fsdp":
        refused = [f"--strategy {args.strategy}" if ar1 else None,
                   "--precision 16-mixed" if args.precision == "16-mixed" else None]
        if any(refused):
            raise CLIError(f"--parallel fsdp does not take {', '.join(r for r in refused if r)} (docs/distributed.md, "
                           "\"FSDP2\")", usage=True)
    if getattr(args, "checkpoint_every", None) is not None:
        if args.checkpoint_dir is None:
            raise CLIError("--checkpoint-every needs --checkpoint-dir")
        if ar1:
            raise CLIError("argument --checkpoint-every: AR1 checkpoints at experience boundaries only", usage=True)


@dataclass
class Run:
    """Everything a ``clfast train`` run trains and reports on."""

    benchmark: Any
    model: torch.nn.Module
    model_name: str
    strategy: Any
    evaluator: EvaluationPlugin
    device: torch.device
    out_dir: Path | None


def build_run(args: argparse.Namespace) -> Run:
    """Seeds the generators, then builds the benchmark, the model, the evaluator (with ``--out``'s loggers)
    and the strategy, in that order (the order fixes what each draws from the seeded generators)."""
    device = torch.device(args.device)
    out_dir = output_dir(args.out, args.plot)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    _seed_everything(args.seed)
    benchmark = _benchmark(args)
    model, model_name = _model(args, benchmark)
    parallel = getattr(args, "parallel", "none")
    if parallel != "none" and args.strategy != "ar1":  # AR1 averages over the ranks itself (and refuses fsdp)
        model = wrap_model(model, device, parallel)
    optimizer = OPTIMIZERS[getattr(args, "optimizer", "sgd")](model.parameters(), args)
    loggers: list[Any] = [] if args.quiet else [InteractiveLogger(progress=True, lines=False)]
    if out_dir is not None:
        loggers += [JSONLogger(out_dir / "metrics.json"), CSVLogger(out_dir / "metrics.csv")]
    evaluator = EvaluationPlugin(*default_metrics(), loggers=loggers)
    make_strategy, extra = _strategy_constructor(args)
    strategy = make_strategy(model, optimizer, torch.nn.CrossEntropyLoss(), train_mb_size=args.mb_size,
                             train_epochs=args.epochs, eval_mb_size=max(args.mb_size, 256), device=device,
                             evaluator=evaluator, precision=args.precision,
                             accumulate_grad_batches=args.accumulate_grad_batches,
                             train_iterations=args.train_iterations, **extra)
    return Run(benchmark, model, model_name, strategy, evaluator, device, out_dir)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _benchmark(args: argparse.Namespace) -> Any:
    transforms: dict[str, Any] = {}
    if args.strategy == "ar1":
        tf = UpsampleToRGB(args.image_size)
        transforms = {"train_transform": tf, "eval_transform": tf}
    try:
        benchmark = SCENARIOS[args.scenario](n_experiences=args.n_experiences, seed=args.seed, **transforms)
    except (ValueError, ImportError, FileNotFoundError, OSError) as err:
        raise CLIError(f"scenario {args.scenario}: {err}") from err
    if args.strategy == "ar1" and args.rm_size is None:
        args.rm_size = min(_ar1_default(args, "rm_size"), len(benchmark.train_stream[0].dataset))
    return benchmark


def _model(args: argparse.Namespace, benchmark: Any) -> tuple[torch.nn.Module, str]:
    """The model and its name in the header line."""
    if args.strategy == "ar1":
        return MobileNetV1(num_classes=benchmark.n_classes), f"MobileNetV1 at {args.image_size} px"
    input_shape = tuple(benchmark.train_stream[0].dataset[0][0].shape)
    return MODELS[args.model](input_shape, benchmark.n_classes), args.model


def _strategy_constructor(args: argparse.Namespace) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The strategy's constructor and the keywords it takes beyond Naive's."""
    if args.strategy == "ar1":
        return STRATEGIES["ar1"], {"rm_sz": args.rm_size, "inc_lr": args.inc_lr, "lat_train_mode_first_exp": True}
    if args.strategy in PLUGINS:
        return regularized(args.strategy, args.reg_lambda), {}
    return STRATEGIES[args.strategy], {}
