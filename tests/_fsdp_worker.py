"""The 2-process gloo runs of ``test_fsdp.py``: the cases of ``_ddp_worker`` with the model under FSDP2
(``clfast.sharding.shard_model``: ``fully_shard`` on each Linear, then on the root) instead of
``DistributedDataParallel``, and their single-process references at ``W·B`` per batch (the same global batches)."""

from __future__ import annotations

from typing import Any

import torch
from _ddp_worker import CASES, EPOCHS, WORLD, B, ReferenceNaive, make_model, run_cases_on_rank, split_kind, streams

from clfast import distributed as dist
from clfast.evaluation import Accuracy, AccuracyMatrix, EvaluationPlugin, Loss
from clfast.sharding import shard_model
from clfast.strategies import Naive

#: The plugins FSDP2 runs (``docs/distributed.md``, "FSDP2"); CWR* and AR1 are not among them.
FSDP_CASES = ["naive", "mas", "ewc", "ewc_online", "si", "rwalk", "rwalk_pass", "si+accum2", "rwalk+accum2"]


class LossLog:
    """Every training iteration's reported loss (the penalty value included): this rank's minibatch loss plus the
    whole penalty."""

    supports_distributed = True

    def __init__(self) -> None:
        self.values: list[float] = []

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.values.append(float(strategy.loss.detach()))


def _whole(t: torch.Tensor) -> torch.Tensor:
    """A rank's dim-0 shard joined with the other ranks' (the whole tensor on every rank)."""
    parts = dist.all_gather_object(t.detach().cpu())
    return torch.cat(parts)


def run_fsdp_case(kind: str, sharded: bool) -> dict[str, Any]:
    """Train and evaluate one case; returns whole parameters, whole plugin state per kind, this rank's plugin
    state size, the reported losses and the accuracy matrix."""
    base, accumulate = split_kind(kind)
    model = make_model()
    if sharded:
        shard_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    plugin = CASES[base](model)
    losses = LossLog()
    evaluator = EvaluationPlugin(Accuracy(), Loss(), AccuracyMatrix())
    cls = Naive if sharded else ReferenceNaive
    strategy = cls(model, opt, train_mb_size=B if sharded else WORLD * B, train_epochs=EPOCHS, eval_mb_size=3,
                   plugins=[losses] if plugin is None else [plugin, losses], evaluator=evaluator,
                   accumulate_grad_batches=accumulate)
    train, test = streams()
    for exp in train:
        strategy.train(exp)
        strategy.eval(test)
    params = {n: (p.full_tensor() if sharded else p).detach().clone() for n, p in model.named_parameters()}
    state, numel = {}, 0
    if plugin is not None and plugin._table.state is not None:
        st = plugin._table.state
        numel = st.numel
        state = {kind_: {n: (_whole(v) if sharded else v.detach().clone()) for n, v in st.views(kind_).items()}
                 for kind_ in st.kinds}
    return {"params": params, "state": state, "numel": numel, "losses": losses.values,
            "matrix": evaluator.accuracy_matrix("test")}


def _run_sharded_case(kind: str) -> dict[str, Any]:
    return run_fsdp_case(kind, sharded=True)


def worker(rank: int, port: int, outdir: str, kinds: list[str]) -> None:
    """One rank: every FSDP2 case (``_ddp_worker.run_cases_on_rank``)."""
    run_cases_on_rank(rank, port, outdir, kinds, _run_sharded_case)
