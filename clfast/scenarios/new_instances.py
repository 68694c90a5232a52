"""New instances (Avalanche's ``ni_benchmark``): the training samples split over experiences, every class in
each, and one test experience holding the whole test set.

Shuffles use a private generator seeded with ``seed``; with ``seed=None`` the global RNG draws them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._inputs import DatasetLike, check_count, check_seed, generator, load_train_test
from .dataset import Transform, as_long_vector
from .experience import NIScenario


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
    gen = generator(seed)
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
    seed = check_seed(seed)
    n_experiences = check_count("n_experiences", n_experiences, 1)
    min_class_patterns_in_exp = check_count("min_class_patterns_in_exp", min_class_patterns_in_exp, 0)
    train, test, _ = load_train_test(train_dataset, test_dataset, train_transform, eval_transform)
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

