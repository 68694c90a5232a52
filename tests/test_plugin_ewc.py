"""EWCPlugin against the Avalanche transcription (``clfast.testing.avalanche.AvalancheEWC``)."""

from __future__ import annotations

import copy

import pytest
import torch

from clfast.testing.avalanche import AvalancheEWC, pad_to
from clfast.testing.plugin_fixtures import (
    MODEL_CASES,
    N_CLASSES,
    N_FEATURES,
    ModeProbe,
    MultiHead,
    SmallCNN,
    assert_dicts_close,
    assert_losses_close,
    assert_models_close,
    mlp,
    naive,
    run_case,
    run_side_by_side,
    seeded,
    stream,
    train_stream,
    trained,
)


def _folded(ref: AvalancheEWC, model: torch.nn.Module) -> tuple[dict, dict, float]:
    """Σ_k F_k, the F-weighted mean anchor and the constant C, from Avalanche's per-experience dicts (float64)."""
    imp, anchor, const = {}, {}, 0.0
    for n, p in model.named_parameters():
        fs = [pad_to(ref.importances[j][n], p.shape).double() for j in sorted(ref.saved_params)
              if n in ref.saved_params[j]]
        ts = [pad_to(ref.saved_params[j][n], p.shape).double() for j in sorted(ref.saved_params)
              if n in ref.saved_params[j]]
        f = sum(fs)
        mean = torch.where(f > 0, sum(a * b for a, b in zip(fs, ts, strict=True)) / torch.where(f > 0, f, 1.0), ts[-1])
        imp[n], anchor[n] = f, mean
        const += float(sum((a * (b - mean) ** 2).sum() for a, b in zip(fs, ts, strict=True)))
    return imp, anchor, const


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_separate_mode_matches_avalanche(case):
    ours, ref = EWCPlugin(ewc_lambda=3.0), AvalancheEWC(ewc_lambda=3.0, eval_mode_leak=False)
    _, sb = run_case(case, ours, ref, momentum=0.5)  # asserts the losses and the models agree
    imp, anchor, const = _folded(ref, sb.model)
    assert_dicts_close(ours.importance, imp, "folded importance")
    assert_dicts_close(ours.anchor, anchor, "folded anchor", atol=1e-5)
    assert ours.penalty_constant == pytest.approx(const, rel=1e-4, abs=1e-9)
    assert const > 0


@pytest.mark.parametrize("case", ["mlp-class", "cnn_bn-class", "multihead-task", "growing_head-class"])
@pytest.mark.parametrize("keep", [False, True])
def test_online_mode_matches_avalanche(case, keep):
    ours = EWCPlugin(ewc_lambda=3.0, mode="online", decay_factor=0.7, keep_importance_data=keep)
    ref = AvalancheEWC(ewc_lambda=3.0, mode="online", decay_factor=0.7, keep_importance_data=keep,
                       eval_mode_leak=False)
    run_case(case, ours, ref)  # asserts the losses and the models agree
    last = max(ref.importances)
    assert_dicts_close(ours.importance, ref.importances[last], "importance")
    assert_dicts_close(ours.anchor, ref.saved_params[last], "anchor")
    if keep:
        assert sorted(ours.importances) == sorted(ref.importances) == [0, 1, 2]
        for t in ref.importances:
            _close_padded(ours.importances[t], ref.importances[t], f"importances[{t}]")
            _close_padded(ours.saved_params[t], ref.saved_params[t], f"saved_params[{t}]")
    else:
        assert ours.importances == {} and ours.saved_params == {}


def test_separate_mode_keeps_per_experience_data_on_request():
    ours, ref = EWCPlugin(1.0, keep_importance_data=True), AvalancheEWC(1.0, eval_mode_leak=False)
    run_side_by_side(mlp, ours, ref, stream())
    for t in (0, 1, 2):
        _close_padded(ours.importances[t], ref.importances[t], f"importances[{t}]")
        _close_padded(ours.saved_params[t], ref.saved_params[t], f"saved_params[{t}]")


def _close_padded(ours: dict, ref: dict, what: str) -> None:
    """The transcription pads its stored dicts in place when parameters grow; ours keep their shapes."""
    assert_dicts_close({k: pad_to(v, ref[k].shape) for k, v in ours.items()}, ref, what)


def test_separate_mode_cost_does_not_grow_with_experiences():
    ours = EWCPlugin(1.0)
    s = trained([ours], mlp, stream(n_experiences=3))
    n_params = sum(p.numel() for p in s.model.parameters())
    sd = ours.state_dict()["state"]
    assert sorted(sd["buffers"]) == ["anchor", "importance"]
    assert all(b.numel() == n_params for b in sd["buffers"].values())


def test_fisher_pass_restores_module_modes_within_one_train_call():
    """Difference: Avalanche's Fisher pass leaves the model in eval mode; with one ``train()`` call over
    several experiences the later ones then train with BatchNorm in eval mode."""
    exps = stream()
    for plugin, expect in ((EWCPlugin(1.0), True), (AvalancheEWC(1.0), False)):
        probe = ModeProbe()
        s = trained([plugin, probe], SmallCNN)
        modes = probe.modes
        torch.manual_seed(0)
        s.train(exps[:2])  # one call, two experiences
        n = len(modes) // 2
        assert all(modes[:n])
        assert all(m is expect for m in modes[n:])


def _authors_fisher(model: torch.nn.Module, dataset, labels: str, n: int | None = None,
                    task_aware: bool = False) -> dict[str, torch.Tensor]:
    """Independent reference (van de Ven & Tolias's ``estimate_fisher``, normalised by the sample count): in eval
    mode, one sample at a time, the float64 gradient of −log softmax(output)[c] at the predicted class, the
    target, or every class (weighted by its probability), squared and averaged over the first ``n`` samples."""
    model = copy.deepcopy(model).double().eval()
    sums = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    count = len(dataset) if n is None else n
    for i in range(count):
        x, y, t = dataset[i]
        x = torch.as_tensor(x).double()[None]
        out = model(x, torch.tensor([int(t)])) if task_aware else model(x)
        log_p = torch.log_softmax(out, dim=1)[0]
        if labels == "all":
            weighted = [(c, float(log_p[c].detach().exp())) for c in range(len(log_p))]
        else:
            weighted = [(int(out.argmax(1)) if labels == "pred" else int(y), 1.0)]
        for c, w in weighted:
            model.zero_grad()
            (-log_p[c]).backward(retain_graph=True)
            for k, p in model.named_parameters():
                if p.grad is not None:
                    sums[k] += w * p.grad**2
    return {k: v / count for k, v in sums.items()}


_SAMPLE_CASES = {  # name -> (model factory, task-incremental stream, whether the nn.Linear identity applies)
    "mlp": (mlp, False, True),
    "cnn_bn": (SmallCNN, False, False),
    "multihead": (MultiHead, True, True),
    "multihead_mlp": (lambda: MultiHeadMLP(N_FEATURES, 8, 2), True, True),
    "inplace_relu": (lambda: SimpleMLP((N_FEATURES,), N_CLASSES, 8, 2), False, True),
}


@pytest.mark.parametrize("labels", ["pred", "true", "all"])
@pytest.mark.parametrize("case", sorted(_SAMPLE_CASES))
def test_per_sample_fisher_matches_the_authors_estimate(case, labels, monkeypatch):
    factory, task_incremental, linear = _SAMPLE_CASES[case]
    calls = []
    original = per_sample._one_at_a_time
    monkeypatch.setattr(per_sample, "_one_at_a_time", lambda *a: calls.append(1) or original(*a))
    ours = EWCPlugin(1.0, fisher="sample", fisher_labels=labels, keep_importance_data=True)
    exps = stream(task_incremental=task_incremental)[:2]
    s = trained([ours], factory, exps)
    assert bool(calls) is not linear  # the identity where it applies, the per-sample loop elsewhere
    ref = _authors_fisher(s.model, exps[1].dataset, labels, task_aware=task_incremental)
    assert_dicts_close(ours.importances[1], {k: v for k, v in ref.items() if k in ours.importances[1]},
                       "per-sample Fisher", rtol=1e-4, atol=1e-9)
    assert sum(float(v.sum()) for v in ours.importances[1].values()) > 0
    assert all(m.training for m in s.model.modules())  # the pass restored the modes


def test_per_sample_fisher_budget_takes_the_first_samples():
    ours = EWCPlugin(1.0, fisher="sample", fisher_labels="pred", fisher_samples=7, keep_importance_data=True)
    exps = stream()[:1]
    s = trained([ours], mlp, exps)
    assert_dicts_close(ours.importances[0], _authors_fisher(s.model, exps[0].dataset, "pred", n=7),
                       "budgeted Fisher", rtol=1e-4, atol=1e-9)
    full = EWCPlugin(1.0, fisher="sample", fisher_labels="pred", keep_importance_data=True)
    trained([full], mlp, exps)
    assert not torch.allclose(full.importances[0]["0.weight"], ours.importances[0]["0.weight"])


def test_per_sample_fisher_is_much_larger_than_the_batch_estimate():
    """The batch estimate squares a mean over a minibatch, whose per-sample gradients partly cancel."""
    est = {}
    for fisher in ("batch", "sample"):
        plugin = EWCPlugin(1.0, fisher=fisher, keep_importance_data=True)
        trained([plugin], mlp, stream()[:1])
        est[fisher] = sum(float(v.sum()) for v in plugin.importances[0].values())
    assert est["sample"] > 2 * est["batch"]


class AuthorsEWC:
    """Independent reference: EWC and Online EWC as van de Ven & Tolias's code computes them, in plain autograd.
    After each experience F is :func:`_authors_fisher` at the predicted class (normalised by N; the authors'
    loop divides by its last index, N − 1) and θ* ← θ; EWC keeps one (F_k, θ*_k) per experience and adds
    (λ/2)·Σ_k F_k⊙(θ−θ*_k)², Online EWC keeps F̃ ← F + γF̃ with the latest θ* and adds (λ/2)·γ·F̃⊙(θ−θ*)²."""

    def __init__(self, lam: float, gamma: float | None = None) -> None:
        self.lam, self.gamma = lam, gamma
        self.terms: list[tuple[dict, dict]] = []

    def before_backward(self, strategy, **kwargs):
        ps = dict(strategy.model.named_parameters())
        scale = 1.0 if self.gamma is None else self.gamma
        for f, anchor in self.terms:
            strategy.loss = strategy.loss + self.lam / 2 * scale * sum(
                (f[k].float() * (p - anchor[k]) ** 2).sum() for k, p in ps.items())

    def after_training_exp(self, strategy, **kwargs):
        f = _authors_fisher(strategy.model, strategy.experience.dataset, "pred")
        anchor = {k: p.detach().clone() for k, p in strategy.model.named_parameters()}
        if self.gamma is not None and self.terms:
            f = {k: v + self.gamma * self.terms[0][0][k] for k, v in f.items()}
            self.terms = []
        self.terms.append((f, anchor))


@pytest.mark.parametrize("gamma", [None, 0.7])
def test_authors_ewc_and_online_ewc_are_these_modes_with_half_lambda(gamma):
    lam = 40.0
    ours = (EWCPlugin(lam / 2, fisher="sample", fisher_labels="pred") if gamma is None else
            EWCPlugin(lam * gamma / 2, mode="online", decay_factor=gamma, fisher="sample", fisher_labels="pred"))
    sa, sb, ra, rb = run_side_by_side(mlp, ours, AuthorsEWC(lam, gamma), stream(), momentum=0.5)
    assert_losses_close(ra, rb, rtol=1e-4)
    assert_models_close(sa.model, sb.model, rtol=1e-4, atol=1e-6)
    plain = naive(seeded(mlp), [])
    train_stream(plain, stream())
    assert not torch.allclose(plain.model[0].weight, sa.model[0].weight, atol=1e-3)  # the penalty did something


@pytest.mark.parametrize("kwargs", [{"fisher": "exact"}, {"fisher_labels": "pred"}, {"fisher_samples": 10},
                                    {"fisher": "sample", "fisher_labels": "sampled"},
                                    {"fisher": "sample", "fisher_samples": 0}])
def test_fisher_options_are_checked(kwargs):
    with pytest.raises(ValueError):
        EWCPlugin(1.0, **kwargs)


from clfast.models import SimpleMLP  # noqa: E402
from clfast.nn import MultiHeadMLP  # noqa: E402
from clfast.plugins import EWCPlugin, per_sample  # noqa: E402  (kept last: the reference import must not shadow it)
