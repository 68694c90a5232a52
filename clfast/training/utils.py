"""Helpers of the templates: experience/stream normalisation, task-aware forward, module modes."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..evaluation.names import stream_name

_TASK_AWARE_CACHE: dict[type, bool] = {}


def is_experience(obj: object) -> bool:
    """True for a single experience (it has a ``dataset`` and a ``current_experience``)."""
    return hasattr(obj, "dataset") and hasattr(obj, "current_experience")


def as_experience_list(experiences: Any) -> list[Any]:
    """One experience or an iterable of experiences, as a list."""
    if is_experience(experiences):
        return [experiences]
    if not isinstance(experiences, Iterable):
        raise TypeError(f"expected an experience or an iterable of experiences, got {type(experiences).__name__}")
    return list(experiences)


def group_by_stream(eval_streams: Iterable[Any]) -> list[list[Any]]:
    """Flattens experiences and streams, then groups the experiences by ``origin_stream.name``.

    Groups keep the order in which their stream first appears; experiences keep their order.
    """
    groups: dict[str, list[Any]] = {}
    for item in eval_streams:
        for exp in as_experience_list(item):
            groups.setdefault(stream_name(exp), []).append(exp)
    return list(groups.values())


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel / DataParallel keep the wrapped model in ``.module``.
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def is_task_aware(model: nn.Module) -> bool:
    """True when the model's forward takes task labels: an Avalanche ``MultiTaskModule`` (by class name,
    Avalanche is not a dependency) or a module whose ``forward`` has a parameter named ``task_labels``."""
    cls = type(_unwrap(model))
    cached = _TASK_AWARE_CACHE.get(cls)
    if cached is None:
        if any(base.__name__ == "MultiTaskModule" for base in cls.__mro__):
            cached = True
        else:
            try:
                cached = "task_labels" in inspect.signature(cls.forward).parameters
            except (TypeError, ValueError):
                cached = False
        _TASK_AWARE_CACHE[cls] = cached
    return cached


def task_aware_forward(model: nn.Module, x: Any, task_labels: torch.Tensor) -> Any:
    """``model(x, task_labels)`` for a task-aware model, ``model(x)`` otherwise (Avalanche's
    ``avalanche_forward``)."""
    if is_task_aware(model):
        return model(x, task_labels)
    return model(x)


def save_module_modes(model: nn.Module) -> dict[nn.Module, bool]:
    """Every module's own ``training`` flag."""
    return {m: m.training for m in model.modules()}


def restore_module_modes(model: nn.Module, modes: dict[nn.Module, bool]) -> None:
    """Puts back each module's own flag; modules created since the save are set to training mode."""
    for m in model.modules():
        m.training = modes.get(m, True)


def to_device(value: Any, device: torch.device) -> Any:
    """Moves a tensor, or the tensors of a dict, to ``device`` (non-blocking); other values are kept."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value
