"""The 2-process gloo runs of ``test_distributed.py`` and their single-process references.

Each case trains a tiny MLP on a 2-experience synthetic stream with Naive + one regularisation plugin, then
evaluates the test stream after every experience. Distributed: the model is in ``DistributedDataParallel``,
``B`` samples per rank and batch. Reference: one process at ``W·B`` samples per batch whose batch k is the
union of the ranks' batches k (the DistributedSampler's order), the definition of "the same data" of
``docs/distributed.md``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler, default_collate

from clfast import distributed as dist
from clfast.evaluation import Accuracy, AccuracyMatrix, EvaluationPlugin, Forgetting, Loss
from clfast.plugins import PLUGINS, CWRStarPlugin
from clfast.strategies import AR1, Naive
from clfast.testing.fakes import make_stream

WORLD = 2
B = 4  # per-rank training minibatch
EPOCHS = 2
N_PER_EXP = 22  # per rank 11 = 4 + 4 + 3: a short last batch

#: Regulariser cases, from the registry: name -> (registry name, strength, overrides). The strengths make the
#: penalty visible in 2 experiences; a registry entry missing here runs at its defaults.
REGULARIZERS: dict[str, tuple[str, float | None, dict[str, Any]]] = {
    **{name: (name, None, {}) for name in PLUGINS},
    "mas": ("mas", 5.0, {}),
    "ewc": ("ewc", 50.0, {}),
    "ewc_online": ("ewc", 50.0, {"mode": "online", "decay_factor": 0.5}),
    "si": ("si", 1.0, {}),
    "rwalk": ("rwalk", 1.0, {"delta_t": 2}),
    "rwalk_pass": ("rwalk", 1.0, {"delta_t": 2, "separate_grad_pass": True}),
}

CASES: dict[str, Any] = {  # plugin factories of the (unwrapped) model
    "naive": lambda m: None,
    **{name: (lambda m, spec=PLUGINS[base], lam=lam, kw=kw: spec.make(lam, **kw))
       for name, (base, lam, kw) in REGULARIZERS.items()},
    # freezes all but the last Linear from the 2nd experience: DDP needs find_unused_parameters
    "cwr": lambda m: CWRStarPlugin(m, freeze_remaining_model=True),
}

#: Gradient accumulation: two minibatches per step; DDP all-reduces only on a step's minibatch (no_sync before).
ACCUM_CASES = ["naive+accum2", "mas+accum2", "rwalk+accum2"]

# AR1 (docs/distributed.md, "AR1"): per experience 26 patterns (13 per rank), rm_sz 9, B = 4 per rank. The second
# experience's single-process split at W·B = 8 is 6 current + 2 replayed, i.e. 3 + 1 per rank; its 5th (last)
# iteration has 1 current pattern per rank and replay row 8 on rank 0 only (uneven ranks).
AR1_N, AR1_RM, AR1_PX = 26, 9, 8
AR1_CASES: dict[str, float] = {"ar1": 0.0, "ar1_si": 0.5}  # name -> ewc_lambda (SI strength)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


def streams() -> tuple[list[Any], list[Any]]:
    train = make_stream("train", n_experiences=2, n_per_exp=N_PER_EXP, n_features=6, seed=1)
    test = make_stream("test", n_experiences=2, n_per_exp=10, n_features=6, seed=2)
    return train, test


class _GlobalBatches(Sampler[list[int]]):
    """Batch k = the concatenation over ranks of rank r's batch k under ``DistributedSampler``."""

    def __init__(self, dataset: Any, strategy: Any, seed: int, batch: int = B) -> None:
        self.dataset, self.strategy, self.seed, self.batch = dataset, strategy, seed, batch

    def _per_rank(self) -> list[list[int]]:
        out = []
        for r in range(WORLD):
            s = DistributedSampler(self.dataset, num_replicas=WORLD, rank=r, shuffle=True, seed=self.seed)
            s.set_epoch(self.strategy.clock.train_exp_epochs)
            out.append(list(s))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self._per_rank()
        n = len(per_rank[0])
        for k in range(0, n, self.batch):
            yield [i for idx in per_rank for i in idx[k:k + self.batch]]

    def __len__(self) -> int:
        return -(-len(self._per_rank()[0]) // self.batch)


class ReferenceNaive(Naive):
    """Single process, ``W·B`` per batch, the distributed run's global batches."""

    def make_train_dataloader(self, **kwargs: Any) -> None:
        ds = self.adapted_dataset
        sampler = _GlobalBatches(ds, self, self.sampler_seed + self.clock.train_exp_counter)
        self.dataloader = DataLoader(ds, batch_sampler=sampler, collate_fn=default_collate)


class CountingLogger:
    """Counts the metric values it is given."""

    def __init__(self) -> None:
        self.count = 0

    def log_metrics(self, values: list[Any]) -> None:
        self.count += len(values)


def split_kind(kind: str) -> tuple[str, int]:
    """``"mas+accum2"`` -> (``"mas"``, 2): the case and its ``accumulate_grad_batches`` (1 without the suffix)."""
    base, _, k = kind.partition("+accum")
    return base, int(k) if k else 1


def _counting_allreduce(state, bucket):  # unannotated: DDP checks a hook's annotations by their types
    """DDP's default all-reduce of a gradient bucket, counted in ``state[0]``."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    state[0] += 1
    return default_hooks.allreduce_hook(None, bucket)


def run_case(kind: str, distributed: bool) -> dict[str, Any]:
    """Train and evaluate one case; returns parameters, plugin state and metrics (CPU tensors), and under DDP the
    number of gradient all-reduces DDP ran in training and the optimizer steps."""
    if kind in AR1_CASES:
        return run_ar1(kind, distributed)
    base, accumulate = split_kind(kind)
    model = make_model()
    net: nn.Module = (nn.parallel.DistributedDataParallel(model, find_unused_parameters=base == "cwr")
                      if distributed else model)
    allreduces = [0]
    if distributed:
        net.register_comm_hook(allreduces, _counting_allreduce)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    plugin = CASES[base](model)
    logger = CountingLogger()
    evaluator = EvaluationPlugin(Accuracy(), Loss(), Forgetting(), AccuracyMatrix(), loggers=[logger])
    cls = Naive if distributed else ReferenceNaive
    strategy = cls(net, opt, train_mb_size=B if distributed else WORLD * B, train_epochs=EPOCHS, eval_mb_size=3,
                   plugins=[] if plugin is None else [plugin], evaluator=evaluator,
                   accumulate_grad_batches=accumulate)
    train, test = streams()
    for exp in train:
        strategy.train(exp)
        strategy.eval(test)
    return {"params": {n: p.detach().clone() for n, p in dist.unwrap(strategy.model).named_parameters()},
            "plugin": None if plugin is None else plugin.state_dict(),
            "comm": {"allreduces": allreduces[0] if distributed else None, "steps": strategy.clock.train_steps,
                     "iterations": strategy.clock.train_iterations},
            "metrics": evaluator.get_last_metrics(),
            "matrix": evaluator.accuracy_matrix("test"), "logged": logger.count}


class TinyLatentNet(nn.Module):
    """AR1's latent split at 8 px: ``lat_features`` conv + BN (BRN, eval mode: per-rank batch statistics never
    enter), ``end_features`` without norm layers (so the run is comparable with one process), ``output``."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.lat_features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.end_features = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                          nn.Flatten())
        self.output = nn.Linear(6, num_classes, bias=False)

    def forward(self, x: torch.Tensor, latent_input: torch.Tensor | None = None,
                return_lat_acts: bool = False) -> Any:
        if latent_input is not None:
            with torch.no_grad():
                lat = self.lat_features(x)
            feats = torch.cat((lat, latent_input))
        else:
            lat = feats = self.lat_features(x)
        out = self.output(self.end_features(feats))
        return (out, lat) if return_lat_acts else out


def ar1_streams() -> tuple[list[Any], list[Any]]:
    def stream(name: str, n: int, seed: int) -> Any:
        g = torch.Generator().manual_seed(seed)
        out = make_stream(name, n_experiences=2, n_per_exp=n, n_features=1, seed=seed)
        for exp in out:
            y = exp.dataset.targets
            exp.dataset.x = torch.randn(n, 3, AR1_PX, AR1_PX, generator=g) + 0.5 * y.float().reshape(-1, 1, 1, 1)
        return out
    return stream("train", AR1_N, 3), stream("test", 10, 4)


class ReferenceAR1(AR1):
    """Single process, ``W·B`` per batch: the current patterns of batch k are the union of the ranks' batches k."""

    def make_train_dataloader(self, **kwargs: Any) -> None:
        super().make_train_dataloader(**kwargs)
        per_rank = self._cur_bs if self._replay_bs == 0 else self._cur_bs // WORLD
        assert self._replay_bs == 0 or per_rank * WORLD == self._cur_bs  # the test's sizes divide
        if self._replay_bs == 0:
            per_rank = B
        ds = self.adapted_dataset
        sampler = _GlobalBatches(ds, self, self.sampler_seed + self.clock.train_exp_counter, per_rank)
        self.dataloader = DataLoader(ds, batch_sampler=sampler, collate_fn=default_collate, generator=self._generator)


def run_ar1(kind: str, distributed: bool) -> dict[str, Any]:
    """AR1 (CWR*, latent replay, optionally SI) over 2 experiences; parameters, buffers, memory, plugin state."""
    torch.manual_seed(0)
    logger = CountingLogger()
    evaluator = EvaluationPlugin(Accuracy(), Loss(), AccuracyMatrix(), loggers=[logger])
    cls = AR1 if distributed else ReferenceAR1
    strategy = cls(model=TinyLatentNet(), rm_sz=AR1_RM, train_mb_size=B if distributed else WORLD * B,
                   train_epochs=EPOCHS, eval_mb_size=3, lr=0.05, inc_lr=0.02, ewc_lambda=AR1_CASES[kind],
                   freeze_below_layer="end_features.0", evaluator=evaluator)
    train, test = ar1_streams()
    splits = []
    for exp in train:
        strategy.train(exp)
        splits.append(strategy.current_split)
        strategy.eval(test)
    model = strategy.model
    params = dict(model.named_parameters())
    return {"params": {n: p.detach().clone() for n, p in params.items()},
            "buffers": {n: b.clone() for n, b in model.state_dict().items() if n not in params},
            "memory": {"x": strategy.memory.latents.clone(), "y": strategy.memory.labels.clone()},
            "plugin": {"cwr": strategy.cwr.state_dict(),
                       "si": None if strategy.si is None else strategy.si.state_dict()},
            "splits": [(c * (WORLD if distributed else 1), r * (WORLD if distributed else 1)) for c, r in splits],
            "metrics": evaluator.get_last_metrics(), "matrix": evaluator.accuracy_matrix("test"),
            "logged": logger.count}


def free_port() -> int:
    """A free TCP port on the loopback interface, for the rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cases_on_rank(rank: int, port: int, outdir: str, kinds: list[str], run: Callable[[str], Any]) -> None:
    """One rank of a ``WORLD``-process gloo group: ``run(kind)`` for every case, each result saved to
    ``outdir/{kind}_rank{rank}.pt``."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        assert dist.is_distributed() and dist.rank() == rank and dist.world_size() == WORLD
        for kind in kinds:
            torch.save(run(kind), os.path.join(outdir, f"{kind}_rank{rank}.pt"))
        dist.barrier()
    finally:
        torch.distributed.destroy_process_group()


def spawn_cases(worker: Callable[..., None], outdir: Path, kinds: list[str]) -> dict[str, list[dict[str, Any]]]:
    """``worker(rank, port, outdir, kinds)`` on ``WORLD`` spawned processes; every rank's results by case."""
    mp.spawn(worker, args=(free_port(), str(outdir), kinds), nprocs=WORLD, join=True)
    return {k: [torch.load(outdir / f"{k}_rank{r}.pt", weights_only=False) for r in range(WORLD)] for k in kinds}


def _run_ddp_case(kind: str) -> dict[str, Any]:
    return run_case(kind, distributed=True)


def worker(rank: int, port: int, outdir: str, kinds: list[str]) -> None:
    """One rank: every DDP case (:func:`run_cases_on_rank`)."""
    run_cases_on_rank(rank, port, outdir, kinds, _run_ddp_case)
