"""Benchmark of AR1: time per training iteration of ``clfast.strategies.AR1`` against an Avalanche-style composition.

Both contenders train the same MobileNetV1 (same initial weights, ``clfast.nn.MobileNetV1``) on the same synthetic
class-incremental stream (random images, nothing downloaded): a short first experience (classes 0-9), then the
*second* experience (classes 10-19), which is timed: from then on the replay memory and the frozen ``lat_features``
are active. Before the second experience, both memories are set to the same ``rm_sz`` random latents (so the
replay slices are full-size without a long first experience).

Contenders:

- ``clfast``: :class:`clfast.strategies.AR1` (fused BRN ops, CWR* and SI on the device, preallocated latent memory,
  staged first-epoch latents).
- ``avalanche``: Avalanche's ``AR1`` written out below in the same template (``avalanche-semantics.md`` §4):
  eager ``BatchRenorm2D`` (``bench_batch_renorm.AvalancheBatchRenorm2D``, with Avalanche's eval branch, which still
  computes the batch statistics), CWR* consolidating in numpy with its state on the model object, SI from
  ``clfast.testing.avalanche.AvalancheSI`` (state on the CPU: host copies every iteration), the memory on the CPU
  replayed in sequential slices, and every first-epoch latent appended to a CPU buffer with ``torch.cat``.

Both use the issue's hyper-parameters (SI on with ``--ewc-lambda``, default 1; 0 turns SI off in both). An
iteration is timed from the end of the previous one (``after_training_iteration``) to the end of this one, so it
includes the minibatch fetch, the replay slice, every hook, forward, backward and the SGD step (CUDA
synchronised). The contenders alternate whole training runs of the second experience (``--rounds``); the median
over the timed iterations (after ``--warmup`` per run) is reported, with the mean (which includes the growing
``cat`` of the first epoch) and the ratio avalanche / clfast. Target (issue 6): >= 2x on CPU at 128 px, batch 32;
>= 3x on an H100 at batch 128.

Writes ``benchmarks/results/ar1_<device>.{json,md}`` (``--out``).

Usage: ``python benchmarks/bench_ar1.py [--device cpu|cuda] [--image-size 128] [--batch 32] [--rm-size 1500]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import clfast
from clfast.nn import MobileNetV1, filter_bn_and_brn, freeze_up_to
from clfast.strategies import AR1
from clfast.testing.avalanche import AvalancheBatchRenorm2D, AvalancheSI
from clfast.testing.bench import device_name, sync, write_results
from clfast.testing.fakes import Experience, Stream, TensorExperienceDataset
from clfast.training import SupervisedTemplate
from clfast.training.utils import make_loader

HERE = Path(__file__).resolve().parent
#: AR1's hyper-parameters (issue 6 / §4.1), shared by both contenders.
HPARAMS = {"lr": 0.001, "inc_lr": 5e-5, "momentum": 0.9, "l2": 0.0005, "init_update_rate": 0.01,
           "inc_update_rate": 5e-5, "max_r_max": 1.25, "max_d_max": 0.5, "inc_step": 4.1e-5}
TARGETS = {"cpu": 2.0, "cuda": 3.0}


# ------------------------------------------------------------------------------------------ the eager composition


class EagerBRN(AvalancheBatchRenorm2D):
    """Avalanche's ``BatchRenorm2D`` (§5): the eager training forward of ``bench_batch_renorm`` plus the eval branch,
    which still computes (and discards) the batch statistics; built from a BatchNorm as ``replace_bn_with_brn``."""

    def __init__(self, bn: nn.BatchNorm2d, momentum: float, step: float, max_r_max: float, max_d_max: float):
        super().__init__(bn.num_features, eps=bn.eps, momentum=momentum, step=step)
        with torch.no_grad():
            self.gamma.copy_(bn.weight.reshape(1, -1, 1, 1))
            self.beta.copy_(bn.bias.reshape(1, -1, 1, 1))
        self.running_avg_mean = bn.running_mean.detach().clone().reshape(1, -1, 1, 1)
        self.running_avg_std = torch.sqrt(bn.running_var.detach().clone()).reshape(1, -1, 1, 1)
        self.max_r_max, self.max_d_max = max_r_max, max_d_max

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return super().forward(x)
        self.running_avg_mean = self.running_avg_mean.to(x.device)
        self.running_avg_std = self.running_avg_std.to(x.device)
        torch.mean(x, dim=(0, 2, 3), keepdim=True)  # Avalanche computes the batch statistics in eval mode too
        torch.sqrt(torch.var(x, dim=(0, 2, 3), keepdim=True, unbiased=False) + self.eps)
        x = (x - self.running_avg_mean) / self.running_avg_std
        return self.gamma * x + self.beta


def eager_replace_bn(m: nn.Module, **kw: float) -> None:
    for name, child in list(m.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(m, name, EagerBRN(child, **kw))
        else:
            eager_replace_bn(child, **kw)


def eager_change_brn_pars(m: nn.Module, momentum: float, r_max: float, d_max: float) -> None:
    for layer in m.modules():
        if isinstance(layer, EagerBRN):
            layer.momentum, layer.r_max, layer.d_max = momentum, r_max, d_max


def examples_per_class(targets: Any) -> dict[int, int]:
    classes, counts = torch.unique(torch.as_tensor(targets), return_counts=True)
    out: dict[int, int] = defaultdict(int)
    out.update({int(c): int(n) for c, n in zip(classes, counts, strict=True)})
    return out


class EagerCWRStar:
    """Avalanche's ``CWRStarPlugin`` (§4.8): state on the model object, consolidation in numpy on the CPU, the layer
    looked up by name every time."""

    def __init__(self, model: nn.Module, cwr_layer_name: str) -> None:
        self.model, self.cwr_layer_name = model, cwr_layer_name
        self.cur_class: list[int] = []
        model.saved_weights, model.past_j, model.cur_j = {}, defaultdict(int), defaultdict(int)

    def _layer(self) -> nn.Module:
        return dict(self.model.named_modules())[self.cwr_layer_name]

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.model.cur_j = examples_per_class(strategy.experience.dataset.targets)
        self.cur_class = [c for c in self.model.cur_j if self.model.cur_j[c] > 0]
        self.reset_weights(self.cur_class)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.consolidate_weights()
        self.set_consolidate_weights()

    @torch.no_grad()
    def consolidate_weights(self) -> None:
        w = self._layer().weight
        globavg = np.average(w.detach().cpu().numpy()[self.cur_class])
        for c in self.cur_class:
            new_w = w.detach().cpu().numpy()[c] - globavg
            if c in self.model.saved_weights:
                wpast_j = np.sqrt(self.model.past_j[c] / self.model.cur_j[c])
                self.model.saved_weights[c] = (self.model.saved_weights[c] * wpast_j + new_w) / (wpast_j + 1)
                self.model.past_j[c] += self.model.cur_j[c]
            else:
                self.model.saved_weights[c] = new_w
                self.model.past_j[c] = self.model.cur_j[c]

    @torch.no_grad()
    def set_consolidate_weights(self) -> None:
        w = self._layer().weight
        for c, saved in self.model.saved_weights.items():
            w[c].copy_(torch.from_numpy(saved))

    @torch.no_grad()
    def reset_weights(self, cur_clas: list[int]) -> None:
        w = self._layer().weight
        w.fill_(0.0)
        for c, saved in self.model.saved_weights.items():
            if c in cur_clas:
                w[c].copy_(torch.from_numpy(saved))


class EagerAR1(SupervisedTemplate):
    """Avalanche's ``AR1`` (§4.5-4.7) on clfast's template steps: its own modes, freezing, BRN switch and SGD per
    experience; the §4.6 composition with sequential unshuffled replay slices; first-epoch latents appended with
    ``torch.cat`` on the CPU; the §4.7 update (with its dataset-order labels)."""

    def __init__(self, model: nn.Module, *, rm_sz: int, train_mb_size: int, train_epochs: int, ewc_lambda: float,
                 device: str, plugins: list[Any], freeze_below_layer: str = "lat_features.19.bn") -> None:
        hp = HPARAMS
        eager_replace_bn(model, momentum=hp["init_update_rate"], step=hp["inc_step"], max_r_max=hp["max_r_max"],
                         max_d_max=hp["max_d_max"])
        optimizer = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["l2"])
        own: list[Any] = []
        if ewc_lambda:
            own.append(AvalancheSI(ewc_lambda, excluded_parameters=["output"], si_alias_defect=False))
        self.cwr = EagerCWRStar(model, "output")
        own.append(self.cwr)
        super().__init__(model, optimizer, None, train_mb_size=train_mb_size, train_epochs=train_epochs,
                         eval_mb_size=train_mb_size, device=device, plugins=[*plugins, *own], evaluator=None)
        self.rm_sz, self.freeze_below_layer = rm_sz, freeze_below_layer
        self.rm: list[Tensor] | None = None
        self.cur_acts: Tensor | None = None
        self.replay_mb_size = 0
        self._it = 0
        self._lat_mb_x: Tensor | None = None
        self._lat_acts: Tensor | None = None

    def _before_training_exp(self, **kwargs: Any) -> None:
        hp = HPARAMS
        self.model.eval()
        self.model.end_features.train()
        self.model.output.train()
        if self.clock.train_exp_counter > 0:
            freeze_up_to(self.model, self.freeze_below_layer, layer_filter=filter_bn_and_brn)
            eager_change_brn_pars(self.model, hp["inc_update_rate"], hp["max_r_max"], hp["max_d_max"])
            self.model.to(self.device)
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=hp["inc_lr"], momentum=hp["momentum"],
                                             weight_decay=hp["l2"])
        super()._before_training_exp(**kwargs)
        if self.clock.train_exp_counter > 0 and self.rm is not None:
            for class_id, count in examples_per_class(self.rm[1]).items():
                self.model.cur_j[class_id] += count
            self.cwr.cur_class = [c for c in self.model.cur_j if self.model.cur_j[c] > 0]
            self.cwr.reset_weights(self.cwr.cur_class)

    def make_train_dataloader(self, **kwargs: Any) -> None:
        current_batch_mb_size = self.train_mb_size
        if self.clock.train_exp_counter > 0:
            n = len(self.adapted_dataset)
            current_batch_mb_size = n // ((n + self.rm_sz) // self.train_mb_size)
        current_batch_mb_size = max(1, current_batch_mb_size)
        self.replay_mb_size = max(0, self.train_mb_size - current_batch_mb_size)
        self.dataloader = make_loader(self.adapted_dataset, current_batch_mb_size, shuffle=True)

    def training_epoch(self, **kwargs: Any) -> None:
        self._it = 0  # the iteration's index in the epoch: which sequential replay slice it takes
        super().training_epoch(**kwargs)

    def _before_forward_step(self) -> None:
        self._lat_mb_x = None
        if self.clock.train_exp_counter > 0 and self.rm is not None:
            start, end = self.replay_mb_size * self._it, self.replay_mb_size * (self._it + 1)
            self._lat_mb_x = self.rm[0][start:end].to(self.device)
            lat_mb_y = self.rm[1][start:end].to(self.device)
            self.mbatch[1] = torch.cat((self.mb_y, lat_mb_y), 0)
            self.mbatch[2] = torch.cat((self.mbatch[2], torch.zeros(len(lat_mb_y), device=self.device)), 0)

    def forward(self) -> Any:
        if not self.is_training:
            return super().forward()
        out, self._lat_acts = self.model(self.mb_x, latent_input=self._lat_mb_x, return_lat_acts=True)
        return out

    def _after_forward_step(self) -> None:
        if self.clock.train_exp_epochs == 0:  # every first-epoch latent, appended on the CPU
            lat_acts = self._lat_acts.detach().clone().cpu()
            self.cur_acts = lat_acts if self._it == 0 else torch.cat((self.cur_acts, lat_acts), 0)
        self._lat_acts = None
        self._it += 1

    def _after_training_exp(self, **kwargs: Any) -> None:
        assert self.cur_acts is not None
        h = min(self.rm_sz // (self.clock.train_exp_counter + 1), self.cur_acts.size(0))
        idxs_cur = torch.randperm(self.cur_acts.size(0))[:h]
        rm_add = [self.cur_acts[idxs_cur], torch.as_tensor(self.experience.dataset.targets)[idxs_cur]]
        if self.clock.train_exp_counter == 0 or self.rm is None:
            self.rm = rm_add
        else:
            idxs_2_replace = torch.randperm(self.rm[0].size(0))[:h]
            for j, idx in enumerate(idxs_2_replace):
                self.rm[0][idx] = rm_add[0][j]
                self.rm[1][idx] = rm_add[1][j]
        self.cur_acts = None
        super()._after_training_exp(**kwargs)


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


def build(args: argparse.Namespace, base: nn.Module) -> dict[str, tuple[Any, IterationTimer]]:
    out = {}
    timer = IterationTimer(args.device)
    out["clfast"] = (AR1(model=copy.deepcopy(base), rm_sz=args.rm_size, train_mb_size=args.batch,
                         train_epochs=args.epochs, ewc_lambda=args.ewc_lambda, device=args.device, plugins=[timer],
                         evaluator=None, freeze_below_layer="lat_features.19.bn", **HPARAMS), timer)
    timer = IterationTimer(args.device)
    out["avalanche"] = (EagerAR1(copy.deepcopy(base), rm_sz=args.rm_size, train_mb_size=args.batch,
                                 train_epochs=args.epochs, ewc_lambda=args.ewc_lambda, device=args.device,
                                 plugins=[timer]), timer)
    return out


def check_agreement(strategies: dict[str, tuple[Any, IterationTimer]], image_size: int, device: str) -> float:
    """Both converted models give the same eval outputs (BRN from BN; clfast's σ_run keeps eps, hence a tolerance)."""
    x = torch.randn(4, 3, image_size, image_size, generator=torch.Generator().manual_seed(1)).to(device)
    outs = []
    for s, _ in strategies.values():
        s.model.to(device).eval()
        with torch.no_grad():
            outs.append(s.model.end_features(s.model.lat_features(x)).flatten(1))
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
    base = MobileNetV1(num_classes=50, width_mult=args.width_mult)
    stream = make_stream(args.n_first, args.n_second, args.image_size)
    strategies = build(args, base)
    agreement = check_agreement(strategies, args.image_size, args.device)
    latent_shape = base.latent_shape(args.image_size)
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
    lines = [
        f"# AR1: time per training iteration, {result['device_name']}, torch {result['torch']}",
        "",
        f"Second experience: {c['n_second']} patterns, {c['image_size']} px, batch {c['batch']} = {comp['current']} "
        f"current + {comp['replayed']} replayed latents of shape {tuple(comp['latent_shape'])}, rm_sz "
        f"{c['rm_size']}, {c['epochs']} epoch(s), SI {si}"
        f", width {c['width_mult']}; {c['rounds']} alternating runs per contender, {c['warmup']} warm-up "
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
        write_results(args.out, "ar1", args.device, result, to_markdown(result))
    finally:
        torch.set_num_threads(threads)
    return result


if __name__ == "__main__":
    main()
