"""The list/flat state ops: one block per op (fake, autograd where differentiable, typed wrapper).

Formulas: ``docs/avalanche-semantics.md`` §2 (MAS), §3.2 (RWalk), §4.9 (SI), §9 (EWC's quadratic penalty).
The layout contract and the finite checks are described in :mod:`clfast.ops`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch
from torch import Tensor

from ..sharding import grad_of, set_grad
from .finite import FiniteGuard
from .finite import check_finite as _check_finite

__all__ = [
    "GradMode",
    "ema_sq_update_",
    "mas_importance_update_",
    "path_integral_update_",
    "quad_penalty",
    "quad_penalty_grad_",
    "rwalk_penalty_weights",
    "rwalk_score_update_",
    "si_consolidate_",
    "state_max",
]

_ops = torch.ops.clfast


def _grads_of(params: Sequence[Tensor], grads: Sequence[Tensor | None] | None) -> list[Tensor | None]:
    if grads is None:
        return [grad_of(p) for p in params]
    return list(grads)


def _returns_nothing(*args: object) -> None:
    """The fake of every in-place op: it writes its arguments and returns nothing."""
    return None


#: A state update's ``check_finite``: True checks now, False not at all, a guard checks as the guard says.
FiniteCheck = bool | FiniteGuard


def _check(op: str, check_finite: FiniteCheck, **named: Sequence[Tensor | None] | Tensor | None) -> None:
    """The finite check of one call as ``check_finite`` asks (:class:`~clfast.ops.finite.FiniteGuard`)."""
    if check_finite is False:
        return
    _check_finite(op, guard=check_finite if isinstance(check_finite, FiniteGuard) else None, **named)


def _update_from_grads(op: str, state: Tensor, params: Sequence[Tensor], grads: Sequence[Tensor | None] | None,
                       coef: float, check_finite: FiniteCheck) -> None:
    """The body of the one-buffer updates from the gradients (``op(state, params, grads, coef)``)."""
    params = list(params)
    grads = _grads_of(params, grads)
    _check(op, check_finite, grads=grads)
    with torch.no_grad():
        getattr(_ops, op)(state, params, grads, float(coef))


# ---- quad_penalty  λ·Σ Ω⊙(θ−θ*)², and quad_penalty_backward, its autograd formula --------------------------------


@torch.library.register_fake("clfast::quad_penalty")
def _quad_penalty_fake(params, importance, anchor, lam):
    return importance.new_empty(())


@torch.library.register_fake("clfast::quad_penalty_backward")
def _quad_penalty_backward_fake(grad_out, params, importance, anchor, lam):
    return [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]


# The penalty is differentiable w.r.t. the live parameters (not the state): d/dθ = 2λΩ(θ−θ*).
def _quad_penalty_setup_context(ctx, inputs, output):
    params, importance, anchor, lam = inputs
    ctx.save_for_backward(importance, anchor, *params)
    ctx.lam = lam


def _quad_penalty_backward(ctx, grad):
    importance, anchor, *params = ctx.saved_tensors
    grads = _ops.quad_penalty_backward(grad, params, importance, anchor, ctx.lam)
    return list(grads), None, None, None


torch.library.register_autograd(
    "clfast::quad_penalty", _quad_penalty_backward, setup_context=_quad_penalty_setup_context
)


def quad_penalty(
    params: Sequence[Tensor],
    importance: Tensor,
    anchor: Tensor,
    lam: float,
    *,
    check_finite: FiniteCheck = False,
) -> Tensor:
    """λ·Σ Ω⊙(θ−θ*)² over all ``params`` in one call, as a 0-dim tensor of the state dtype.

    Differentiable w.r.t. ``params`` (gradient 2λΩ(θ−θ*), computed by one fused backward op);
    ``importance`` (Ω) and ``anchor`` (θ*) are constants and must not require grad.
    """
    if importance.requires_grad or anchor.requires_grad:
        raise ValueError("quad_penalty: importance and anchor are constants; pass detached tensors")
    params = list(params)
    _check("quad_penalty", check_finite, params=params, importance=importance, anchor=anchor)
    return _ops.quad_penalty(params, importance, anchor, float(lam))


# ---- quad_penalty_grad_  value λ·Σ Ω(θ−θ*)², and .grad (+)= 2λΩ(θ−θ*) in the same pass ---------------------------


class GradMode(enum.IntEnum):
    """What ``quad_penalty_grad_`` does with each entry's gradient (the op's ``grad_mode`` list)."""

    #: ``.grad += 2λΩ⊙(θ−θ*)`` (the parameter has a gradient).
    ACCUMULATE = 0
    #: ``.grad = 2λΩ⊙(θ−θ*)`` into a new tensor (requires grad, no gradient yet: what autograd would do).
    WRITE = 1
    #: no gradient (``requires_grad=False``, or an entry outside the penalty); still counts in the value.
    SKIP = 2


@torch.library.register_fake("clfast::quad_penalty_grad_")
def _quad_penalty_grad_fake(grads, params, importance, anchor, lam, grad_mode):
    return importance.new_empty(())


_PLACEHOLDER: dict[torch.device, Tensor] = {}


def _placeholder(device: torch.device) -> Tensor:
    t = _PLACEHOLDER.get(device)
    if t is None:
        t = _PLACEHOLDER.setdefault(device, torch.empty(0, device=device))
    return t


def quad_penalty_grad_(
    params: Sequence[Tensor],
    importance: Tensor,
    anchor: Tensor,
    lam: float,
    *,
    penalised: Sequence[bool] | None = None,
    check_finite: FiniteCheck = False,
) -> Tensor:
    """Add the penalty gradient 2λΩ(θ−θ*) straight into each ``param.grad``; return the value.

    One fused pass reads θ, θ*, Ω and ``.grad`` and writes ``.grad`` (20 B per fp32 element).
    What autograd would do with the penalty in the loss: a parameter that requires grad but has
    ``.grad is None`` gets a new ``.grad`` holding the penalty gradient; a parameter with
    ``requires_grad=False`` gets no gradient but still counts in the value. An entry with
    ``penalised[i]`` False is outside the penalty's gradient when its ``.grad`` is None (it is left
    None). The returned value λ·Σ Ω(θ−θ*)² is detached (0-dim, state dtype): add it to the reported
    loss, not to the loss you call ``backward`` on.
    """
    params = list(params)
    _check("quad_penalty_grad_", check_finite, params=params, importance=importance, anchor=anchor)
    grads: list[Tensor] = []
    modes: list[int] = []
    fresh: list[tuple[Tensor, Tensor]] = []
    for i, p in enumerate(params):
        g = grad_of(p)
        if not p.requires_grad or (g is None and penalised is not None and not penalised[i]):
            grads.append(_placeholder(p.device))
            modes.append(GradMode.SKIP)
        elif g is None:
            g = torch.empty_like(p, memory_format=torch.contiguous_format)
            fresh.append((p, g))
            grads.append(g)
            modes.append(GradMode.WRITE)
        else:
            grads.append(g)
            modes.append(GradMode.ACCUMULATE)
    with torch.no_grad():
        value = _ops.quad_penalty_grad_(grads, params, importance, anchor, float(lam), [int(m) for m in modes])
    for p, g in fresh:
        set_grad(p, g)
    return value


# ---- mas_importance_update_  Ω += scale·|g| (§2) -----------------------------------------------------------------


torch.library.register_fake("clfast::mas_importance_update_", _returns_nothing)


def mas_importance_update_(
    importance: Tensor,
    params: Sequence[Tensor],
    scale: float = 1.0,
    *,
    grads: Sequence[Tensor | None] | None = None,
    check_finite: FiniteCheck = True,
) -> None:
    """MAS: Ω += scale·|g|, in place. ``grads`` defaults to each ``param.grad``.

    A parameter whose gradient is None contributes nothing: its slice of Ω is left unchanged.
    """
    _update_from_grads("mas_importance_update_", importance, params, grads, scale, check_finite)


# ---- ema_sq_update_  F ← α·g² + (1−α)·F (EWC++, RWalk's Fisher) --------------------------------------------------


torch.library.register_fake("clfast::ema_sq_update_", _returns_nothing)


def ema_sq_update_(
    fisher: Tensor,
    params: Sequence[Tensor],
    alpha: float,
    *,
    grads: Sequence[Tensor | None] | None = None,
    check_finite: FiniteCheck = True,
) -> None:
    """EWC++ / RWalk Fisher: F ← α·g² + (1−α)·F, in place (α ∈ [0, 1]).

    A parameter whose gradient is None keeps its slice of F unchanged (neither decayed nor
    updated; Avalanche instead drops such a parameter's history, a quirk not reproduced here).
    """
    _update_from_grads("ema_sq_update_", fisher, params, grads, alpha, check_finite)


# ---- path_integral_update_  acc −= g⊙(θ − θ_prev); θ_prev ← θ (SI's ω, RWalk's L) --------------------------------


torch.library.register_fake("clfast::path_integral_update_", _returns_nothing)


def path_integral_update_(
    acc: Tensor,
    prev_params: Tensor,
    params: Sequence[Tensor],
    *,
    grads: Sequence[Tensor | None] | None = None,
    check_finite: FiniteCheck = True,
) -> None:
    """Path integral: acc −= g⊙(θ − θ_prev), then θ_prev ← θ, in place.

    This is SI's ω += −g⊙(θ_new − θ_old) and RWalk's L −= g⊙(θ_{t+1} − θ_t): call it after the
    optimizer step with the gradient that produced the step. A parameter whose gradient is None
    adds nothing to ``acc`` but its snapshot ``prev_params`` is still refreshed.
    """
    params = list(params)
    grads = _grads_of(params, grads)
    _check("path_integral_update_", check_finite, params=params, grads=grads)
    with torch.no_grad():
        _ops.path_integral_update_(acc, prev_params, params, grads)


# ---- rwalk_score_update_  s += L / (½·F⊙(θ − θ_ckpt)² + ε); L ← 0; θ_ckpt ← θ (§3.2) -----------------------------


torch.library.register_fake("clfast::rwalk_score_update_", _returns_nothing)


def rwalk_score_update_(
    scores: Tensor,
    loss_acc: Tensor,
    ckpt_params: Tensor,
    fisher: Tensor,
    params: Sequence[Tensor],
    eps: float | None = None,
    *,
    check_finite: FiniteCheck = True,
) -> None:
    """RWalk score window: s += L / (½·F⊙(θ − θ_ckpt)² + ε); then L ← 0 and θ_ckpt ← θ, in place.

    ``eps`` defaults to the machine epsilon of the state dtype, as in Avalanche.
    """
    params = list(params)
    if eps is None:
        eps = torch.finfo(scores.dtype).eps
    _check("rwalk_score_update_", check_finite, params=params, loss_acc=loss_acc, fisher=fisher)
    with torch.no_grad():
        _ops.rwalk_score_update_(scores, loss_acc, ckpt_params, fisher, params, float(eps))


# ---- rwalk_penalty_weights  P = F / max F + relu(s) / max s (§3.2) -----------------------------------------------


@torch.library.register_fake("clfast::rwalk_penalty_weights")
def _rwalk_penalty_weights_fake(fisher, scores):
    return torch.empty_like(fisher)


def rwalk_penalty_weights(fisher: Tensor, scores: Tensor) -> Tensor:
    """RWalk penalty weights P = F / max F + relu(s) / max s over the whole flat state.

    The maxima are global (one scalar each over every parameter). A term whose maximum is
    ≤ 0 contributes 0 (Avalanche would produce NaN or inf there).
    """
    return _ops.rwalk_penalty_weights(fisher, scores)


# ---- state_max  max over a flat state ----------------------------------------------------------------------------


@torch.library.register_fake("clfast::state_max")
def _state_max_fake(state):
    return state.new_empty(())


def state_max(state: Tensor) -> Tensor:
    """Global maximum of a flat state buffer as a 0-dim tensor (NaN if any element is NaN)."""
    return _ops.state_max(state)


# ---- si_consolidate_  cum += c·traj/((θ−θ*)² + eps); Ω ← min(−cum, clip); θ* ← θ; ω ← 0 (§4.9) -------------------


torch.library.register_fake("clfast::si_consolidate_", _returns_nothing)


def si_consolidate_(
    cum: Tensor,
    importance: Tensor,
    omega: Tensor,
    anchor: Tensor,
    params: Sequence[Tensor],
    c: float = 1.0,
    eps: float = 1e-7,
    clip: float = 1e-3,
    *,
    check_finite: FiniteCheck = True,
) -> None:
    """SI consolidation at the end of an experience, in place.

    With Avalanche's trajectory ``traj = −ω``: cum += c·traj / ((θ − θ*)² + eps),
    Ω ← min(−cum, clip); then θ* ← θ and ω ← 0 for the next experience.
    """
    params = list(params)
    _check("si_consolidate_", check_finite, params=params, omega=omega)
    with torch.no_grad():
        _ops.si_consolidate_(cum, importance, omega, anchor, params, float(c), float(eps),
                             float(clip))
