"""Gradient accumulation (``accumulate_grad_batches``): k minibatches of B step like one batch of k·B, for Naive and
every regulariser, with torch.optim's SGD and clfast.optim's; windows restart at every epoch and the last one of
an epoch may be shorter; which hooks fire per minibatch and which per step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clfast import optim as clfast_optim
from clfast.evaluation import EvaluationPlugin
from clfast.plugins import PLUGINS
from clfast.strategies import Naive
from clfast.testing.plugin_fixtures import assert_models_close, mlp, seeded, stream

torch.set_num_threads(1)


def _strategy(model: nn.Module, name: str, optim: str, mb: int, k: int, epochs: int = 2) -> Naive:
    opt_cls = torch.optim.SGD if optim == "torch" else clfast_optim.SGD
    opt = opt_cls(model.parameters(), lr=0.05, momentum=0.9)
    plugins = [] if name == "naive" else [PLUGINS[name].make()]
    return Naive(model, opt, train_mb_size=mb, train_epochs=epochs, plugins=plugins, evaluator=EvaluationPlugin(),
                 accumulate_grad_batches=k)


def _plugin_state(strategy: Naive) -> dict[str, torch.Tensor]:
    plugin = strategy.plugins[0]
    st = plugin._table.state
    return {k: st[k].clone() for k in st.kinds}


@pytest.mark.parametrize("optim", ["torch", "clfast"])
@pytest.mark.parametrize("name", ["naive", *PLUGINS])
def test_k_minibatches_of_b_step_like_one_batch_of_k_times_b(name: str, optim: str) -> None:
    experiences = stream(n_experiences=2, n_per_exp=24)  # 2 epochs of 3 windows of 2x4 (or 3 batches of 8)
    model = seeded(mlp)
    accumulated = _strategy(copy.deepcopy(model), name, optim, mb=4, k=2)
    large = _strategy(copy.deepcopy(model), name, optim, mb=8, k=1)
    for e, exp in enumerate(experiences):
        for strategy in (accumulated, large):
            torch.manual_seed(100 + e)  # the same sample order for both (the shuffle does not see the batch size)
            strategy.train(exp)
        assert_models_close(accumulated.model, large.model, rtol=1e-5, atol=1e-7)
        if name in ("mas", "ewc") and e == 0:
            # Their importance passes run at train_mb_size, so batch sizes 4 and 8 give different (both correct)
            # importances; from the same state the second experience must step alike again.
            large.plugins[0].load_state_dict(accumulated.plugins[0].state_dict())
    assert accumulated.clock.train_steps == large.clock.train_steps == 2 * 2 * 3
    assert accumulated.clock.train_iterations == 2 * large.clock.train_iterations
    if name in ("si", "rwalk"):  # per-step state: once per step from the accumulated gradient
        ours, ref = _plugin_state(accumulated), _plugin_state(large)
        # SI's consolidation divides ω by (θ−θ*)² + 1e-7 and RWalk's scores divide by ½FΔθ² + ε: rounding in the
        # gradients (summed in another order) is amplified there, so those are compared relative to their largest
        # element.
        for kind in ours:
            scale = float(ref[kind].abs().max()) or 1.0
            torch.testing.assert_close(ours[kind], ref[kind], rtol=1e-5, atol=1e-4 * scale, msg=kind)


class _BatchRecorder:
    """The inputs and targets of every training minibatch, in order."""

    def __init__(self) -> None:
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def before_training_iteration(self, strategy, **kwargs) -> None:
        self.batches.append((strategy.mb_x.clone(), strategy.mb_y.clone()))


def test_windows_restart_each_epoch_and_a_short_last_window_is_averaged_over_its_minibatches() -> None:
    # 20 samples, B = 4, k = 3: per epoch windows of 3 and 2 minibatches; a plain loop over the recorded minibatches
    # is the reference: loss / (minibatches in the window), one SGD step per window.
    exp = stream(n_experiences=1, n_per_exp=20)[0]
    model = seeded(mlp)
    reference = copy.deepcopy(model)
    recorder = _BatchRecorder()
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), train_mb_size=4,
                     train_epochs=2, plugins=[recorder], evaluator=EvaluationPlugin(), accumulate_grad_batches=3)
    torch.manual_seed(5)
    strategy.train(exp)
    assert len(recorder.batches) == 10 and strategy.clock.train_steps == 4

    opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(2):
        minibatches = recorder.batches[5 * epoch:5 * epoch + 5]
        for window in (minibatches[:3], minibatches[3:]):
            opt.zero_grad()
            for x, y in window:
                (nn.functional.cross_entropy(reference(x), y) / len(window)).backward()
            opt.step()
    assert_models_close(strategy.model, reference, rtol=1e-6, atol=1e-7)


class _HookCounter:
    HOOKS = ("before_training_iteration", "before_forward", "after_backward", "before_update", "after_update",
             "after_training_iteration")

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def __getattr__(self, hook: str):
        if hook not in self.HOOKS:
            raise AttributeError(hook)
        return lambda strategy, **kw: self.calls.append((hook, strategy.step_this_iteration))


def test_update_hooks_fire_once_per_step_the_others_per_minibatch() -> None:
    exp = stream(n_experiences=1, n_per_exp=24)[0]
    counter = _HookCounter()
    model = seeded(mlp)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=4, train_epochs=1,
                     plugins=[counter], evaluator=EvaluationPlugin(), accumulate_grad_batches=3)
    strategy.train(exp)
    per_hook = {h: [due for name, due in counter.calls if name == h] for h in _HookCounter.HOOKS}
    for hook in ("before_training_iteration", "before_forward", "after_backward", "after_training_iteration"):
        assert per_hook[hook] == [False, False, True, False, False, True], hook
    assert per_hook["before_update"] == per_hook["after_update"] == [True, True]
    assert strategy.clock.train_iterations == 6 and strategy.clock.train_steps == 2


def test_gradients_accumulate_between_steps_and_are_zeroed_at_a_window_start() -> None:
    seen: list[float] = []

    class GradNorm:
        def after_backward(self, strategy, **kwargs) -> None:
            seen.append(float(sum(p.grad.norm() for p in strategy.model.parameters())))

    exp = stream(n_experiences=1, n_per_exp=16)[0]
    model = seeded(mlp)
    # lr 0: the parameters stay put, so the accumulated gradient is exactly the sum of the minibatch gradients
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.0), train_mb_size=4, plugins=[GradNorm()],
                     evaluator=EvaluationPlugin(), accumulate_grad_batches=2)
    recorder = _BatchRecorder()
    strategy.plugins.insert(0, recorder)
    torch.manual_seed(0)
    strategy.train(exp)
    ref = copy.deepcopy(model)
    for i, (x, y) in enumerate(recorder.batches):
        if i % 2 == 0:
            ref.zero_grad()
        (nn.functional.cross_entropy(ref(x), y) / 2).backward()
        assert seen[i] == pytest.approx(float(sum(p.grad.norm() for p in ref.parameters())), rel=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_accumulate_grad_batches_must_be_a_positive_int(bad) -> None:
    model = mlp()
    with pytest.raises((ValueError, TypeError), match="accumulate_grad_batches"):
        Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), accumulate_grad_batches=bad)


@pytest.mark.parametrize("budget, k", [(5, 1), (13, 1), (13, 4)])
def test_train_iterations_is_an_exact_budget_over_as_many_epochs_as_it_takes(budget: int, k: int) -> None:
    # 24 samples at B = 4: 6 minibatches per epoch; the budget ends mid-epoch, and the windows of k end with it.
    exp = stream(n_experiences=1, n_per_exp=24)[0]
    counter = _HookCounter()
    model = seeded(mlp)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=4, train_epochs=1,
                     plugins=[counter], evaluator=EvaluationPlugin(), accumulate_grad_batches=k,
                     train_iterations=budget)
    strategy.train(exp)
    assert strategy.clock.train_exp_iterations == budget
    assert strategy.clock.train_exp_epochs == -(-budget // 6)  # epochs begun, the last one cut short
    windows = [min(k, left) for epoch_left in _epoch_lengths(budget, 6) for left in range(epoch_left, 0, -k)]
    assert strategy.clock.train_steps == len(windows)
    assert sum(due for name, due in counter.calls if name == "after_backward") == len(windows)


def _epoch_lengths(budget: int, per_epoch: int) -> list[int]:
    return [min(per_epoch, budget - start) for start in range(0, budget, per_epoch)]


def test_train_iterations_must_be_a_positive_int() -> None:
    model = mlp()
    with pytest.raises(ValueError, match="train_iterations"):
        Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_iterations=0)
