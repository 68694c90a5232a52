"""Batch Renormalization layers on the fused ``clfast`` ops (Ioffe 2017; Avalanche's ``BatchRenorm2D``).

The constructor is Avalanche's (``avalanche/models/batch_renorm.py``), and so are the names users see:
parameters ``gamma`` and ``beta`` of shape (1, C, 1, 1), running statistics ``running_avg_mean`` and
``running_avg_std``. Differences from Avalanche, each on purpose (see ``docs/avalanche-differences.md``):

- ``running_avg_mean``, ``running_avg_std``, ``r_max`` and ``d_max`` are registered buffers, so
  ``state_dict()``, ``.to()`` and DDP's buffer broadcast carry them.
- A fresh layer starts at mean 0 and std 1 (Avalanche: mean 1, std 0, which divides by zero in eval).
- From a BatchNorm's statistics, σ_run = sqrt(running_var + eps) (Avalanche drops eps), so a converted
  layer in eval mode gives the BatchNorm's outputs.
- Eval mode does not compute the (unused) batch statistics.
- ``r_d_max_inc_step`` set after construction (``change_brn_pars``) reaches both ramps.

The ramp is Avalanche's: after every training forward, ``r_max += r_max_inc_step · N`` while
``r_max < max_r_max`` (N = batch size, so the ramp counts samples, and may overshoot the maximum by less
than one step); ``d_max`` likewise. It runs on the device, with no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .._checks import check_float
from ..ops import batch_renorm_eval, batch_renorm_forward, batch_renorm_update_

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "recompute_brn_statistics"]


class _BatchRenorm(nn.Module):
    """Shared implementation; subclasses fix the accepted input ranks and the parameter shape."""

    _ranks: tuple[int, ...] = ()
    _kind = "BatchRenorm"

    def __init__(
        self,
        num_features: int,
        gamma: Tensor | None = None,
        beta: Tensor | None = None,
        running_mean: Tensor | None = None,
        running_var: Tensor | None = None,
        eps: float = 1e-5,
        momentum: float = 0.01,
        r_d_max_inc_step: float = 1e-4,
        r_max: float = 1.0,
        d_max: float = 0.0,
        max_r_max: float = 3.0,
        max_d_max: float = 5.0,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        self.num_features = num_features
        self.eps = check_float("eps", eps, low=0.0, low_open=True)
        self.momentum = check_float("momentum", momentum, low=0.0, high=1.0)
        self.r_d_max_inc_step = check_float("r_d_max_inc_step", r_d_max_inc_step, low=0.0)
        self.max_r_max = check_float("max_r_max", max_r_max, low=1.0)
        self.max_d_max = check_float("max_d_max", max_d_max, low=0.0)
        r_max = check_float("r_max", r_max, low=1.0)
        d_max = check_float("d_max", d_max, low=0.0)
        shape = self._param_shape()
        self.gamma = nn.Parameter(self._channel_init(gamma, "gamma", 1.0).reshape(shape))
        self.beta = nn.Parameter(self._channel_init(beta, "beta", 0.0).reshape(shape))
        if (running_mean is None) != (running_var is None):
            raise ValueError("give both running_mean and running_var, or neither")
        dtype = self.gamma.dtype
        if running_mean is None:
            mean = torch.zeros(num_features, dtype=dtype)
            std = torch.ones(num_features, dtype=dtype)
        else:
            mean = self._channel_init(running_mean, "running_mean", 0.0).to(dtype)
            var = self._channel_init(running_var, "running_var", 1.0).to(dtype)
            if bool((var < 0).any()) or not bool(torch.isfinite(var).all()):
                raise ValueError("running_var must be finite and >= 0")
            std = torch.sqrt(var + self.eps)
        device = self.gamma.device
        self.register_buffer("running_avg_mean", mean.reshape(shape).to(device))
        self.register_buffer("running_avg_std", std.reshape(shape).to(device))
        self.register_buffer("r_max", torch.tensor(r_max, dtype=dtype, device=device))
        self.register_buffer("d_max", torch.tensor(d_max, dtype=dtype, device=device))

    # -- construction helpers -----------------------------------------------------------------------
    def _param_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _channel_init(self, value: Tensor | None, name: str, fill: float) -> Tensor:
        if value is None:
            return torch.full((self.num_features,), fill, dtype=torch.float32)
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
        if value.numel() != self.num_features:
            raise ValueError(f"{name} has {value.numel()} elements, expected num_features={self.num_features}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        t = value.detach().clone().reshape(-1)
        return t if t.dtype in (torch.float32, torch.float64) else t.float()

    # -- Avalanche's attribute: one step for both ramps -----------------------------------------------
    @property
    def r_d_max_inc_step(self) -> float:
        """Per-sample increment of both ``r_max`` and ``d_max`` (Avalanche's constructor argument)."""
        return self.r_max_inc_step

    @r_d_max_inc_step.setter
    def r_d_max_inc_step(self, value: float) -> None:
        v = check_float("r_d_max_inc_step", value, low=0.0)
        self.r_max_inc_step = v
        self.d_max_inc_step = v

    # -- forward ----------------------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{self._kind} expects a tensor, got {type(x).__name__}")
        if x.dim() not in self._ranks:
            ranks = " or ".join(f"{r}-d" for r in self._ranks)
            raise ValueError(f"{self._kind} expects {ranks} input (N, C, ...), got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{self._kind}({self.num_features}) got an input with {x.shape[1]} channels "
                             f"(shape {tuple(x.shape)})")
        if not x.is_floating_point():
            raise TypeError(f"{self._kind} expects a floating-point input, got {x.dtype}")
        if self.gamma.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{self._kind} keeps its parameters and statistics in float32 or float64, got "
                            f"{self.gamma.dtype}; use autocast or cast only the other layers to low precision")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if not self.training:
            return batch_renorm_eval(x, self.gamma, self.beta, self.running_avg_mean, self.running_avg_std)
        y, mean, std, _, _ = batch_renorm_forward(x, self.gamma, self.beta, self.running_avg_mean,
                                                  self.running_avg_std, self.r_max, self.d_max, self.eps)
        n = x.shape[0]
        batch_renorm_update_(self.running_avg_mean, self.running_avg_std, self.r_max, self.d_max, mean, std,
                             self.momentum, self.r_max_inc_step * n, self.d_max_inc_step * n, self.max_r_max,
                             self.max_d_max)
        return y

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"r_d_max_inc_step={self.r_max_inc_step}, max_r_max={self.max_r_max}, max_d_max={self.max_d_max}")


class BatchRenorm2d(_BatchRenorm):
    """Batch Renormalization over (N, C, H, W) input, NCHW or channels-last, with Avalanche's constructor.

    Args:
        num_features: number of channels C.
        gamma, beta: initial scale and shift (C elements; copied). Default ones and zeros.
        running_mean, running_var: initial statistics, e.g. a BatchNorm's (C elements; copied). The running
            std starts at ``sqrt(running_var + eps)``. Default: mean 0, std 1.
        eps: added to the batch variance.
        momentum: rate of the running mean/std updates (Avalanche's, not BatchNorm's 0.1).
        r_d_max_inc_step: per-sample growth of ``r_max`` and ``d_max``.
        r_max, d_max: initial clamps of r and d (r_max >= 1, d_max >= 0).
        max_r_max, max_d_max: where the ramps stop.
    """

    _ranks = (4,)
    _kind = "BatchRenorm2d"

    def _param_shape(self) -> tuple[int, ...]:
        return (1, self.num_features, 1, 1)


class BatchRenorm1d(_BatchRenorm):
    """Batch Renormalization over (N, C) or (N, C, L) input; parameters and statistics of shape (C,)."""

    _ranks = (2, 3)
    _kind = "BatchRenorm1d"

    def _param_shape(self) -> tuple[int, ...]:
        return (self.num_features,)


@torch.no_grad()
def recompute_brn_statistics(module: nn.Module, batches: Iterable[Tensor]) -> int:
    """Re-estimates the running statistics of every BRN layer in ``module`` from ``batches`` (inputs of ``module``).

    Afterwards each layer's ``running_avg_mean`` / ``running_avg_std`` is the plain average, over the batches, of
    the batch mean and batch std (with ``eps``) it saw, every batch weighted alike. The running update is
    ``running += momentum · (batch - running)``, so momentum ``1/(k+1)`` on batch ``k`` (0-based) makes it a
    cumulative mean: batch 0 replaces the old statistics outright and nothing of them is left. The forwards run
    in train mode, so each layer sees its predecessors normalised with batch statistics as in training. The
    ``r_max`` / ``d_max`` ramps are held still (their steps set to 0) and every layer's momentum, ramp steps and
    every module's mode are restored afterwards. With no batch nothing changes. Returns the number of batches.
    """
    layers = [m for m in module.modules() if isinstance(m, _BatchRenorm)]
    if not layers:
        return 0
    saved = [(m.momentum, m.r_max_inc_step, m.d_max_inc_step) for m in layers]
    modes = [(m, m.training) for m in module.modules()]
    count = 0
    try:
        module.train()
        for m in layers:
            m.r_max_inc_step = m.d_max_inc_step = 0.0
        for xb in batches:
            for m in layers:
                m.momentum = 1.0 / (count + 1)
            module(xb)
            count += 1
    finally:
        for m, (mom, r_step, d_step) in zip(layers, saved, strict=True):
            m.momentum, m.r_max_inc_step, m.d_max_inc_step = mom, r_step, d_step
        for m, training in modes:
            m.training = training
    return count
