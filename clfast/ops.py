"""Typed wrappers of the ``torch.ops.clfast.*`` state ops, with their fakes and autograd.

Layout contract (every op): ``params[i]`` (and ``grads[i]``) own the slice
``[sum(numel of params[:i]), sum(numel of params[:i+1]))`` of every flat state buffer. This is
the order of :class:`clfast.state.FlatState`'s table; ``FlatState.params(model)`` returns the
parameters in that order. State buffers are 1-D contiguous float32/float64; model tensors are
float32, float64, bfloat16 or float16 and contiguous; arithmetic is done in float32 (float64 when
a float64 tensor is involved).

The math of each op is restated in plain PyTorch in :mod:`clfast._reference`.

Finite-value checks: the ops that update persistent state (importance, Fisher, path integrals,
scores) take ``check_finite=True`` by default. It reads the model tensors once more before any
write and raises ``ValueError`` naming the first tensor holding a NaN or inf, so a bad gradient
cannot poison the state. Pass ``check_finite=False`` on hot paths that already guarantee finite
inputs. The penalty ops default to ``False``: a NaN there shows up in the returned value.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "GradMode",
    "check_finite",
    "ema_sq_update_",
    "mas_importance_update_",
    "nonfinite_flags",
    "path_integral_update_",
    "quad_penalty",
    "quad_penalty_grad_",
    "rwalk_penalty_weights",
    "rwalk_score_update_",
    "si_consolidate_",
    "state_max",
]

_ops = torch.ops.clfast

# ---------------------------------------------------------------------------------------------
# Fakes (shape / dtype / device only) for torch.compile and meta tensors
# ---------------------------------------------------------------------------------------------


@torch.library.register_fake("clfast::quad_penalty")
def _quad_penalty_fake(params, importance, anchor, lam):
    return importance.new_empty(())


@torch.library.register_fake("clfast::quad_penalty_backward")
def _quad_penalty_backward_fake(grad_out, params, importance, anchor, lam):
    return [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]


@torch.library.register_fake("clfast::quad_penalty_grad_")
def _quad_penalty_grad_fake(grads, params, importance, anchor, lam, grad_mode):
    return importance.new_empty(())


@torch.library.register_fake("clfast::mas_importance_update_")
def _mas_importance_update_fake(importance, params, grads, scale):
    return None


@torch.library.register_fake("clfast::ema_sq_update_")
def _ema_sq_update_fake(fisher, params, grads, alpha):
    return None


@torch.library.register_fake("clfast::path_integral_update_")
def _path_integral_update_fake(acc, prev_params, params, grads):
    return None


@torch.library.register_fake("clfast::rwalk_score_update_")
def _rwalk_score_update_fake(scores, loss_acc, ckpt_params, fisher, params, eps):
    return None


@torch.library.register_fake("clfast::si_consolidate_")
def _si_consolidate_fake(cum, importance, omega, anchor, params, c, eps, clip):
    return None


@torch.library.register_fake("clfast::state_max")
def _state_max_fake(state):
    return state.new_empty(())


@torch.library.register_fake("clfast::rwalk_penalty_weights")
def _rwalk_penalty_weights_fake(fisher, scores):
    return torch.empty_like(fisher)


@torch.library.register_fake("clfast::nonfinite_flags")
def _nonfinite_flags_fake(tensors):
    return tensors[0].new_empty((len(tensors),), dtype=torch.bool)


# ---------------------------------------------------------------------------------------------
# Autograd: the penalty is differentiable w.r.t. the live parameters (not the state)
# ---------------------------------------------------------------------------------------------


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

# ---------------------------------------------------------------------------------------------
# Finite-value checks
# ---------------------------------------------------------------------------------------------


def nonfinite_flags(tensors: Sequence[Tensor]) -> Tensor:
    """One bool per tensor: True where the tensor holds a NaN or an infinity (one fused pass)."""
    tensors = list(tensors)
    if not tensors:
        return torch.zeros(0, dtype=torch.bool)
    return _ops.nonfinite_flags(tensors)


_CHECKED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check_finite(op: str, **named: Sequence[Tensor | None] | Tensor | None) -> None:
    """Raise ``ValueError`` naming the first argument (and index) that holds a NaN or inf.

    ``named`` maps argument names to a tensor, a list of tensors (``None`` entries skipped) or None.
    Skipped under ``torch.compile`` tracing, where a data-dependent raise would break the graph.
    """
    if torch.compiler.is_compiling():
        return
    labels: list[str] = []
    tensors: list[Tensor] = []
    for name, value in named.items():
        if value is None:
            continue
        if isinstance(value, Tensor):
            value = [value]
            fmt = "{name}"
        else:
            fmt = "{name}[{i}]"
        for i, t in enumerate(value):
            # Only tensors the ops accept can hold a NaN worth reporting here; any other dtype (or layout) is
            # left for the op itself to refuse, with the argument's own name.
            if isinstance(t, Tensor) and t.numel() > 0 and t.dtype in _CHECKED_DTYPES:
                labels.append(fmt.format(name=name, i=i))
                tensors.append(t.detach().contiguous())
    if not tensors:
        return
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    for idx in by_device.values():
        flags = _ops.nonfinite_flags([tensors[i] for i in idx]).tolist()
        for i, bad in zip(idx, flags, strict=True):
            if bad:
                raise ValueError(f"{op}: {labels[i]} contains NaN or inf")


def _grads_of(params: Sequence[Tensor], grads: Sequence[Tensor | None] | None) -> list[Tensor | None]:
    if grads is None:
        return [p.grad for p in params]
    return list(grads)


# ---------------------------------------------------------------------------------------------
# Quadratic penalty  lam * sum Omega (theta - theta*)^2
# ---------------------------------------------------------------------------------------------


def quad_penalty(
    params: Sequence[Tensor],
    importance: Tensor,
    anchor: Tensor,
    lam: float,
    *,
    check_finite: bool = False,
) -> Tensor:
    """λ·Σ Ω⊙(θ−θ*)² over all ``params`` in one call, as a 0-dim tensor of the state dtype.

    Differentiable w.r.t. ``params`` (gradient 2λΩ(θ−θ*), computed by one fused backward op);
    ``importance`` (Ω) and ``anchor`` (θ*) are constants and must not require grad.
    """
    if importance.requires_grad or anchor.requires_grad:
        raise ValueError("quad_penalty: importance and anchor are constants; pass detached tensors")
    params = list(params)
    if check_finite:
        _check("quad_penalty", params=params, importance=importance, anchor=anchor)
    return _ops.quad_penalty(params, importance, anchor, float(lam))


class GradMode(enum.IntEnum):
    """What ``quad_penalty_grad_`` does with each entry's gradient (the op's ``grad_mode`` list)."""

    #: ``.grad += 2λΩ⊙(θ−θ*)`` (the parameter has a gradient).
    ACCUMULATE = 0
    #: ``.grad = 2λΩ⊙(θ−θ*)`` into a new tensor (requires grad, no gradient yet: what autograd would do).
    WRITE = 1
    #: no gradient (``requires_grad=False``, or an entry outside the penalty); still counts in the value.
    SKIP = 2


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
    check_finite: bool = False,
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
    if check_finite:
        _check("quad_penalty_grad_", params=params, importance=importance, anchor=anchor)
    grads: list[Tensor] = []
    modes: list[int] = []
    fresh: list[tuple[Tensor, Tensor]] = []
    for i, p in enumerate(params):
        g = p.grad
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
        p.grad = g
    return value


# ---------------------------------------------------------------------------------------------
# Importance updates from the current gradients
# ---------------------------------------------------------------------------------------------


def mas_importance_update_(
    importance: Tensor,
    params: Sequence[Tensor],
    scale: float = 1.0,
    *,
    grads: Sequence[Tensor | None] | None = None,
    check_finite: bool = True,
) -> None:
    """MAS: Ω += scale·|g|, in place. ``grads`` defaults to each ``param.grad``.

    A parameter whose gradient is None contributes nothing: its slice of Ω is left unchanged.
    """
    params = list(params)
    grads = _grads_of(params, grads)
    if check_finite:
        _check("mas_importance_update_", grads=grads)
    with torch.no_grad():
        _ops.mas_importance_update_(importance, params, grads, float(scale))


def ema_sq_update_(
    fisher: Tensor,
    params: Sequence[Tensor],
    alpha: float,
    *,
    grads: Sequence[Tensor | None] | None = None,
    check_finite: bool = True,
) -> None:
    """EWC++ / RWalk Fisher: F ← α·g² + (1−α)·F, in place (α ∈ [0, 1]).

    A parameter whose gradient is None keeps its slice of F unchanged (neither decayed nor
    updated; Avalanche instead drops such a parameter's history, a quirk not reproduced here).
    """
    params = list(params)
    grads = _grads_of(params, grads)
    if check_finite:
        _check("ema_sq_update_", grads=grads)
    with torch.no_grad():
        _ops.ema_sq_update_(fisher, params, grads, float(alpha))


def path_integral_update_(
    acc: Tensor,
    prev_params: Tensor,
    params: Sequence[Tensor],
    *,
    grads: Sequence[Tensor | None] | None = None,
    check_finite: bool = True,
) -> None:
    """Path integral: acc −= g⊙(θ − θ_prev), then θ_prev ← θ, in place.

    This is SI's ω += −g⊙(θ_new − θ_old) and RWalk's L −= g⊙(θ_{t+1} − θ_t): call it after the
    optimizer step with the gradient that produced the step. A parameter whose gradient is None
    adds nothing to ``acc`` but its snapshot ``prev_params`` is still refreshed.
    """
    params = list(params)
    grads = _grads_of(params, grads)
    if check_finite:
        _check("path_integral_update_", params=params, grads=grads)
    with torch.no_grad():
        _ops.path_integral_update_(acc, prev_params, params, grads)


# ---------------------------------------------------------------------------------------------
# RWalk and SI consolidation pieces
# ---------------------------------------------------------------------------------------------


def rwalk_score_update_(
    scores: Tensor,
    loss_acc: Tensor,
    ckpt_params: Tensor,
    fisher: Tensor,
    params: Sequence[Tensor],
    eps: float | None = None,
    *,
    check_finite: bool = True,
) -> None:
    """RWalk score window: s += L / (½·F⊙(θ − θ_ckpt)² + ε); then L ← 0 and θ_ckpt ← θ, in place.

    ``eps`` defaults to the machine epsilon of the state dtype, as in Avalanche.
    """
    params = list(params)
    if eps is None:
        eps = torch.finfo(scores.dtype).eps
    if check_finite:
        _check("rwalk_score_update_", params=params, loss_acc=loss_acc, fisher=fisher)
    with torch.no_grad():
        _ops.rwalk_score_update_(scores, loss_acc, ckpt_params, fisher, params, float(eps))


def rwalk_penalty_weights(fisher: Tensor, scores: Tensor) -> Tensor:
    """RWalk penalty weights P = F / max F + relu(s) / max s over the whole flat state.

    The maxima are global (one scalar each over every parameter). A term whose maximum is
    ≤ 0 contributes 0 (Avalanche would produce NaN or inf there).
    """
    return _ops.rwalk_penalty_weights(fisher, scores)


def state_max(state: Tensor) -> Tensor:
    """Global maximum of a flat state buffer as a 0-dim tensor (NaN if any element is NaN)."""
    return _ops.state_max(state)


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
    check_finite: bool = True,
) -> None:
    """SI consolidation at the end of an experience, in place.

    With Avalanche's trajectory ``traj = −ω``: cum += c·traj / ((θ − θ*)² + eps),
    Ω ← min(−cum, clip); then θ* ← θ and ω ← 0 for the next experience.
    """
    params = list(params)
    if check_finite:
        _check("si_consolidate_", params=params, omega=omega)
    with torch.no_grad():
        _ops.si_consolidate_(cum, importance, omega, anchor, params, float(c), float(eps),
                             float(clip))


_check = check_finite


# Batch Renormalization ops live in their own module; importing it registers their fakes and autograd.
from ._brn_ops import batch_renorm_eval, batch_renorm_train, batch_renorm_update_  # noqa: E402

__all__ += ["batch_renorm_eval", "batch_renorm_train", "batch_renorm_update_"]
