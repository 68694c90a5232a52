"""Helpers of the templates and plugins: experience/stream normalisation, task-aware forward, module modes,
the one DataLoader builder."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from .. import distributed as dist
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


def is_task_aware(model: nn.Module) -> bool:
    """True when the model's forward takes task labels: an Avalanche ``MultiTaskModule`` (by class name,
    Avalanche is not a dependency) or a module whose ``forward`` has a parameter named ``task_labels``."""
    cls = type(dist.unwrap(model))
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


@contextlib.contextmanager
def module_modes(model: nn.Module, training: bool | None = None) -> Iterator[None]:
    """Within the block, ``model`` is in train (``training=True``) or eval (``False``) mode, or left as it
    is (``None``); on exit every module's own ``training`` flag is put back, and modules created inside
    the block are set to training mode (what a freshly built module is)."""
    saved = {m: m.training for m in model.modules()}
    if training is not None:
        model.train(training)
    try:
        yield
    finally:
        for m in model.modules():
            m.training = saved.get(m, True)


def make_loader(dataset: Any, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0,
                pin_memory: bool = False, persistent_workers: bool = False, drop_last: bool = False,
                generator: torch.Generator | None = None, empty_name: str | None = None) -> DataLoader:
    """The one ``DataLoader`` builder of clfast (templates, AR1, the plugins' importance passes).

    The dataset's own ``collate_fn`` is used when it has one. Under ``torch.distributed`` the loader reads
    this rank's shard through :func:`clfast.distributed.distributed_sampler` (shuffled with ``seed`` plus
    the epoch set by the caller, or in order), ``batch_size`` samples per rank; in one process it shuffles
    with ``generator`` (torch's global generator when None). With ``empty_name``, an empty dataset is a
    ``ValueError`` that says ``"<empty_name> is empty"``.
    """
    if empty_name is not None and len(dataset) == 0:
        raise ValueError(f"{empty_name} is empty")
    order: dict[str, Any] = {"shuffle": shuffle}
    if dist.is_distributed():  # this rank's shard (docs/distributed.md)
        order = {"sampler": dist.distributed_sampler(dataset, shuffle=shuffle, seed=seed)}
    # ``generator`` is passed with a sampler too: every pass over the loader draws its workers' base seed from
    # it, so a strategy that owns a generator (AR1) sees the same stream of draws in one process and in many.
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=persistent_workers and num_workers > 0, drop_last=drop_last,
                      generator=generator, collate_fn=getattr(dataset, "collate_fn", None) or default_collate,
                      **order)


def to_device(value: Any, device: torch.device) -> Any:
    """Moves a tensor, or the tensors of a dict, to ``device`` (non-blocking); other values are kept."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value
