"""CWRStarPlugin (``avalanche-semantics.md`` §4.8): consolidation on a hand-computed case, reset, freezing,
replay counts, growth, state_dict, errors, and runs inside ``Naive`` and the attribute-only ``MiniStrategy``."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from clfast.plugins import CWRStarPlugin, get_last_fc_layer
from clfast.testing.fakes import make_stream
from clfast.testing.plugin_fixtures import MiniStrategy, naive, train_stream


def _strategy(targets, exp_index):
    """Only what the hooks read: the clock and the experience's dataset targets."""
    return SimpleNamespace(clock=SimpleNamespace(train_exp_counter=exp_index),
                           experience=SimpleNamespace(dataset=SimpleNamespace(targets=torch.tensor(targets))))


def _head(n_classes=4, features=2, bias=False):
    return nn.Sequential(nn.Linear(3, features), nn.ReLU(), nn.Linear(features, n_classes, bias=bias))


def _set(layer, rows):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(rows, dtype=layer.weight.dtype))


def test_consolidation_by_hand_over_two_experiences():
    model = _head()
    plugin = CWRStarPlugin(model, freeze_remaining_model=False)
    assert plugin.cwr_layer_name == "2"
    w = model[2].weight

    # experience 0: classes 0 (2 patterns) and 1 (1 pattern)
    plugin.before_training_exp(_strategy([0, 0, 1], 0))
    assert plugin.cur_class == [0, 1] and plugin.cur_j.tolist() == [2, 1, 0, 0]
    assert torch.equal(w, torch.zeros(4, 2))  # nothing saved yet: all rows reset to 0
    _set(model[2], [[1, 3], [5, 7], [9, 9], [2, 2]])  # "training"
    plugin.after_training_exp(None)
    # ā = mean of all entries of rows 0, 1 = (1+3+5+7)/4 = 4 (a scalar, not per row)
    torch.testing.assert_close(plugin.saved_weights[:2], torch.tensor([[-3.0, -1.0], [1.0, 3.0]]))
    assert plugin.saved_mask.tolist() == [True, True, False, False]
    assert plugin.past_j.tolist() == [2, 1, 0, 0]
    # saved rows written back; never-seen classes keep their trained values
    torch.testing.assert_close(w.detach(), torch.tensor([[-3.0, -1.0], [1.0, 3.0], [9.0, 9.0], [2.0, 2.0]]))

    # experience 1: class 1 again (4 patterns), class 2 new (2 patterns)
    plugin.before_training_exp(_strategy([1, 1, 1, 1, 2, 2], 1))
    assert plugin.cur_class == [1, 2] and plugin.cur_j.tolist() == [0, 4, 2, 0]
    # reset: rows of current classes with a saved row get it back, every other row is 0
    torch.testing.assert_close(w.detach(), torch.tensor([[0.0, 0.0], [1.0, 3.0], [0.0, 0.0], [0.0, 0.0]]))
    _set(model[2], [[10, 10], [7, 9], [0, 2], [-1, -1]])
    plugin.after_training_exp(None)
    # ā = (7+9+0+2)/4 = 4.5; class 1: k = sqrt(past/cur) = sqrt(1/4) = 0.5,
    # saved = (0.5·[1, 3] + [2.5, 4.5]) / 1.5 = [2, 4]; class 2 (new): [0, 2] − 4.5
    k = math.sqrt(1 / 4)
    assert k == 0.5
    torch.testing.assert_close(plugin.saved_weights[1:3], torch.tensor([[2.0, 4.0], [-4.5, -2.5]]))
    assert plugin.past_j.tolist() == [2, 5, 2, 0]
    assert plugin.saved_mask.tolist() == [True, True, True, False]
    # class 0's saved row overrides what training did to it; class 3 (never seen) keeps its value
    torch.testing.assert_close(w.detach(), torch.tensor([[-3.0, -1.0], [2.0, 4.0], [-4.5, -2.5], [-1.0, -1.0]]))


def test_the_mean_is_one_scalar_over_all_current_rows():
    model = _head(n_classes=3)
    plugin = CWRStarPlugin(model, freeze_remaining_model=False)
    plugin.before_training_exp(_strategy([0, 1], 0))
    _set(model[2], [[0, 2], [10, 20], [5, 5]])
    plugin.consolidate_weights()
    rows = torch.tensor([[0.0, 2.0], [10.0, 20.0]])
    torch.testing.assert_close(plugin.saved_weights[:2], rows - rows.mean())
    assert not torch.allclose(plugin.saved_weights[:2], rows - rows.mean(1, keepdim=True))


def test_reset_weights_keeps_only_saved_rows_of_the_given_classes_and_ignores_the_bias():
    model = _head(n_classes=4, bias=True)
    plugin = CWRStarPlugin(model, freeze_remaining_model=False)
    plugin.before_training_exp(_strategy([0, 1, 2], 0))
    _set(model[2], [[1, 2], [3, 4], [5, 6], [7, 8]])
    bias = model[2].bias.detach().clone()
    plugin.after_training_exp(None)
    saved = plugin.saved_weights
    plugin.reset_weights([1, 3])
    expected = torch.zeros(4, 2)
    expected[1] = saved[1]  # class 3 has no saved row: 0
    torch.testing.assert_close(model[2].weight.detach(), expected)
    assert torch.equal(model[2].bias, bias)
    plugin.reset_weights(torch.tensor([0, 2]))
    assert torch.equal(model[2].weight[1], torch.zeros(2)) and torch.equal(model[2].weight[0], saved[0])
    with pytest.raises(ValueError, match="class 4 is outside"):
        plugin.reset_weights([4])
    with pytest.raises(TypeError):
        plugin.reset_weights([1.0])


def test_add_counts_extends_the_current_classes_for_replay():
    model = _head(n_classes=5)
    plugin = CWRStarPlugin(model, freeze_remaining_model=False)
    plugin.before_training_exp(_strategy([0, 1, 1], 0))
    plugin.after_training_exp(None)
    plugin.before_training_exp(_strategy([2, 2], 1))
    plugin.add_counts(torch.tensor([0, 0, 1, 4]))  # the replay memory's labels
    assert plugin.cur_j.tolist() == [2, 1, 2, 0, 1] and plugin.cur_class == [0, 1, 2, 4]
    plugin.reset_weights(plugin.cur_class)
    assert torch.equal(model[2].weight[0], plugin.saved_weights[0])
    plugin.add_counts(torch.tensor([], dtype=torch.long))
    assert plugin.cur_class == [0, 1, 2, 4]
    with pytest.raises(ValueError, match="class label 5"):
        plugin.add_counts(torch.tensor([5]))
    with pytest.raises(TypeError):
        plugin.add_counts(torch.tensor([0.5]))


def test_freezes_the_rest_of_the_model_from_the_second_experience():
    model = _head()
    plugin = CWRStarPlugin(model)  # freeze_remaining_model=True
    plugin.before_training_exp(_strategy([0, 1], 0))
    assert all(p.requires_grad for p in model.parameters()) and model.training
    plugin.before_training_exp(_strategy([2, 3], 1))
    assert not model[0].weight.requires_grad and not model[0].bias.requires_grad and not model[0].training
    assert model[2].weight.requires_grad and model[2].training
    other = _head()
    CWRStarPlugin(other, freeze_remaining_model=False).before_training_exp(_strategy([2], 1))
    assert all(p.requires_grad for p in other.parameters())


def test_state_follows_a_growing_layer():
    model = _head(n_classes=2)
    plugin = CWRStarPlugin(model, cwr_layer_name="2", freeze_remaining_model=False)
    plugin.before_training_exp(_strategy([0, 1], 0))
    _set(model[2], [[1, 2], [3, 4]])
    plugin.after_training_exp(None)
    saved = plugin.saved_weights
    old = model[2]
    model[2] = nn.Linear(2, 4, bias=False)  # an incremental classifier grew
    with torch.no_grad():
        model[2].weight[:2] = old.weight
    plugin.before_training_exp(_strategy([1, 3], 1))
    assert plugin.saved_weights.shape == (4, 2) and plugin.past_j.tolist() == [1, 1, 0, 0]
    assert torch.equal(plugin.saved_weights[:2], saved)
    assert torch.equal(model[2].weight[1], saved[1]) and torch.equal(model[2].weight[3], torch.zeros(2))
    model[2] = nn.Linear(2, 3, bias=False)
    with pytest.raises(ValueError, match="shrank"):
        plugin.consolidate_weights()


def test_state_dict_round_trip_and_validation():
    model = _head(n_classes=4)
    plugin = CWRStarPlugin(model, freeze_remaining_model=False)
    plugin.before_training_exp(_strategy([0, 1, 1], 0))
    _set(model[2], [[1, 2], [3, 4], [5, 6], [7, 8]])
    plugin.after_training_exp(None)
    plugin.before_training_exp(_strategy([1, 2], 1))
    sd = plugin.state_dict()
    assert "saved_weights" not in dict(model.named_buffers()) and not hasattr(model, "past_j")

    twin_model = copy.deepcopy(model)
    twin = CWRStarPlugin(twin_model, freeze_remaining_model=True)
    twin.load_state_dict(sd)
    assert twin.freeze_remaining_model is False and twin.cur_class == [1, 2]
    for name in ("saved_weights", "saved_mask", "past_j", "cur_j"):
        assert torch.equal(getattr(twin, name), getattr(plugin, name)), name
    for m, p in ((model, plugin), (twin_model, twin)):
        _set(m[2], [[0, 1], [2, 3], [4, 6], [8, 9]])
        p.after_training_exp(None)
    assert torch.equal(twin.saved_weights, plugin.saved_weights)
    assert torch.equal(twin_model[2].weight, model[2].weight)

    # a smaller state loads into a grown layer (padded); a bad one raises and changes nothing
    grown = CWRStarPlugin(_head(n_classes=6), freeze_remaining_model=False)
    grown.load_state_dict(sd)
    assert grown.past_j.tolist() == [*sd["past_j"].tolist(), 0, 0]
    before = twin.state_dict()
    bad_cases = [
        ({**sd, "plugin": "MASPlugin"}, ValueError),
        ({**sd, "version": 99}, ValueError),
        ({**sd, "cwr_layer_name": "0"}, ValueError),
        ({**sd, "saved_weights": sd["saved_weights"][:, :1]}, ValueError),
        ({**sd, "past_j": sd["past_j"].float()}, ValueError),
        ({**sd, "saved_mask": sd["saved_mask"][:2]}, ValueError),
        ({**sd, "cur_class": [0]}, ValueError),
        ({**sd, "past_j": -sd["past_j"] - 1}, ValueError),
        ({**sd, "saved_weights": None}, TypeError),
        ("nope", TypeError),
    ]
    for bad, err in bad_cases:
        with pytest.raises(err):
            twin.load_state_dict(bad)
        after = twin.state_dict()
        assert all(torch.equal(after[k], before[k]) for k in ("saved_weights", "saved_mask", "past_j", "cur_j"))
    small = CWRStarPlugin(_head(n_classes=3), freeze_remaining_model=False)
    with pytest.raises(ValueError, match="only 3"):
        small.load_state_dict(sd)


def test_construction_errors():
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        CWRStarPlugin(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        get_last_fc_layer(nn.ReLU())
    with pytest.raises(ValueError, match="no layer named 'head'"):
        CWRStarPlugin(_head(), cwr_layer_name="head")
    with pytest.raises(ValueError, match="2-D floating-point weight"):
        CWRStarPlugin(_head(), cwr_layer_name="1")
    with pytest.raises(TypeError):
        CWRStarPlugin(_head(), freeze_remaining_model=1)
    with pytest.raises(TypeError):
        CWRStarPlugin("model")
    m = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.Linear(3, 4)), nn.ReLU())
    assert get_last_fc_layer(m)[0] == "1.0"
    plugin = CWRStarPlugin(m)
    assert plugin.cwr_layer is m[1][0] and plugin.saved_weights.shape == (4, 3)
    assert plugin.supports_distributed is True  # docs/distributed.md, "AR1"
    with pytest.raises(ValueError, match="class label 4 is outside"):
        plugin.before_training_exp(_strategy([4], 0))


def _run(strategy_factory, freeze):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4))
    plugin = CWRStarPlugin(model, freeze_remaining_model=freeze)
    strategy = strategy_factory(model, plugin)
    exps = make_stream("train", n_experiences=2, n_per_exp=12, classes_per_exp=2)
    first_layer = []
    for exp in exps:
        train_stream(strategy, [exp])
        first_layer.append(model[0].weight.detach().clone())
    return model, plugin, exps, first_layer


@pytest.mark.parametrize("where", ["naive", "mini"])
def test_runs_inside_a_strategy(where):
    def factory(model, plugin):
        if where == "naive":
            return naive(model, [plugin], lr=0.05, mb=4, epochs=2)
        return MiniStrategy(model, torch.optim.SGD(model.parameters(), lr=0.05), [plugin], mb=4, epochs=2)

    model, plugin, _, first_layer = _run(factory, freeze=True)
    # Avalanche's own test: past_j[c] = number of training patterns of class c
    assert plugin.past_j.tolist() == [6, 6, 6, 6]
    assert plugin.saved_mask.all()
    torch.testing.assert_close(model[2].weight.detach(), plugin.saved_weights)
    assert torch.equal(first_layer[0], first_layer[1])  # frozen in the second experience
    assert model[2].weight.requires_grad and not model[0].weight.requires_grad
    _, _, _, unfrozen = _run(factory, freeze=False)
    assert not torch.equal(unfrozen[0], unfrozen[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_state_follows_the_layer_to_the_gpu_and_matches_the_cpu():
    results = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = _head(n_classes=4)
        plugin = CWRStarPlugin(model, freeze_remaining_model=False)  # built on the CPU, model moved after
        model.to(device)
        plugin.before_training_exp(_strategy([0, 1, 1], 0))
        _set(model[2], [[1, 2], [3, 4], [5, 6], [7, 8]])
        plugin.after_training_exp(None)
        plugin.before_training_exp(_strategy([1, 2], 1))
        plugin.add_counts(torch.tensor([0, 3], device=device))
        _set(model[2], [[0, 1], [2, 3], [4, 6], [8, 9]])
        plugin.after_training_exp(None)
        assert plugin.saved_weights.device.type == device and plugin.past_j.device.type == device
        results.append((plugin.saved_weights.cpu(), plugin.past_j.cpu(), model[2].weight.detach().cpu()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)
