"""Seeded generator of hostile cases for the list/flat state ops (``tests/test_ops_hostile_scale.py``).

Each :class:`HostileCase` is the raw op's arguments (schema order, as :mod:`clfast.testing.opinfo`'s samples)
built from a random valid call, then possibly broken in one way: a state buffer of the wrong size, dtype, rank,
stride or device, a model tensor of the wrong dtype or layout, a gradient of the wrong shape or dtype, a list of
the wrong length, two written buffers overlapping in memory, a model tensor aliasing a written state buffer, or a
bad hyper-parameter. ``problems`` names the arguments an error may name (empty: the call is valid and must match
the OpInfo twin). Cases are cheap (a few elements) so that tens of thousands run in seconds; a plain seeded
``random.Random`` drives them, so a failing case is reproduced by its index alone.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clfast.testing.opinfo import OpInfo, by_name

__all__ = ["STATE_OPS", "HostileCase", "hostile_cases"]

MODEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
STATE_DTYPES = (torch.float32, torch.float64)

#: Per op: its float hyper-parameters in schema order, each with valid values and values the op must refuse.
_HYPER: dict[str, list[tuple[str, tuple[float, ...], tuple[float, ...]]]] = {
    "quad_penalty": [("lam", (0.0, 0.5, 3.0), (math.nan, math.inf))],
    "quad_penalty_backward": [("lam", (0.0, 0.5, 3.0), (math.nan, -math.inf))],
    "quad_penalty_grad_": [("lam", (0.0, 0.5, 3.0), (math.nan, math.inf))],
    "mas_importance_update_": [("scale", (0.0, 0.5, 1.0), (math.nan, math.inf))],
    "ema_sq_update_": [("alpha", (0.0, 0.3, 0.9, 1.0), (1.5, -0.1, math.nan))],
    "path_integral_update_": [],
    "rwalk_score_update_": [("eps", (1e-7, 1e-3), (0.0, -1.0, math.nan, math.inf))],
    "si_consolidate_": [("c", (1.0, 0.5), (math.nan, math.inf)), ("eps", (1e-7, 1e-3), (0.0, math.nan)),
                        ("clip", (1e-3, 0.1), (math.nan,))],
    # momentum's valid value follows the buffer (given exactly when momentum != 0): see _consistent.
    "sgd_step_": [("lr", (0.0, 0.1), (-1.0, math.nan)), ("momentum", (0.9,), (-0.5, math.inf)),
                  ("dampening", (0.0, 0.1), (math.nan, math.inf)), ("weight_decay", (0.0, 0.01), (-0.1, math.nan)),
                  ("lam", (0.0, 0.5), (math.nan, math.inf))],
    "adam_step_": [("lr", (0.0, 1e-2), (-1.0, math.nan)), ("beta1", (0.0, 0.3, 0.9), (1.0, -0.1, math.nan)),
                   ("beta2", (0.9, 0.999), (1.0, math.nan)), ("eps", (0.0, 1e-8), (-1e-8, math.inf)),
                   ("weight_decay", (0.0, 0.01), (-0.1, math.nan)), ("lam", (0.0, 0.5), (math.nan, math.inf))],
}
#: The ops this generator covers: every list/flat op with model tensors and flat state.
STATE_OPS = tuple(_HYPER)
#: Ops whose valid cases may carry NaN/inf in the model tensors (their twins propagate it the same way).
_NAN_OK = {"quad_penalty", "mas_importance_update_", "ema_sq_update_", "path_integral_update_"}


@dataclass
class HostileCase:
    """One call of a raw op: its arguments, the dtypes of the valid call and what, if anything, breaks it."""

    info: OpInfo
    args: tuple[Any, ...]
    model_dtype: torch.dtype
    state_dtype: torch.dtype
    #: What was done to the valid call ("" for nothing).
    mutation: str
    #: Argument names an error may name; empty when the call is valid.
    problems: tuple[str, ...]


def _tensor(rng: random.Random, shape: tuple[int, ...], dtype: torch.dtype, device: str,
            positive: bool = False) -> Tensor:
    g = torch.Generator().manual_seed(rng.getrandbits(31))
    t = torch.randn(shape, generator=g, dtype=torch.float64)
    return (t.abs() if positive else t).to(dtype).to(device)


def _model(rng: random.Random, dtype: torch.dtype, device: str) -> list[Tensor]:
    shapes = [tuple(rng.randint(0, 3) for _ in range(rng.randint(0, 3))) for _ in range(rng.randint(0, 4))]
    return [_tensor(rng, s, dtype, device) for s in shapes]


def _schema_args(info: OpInfo) -> list[tuple[str, str, bool]]:
    """(name, type, written) of every argument of ``info``'s schema."""
    return [(a.name, str(a.type), a.alias_info is not None and a.alias_info.is_write)
            for a in info.op._schema.arguments]


def _valid(info: OpInfo, rng: random.Random, device: str) -> tuple[dict[str, Any], torch.dtype, torch.dtype]:
    """A valid call as ``{argument: value}``."""
    mdt, sdt = rng.choice(MODEL_DTYPES), rng.choice(STATE_DTYPES)
    params = _model(rng, mdt, device)
    total = sum(p.numel() for p in params)
    out: dict[str, Any] = {}
    hyper = {h[0]: h for h in _HYPER[info.name]}
    for name, typ, _ in _schema_args(info):
        if name == "params":
            out[name] = params
        elif typ in ("List[Optional[Tensor]]", "List[Tensor]"):  # gradients (optional, except quad_penalty_grad_'s)
            optional = typ == "List[Optional[Tensor]]"
            out[name] = [None if optional and rng.random() < 0.25 else _tensor(rng, p.shape, mdt, device)
                         for p in params]
        elif name == "grad_out":
            out[name] = _tensor(rng, (), sdt, device)
        elif typ == "Tensor":  # a flat state buffer; RWalk's Fisher and MAS's importance are >= 0
            out[name] = _tensor(rng, (total,), sdt, device, positive=name in ("fisher", "importance", "exp_avg_sq"))
        elif typ == "Optional[Tensor]":  # an optimizer step's optional state: momentum, the penalty's Ω and θ*
            present = rng.random() < 0.6
            out[name] = _tensor(rng, (total,), sdt, device, positive=name == "importance") if present else None
        elif name == "grad_mode":
            out[name] = [rng.randint(0, 2) for _ in params]
        elif typ == "bool":
            out[name] = rng.random() < 0.5
        elif name == "step":
            out[name] = rng.randint(1, 5)
        else:
            out[name] = rng.choice(hyper[name][1])
    _consistent(info.name, out, sdt, device)
    if info.name in _NAN_OK and params and rng.random() < 0.15:
        lst = out["grads" if "grads" in out and rng.random() < 0.5 else "params"]
        nonempty = [i for i, t in enumerate(lst) if t is not None and t.numel()]
        if nonempty:
            i = rng.choice(nonempty)
            lst[i] = lst[i].clone()
            lst[i].view(-1)[rng.randrange(lst[i].numel())] = rng.choice([math.nan, math.inf, -math.inf])
    return out, mdt, sdt


def _consistent(op: str, call: dict[str, Any], state_dtype: torch.dtype, device: str) -> None:
    """The ties between a step's arguments that a valid call keeps: Ω and θ* together, the path integral's two
    buffers together; SGD's momentum buffer
    exactly when momentum != 0, and Nesterov only with momentum and no dampening. A call without any tensor
    cannot be dispatched (torch raises NotImplementedError), so an SGD step of no params gets an empty penalty."""
    if op not in ("sgd_step_", "adam_step_"):
        return
    if call["importance"] is None or call["anchor"] is None:
        call["importance"] = call["anchor"] = None
    if call.get("path_acc") is None or call.get("path_prev") is None:
        call["path_acc"] = call["path_prev"] = None
    if op == "sgd_step_":
        if not call["params"] and call["momentum_buffer"] is None and call["importance"] is None:
            call["importance"], call["anchor"] = (torch.zeros(0, dtype=state_dtype, device=device) for _ in range(2))
        if call["momentum_buffer"] is None:
            call["momentum"] = 0.0
        if call["momentum"] == 0.0 or call["dampening"] != 0.0:
            call["nesterov"] = False


def _transposed(t: Tensor) -> Tensor:
    """``t``'s values with its first two dimensions' strides swapped (not contiguous unless trivially so)."""
    return t.transpose(0, 1).contiguous().transpose(0, 1)


def _mutate(info: OpInfo, call: dict[str, Any], rng: random.Random, device: str,
            other_device: str | None) -> tuple[str, tuple[str, ...]]:
    """Break ``call`` in one random way (in place); returns (what was done, the names an error may name)."""
    schema = _schema_args(info)
    # The state buffers of this call (an optimizer step's optional ones only when given).
    states = [n for n, t, _ in schema if t in ("Tensor", "Optional[Tensor]") and n != "grad_out"
              and call[n] is not None]
    written = [n for n, t, w in schema if n in states and w]
    lists = [n for n, t, _ in schema if t in ("List[Optional[Tensor]]", "List[Tensor]") and n != "params"]
    params: list[Tensor] = call["params"]
    kinds = ["param_int", "hyper"]
    if states:
        kinds += ["state_short", "state_int", "state_2d", "state_strided"]
    if len(states) > 1:
        kinds.append("state_dtype_mix")
    transposable = [i for i, p in enumerate(params) if p.dim() >= 2 and not _transposed(p).is_contiguous()]
    if transposable:
        kinds.append("param_transposed")
    if lists and params:
        kinds += ["list_short", "grad_shape", "grad_dtype"]
    if len(written) > 1 and sum(p.numel() for p in params) > 1:
        kinds.append("overlap")
    if written and params and 0 < params[0].numel() < sum(p.numel() for p in params):
        kinds.append("alias_param")
    if other_device is not None:
        kinds.append("device")
    if info.name == "quad_penalty_grad_" and params:
        kinds.append("bad_mode")
    kind = rng.choice(kinds)
    if kind.startswith("state_") and kind != "state_dtype_mix":
        name = rng.choice(states)
        t = call[name]
        if kind == "state_short":
            call[name] = torch.zeros(t.numel() + rng.choice([1, -1]) if t.numel() else 1, dtype=t.dtype, device=device)
        elif kind == "state_int":
            call[name] = t.to(torch.int32)
        elif kind == "state_2d":
            call[name] = t.view(1, -1)
        else:
            call[name] = torch.zeros(max(2 * t.numel(), 2), dtype=t.dtype, device=device)[::2] if t.numel() else \
                torch.zeros(2, 1, dtype=t.dtype, device=device)[:, 0][:0]
            if call[name].is_contiguous():  # an empty view is contiguous: make it the wrong size as well
                call[name] = torch.zeros(3, dtype=t.dtype, device=device)[::2]
        return kind, (name,)
    if kind == "state_dtype_mix":
        name = rng.choice(states[1:])
        t = call[name]
        call[name] = t.to(torch.float64 if t.dtype == torch.float32 else torch.float32)
        return kind, tuple(states)
    if kind == "param_int":
        if not params:
            call["params"] = params = [torch.zeros(1, dtype=torch.int32, device=device)]
            return kind, ("params", *states, *lists)  # the sizes (and grads list) now disagree as well
        i = rng.randrange(len(params))
        params[i] = params[i].to(torch.int32)
        return kind, ("params", *lists)
    if kind == "param_transposed":
        i = rng.choice(transposable)
        params[i] = _transposed(params[i])
        return kind, ("params", *lists)
    if kind == "list_short":
        name = rng.choice(lists)
        call[name] = call[name][:-1]
        return kind, (name, "params", "modes")
    if kind in ("grad_shape", "grad_dtype"):
        name = rng.choice(lists)
        i = rng.randrange(len(params))
        p = params[i]
        if kind == "grad_shape":
            call[name][i] = torch.zeros(p.numel() + 1, dtype=p.dtype, device=device)
        else:
            call[name][i] = torch.zeros(p.shape, dtype=next(d for d in MODEL_DTYPES if d != p.dtype), device=device)
        if info.name == "quad_penalty_grad_":
            call["grad_mode"][i] = rng.randint(0, 1)  # a skipped entry's gradient is never read
        return kind, (name,)
    if kind == "overlap":
        a, b = rng.sample(written, 2)
        n = call[a].numel()
        buf = torch.zeros(n + 1, dtype=call[a].dtype, device=device)
        call[a], call[b] = buf[:n], buf[1:]
        return kind, (a, b)
    if kind == "alias_param":
        name = rng.choice(written)
        p = params[0]
        if p.dtype != call[name].dtype:
            params[0] = p = p.to(call[name].dtype)
            for lst in lists:  # keep the gradients consistent, so that only the alias is wrong
                if call[lst][0] is not None:
                    call[lst][0] = call[lst][0].to(p.dtype)
        # One element off its own slice: a model tensor that is exactly its own slice of a state buffer is an
        # in-place alias the ops accept (the plugins' stand-ins), one that straddles other elements races.
        params[0] = call[name][1: 1 + p.numel()].view(p.shape)
        return kind, (name, "params")
    if kind == "device":
        name = rng.choice(states)
        call[name] = call[name].to(other_device)
        return kind, (name, "params")
    if kind == "bad_mode":
        call["grad_mode"][rng.randrange(len(params))] = rng.choice([3, -1])
        return kind, ("mode",)
    # a bad hyper-parameter (ops without one get a bad state buffer instead)
    hyper = _HYPER[info.name]
    if not hyper:
        name = rng.choice(states)
        call[name] = call[name].to(torch.int64)
        return "state_int", (name,)
    name, _, bad = rng.choice(hyper)
    call[name] = rng.choice(bad)
    return kind, (name,)


def hostile_cases(n: int, seed: int = 0, device: str = "cpu", other_device: str | None = None,
                  invalid_share: float = 0.5) -> Iterator[HostileCase]:
    """``n`` cases over :data:`STATE_OPS`, about ``invalid_share`` of them broken (case k uses seed + k)."""
    infos = [by_name(name) for name in STATE_OPS]
    for k in range(n):
        rng = random.Random(seed * 1_000_003 + k)
        info = infos[k % len(infos)]
        call, mdt, sdt = _valid(info, rng, device)
        mutation, problems = "", ()
        if rng.random() < invalid_share:
            mutation, problems = _mutate(info, call, rng, device, other_device)
        args = tuple(call[name] for name, _, _ in _schema_args(info))
        yield HostileCase(info, args, mdt, sdt, mutation, problems)
