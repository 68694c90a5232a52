"""MobileNetV1 with the latent split of ``avalanche-semantics.md`` §4.2: layer table, parameter names and
counts, latent shapes from 32 to 224 px, the latent-replay forward, and weight loading (clfast's layout and
pytorchcv's ``mobilenet_w1`` layout, built synthetically here: nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clfast.nn import BatchRenorm2d, MobileNetV1, replace_bn_with_brn

# §4.2's table: (kind, channels in, channels out, stride) for entries 0..26.
TABLE = [("conv", 3, 32, 2), ("dw", 32, 32, 1), ("pw", 32, 64, 1), ("dw", 64, 64, 2), ("pw", 64, 128, 1),
         ("dw", 128, 128, 1), ("pw", 128, 128, 1), ("dw", 128, 128, 2), ("pw", 128, 256, 1), ("dw", 256, 256, 1),
         ("pw", 256, 256, 1), ("dw", 256, 256, 2), ("pw", 256, 512, 1)]
TABLE += [("dw", 512, 512, 1), ("pw", 512, 512, 1)] * 5
TABLE += [("dw", 512, 512, 2), ("pw", 512, 1024, 1), ("dw", 1024, 1024, 1), ("pw", 1024, 1024, 1)]

# pytorchcv mobilenet_w1 block names, in order (stage s has 1, 2, 2, 6, 2 units).
PYTORCHCV_BLOCKS = ["init_block"] + [f"stage{s}.unit{u}.{k}_conv" for s, n in zip(range(1, 6), [1, 2, 2, 6, 2],
                                                                                    strict=True)
                                     for u in range(1, n + 1) for k in ("dw", "pw")]


@pytest.fixture(scope="module")
def model() -> MobileNetV1:
    torch.manual_seed(0)
    return MobileNetV1().eval()


def test_layer_table_channels_strides_and_child_names(model):
    blocks = model.blocks()
    assert len(blocks) == 28 and len(model.lat_features) == 20 and len(model.end_features) == 8
    assert len(TABLE) == 27
    for i, (kind, cin, cout, stride) in enumerate(TABLE):
        b = blocks[i]
        assert [n for n, _ in b.named_children()] == ["conv", "bn", "activ"]
        conv = b.conv
        assert isinstance(conv, nn.Conv2d) and conv.bias is None
        assert (conv.in_channels, conv.out_channels, conv.stride) == (cin, cout, (stride, stride)), i
        assert conv.kernel_size == ((1, 1) if kind == "pw" else (3, 3))
        assert conv.groups == (cin if kind == "dw" else 1)
        assert isinstance(b.bn, nn.BatchNorm2d) and b.bn.num_features == cout
        assert isinstance(b.activ, nn.ReLU)
    assert isinstance(blocks[27], nn.AdaptiveAvgPool2d) and model.end_features[-1] is blocks[27]
    assert isinstance(model.output, nn.Linear) and model.output.bias is None
    assert (model.output.in_features, model.output.out_features) == (1024, 50)


def test_parameter_counts_and_names(model):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.lat_features) == 1_081_152
    assert count(model.end_features) == 2_125_824
    assert count(model.output) == 51_200
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == 82
    assert "lat_features.19.conv.weight" in names and "end_features.0.conv.weight" in names
    assert model.entry_name(19) == "lat_features.19" and model.entry_name(20) == "end_features.0"
    brn = replace_bn_with_brn(MobileNetV1(num_classes=10))
    assert isinstance(brn.lat_features[19].bn, BatchRenorm2d)
    brn_names = {n for n, _ in brn.named_parameters()}
    assert {"lat_features.19.bn.gamma", "lat_features.19.bn.beta"} <= brn_names and len(brn_names) == 82


@pytest.mark.parametrize(("size", "latent"), [(32, (512, 2, 2)), (128, (512, 8, 8)), (224, (512, 14, 14))])
def test_latent_shapes_and_outputs_from_32_to_224_px(model, size, latent):
    assert model.latent_shape(size) == latent
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits, acts = model(x, return_lat_acts=True)
    assert logits.shape == (2, 50) and acts.shape == (2, *latent)
    assert torch.isfinite(logits).all()


def test_latent_shape_of_other_splits_and_rectangles():
    m = MobileNetV1(num_classes=3, latent_layer_num=11)  # s4u1 DW (stride 2)
    assert m.latent_shape(128) == (256, 8, 8)
    assert m.latent_shape((96, 64)) == (256, 6, 4)
    assert MobileNetV1(num_classes=3, latent_layer_num=26).latent_shape(33) == (1024, 2, 2)
    with torch.no_grad():
        assert m.lat_features(torch.randn(1, 3, 96, 64)).shape[1:] == m.latent_shape((96, 64))


def test_global_pool_equals_avalanches_avgpool4_at_128px_only(model):
    """Avalanche replaces the final pool with ``AvgPool2d(4)``: the same at 128 px (4×4 map); at 224 px (7×7)
    it averages the top-left 4×4 only, and below ~100 px it fails. clfast pools globally."""
    pool4 = nn.AvgPool2d(4)
    before_pool = nn.Sequential(*list(model.end_features)[:-1])
    with torch.no_grad():
        for size, same in ((128, True), (224, False)):
            fmap = before_pool(model.lat_features(torch.randn(2, 3, size, size)))
            ours = model.end_features[-1](fmap)
            theirs = pool4(fmap)
            assert ours.shape == theirs.shape == (2, 1024, 1, 1)
            assert torch.allclose(ours, theirs, atol=1e-6) is same
            if not same:
                torch.testing.assert_close(theirs, fmap[:, :, :4, :4].mean((2, 3), keepdim=True))
        fmap = before_pool(model.lat_features(torch.randn(1, 3, 64, 64)))  # 2×2 map
        with pytest.raises(RuntimeError):
            pool4(fmap)
        assert model.end_features[-1](fmap).shape == (1, 1024, 1, 1)


def test_latent_input_is_concatenated_after_the_current_patterns():
    torch.manual_seed(1)
    m = MobileNetV1(num_classes=7).eval()
    x, replay = torch.randn(3, 3, 32, 32), torch.randn(4, 512, 2, 2)
    logits, acts = m(x, latent_input=replay, return_lat_acts=True)
    assert logits.shape == (7, 7) and acts.shape == (3, 512, 2, 2)
    with torch.no_grad():
        expected_cur = m(x)
        expected_replay = m.output(m.end_features(replay).flatten(1))
    torch.testing.assert_close(logits[:3], expected_cur)
    torch.testing.assert_close(logits[3:], expected_replay)
    # lat_features ran under no_grad: only end_features and output get gradients
    logits.sum().backward()
    assert all(p.grad is None for p in m.lat_features.parameters())
    assert all(p.grad is not None for p in m.end_features.parameters()) and m.output.weight.grad is not None
    assert not acts.requires_grad
    # without latent_input the latents are differentiable and are the patterns' own
    _, acts2 = m(x, return_lat_acts=True)
    assert acts2.requires_grad
    torch.testing.assert_close(acts2.detach(), acts)
    # an empty current batch: only the replayed latents
    logits_r, acts_r = m(x[:0], latent_input=replay, return_lat_acts=True)
    assert acts_r.shape == (0, 512, 2, 2)
    torch.testing.assert_close(logits_r.detach(), expected_replay)
    assert isinstance(m(x, latent_input=replay), torch.Tensor)


def test_bad_inputs_and_arguments_are_named():
    m = MobileNetV1(num_classes=4)
    with pytest.raises(ValueError, match="latent_input"):
        m(torch.randn(1, 3, 32, 32), latent_input=torch.randn(1, 256, 2, 2))
    with pytest.raises(ValueError, match="per-sample shape"):
        m(torch.randn(1, 3, 32, 32), latent_input=torch.randn(1, 512, 3, 3))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        m(torch.randn(1, 1, 32, 32))
    with pytest.raises(TypeError):
        m([1, 2])
    with pytest.raises(ValueError, match="latent_layer_num"):
        MobileNetV1(latent_layer_num=27)
    with pytest.raises(ValueError, match="num_classes"):
        MobileNetV1(num_classes=0)
    with pytest.raises(TypeError, match="num_classes"):
        MobileNetV1(num_classes=5.0)
    with pytest.raises(ValueError, match="width_mult"):
        MobileNetV1(width_mult=0)
    with pytest.raises(TypeError, match="image_size"):
        m.latent_shape("128")


def test_width_and_input_channels():
    m = MobileNetV1(num_classes=5, width_mult=0.25, in_channels=1)
    assert m.latent_shape(64) == (128, 4, 4) and m.output.in_features == 256
    with torch.no_grad():
        assert m(torch.randn(2, 1, 64, 64)).shape == (2, 5)


def test_weights_from_state_dict_and_file_round_trip(tmp_path):
    torch.manual_seed(2)
    src = MobileNetV1(num_classes=6)
    with torch.no_grad():
        for b in src.blocks()[:27]:
            b.bn.running_mean.uniform_(-1, 1)
            b.bn.running_var.uniform_(0.5, 2)
    sd = src.state_dict()
    torch.manual_seed(3)
    for weights in (sd, {"state_dict": sd}):
        m = MobileNetV1(num_classes=6, weights=weights)
        for k, v in sd.items():
            assert torch.equal(m.state_dict()[k], v), k
    path = tmp_path / "mobilenet.pt"
    torch.save(sd, path)
    m = MobileNetV1(num_classes=6, weights=path)
    assert torch.equal(m.output.weight, src.output.weight)
    m2 = MobileNetV1(num_classes=6, weights=str(path))
    assert torch.equal(m2.lat_features[5].bn.running_var, src.lat_features[5].bn.running_var)


def _pytorchcv_state_dict(model: MobileNetV1, seed: int = 4) -> dict[str, torch.Tensor]:
    """A synthetic state dict in pytorchcv's ``mobilenet_w1`` naming, with random values of our shapes."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, block in zip(PYTORCHCV_BLOCKS, model.blocks()[:27], strict=True):
        sd[f"features.{name}.conv.weight"] = torch.randn(block.conv.weight.shape, generator=g)
        c = block.bn.num_features
        sd[f"features.{name}.bn.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"features.{name}.bn.bias"] = torch.randn(c, generator=g)
        sd[f"features.{name}.bn.running_mean"] = torch.randn(c, generator=g)
        sd[f"features.{name}.bn.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"features.{name}.bn.num_batches_tracked"] = torch.tensor(1000)
    sd["output.weight"] = torch.randn(1000, 1024, generator=g)  # the ImageNet classifier: dropped
    sd["output.bias"] = torch.randn(1000, generator=g)
    return sd


def test_pytorchcv_layout_is_mapped_entry_by_entry(tmp_path):
    torch.manual_seed(5)
    ref = MobileNetV1(num_classes=50)
    sd = _pytorchcv_state_dict(ref)
    torch.manual_seed(6)
    fresh_output = MobileNetV1(num_classes=50).output.weight.detach().clone()
    torch.manual_seed(6)
    m = MobileNetV1(num_classes=50, weights=sd)
    for i, name in enumerate(PYTORCHCV_BLOCKS):
        entry = m.get_submodule(m.entry_name(i))
        assert torch.equal(entry.conv.weight, sd[f"features.{name}.conv.weight"]), name
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(entry.bn, leaf), sd[f"features.{name}.bn.{leaf}"]), (name, leaf)
    assert torch.equal(m.lat_features[19].conv.weight, sd["features.stage4.unit5.dw_conv.conv.weight"])
    assert torch.equal(m.end_features[0].conv.weight, sd["features.stage4.unit5.pw_conv.conv.weight"])
    assert torch.equal(m.output.weight, fresh_output)  # the classifier is not taken from the file
    path = tmp_path / "mobilenet_w1.pth"
    torch.save(sd, path)
    m2 = MobileNetV1(num_classes=10, latent_layer_num=11, weights=path)
    assert torch.equal(m2.lat_features[11].conv.weight, sd["features.stage4.unit1.dw_conv.conv.weight"])
    assert torch.equal(m2.end_features[0].bn.bias, sd["features.stage4.unit1.pw_conv.bn.bias"])


def test_bad_weights_name_the_problem(tmp_path):
    m = MobileNetV1(num_classes=6)
    sd = m.state_dict()
    missing = {k: v for k, v in sd.items() if k != "lat_features.3.conv.weight"}
    with pytest.raises(ValueError, match=r"missing keys \['lat_features.3.conv.weight'\]"):
        MobileNetV1(num_classes=6, weights=missing)
    with pytest.raises(ValueError, match=r"unexpected keys.*extra\.weight"):
        MobileNetV1(num_classes=6, weights={**sd, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"'output.weight' has shape \(6, 1024\)"):
        MobileNetV1(num_classes=7, weights=sd)
    with pytest.raises(ValueError, match="does not exist"):
        MobileNetV1(weights=tmp_path / "nope.pt")
    with pytest.raises(TypeError):
        MobileNetV1(weights=[1, 2])
    pcv = _pytorchcv_state_dict(m)
    del pcv["features.stage2.unit2.pw_conv.bn.running_var"]
    with pytest.raises(ValueError, match=r"missing keys \['lat_features.6.bn.running_var'\]"):
        MobileNetV1(weights=pcv)
    pcv = _pytorchcv_state_dict(m)
    pcv["features.stage9.unit1.dw_conv.conv.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="stage9"):
        MobileNetV1(weights=pcv)
    pcv = _pytorchcv_state_dict(MobileNetV1(width_mult=0.5))
    with pytest.raises(ValueError, match="has shape"):
        MobileNetV1(weights=pcv)
    brn_sd = replace_bn_with_brn(MobileNetV1(num_classes=6)).state_dict()
    with pytest.raises(ValueError, match="Batch Renormalization"):
        MobileNetV1(num_classes=6, weights=brn_sd)
