"""clfast.optim.SGD: torch.optim.SGD's arguments, defaults, update and state_dict, one fused pass per group."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from .._checks import check_bool, check_float
from ..ops.optim import sgd_step_
from .flat import FlatStepOptimizer, cohorts

__all__ = ["SGD"]


class SGD(FlatStepOptimizer):
    """Stochastic gradient descent with momentum, Nesterov and weight decay, as ``torch.optim.SGD``
    (same arguments, defaults and numbers; ``foreach``/``fused``/``differentiable`` are not taken).

    Per parameter with a gradient: g = ±grad + weight_decay·θ; with momentum b ← g on its first step, then
    b ← momentum·b + (1 − dampening)·g, and g = g + momentum·b (Nesterov) or b; θ ← θ − lr·g. The momentum
    buffers (``state[p]["momentum_buffer"]``) are views of one flat buffer per group.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False) -> None:
        defaults = dict(lr=check_float("lr", lr, low=0.0), momentum=check_float("momentum", momentum, low=0.0),
                        dampening=check_float("dampening", dampening),
                        weight_decay=check_float("weight_decay", weight_decay, low=0.0),
                        nesterov=check_bool("nesterov", nesterov), maximize=check_bool("maximize", maximize))
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, defaults)

    def state_kinds(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor | None]) -> None:
        momentum = group["momentum"]
        if momentum == 0:
            cohort = {False: grads}
            buffer = None
        else:
            buffer = self._buffers(group)["momentum_buffer"]
            first = [g is not None and self.state.get(p, {}).get("momentum_buffer") is None
                     for p, g in zip(params, grads, strict=True)]
            cohort = cohorts(first, grads)
            if any(first):  # the views are made only for parameters that start now
                views = self._views(group, "momentum_buffer")
                for i, p in enumerate(params):
                    if first[i]:
                        self.state[p]["momentum_buffer"] = views[i]
        penalty = self._penalty_args(group)
        for first_step, cohort_grads in cohort.items():
            value = sgd_step_(params, cohort_grads, buffer, lr=group["lr"], momentum=momentum,
                              dampening=group["dampening"], weight_decay=group["weight_decay"],
                              nesterov=group["nesterov"], maximize=group["maximize"], first=first_step, **penalty)
            self._record_penalty(group, value)
