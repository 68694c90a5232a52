"""The 2-process gloo runs of ``test_fsdp.py``: the cases of ``_ddp_worker`` with the model under FSDP2
(``clfast.sharding.shard_model``: ``fully_shard`` on each Linear, then on the root) instead of
``DistributedDataParallel``, and their single-process references at ``W·B`` per batch (the same global batches)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from _ddp_worker import CASES, EPOCHS, WORLD, B, ReferenceNaive, make_model, run_cases_on_rank, split_kind, streams

from clfast import distributed as dist
from clfast.evaluation import Accuracy, AccuracyMatrix, EvaluationPlugin, Loss
from clfast.sharding import shard_model
from clfast.strategies import Naive
from clfast.training.sharded_checkpoint import load_sharded_checkpoint, save_sharded_checkpoint

#: The plugins FSDP2 runs (``docs/distributed.md``, "FSDP2"); CWR* and AR1 are not among them.
FSDP_CASES = ["naive", "mas", "ewc", "ewc_online", "si", "rwalk", "rwalk_pass", "si+accum2", "rwalk+accum2"]
#: Sharded checkpoints: saved after the first experience, restored into a new strategy (``run_resume_case``).
RESUME_CASES = ["si+resume", "rwalk+resume"]


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


def _sharded_strategy(kind: str) -> tuple[Any, Any]:
    model = shard_model(make_model())
    plugin = CASES[kind](model)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), train_mb_size=B,
                     train_epochs=EPOCHS, plugins=[plugin], evaluator=EvaluationPlugin())
    return strategy, plugin


def _whole_run(strategy: Any, plugin: Any) -> dict[str, Any]:
    st = plugin._table.state
    return {"params": {n: p.full_tensor().detach().clone() for n, p in strategy.model.named_parameters()},
            "state": {k: {n: _whole(v) for n, v in st.views(k).items()} for k in st.kinds}}


def run_refusal_case(kind: str) -> dict[str, Any]:
    """``"refusals"``: what FSDP2 does not take, each a ValueError naming it."""
    model = shard_model(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    out = {}
    try:
        Naive(model, opt, precision="16-mixed", evaluator=EvaluationPlugin())
    except ValueError as err:
        out["16-mixed"] = str(err)
    strategy = Naive(model, opt, train_mb_size=B, plugins=[CASES["ewc"](model)], evaluator=EvaluationPlugin())
    strategy.plugins[0].fisher = "sample"
    try:
        strategy.train(streams()[0][0])
    except ValueError as err:
        out["fisher=sample"] = str(err)
    return out


def run_resume_case(kind: str) -> dict[str, Any]:
    """``"si+resume"``: train experience 0, save a sharded checkpoint, train experience 1; then a new strategy
    restores the checkpoint and trains experience 1 again. Returns both ends (whole tensors) and the files."""
    base = kind.removesuffix("+resume")
    directory = Path(dist.broadcast_object(tempfile.mkdtemp(prefix="clfast-fsdp-ckpt-")))
    train, _ = streams()
    strategy, plugin = _sharded_strategy(base)
    strategy.train(train[0])
    save_sharded_checkpoint(strategy, directory, extra={"position": 1})
    save_sharded_checkpoint(strategy, directory, extra={"position": 1})  # a second one replaces the first
    strategy.train(train[1])
    straight = _whole_run(strategy, plugin)
    strategy, plugin = _sharded_strategy(base)
    extra = load_sharded_checkpoint(strategy, directory)
    strategy.train(train[1])
    resumed = _whole_run(strategy, plugin)
    files = sorted(str(p.relative_to(directory)) for p in directory.iterdir())
    dist.barrier()
    if dist.is_main_process():
        shutil.rmtree(directory)
    return {"straight": straight, "resumed": resumed, "extra": extra, "files": files}


def _run_sharded_case(kind: str) -> dict[str, Any]:
    if kind.endswith("+resume"):
        return run_resume_case(kind)
    if kind == "refusals":
        return run_refusal_case(kind)
    return run_fsdp_case(kind, sharded=True)


def worker(rank: int, port: int, outdir: str, kinds: list[str]) -> None:
    """One rank: every FSDP2 case (``_ddp_worker.run_cases_on_rank``)."""
    run_cases_on_rank(rank, port, outdir, kinds, _run_sharded_case)
