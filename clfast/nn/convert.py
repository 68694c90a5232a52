"""Model surgery for Batch Renormalization: Avalanche's ``replace_bn_with_brn`` and ``change_brn_pars``."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_float
from .batch_renorm import BatchRenorm2d, _BatchRenorm

__all__ = ["change_brn_pars", "replace_bn_with_brn"]


def _from_bn(bn: nn.BatchNorm2d, **kw: float) -> BatchRenorm2d:
    c = bn.num_features
    gamma = bn.weight.detach() if bn.weight is not None else None
    beta = bn.bias.detach() if bn.bias is not None else None
    have_stats = bn.running_mean is not None and bn.running_var is not None
    brn = BatchRenorm2d(c, gamma=gamma, beta=beta, running_mean=bn.running_mean if have_stats else None,
                        running_var=bn.running_var if have_stats else None, eps=bn.eps, **kw)
    ref = bn.weight if bn.weight is not None else bn.running_mean
    if ref is not None:
        brn = brn.to(device=ref.device, dtype=ref.dtype if ref.dtype in (torch.float32, torch.float64) else None)
    if not bn.affine:  # a non-affine BatchNorm has no trainable scale/shift: keep it that way
        brn.gamma.requires_grad_(False)
        brn.beta.requires_grad_(False)
    brn.train(bn.training)
    return brn


def replace_bn_with_brn(m: nn.Module, momentum: float = 0.1, r_d_max_inc_step: float = 1e-4, r_max: float = 1.0,
                        d_max: float = 0.0, max_r_max: float = 3.0, max_d_max: float = 5.0) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``m`` (recursively, in place) with a :class:`BatchRenorm2d`.

    The new layer takes the BatchNorm's affine parameters, statistics (σ_run = sqrt(running_var + eps))
    and eps, device, dtype and train/eval mode, and keeps the attribute name, so parameter names such as
    ``lat_features.19.bn.beta`` stay valid. Keyword arguments are Avalanche's. Returns ``m``.
    Optimizers built before the call still hold the old BatchNorm parameters: build them afterwards.
    """
    kw = {"momentum": momentum, "r_d_max_inc_step": r_d_max_inc_step, "r_max": r_max, "d_max": d_max,
          "max_r_max": max_r_max, "max_d_max": max_d_max}
    for name, child in list(m.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(m, name, _from_bn(child, **kw))
        else:
            replace_bn_with_brn(child, **kw)
    return m


def change_brn_pars(m: nn.Module, momentum: float = 0.1, r_d_max_inc_step: float = 1e-4, r_max: float = 1.0,
                    d_max: float = 0.0) -> nn.Module:
    """Set the Batch Renormalization settings of every BRN layer of ``m`` (Avalanche's ``change_brn_pars``).

    ``r_max`` and ``d_max`` are written into the layers' buffers in place (device kept);
    ``r_d_max_inc_step`` sets both ramps' per-sample step. Returns ``m``.
    """
    # The same ranges as the BRN constructor's, checked before any layer changes.
    momentum = check_float("momentum", momentum, low=0.0, high=1.0)
    step = check_float("r_d_max_inc_step", r_d_max_inc_step, low=0.0)
    r_max = check_float("r_max", r_max, low=1.0)
    d_max = check_float("d_max", d_max, low=0.0)
    for layer in m.modules():
        if not isinstance(layer, _BatchRenorm):
            continue
        layer.momentum = momentum
        layer.r_d_max_inc_step = step
        with torch.no_grad():
            layer.r_max.fill_(r_max)
            layer.d_max.fill_(d_max)
    return m
