"""The 2-process gloo runs of ``test_distributed.py`` and their single-process references.

Each case trains a tiny MLP on a 2-experience synthetic stream with Naive + one regularisation plugin, then
evaluates the test stream after every experience. Distributed: the model is in ``DistributedDataParallel``,
``B`` samples per rank and batch. Reference: one process at ``W·B`` samples per batch whose batch k is the
union of the ranks' batches k (the DistributedSampler's order), the definition of "the same data" of
``docs/distributed.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from _cl_fakes import make_stream
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler, default_collate

from clfast import distributed as dist
from clfast.evaluation import Accuracy, AccuracyMatrix, EvaluationPlugin, Forgetting, Loss
from clfast.plugins import EWCPlugin, MASPlugin, RWalkPlugin, SynapticIntelligencePlugin
from clfast.strategies import Naive

WORLD = 2
B = 4  # per-rank training minibatch
EPOCHS = 2
N_PER_EXP = 22  # per rank 11 = 4 + 4 + 3: a short last batch

CASES: dict[str, Any] = {
    "naive": lambda: None,
    "mas": lambda: MASPlugin(lambda_reg=5.0, alpha=0.5),
    "ewc": lambda: EWCPlugin(ewc_lambda=50.0),
    "ewc_online": lambda: EWCPlugin(ewc_lambda=50.0, mode="online", decay_factor=0.5),
    "si": lambda: SynapticIntelligencePlugin(si_lambda=1.0),
    "rwalk": lambda: RWalkPlugin(ewc_lambda=1.0, delta_t=2),
    "rwalk_pass": lambda: RWalkPlugin(ewc_lambda=1.0, delta_t=2, separate_grad_pass=True),
}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


def streams() -> tuple[list[Any], list[Any]]:
    train = make_stream("train", n_experiences=2, n_per_exp=N_PER_EXP, n_features=6, seed=1)
    test = make_stream("test", n_experiences=2, n_per_exp=10, n_features=6, seed=2)
    return train, test


class _GlobalBatches(Sampler[list[int]]):
    """Batch k = the concatenation over ranks of rank r's batch k under ``DistributedSampler``."""

    def __init__(self, dataset: Any, strategy: Any, seed: int) -> None:
        self.dataset, self.strategy, self.seed = dataset, strategy, seed

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
        for k in range(0, n, B):
            yield [i for idx in per_rank for i in idx[k:k + B]]

    def __len__(self) -> int:
        return -(-len(self._per_rank()[0]) // B)


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


def run_case(kind: str, distributed: bool) -> dict[str, Any]:
    """Train and evaluate one case; returns parameters, plugin state and metrics (CPU tensors)."""
    model = make_model()
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if distributed else model
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    plugin = CASES[kind]()
    logger = CountingLogger()
    evaluator = EvaluationPlugin(Accuracy(), Loss(), Forgetting(), AccuracyMatrix(), loggers=[logger])
    cls = Naive if distributed else ReferenceNaive
    strategy = cls(net, opt, train_mb_size=B if distributed else WORLD * B, train_epochs=EPOCHS, eval_mb_size=3,
                   plugins=[] if plugin is None else [plugin], evaluator=evaluator)
    train, test = streams()
    for exp in train:
        strategy.train(exp)
        strategy.eval(test)
    return {"params": {n: p.detach().clone() for n, p in dist.unwrap(strategy.model).named_parameters()},
            "plugin": None if plugin is None else plugin.state_dict(),
            "metrics": evaluator.get_last_metrics(),
            "matrix": evaluator.accuracy_matrix("test"), "logged": logger.count}


def worker(rank: int, port: int, outdir: str, kinds: list[str]) -> None:
    """One rank: every case, each saved to ``outdir/{kind}_rank{rank}.pt``."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        assert dist.is_distributed() and dist.rank() == rank and dist.world_size() == WORLD
        for kind in kinds:
            torch.save(run_case(kind, distributed=True), os.path.join(outdir, f"{kind}_rank{rank}.pt"))
        dist.barrier()
    finally:
        torch.distributed.destroy_process_group()
