"""Small helpers for multi-process training with ``torch.distributed`` (``docs/distributed.md``).

Every helper is a no-op (or answers as a single process would) when ``torch.distributed`` is not
available or not initialised, so library code can call them unconditionally and single-process runs
do exactly what they did before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, DistributedSampler

__all__ = [
    "all_gather_object",
    "all_reduce_grads_",
    "all_reduce_max_",
    "all_reduce_mean_",
    "all_reduce_sum_",
    "barrier",
    "broadcast_object",
    "comm_device",
    "distributed_sampler",
    "is_distributed",
    "is_main_process",
    "rank",
    "set_gradient_sync",
    "unwrap",
    "world_size",
]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and its default process group is initialised."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the process that logs and writes files."""
    return rank() == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The wrapped module of a ``DistributedDataParallel`` / ``DataParallel`` model; the model itself otherwise."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Whether the next forward and backward of ``model`` average the gradients over the ranks (``enabled``) or
    only accumulate them locally: what ``DistributedDataParallel.no_sync()`` switches (set before the forward,
    which prepares DDP's backward) or FSDP2's ``set_requires_gradient_sync``. For the minibatches of an
    accumulation window before its last: the last backward then averages the window's sum, so the step is the
    same with one collective per step instead of one per minibatch. Any other model: no effect."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model.require_backward_grad_sync = enabled
        return
    setter = getattr(model, "set_requires_gradient_sync", None)  # an FSDP2 module
    if setter is not None:
        setter(enabled)


def comm_device() -> torch.device:
    """Where tensors for collectives must live: the current CUDA device with NCCL, the CPU otherwise."""
    if is_distributed() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks, in place (a no-op when not distributed); returns it."""
    if world_size() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def all_reduce_max_(tensor: Tensor) -> Tensor:
    """Element-wise maximum of ``tensor`` over all ranks, in place (a no-op when not distributed); returns it."""
    if world_size() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor


def all_reduce_mean_(tensor: Tensor) -> Tensor:
    """Average ``tensor`` over all ranks, in place (a no-op when not distributed); returns it."""
    n = world_size()
    if n > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        tensor.div_(n)
    return tensor


def all_reduce_grads_(params: Sequence[Tensor], *, weight: float | None = None, missing: str = "zeros") -> None:
    """Average the ``.grad`` of ``params`` over all ranks, in place, with one collective per dtype.

    What DistributedDataParallel does after ``backward()``, for passes that run outside it (the plugins'
    importance passes, AR1). Parameters that do not require grad are skipped. A parameter that requires
    grad but has no ``.grad`` on this rank takes part as zeros and is given a zero ``.grad`` with
    ``missing="zeros"`` (another rank may have one; adding |0| or 0² changes no importance), or is left out
    with ``missing="skip"`` (every rank must then have the same set of gradients, as in AR1).

    With ``weight`` (this rank's, > 0) the result is the weighted mean Σ_r w_r·g_r / Σ_r w_r, e.g. the
    mean-loss gradient over the union of the ranks' minibatches when w_r is rank r's row count. A no-op
    when not distributed.
    """
    if missing not in ("zeros", "skip"):
        raise ValueError(f"missing must be 'zeros' or 'skip', got {missing!r}")
    n = world_size()
    if n <= 1:
        return
    grads: list[Tensor] = []
    for p in params:
        if not p.requires_grad:
            continue
        if p.grad is None:
            if missing == "skip":
                continue
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    dev = comm_device()
    for dtype, group in sorted(by_dtype.items(), key=lambda kv: str(kv[0])):  # the same order on every rank
        parts = [g.detach().reshape(-1).to(dev) for g in group]
        if weight is not None:  # Σ w·g and Σ w in one collective
            parts = [x * weight for x in parts] + [torch.full((1,), float(weight), dtype=dtype, device=dev)]
        flat = torch.cat(parts)
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        flat = flat.div_(n) if weight is None else flat[:-1] / flat[-1]
        offset = 0
        with torch.no_grad():
            for g in group:
                k = g.numel()
                g.copy_(flat[offset:offset + k].view_as(g))
                offset += k


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (picklable objects); ``obj`` itself when not distributed."""
    if world_size() <= 1:
        return obj
    box = [obj if rank() == src else None]
    torch.distributed.broadcast_object_list(box, src=src, device=comm_device())
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` when not distributed)."""
    if world_size() <= 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (a no-op when not distributed)."""
    if world_size() > 1:
        torch.distributed.barrier()


def distributed_sampler(dataset: Dataset, *, shuffle: bool, seed: int = 0) -> DistributedSampler:
    """This rank's ``DistributedSampler`` of ``dataset`` (``drop_last=False``: the index list is padded by
    repeating its first indices until it divides by the world size, so every rank gets the same count).
    Rank r gets positions r, r+W, r+2W, … of the (shuffled with ``seed + epoch``, or in order) list."""
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed,
                              drop_last=False)
