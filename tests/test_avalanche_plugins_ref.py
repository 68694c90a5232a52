"""The reference transcriptions in ``clfast.testing.avalanche`` against closed-form math on hand-made cases.

The models are linear (``out = x·w``) with an MSE criterion, so every gradient is ``(2/B) Σ (x·w − y) x`` and
full-batch SGD can be replayed by hand; float64 throughout, so the comparisons are tight.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from clfast.strategies import Naive
from clfast.testing.avalanche import (
    AvalancheEWC,
    AvalancheMAS,
    AvalancheRWalk,
    AvalancheSI,
    layers_and_params,
    pad_to,
)
from clfast.testing.fakes import Experience, Stream, make_stream

F64 = torch.float64
EPS64 = torch.finfo(F64).eps


class FloatDataset(Dataset):
    """``ds[i] -> (x, y, t)`` with float targets (for MSE); with ``two=True`` ``(x, y)`` only."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, two: bool = False) -> None:
        self.x, self.y, self.targets = x, y, y.reshape(-1)
        self.targets_task_labels = torch.zeros(len(y), dtype=torch.long)
        self.two = two

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        if self.two:
            return self.x[i], self.y[i]
        return self.x[i], self.y[i], self.targets_task_labels[i]


def linear(w: list[float]) -> nn.Linear:
    m = nn.Linear(len(w), 1, bias=False).double()
    with torch.no_grad():
        m.weight.copy_(torch.tensor([w], dtype=F64))
    return m


def data(seed: int, n: int = 5, d: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(n, 1, generator=g, dtype=F64)
    return x, y


def mse_grad(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇_w mean_i (x_i·w − y_i)²."""
    return 2.0 / len(x) * x.T @ (x @ w - y.view(-1))


def fake_strategy(model: nn.Module, dataset: Dataset, mb: int, exp: int = 0) -> SimpleNamespace:
    return SimpleNamespace(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           _criterion=nn.MSELoss(), train_mb_size=mb, device=torch.device("cpu"),
                           clock=SimpleNamespace(train_exp_counter=exp, train_iterations=0),
                           experience=SimpleNamespace(dataset=dataset), loss=torch.ones(1, dtype=F64))


def float_stream(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> Stream:
    stream = Stream("train")
    for e, (x, y) in enumerate(parts):
        stream.append(Experience(FloatDataset(x, y), e, stream))
    return stream


def run_full_batch(model: nn.Module, parts, plugin, lr: float, epochs: int) -> Naive:
    """Full-batch SGD (one minibatch per epoch, so the shuffle does not matter) over ``parts``, one ``train()``."""
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=lr), nn.MSELoss(), train_mb_size=len(parts[0][0]),
                     train_epochs=epochs, plugins=[plugin], evaluator=None)
    strategy.train(float_stream(parts))
    return strategy


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.reshape(-1).to(F64), b.reshape(-1).to(F64), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------------- helpers


def test_pad_to_is_paramdata_expand():
    t = torch.arange(6.0).view(2, 3)
    assert pad_to(t, (2, 3)) is t
    grown = pad_to(t, (4, 3))
    assert torch.equal(grown[:2], t) and torch.equal(grown[2:], torch.zeros(2, 3))
    for bad in [(1, 3), (3, 4), (6,)]:
        with pytest.raises(AssertionError):
            pad_to(t, bad)


def test_layers_and_params_lists_nested_parameters_once_per_ancestor_path():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2)), nn.Linear(2, 1))
    names = [name for _, _, name, _ in layers_and_params(model)]
    assert set(names) == {n for n, _ in model.named_parameters()}
    assert names.count("0.0.weight") == 2 and names.count("1.weight") == 1


# ---------------------------------------------------------------------------------------------------- MAS


def test_mas_importance_is_abs_batch_mean_grad_over_batches():
    x, y = data(0, n=5)
    w0 = [0.7, -1.3]
    model = linear(w0)
    s = fake_strategy(model, FloatDataset(x, y), mb=2)  # batches of 2, 2, 1: the short one weighs as much
    mas = AvalancheMAS(lambda_reg=0.5, alpha=0.25)
    mas.after_training_exp(s)
    w = torch.tensor(w0, dtype=F64)
    expected = sum((2.0 / len(xb) * xb.T @ (xb @ w)).abs() for xb in (x[0:2], x[2:4], x[4:5])) / 3
    close(mas.importance["weight"], expected)
    close(mas.params["weight"], w)

    # second experience: α-blend, penalty λ Σ Ω (θ − θ*)², no ½
    x2, y2 = data(1, n=4)
    s2 = fake_strategy(model, FloatDataset(x2, y2), mb=4, exp=1)
    with torch.no_grad():
        model.weight.add_(torch.tensor([[0.1, 0.2]], dtype=F64))
    w1 = model.weight.detach().view(-1).clone()
    mas.before_backward(s2)
    close(s2.loss - 1.0, 0.5 * (expected * (w1 - w) ** 2).sum())
    mas.after_training_exp(s2)
    cur = (2.0 / 4 * x2.T @ (x2 @ w1)).abs()
    close(mas.importance["weight"], 0.25 * expected + 0.75 * cur)
    close(mas.params["weight"], w1)


def test_mas_unused_parameter_decays_by_alpha_and_batches_of_two_use_labels_as_tasks():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = nn.ParameterList([nn.Parameter(torch.ones(2, dtype=F64)),
                                           nn.Parameter(torch.full((2,), 3.0, dtype=F64))])
            self.seen: list[torch.Tensor] = []

        def forward(self, x, task_labels):
            self.seen.append(task_labels)
            return (x * self.heads[int(task_labels[0]) % 2]).sum(1, keepdim=True)

    x = torch.ones(2, 2, dtype=F64)
    model = TwoHeads()
    mas = AvalancheMAS(alpha=0.5)
    s = fake_strategy(model, FloatDataset(x, torch.zeros(2, 1, dtype=F64), two=True), mb=2)
    mas.after_training_exp(s)  # labels 0 → head 0 only
    assert torch.equal(model.seen[-1], torch.zeros(2, 1, dtype=F64))
    close(mas.importance["heads.0"], torch.full((2,), 4.0, dtype=F64))  # out = 2h per sample: d/dh (2h)² = 8h = 4·x
    close(mas.importance["heads.1"], torch.zeros(2, dtype=F64))
    s1 = fake_strategy(model, FloatDataset(x, torch.ones(2, 1, dtype=F64), two=True), mb=2, exp=1)
    mas.after_training_exp(s1)  # labels 1 → head 1 only; head 0 decays by α
    close(mas.importance["heads.0"], torch.full((2,), 2.0, dtype=F64))
    close(mas.importance["heads.1"], 0.5 * torch.full((2,), 2 * 6.0, dtype=F64))  # 2·out·x = 12, then (1−α)·12


def test_mas_pass_is_in_train_mode_and_moves_bn_statistics():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).double().eval()
    x, y = data(2, n=6)
    AvalancheMAS().after_training_exp(fake_strategy(model, FloatDataset(x, y), mb=2))
    assert model.training and int(model[1].num_batches_tracked) == 3


def test_mas_penalty_checks_and_growth():
    model = linear([1.0, 2.0])
    mas = AvalancheMAS()
    s = fake_strategy(model, FloatDataset(*data(3)), mb=5, exp=1)
    with pytest.raises(ValueError):
        mas.before_backward(s)  # no importance yet
    s.clock.train_exp_counter = 0
    mas.after_training_exp(s)
    s.clock.train_exp_counter = 1
    s.loss = torch.zeros(1, dtype=F64)
    with pytest.raises(ValueError):
        mas.before_backward(s)  # a loss of exactly 0 raises
    omega = mas.importance["weight"].clone()
    model.weight = nn.Parameter(torch.tensor([[2.0, 2.0, 5.0]], dtype=F64))  # grows along dim 1
    s.loss = torch.ones(1, dtype=F64)
    mas.before_backward(s)
    close(s.loss - 1.0, omega[0, 0] * 1.0)  # the new column has Ω = 0 and θ* = 0: not penalised
    assert mas.importance["weight"].shape == (1, 3)


# ---------------------------------------------------------------------------------------------------- EWC


def test_ewc_fisher_is_mean_of_squared_batch_gradients_in_eval_mode():
    x, y = data(4, n=5)
    w = torch.tensor([0.3, -0.8], dtype=F64)
    model = linear(w.tolist())
    s = fake_strategy(model, FloatDataset(x, y), mb=2)
    ewc = AvalancheEWC(ewc_lambda=2.0)
    ewc.after_training_exp(s)
    fisher = sum(mse_grad(w, x[i:i + 2], y[i:i + 2]) ** 2 for i in (0, 2, 4)) / 3
    close(ewc.importances[0]["weight"], fisher)
    close(ewc.saved_params[0]["weight"], w)
    assert not model.training  # Avalanche leaves eval mode on
    model.train()
    AvalancheEWC(1.0, eval_mode_leak=False).after_training_exp(s)
    assert model.training


@pytest.mark.parametrize("mode", ["separate", "online"])
def test_ewc_penalty_separate_and_online(mode):
    model = linear([0.3, -0.8])
    ewc = AvalancheEWC(ewc_lambda=2.0, mode=mode, decay_factor=0.5 if mode == "online" else None)
    parts = [data(5), data(6), data(7)]
    thetas, fishers = [], []
    for e, (x, y) in enumerate(parts):
        s = fake_strategy(model, FloatDataset(x, y), mb=5, exp=e)
        w = model.weight.detach().view(-1).clone()
        if e > 0:
            ewc.before_backward(s)
            if mode == "separate":
                expected = sum((f * (w - t) ** 2).sum() for f, t in zip(fishers, thetas, strict=True))
            else:
                online = fishers[0]
                for f in fishers[1:]:
                    online = 0.5 * online + f
                expected = (online * (w - thetas[-1]) ** 2).sum()
            close(s.loss - 1.0, 2.0 * expected)
        ewc.after_training_exp(s)
        thetas.append(w)
        fishers.append(mse_grad(w, x, y) ** 2)
        with torch.no_grad():
            model.weight.add_(torch.tensor([[0.2, -0.1]], dtype=F64))
    if mode == "separate":
        assert sorted(ewc.importances) == sorted(ewc.saved_params) == [0, 1, 2]
    else:
        assert sorted(ewc.importances) == sorted(ewc.saved_params) == [2]


def test_ewc_rejects_inconsistent_modes():
    with pytest.raises(AssertionError):
        AvalancheEWC(1.0, mode="online")
    with pytest.raises(AssertionError):
        AvalancheEWC(1.0, mode="separate", decay_factor=0.5)
    with pytest.raises(AssertionError):
        AvalancheEWC(1.0, mode="other")


# ---------------------------------------------------------------------------------------------------- SI


def si_by_hand(w0, parts, lr, epochs, lambdas, eps):
    w, cum, omega = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    for e, (x, y) in enumerate(parts):
        lam = lambdas[min(e, len(lambdas) - 1)]
        star, traj = w.clone(), torch.zeros_like(w)
        for _ in range(epochs):
            g = mse_grad(w, x, y) + lam * omega * (w - star)  # the total gradient, penalty included
            w_new = w - lr * g
            traj += g * (w_new - w)
            w = w_new
        cum += traj / ((w - star) ** 2 + eps)
        omega = torch.clamp(-cum, max=0.001)
    return w, cum, omega


def test_si_path_integral_and_penalty_by_hand():
    parts, w0 = [data(8), data(9)], torch.tensor([0.5, -0.25], dtype=F64)
    si = AvalancheSI([0.0, 3.0e3], eps=1e-3)
    model = linear(w0.tolist())
    run_full_batch(model, parts, si, lr=0.05, epochs=4)
    w, cum, omega = si_by_hand(w0, parts, 0.05, 4, [0.0, 3.0e3], 1e-3)
    close(model.weight, w)
    close(si.syn_data["cum_trajectory"]["weight"], cum)
    close(si.omega["weight"], omega)
    close(si.theta_star["weight"], w)
    assert si.omega["weight"].device.type == "cpu" and si.omega["weight"].dim() == 1


def test_si_alias_defect_zeroes_everything_on_cpu():
    parts = [data(10), data(11)]
    defect, intended = AvalancheSI(1.0, si_alias_defect=True), AvalancheSI(1.0)
    run_full_batch(linear([0.5, -0.25]), parts, defect, lr=0.05, epochs=3)
    run_full_batch(linear([0.5, -0.25]), parts, intended, lr=0.05, epochs=3)
    assert torch.count_nonzero(defect.omega["weight"]) == 0 and float(defect.last_penalty) == 0.0
    assert torch.count_nonzero(intended.omega["weight"]) == 2 and float(intended.last_penalty) > 0.0


def test_si_allowed_set_skips_norms_exclusions_and_frozen():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 2))
    model.add_module("head", nn.Linear(2, 2))
    model[0].bias.requires_grad_(False)
    names = [n for n, _ in AvalancheSI(1.0, excluded_parameters=["head"]).allowed_parameters(model)]
    assert names == ["0.weight", "3.weight", "3.bias"]


# ---------------------------------------------------------------------------------------------------- RWalk


def rwalk_by_hand(w0, parts, lr, epochs, lam, alpha, dt):
    w, fisher, ckpt_loss, ckpt_scores, w_ckpt = w0.clone(), None, 0.0, 0.0, w0.clone()
    exp_scores = penalty = w_star = None
    it = 0
    for e, (x, y) in enumerate(parts):
        for _ in range(epochs):
            g = mse_grad(w, x, y)  # the task gradient, no penalty
            fisher = g**2 if fisher is None else alpha * g**2 + (1 - alpha) * fisher
            total = g if e == 0 else g + 2 * lam * penalty * (w - w_star)
            w_new = w - lr * total
            ckpt_loss = ckpt_loss - g * (w_new - w)
            w = w_new
            if (it + 1) % dt == 0:
                ckpt_scores = ckpt_scores + ckpt_loss / (0.5 * fisher * (w - w_ckpt) ** 2 + EPS64)
                ckpt_loss, w_ckpt = 0.0, w.clone()
            it += 1
        exp_scores = ckpt_scores if exp_scores is None else 0.5 * (exp_scores + ckpt_scores)
        penalty = fisher / fisher.max() + torch.relu(exp_scores) / exp_scores.max()
        w_star, ckpt_scores = w.clone(), 0.0
    return w, fisher, exp_scores, penalty


@pytest.mark.parametrize("grad_source", ["extra_pass", "training_backward"])
def test_rwalk_scores_fisher_and_penalty_by_hand(grad_source):
    parts, w0 = [data(12, d=3), data(13, d=3)], torch.tensor([0.5, -0.25, 1.0], dtype=F64)
    rw = AvalancheRWalk(ewc_lambda=0.7, ewc_alpha=0.6, delta_t=3, grad_source=grad_source)
    model = linear(w0.tolist())
    run_full_batch(model, parts, rw, lr=0.05, epochs=5)  # 10 iterations, checkpoints after 3, 6, 9
    w, fisher, scores, penalty = rwalk_by_hand(w0, parts, 0.05, 5, 0.7, 0.6, 3)
    close(model.weight, w)
    close(rw.exp_importance["weight"], fisher)
    close(rw.exp_scores["weight"], scores)
    close(rw.exp_penalties["weight"], penalty)
    close(rw.exp_params["weight"], w)
    assert float(penalty.max()) <= 2.0 and (scores > 0).any()


def test_rwalk_eval_mode_leak_and_its_switches():
    def run(**kw):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
        modes: list[bool] = []
        model.register_forward_pre_hook(lambda m, i: modes.append(m.training))
        strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=4,
                         plugins=[AvalancheRWalk(delta_t=2, **kw)], evaluator=None)
        strategy.train(make_stream("train", n_experiences=2, n_per_exp=8))
        return modes, int(model[1].num_batches_tracked)

    modes, tracked = run()
    assert not any(modes) and tracked == 0  # every forward (extra and training) in eval mode
    modes, tracked = run(eval_mode_leak=False)
    assert modes == [False, True] * 4 and tracked == 4  # the extra pass in eval, training in train mode
    modes, tracked = run(grad_source="training_backward")
    assert all(modes) and len(modes) == 4 and tracked == 4  # no extra pass at all


def test_rwalk_gradient_sources_agree_without_batchnorm():
    states = []
    for source in ("extra_pass", "training_backward"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 6))
        rw = AvalancheRWalk(delta_t=2, grad_source=source)
        strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=3, plugins=[rw],
                         evaluator=None)
        strategy.train(make_stream("train", n_experiences=3, n_per_exp=9, classes_per_exp=2))
        states.append((rw, model))
    (a, ma), (b, mb) = states
    for k in a.exp_penalties:
        torch.testing.assert_close(a.exp_penalties[k], b.exp_penalties[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.iter_importance[k], b.iter_importance[k], rtol=1e-5, atol=1e-8)
    for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_rwalk_zero_maxima_give_nan_unless_guarded():
    for guard in (False, True):
        rw = AvalancheRWalk(guard_zero_max=guard)
        rw.iter_importance = {"w": torch.zeros(2)}
        rw.checkpoint_scores = {"w": torch.tensor([-1.0, 0.0])}
        s = SimpleNamespace(model=nn.Linear(1, 1))
        rw.after_training_exp(s)
        assert bool(torch.isfinite(rw.exp_penalties["w"]).all()) is guard  # 0/0 = NaN without the guard


# ---------------------------------------------------------------------------------------------------- in Naive


@pytest.mark.parametrize("make", [
    lambda: AvalancheMAS(),
    lambda: AvalancheEWC(10.0, mode="online", decay_factor=0.9),
    lambda: AvalancheSI(1.0),
    lambda: AvalancheRWalk(delta_t=2),
], ids=["mas", "ewc", "si", "rwalk"])
def test_each_runs_three_experiences_on_a_bn_cnn_in_naive(make):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6))
    stream = make_stream("train", n_experiences=3, n_per_exp=6, n_features=16)
    for exp in stream:
        exp.dataset.x = exp.dataset.x.view(-1, 1, 4, 4)
    plugin = make()
    Naive(model, torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=3, plugins=[plugin],
          evaluator=None).train(stream)
    assert plugin.last_penalty is not None and math.isfinite(float(plugin.last_penalty))
    assert float(plugin.last_penalty) != 0.0
