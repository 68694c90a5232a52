"""The optimizer-step ops: torch.optim's SGD and Adam/AdamW updates in one multi-tensor pass, with the quadratic
penalty optionally inside (one block per op: fake and typed wrapper; the optimizers are :mod:`clfast.optim`).

Each step updates every parameter whose gradient is not None, in place, and returns
``lam·Σ Ω⊙(θ−θ*)²`` at the parameters before the step when ``importance`` and ``anchor`` are given (the
gradient the update uses is then ``grad + 2·lam·Ω⊙(θ−θ*)``, what :func:`~clfast.ops.quad_penalty_grad_` would
have written into ``.grad``), else a zero. With ``path_acc`` and ``path_prev`` (flat, both or neither) the step
also does the path integral of SI and RWalk, what :func:`~clfast.ops.path_integral_update_` does after an unfused
step: ``path_acc −= g⊙(θ_new − θ_old)`` and ``path_prev ← θ_new``, with g the gradient as given (RWalk's task
gradient) or, with ``path_penalised``, that gradient plus the penalty's (SI's ``.grad`` in the unfused order).
The optimizer state is flat (the layout contract of :mod:`clfast.ops`), in float32 or float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["adam_step_", "sgd_step_"]

_ops = torch.ops.clfast


def _value_fake(params, importance, *state):
    """The step's return value: a 0-dim tensor of the state dtype (float32 without any state)."""
    like = next((t for t in (*state, importance) if t is not None), None)
    device = like.device if like is not None else (params[0].device if params else torch.device("cpu"))
    return torch.empty((), dtype=like.dtype if like is not None else torch.float32, device=device)


# ---- sgd_step_  torch.optim.SGD's update, the penalty optionally inside ------------------------------------------


@torch.library.register_fake("clfast::sgd_step_")
def _sgd_step_fake(params, grads, momentum_buffer, importance, anchor, lr, momentum, dampening, weight_decay,
                   nesterov, maximize, first, lam, path_acc=None, path_prev=None, path_penalised=False):
    return _value_fake(params, importance, momentum_buffer, path_acc)


def sgd_step_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor | None],
    momentum_buffer: Tensor | None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    first: bool = False,
    importance: Tensor | None = None,
    anchor: Tensor | None = None,
    lam: float = 0.0,
    path_acc: Tensor | None = None,
    path_prev: Tensor | None = None,
    path_penalised: bool = False,
) -> Tensor:
    """One SGD step, in place: g = ±grad + wd·θ; with momentum b = g (``first``) or μ·b + (1−dampening)·g, and
    g = g + μ·b (Nesterov) or b; θ ← θ − lr·g (torch.optim.SGD's update). ``momentum_buffer`` (flat) is given
    exactly when ``momentum != 0``. Returns the penalty value; the path integral as the module says."""
    if not params and momentum_buffer is None and importance is None and path_acc is None:
        return torch.zeros(())  # no tensor at all: nothing to dispatch on, nothing to do
    with torch.no_grad():
        return _ops.sgd_step_(list(params), list(grads), momentum_buffer, importance, anchor, float(lr),
                              float(momentum), float(dampening), float(weight_decay), bool(nesterov), bool(maximize),
                              bool(first), float(lam), path_acc, path_prev, bool(path_penalised))


# ---- adam_step_  torch.optim.Adam's / AdamW's update, the penalty optionally inside ------------------------------


@torch.library.register_fake("clfast::adam_step_")
def _adam_step_fake(params, grads, exp_avg, exp_avg_sq, importance, anchor, lr, beta1, beta2, eps, weight_decay,
                    decoupled, maximize, step, lam, path_acc=None, path_prev=None, path_penalised=False):
    return _value_fake(params, importance, exp_avg)


def adam_step_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor | None],
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    *,
    lr: float,
    step: int,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    maximize: bool = False,
    importance: Tensor | None = None,
    anchor: Tensor | None = None,
    lam: float = 0.0,
    path_acc: Tensor | None = None,
    path_prev: Tensor | None = None,
    path_penalised: bool = False,
) -> Tensor:
    """One Adam step, in place (AdamW's with ``decoupled``): g = ±grad (+ wd·θ, or θ ← θ·(1 − lr·wd) when
    decoupled); m ← lerp(m, g, 1−β₁); v ← β₂·v + (1−β₂)·g²; θ ← θ − lr/(1−β₁ᵗ)·m / (√v/√(1−β₂ᵗ) + eps), with
    t = ``step``, the count after this step (torch.optim.Adam's update). Returns the penalty value; the path
    integral as the module says."""
    beta1, beta2 = betas
    with torch.no_grad():
        return _ops.adam_step_(list(params), list(grads), exp_avg, exp_avg_sq, importance, anchor, float(lr),
                               float(beta1), float(beta2), float(eps), float(weight_decay), bool(decoupled),
                               bool(maximize), int(step), float(lam), path_acc, path_prev, bool(path_penalised))
