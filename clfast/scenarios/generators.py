"""Benchmark builders with Avalanche's names and keyword arguments.

* :func:`nc_benchmark` -- new classes: class-incremental, or task-incremental with ``task_labels=True``.
* :func:`ni_benchmark` -- new instances: the training set split over experiences, one test experience.
* :func:`tensors_benchmark` -- one experience per ``(x, y)`` pair of tensors.
* :func:`permuted_benchmark` -- domain-incremental: every experience is the whole dataset under its own
  fixed pixel permutation (what Avalanche's ``PermutedMNIST`` builds, for any dataset of tensors).

Random choices use a private generator seeded with ``seed`` (the same draws as Avalanche's
``torch.manual_seed(seed)`` followed by ``torch.randperm``), so building a benchmark never reseeds the
global RNG; with ``seed=None`` they use the global RNG, as Avalanche does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .dataset import ClassificationDataset, Transform, as_long_vector, concat_datasets
from .experience import CLScenario, NCScenario, NIScenario
from .transforms import PixelsPermutation

DatasetLike = Any


# ------------------------------------------------------------------------------------------------
# shared helpers


class _Compose:
    """Apply transforms in order."""

    def __init__(self, *fns: Transform) -> None:
        self.fns = fns

    def __call__(self, x: Any) -> Any:
        for fn in self.fns:
            x = fn(x)
        return x


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    return _check_int(seed, "seed", 0)


def _generator(seed: int | None) -> torch.Generator | None:
    return torch.Generator().manual_seed(seed) if seed is not None else None


def _as_dataset(dataset: DatasetLike, name: str) -> ClassificationDataset:
    try:
        return ClassificationDataset.from_dataset(dataset)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: {err}") from err


def _with_benchmark_transforms(dataset: ClassificationDataset, train_transform: Transform | None,
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
        tr = _as_dataset(tr_raw, f"train_dataset[{k}]")
        te = _as_dataset(te_raw, f"test_dataset[{k}]")
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


def _positions_of_classes(targets: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    mask = torch.isin(targets, torch.tensor(list(classes), dtype=torch.long))
    return mask.nonzero().flatten()


# ------------------------------------------------------------------------------------------------
# new classes


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
        _check_int(exp_id, "a per_exp_classes key", 0)
        _check_int(count, f"per_exp_classes[{exp_id}]", 0)
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
        order = [_check_int(c, "a fixed_class_order entry", 0) for c in fixed_class_order]
        if len(set(order)) != len(order):
            raise ValueError("fixed_class_order repeats a class")
        unknown = sorted(set(order) - set(classes))
        if unknown:
            raise ValueError(f"fixed_class_order names classes {unknown} absent from the training set")
        if not order:
            raise ValueError("fixed_class_order is empty")
        return order
    if shuffle:
        shuffled = torch.randperm(len(classes), generator=_generator(seed))
        return torch.tensor(classes, dtype=torch.long)[shuffled].tolist()
    return list(classes)


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
    seed = _check_seed(seed)
    if isinstance(train_dataset, (list, tuple)):
        _check_dataset_lists(train_dataset, test_dataset)
        if one_dataset_per_exp and per_exp_classes:
            raise ValueError("per_exp_classes and one_dataset_per_exp are mutually exclusive")
        if one_dataset_per_exp and fixed_class_order is not None:
            raise ValueError("fixed_class_order and one_dataset_per_exp are mutually exclusive")
        train, test, class_lists = _concat_sequentially(train_dataset, test_dataset)
        if one_dataset_per_exp:
            dataset_order = list(range(len(class_lists)))
            if shuffle:
                dataset_order = torch.randperm(len(class_lists), generator=_generator(seed)).tolist()
            fixed_class_order = [c for k in dataset_order for c in class_lists[k]]
            per_exp_classes = {pos: len(class_lists[k]) for pos, k in enumerate(dataset_order)}
            n_experiences = len(class_lists)
    else:
        if one_dataset_per_exp:
            raise ValueError("one_dataset_per_exp needs lists of train and test datasets")
        if isinstance(test_dataset, (list, tuple)):
            raise ValueError("test_dataset is a list but train_dataset is not")
        train = _as_dataset(train_dataset, "train_dataset")
        test = _as_dataset(test_dataset, "test_dataset")
    n_experiences = _check_int(n_experiences, "n_experiences", 1)
    train = _with_benchmark_transforms(train, train_transform, eval_transform, "train")
    test = _with_benchmark_transforms(test, train_transform, eval_transform, "eval")

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

    mapping = torch.full((original_classes[-1] + 1,), -1, dtype=torch.long)
    if class_ids_from_zero_from_first_exp:
        mapping[torch.tensor(order)] = torch.arange(n_classes)
        classes_order = list(range(n_classes))
    elif class_ids_from_zero_in_each_exp:
        classes_order = []
        for classes in exp_classes:
            if classes:
                mapping[torch.tensor(classes)] = torch.arange(len(classes))
            classes_order.extend(range(len(classes)))
    else:
        mapping = torch.arange(original_classes[-1] + 1)
        classes_order = list(order)

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


# ------------------------------------------------------------------------------------------------
# new instances


def _check_fixed_assignment(assignment: Sequence[Sequence[int]], n_experiences: int, n: int) -> list[torch.Tensor]:
    if len(assignment) != n_experiences:
        raise ValueError(f"fixed_exp_assignment has {len(assignment)} experiences, n_experiences is {n_experiences}")
    parts = [as_long_vector(a, f"fixed_exp_assignment[{e}]") for e, a in enumerate(assignment)]
    joined = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
    if joined.numel() and (int(joined.min()) < 0 or int(joined.max()) >= n):
        raise ValueError(f"fixed_exp_assignment indices must lie in [0, {n})")
    if torch.unique(joined).numel() != joined.numel():
        raise ValueError("fixed_exp_assignment assigns a training sample more than once")
    return parts


def _ni_assignment(targets: torch.Tensor, n_experiences: int, shuffle: bool, seed: int | None,
                   balance_experiences: bool, min_class_patterns_in_exp: int) -> list[torch.Tensor]:
    """Split training positions over experiences (Avalanche's NIScenario algorithm)."""
    classes, counts = torch.unique(targets, return_counts=True)
    if int(counts.min()) < n_experiences * min_class_patterns_in_exp:
        raise ValueError(f"min_class_patterns_in_exp={min_class_patterns_in_exp} cannot be met: the rarest class "
                         f"has {int(counts.min())} samples for {n_experiences} experiences")
    gen = _generator(seed)
    per_class = [(targets == c).nonzero().flatten() for c in classes.tolist()]
    if shuffle:
        per_class = [idx[torch.randperm(idx.numel(), generator=gen)] for idx in per_class]

    def extra_slots(n_extra: int) -> list[int]:
        if shuffle:
            return torch.randperm(n_experiences, generator=gen).tolist()[:n_extra]
        return list(range(n_extra))

    exp_parts: list[list[torch.Tensor]] = [[] for _ in range(n_experiences)]
    if balance_experiences:
        structure = [[int(c) // n_experiences] * n_experiences for c in counts.tolist()]
        for cls_pos, count in enumerate(counts.tolist()):
            for exp_id in extra_slots(count % n_experiences):
                structure[cls_pos][exp_id] += 1
        for cls_pos, idx in enumerate(per_class):
            bounds = np.cumsum([0, *structure[cls_pos]]).tolist()
            for exp_id in range(n_experiences):
                exp_parts[exp_id].append(idx[bounds[exp_id]:bounds[exp_id + 1]])
        return [torch.cat(parts) for parts in exp_parts]

    taken = torch.zeros(targets.numel(), dtype=torch.bool)
    m = min_class_patterns_in_exp
    for exp_id in range(n_experiences):
        for idx in per_class:
            chosen = idx[exp_id * m:(exp_id + 1) * m]
            exp_parts[exp_id].append(chosen)
            taken[chosen] = True
    remaining = (~taken).nonzero().flatten()
    if shuffle:
        remaining = remaining[torch.randperm(remaining.numel(), generator=gen)]
    size, n_extra = divmod(remaining.numel(), n_experiences)
    for exp_id in range(n_experiences):
        exp_parts[exp_id].append(remaining[exp_id * size:(exp_id + 1) * size])
    cursor = n_experiences * size
    for exp_id in extra_slots(n_extra):
        exp_parts[exp_id].append(remaining[cursor:cursor + 1])
        cursor += 1
    return [torch.cat(parts) for parts in exp_parts]


def ni_benchmark(
    train_dataset: DatasetLike | Sequence[DatasetLike],
    test_dataset: DatasetLike | Sequence[DatasetLike],
    n_experiences: int,
    *,
    task_labels: bool = False,
    shuffle: bool = True,
    seed: int | None = None,
    balance_experiences: bool = False,
    min_class_patterns_in_exp: int = 0,
    fixed_exp_assignment: Sequence[Sequence[int]] | None = None,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
) -> NIScenario:
    """A new-instances benchmark: the training samples split over experiences, all classes in each.

    Args:
        train_dataset, test_dataset: datasets (or equal-length lists, joined as in :func:`nc_benchmark`).
        n_experiences: the number of training experiences.
        task_labels: True gives training experience i the task label i; the test experience has 0.
        shuffle: shuffle the samples before splitting (also which experiences get the leftovers).
        seed: seed of the shuffle; None uses the global torch RNG.
        balance_experiences: spread each class's samples evenly over the experiences.
        min_class_patterns_in_exp: at least this many samples of every class in every experience.
        fixed_exp_assignment: explicit training-set indices for each experience (overrides the above).
        train_transform, eval_transform: input transforms for train and eval mode.

    The test stream is a single experience holding the whole test set, as in Avalanche.
    """
    seed = _check_seed(seed)
    n_experiences = _check_int(n_experiences, "n_experiences", 1)
    min_class_patterns_in_exp = _check_int(min_class_patterns_in_exp, "min_class_patterns_in_exp", 0)
    if isinstance(train_dataset, (list, tuple)):
        _check_dataset_lists(train_dataset, test_dataset)
        train, test, _ = _concat_sequentially(train_dataset, test_dataset)
    else:
        train = _as_dataset(train_dataset, "train_dataset")
        test = _as_dataset(test_dataset, "test_dataset")
    train = _with_benchmark_transforms(train, train_transform, eval_transform, "train")
    test = _with_benchmark_transforms(test, train_transform, eval_transform, "eval")
    if len(train) == 0:
        raise ValueError("train_dataset is empty")
    if fixed_exp_assignment is not None:
        assignment = _check_fixed_assignment(fixed_exp_assignment, n_experiences, len(train))
    else:
        if n_experiences > len(train):
            raise ValueError(f"n_experiences={n_experiences} exceeds the {len(train)} training samples")
        assignment = _ni_assignment(train.targets, n_experiences, shuffle, seed, balance_experiences,
                                    min_class_patterns_in_exp)
    train_sets = [train.subset(idx).with_task_labels(e if task_labels else 0) for e, idx in enumerate(assignment)]
    return NIScenario(train_sets, [test.with_task_labels(0)], train_exps_patterns_assignment=assignment)


# ------------------------------------------------------------------------------------------------
# tensors


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
    train_sets = [_with_benchmark_transforms(_tensor_experience(p, f"train_tensors[{i}]", labels[i]),
                                             train_transform, eval_transform, "train")
                  for i, p in enumerate(train_tensors)]
    test_sets = [_with_benchmark_transforms(_tensor_experience(p, f"test_tensors[{i}]", labels[i]),
                                            train_transform, eval_transform, "eval")
                 for i, p in enumerate(test_tensors)]
    return CLScenario(train_sets, test_sets, complete_test_set_only=complete_test_set_only)


# ------------------------------------------------------------------------------------------------
# permuted (domain-incremental)


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
    n_experiences = _check_int(n_experiences, "n_experiences", 1)
    seed = _check_seed(seed)
    train = _as_dataset(train_dataset, "train_dataset")
    test = _as_dataset(test_dataset, "test_dataset")
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
            datasets[group].append(_with_benchmark_transforms(ds, train_transform, eval_transform, group))
    scenario = CLScenario(datasets["train"], datasets["eval"], n_classes=len(classes))
    scenario.permutations = perms  # type: ignore[attr-defined]
    return scenario
