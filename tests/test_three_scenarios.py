"""The three scenarios of van de Ven & Tolias (2019) on Split-Digits and Split-MNIST, against references built
from the raw datasets: experiences hold the digit pairs 0/1 ... 8/9 in dataset order, with the setting's task
labels and targets; the authors' per-seed digit order; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import needs_mnist

from clfast.scenarios import (
    THREE_SCENARIOS,
    NCScenario,
    authors_digit_order,
    digits_datasets,
    load_mnist,
    three_scenarios_split_digits,
    three_scenarios_split_mnist,
)


def _items(dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All of a dataset's (x, y, t) through its public item access, stacked."""
    x, y, t = zip(*dataset.__getitems__(list(range(len(dataset)))), strict=True)
    return torch.stack(x), torch.tensor(y), torch.tensor(t)


def _expected(setting: str, k: int, digit: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The paper's targets and task label for digits of experience k (pairs 2k, 2k + 1)."""
    target = digit if setting == "class" else digit - 2 * k
    return target, (k if setting == "task" else 0)


@pytest.mark.parametrize("setting", THREE_SCENARIOS)
def test_split_digits_in_each_setting_matches_the_raw_digits(setting):
    bench = three_scenarios_split_digits(setting)
    assert isinstance(bench, NCScenario) and bench.setting == setting and bench.n_experiences == 5
    assert bench.n_outputs == (10 if setting == "class" else 2) and bench.digit_order == list(range(10))
    raw = dict(zip(("train", "test"), digits_datasets(), strict=True))
    for name, stream in bench.streams.items():
        source_x, source_y, _ = _items(raw[name])
        assert len(stream) == 5
        for k, exp in enumerate(stream):
            keep = (source_y == 2 * k) | (source_y == 2 * k + 1)  # the pair, in the dataset's order
            x, y, t = _items(exp.dataset)
            target, task = _expected(setting, k, source_y[keep])
            assert torch.equal(x, source_x[keep]) and torch.equal(y, target)
            assert torch.equal(t, torch.full_like(t, task)) and exp.task_labels == [task]
            assert torch.equal(bench.original_targets[name][k], source_y[keep])
            assert exp.classes_in_this_experience == ([2 * k, 2 * k + 1] if setting == "class" else [0, 1])
            assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and x.shape[1:] == (1, 8, 8)
    assert [exp.dataset.transform_group for exp in bench.train_stream] == ["train"] * 5
    assert [exp.dataset.transform_group for exp in bench.test_stream] == ["eval"] * 5


def test_the_authors_digit_order_relabels_like_their_code():
    assert authors_digit_order(0) == list(range(10))  # their seed 0: the pairs 0/1 ... 8/9
    saved = np.random.get_state()
    try:
        for seed in (1, 7):
            np.random.seed(seed)  # their code: seed numpy, then draw the relabelling first
            relabel = torch.from_numpy(np.random.permutation(list(range(10))))
            order = authors_digit_order(seed)
            assert order != list(range(10)) and sorted(order) == list(range(10))
            for setting in ("class", "domain"):
                bench = three_scenarios_split_digits(setting, digit_order=order)
                for k, exp in enumerate(bench.train_stream):
                    digit = bench.original_targets["train"][k]
                    label = relabel[digit]  # their label of each digit; task k holds labels 2k, 2k + 1
                    assert torch.equal(label // 2, torch.full_like(label, k))
                    assert torch.equal(exp.dataset.targets, label if setting == "class" else label - 2 * k)
    finally:
        np.random.set_state(saved)


def test_bad_settings_and_digit_orders_are_clear_errors():
    for bad in ("Task", "class-il", ""):
        with pytest.raises(ValueError, match=r"setting must be one of \('task', 'domain', 'class'\)"):
            three_scenarios_split_digits(bad)
    with pytest.raises(ValueError, match="setting must be one of"):
        three_scenarios_split_mnist("joint")  # refused before the data file is read
    with pytest.raises(ValueError, match="permutation of the digits"):
        three_scenarios_split_digits("task", digit_order=[0, 1, 2])
    with pytest.raises(ValueError, match="permutation of the digits"):
        three_scenarios_split_digits("task", digit_order=[0, 0, 2, 3, 4, 5, 6, 7, 8, 9])
    with pytest.raises(ValueError, match="seed"):
        authors_digit_order(-1)


@needs_mnist
def test_split_mnist_in_the_three_settings():
    data = load_mnist()
    for setting in THREE_SCENARIOS:
        bench = three_scenarios_split_mnist(setting)
        for name, stream, (source_x, source_y) in (("train", bench.train_stream, (data.train_x, data.train_y)),
                                                   ("test", bench.test_stream, (data.test_x, data.test_y))):
            for k, exp in enumerate(stream):
                rows = torch.nonzero((source_y == 2 * k) | (source_y == 2 * k + 1)).flatten()
                target, task = _expected(setting, k, source_y[rows])
                assert torch.equal(exp.dataset.targets, target) and exp.task_labels == [task]
                assert torch.equal(bench.original_targets[name][k], source_y[rows])
                picks = [0, len(rows) // 2, len(rows) - 1]
                x, y, t = zip(*exp.dataset.__getitems__(picks), strict=True)
                assert torch.equal(torch.stack(x), source_x[rows[picks]]) and list(t) == [task] * 3
                assert list(y) == target[picks].tolist()
        assert bench.n_outputs == (10 if setting == "class" else 2)
    assert sum(len(e.dataset) for e in bench.train_stream) == 60000 and len(bench.test_stream[4].dataset) == 1983
