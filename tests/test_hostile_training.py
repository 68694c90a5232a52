"""Hostile training input: clear errors, and no earlier state lost."""

from __future__ import annotations

import pytest
import torch

from clfast.evaluation import EvaluationPlugin, default_metrics
from clfast.models import SimpleMLP
from clfast.plugins import MASPlugin, SynapticIntelligencePlugin
from clfast.scenarios import split_digits, tensors_benchmark
from clfast.strategies import Naive


def _strategy(plugin):
    torch.manual_seed(0)
    model = SimpleMLP((1, 8, 8), 10)
    return Naive(model, torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=32, train_epochs=1,
                 plugins=[plugin], evaluator=EvaluationPlugin(*default_metrics(), loggers=[]))


def _snapshot(plugin):
    st = plugin._table.state
    return {k: st[k].clone() for k in st.kinds}


@pytest.mark.parametrize("make_plugin", [lambda: MASPlugin(lambda_reg=0.1), lambda: SynapticIntelligencePlugin(0.1)],
                         ids=["mas", "si"])
def test_labels_out_of_range_fail_clearly_and_keep_the_plugin_state(make_plugin):
    bench = split_digits(n_experiences=5, seed=0)
    plugin = make_plugin()
    s = _strategy(plugin)
    s.train(bench.train_stream[0])
    saved = _snapshot(plugin)
    x = torch.rand(40, 1, 8, 8)
    y = torch.full((40,), 12)  # the model has 10 outputs
    bad = tensors_benchmark([(x, y)], [(x, y)], task_labels=[0])
    with pytest.raises((IndexError, RuntimeError), match=r"out of bounds|out of range"):
        s.train(bad.train_stream[0])
    after = _snapshot(plugin)
    assert all(torch.equal(saved[k], after[k]) for k in saved)


def test_an_empty_experience_is_refused_before_anything_changes():
    bench = split_digits(n_experiences=5, seed=0)
    s = _strategy(MASPlugin())
    s.train(bench.train_stream[0])
    params = {k: v.clone() for k, v in s.model.state_dict().items()}
    empty = tensors_benchmark([(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))],
                              [(torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))], task_labels=[0])
    with pytest.raises(ValueError, match="empty"):
        s.train(empty.train_stream[0])
    assert all(torch.equal(params[k], v) for k, v in s.model.state_dict().items())
    assert s.clock.train_exp_counter == 1


def test_nan_inputs_cannot_poison_the_importance():
    bench = split_digits(n_experiences=5, seed=0)
    plugin = MASPlugin(lambda_reg=0.1)
    s = _strategy(plugin)
    s.train(bench.train_stream[0])
    saved = _snapshot(plugin)
    x = torch.rand(40, 1, 8, 8)
    x[3, 0, 2, 2] = float("nan")
    y = torch.zeros(40, dtype=torch.long)
    bad = tensors_benchmark([(x, y)], [(x, y)], task_labels=[0])
    with pytest.raises(ValueError, match="NaN or inf"):
        s.train(bad.train_stream[0])  # the end-of-experience importance pass sees NaN gradients
    after = _snapshot(plugin)
    assert all(torch.equal(saved[k], after[k]) for k in saved)
