"""clfast.optim.Adam and AdamW: torch.optim's arguments, defaults, update and state_dict, one fused pass per group."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .._checks import check_bool, check_float
from ..ops.optim import adam_step_
from .flat import FlatStepOptimizer, cohorts

__all__ = ["Adam", "AdamW"]


class Adam(FlatStepOptimizer):
    """Adam, as ``torch.optim.Adam`` (same arguments, defaults and numbers; ``amsgrad=True`` and
    ``foreach``/``fused``/``capturable``/``differentiable`` are not taken).

    Per parameter with a gradient, at its step t: g = ±grad (+ weight_decay·θ, or θ ← θ·(1 − lr·weight_decay) with
    ``decoupled_weight_decay``: AdamW); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
    θ ← θ − lr/(1−β₁ᵗ) · m/(√v/√(1−β₂ᵗ) + eps). ``state[p]`` holds ``step`` (a float32 CPU scalar, as torch's)
    and ``exp_avg``/``exp_avg_sq``, views of one flat buffer per group and kind.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False) -> None:
        if check_bool("amsgrad", amsgrad):
            raise ValueError(f"{type(self).__name__}: amsgrad=True is not supported (its running maximum would be a "
                             "third state buffer); use torch.optim.Adam for it")
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of numbers, got {betas!r}")
        betas = (check_float("betas[0]", betas[0], low=0.0, high=1.0, high_open=True),
                 check_float("betas[1]", betas[1], low=0.0, high=1.0, high_open=True))
        defaults = dict(lr=check_float("lr", lr, low=0.0), betas=betas, eps=check_float("eps", eps, low=0.0),
                        weight_decay=check_float("weight_decay", weight_decay, low=0.0), amsgrad=False,
                        maximize=check_bool("maximize", maximize),
                        decoupled_weight_decay=check_bool("decoupled_weight_decay", decoupled_weight_decay))
        super().__init__(params, defaults)

    def state_kinds(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor | None]) -> None:
        buffers = self._buffers(group)
        views: dict[str, list[Tensor]] = {}  # made only when a parameter starts now
        steps: list[int] = []
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if g is None:
                steps.append(0)
                continue
            state = self.state[p]
            if "step" not in state:
                views = views or {kind: self._views(group, kind) for kind in self.state_kinds(group)}
                state["step"] = torch.tensor(0.0)
                for kind, kind_views in views.items():
                    state[kind] = kind_views[i]
            state["step"] += 1  # a CPU scalar, as torch.optim's (not capturable): no device sync
            steps.append(int(state["step"].item()))
        penalty = self._penalty_args(group)
        for step, cohort_grads in cohorts(steps, grads).items():
            value = adam_step_(params, cohort_grads, buffers["exp_avg"], buffers["exp_avg_sq"], lr=group["lr"],
                               step=step, betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"],
                               decoupled=group["decoupled_weight_decay"], maximize=group["maximize"], **penalty)
            self._record_penalty(group, value)


class AdamW(Adam):
    """AdamW, as ``torch.optim.AdamW``: :class:`Adam` with decoupled weight decay, default 1e-2."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, decoupled_weight_decay=True)
