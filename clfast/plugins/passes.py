"""The regularisers' passes over an experience's data (MAS's importance, EWC's Fisher, RWalk's extra
gradient pass): the loader, the task-aware forward of one batch, its gradient averaged over the ranks, and
the progress bar."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .. import distributed as dist
from ..distributed import unwrap
from ..sharding import is_sharded
from ..training.precision import precision_of
from ..training.utils import is_task_aware, make_loader, module_modes

__all__ = ["batch_gradient", "experience_loader", "forward_batch", "gradient_pass", "progress",
           "strategy_num_workers"]

#: ``loss(output, y)``: what a pass differentiates for one batch.
LossFn = Callable[[Any, Tensor], Tensor]


def experience_loader(strategy: Any, num_workers: int = 0) -> DataLoader:
    """The raw experience data (``strategy.experience.dataset``), unshuffled, at ``train_mb_size``.

    Under ``torch.distributed``, this rank's shard of it (an unshuffled ``DistributedSampler``: rank r
    gets samples r, r+W, …), ``train_mb_size`` per rank: batch k of all ranks together is samples
    [kWB, (k+1)WB) of the data, i.e. batch k of a single process at batch size W·B (``docs/distributed.md``).
    Passes over it average each batch's gradient over the ranks (:func:`batch_gradient`) before using it.
    """
    return make_loader(strategy.experience.dataset, strategy.train_mb_size, shuffle=False, num_workers=num_workers)


def forward_batch(model: nn.Module, batch: Sequence[Any], device: torch.device) -> tuple[Any, Tensor]:
    """Forward one ``(x, y[, ..., t])`` batch; returns (output, y on the device).

    A task-aware model gets the batch's task labels (the last element of a batch with 3 or more
    elements). A 2-element batch has no task labels: a task-aware model then raises ``ValueError``
    (Avalanche would route by the class labels). A DDP-wrapped model is run unwrapped (no gradient
    all-reduce in backward: :func:`batch_gradient` averages over the ranks itself).
    """
    model = unwrap(model)
    if len(batch) < 2:
        raise ValueError(f"expected (x, y[, t]) batches, got {len(batch)} elements")
    x = batch[0].to(device, non_blocking=True)
    y = batch[1].to(device, non_blocking=True)
    if is_task_aware(model):
        if len(batch) < 3:
            raise ValueError("the model is task-aware but the experience's batches have no task labels")
        return model(x, batch[-1].to(device, non_blocking=True)), y
    return model(x), y


def batch_gradient(model: nn.Module, batch: Sequence[Any], device: torch.device, loss: LossFn,
                   params: Sequence[Tensor], *, set_to_none: bool, strategy: Any = None) -> None:
    """``.grad`` ← ∇ ``loss`` of one batch, averaged over the ranks as DDP would (the pass runs on the
    unwrapped model); ``set_to_none=False`` zeroes the old gradients instead, so that a parameter without
    a gradient in this batch reads as 0.

    In ``strategy``'s precision: the forward and loss under its autocast, the backward scaled and the scale
    divided out again under ``"16-mixed"`` (:meth:`clfast.training.precision.Precision.pass_backward`), so
    that ``.grad`` holds true gradients."""

    def batch_loss() -> Tensor:
        out, y = forward_batch(model, batch, device)
        return loss(out, y)

    precision_of(strategy).pass_backward(batch_loss, params, lambda: model.zero_grad(set_to_none=set_to_none))
    if not any(is_sharded(p) for p in model.parameters()):  # FSDP2's backward has reduce-scattered them already
        dist.all_reduce_grads_(params)  # distributed: the global batch's gradient (docs/distributed.md)


def gradient_pass(strategy: Any, params: Sequence[Tensor], loss: LossFn, update: Callable[[int], None], *,
                  training: bool, set_to_none: bool, num_workers: int = 0, verbose: bool = False,
                  desc: str = "") -> int:
    """One pass over the experience (:func:`experience_loader`) with the model in train (``training``) or
    eval mode, every module's mode restored afterwards: per batch k (from 1), :func:`batch_gradient`, then
    ``update(k)`` reads ``.grad``. Returns the number of batches."""
    model = strategy.model
    loader = experience_loader(strategy, num_workers)
    n_batches = 0
    with module_modes(model, training=training):
        for batch in progress(loader, verbose, desc, total=len(loader) if verbose else None):
            batch_gradient(model, batch, strategy.device, loss, params, set_to_none=set_to_none, strategy=strategy)
            n_batches += 1
            update(n_batches)
    return n_batches


def progress(iterable: Iterable[Any], enabled: bool, desc: str, total: int | None = None) -> Iterable[Any]:
    """A tqdm bar over ``iterable`` when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def strategy_num_workers(kwargs: Mapping[str, Any]) -> int:
    """The ``num_workers`` a hook was called with (0 when absent or not a valid count)."""
    value = kwargs.get("num_workers", 0)
    return value if isinstance(value, int) and value >= 0 else 0
