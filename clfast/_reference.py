"""The executable spec of every clfast op, in plain PyTorch.

Each function is named after its op (``torch.ops.clfast.<name>``, without a trailing ``_``), takes the op's
arguments in schema order (Batch Renormalization: ``r_max``/``d_max`` as numbers) and computes the same result
one parameter at a time with ordinary tensor ops. Functions whose op works in place return new
tensors instead (the updated state), so a test can compare. Arithmetic is done in float64.
``clfast.testing.opinfo`` pairs every op with its twin (or says why it has none).
Formulas: ``docs/avalanche-semantics.md`` §2 (MAS), §3.2 (RWalk), §4.9 (SI), §5 (Batch Renormalization).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

D = torch.float64


def _slices(params: Sequence[Tensor], flat: Tensor) -> list[Tensor]:
    """Per-parameter float64 views of a flat buffer, shaped like the parameters."""
    out, offset = [], 0
    for p in params:
        out.append(flat[offset : offset + p.numel()].to(D).view(p.shape))
        offset += p.numel()
    assert offset == flat.numel(), "flat buffer size does not match the parameters"
    return out


def _cat(parts: Sequence[Tensor], like: Tensor) -> Tensor:
    if not parts:
        return like.new_zeros(0)
    return torch.cat([t.reshape(-1) for t in parts]).to(like.dtype)


def quad_penalty(params: Sequence[Tensor], importance: Tensor, anchor: Tensor, lam: float) -> Tensor:
    """λ·Σ_k Σ Ω_k ⊙ (θ_k − θ*_k)² (MAS §2.2, RWalk §3.1 penalty, EWC)."""
    total = torch.zeros((), dtype=D)
    for p, w, a in zip(params, _slices(params, importance), _slices(params, anchor), strict=True):
        total = total + (w * (p.detach().to(D) - a) ** 2).sum()
    return lam * total


def quad_penalty_grad(params: Sequence[Tensor], importance: Tensor, anchor: Tensor, lam: float) -> list[Tensor]:
    """∂/∂θ_k of the penalty: 2λ·Ω_k ⊙ (θ_k − θ*_k); the gradient half of ``quad_penalty_grad_`` (the value half
    is :func:`quad_penalty`), so it takes that op's arguments without ``grads`` and ``grad_mode``."""
    return [
        2.0 * lam * w * (p.detach().to(D) - a)
        for p, w, a in zip(params, _slices(params, importance), _slices(params, anchor), strict=True)
    ]


def quad_penalty_backward(grad_out: Tensor, params: Sequence[Tensor], importance: Tensor, anchor: Tensor,
                          lam: float) -> list[Tensor]:
    """The penalty's backward: grad_out · 2λ·Ω_k ⊙ (θ_k − θ*_k), one tensor per parameter."""
    return [grad_out.to(D).reshape(()) * g for g in quad_penalty_grad(params, importance, anchor, lam)]


def mas_importance_update(importance: Tensor, params: Sequence[Tensor], grads: Sequence[Tensor | None],
                          scale: float) -> Tensor:
    """Ω_k += scale·|g_k|; a None gradient leaves Ω_k unchanged."""
    parts = []
    for w, g in zip(_slices(params, importance), grads, strict=True):
        parts.append(w if g is None else w + scale * g.to(D).abs())
    return _cat(parts, importance)


def ema_sq_update(fisher: Tensor, params: Sequence[Tensor], grads: Sequence[Tensor | None], alpha: float) -> Tensor:
    """EWC++: F_k ← α·g_k² + (1−α)·F_k; a None gradient leaves F_k unchanged."""
    parts = []
    for f, g in zip(_slices(params, fisher), grads, strict=True):
        parts.append(f if g is None else alpha * g.to(D) ** 2 + (1.0 - alpha) * f)
    return _cat(parts, fisher)


def path_integral_update(acc: Tensor, prev_params: Tensor, params: Sequence[Tensor],
                         grads: Sequence[Tensor | None]) -> tuple[Tensor, Tensor]:
    """acc_k −= g_k ⊙ (θ_k − θ_prev,k); θ_prev,k ← θ_k (SI ω, RWalk checkpoint loss)."""
    accs, prevs = [], []
    for a, prev, p, g in zip(_slices(params, acc), _slices(params, prev_params), params, grads, strict=True):
        theta = p.detach().to(D)
        accs.append(a if g is None else a - g.to(D) * (theta - prev))
        prevs.append(theta)
    return _cat(accs, acc), _cat(prevs, prev_params)


def rwalk_score_update(scores: Tensor, loss_acc: Tensor, ckpt_params: Tensor, fisher: Tensor,
                       params: Sequence[Tensor], eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """s_k += L_k / (½·F_k ⊙ (θ_k − θ_ckpt,k)² + ε); then L ← 0 and θ_ckpt ← θ."""
    new_scores = []
    for s, loss, ck, f, p in zip(_slices(params, scores), _slices(params, loss_acc), _slices(params, ckpt_params),
                                 _slices(params, fisher), params, strict=True):
        d = p.detach().to(D) - ck
        new_scores.append(s + loss / (0.5 * f * d**2 + eps))
    theta = [p.detach() for p in params]
    return _cat(new_scores, scores), torch.zeros_like(loss_acc), _cat(theta, ckpt_params)


def si_consolidate(cum: Tensor, importance: Tensor, omega: Tensor, anchor: Tensor, params: Sequence[Tensor],
                   c: float, eps: float, clip: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """With traj = −ω: cum += c·traj/((θ−θ*)²+eps); Ω ← min(−cum, clip); ω ← 0; θ* ← θ."""
    cums, imps = [], []
    for cu, om, a, p in zip(_slices(params, cum), _slices(params, omega), _slices(params, anchor), params,
                            strict=True):
        d = p.detach().to(D) - a
        new_cum = cu + c * (-om) / (d**2 + eps)
        cums.append(new_cum)
        imps.append(torch.clamp(-new_cum, max=clip))
    theta = [p.detach() for p in params]
    return _cat(cums, cum), _cat(imps, importance), torch.zeros_like(omega), _cat(theta, anchor)


def _penalised_grads(params: Sequence[Tensor], grads: Sequence[Tensor | None], importance: Tensor | None,
                     anchor: Tensor | None, lam: float) -> tuple[list[Tensor | None], Tensor]:
    """The gradient an optimizer step uses (grad + 2λ·Ω⊙(θ−θ*) with a penalty; None stays None) and the penalty
    λ·Σ Ω⊙(θ−θ*)² over the params that have a grad (0 without a penalty)."""
    if importance is None:
        return [None if g is None else g.to(D) for g in grads], torch.zeros((), dtype=D)
    out, value = [], torch.zeros((), dtype=D)
    for p, g, w, a in zip(params, grads, _slices(params, importance), _slices(params, anchor), strict=True):
        if g is None:
            out.append(None)
            continue
        d = p.detach().to(D) - a
        out.append(g.to(D) + 2.0 * lam * w * d)
        value = value + (w * d**2).sum()
    return out, lam * value


def _step_path(params: Sequence[Tensor], new_params: Sequence[Tensor], grads: Sequence[Tensor | None],
               penalised: Sequence[Tensor | None], path_acc: Tensor | None, path_prev: Tensor | None,
               path_penalised: bool) -> tuple[Tensor | None, Tensor | None]:
    """The path integral of a step: acc − g⊙(θ_new − θ_old) for each param with a grad (g the given grad, or with
    ``path_penalised`` the penalised one) and θ_prev = θ_new as stored (in the param's dtype); (None, None)
    without."""
    if path_acc is None:
        return None, None
    accs, prevs = [], []
    for p, new, g, gp, a, prev in zip(params, new_params, grads, penalised, _slices(params, path_acc),
                                      _slices(params, path_prev), strict=True):
        if g is None:
            accs.append(a)
            prevs.append(prev)
            continue
        stored = new.to(p.dtype).to(D)
        accs.append(a - (gp if path_penalised else g.to(D)) * (stored - p.detach().to(D)))
        prevs.append(stored)
    return _cat(accs, path_acc), _cat(prevs, path_prev)


def sgd_step(params: Sequence[Tensor], grads: Sequence[Tensor | None], momentum_buffer: Tensor | None,
             importance: Tensor | None, anchor: Tensor | None, lr: float, momentum: float, dampening: float,
             weight_decay: float, nesterov: bool, maximize: bool, first: bool, lam: float,
             path_acc: Tensor | None = None, path_prev: Tensor | None = None, path_penalised: bool = False
             ) -> tuple[list[Tensor], Tensor | None, Tensor | None, Tensor | None, Tensor]:
    """torch.optim.SGD's update of each param with a grad (the penalty and the path integral inside): new params,
    momentum buffer, path accumulator, θ_prev, value."""
    gs, value = _penalised_grads(params, grads, importance, anchor, lam)
    bufs = _slices(params, momentum_buffer) if momentum_buffer is not None else [None] * len(params)
    new_params, new_bufs = [], []
    for p, g, b in zip(params, gs, bufs, strict=True):
        theta = p.detach().to(D)
        if g is None:
            new_params.append(theta)
            new_bufs.append(b)
            continue
        g = -g if maximize else g
        g = g + weight_decay * theta
        if b is not None:
            b = g if first else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        new_params.append(theta - lr * g)
        new_bufs.append(b)
    buf = _cat(new_bufs, momentum_buffer) if momentum_buffer is not None else None
    acc, prev = _step_path(params, new_params, grads, gs, path_acc, path_prev, path_penalised)
    return new_params, buf, acc, prev, value


def adam_step(params: Sequence[Tensor], grads: Sequence[Tensor | None], exp_avg: Tensor, exp_avg_sq: Tensor,
              importance: Tensor | None, anchor: Tensor | None, lr: float, beta1: float, beta2: float, eps: float,
              weight_decay: float, decoupled: bool, maximize: bool, step: int, lam: float,
              path_acc: Tensor | None = None, path_prev: Tensor | None = None, path_penalised: bool = False
              ) -> tuple[list[Tensor], Tensor, Tensor, Tensor | None, Tensor | None, Tensor]:
    """torch.optim.Adam's (AdamW's when decoupled) update of each param with a grad, the penalty and the path
    integral inside: new params, m, v, path accumulator, θ_prev, value."""
    gs, value = _penalised_grads(params, grads, importance, anchor, lam)
    new_params, ms, vs = [], [], []
    for p, g, m, v in zip(params, gs, _slices(params, exp_avg), _slices(params, exp_avg_sq), strict=True):
        theta = p.detach().to(D)
        if g is not None:
            g = -g if maximize else g
            if decoupled:
                theta = theta * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * theta
            m = m + (1 - beta1) * (g - m)
            v = beta2 * v + (1 - beta2) * g * g
            denom = v.sqrt() / (1 - beta2**step) ** 0.5 + eps
            theta = theta - lr / (1 - beta1**step) * m / denom
        new_params.append(theta)
        ms.append(m)
        vs.append(v)
    acc, prev = _step_path(params, new_params, grads, gs, path_acc, path_prev, path_penalised)
    return new_params, _cat(ms, exp_avg), _cat(vs, exp_avg_sq), acc, prev, value


def state_max(state: Tensor) -> Tensor:
    """Global maximum (NaN propagates, as torch.max does)."""
    return state.max()


def rwalk_penalty_weights(fisher: Tensor, scores: Tensor) -> Tensor:
    """P = F / max F + relu(s) / max s; a term whose maximum is ≤ 0 contributes 0."""
    f, s = fisher.to(D), scores.to(D)
    if f.numel() == 0:
        return fisher.clone()
    mf, ms = f.max(), s.max()
    term_f = f / mf if mf > 0 else torch.zeros_like(f)
    term_s = torch.relu(s) / ms if ms > 0 else torch.zeros_like(s)
    return (term_f + term_s).to(fisher.dtype)


def nonfinite_flags(tensors: Sequence[Tensor]) -> Tensor:
    return torch.tensor([bool((~torch.isfinite(t)).any()) for t in tensors], dtype=torch.bool)


# ---------------------------------------------------------------------------------------------
# Batch Renormalization: Avalanche's BatchRenorm2D formula (avalanche-semantics.md §5.2) in eager ops.
# Per-channel tensors are 1-D (C,); r and d are detached, so autograd gives §5.4's backward.
# ---------------------------------------------------------------------------------------------


def _per_channel(t: Tensor, x: Tensor) -> Tensor:
    return t.reshape(1, -1, *([1] * (x.dim() - 2)))


def batch_renorm_forward(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_std: Tensor,
                         r_max: float, d_max: float, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Training forward in eager ops: returns (y, batch mean, batch std with eps, r, d)."""
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dims)
    std = torch.sqrt(x.var(dims, unbiased=False) + eps)
    r = (std.detach() / running_std).clamp(1.0 / r_max, r_max)
    d = ((mean.detach() - running_mean) / running_std).clamp(-d_max, d_max)
    xhat = (x - _per_channel(mean, x)) / _per_channel(std, x) * _per_channel(r, x) + _per_channel(d, x)
    return _per_channel(weight, x) * xhat + _per_channel(bias, x), mean, std, r, d


def batch_renorm_eval(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_std: Tensor) -> Tensor:
    """Eval forward: weight (x - running_mean) / running_std + bias."""
    return _per_channel(weight, x) * (x - _per_channel(running_mean, x)) / _per_channel(running_std, x) + \
        _per_channel(bias, x)


def batch_renorm_update(running_mean: Tensor, running_std: Tensor, r_max: float, d_max: float, batch_mean: Tensor,
                        batch_std: Tensor, momentum: float, r_max_inc: float, d_max_inc: float, max_r_max: float,
                        max_d_max: float) -> tuple[Tensor, Tensor, float, float]:
    """Running statistics and limits after a training step (new values; nothing is modified)."""
    new_mean = running_mean + momentum * (batch_mean - running_mean)
    new_std = running_std + momentum * (batch_std - running_std)
    new_r = r_max + r_max_inc if r_max < max_r_max else r_max
    new_d = d_max + d_max_inc if d_max < max_d_max else d_max
    return new_mean, new_std, new_r, new_d
