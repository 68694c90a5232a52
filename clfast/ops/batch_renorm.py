"""Batch Renormalization ops: one block per op (fake, autograd, typed wrapper) of ``torch.ops.clfast.batch_renorm_*``.

Math (Ioffe 2017; ``docs/avalanche-semantics.md`` §5), per channel over the m = N·H·W
elements of a batch::

    σ_B = sqrt(var_B + eps)                      (biased variance)
    r = clamp(σ_B / σ_run, 1/r_max, r_max)       d = clamp((μ_B − μ_run) / σ_run, −d_max, d_max)
    y = γ (r (x − μ_B) / σ_B + d) + β            (r and d are constants for autograd)
    eval: y = γ (x − μ_run) / σ_run + β

The backward is §5.4's closed form, recomputing x̂ from (x, μ_B, σ_B, r, d) instead of storing it.
:mod:`clfast._reference` restates all of it in plain PyTorch.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batch_renorm_eval", "batch_renorm_forward", "batch_renorm_update_"]

_ops = torch.ops.clfast


def _output_like(x: Tensor) -> Tensor:
    """The output layout the kernels use: the input's own if NCHW- or channels-last-contiguous, else NCHW."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return torch.empty_like(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


# ---- batch_renorm_backward: the backward of both forwards (§5.4), reached only through their autograd ------------


@torch.library.register_fake("clfast::batch_renorm_backward")
def _backward_fake(grad_out, input, weight, mean, std, r, d, train):
    return _output_like(input), torch.empty_like(weight), torch.empty_like(weight)


# ---- batch_renorm_forward: the training forward -> (y, μ_B, σ_B, r, d) (§5.2) ------------------------------------


@torch.library.register_fake("clfast::batch_renorm_forward")
def _forward_fake(input, weight, bias, running_mean, running_std, r_max, d_max, eps):
    c = input.shape[1]
    return (_output_like(input), *(weight.new_empty((c,)) for _ in range(4)))


def _forward_setup(ctx, inputs, output):
    input, weight = inputs[0], inputs[1]
    _, mean, std, r, d = output
    ctx.save_for_backward(input, weight, mean, std, r, d)
    ctx.mark_non_differentiable(mean, std, r, d)


def _forward_backward(ctx, grad_y, *unused):
    input, weight, mean, std, r, d = ctx.saved_tensors
    gx, gw, gb = _ops.batch_renorm_backward(grad_y, input, weight, mean, std, r, d, True)
    return gx, gw, gb, None, None, None, None, None


torch.library.register_autograd("clfast::batch_renorm_forward", _forward_backward, setup_context=_forward_setup)


def batch_renorm_forward(
    input: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_std: Tensor,
    r_max: Tensor,
    d_max: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Training forward; returns ``(y, batch_mean, batch_std, r, d)`` (the last four per channel).

    ``input`` is ``(N, C, *)``, NCHW-contiguous or channels-last (other strides are copied first), of
    float32/float64/float16/bfloat16. ``weight``, ``bias``, ``running_mean``, ``running_std`` hold C
    elements, ``r_max``/``d_max`` one, all of one dtype (float32 or float64). Differentiable w.r.t.
    ``input``, ``weight`` and ``bias``; the running statistics are read only (see
    :func:`batch_renorm_update_`).
    """
    return _ops.batch_renorm_forward(input, weight, bias, running_mean, running_std, r_max, d_max, float(eps))


# ---- batch_renorm_eval: y = γ (x − μ_run) / σ_run + β (§5.2, eval mode) ------------------------------------------


@torch.library.register_fake("clfast::batch_renorm_eval")
def _eval_fake(input, weight, bias, running_mean, running_std):
    return _output_like(input)


def _eval_setup(ctx, inputs, output):
    input, weight, _, running_mean, running_std = inputs
    ctx.save_for_backward(input, weight, running_mean, running_std)


def _eval_backward(ctx, grad_y):
    input, weight, running_mean, running_std = ctx.saved_tensors
    ones = torch.ones_like(running_std)
    zeros = torch.zeros_like(running_std)
    gx, gw, gb = _ops.batch_renorm_backward(grad_y, input, weight, running_mean, running_std, ones, zeros, False)
    return gx, gw, gb, None, None


torch.library.register_autograd("clfast::batch_renorm_eval", _eval_backward, setup_context=_eval_setup)


def batch_renorm_eval(input: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_std: Tensor) -> Tensor:
    """Eval forward ``y = weight (x − running_mean) / running_std + bias``; differentiable w.r.t. input/weight/bias."""
    return _ops.batch_renorm_eval(input, weight, bias, running_mean, running_std)


# ---- batch_renorm_update_: running statistics and the r_max/d_max ramp, in place (§5.2) --------------------------


@torch.library.register_fake("clfast::batch_renorm_update_")
def _update_fake(*args: object) -> None:  # in place: writes the running statistics, returns nothing
    return None


def batch_renorm_update_(
    running_mean: Tensor,
    running_std: Tensor,
    r_max: Tensor,
    d_max: Tensor,
    batch_mean: Tensor,
    batch_std: Tensor,
    momentum: float,
    r_max_inc: float,
    d_max_inc: float,
    max_r_max: float,
    max_d_max: float,
) -> None:
    """After a training forward: ``μ_run += momentum (μ_B − μ_run)``, ``σ_run += momentum (σ_B − σ_run)``,
    and ``r_max += r_max_inc`` while ``r_max < max_r_max`` (likewise ``d_max``), all in place on the device."""
    _ops.batch_renorm_update_(running_mean, running_std, r_max, d_max, batch_mean, batch_std, float(momentum),
                              float(r_max_inc), float(d_max_inc), float(max_r_max), float(max_d_max))
