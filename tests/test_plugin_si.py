"""SynapticIntelligencePlugin against the Avalanche transcription (``clfast.testing.avalanche.AvalancheSI``, §4.9)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clfast.evaluation import EvaluationPlugin
from clfast.nn import MultiHeadMLP
from clfast.plugins import SynapticIntelligencePlugin, si_allowed_parameters
from clfast.scenarios import three_scenarios_split_digits
from clfast.strategies import Naive
from clfast.testing.avalanche import AvalancheSI
from clfast.testing.plugin_fixtures import (
    MODEL_CASES,
    MultiHead,
    assert_dicts_close,
    assert_losses_close,
    assert_models_close,
    mlp,
    run_case,
    run_side_by_side,
    stream,
    train_stream,
    trained,
)

CASES = sorted(set(MODEL_CASES) - {"multihead-task"})


def _flat(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.reshape(-1) for k, v in d.items()}


@pytest.mark.parametrize("case", CASES)
def test_anchor_importance_trajectory_and_losses_match_avalanche(case):
    # Large λ so that the penalty moves the weights visibly in experiences 1 and 2.
    ours = SynapticIntelligencePlugin([5.0, 2000.0], eps=1e-4, excluded_parameters=["classifier"])
    ref = AvalancheSI([5.0, 2000.0], eps=1e-4, excluded_parameters=["classifier"])
    run_case(case, ours, ref, momentum=0.5)  # asserts the losses and the models agree
    theta_star, omega = ours.ewc_data
    assert_dicts_close(theta_star, ref.ewc_data[0], "theta*")
    assert_dicts_close(omega, ref.ewc_data[1], "omega", atol=1e-6)
    cum = _flat(ours._table.state.views("cum"))
    assert_dicts_close(cum, ref.syn_data["cum_trajectory"], "cum_trajectory", rtol=1e-3, atol=1e-5)
    assert not any(k.startswith("classifier") for k in theta_star)
    assert any((v != 0).any() for v in omega.values())


def test_state_stays_on_the_training_device_and_snapshot_is_a_copy():
    """Difference: on CPU, Avalanche's snapshots alias the parameters (Ω stays 0); ours are copies."""
    ours, ref = SynapticIntelligencePlugin(1.0), AvalancheSI(1.0, si_alias_defect=True)
    run_side_by_side(mlp, ours, ref, stream())
    assert all((v == 0).all() for v in ref.ewc_data[1].values())
    assert any((v != 0).any() for v in ours.ewc_data[1].values())
    assert all(b.device.type == "cpu" for b in ours.state_dict()["state"]["buffers"].values())


def test_allowed_set_excludes_patterns_norms_and_frozen():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2), nn.LayerNorm(2))
    model[2].bias.requires_grad_(False)
    names = [n for n, _ in si_allowed_parameters(model, ["0.w*"])]
    ref = [n for n, _ in AvalancheSI(1.0, excluded_parameters=["0.w*"]).allowed_parameters(model)]
    assert names == ref == ["0.bias", "2.weight", "3.weight", "3.bias"]
    assert [n for n, _ in si_allowed_parameters(model, ["2"])] == ["0.weight", "0.bias", "3.weight", "3.bias"]


def test_unused_heads_get_a_zero_penalty_gradient_as_in_avalanche():
    """The penalty covers every allowed parameter, so autograd (Avalanche) gives unused heads a zero
    ``.grad``; the fused gradient does the same (and SGD momentum/weight decay then see the same grads)."""
    grads = []
    for plugin in (SynapticIntelligencePlugin(1.0), AvalancheSI(1.0)):
        s = trained([plugin], lambda: MultiHead(n_tasks=3), stream(task_incremental=True)[:1])
        grads.append(s.model.heads[1].weight.grad)
    assert all(g is not None and (g == 0).all() for g in grads)


def test_lambda_list_uses_the_last_value_beyond_its_end():
    p = SynapticIntelligencePlugin([1.0, 2.0])
    assert [p.lambda_for(i) for i in range(4)] == [1.0, 2.0, 2.0, 2.0]


def test_other_device_than_the_parameters_is_refused():
    p = SynapticIntelligencePlugin(1.0, device="meta")
    s = trained([p], mlp)
    with pytest.raises(ValueError, match="device"):
        train_stream(s, stream()[:1])


class AuthorsSI:
    """Independent reference: Zenke et al.'s SI as van de Ven & Tolias's code computes it, in plain autograd.
    W ← W − g⊙Δθ per step (g: the gradient the step used, penalty included); at an experience's end
    Ω ← Ω + W/((θ − θ*)² + ξ) unclipped and θ* ← θ; the loss gets c·Σ Ω⊙(θ−θ*)²."""

    def __init__(self, c: float, xi: float) -> None:
        self.c, self.xi = c, xi
        self.omega: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def _params(self, strategy):
        return dict(strategy.model.named_parameters())

    def before_training_exp(self, strategy, **kwargs):
        ps = self._params(strategy)
        if not self.anchor:
            self.anchor = {k: p.detach().clone() for k, p in ps.items()}
            self.omega = {k: torch.zeros_like(p) for k, p in ps.items()}
        self.w = {k: torch.zeros_like(p) for k, p in ps.items()}
        self.old = {k: p.detach().clone() for k, p in ps.items()}

    def before_backward(self, strategy, **kwargs):
        ps = self._params(strategy)
        strategy.loss = strategy.loss + self.c * sum((self.omega[k] * (p - self.anchor[k]) ** 2).sum()
                                                     for k, p in ps.items())

    def after_training_iteration(self, strategy, **kwargs):
        for k, p in self._params(strategy).items():
            if p.grad is not None:
                self.w[k] -= p.grad * (p.detach() - self.old[k])
            self.old[k] = p.detach().clone()

    def after_training_exp(self, strategy, **kwargs):
        for k, p in self._params(strategy).items():
            self.omega[k] = self.omega[k] + self.w[k] / ((p.detach() - self.anchor[k]) ** 2 + self.xi)
            self.anchor[k] = p.detach().clone()


def test_unclipped_si_with_its_epsilon_is_the_authors_si():
    c, xi = 50.0, 0.1
    ours, ref = SynapticIntelligencePlugin(2 * c, eps=xi, clip=None), AuthorsSI(c, xi)
    sa, sb, ra, rb = run_side_by_side(mlp, ours, ref, stream(), momentum=0.5)
    assert_losses_close(ra, rb, rtol=1e-4)
    assert_models_close(sa.model, sb.model)
    _, omega = ours.ewc_data
    assert_dicts_close(omega, _flat(ref.omega), "omega", rtol=1e-4, atol=1e-8)
    assert max(float(v.max()) for v in omega.values()) > 10 * 0.001  # Avalanche's clip would have cut these


def test_clip_is_checked():
    with pytest.raises(ValueError):
        SynapticIntelligencePlugin(1.0, clip=0.0)
    assert SynapticIntelligencePlugin(1.0).state_dict()["hparams"]["clip"] == 0.001


def _si_on_task_split_digits(plugin: SynapticIntelligencePlugin, n_experiences: int) -> None:
    torch.manual_seed(0)
    bench = three_scenarios_split_digits("task")
    model = MultiHeadMLP(64, 256, 2, initial_out_features=2)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), nn.CrossEntropyLoss(),
                     train_mb_size=32, train_epochs=4, plugins=[plugin], evaluator=EvaluationPlugin())
    for exp in bench.train_stream[:n_experiences]:
        strategy.train(exp)


def test_min_importance_floors_omega_after_consolidation():
    """Ω = min(−cum, clip) is negative where the path integral came out negative: here after the second task of
    task-incremental Split-Digits under SGD with momentum 0.9 (clfast compare's SI without the floor; the loss then
    falls to -1e4 in the fifth task). ``min_importance=0`` gives exactly max(Ω, 0): Ω only changes the training
    from the next experience on."""
    free, floored = SynapticIntelligencePlugin(0.1), SynapticIntelligencePlugin(0.1, min_importance=0.0)
    _si_on_task_split_digits(free, 2)
    _si_on_task_split_digits(floored, 2)
    omega_free, omega_floored = free.ewc_data[1], floored.ewc_data[1]
    assert min(float(v.min()) for v in omega_free.values()) < 0  # the case the floor is for
    for name, v in omega_free.items():
        torch.testing.assert_close(omega_floored[name], v.clamp(min=0.0), rtol=0, atol=0)
    assert floored.state_dict()["hparams"]["min_importance"] == 0.0


@pytest.mark.parametrize("kwargs", [{"min_importance": float("nan")}, {"min_importance": 0.01, "clip": 0.001}])
def test_min_importance_is_checked(kwargs):
    with pytest.raises(ValueError):
        SynapticIntelligencePlugin(1.0, **kwargs)
