"""FlatStepOptimizer: the common half of clfast's optimizers, a ``torch.optim.Optimizer`` whose per-parameter state
tensors are views of one flat buffer per parameter group and state kind.

The flat buffers are what the fused step ops read and write (the layout contract of :mod:`clfast.ops`: the group's
parameters in order, each owning a slice). The per-parameter state (``self.state[p]``) holds views of them, so
``state_dict()`` is torch.optim's format and one saved by torch.optim loads here (and the other way round);
after ``load_state_dict`` the buffers are rebuilt from the loaded state at the next step.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["FlatStepOptimizer"]


class FlatStepOptimizer(torch.optim.Optimizer):
    """Base class: a subclass names its flat state kinds (:meth:`state_kinds`) and steps one group
    (:meth:`_step_group`) with the buffers of :meth:`_buffers`.

    State dtype: float64 when a parameter of the group is float64, else float32 (also for bfloat16 and float16
    parameters, whose state torch.optim keeps in their own dtype).
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        # Per group index: (the param ids the buffers were laid out for, {kind: flat buffer}).
        self._flat: dict[int, tuple[tuple[int, ...], dict[str, Tensor]]] = {}
        # The penalty taken into the next step: (group index, Ω, θ*, λ), or None.
        self._penalty: tuple[int, Tensor, Tensor, float] | None = None
        #: λ·Σ Ω⊙(θ−θ*)² at the parameters before the last step that took a penalty (0-dim, detached).
        self.penalty_value: Tensor | None = None
        # The path integral taken into the next step: (group index, acc, θ_prev, penalised), or None.
        self._path: tuple[int, Tensor, Tensor, bool] | None = None
        # Whether the last step since take_path_integral ran it.
        self._path_done = False

    # -- a penalty inside the step ------------------------------------------------------------------------------------
    def take_penalty(self, params: list[Tensor], importance: Tensor, anchor: Tensor, lam: float) -> bool:
        """Take the quadratic penalty λ·Σ Ω⊙(θ−θ*)² into the next :meth:`step`: its gradient 2λΩ⊙(θ−θ*) is added
        to each gradient inside the fused pass, and its value lands in :attr:`penalty_value`.

        ``importance`` and ``anchor`` are flat over ``params`` (the layout contract of :mod:`clfast.ops`).
        Accepted (True) only when ``params`` is exactly one parameter group's list, in order, every one of them
        has a gradient now, the flat dtype is the group's state dtype and no other penalty is pending; else
        False, and the caller applies the penalty itself (``docs/optim.md``)."""
        if self._penalty is not None:
            return False
        index = self.group_taking(params, importance)
        if index is None:
            return False
        self._penalty = (index, importance, anchor, float(lam))
        return True

    def take_path_integral(self, params: list[Tensor], acc: Tensor, prev: Tensor, *, penalised: bool) -> bool:
        """Take the path integral of SI and RWalk into the next :meth:`step`: ``acc −= g⊙(θ_new − θ_old)`` and
        ``prev ← θ_new`` inside the fused pass, with g the ``.grad`` the step reads (RWalk's task gradient) or,
        with ``penalised``, that plus the gradient of the penalty taken with :meth:`take_penalty` (SI's ``.grad``
        in the unfused order). Accepted (True) on the conditions of :meth:`take_penalty` (with ``acc`` as the flat
        buffer), and, with ``penalised``, only after a penalty was taken for the same group;
        :meth:`pop_path_integral` then says whether a step ran it."""
        if self._path is not None:
            return False
        index = self.group_taking(params, acc)
        if index is None or (penalised and (self._penalty is None or self._penalty[0] != index)):
            return False
        self._path = (index, acc, prev, bool(penalised))
        self._path_done = False
        return True

    def pop_path_integral(self) -> bool:
        """Whether a step ran the path integral taken with :meth:`take_path_integral`, once (False when no step ran:
        a step skipped by a GradScaler, say). A path integral still pending is dropped."""
        done, self._path, self._path_done = self._path_done, None, False
        return done

    def group_taking(self, params: list[Tensor], flat: Tensor) -> int | None:
        """The index of the parameter group whose list is exactly ``params`` (in order), when every one of them has
        a gradient now and ``flat`` has the group's state dtype; else None (a penalty or path integral over them
        cannot go into the step)."""
        index = next((i for i, group in enumerate(self.param_groups) if len(group["params"]) == len(params)
                      and all(a is b for a, b in zip(group["params"], params, strict=True))), None)
        if index is None or any(p.grad is None for p in params) or flat.dtype != self._state_dtype(params):
            return None
        return index

    def pop_penalty_value(self) -> Tensor | None:
        """The value of the penalty the last step took, once; None when no step ran since :meth:`take_penalty`
        (a step skipped by a GradScaler, say). A penalty still pending is dropped."""
        self._penalty = None
        value, self.penalty_value = self.penalty_value, None
        return value

    def _penalty_args(self, group: dict[str, Any]) -> dict[str, Any]:
        """The step op's penalty and path-integral arguments for this group (none unless taken for it)."""
        out: dict[str, Any] = {}
        if self._penalty is not None and self.param_groups[self._penalty[0]] is group:
            _, importance, anchor, lam = self._penalty
            out.update(importance=importance, anchor=anchor, lam=lam)
        if self._path is not None and self.param_groups[self._path[0]] is group:
            _, acc, prev, penalised = self._path
            out.update(path_acc=acc, path_prev=prev, path_penalised=penalised)
            self._path_done = True
        return out

    def _record_penalty(self, group: dict[str, Any], value: Tensor) -> None:
        """Adds one fused call's value to :attr:`penalty_value` (a group may take several calls: cohorts)."""
        if self._penalty is not None and self.param_groups[self._penalty[0]] is group:
            self.penalty_value = value if self.penalty_value is None else self.penalty_value + value

    @staticmethod
    def _state_dtype(params: list[Tensor]) -> torch.dtype:
        return torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32

    # -- what a subclass says ----------------------------------------------------------------------------------------
    def state_kinds(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The per-parameter state tensors of this group that live in flat buffers."""
        raise NotImplementedError

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor | None]) -> None:
        raise NotImplementedError

    # -- the step ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One step of every parameter group; ``closure`` (re-evaluates the model, returns the loss) as in torch."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._penalty is not None:
            self.penalty_value = None
        try:
            self._step_groups()
        finally:
            self._penalty = self._path = None  # a penalty and a path integral are taken for one step only
        return loss

    def _step_groups(self) -> None:
        for group in self.param_groups:
            params = list(group["params"])
            grads = [p.grad for p in params]
            for i, (p, g) in enumerate(zip(params, grads, strict=True)):
                if g is not None and g.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients (params[{i}])")
                if g is not None and not p.is_contiguous():
                    raise ValueError(f"{type(self).__name__}: parameter {i} of a group (shape {tuple(p.shape)}) is not "
                                     "contiguous; the fused step needs contiguous parameters")
            if any(g is not None for g in grads):
                self._step_group(group, params, grads)

    # -- the flat buffers --------------------------------------------------------------------------------------------
    def _buffers(self, group: dict[str, Any]) -> dict[str, Tensor]:
        """The group's flat buffers, laid out for its current parameter list (rebuilt from ``self.state`` when the
        list changed or a state_dict was loaded; a parameter without state gets zeros)."""
        index = next(i for i, g in enumerate(self.param_groups) if g is group)
        params = list(group["params"])
        key = tuple(id(p) for p in params)
        cached = self._flat.get(index)
        if cached is not None and cached[0] == key:
            return cached[1]
        dtype = self._state_dtype(params)
        device = params[0].device
        total = sum(p.numel() for p in params)
        buffers = {kind: torch.zeros(total, dtype=dtype, device=device) for kind in self.state_kinds(group)}
        offset = 0
        for p in params:
            state = self.state.get(p)
            for kind, flat in buffers.items():
                view = flat[offset:offset + p.numel()].view_as(p)
                if state is not None and state.get(kind) is not None:
                    view.copy_(state[kind])
                    state[kind] = view
            offset += p.numel()
        self._flat[index] = (key, buffers)
        return buffers

    def _views(self, group: dict[str, Any], kind: str) -> list[Tensor]:
        """Each parameter's slice of the group's ``kind`` buffer, shaped like it."""
        flat, offset, out = self._buffers(group)[kind], 0, []
        for p in group["params"]:
            out.append(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._flat.clear()  # the loaded per-parameter tensors are copied into new buffers at the next step


def cohorts(values: list[Any], grads: list[Tensor | None]) -> dict[Any, list[Tensor | None]]:
    """Per distinct value among the params that have a grad: the grad list with None for every other param (the
    fused ops skip None). Usually one cohort (every param stepped as often); params that joined later form another.
    """
    out: dict[Any, list[Tensor | None]] = defaultdict(lambda: [None] * len(grads))
    for i, (v, g) in enumerate(zip(values, grads, strict=True)):
        if g is not None:
            out[v][i] = g
    return dict(out)
