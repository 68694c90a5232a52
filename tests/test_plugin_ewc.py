"""EWCPlugin against the Avalanche transcription (``clfast.testing.avalanche.AvalancheEWC``)."""

from __future__ import annotations

import pytest
import torch

from clfast.testing.avalanche import AvalancheEWC, pad_to
from clfast.testing.plugin_fixtures import (
    MODEL_CASES,
    ModeProbe,
    SmallCNN,
    assert_dicts_close,
    mlp,
    run_case,
    run_side_by_side,
    stream,
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


from clfast.plugins import EWCPlugin  # noqa: E402  (kept last: the reference import above must not shadow it)
