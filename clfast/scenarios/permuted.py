"""Domain-incremental permuted benchmarks (what Avalanche's ``PermutedMNIST`` builds, for any dataset of
tensors): every experience is the whole dataset under its own fixed permutation of the input elements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ._inputs import DatasetLike, as_dataset, check_count, check_seed, with_benchmark_transforms
from .dataset import ClassificationDataset, Transform
from .experience import CLScenario
from .transforms import PixelsPermutation


def draw_permutations(n_experiences: int, n_pixels: int, seed: int | None,
                      first_unpermuted: bool = False) -> list[torch.Tensor]:
    """The pixel permutations of a permuted benchmark, drawn as Avalanche's PermutedMNIST does.

    One ``numpy.random.RandomState(seed).permutation(n_pixels)`` per experience, in order; with
    ``first_unpermuted`` the first is replaced by the identity (the later ones do not change).
    """
    rng = np.random.RandomState(seed)
    perms = [torch.from_numpy(rng.permutation(n_pixels)).to(torch.long) for _ in range(n_experiences)]
    if first_unpermuted:
        perms[0] = torch.arange(n_pixels)
    return perms


def permuted_benchmark(
    train_dataset: DatasetLike,
    test_dataset: DatasetLike,
    n_experiences: int,
    *,
    task_labels: bool = False,
    seed: int | None = None,
    first_unpermuted: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
) -> CLScenario:
    """Domain-incremental: experience i is the whole dataset with its inputs' elements permuted.

    Args:
        train_dataset, test_dataset: datasets of tensor inputs, all of one size.
        n_experiences: the number of permutations (experiences).
        task_labels: True gives experience i the task label i, False gives 0.
        seed: seed of the permutations (see :func:`draw_permutations`); None draws fresh ones.
        first_unpermuted: leave experience 0 unpermuted (Avalanche permutes every experience).
        train_transform, eval_transform: input transforms for train and eval mode, applied after the
            permutation.

    Train and test experience i share one permutation; there is one test experience per permutation.
    Classes are renumbered 0..C-1 in sorted order (identity when they already are). The returned
    benchmark has a ``permutations`` attribute: the permutation of each experience.
    """
    n_experiences = check_count("n_experiences", n_experiences, 1)
    seed = check_seed(seed)
    train = as_dataset(train_dataset, "train_dataset")
    test = as_dataset(test_dataset, "test_dataset")
    if len(train) == 0 or len(test) == 0:
        raise ValueError("permuted_benchmark needs non-empty train and test datasets")
    sample = train._frozen_input(0)
    if not isinstance(sample, torch.Tensor):
        raise TypeError(f"permuted_benchmark needs tensor inputs, got {type(sample).__name__}")
    n_pixels = sample.numel()
    test_sample = test._frozen_input(0)
    if not isinstance(test_sample, torch.Tensor) or test_sample.numel() != n_pixels:
        raise ValueError("test inputs must be tensors of the same size as the train inputs")
    classes = train.classes
    if classes[0] < 0:
        raise ValueError(f"class ids must be non-negative, found {classes[0]}")
    unknown = sorted(set(test.classes) - set(classes))
    if unknown:
        raise ValueError(f"test_dataset has classes {unknown} absent from train_dataset")
    table = torch.full((classes[-1] + 1,), -1, dtype=torch.long)
    table[torch.tensor(classes)] = torch.arange(len(classes))
    train, test = train.remap_targets(table), test.remap_targets(table)

    perms = draw_permutations(n_experiences, n_pixels, seed, first_unpermuted)
    datasets: dict[str, list[ClassificationDataset]] = {"train": [], "eval": []}
    for exp_id, perm in enumerate(perms):
        permute: Callable[[Any], Any] = PixelsPermutation(perm)
        for group, source in (("train", train), ("eval", test)):
            ds = source.with_frozen_transform(permute).with_task_labels(exp_id if task_labels else 0)
            datasets[group].append(with_benchmark_transforms(ds, train_transform, eval_transform, group))
    scenario = CLScenario(datasets["train"], datasets["eval"], n_classes=len(classes))
    scenario.permutations = perms  # type: ignore[attr-defined]
    return scenario
