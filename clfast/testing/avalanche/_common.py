"""Helpers shared by the Avalanche-style reference plugins (see the package docstring)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

TensorDict = dict[str, Tensor]




def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def _is_task_aware(model: nn.Module) -> bool:
    cls = type(_unwrap(model))
    if any(base.__name__ == "MultiTaskModule" for base in cls.__mro__):
        return True
    try:
        return "task_labels" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


def avalanche_forward(model: nn.Module, x: Tensor, task_labels: Tensor) -> Tensor:
    """``model(x, t)`` for a multi-task model (a ``MultiTaskModule`` or a ``forward(..., task_labels)``),
    ``model(x)`` otherwise (spec §1.9, with the task-awareness rule of docs/plugin-api.md §4)."""
    return model(x, task_labels) if _is_task_aware(model) else model(x)


def pad_to(t: Tensor, shape: Sequence[int]) -> Tensor:
    """``ParamData.expand`` (spec §4.10): the same tensor when the shape is unchanged; a new zero tensor with
    ``t`` in its leading block when exactly one dimension grew. A shrink, a different number of dimensions
    or growth along two dimensions raise ``AssertionError``."""
    shape = torch.Size(shape)
    assert len(shape) == t.dim(), "expansion cannot add dimensions"
    grown = [i for i, (new, old) in enumerate(zip(shape, t.shape, strict=True)) if new != old]
    assert all(shape[i] > t.shape[i] for i in grown), "shape cannot decrease"
    assert len(grown) <= 1, "expansion along more than one dimension"
    if not grown:
        return t
    out = torch.zeros(shape, dtype=t.dtype, device=t.device)
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


def _expand_entry(d: TensorDict, name: str, shape: Sequence[int]) -> Tensor:
    """Pads ``d[name]`` to ``shape`` and stores the result back (``ParamData.expand`` mutates its holder)."""
    d[name] = pad_to(d[name], shape)
    return d[name]


def _zeros_like_params(model: nn.Module) -> TensorDict:
    """``zerolike_params_dict``: zeros for every named parameter, on its device."""
    return {k: torch.zeros(p.shape, dtype=p.dtype, device=p.device) for k, p in model.named_parameters()}


def _copy_params(model: nn.Module) -> TensorDict:
    """``copy_params_dict(model)``: a clone of every named parameter."""
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def _copy_grads(model: nn.Module) -> TensorDict:
    """``copy_params_dict(model, copy_grad=True)``: a clone of every ``.grad``; parameters without one are
    left out."""
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def layers_and_params(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module, str, Tensor]]:
    """Avalanche's ``get_layers_and_params`` scan (spec §4.10, §8.12): ``(layer name, layer, full parameter
    name, parameter)`` for the module's own parameters, then the same, recursively, for *every* descendant
    (``named_modules``, not children), so a parameter at depth d is listed about 2^(d-1) times. SI calls it
    three times per iteration; the duplication is kept because its cost is part of what the benchmark
    measures."""
    out = [(prefix[:-1], model, prefix + n, p) for n, p in model.named_parameters(recurse=False)]
    for name, layer in model.named_modules():
        if layer is model:
            continue
        out += layers_and_params(layer, prefix + name + ".")
    return out


def _save_modes(model: nn.Module) -> dict[nn.Module, bool]:
    return {m: m.training for m in model.modules()}


def _restore_modes(model: nn.Module, modes: dict[nn.Module, bool]) -> None:
    for m in model.modules():
        m.training = modes.get(m, True)


class _Hooks:
    """Marks the object as a plugin for the strategy's distributed check (Avalanche: False for all four)."""

    supports_distributed = False
    last_penalty: Tensor | None = None

    def _record(self, penalty: Any) -> None:
        self.last_penalty = penalty.detach().reshape(()).clone() if isinstance(penalty, Tensor) \
            else torch.tensor(float(penalty))
