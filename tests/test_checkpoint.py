"""Checkpoints: atomic writes, complete strategy state, and resuming to the same numbers."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from clfast.evaluation import EvaluationPlugin, default_metrics
from clfast.models import SimpleMLP
from clfast.plugins import MASPlugin
from clfast.scenarios import split_digits
from clfast.strategies import Naive
from clfast.training import checkpoint as ck


def _strategy(seed: int, plugins=None):
    torch.manual_seed(seed)
    model = SimpleMLP((1, 8, 8), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return Naive(model, opt, train_mb_size=32, train_epochs=2, eval_mb_size=256,
                 plugins=plugins if plugins is not None else [MASPlugin(lambda_reg=0.1)],
                 evaluator=EvaluationPlugin(*default_metrics(), loggers=[]))


def _run(strategy, bench, exps):
    for k in exps:
        strategy.train(bench.train_stream[k])
        strategy.eval(bench.test_stream)


def test_resumed_run_matches_the_uninterrupted_one_bit_for_bit(tmp_path):
    bench = split_digits(n_experiences=5, seed=1)
    torch.manual_seed(123)
    whole = _strategy(0)
    _run(whole, bench, [0])
    ck.save_checkpoint(ck.strategy_state_dict(whole), tmp_path / "ckpt.pt")
    _run(whole, bench, [1, 2])

    resumed = _strategy(7)  # another initialisation: everything must come from the checkpoint
    torch.manual_seed(999)  # and other RNG states
    np.random.seed(5)
    random.seed(5)
    ck.load_strategy_state_dict(resumed, ck.load_checkpoint(tmp_path / "ckpt.pt"))
    _run(resumed, bench, [1, 2])

    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert whole.evaluator.accuracy_matrix() == resumed.evaluator.accuracy_matrix()
    untimed = [{k: v for k, v in s.evaluator.get_last_metrics().items() if "Time" not in k}
               for s in (whole, resumed)]
    assert untimed[0] == untimed[1] and len(untimed[0]) > 10
    assert whole.clock.as_dict() == resumed.clock.as_dict()
    mas_a, mas_b = whole.plugins[0], resumed.plugins[0]
    for k in mas_a.importance:
        assert torch.equal(mas_a.importance[k], mas_b.importance[k])


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    ck.save_checkpoint({"a": torch.arange(5)}, path)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is interrupted mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint({"a": torch.arange(7)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(ck.load_checkpoint(path)["a"], torch.arange(5))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


def test_a_checkpoint_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(ValueError, match="not a readable clfast checkpoint"):
        ck.load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        ck.load_checkpoint(tmp_path / "missing.pt")


def test_a_checkpoint_of_another_model_is_refused_and_changes_nothing(tmp_path):
    bench = split_digits(n_experiences=2, seed=0)
    a = _strategy(0)
    _run(a, bench, [0])
    state = ck.strategy_state_dict(a)
    other = Naive(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
                  torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), plugins=[MASPlugin()],
                  evaluator=EvaluationPlugin(*default_metrics(), loggers=[]))
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    with pytest.raises(ValueError, match="another model"):
        ck.load_strategy_state_dict(other, state)
    assert all(torch.equal(before[k], v) for k, v in other.model.state_dict().items())
    no_plugin = _strategy(0, plugins=[])
    with pytest.raises(ValueError, match="plugins"):
        ck.load_strategy_state_dict(no_plugin, state)
    with pytest.raises(ValueError, match="version"):
        ck.load_strategy_state_dict(a, {**state, "version": 99})


def test_rng_states_round_trip():
    state = ck.capture_rng()
    draws = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.rand(10)
    np.random.rand(10)
    random.random()
    ck.restore_rng(state)
    assert torch.equal(torch.rand(3), draws[0])
    assert np.array_equal(np.random.rand(3), draws[1])
    assert [random.random() for _ in range(3)] == draws[2]
