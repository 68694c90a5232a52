"""Every clfast state op against its plain-PyTorch twin in clfast._reference (float64)."""

from __future__ import annotations

import pytest
import torch

import clfast.ops as ops
from clfast import _reference as ref
from clfast.testing.cases import MODEL_DTYPES, SHAPE_SETS, STATE_DTYPES, low_precision_tol, make_case, tol
from clfast.testing.opinfo import OPS, clone_args, observed_outputs

DTYPES = [(m, s) for m in MODEL_DTYPES for s in STATE_DTYPES]
SHAPES = list(SHAPE_SETS)


def close(actual, expected, **kw):
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), **kw)


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("model_dtype,state_dtype", DTYPES)
def test_quad_penalty_value_and_gradient_match_reference(shapes, model_dtype, state_dtype, device):
    c = make_case(SHAPE_SETS[shapes], model_dtype, state_dtype, seed=1, device=device)
    imp = c.state["a"].abs()
    params = [p.clone().requires_grad_(True) for p in c.params]
    value = ops.quad_penalty(params, imp, c.state["b"], 0.37)
    assert value.dim() == 0 and value.dtype == state_dtype
    close(value, ref.quad_penalty(c.params, imp, c.state["b"], 0.37), **tol(model_dtype, state_dtype))
    if not params:
        return
    (value * 1.5).backward()
    expected = ref.quad_penalty_grad(c.params, imp, c.state["b"], 0.37)
    for p, e in zip(params, expected, strict=True):
        assert p.grad.dtype == model_dtype and p.grad.shape == p.shape
        close(p.grad, 1.5 * e, **low_precision_tol(model_dtype))


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("model_dtype,state_dtype", DTYPES)
def test_quad_penalty_grad_accumulates_into_dot_grad(shapes, model_dtype, state_dtype, device):
    c = make_case(SHAPE_SETS[shapes], model_dtype, state_dtype, seed=2, device=device)
    imp = c.state["a"].abs()
    params = [p.clone().requires_grad_(i % 4 != 3) for i, p in enumerate(c.params)]
    before = []
    for i, p in enumerate(params):
        if p.requires_grad and i % 4 != 2:  # some params start without .grad
            p.grad = c.grads[i].clone()
        before.append(None if p.grad is None else p.grad.clone())
    value = ops.quad_penalty_grad_(params, imp, c.state["b"], 0.8)
    assert not value.requires_grad
    close(value, ref.quad_penalty(c.params, imp, c.state["b"], 0.8), **tol(model_dtype, state_dtype))
    expected = ref.quad_penalty_grad(c.params, imp, c.state["b"], 0.8)
    for p, b, e in zip(params, before, expected, strict=True):
        if not p.requires_grad:
            assert p.grad is None  # frozen: counted in the value, never given a gradient
        elif b is None:
            close(p.grad, e, **low_precision_tol(model_dtype))
        else:
            close(p.grad, b.double() + e, **low_precision_tol(model_dtype))


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("model_dtype,state_dtype", DTYPES)
@pytest.mark.parametrize("none_grads", [False, True])
def test_importance_updates_match_reference(shapes, model_dtype, state_dtype, none_grads, device):
    c = make_case(SHAPE_SETS[shapes], model_dtype, state_dtype, seed=3, device=device, none_grads=none_grads)
    t = tol(model_dtype, state_dtype)

    imp = c.state["a"].clone()
    expected = ref.mas_importance_update(imp, c.params, c.grads, 0.25)
    ops.mas_importance_update_(imp, c.params, 0.25, grads=c.grads)
    close(imp, expected, **t)

    fisher = c.state["b"].abs()
    expected = ref.ema_sq_update(fisher, c.params, c.grads, 0.9)
    ops.ema_sq_update_(fisher, c.params, 0.9, grads=c.grads)
    close(fisher, expected, **t)

    acc, prev = c.state["c"].clone(), c.state["d"].clone()
    exp_acc, exp_prev = ref.path_integral_update(acc, prev, c.params, c.grads)
    ops.path_integral_update_(acc, prev, c.params, grads=c.grads)
    close(acc, exp_acc, **t)
    close(prev, exp_prev, **t)


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("model_dtype,state_dtype", DTYPES)
def test_rwalk_and_si_consolidation_match_reference(shapes, model_dtype, state_dtype, device):
    c = make_case(SHAPE_SETS[shapes], model_dtype, state_dtype, seed=4, device=device)
    t = tol(model_dtype, state_dtype)
    scores, loss, ckpt, fisher = (c.state[k].clone() for k in "abcd")
    fisher = fisher.abs()
    eps = torch.finfo(state_dtype).eps
    exp_s, exp_l, exp_ck = ref.rwalk_score_update(scores, loss, ckpt, fisher, c.params, eps)
    ops.rwalk_score_update_(scores, loss, ckpt, fisher, c.params)
    close(scores, exp_s, **t)
    close(loss, exp_l, **t)
    close(ckpt, exp_ck, **t)

    cum, imp, omega, anchor = (c.state[k].clone() for k in "abcd")
    expected = ref.si_consolidate(cum, imp, omega, anchor, c.params, 1.0, 1e-3, 1e-3)
    ops.si_consolidate_(cum, imp, omega, anchor, c.params, 1.0, 1e-3, 1e-3)
    for actual, e in zip((cum, imp, omega, anchor), expected, strict=True):
        close(actual, e, **t)


@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
@pytest.mark.parametrize("n", [1, 7, 70001])
def test_state_max_and_rwalk_weights_match_reference(state_dtype, n, device):
    g = torch.Generator().manual_seed(n)
    fisher = torch.rand(n, generator=g, dtype=torch.float64).to(state_dtype).to(device)
    scores = torch.randn(n, generator=g, dtype=torch.float64).to(state_dtype).to(device)
    close(ops.state_max(scores), ref.state_max(scores), rtol=0, atol=0)
    close(ops.rwalk_penalty_weights(fisher, scores), ref.rwalk_penalty_weights(fisher, scores),
          **tol(torch.float32, state_dtype))


def test_rwalk_weights_are_zero_not_nan_when_maxima_are_zero(device):
    zeros = torch.zeros(10, device=device)
    negative = -torch.rand(10, device=device)
    w = ops.rwalk_penalty_weights(zeros, negative)
    assert torch.equal(w.cpu(), torch.zeros(10))
    fisher = torch.rand(10, device=device)
    w = ops.rwalk_penalty_weights(fisher, zeros)
    close(w, fisher / fisher.max(), rtol=1e-6, atol=0)


def test_state_max_propagates_nan(device):
    x = torch.randn(100000, device=device)
    x[77777] = float("nan")
    assert torch.isnan(ops.state_max(x))


@pytest.mark.parametrize("model_dtype", MODEL_DTYPES)
def test_nonfinite_flags_name_the_bad_tensors(model_dtype, device):
    ts = [torch.randn(s, device=device).to(model_dtype) for s in [(5,), (70001,), (0,), (3, 3)]]
    ts[1][70000] = float("inf")
    ts[3][1, 1] = float("nan")
    assert ops.nonfinite_flags(ts).cpu().tolist() == [False, True, False, True]
    assert ops.nonfinite_flags(ts).cpu().tolist() == ref.nonfinite_flags(ts).tolist()


def test_results_do_not_depend_on_thread_count():
    c = make_case(SHAPE_SETS["large"] + SHAPE_SETS["many_small"], torch.float32, torch.float32, seed=5)
    old = torch.get_num_threads()
    try:
        values = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            values.append(ops.quad_penalty(c.params, c.state["a"].abs(), c.state["b"], 1.0).item())
    finally:
        torch.set_num_threads(old)
    assert values[0] == values[1]


# ---- every op of the registry against its twin, on every sample -------------------------------------------------


def _close_output(actual, expected, tolerance):
    if actual is None:  # an optional state buffer the call left out
        assert expected is None
    elif isinstance(actual, list):
        assert isinstance(expected, list) and len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            _close_output(a, e, tolerance)
    elif actual.dtype == torch.bool:
        assert torch.equal(actual.cpu(), expected.cpu())
    else:
        close(actual, expected, **tolerance)


@pytest.mark.parametrize("info", [i for i in OPS if i.reference is not None], ids=lambda i: i.name)
def test_every_op_matches_its_twin_on_every_sample(info, device):
    for model_dtype, state_dtype in info.dtypes:
        for args in info.samples(device, model_dtype, state_dtype):
            expected = info.twin(clone_args(args))
            inputs = clone_args(args)
            observed = observed_outputs(info, inputs, info.op(*inputs))
            assert len(observed) == len(expected), info.name
            for actual, want in zip(observed, expected, strict=True):
                _close_output(actual, want, info.tol(model_dtype, state_dtype))
