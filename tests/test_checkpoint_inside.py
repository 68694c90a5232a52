"""Checkpoints inside an experience (``checkpoint_every``): a run stopped right after any of them and resumed in a
fresh process-like setting (a new strategy, the checkpoint loaded) ends bit-identical to the uninterrupted run,
with per-iteration plugin state, replay, gradient accumulation, loss scaling and several epochs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clfast.evaluation import EvaluationPlugin, default_metrics
from clfast.plugins import EWCPlugin, ReplayPlugin, RWalkPlugin, SynapticIntelligencePlugin
from clfast.strategies import Naive
from clfast.testing.plugin_fixtures import N_FEATURES, stream
from clfast.training.checkpoint import load_checkpoint, load_strategy_state_dict
from clfast.training.precision import Precision

pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_FEATURES, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 6))


PLUGINS = {
    "si": lambda: [SynapticIntelligencePlugin(0.5)],
    "rwalk": lambda: [RWalkPlugin(ewc_lambda=1.0, delta_t=3)],
    "ewc+replay": lambda: [ReplayPlugin(mem_size=12, batch_size_mem=4), EWCPlugin(ewc_lambda=5.0)],
}


def _strategy(name: str, path=None, every=None, precision="32", k=1) -> Naive:
    model = _model()
    if precision == "16-mixed":
        precision = Precision("16-mixed", "cpu", init_scale=2.0**8)
    return Naive(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), train_mb_size=4, train_epochs=2,
                 plugins=PLUGINS[name](), evaluator=lambda: EvaluationPlugin(*default_metrics()), precision=precision,
                 accumulate_grad_batches=k, checkpoint_every=every, checkpoint_path=path)


class _StoppedError(Exception):
    pass


def _run(strategy: Naive, experiences, stop_after_writes: int | None = None) -> None:
    """Trains the stream with seeded shuffles; with ``stop_after_writes``, aborts right after that many checkpoint
    writes (the state on disk is then the one a killed process leaves)."""
    if stop_after_writes is not None:
        checkpoints = strategy.in_experience_checkpoints
        write, count = checkpoints.writer, [0]

        def counted(s, position):
            write(s, position)
            count[0] += 1
            if count[0] == stop_after_writes:
                raise _StoppedError
        checkpoints.writer = counted
    torch.manual_seed(7)
    for exp in experiences:
        strategy.train(exp)


def _resume(name: str, path, experiences, **kw) -> Naive:
    strategy = _strategy(name, path, **kw)
    state = load_checkpoint(path)["state"]
    load_strategy_state_dict(strategy, state)
    done = state["in_experience"]["experience"]
    for exp in experiences[done:]:  # the global RNG is the checkpoint's: no reseeding
        strategy.train(exp)
    return strategy


@pytest.mark.parametrize("stop_after", [1, 3, 5])  # exp 0 at iterations 3 and 9 (mid epoch 2); exp 1 at 6
@pytest.mark.parametrize("name", list(PLUGINS))
def test_resuming_inside_an_experience_is_bit_identical(tmp_path, name: str, stop_after: int) -> None:
    experiences = stream(n_experiences=2, n_per_exp=20)  # 5 minibatches per epoch, 2 epochs, checkpoints every 3
    whole = _strategy(name)
    _run(whole, experiences)
    path = tmp_path / "ckpt.pt"
    stopped = _strategy(name, path, every=3)
    with pytest.raises(_StoppedError):
        _run(stopped, experiences, stop_after_writes=stop_after)
    resumed = _resume(name, path, experiences, every=3)
    for (n, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    for p_whole, p_res in zip(whole.plugins, resumed.plugins, strict=True):
        if hasattr(p_whole, "state_dict") and hasattr(p_whole, "_table"):
            sd_w, sd_r = p_whole.state_dict()["state"], p_res.state_dict()["state"]
            for kind in sd_w["buffers"]:
                assert torch.equal(sd_w["buffers"][kind], sd_r["buffers"][kind]), kind
    assert whole.clock.as_dict() == resumed.clock.as_dict()
    # the running epoch metrics carried across the checkpoint: the same last training-epoch accuracy and loss
    last_w, last_r = whole.evaluator.get_last_metrics(), resumed.evaluator.get_last_metrics()
    epoch_keys = [k for k in last_w if "_Epoch" in k and not k.startswith(("Time", "RunningTime"))]
    assert epoch_keys and all(last_w[k] == last_r[k] for k in epoch_keys)


@pytest.mark.parametrize("precision, k", [("16-mixed", 1), ("32", 2)])
def test_resuming_inside_an_experience_with_scaling_or_accumulation(tmp_path, precision: str, k: int) -> None:
    experiences = stream(n_experiences=2, n_per_exp=24)
    whole = _strategy("si", precision=precision, k=k)
    _run(whole, experiences)
    path = tmp_path / "ckpt.pt"
    stopped = _strategy("si", path, every=3, precision=precision, k=k)
    with pytest.raises(_StoppedError):
        _run(stopped, experiences, stop_after_writes=3)
    assert load_checkpoint(path)["state"]["in_experience"]["iteration"] % k == 0  # only at a step's end
    resumed = _resume("si", path, experiences, every=3, precision=precision, k=k)
    for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    if precision == "16-mixed":
        assert whole.amp.scaler.get_scale() == resumed.amp.scaler.get_scale()


def test_an_in_experience_checkpoint_resumes_only_its_experience(tmp_path) -> None:
    experiences = stream(n_experiences=2, n_per_exp=20)
    path = tmp_path / "ckpt.pt"
    with pytest.raises(_StoppedError):
        _run(_strategy("si", path, every=3), experiences, stop_after_writes=1)
    strategy = _strategy("si", path, every=3)
    load_strategy_state_dict(strategy, load_checkpoint(path)["state"])
    with pytest.raises(ValueError, match="inside experience 0"):
        strategy.train(experiences[1])


def test_checkpoint_every_needs_a_path_and_a_positive_count() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="checkpoint_path"):
        Naive(model, opt, checkpoint_every=3, evaluator=EvaluationPlugin())
    with pytest.raises(ValueError, match="checkpoint_every"):
        Naive(model, opt, checkpoint_every=0, checkpoint_path="x.pt")
