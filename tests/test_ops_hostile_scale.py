"""Hostile input at scale (issue 12, item 6): tens of thousands of generated calls of the list/flat state ops.

:func:`clfast.testing.hostile.hostile_cases` builds each from a random valid call, possibly broken in one way. A
valid call must match its OpInfo twin (``clfast._reference``, float64); a broken one must raise a
RuntimeError/ValueError/TypeError naming one of the arguments at fault and leave every tensor argument
bit-identical. Under the CUDA emulation build the same calls run the CUDA kernel code.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

import clfast._reference
from clfast.testing.cases import DEVICES
from clfast.testing.hostile import STATE_OPS, HostileCase, hostile_cases
from clfast.testing.opinfo import clone_args, observed_outputs

#: Cases per device and seed block; with the two blocks, at least 10,000 per run (CPU alone).
N_PER_BLOCK = 6000
SEEDS = (0, 1)


def _tensors(args) -> list[torch.Tensor]:
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, list):
            out.extend(t for t in a if isinstance(t, torch.Tensor))
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``t`` (NaN payloads and signed zeros included)."""
    return t.detach().cpu().contiguous().view(-1).view(torch.uint8).clone()


def _close(actual, expected, tolerance) -> None:
    if actual is None:  # an optional state buffer the call left out
        assert expected is None
        return
    if isinstance(actual, list):
        assert isinstance(expected, list) and len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            _close(a, e, tolerance)
        return
    torch.testing.assert_close(actual.detach().double().cpu(), expected.detach().double().cpu(), equal_nan=True,
                               **tolerance)


def run_case(case: HostileCase) -> str:
    """Runs one case; returns ``"valid"`` or ``"refused"`` (an AssertionError says what went wrong)."""
    info = case.info
    if not case.problems:
        expected = info.twin(clone_args(case.args))
        inputs = clone_args(case.args)
        observed = observed_outputs(info, inputs, info.op(*inputs))
        assert len(observed) == len(expected)
        for actual, want in zip(observed, expected, strict=True):
            _close(actual, want, info.tol(case.model_dtype, case.state_dtype))
        return "valid"
    before = [_bits(t) for t in _tensors(case.args)]
    with pytest.raises((RuntimeError, ValueError, TypeError)) as err:
        info.op(*case.args)
    msg = str(err.value)
    assert any(name in msg for name in case.problems), f"error {msg!r} names none of {case.problems}"
    after = [_bits(t) for t in _tensors(case.args)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True)), "a refused call changed an argument"
    return "refused"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("device", DEVICES)
def test_generated_state_op_calls_match_or_are_refused_cleanly(device, seed, record_property):
    other = next((d for d in DEVICES if d != device), None)
    verdicts: Counter[str] = Counter()
    mutations: Counter[str] = Counter()
    for k, case in enumerate(hostile_cases(N_PER_BLOCK, seed=seed, device=device, other_device=other)):
        try:
            verdicts[run_case(case)] += 1
        except AssertionError as e:
            raise AssertionError(f"case {k} (seed {seed}): {case.info.name}, {case.mutation or 'valid'}: {e}") from e
        mutations[case.mutation] += 1
    record_property("hostile_cases", sum(verdicts.values()))
    print(f"[hostile] {device} seed {seed}: {dict(verdicts)}; mutations {dict(mutations)}")
    assert sum(verdicts.values()) == N_PER_BLOCK
    assert min(verdicts.values()) > N_PER_BLOCK // 4, "the generator lost its balance of valid and broken calls"
    # Every kind of breakage is exercised in every block (the device kind only with a second device).
    kinds = {"state_short", "state_int", "state_2d", "state_strided", "state_dtype_mix", "param_int",
             "param_transposed", "list_short", "grad_shape", "grad_dtype", "overlap", "alias_param", "hyper",
             "bad_mode"}
    assert kinds <= set(mutations), sorted(kinds - set(mutations))


def test_the_run_covers_at_least_ten_thousand_cases_over_every_state_op():
    assert N_PER_BLOCK * len(SEEDS) >= 10_000
    ops = Counter(c.info.name for c in hostile_cases(len(STATE_OPS) * 3))
    assert set(ops) == set(STATE_OPS)


def test_overlapping_written_views_are_refused_and_adjacent_ones_accepted():
    """Finding 6: a range check, not a data_ptr comparison (partly overlapping views used to pass)."""
    params = [torch.randn(4, 3), torch.randn(5)]
    grads = [torch.randn(4, 3), torch.randn(5)]
    buf = torch.zeros(40)
    with pytest.raises(RuntimeError, match=r"acc and prev_params must be different buffers .*overlaps"):
        torch.ops.clfast.path_integral_update_(buf[0:17], buf[5:22], params, grads)
    assert torch.equal(buf, torch.zeros(40))
    torch.ops.clfast.path_integral_update_(buf[0:17], buf[17:34], params, grads)  # adjacent: fine
    torch.testing.assert_close(buf[17:34], torch.cat([p.reshape(-1) for p in params]))
    state = torch.zeros(17)
    with pytest.raises(RuntimeError, match=r"importance and params\[0\] must be different buffers"):
        torch.ops.clfast.mas_importance_update_(state, [state[2:14].view(4, 3), params[1]], grads, 1.0)
    x = torch.randn(17)
    torch.ops.clfast.quad_penalty(params, x, x, 1.0)  # two read-only arguments may be one buffer
    g = torch.zeros(20)
    with pytest.raises(RuntimeError, match=r"grads\[0\] and grads\[1\] must be different buffers"):
        torch.ops.clfast.quad_penalty_grad_([g[:12].view(4, 3), g[10:15]], params, x.abs(), x, 1.0, [0, 0])
    torch.ops.clfast.quad_penalty_grad_([g[:12].view(4, 3), g[10:15]], params, x.abs(), x, 1.0, [0, 2])  # skipped


@pytest.mark.parametrize("device", DEVICES)
def test_a_model_tensor_that_is_its_own_state_slice_is_an_in_place_alias(device):
    """The plugins' stand-in for a parameter the model lacks is that entry's slice of the anchor, passed as the
    model tensor while the op writes the anchor (SI's consolidation). Element by element this reads and then
    writes one address, so it is accepted and computes what the same call on copies computes; one element off
    that slice it races and is refused."""
    gen = torch.Generator().manual_seed(12)
    shapes = [(4, 3), (5,)]
    total = sum(math.prod(s) for s in shapes)
    cum, omega, anchor = (torch.randn(total, generator=gen, dtype=torch.float64).to(device) for _ in range(3))
    importance = torch.zeros(total, dtype=torch.float64, device=device)
    live = torch.randn(5, generator=gen, dtype=torch.float64).to(device)
    stand_in = anchor[:12].view(4, 3)  # entry 0 is missing from the model
    expected = clfast._reference.si_consolidate(cum.clone(), importance.clone(), omega.clone(), anchor.clone(),
                                                [stand_in.clone(), live], 0.5, 1e-3, 1e6)
    torch.ops.clfast.si_consolidate_(cum, importance, omega, anchor, [stand_in, live], 0.5, 1e-3, 1e6)
    for actual, want in zip((cum, importance, omega, anchor), expected, strict=True):
        torch.testing.assert_close(actual, want.to(actual.dtype), rtol=1e-12, atol=1e-12)
    before = anchor.clone()
    with pytest.raises(RuntimeError, match=r"anchor and params\[0\] must be different buffers .*overlaps"):
        torch.ops.clfast.si_consolidate_(cum, importance, omega, anchor, [anchor[1:13].view(4, 3), live],
                                         0.5, 1e-3, 1e6)
    assert torch.equal(anchor, before)
