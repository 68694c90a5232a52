"""Hostile input, property-based: every op either matches clfast._reference or raises a RuntimeError /
ValueError that names the offending argument, and a rejected call leaves the state untouched.

Hypothesis draws random shapes (including empty ones), dtypes (including integer ones), strides
(transposed and sliced tensors), NaN and inf, state buffers of the wrong size or dtype and grad lists
of the wrong length. The test decides independently, from the op contract (``clfast/ops.py``,
``csrc/ops.cpp``), whether a call is valid, then checks the op against that verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import clfast.ops as ops
from clfast import _reference as ref
from clfast.testing.cases import DEVICES
from clfast.testing.opinfo import by_name

MODEL_OK = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
STATE_OK = [torch.float32, torch.float64]
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)


def hostile(test):
    """Runs ``test(device, data)`` on every device, with Hypothesis drawing from ``data``."""
    return pytest.mark.parametrize("device", DEVICES)(SETTINGS(given(data=st.data())(test)))


@dataclass
class Tensors:
    params: list[torch.Tensor]
    grads: list[torch.Tensor | None]
    problems: list[str]  # what makes the model tensors invalid, by argument name ('' entries: none)
    nonfinite: list[str]  # model arguments holding NaN/inf


def _poison(t: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "none" or t.numel() == 0 or not t.is_floating_point():
        return t
    t = t.clone()
    t.view(-1)[0] = math.nan if kind == "nan" else math.inf
    return t


def _layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """A tensor equal to t but possibly non-contiguous."""
    if kind == "transposed" and t.dim() >= 2:
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    if kind == "sliced" and t.dim() >= 1:
        big = torch.zeros((t.shape[0] * 2, *t.shape[1:]), dtype=t.dtype)
        big[::2] = t
        return big[::2]
    return t


@st.composite
def model_tensors(draw, with_grads: bool = True) -> Tensors:
    n = draw(st.integers(0, 4))
    params, grads, problems, nonfinite = [], [], [], []
    for i in range(n):
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        dtype = draw(st.sampled_from([*MODEL_OK, torch.int32]))
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
        base = torch.randn(shape, generator=gen)
        p = _layout(_poison(base.to(dtype) if dtype.is_floating_point else (base * 3).to(dtype),
                            draw(st.sampled_from(["none", "none", "nan", "inf"]))),
                    draw(st.sampled_from(["contiguous", "contiguous", "transposed", "sliced"])))
        params.append(p)
        if dtype not in MODEL_OK:
            problems.append(f"params[{i}]")
        elif not p.is_contiguous():
            problems.append(f"params[{i}]")
        if p.is_floating_point() and p.numel() and not bool(torch.isfinite(p.float()).all()):
            nonfinite.append(f"params[{i}]")
        if not with_grads:
            continue
        g_kind = draw(st.sampled_from(["same", "same", "same", "none", "wrong_shape", "wrong_dtype"]))
        if g_kind == "none":
            grads.append(None)
            continue
        g = _poison(torch.randn(shape, generator=gen).to(p.dtype if dtype in MODEL_OK else torch.float32),
                    draw(st.sampled_from(["none", "none", "nan"])))
        if g_kind == "wrong_shape":
            g = torch.randn(p.numel() + 1)
            problems.append(f"grads[{i}]")
        elif g_kind == "wrong_dtype" and dtype in MODEL_OK:
            other = next(d for d in MODEL_OK if d != dtype)
            g = g.to(other)
            problems.append(f"grads[{i}]")
        if g.numel() and not bool(torch.isfinite(g.float()).all()):
            nonfinite.append(f"grads[{i}]")
        grads.append(g)
    return Tensors(params, grads, problems, nonfinite)


@st.composite
def state_buffer(draw, numel: int, name: str) -> tuple[torch.Tensor, str]:
    """A flat state buffer for `numel` elements, and '' if valid or the argument name if not."""
    kind = draw(st.sampled_from(["ok", "ok", "ok", "ok", "short", "int", "2d", "strided"]))
    dtype = draw(st.sampled_from(STATE_OK))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    t = torch.randn(numel, generator=gen, dtype=torch.float64).to(dtype)
    if kind == "short":
        return torch.randn(numel + 1, dtype=dtype), name
    if kind == "int":
        return t.to(torch.int32), name
    if kind == "2d" and numel > 1:
        return t.view(1, numel), name
    if kind == "strided" and numel > 1:
        return torch.randn(numel * 2, dtype=dtype)[::2], name
    return t, ""


def _check_raises_naming(fn, names: list[str]) -> None:
    event("rejected")
    with pytest.raises((RuntimeError, ValueError)) as info:
        fn()
    msg = str(info.value)
    assert any(n.split("[")[0] in msg for n in names), f"error {msg!r} names none of {names}"


def _state_dtype_problem(*buffers: torch.Tensor) -> bool:
    dtypes = {b.dtype for b in buffers}
    return len(dtypes) > 1


def _state_args(op: str) -> list[str]:
    """The flat state buffers of a list/flat op: its single-Tensor arguments, from the schema."""
    return [a.name for a in by_name(op).op._schema.arguments if str(a.type) == "Tensor"]


# The hyper-parameter each update is called with (the ops' own, in schema order after the tensors).
_IMPORTANCE_UPDATES = {"mas_importance_update_": 0.7, "ema_sq_update_": 0.9}
_CONSOLIDATIONS = {"path_integral_update_": (), "rwalk_score_update_": (1e-3,), "si_consolidate_": (1.0, 1e-3, 1e-3)}


@hostile
def test_quad_penalty_matches_or_names_the_problem(device, data):
    m = data.draw(model_tensors(with_grads=False))
    numel = sum(p.numel() for p in m.params)
    imp, bad_imp = data.draw(state_buffer(numel, "importance"))
    anchor, bad_anchor = data.draw(state_buffer(numel, "anchor"))
    lam = data.draw(st.sampled_from([0.0, 0.5, 3.0, math.nan]))
    params = [p.to(device) for p in m.params]
    imp, anchor = imp.to(device), anchor.to(device)
    problems = [*m.problems] + [b for b in (bad_imp, bad_anchor) if b]
    if _state_dtype_problem(imp, anchor):
        problems += ["importance", "anchor"]
    if not math.isfinite(lam):
        problems.append("lam")
    if problems:
        _check_raises_naming(lambda: ops.quad_penalty(params, imp, anchor, lam), problems)
        return
    got = ops.quad_penalty(params, imp, anchor, lam)
    want = ref.quad_penalty([p.cpu() for p in params], imp.cpu(), anchor.cpu(), lam)
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-4, equal_nan=True)


@hostile
def test_importance_updates_match_or_leave_the_state_untouched(device, data):
    m = data.draw(model_tensors())
    numel = sum(p.numel() for p in m.params)
    state, bad_state = data.draw(state_buffer(numel, "state"))
    which = data.draw(st.sampled_from(list(_IMPORTANCE_UPDATES)))
    scale = _IMPORTANCE_UPDATES[which]
    truncate = data.draw(st.booleans()) and len(m.grads) > 0
    params = [p.to(device) for p in m.params]
    grads = [None if g is None else g.to(device) for g in m.grads]
    problems = list(m.problems)
    if truncate:
        grads = grads[:-1]
        problems.append("grads")
    if bad_state:
        problems.extend(_state_args(which))
    state = state.to(device)
    before = state.clone()
    # Finite checks read the gradients only (the params are not used by these two updates).
    grad_nonfinite = [n for n in m.nonfinite if n.startswith("grads")]

    def call():
        by_name(which).wrapper(state, params, scale, grads=grads)

    if problems:
        _check_raises_naming(call, problems)
        assert torch.equal(state, before), "a rejected call changed the state"
        return
    if grad_nonfinite:
        with pytest.raises(ValueError, match="contains NaN or inf") as info:
            call()
        assert any(n in str(info.value) for n in grad_nonfinite)
        assert torch.equal(state, before), "a rejected call changed the state"
        return
    call()
    want = by_name(which).reference(before.cpu(), [p.cpu() for p in params],
                                    [None if g is None else g.cpu() for g in grads], scale)
    torch.testing.assert_close(state.cpu().double(), want.double(), rtol=1e-3, atol=1e-3)


@hostile
def test_reductions_match_the_reference(device, data):
    n = data.draw(st.integers(0, 300))
    dtype = data.draw(st.sampled_from(STATE_OK))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x = torch.randn(n, generator=gen, dtype=dtype)
    y = torch.randn(n, generator=gen, dtype=dtype)
    if n and data.draw(st.booleans()):
        x[data.draw(st.integers(0, n - 1))] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    x, y = x.to(device), y.to(device)
    if n == 0:
        with pytest.raises((RuntimeError, ValueError)):
            ops.state_max(x)
    else:
        torch.testing.assert_close(ops.state_max(x).cpu(), ref.state_max(x.cpu()), equal_nan=True)
    assert torch.equal(ops.nonfinite_flags([x, y]).cpu(), ref.nonfinite_flags([x.cpu(), y.cpu()]))
    if n and bool(torch.isfinite(x).all()):
        torch.testing.assert_close(ops.rwalk_penalty_weights(x.abs(), y).cpu(),
                                   ref.rwalk_penalty_weights(x.abs().cpu(), y.cpu()))


@hostile
def test_batch_renorm_matches_or_names_the_problem(device, data):
    dims = data.draw(st.integers(0, 5))
    shape = tuple(data.draw(st.lists(st.integers(0, 4), min_size=dims, max_size=dims)))
    dtype = data.draw(st.sampled_from([*MODEL_OK, torch.int64]))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x = torch.randn(shape, generator=gen)
    x = x.to(dtype) if dtype.is_floating_point else (x * 3).to(dtype)
    layout = data.draw(st.sampled_from(["contiguous", "channels_last", "transposed"]))
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed" and x.dim() >= 3:
        x = x.transpose(-1, -2)
    if x.is_floating_point() and x.numel() and data.draw(st.booleans()):
        x = x.clone()
        x.view(-1)[0] = math.nan
    C = x.shape[1] if x.dim() >= 2 else 1
    pdtype = data.draw(st.sampled_from([*STATE_OK, torch.float16]))
    c_off = data.draw(st.sampled_from([0, 0, 0, 1]))
    w = (torch.rand(C + c_off, generator=gen) + 0.5).to(pdtype)
    b, rm = torch.randn(C + c_off, generator=gen).to(pdtype), torch.randn(C + c_off, generator=gen).to(pdtype)
    rs = (torch.rand(C + c_off, generator=gen) + 0.5).to(pdtype)
    lim = torch.tensor(1.5, dtype=pdtype)
    x, w, b, rm, rs, lim = (t.to(device) for t in (x, w, b, rm, rs, lim))
    problems = []
    if dtype not in MODEL_OK:
        problems.append("input")
    if x.dim() < 2 or x.numel() == 0:
        problems.append("input")
    if pdtype not in STATE_OK:
        problems.append("weight")
    if c_off and "input" not in problems:
        problems.append("weight")
    if problems:
        _check_raises_naming(lambda: ops.batch_renorm_forward(x, w, b, rm, rs, lim, lim, 1e-5), problems)
        _check_raises_naming(lambda: ops.batch_renorm_eval(x, w, b, rm, rs), problems)
        return
    y = ops.batch_renorm_forward(x, w, b, rm, rs, lim, lim, 1e-5)[0]
    want = ref.batch_renorm_forward(x.cpu().double(), w.cpu().double(), b.cpu().double(), rm.cpu().double(),
                                    rs.cpu().double(), 1.5, 1.5, 1e-5)[0]
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype in (torch.float16, torch.bfloat16) else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(y.cpu().double(), want, equal_nan=True, **tol)
    ye = ops.batch_renorm_eval(x, w, b, rm, rs)
    want_e = ref.batch_renorm_eval(x.cpu().double(), w.cpu().double(), b.cpu().double(), rm.cpu().double(),
                                   rs.cpu().double())
    torch.testing.assert_close(ye.cpu().double(), want_e, equal_nan=True, **tol)


@hostile
def test_consolidation_ops_match_or_leave_the_state_untouched(device, data):
    m = data.draw(model_tensors())
    numel = sum(p.numel() for p in m.params)
    which = data.draw(st.sampled_from(list(_CONSOLIDATIONS)))
    names = _state_args(which)
    bufs, bad = [], []
    for n in names:
        b, problem = data.draw(state_buffer(numel, n))
        bufs.append(b.to(device))
        if problem:
            bad.append(problem)
    if which == "rwalk_score_update_":
        bufs[3] = bufs[3].abs() if bufs[3].is_floating_point() else bufs[3]  # a Fisher is >= 0
    params = [p.to(device) for p in m.params]
    grads = [None if g is None else g.to(device) for g in m.grads]
    problems = [p for p in m.problems if which == "path_integral_update_" or p.startswith("params")] + bad
    if _state_dtype_problem(*bufs):
        problems.extend(names)  # the op names the first buffer whose dtype differs from the first one's
    before = [b.clone() for b in bufs]
    # Finite checks: params and grads (path); params (rwalk, si: the state is checked by the op's own rules).
    nonfinite = [n for n in m.nonfinite if which == "path_integral_update_" or n.startswith("params")]
    hyper = _CONSOLIDATIONS[which]

    def call():
        if which == "path_integral_update_":
            ops.path_integral_update_(bufs[0], bufs[1], params, grads=grads)
        else:
            by_name(which).wrapper(*bufs, params, *hyper)

    if problems or nonfinite:
        if problems:  # with NaN as well, the finite check may speak first: either is a correct refusal
            _check_raises_naming(call, problems + nonfinite)
        else:
            with pytest.raises(ValueError, match="contains NaN or inf"):
                call()
        assert all(torch.equal(a, b) for a, b in zip(bufs, before, strict=True)), "a rejected call changed state"
        return
    call()
    cpu_params = [p.cpu() for p in params]
    twin = by_name(which).reference
    if which == "path_integral_update_":
        want = twin(before[0].cpu(), before[1].cpu(), cpu_params, [None if g is None else g.cpu() for g in grads])
    else:
        want = twin(*(b.cpu() for b in before), cpu_params, *hyper)
    for got, exp, n in zip(bufs[: len(want)], want, names, strict=False):  # rwalk: the Fisher is read only
        torch.testing.assert_close(got.cpu().double(), exp.double(), rtol=1e-3, atol=1e-3, msg=n)
    assert all(torch.equal(b, b0) for b, b0 in zip(bufs[len(want):], before[len(want):], strict=True))
