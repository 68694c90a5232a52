"""Benchmark of AR1: time per training iteration of ``clfast.strategies.AR1`` against an Avalanche-style composition.

Both contenders train the same network (same initial weights) on the same synthetic class-incremental stream (random
images, nothing downloaded): a short first experience (classes 0-9), then the *second* experience (classes 10-19),
which is timed: from then on the replay memory and the frozen lower part are active. Before the second experience,
both memories are set to the same ``rm_sz`` random latents (so the replay slices are full-size without a long first
experience).

Backbones (``--backbone``):

- ``mobilenet`` (default): ``clfast.nn.MobileNetV1`` split after entry 19 (§4.2), AR1's own model.
- ``resnet18``: a torchvision-layout ResNet-18 (``clfast.testing.resnet``, ``--resnet-width``, 64 as torchvision)
  split at ``--latent-layer`` (default ``layer3``: latents of shape (2·width, s/8, s/8) at s px). clfast trains it
  as ``AR1(model=resnet, latent_layer=...)`` (:class:`clfast.nn.LatentModel`, the split traced by torch.fx); the
  peer as an Avalanche user would, the same modules in a hand-written latent wrapper (``EagerLatentNet``: the
  stem, ``layer1`` and ``layer2`` as ``lat_features``; ``layer3``, ``layer4`` and the pool as ``end_features``;
  ``fc`` as ``output``), frozen below ``end_features``.

Contenders:

- ``clfast``: :class:`clfast.strategies.AR1` (fused BRN ops, CWR* and SI on the device, preallocated latent memory,
  staged first-epoch latents).
- ``avalanche``: Avalanche's ``AR1`` in the same template (``clfast.testing.avalanche.ar1.EagerAR1``,
  ``avalanche-semantics.md`` §4): eager ``BatchRenorm2D`` (with Avalanche's eval branch, which still computes the
  batch statistics), CWR* consolidating in numpy with its state on the model object, SI from
  ``clfast.testing.avalanche.AvalancheSI`` (state on the CPU: host copies every iteration), the memory on the CPU
  replayed in sequential slices, and every first-epoch latent appended to a CPU buffer with ``torch.cat``.

Both use the issue's hyper-parameters (SI on with ``--ewc-lambda``, default 1; 0 turns SI off in both). An
iteration is timed from the end of the previous one (``after_training_iteration``) to the end of this one, so it
includes the minibatch fetch, the replay slice, every hook, forward, backward and the SGD step (CUDA
synchronised). The contenders alternate whole training runs of the second experience (``--rounds``); the median
over the timed iterations (after ``--warmup`` per run) is reported, with the mean (which includes the growing
``cat`` of the first epoch) and the ratio avalanche / clfast. Target (issue 6): >= 2x on CPU at 128 px, batch 32;
>= 3x on an H100 at batch 128.

Writes ``benchmarks/results/ar1_<device>.{json,md}`` for MobileNetV1 and ``ar1_<device>-resnet18-<s>px.{json,md}``
for the ResNet (``--out``).

Usage: ``python benchmarks/bench_ar1.py [--device cpu|cuda] [--image-size 128] [--batch 32] [--rm-size 1500]
[--backbone mobilenet|resnet18]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import clfast
from clfast.nn import MobileNetV1
from clfast.strategies import AR1
from clfast.testing.avalanche.ar1 import EagerAR1, EagerLatentNet
from clfast.testing.bench import device_name, sync, write_results
from clfast.testing.fakes import Experience, Stream, TensorExperienceDataset
from clfast.testing.resnet import resnet18

HERE = Path(__file__).resolve().parent
#: AR1's hyper-parameters (issue 6 / §4.1), shared by both contenders.
HPARAMS = {"lr": 0.001, "inc_lr": 5e-5, "momentum": 0.9, "l2": 0.0005, "init_update_rate": 0.01,
           "inc_update_rate": 5e-5, "max_r_max": 1.25, "max_d_max": 0.5, "inc_step": 4.1e-5}
TARGETS = {"cpu": 2.0, "cuda": 3.0}


# ------------------------------------------------------------------------------------------ the eager composition


# ------------------------------------------------------------------------------------------------------ timing


class IterationTimer:
    """Seconds per training iteration (end of the previous one to the end of this one), when ``active``."""

    def __init__(self, device: str) -> None:
        self.device, self.active, self.times, self._t = device, False, [], 0.0
        self.runs: list[list[float]] = []

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        sync(self.device)
        self._t = time.perf_counter()

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self.active:
            self.runs.append([])

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        sync(self.device)
        now = time.perf_counter()
        if self.active:
            self.runs[-1].append(now - self._t)
        self._t = now


def make_stream(n_first: int, n_second: int, image_size: int, seed: int = 0) -> Stream:
    g = torch.Generator().manual_seed(seed)
    stream = Stream("train")
    for e, n in enumerate((n_first, n_second)):
        y = torch.arange(n) % 10 + 10 * e
        x = torch.randn(n, 3, image_size, image_size, generator=g)
        stream.append(Experience(TensorExperienceDataset(x, y, torch.zeros(n)), e, stream))
    return stream


def eager_latent_resnet(net: nn.Module, latent_layer: str) -> EagerLatentNet:
    """The ResNet's modules in Avalanche's latent form, split before the top-level module ``latent_layer``."""
    stages = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4, net.avgpool]
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]
    if latent_layer not in names[1:]:
        raise ValueError(f"--latent-layer must be one of {names[1:]} (a top-level module of the ResNet)")
    cut = names.index(latent_layer)
    return EagerLatentNet(stages[:cut], [*stages[cut:], nn.Flatten()], net.fc)


def build(args: argparse.Namespace, base: nn.Module) -> dict[str, tuple[Any, IterationTimer]]:
    out = {}
    resnet = args.backbone == "resnet18"
    common = {"rm_sz": args.rm_size, "train_mb_size": args.batch, "train_epochs": args.epochs,
              "ewc_lambda": args.ewc_lambda, "device": args.device}
    # the same layers frozen in both: everything before the latent layer (AR1's default with latent_layer)
    split = {"latent_layer": args.latent_layer} if resnet else {"freeze_below_layer": "lat_features.19.bn"}
    timer = IterationTimer(args.device)
    out["clfast"] = (AR1(model=copy.deepcopy(base), plugins=[timer], evaluator=None, **split, **common, **HPARAMS),
                     timer)
    timer = IterationTimer(args.device)
    peer = eager_latent_resnet(copy.deepcopy(base), args.latent_layer) if resnet else copy.deepcopy(base)
    out["avalanche"] = (EagerAR1(peer, hparams=HPARAMS, plugins=[timer], **common,
                                 **({"freeze_below_layer": "end_features"} if resnet else {})), timer)
    return out


def check_agreement(strategies: dict[str, tuple[Any, IterationTimer]], image_size: int, device: str) -> float:
    """Both converted models give the same eval logits (BRN from BN; clfast's σ_run keeps eps, hence a tolerance)."""
    x = torch.randn(4, 3, image_size, image_size, generator=torch.Generator().manual_seed(1)).to(device)
    outs = []
    for s, _ in strategies.values():
        s.model.to(device).eval()
        with torch.no_grad():
            outs.append(s.model(x))
    err = float((outs[0] - outs[1]).abs().max() / outs[1].abs().max().clamp_min(1e-12))
    if err > 1e-3:
        raise AssertionError(f"clfast and the eager composition disagree before training (relative error {err:.2e})")
    return err


def set_memory(s: Any, x: Tensor, y: Tensor, device: str) -> None:
    if isinstance(s, AR1):
        s.memory.load_state_dict({"version": 1, "rm_sz": s.rm_sz, "size": x.shape[0], "x": x, "y": y,
                                  "latent_shape": tuple(x.shape[1:]), "dtype": "float32"}, torch.device(device))
    else:
        s.rm = [x.clone(), y.clone()]


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    if args.backbone == "resnet18":
        base = resnet18(num_classes=50, width=args.resnet_width)
    else:
        base = MobileNetV1(num_classes=50, width_mult=args.width_mult)
    stream = make_stream(args.n_first, args.n_second, args.image_size)
    strategies = build(args, base)
    agreement = check_agreement(strategies, args.image_size, args.device)
    lower = strategies["clfast"][0].model.lat_features
    with torch.no_grad():
        latent_shape = tuple(lower(torch.zeros(1, 3, args.image_size, args.image_size, device=args.device)).shape[1:])
    g = torch.Generator().manual_seed(2)
    mem_x = torch.randn(args.rm_size, *latent_shape, generator=g).relu_()
    mem_y = torch.randint(0, 10, (args.rm_size,), generator=g)
    for s, _ in strategies.values():
        s.train(stream[0])
        set_memory(s, mem_x, mem_y, args.device)
    for _ in range(args.rounds):
        for s, timer in strategies.values():
            s.clock.train_exp_counter = 1  # every round trains "the second experience" again
            timer.active = True
            s.train(stream[1])
            timer.active = False
            set_memory(s, mem_x, mem_y, args.device)
    rows = []
    for name, (_, timer) in strategies.items():
        timed = [t for run_times in timer.runs for t in run_times[args.warmup:]]
        rows.append({"contender": name, "iterations": len(timed), "median_ms": 1e3 * statistics.median(timed),
                     "mean_ms": 1e3 * statistics.fmean(timed), "min_ms": 1e3 * min(timed)})
    clf = next(r for r in rows if r["contender"] == "clfast")
    for r in rows:
        r["ratio_vs_clfast"] = r["median_ms"] / clf["median_ms"]
        r["mean_ratio_vs_clfast"] = r["mean_ms"] / clf["mean_ms"]
    s_clf = strategies["clfast"][0]
    return {"benchmark": "ar1", "device": args.device, "device_name": device_name(args.device),
            "torch": torch.__version__, "clfast": getattr(clfast, "__version__", "?"),
            "threads": torch.get_num_threads(),
            "config": {k: v for k, v in vars(args).items() if k != "out"},
            "composition": {"current": s_clf.current_split[0], "replayed": s_clf.current_split[1],
                            "latent_shape": list(latent_shape)},
            "agreement_rel_err": agreement, "target": TARGETS.get(args.device), "rows": rows}


def to_markdown(result: dict) -> str:
    c, comp = result["config"], result["composition"]
    si = f"on (λ={c['ewc_lambda']})" if c["ewc_lambda"] else "off"
    backbone = (f"ResNet-18 width {c['resnet_width']} split at {c['latent_layer']}" if c["backbone"] == "resnet18"
                else f"MobileNetV1 width {c['width_mult']}")
    lines = [
        f"# AR1: time per training iteration, {result['device_name']}, torch {result['torch']}",
        "",
        f"Second experience: {c['n_second']} patterns, {c['image_size']} px, batch {c['batch']} = {comp['current']} "
        f"current + {comp['replayed']} replayed latents of shape {tuple(comp['latent_shape'])}, rm_sz "
        f"{c['rm_size']}, {c['epochs']} epoch(s), SI {si}"
        f", {backbone}; {c['rounds']} alternating runs per contender, {c['warmup']} warm-up "
        "iterations dropped per run.",
        "",
        "| contender | iterations | median ms | mean ms | min ms | median ratio (vs clfast) | mean ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['contender']} | {r['iterations']} | {r['median_ms']:.1f} | {r['mean_ms']:.1f} | "
                     f"{r['min_ms']:.1f} | {r['ratio_vs_clfast']:.2f}x | {r['mean_ratio_vs_clfast']:.2f}x |")
    if result["target"]:
        lines += ["", f"Target (issue 6): avalanche / clfast >= {result['target']:.0f}x per iteration."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=None, help="minibatch size (default 32 on CPU, 128 on CUDA)")
    p.add_argument("--rm-size", type=int, default=1500)
    p.add_argument("--n-first", type=int, default=None, help="patterns of the first experience (default 2 batches)")
    p.add_argument("--n-second", type=int, default=300, help="patterns of the timed experience (CORe50: 300)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ewc-lambda", type=float, default=1.0)
    p.add_argument("--width-mult", type=float, default=1.0, help="MobileNetV1 width (smaller for smoke runs)")
    p.add_argument("--backbone", default="mobilenet", choices=["mobilenet", "resnet18"])
    p.add_argument("--resnet-width", type=int, default=64, help="ResNet-18 stem width (torchvision: 64)")
    p.add_argument("--latent-layer", default="layer3", help="ResNet-18: the top-level module starting the upper part")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: keep torch's)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.batch is None:
        args.batch = 128 if args.device == "cuda" else 32
    if args.n_first is None:
        args.n_first = 2 * args.batch
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        result = run(args)
        suffix = f"-resnet18-{args.image_size}px" if args.backbone == "resnet18" else ""
        write_results(args.out, "ar1", args.device, result, to_markdown(result), suffix)
    finally:
        torch.set_num_threads(threads)
    return result


if __name__ == "__main__":
    main()
