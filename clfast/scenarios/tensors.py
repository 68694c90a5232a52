"""Benchmarks made of given tensors (Avalanche's ``tensors_benchmark``): one experience per ``(x, y)`` pair."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._inputs import with_benchmark_transforms
from .dataset import ClassificationDataset, Transform, as_long_vector
from .experience import CLScenario


def _tensor_experience(pair: Any, where: str, task_label: int) -> ClassificationDataset:
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise ValueError(f"{where} must be an (x, y) pair of tensors")
    x, y = pair
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{where}: x must be a tensor or array, got {type(x).__name__}") from err
    if x.dim() == 0:
        raise ValueError(f"{where}: x needs a sample dimension")
    y_vec = as_long_vector(y, f"{where} targets")
    if y_vec.numel() != x.shape[0]:
        raise ValueError(f"{where}: x has {x.shape[0]} samples but y has {y_vec.numel()} targets")
    return ClassificationDataset(x, y_vec, task_label)


def tensors_benchmark(
    train_tensors: Sequence[Sequence[Any]],
    test_tensors: Sequence[Sequence[Any]],
    *,
    task_labels: Sequence[int],
    complete_test_set_only: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
) -> CLScenario:
    """One experience per ``(x, y)`` pair: ``train_tensors[i]`` is training experience i.

    Args:
        train_tensors: a list of ``(x, y)`` pairs, one per training experience.
        test_tensors: a list of ``(x, y)`` pairs, one per test experience (exactly one when
            ``complete_test_set_only``).
        task_labels: the task label of each experience; test experience i gets ``task_labels[i]``.
        complete_test_set_only: the test stream is a single experience.
        train_transform, eval_transform: input transforms for train and eval mode.
    """
    if not isinstance(train_tensors, (list, tuple)) or not train_tensors:
        raise ValueError("train_tensors must be a non-empty list of (x, y) pairs")
    if not isinstance(test_tensors, (list, tuple)) or not test_tensors:
        raise ValueError("test_tensors must be a non-empty list of (x, y) pairs")
    labels = as_long_vector(task_labels, "task_labels").tolist()
    needed = max(len(train_tensors), len(test_tensors))
    if len(labels) < needed:
        raise ValueError(f"task_labels has {len(labels)} entries, needs one per experience ({needed})")
    if complete_test_set_only and len(test_tensors) != 1:
        raise ValueError(f"complete_test_set_only needs exactly one test (x, y) pair, got {len(test_tensors)}")
    train_sets = [with_benchmark_transforms(_tensor_experience(p, f"train_tensors[{i}]", labels[i]),
                                             train_transform, eval_transform, "train")
                  for i, p in enumerate(train_tensors)]
    test_sets = [with_benchmark_transforms(_tensor_experience(p, f"test_tensors[{i}]", labels[i]),
                                            train_transform, eval_transform, "eval")
                 for i, p in enumerate(test_tensors)]
    return CLScenario(train_sets, test_sets, complete_test_set_only=complete_test_set_only)
