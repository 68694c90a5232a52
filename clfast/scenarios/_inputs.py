"""What every benchmark builder does to its arguments before splitting them into experiences.

Datasets of any accepted kind become :class:`ClassificationDataset`; lists of datasets are joined with
dataset k's classes renumbered after those of datasets 0..k-1; the benchmark's train/eval transforms are
added after the datasets' own; counts and seeds are checked; seeded draws use a private generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._checks import check_int
from .dataset import ClassificationDataset, Transform, concat_datasets

DatasetLike = Any
"""Anything :meth:`ClassificationDataset.from_dataset` accepts."""


class _Compose:
    """Apply transforms in order."""

    def __init__(self, *fns: Transform) -> None:
        self.fns = fns

    def __call__(self, x: Any) -> Any:
        for fn in self.fns:
            x = fn(x)
        return x


def check_count(name: str, value: Any, low: int) -> int:
    """:func:`clfast._checks.check_int` that also takes numpy integers (entries of index arrays) as ints."""
    return check_int(name, int(value) if isinstance(value, np.integer) else value, low=low)


def check_seed(seed: Any) -> int | None:
    """``None`` (use the global RNG) or a non-negative int seed."""
    return None if seed is None else check_count("seed", seed, 0)


def generator(seed: int | None) -> torch.Generator | None:
    """A private CPU generator seeded with ``seed`` (the draws of ``torch.manual_seed(seed)``), or None for the
    global RNG; building a benchmark thus never reseeds the global RNG."""
    return torch.Generator().manual_seed(seed) if seed is not None else None


def as_dataset(dataset: DatasetLike, name: str) -> ClassificationDataset:
    """``dataset`` as a ClassificationDataset; errors keep their type and name the argument."""
    try:
        return ClassificationDataset.from_dataset(dataset)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: {err}") from err


def with_benchmark_transforms(dataset: ClassificationDataset, train_transform: Transform | None,
                              eval_transform: Transform | None, group: str) -> ClassificationDataset:
    """Add the benchmark's group transforms after any the dataset already has, then pick ``group``."""
    if train_transform is not None or eval_transform is not None:
        merged = []
        for key, extra in (("train", train_transform), ("eval", eval_transform)):
            own = dataset._groups[key]
            merged.append(extra if own is None else own if extra is None else _Compose(own, extra))
        dataset = dataset.with_transforms(train_transform=merged[0], eval_transform=merged[1])
    return dataset.train() if group == "train" else dataset.eval()


def _check_dataset_lists(train: Sequence[Any], test: Any) -> None:
    if not isinstance(test, (list, tuple)):
        raise ValueError("when train_dataset is a list, test_dataset must be a list too")
    if len(train) != len(test):
        raise ValueError(f"train and test dataset lists differ in length ({len(train)} vs {len(test)})")
    if not train:
        raise ValueError("the dataset lists are empty")


def _concat_sequentially(
    train_list: Sequence[DatasetLike], test_list: Sequence[DatasetLike]
) -> tuple[ClassificationDataset, ClassificationDataset, list[list[int]]]:
    """Concatenate datasets, giving dataset k's classes the ids after those of datasets 0..k-1.

    Within a dataset the classes keep their sorted order. Returns the train and test concatenations
    and, per dataset, its new class ids.
    """
    trains, tests, class_lists = [], [], []
    offset = 0
    for k, (tr_raw, te_raw) in enumerate(zip(train_list, test_list, strict=True)):
        tr = as_dataset(tr_raw, f"train_dataset[{k}]")
        te = as_dataset(te_raw, f"test_dataset[{k}]")
        classes = tr.classes
        if classes and classes[0] < 0:
            raise ValueError(f"train_dataset[{k}] has negative class ids")
        unknown = sorted(set(te.classes) - set(classes))
        if unknown:
            raise ValueError(f"test_dataset[{k}] has classes {unknown} absent from train_dataset[{k}]")
        table = torch.full(((classes[-1] + 1) if classes else 0,), -1, dtype=torch.long)
        table[torch.tensor(classes, dtype=torch.long)] = torch.arange(offset, offset + len(classes))
        trains.append(tr.remap_targets(table))
        tests.append(te.remap_targets(table))
        class_lists.append(list(range(offset, offset + len(classes))))
        offset += len(classes)
    return concat_datasets(trains), concat_datasets(tests), class_lists


def load_train_test(
    train_dataset: DatasetLike | Sequence[DatasetLike], test_dataset: DatasetLike | Sequence[DatasetLike],
    train_transform: Transform | None, eval_transform: Transform | None,
) -> tuple[ClassificationDataset, ClassificationDataset, list[list[int]] | None]:
    """The train set (in train mode) and test set (in eval mode) of a benchmark, with its transforms.

    Equal-length lists are joined as :func:`_concat_sequentially` does; the third value is then each
    dataset's new class ids (None for single datasets).
    """
    class_lists = None
    if isinstance(train_dataset, (list, tuple)):
        _check_dataset_lists(train_dataset, test_dataset)
        train, test, class_lists = _concat_sequentially(train_dataset, test_dataset)
    else:
        train = as_dataset(train_dataset, "train_dataset")
        test = as_dataset(test_dataset, "test_dataset")
    return (with_benchmark_transforms(train, train_transform, eval_transform, "train"),
            with_benchmark_transforms(test, train_transform, eval_transform, "eval"), class_lists)
