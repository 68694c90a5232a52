"""MASPlugin against the Avalanche transcription (``clfast.testing.avalanche.AvalancheMAS``, spec §2)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import Dataset

from clfast.plugins import MASPlugin
from clfast.testing.avalanche import AvalancheMAS
from clfast.testing.fakes import Experience, Stream
from clfast.testing.plugin_fixtures import (
    MODEL_CASES,
    MultiHead,
    SmallCNN,
    assert_dicts_close,
    mlp,
    run_case,
    seeded,
    stream,
    train_stream,
    trained,
)


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_importance_anchor_penalty_and_losses_match_avalanche(case):
    ours, ref = MASPlugin(lambda_reg=2.0, alpha=0.3), AvalancheMAS(lambda_reg=2.0, alpha=0.3)
    run_case(case, ours, ref, momentum=0.5)  # asserts the losses and the models agree
    assert_dicts_close(ours.importance, ref.importance, "importance")
    assert_dicts_close(ours.params, ref.params, "anchor")
    assert any(v.abs().sum() > 0 for v in ours.importance.values())


def test_unused_head_importance_decays_by_alpha():
    ours = MASPlugin(alpha=0.25)
    exps = stream(task_incremental=True)
    s = trained([ours], MultiHead, exps[:1])
    head0 = ours.importance["heads.0.weight"].clone()
    assert head0.abs().sum() > 0
    train_stream(s, exps[1:2])
    torch.testing.assert_close(ours.importance["heads.0.weight"], 0.25 * head0)


def test_zero_loss_does_not_raise():
    """Difference: Avalanche raises ValueError when the loss is exactly 0 (and syncs to check it)."""
    exps = stream()

    def zero_criterion(out, y):
        return (out * 0.0).sum()

    for plugin, raises in ((MASPlugin(), False), (AvalancheMAS(), True)):
        s = trained([plugin], mlp)
        s._criterion = zero_criterion
        train_stream(s, exps[:1])
        if raises:
            with pytest.raises(ValueError, match="loss"):
                train_stream(s, exps[1:2])
        else:
            train_stream(s, exps[1:2])


class _FreezeBN:
    """Puts every BatchNorm in eval mode at the start of each experience (a user's choice)."""

    def before_training_exp(self, strategy, **kwargs):
        for m in strategy.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()


class _ModeProbe:
    def __init__(self):
        self.modes = []

    def after_training_exp(self, strategy, **kwargs):
        self.modes.append([m.training for m in strategy.model.modules() if isinstance(m, torch.nn.BatchNorm2d)])


def test_importance_pass_restores_module_modes():
    """Difference: Avalanche leaves every module in train mode after the pass."""
    for plugin, expect_training in ((MASPlugin(), False), (AvalancheMAS(), True)):
        probe = _ModeProbe()
        trained([_FreezeBN(), plugin, probe], SmallCNN, stream()[:1])
        assert probe.modes == [[expect_training, expect_training]]


class _TwoElementDataset(Dataset):
    def __init__(self, n=8):
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(n, 10, generator=g)
        self.targets = torch.arange(n) % 2
        self.targets_task_labels = torch.zeros(n, dtype=torch.long)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def test_two_element_batches_are_not_routed_by_their_labels():
    """Difference: with (x, y) batches Avalanche passes the labels to a task-aware model as task ids."""
    model = seeded(MultiHead)
    strategy = SimpleNamespace(model=model, device=torch.device("cpu"), train_mb_size=4,
                               experience=Experience(_TwoElementDataset(), 0, Stream("train")),
                               optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                               clock=SimpleNamespace(train_exp_counter=0))
    AvalancheMAS().after_training_exp(strategy)  # routes samples of class 1 to head 1
    with pytest.raises(ValueError, match="task labels"):
        MASPlugin().after_training_exp(strategy)
