"""New classes (Avalanche's ``nc_benchmark``): each class's samples all go to exactly one experience.

Class-incremental, or task-incremental with ``task_labels=True``. The class order is shuffled with a
private generator seeded with ``seed`` (the draws of Avalanche's ``torch.manual_seed(seed)`` then
``torch.randperm``); with ``seed=None`` the global RNG draws it, as in Avalanche.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ._inputs import DatasetLike, check_count, check_seed, generator, load_train_test
from .dataset import Transform
from .experience import NCScenario


def _positions_of_classes(targets: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    mask = torch.isin(targets, torch.tensor(list(classes), dtype=torch.long))
    return mask.nonzero().flatten()


def _n_classes_per_exp(n_classes: int, n_experiences: int, per_exp_classes: Mapping[int, int] | None) -> list[int]:
    if per_exp_classes is None:
        if n_classes % n_experiences:
            raise ValueError(f"the {n_classes} classes cannot be split evenly over n_experiences={n_experiences}; "
                             "pass per_exp_classes to choose uneven sizes")
        return [n_classes // n_experiences] * n_experiences
    if not isinstance(per_exp_classes, Mapping):
        raise TypeError(f"per_exp_classes must be a dict {{experience id: n classes}}, "
                        f"got {type(per_exp_classes).__name__}")
    fixed: dict[int, int] = {}
    for exp_id, count in per_exp_classes.items():
        check_count("a per_exp_classes key", exp_id, 0)
        check_count(f"per_exp_classes[{exp_id}]", count, 0)
        if exp_id >= n_experiences:
            raise ValueError(f"per_exp_classes names experience {exp_id}; ids must be in [0, {n_experiences})")
        fixed[int(exp_id)] = int(count)
    assigned = sum(fixed.values())
    if assigned > n_classes:
        raise ValueError(f"per_exp_classes assigns {assigned} classes but there are only {n_classes}")
    remaining_exps = n_experiences - len(fixed)
    remaining_classes = n_classes - assigned
    if remaining_exps == 0:
        if remaining_classes:
            raise ValueError(f"per_exp_classes covers every experience but assigns {assigned} of {n_classes} classes")
        default = 0
    else:
        if remaining_classes % remaining_exps:
            raise ValueError(f"the {remaining_classes} classes left by per_exp_classes cannot be split evenly "
                             f"over the other {remaining_exps} experiences")
        default = remaining_classes // remaining_exps
    return [fixed.get(e, default) for e in range(n_experiences)]


def _class_order(
    classes: list[int], fixed_class_order: Sequence[int] | None, shuffle: bool, seed: int | None
) -> list[int]:
    if fixed_class_order is not None:
        order = [check_count("a fixed_class_order entry", c, 0) for c in fixed_class_order]
        if len(set(order)) != len(order):
            raise ValueError("fixed_class_order repeats a class")
        unknown = sorted(set(order) - set(classes))
        if unknown:
            raise ValueError(f"fixed_class_order names classes {unknown} absent from the training set")
        if not order:
            raise ValueError("fixed_class_order is empty")
        return order
    if shuffle:
        shuffled = torch.randperm(len(classes), generator=generator(seed))
        return torch.tensor(classes, dtype=torch.long)[shuffled].tolist()
    return list(classes)



def _class_mapping(n_ids: int, order: list[int], exp_classes: list[list[int]], from_zero_from_first_exp: bool,
                   from_zero_in_each_exp: bool) -> tuple[torch.Tensor, list[int]]:
    """The table original id -> benchmark id (-1: left out) and the class order in benchmark ids."""
    mapping = torch.full((n_ids,), -1, dtype=torch.long)
    if from_zero_from_first_exp:
        mapping[torch.tensor(order)] = torch.arange(len(order))
        return mapping, list(range(len(order)))
    if from_zero_in_each_exp:
        classes_order: list[int] = []
        for classes in exp_classes:
            if classes:
                mapping[torch.tensor(classes)] = torch.arange(len(classes))
            classes_order.extend(range(len(classes)))
        return mapping, classes_order
    return torch.arange(n_ids), list(order)


def nc_benchmark(
    train_dataset: DatasetLike | Sequence[DatasetLike],
    test_dataset: DatasetLike | Sequence[DatasetLike],
    n_experiences: int,
    task_labels: bool,
    *,
    shuffle: bool = True,
    seed: int | None = None,
    fixed_class_order: Sequence[int] | None = None,
    per_exp_classes: Mapping[int, int] | None = None,
    class_ids_from_zero_from_first_exp: bool = False,
    class_ids_from_zero_in_each_exp: bool = False,
    one_dataset_per_exp: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
) -> NCScenario:
    """A new-classes benchmark: each class's samples all go to exactly one experience.

    Args:
        train_dataset, test_dataset: datasets of ``(x, y, ...)`` items (tensors datasets, objects with
            ``.targets``, any map-style dataset), or equal-length lists of them. Lists are joined with
            dataset k's classes renumbered after those of datasets 0..k-1.
        n_experiences: the number of experiences (ignored with ``one_dataset_per_exp``).
        task_labels: True gives experience i the task label i (task-incremental), False gives 0.
        shuffle: shuffle the class order (with ``one_dataset_per_exp``: the dataset order).
        seed: seed of that shuffle; None uses the global torch RNG.
        fixed_class_order: explicit class order (original ids); overrides ``shuffle``. It may name a
            subset of the classes: the others are left out of the benchmark.
        per_exp_classes: ``{experience id: n classes}``; the other experiences share the remaining
            classes evenly.
        class_ids_from_zero_from_first_exp: renumber classes 0..n-1 in class order.
        class_ids_from_zero_in_each_exp: renumber each experience's classes 0..k-1 in class order.
        one_dataset_per_exp: with lists, experience k is dataset k (in an order shuffled by ``seed``
            when ``shuffle``).
        train_transform, eval_transform: input transforms for train and eval mode.

    Train-stream datasets start in train mode, test-stream datasets in eval mode. Experience i of the
    test stream holds the test samples of experience i's classes.
    """
    if class_ids_from_zero_from_first_exp and class_ids_from_zero_in_each_exp:
        raise ValueError("class_ids_from_zero_from_first_exp and class_ids_from_zero_in_each_exp are mutually "
                         "exclusive")
    seed = check_seed(seed)
    lists = isinstance(train_dataset, (list, tuple))
    if one_dataset_per_exp and not lists:
        raise ValueError("one_dataset_per_exp needs lists of train and test datasets")
    if one_dataset_per_exp and per_exp_classes:
        raise ValueError("per_exp_classes and one_dataset_per_exp are mutually exclusive")
    if one_dataset_per_exp and fixed_class_order is not None:
        raise ValueError("fixed_class_order and one_dataset_per_exp are mutually exclusive")
    if not lists and isinstance(test_dataset, (list, tuple)):
        raise ValueError("test_dataset is a list but train_dataset is not")
    train, test, class_lists = load_train_test(train_dataset, test_dataset, train_transform, eval_transform)
    if one_dataset_per_exp and class_lists is not None:
        # experience k is dataset k: its classes, in a dataset order shuffled by ``seed``
        dataset_order = list(range(len(class_lists)))
        if shuffle:
            dataset_order = torch.randperm(len(class_lists), generator=generator(seed)).tolist()
        fixed_class_order = [c for k in dataset_order for c in class_lists[k]]
        per_exp_classes = {pos: len(class_lists[k]) for pos, k in enumerate(dataset_order)}
        n_experiences = len(class_lists)
    n_experiences = check_count("n_experiences", n_experiences, 1)

    original_classes = train.classes
    if not original_classes:
        raise ValueError("train_dataset is empty")
    if original_classes[0] < 0:
        raise ValueError(f"class ids must be non-negative, found {original_classes[0]}")
    order = _class_order(original_classes, fixed_class_order, shuffle, seed)
    n_classes = len(order)
    per_exp = _n_classes_per_exp(n_classes, n_experiences, per_exp_classes)
    starts = np.cumsum([0, *per_exp]).tolist()
    exp_classes = [order[starts[e]:starts[e + 1]] for e in range(n_experiences)]

    mapping, classes_order = _class_mapping(original_classes[-1] + 1, order, exp_classes,
                                            class_ids_from_zero_from_first_exp, class_ids_from_zero_in_each_exp)
    train_sets, test_sets = [], []
    for exp_id, classes in enumerate(exp_classes):
        task = exp_id if task_labels else 0
        for source, out in ((train, train_sets), (test, test_sets)):
            part = source.subset(_positions_of_classes(source.targets, classes))
            out.append(part.remap_targets(mapping).with_task_labels(task))
    return NCScenario(
        train_sets, test_sets,
        class_mapping=mapping.tolist(),
        class_ids_from_zero_from_first_exp=class_ids_from_zero_from_first_exp,
        class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
        n_classes_per_exp=per_exp,
        classes_order=classes_order,
        classes_order_original_ids=order,
        original_classes_in_exp=[set(c) for c in exp_classes],
        n_classes=n_classes,
    )

