"""This rank's shard of a sharded parameter, as the plugins' flat state and the fused ops see it
(``docs/distributed.md``, "FSDP2").

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) a parameter is a ``DTensor`` sharded on dim 0 and its
``.grad``, after backward, a ``DTensor`` holding this rank's shard of the gradient averaged over the ranks
(reduce-scatter). The plugins keep their state over the local shards only, so each rank holds 1/W of it. A
*shard view* is a plain tensor over the local shard's storage (writes to it are writes to the parameter) that
stands for the parameter everywhere a plugin or op takes a parameter; :func:`grad_of` and :func:`set_grad` reach
the parameter's gradient through it. Without DTensors every function here is the identity or plain ``.grad``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["grad_of", "is_sharded", "is_sharded_model", "set_grad", "shard_model", "shard_view", "whole"]

# Where a shard view keeps its parameter (an attribute of the view; the parameter never refers back).
_SOURCE = "_clfast_sharded_param"


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without torch.distributed
        return None
    return DTensor


def is_sharded(t: Any) -> bool:
    """``t`` is a ``DTensor`` (a parameter under FSDP2)."""
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def is_sharded_model(model: torch.nn.Module) -> bool:
    """Some parameter of ``model`` is a ``DTensor``."""
    return any(is_sharded(p) for p in model.parameters())


def shard_view(p: Tensor) -> Tensor:
    """For a ``DTensor`` parameter, a plain tensor over this rank's shard (same storage, its ``requires_grad``
    the parameter's, contiguous); any other tensor is returned as it is. The shard may be empty (a dim 0 smaller
    than the world size)."""
    if not is_sharded(p):
        return p
    local = p._local_tensor  # the shard FSDP2 owns; to_local() would add an autograd node per call
    if not local.is_contiguous():
        raise ValueError("a DTensor parameter whose local shard is not contiguous; FSDP2's dim-0 shards are")
    view = local.detach()
    view.requires_grad_(p.requires_grad)
    setattr(view, _SOURCE, p)
    return view


def grad_of(t: Tensor) -> Tensor | None:
    """``t.grad``; for a shard view, the local shard of its parameter's gradient (same storage), or None."""
    source = getattr(t, _SOURCE, None)
    if source is None:
        return t.grad
    g = source.grad
    return None if g is None else g._local_tensor


def set_grad(t: Tensor, g: Tensor) -> None:
    """``t.grad = g``; for a shard view, the parameter's gradient becomes the ``DTensor`` whose local shard is
    ``g`` (the parameter's placements)."""
    source = getattr(t, _SOURCE, None)
    if source is None:
        t.grad = g
        return
    cls = _dtensor_type()
    assert cls is not None
    source.grad = cls.from_local(g, source.device_mesh, source.placements, shape=source.shape,
                                 stride=source.stride())


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` under FSDP2, in place: ``fully_shard`` on every module that owns parameters of its own (innermost
    first), then on the root, over the default process group (gloo on the CPU, NCCL on CUDA). Each such module's
    parameters are all-gathered for its forward and backward only; between them every rank holds its dim-0 shard.
    Returns ``model``."""
    from torch.distributed.fsdp import fully_shard

    owners = [m for m in model.modules() if m is not model and any(True for _ in m.parameters(recurse=False))]
    for m in reversed(owners):  # children before their parents, as fully_shard wants
        fully_shard(m)
    fully_shard(model)
    return model


def whole(t: Tensor) -> Tensor:
    """The whole tensor of a ``DTensor`` (a collective: every rank must call it), else ``t``."""
    return t.full_tensor() if is_sharded(t) else t
