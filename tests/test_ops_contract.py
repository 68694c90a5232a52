"""The dispatcher contract of the ops: opcheck, gradcheck, torch.compile, and clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import clfast.ops as ops
from clfast import _reference as ref
from clfast.testing.cases import make_case
from clfast.testing.opinfo import OPS, SAMPLE_SHAPES


def _sample(dtype=torch.float32, state_dtype=torch.float32, seed=0):
    return make_case(SAMPLE_SHAPES, dtype, state_dtype, seed=seed)


def _opcheck_samples():
    """Every registry sample: (op name, raw op arguments) on the CPU in float32."""
    return [(info.name, args) for info in OPS for args in info.samples()]


@pytest.mark.parametrize("name,args", _opcheck_samples(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(torch.ops.clfast, name).default, args)


@pytest.mark.parametrize("info", OPS, ids=lambda i: i.name)
@pytest.mark.parametrize("model_dtype,state_dtype", [(torch.float64, torch.float64), (torch.bfloat16, torch.float32)])
def test_opcheck_other_dtypes_and_devices(info, model_dtype, state_dtype, device):
    for args in info.samples(device, model_dtype, state_dtype):
        torch.library.opcheck(info.op, args)


def test_every_op_has_an_opcheck_sample():
    catalogue = (Path(__file__).resolve().parents[1] / "csrc" / "ops.cpp").read_text()
    defined = set(re.findall(r'm\.def\(\s*"(\w+)\(', catalogue))
    assert len(defined) >= 11
    assert {name for name, _ in _opcheck_samples()} == defined


def test_gradcheck_quad_penalty_float64():
    c = _sample(torch.float64, torch.float64, seed=1)
    imp, anchor = c.state["a"].abs(), c.state["b"]
    params = [p.clone().requires_grad_() for p in c.params]
    assert torch.autograd.gradcheck(lambda *ps: ops.quad_penalty(list(ps), imp, anchor, 0.7), params)


def test_quad_penalty_under_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    c = _sample(seed=2)
    imp, anchor = c.state["a"].abs(), c.state["b"]
    w = torch.randn(4, 3)

    def loss_fn(params):
        return (params[0] * w).sum() + ops.quad_penalty(params, imp, anchor, 0.3)

    eager = [p.clone().requires_grad_() for p in c.params]
    compiled = [p.clone().requires_grad_() for p in c.params]
    loss_e = loss_fn(eager)
    loss_e.backward()
    loss_c = torch.compile(loss_fn, fullgraph=True)(compiled)
    loss_c.backward()
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


# ---- bad input -----------------------------------------------------------------------------------


def _penalty_args():
    c = _sample(seed=3)
    return c.params, c.state["a"].abs(), c.state["b"]


def test_wrong_state_size_is_named():
    params, imp, anchor = _penalty_args()
    with pytest.raises(RuntimeError, match=r"anchor has 24 elements but the parameters have 25"):
        ops.quad_penalty(params, imp, anchor[:-1], 1.0)


def test_wrong_state_dtype_is_named():
    params, imp, anchor = _penalty_args()
    with pytest.raises(RuntimeError, match=r"importance must be a float32 or float64 state buffer, got Int"):
        ops.quad_penalty(params, imp.int(), anchor, 1.0)
    with pytest.raises(RuntimeError, match=r"anchor has dtype Double but the other state buffers have dtype Float"):
        ops.quad_penalty(params, imp, anchor.double(), 1.0)


def test_wrong_param_dtype_and_layout_are_named():
    params, imp, anchor = _penalty_args()
    bad = list(params)
    bad[1] = bad[1].int()
    with pytest.raises(RuntimeError, match=r"params\[1\] must be float32, float64, bfloat16 or float16, got Int"):
        ops.quad_penalty(bad, imp, anchor, 1.0)
    bad = list(params)
    bad[0] = torch.randn(3, 4).t()
    with pytest.raises(RuntimeError, match=r"params\[0\] .* is not contiguous"):
        ops.quad_penalty(bad, imp, anchor, 1.0)


def test_state_must_be_flat_and_contiguous():
    params, imp, anchor = _penalty_args()
    with pytest.raises(RuntimeError, match="must be a 1-D flat state buffer"):
        ops.quad_penalty(params, imp.view(5, 5), anchor, 1.0)
    with pytest.raises(RuntimeError, match="importance must be contiguous"):
        ops.quad_penalty(params, torch.randn(100)[::2], anchor, 1.0)


def test_mismatched_grad_lists_are_named():
    c = _sample(seed=4)
    imp = c.state["a"].clone()
    with pytest.raises(RuntimeError, match=r"got 4 params but 3 grads"):
        ops.mas_importance_update_(imp, c.params, 1.0, grads=c.grads[:3])
    grads = list(c.grads)
    grads[2] = torch.randn(1)
    with pytest.raises(RuntimeError, match=r"grads\[2\] has shape \[1\] but params\[2\] has shape \[0\]"):
        ops.ema_sq_update_(imp, c.params, 0.5, grads=grads)
    grads = list(c.grads)
    grads[0] = grads[0].double()
    with pytest.raises(RuntimeError, match=r"grads\[0\] has dtype Double but params\[0\] has dtype Float"):
        ops.mas_importance_update_(imp, c.params, 1.0, grads=grads)
    assert torch.equal(imp, c.state["a"]), "a rejected call must not touch the state"


def test_invalid_hyper_parameters_are_named():
    c = _sample(seed=5)
    x, y, z, w = (c.state[k].clone() for k in "abcd")
    with pytest.raises(RuntimeError, match=r"alpha must be in \[0, 1\], got 1.5"):
        ops.ema_sq_update_(x, c.params, 1.5, grads=c.grads)
    with pytest.raises(RuntimeError, match="eps must be positive"):
        ops.rwalk_score_update_(x, y, z, w, c.params, eps=0.0)
    with pytest.raises(RuntimeError, match="lam must be finite"):
        ops.quad_penalty(c.params, x, y, float("nan"))
    with pytest.raises(RuntimeError, match="scores and loss_acc must be different buffers"):
        ops.rwalk_score_update_(x, x, z, w, c.params)


def test_nan_gradient_is_refused_before_the_state_changes():
    c = _sample(seed=6)
    imp = c.state["a"].clone()
    grads = list(c.grads)
    grads[3] = grads[3].clone()
    grads[3][1, 0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"mas_importance_update_: grads\[3\] contains NaN or inf"):
        ops.mas_importance_update_(imp, c.params, 1.0, grads=grads)
    with pytest.raises(ValueError, match=r"ema_sq_update_: grads\[3\] contains NaN or inf"):
        ops.ema_sq_update_(imp, c.params, 0.9, grads=grads)
    params = list(c.params)
    params[0] = params[0].clone()
    params[0][0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"quad_penalty: params\[0\] contains NaN or inf"):
        ops.quad_penalty(params, imp.abs(), c.state["b"], 1.0, check_finite=True)
    assert torch.equal(imp, c.state["a"])


def test_empty_state_has_no_maximum():
    with pytest.raises(RuntimeError, match="state is empty"):
        ops.state_max(torch.zeros(0))


def test_state_must_be_constant_for_the_penalty():
    params, imp, anchor = _penalty_args()
    with pytest.raises(ValueError, match="importance and anchor are constants"):
        ops.quad_penalty(params, imp.requires_grad_(), anchor, 1.0)


def test_penalty_with_no_parameters_is_zero():
    v = ops.quad_penalty([], torch.zeros(0), torch.zeros(0), 2.0)
    assert v.item() == 0.0 and v.dim() == 0
    assert ref.quad_penalty([], torch.zeros(0), torch.zeros(0), 2.0).item() == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch_is_named():
    params, imp, anchor = _penalty_args()
    with pytest.raises(RuntimeError, match=r"params\[0\] is on cpu but importance is on cuda:0"):
        ops.quad_penalty(params, imp.cuda(), anchor.cuda(), 1.0)
