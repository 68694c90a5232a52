"""RWalkPlugin against the Avalanche transcription (``clfast.testing.avalanche.AvalancheRWalk``, spec §3).

The default (task gradient read from the training backward) is compared with the transcription's
``grad_source="training_backward"`` (an explicit ``autograd.grad`` of the criterion on the training graph);
``separate_grad_pass=True`` with its ``"extra_pass"`` (Avalanche's extra eval-mode pass). Both with the zero-max
guard and, for the extra pass, without the eval-mode leak: clfast's deliberate differences, tested separately.
"""

from __future__ import annotations

import copy

import pytest
import torch

from clfast.plugins import RWalkPlugin
from clfast.testing.avalanche import AvalancheRWalk
from clfast.testing.plugin_fixtures import (
    MODEL_CASES,
    ModeProbe,
    SmallCNN,
    assert_dicts_close,
    assert_losses_close,
    mlp,
    run_case,
    run_side_by_side,
    stream,
    train_stream,
    trained,
)

#: Side-by-side tolerances: the scores divide rounding-level differences (see ``_compare_state``), so RWalk's
#: trajectories agree less tightly with the transcription's than the other plugins'.
TOL = {"loss_rtol": 1e-3, "model_rtol": 1e-3, "model_atol": 1e-5}

STATE = ("iter_importance", "checkpoint_scores", "exp_importance", "exp_scores", "exp_params", "exp_penalties")


def _compare_state(ours: RWalkPlugin, ref: AvalancheRWalk) -> None:
    for name in STATE:
        ref_d = getattr(ref, name)
        if "score" in name:
            # Scores divide rounding-level losses by ½F·Δθ² + machine-eps where the gradient is ~0 (a conv bias
            # before BatchNorm): float32 noise over noise. Compare on the scale of the largest score.
            scale = max(float(v.abs().max()) for v in ref_d.values())
            assert_dicts_close(getattr(ours, name), ref_d, name, rtol=2e-3, atol=1e-4 * scale)
        else:
            assert_dicts_close(getattr(ours, name), ref_d, name, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_default_matches_avalanche_with_the_training_gradient(case):
    ours = RWalkPlugin(ewc_lambda=5.0, ewc_alpha=0.6, delta_t=2)
    ref = AvalancheRWalk(ewc_lambda=5.0, ewc_alpha=0.6, delta_t=2, grad_source="training_backward",
                         guard_zero_max=True)
    run_case(case, ours, ref, momentum=0.5, **TOL)  # asserts the losses and the models agree
    _compare_state(ours, ref)
    assert any(v.abs().sum() > 0 for v in ours.exp_penalties.values())


@pytest.mark.parametrize("case", ["mlp-class", "cnn_bn-class", "multihead-task"])
def test_separate_grad_pass_matches_avalanches_extra_pass(case):
    ours = RWalkPlugin(ewc_lambda=5.0, ewc_alpha=0.6, delta_t=3, separate_grad_pass=True)
    ref = AvalancheRWalk(ewc_lambda=5.0, ewc_alpha=0.6, delta_t=3, grad_source="extra_pass",
                         eval_mode_leak=False, guard_zero_max=True)
    run_case(case, ours, ref, **TOL)  # asserts the losses and the models agree
    _compare_state(ours, ref)


def test_default_equals_the_separate_pass_without_batchnorm_or_dropout():
    a, b = RWalkPlugin(5.0, 0.6, 2), RWalkPlugin(5.0, 0.6, 2, separate_grad_pass=True)
    _, _, ra, rb = run_side_by_side(mlp, a, b, stream())
    assert_losses_close(ra, rb, rtol=1e-5)
    for name in STATE:
        assert_dicts_close(getattr(a, name), getattr(b, name), name, rtol=1e-4, atol=1e-5)


class _TaskGradProbe:
    """Put before RWalk: the criterion's gradient by an explicit ``autograd.grad`` on the training graph."""

    def __init__(self):
        self.task = []

    def before_backward(self, strategy, **kwargs):
        params = list(strategy.model.parameters())
        g = torch.autograd.grad(strategy._criterion(strategy.mb_output, strategy.mb_y), params, retain_graph=True)
        self.task.append([t.clone() for t in g])


class _TotalGradProbe:
    """Put after RWalk: ``.grad``, θ_t and RWalk's stored task gradient, P and θ* at ``after_backward``."""

    def __init__(self, plugin):
        self.plugin, self.seen = plugin, []

    def after_backward(self, strategy, **kwargs):
        st = self.plugin._table.state
        self.seen.append({n: (p.grad.clone(), p.detach().clone(), st.view("grad", n).clone(),
                              st.view("penalty", n).clone(), st.view("anchor", n).clone())
                          for n, p in strategy.model.named_parameters()})


def test_task_gradient_is_separated_from_the_penalty_gradient_in_closed_form():
    lam = 50.0
    plugin = RWalkPlugin(ewc_lambda=lam, ewc_alpha=0.5, delta_t=2)
    before, after = _TaskGradProbe(), _TotalGradProbe(plugin)
    trained([before, plugin, after], mlp, stream()[:2])
    n_first = len(before.task) // 2
    for task, seen in list(zip(before.task, after.seen, strict=True))[n_first:]:  # experience 1: penalty on
        for g_task, (total, theta, stored, weight, anchor) in zip(task, seen.values(), strict=True):
            torch.testing.assert_close(stored, g_task, rtol=1e-5, atol=1e-7)  # RWalk's g_t: the criterion's
            torch.testing.assert_close(total, g_task + 2 * lam * weight * (theta - anchor), rtol=1e-5, atol=1e-5)
    assert max(float((total - stored).abs().max()) for total, _, stored, _, _ in after.seen[-1].values()) > 1e-3


def test_model_is_never_left_in_eval_mode():
    """Difference: Avalanche's extra pass leaves the model in eval mode: every training forward after the
    first runs with BatchNorm on running statistics, which then never update."""
    for plugin, leaks in ((RWalkPlugin(separate_grad_pass=True), False), (RWalkPlugin(), False),
                          (AvalancheRWalk(), True)):
        probe = ModeProbe()
        trained([plugin, probe], SmallCNN, stream()[:1])
        assert probe.modes and all(m is not leaks for m in probe.modes)


def test_zero_maxima_give_zero_not_nan():
    """Difference: with all-zero gradients in experience 0, max F = max s = 0 and Avalanche's P is NaN."""

    def flat_criterion(out, y):
        return (out * 0.0).sum()

    exps = stream()
    ours, ref = RWalkPlugin(delta_t=2), AvalancheRWalk(delta_t=2)
    for plugin in (ours, ref):
        s = trained([plugin], mlp)
        s._criterion = flat_criterion
        train_stream(s, exps[:1])
    assert all(torch.isnan(v).all() for v in ref.exp_penalties.values())
    assert all((v == 0).all() for v in ours.exp_penalties.values())
    s = trained([copy.deepcopy(ours)], mlp)
    s.clock.train_exp_counter = 1
    train_stream(s, exps[1:2])
    assert torch.isfinite(s.loss).all()
