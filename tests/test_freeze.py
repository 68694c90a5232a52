"""``get_layers_and_params`` / ``freeze_up_to`` / ``filter_bn_and_brn`` (``avalanche-semantics.md`` §4.4), held to
a transcription of Avalanche's walk, with clfast's one difference: parameter names and unknown names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clfast.nn import (
    BatchRenorm1d,
    BatchRenorm2d,
    LayerAndParameter,
    MobileNetV1,
    filter_bn_and_brn,
    freeze_up_to,
    get_layers_and_params,
    replace_bn_with_brn,
)


def _avalanche_freeze_up_to(model, freeze_until_layer=None, set_eval_mode=True, set_requires_grad_false=True,
                            layer_filter=None):
    """Avalanche's ``freeze_up_to`` (``training/utils.py``), transcribed: the walk stops at the first entry
    whose *layer* name equals the target."""
    frozen_layers, frozen_parameters, to_freeze = set(), set(), {}
    for d in get_layers_and_params(model):
        if freeze_until_layer is not None and freeze_until_layer == d.layer_name:
            break
        if layer_filter is None or layer_filter(d):
            if set_requires_grad_false:
                d.parameter.requires_grad = False
                frozen_parameters.add(d.parameter_name)
            if d.layer_name not in to_freeze:
                to_freeze[d.layer_name] = (True, d.layer)
        else:
            to_freeze[d.layer_name] = (False, None)
    if set_eval_mode:
        for name, (frozen, layer) in to_freeze.items():
            if frozen:
                layer.eval()
                frozen_layers.add(name)
    return frozen_layers, frozen_parameters


def _brn_mobilenet() -> MobileNetV1:
    torch.manual_seed(0)
    return replace_bn_with_brn(MobileNetV1(num_classes=10), momentum=0.01).train()


def _snapshot(model):
    return ({n for n, p in model.named_parameters() if not p.requires_grad},
            {n for n, m in model.named_modules() if not m.training})


def _reset(model):
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)


def test_entries_repeat_once_per_ancestor_chain():
    model = MobileNetV1()
    entries = get_layers_and_params(model)
    assert len(entries) == 325
    assert all(isinstance(e, LayerAndParameter) for e in entries)
    names = [n for n, _ in model.named_parameters()]
    assert len(set(e.parameter_name for e in entries)) == len(names) == 82
    assert list(dict.fromkeys(e.parameter_name for e in entries)) == names  # first occurrences in order
    counts = {n: sum(e.parameter_name == n for e in entries) for n in names}
    assert counts["output.weight"] == 1 and counts["lat_features.0.conv.weight"] == 4
    assert set(counts.values()) == {1, 4}
    e = next(e for e in entries if e.parameter_name == "lat_features.19.bn.bias")
    assert e.layer_name == "lat_features.19.bn" and e.layer is model.lat_features[19].bn
    assert e.parameter is model.lat_features[19].bn.bias
    # a tiny nesting: depth 3 gives 2^(3-1) = 4 entries, depth 1 one entry
    deep = nn.Sequential(nn.Sequential(nn.Sequential(nn.Linear(2, 2))), nn.Linear(2, 1))
    names = [e.parameter_name for e in get_layers_and_params(deep)]
    assert names.count("0.0.0.weight") == 4 and names.count("1.weight") == 1


def test_ar1_default_freezes_the_20_latent_conv_weights_by_layer_or_parameter_name():
    expected = {f"lat_features.{i}.conv.weight" for i in range(20)}
    for target in ("lat_features.19.bn", "lat_features.19.bn.beta", "lat_features.19.bn.gamma"):
        model = _brn_mobilenet()
        layers, params = freeze_up_to(model, target, layer_filter=filter_bn_and_brn)
        assert params == expected, target
        assert layers == {f"lat_features.{i}.conv" for i in range(20)}
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert len(trainable) == 62 and "lat_features.19.bn.beta" in trainable
        frozen_params, eval_modules = _snapshot(model)
        assert frozen_params == expected
        assert eval_modules == layers  # the frozen conv layers are in eval mode; BRN layers keep train mode
        assert model.lat_features[3].bn.training and model.end_features.training


def test_same_walk_as_avalanche_for_every_layer_with_parameters():
    """For a layer that owns parameters, clfast stops exactly where Avalanche does."""
    model, twin = _brn_mobilenet(), _brn_mobilenet()
    targets = sorted({e.layer_name for e in get_layers_and_params(model)})
    assert len(targets) == 55
    for target in [None, *targets]:
        for kw in ({"layer_filter": filter_bn_and_brn}, {}):
            _reset(model), _reset(twin)
            ours = freeze_up_to(model, target, **kw)
            ref = _avalanche_freeze_up_to(twin, target, **kw)
            assert ours == ref, (target, kw)
            assert _snapshot(model) == _snapshot(twin), (target, kw)
    _reset(model)
    _, params = freeze_up_to(model, None, layer_filter=filter_bn_and_brn)
    assert len(params) == 28  # Avalanche's old default: everything but the norm layers (§4.1)


def test_a_name_that_matches_nothing_is_an_error_and_freezes_nothing():
    model = _brn_mobilenet()
    for bad in ("lat_features.19.bn.weight", "lat_features.99", "output.bias", "nonsense"):
        with pytest.raises(ValueError, match="matches no layer and no parameter"):
            freeze_up_to(model, bad, layer_filter=filter_bn_and_brn)
        assert _snapshot(model) == (set(), set())
    with pytest.raises(ValueError, match="non-empty"):
        freeze_up_to(model, "")
    with pytest.raises(TypeError):
        freeze_up_to(model, 19)
    with pytest.raises(TypeError):
        freeze_up_to(model, "output", layer_filter="yes")
    # Avalanche freezes the whole model for a parameter name (the old AR1 default, §4.1)
    _, params = _avalanche_freeze_up_to(model, "lat_features.19.bn.beta", layer_filter=filter_bn_and_brn)
    assert len(params) == 28 and "output.weight" in params


def test_a_layer_without_own_parameters_stops_before_its_first_parameter():
    model = _brn_mobilenet()
    _, params = freeze_up_to(model, "lat_features.19", layer_filter=filter_bn_and_brn)
    assert params == {f"lat_features.{i}.conv.weight" for i in range(19)}
    _reset(model)
    _, params = freeze_up_to(model, "end_features")
    assert params == {n for n, _ in model.lat_features.named_parameters(prefix="lat_features")}
    _reset(model)
    _, params = freeze_up_to(model, "lat_features.19.activ")  # no parameters at all: up to end_features.0
    assert "lat_features.19.bn.beta" in params and "end_features.0.conv.weight" not in params


def test_modes_and_flags_follow_the_switches():
    model = _brn_mobilenet()
    layers, params = freeze_up_to(model, "lat_features.2", set_eval_mode=False)
    assert layers == set() and len(params) == 6
    assert all(m.training for m in model.modules())
    _reset(model)
    layers, params = freeze_up_to(model, "lat_features.2", set_requires_grad_false=False)
    assert params == set() and layers == {"lat_features.0.conv", "lat_features.0.bn", "lat_features.1.conv",
                                          "lat_features.1.bn"}
    assert all(p.requires_grad for p in model.parameters())
    assert not model.lat_features[0].bn.training and model.lat_features[2].bn.training
    # a layer with one filtered-out parameter is not put in eval mode (Avalanche's override)
    lin = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    layers, params = freeze_up_to(lin, "1", layer_filter=lambda e: not e.parameter_name.endswith("bias"))
    assert params == {"0.weight"} and layers == set() and lin[0].training


def test_filter_bn_and_brn():
    def entry(layer):
        name, p = next(iter(layer.named_parameters()))
        return LayerAndParameter("x", layer, f"x.{name}", p)

    for norm in (nn.BatchNorm1d(3), nn.BatchNorm2d(3), nn.InstanceNorm2d(3, affine=True), BatchRenorm2d(3),
                 BatchRenorm1d(3)):
        assert filter_bn_and_brn(entry(norm)) is False
    for other in (nn.Conv2d(1, 1, 1), nn.Linear(1, 1), nn.LayerNorm(3)):
        assert filter_bn_and_brn(entry(other)) is True
