"""FlatState: table layout, views, growth with Avalanche's zero padding, device/dtype, state_dict."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import clfast.ops as ops
from clfast import _reference as ref
from clfast.state import FlatState


def _model(seed=0, out=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, out))


def test_table_lays_parameters_end_to_end_in_model_order():
    m = _model()
    st = FlatState(m, ["importance"])
    names = [n for n, _ in m.named_parameters()]
    assert st.names == names
    offsets = [e.offset for e in st.entries]
    sizes = [p.numel() for p in m.parameters()]
    assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]
    assert st.numel == sum(sizes) == st["importance"].numel()
    assert st["importance"].is_contiguous() and st["importance"].dtype == torch.float32


def test_zero_and_copy_initialisation_and_views_share_storage():
    m = _model()
    st = FlatState(m, {"importance": "zeros", "anchor": "copy"})
    assert torch.count_nonzero(st["importance"]) == 0
    for name, p in m.named_parameters():
        assert torch.equal(st.view("anchor", name), p.detach())
    st.view("importance", "2.weight").fill_(3.0)
    e = st.entry("2.weight")
    assert torch.all(st["importance"][e.offset : e.offset + e.numel] == 3.0)
    assert torch.count_nonzero(st["importance"]) == e.numel
    assert list(st.views("anchor")) == st.names


def test_ops_over_a_state_match_the_reference():
    m = _model()
    st = FlatState(m, {"importance": "zeros", "anchor": "copy"}, dtype=torch.float64)
    st["importance"].uniform_(0, 1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    params = st.params(m)
    value = ops.quad_penalty(params, st["importance"], st["anchor"], 0.5)
    torch.testing.assert_close(value, ref.quad_penalty(params, st["importance"], st["anchor"], 0.5))


def test_growth_keeps_old_values_in_leading_block_and_zero_pads():
    m = _model(out=3)
    st = FlatState(m, {"importance": "zeros", "anchor": "copy"})
    st["importance"].uniform_(1, 2)
    old_w = st.view("importance", "2.weight").clone()
    old_b = st.view("anchor", "2.bias").clone()
    old_first = st.view("importance", "0.weight").clone()
    # The head grows from 3 to 5 outputs (a new class), and a new parameter appears.
    grown = _model(seed=1, out=5)
    grown.register_parameter("extra", nn.Parameter(torch.randn(2, 2)))
    changed = st.grow(grown, init={"anchor": "copy"})
    assert sorted(changed) == ["2.bias", "2.weight", "extra"]
    w = st.view("importance", "2.weight")
    assert w.shape == (5, 5)
    assert torch.equal(w[:3], old_w) and torch.count_nonzero(w[3:]) == 0
    b = st.view("anchor", "2.bias")
    assert torch.equal(b[:3], old_b) and torch.count_nonzero(b[3:]) == 0
    assert torch.equal(st.view("importance", "0.weight"), old_first)
    assert torch.equal(st.view("anchor", "extra"), grown.extra.detach())
    assert torch.count_nonzero(st.view("importance", "extra")) == 0
    assert st.names[-1] == "extra"
    named = dict(grown.named_parameters())
    assert all(t is named[n] for t, n in zip(st.params(grown), st.names, strict=True))


@pytest.mark.parametrize("new_shape,msg", [((2, 5), "shrank"), ((4, 6), "grew along 2 dimensions"),
                                           ((3, 5, 1), "changed rank")])
def test_invalid_growth_is_refused_and_state_kept(new_shape, msg):
    m = _model()
    st = FlatState(m, ["importance"])
    st["importance"].uniform_()
    before = st.state_dict()
    params = dict(m.named_parameters())
    params["2.weight"] = torch.zeros(new_shape)
    with pytest.raises(ValueError, match=msg):
        st.grow(params)
    after = st.state_dict()
    assert after["entries"] == before["entries"]
    assert torch.equal(after["buffers"]["importance"], before["buffers"]["importance"])


def test_params_refuses_a_model_that_grew_without_grow():
    st = FlatState(_model(out=3), ["importance"])
    with pytest.raises(ValueError, match=r"call FlatState.grow"):
        st.params(_model(out=4))
    with pytest.raises(KeyError, match="missing from the model"):
        st.params({"0.weight": torch.zeros(5, 4)})


def test_to_dtype_and_state_dict_round_trip():
    m = _model()
    st = FlatState(m, {"importance": "zeros", "anchor": "copy"})
    st["importance"].uniform_()
    st.to(dtype=torch.float64)
    assert st["anchor"].dtype == torch.float64 and st.dtype == torch.float64
    buf = io.BytesIO()
    torch.save(st.state_dict(), buf)
    buf.seek(0)
    other = FlatState(_model(seed=3), ["importance"], dtype=torch.float64)
    other.load_state_dict(torch.load(buf))
    assert other.entries == st.entries and other.kinds == st.kinds
    for k in st.kinds:
        assert torch.equal(other[k], st[k])


def test_load_state_dict_validates_before_changing_anything():
    st = FlatState(_model(), ["importance"])
    st["importance"].uniform_()
    keep = st["importance"].clone()
    bad = st.state_dict()
    bad["buffers"]["importance"] = bad["buffers"]["importance"][:-1]
    with pytest.raises(ValueError, match="must be a 1-D tensor of"):
        st.load_state_dict(bad)
    with pytest.raises(ValueError, match="expects a dict"):
        st.load_state_dict({"nope": 1})
    assert torch.equal(st["importance"], keep)


def test_constructor_validates_arguments():
    m = _model()
    with pytest.raises(ValueError, match=r"float32 or torch\.float64"):
        FlatState(m, ["x"], dtype=torch.float16)
    with pytest.raises(ValueError, match="at least one state kind"):
        FlatState(m, [])
    with pytest.raises(ValueError, match="'zeros' or 'copy'"):
        FlatState(m, {"x": "ones"})
    with pytest.raises(TypeError, match="not a string"):
        FlatState(m, "importance")
    with pytest.raises(ValueError, match="appears twice"):
        FlatState([("a", torch.zeros(1)), ("a", torch.zeros(2))], ["x"])


def test_add_kind_and_copy_from():
    m = _model()
    st = FlatState(m, ["importance"])
    anchor = st.add_kind("anchor", "copy", m)
    with torch.no_grad():
        m[0].weight.add_(1.0)
    assert not torch.equal(st.view("anchor", "0.weight"), m[0].weight)
    st.copy_from("anchor", m)
    assert torch.equal(st.view("anchor", "0.weight"), m[0].weight.detach())
    assert anchor.data_ptr() == st["anchor"].data_ptr()
    with pytest.raises(ValueError, match="already exists"):
        st.add_kind("anchor")


def test_info_reports_build_and_cli_prints_it(capsys):
    import clfast
    from clfast.cli import main

    data = clfast.info()
    assert data["torch"] == torch.__version__
    assert data["built_with_torch"] == torch.__version__
    assert data["devices"][0] == "cpu"
    assert ("cuda" in data["devices"]) == bool(data["cuda_archs"])
    assert main(["info"]) == 0
    assert f"torch            : {torch.__version__}" in capsys.readouterr().out
