"""``RegularizerPlugin``: what MAS, EWC, SI and RWalk share — the flat state that follows the model, the
quadratic penalty in two halves, and the ``state_dict`` format with its validate-then-commit loading.

The penalty λ·Σ Ω⊙(θ−θ*)² is applied in two halves (``docs/plugins.md``, "When the penalty gradient
is written"):

* ``before_backward``: its *value* is added to ``strategy.loss`` as a detached number (one fused read
  of θ, θ*, Ω), so the logged loss is Avalanche's;
* ``after_backward``: its *gradient* 2λΩ⊙(θ−θ*) is accumulated into each ``.grad`` (one fused pass).

Between the two, ``.grad`` holds the gradient of everything else in ``strategy.loss``: RWalk reads its
task gradient there, with no extra forward/backward.

With a :mod:`clfast.optim` optimizer, the plugins that allow it (``FUSES_INTO_STEP``: all four) hand the penalty
to the optimizer in ``before_update`` instead, so one fused pass applies its gradient and the step, and add the
value the step returns to ``strategy.loss`` in ``after_update`` (``docs/optim.md``); SI hands over its path
integral with it (:meth:`RegularizerPlugin._take_step_extras`), RWalk its own. Where the optimizer cannot take
the penalty, it is applied in ``before_update``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .. import distributed as dist
from .. import ops
from ..optim.flat import FlatStepOptimizer
from ..state import FlatState
from ..training.plugins import SupervisedPlugin
from ..training.precision import grad_scale_of, step_is_due
from .table import ParamTable

__all__ = ["STATE_VERSION", "RegularizerPlugin", "check_header", "names_as_set"]

#: Format version of the plugins' ``state_dict``.
STATE_VERSION = 1


class RegularizerPlugin(SupervisedPlugin, supports_distributed=True):
    """Base of the quadratic-penalty regularisers: λ·Σ Ω⊙(θ−θ*)² (+ λ·C) with Ω, θ* in a :class:`ParamTable`.

    A subclass says what differs through class attributes and small methods:

    * ``STATE_NAME``: the ``"plugin"`` entry of its state dict (a fixed name, not the runtime class, so
      that a subclass loads its parent's checkpoints);
    * ``KINDS``, ``STAND_IN``, ``WEIGHTS``, ``ANCHOR``: the table's state kinds, the kind that stands in
      for a parameter the model lacks, and the kinds read as Ω and θ* by the penalty;
    * :meth:`_penalty_active`, :meth:`_penalty_strength`, :meth:`_penalty_constant`, :meth:`_penalty_mask`;
    * :meth:`_follow_model` (how the table follows the model at experience start and after eval);
    * :meth:`_hparams`, :meth:`_extra_state`, :meth:`_check_state` for the state dict.

    How the importance is gathered and consolidated stays in the subclass.

    Args:
        select: ``select(model) -> [(name, param)]``, the parameters the table tracks (default: all).
    """

    STATE_NAME: ClassVar[str]
    #: Whether the penalty may go into a clfast.optim step.
    FUSES_INTO_STEP: ClassVar[bool] = True
    KINDS: ClassVar[Mapping[str, str]] = {"importance": "zeros", "anchor": "copy"}
    STAND_IN: ClassVar[str] = "anchor"
    WEIGHTS: ClassVar[str] = "importance"
    ANCHOR: ClassVar[str] = "anchor"

    def __init__(self, select: Callable[[nn.Module], list[tuple[str, Tensor]]] | None = None) -> None:
        super().__init__()
        self._table = ParamTable(self.KINDS, stand_in=self.STAND_IN, select=select)
        #: The NaN/inf checks of the per-iteration state updates (``docs/plugins.md``, "What is checked when").
        self._finite = ops.FiniteGuard()
        #: λ of this iteration's penalty while it waits for the optimizer step, else None.
        self._into_step: float | None = None

    def set_finite_check(self, mode: str = "auto", every: int | None = None) -> None:
        """When the NaN/inf checks of the state updates raise (``docs/plugins.md``, "What is checked when").

        ``mode``: ``"immediate"`` (before each update writes; one host sync per call on an accelerator),
        ``"deferred"`` (flags kept on the device, raised at the experience's end before anything is
        consolidated, or every ``every`` training iterations), or ``"auto"`` (the default: immediate on the
        CPU, deferred elsewhere). Pending deferred flags are dropped.
        """
        self._finite = ops.FiniteGuard(mode, every)

    @property
    def finite_check(self) -> ops.FiniteGuard:
        """The guard the state updates report to (its ``mode`` and ``every``)."""
        return self._finite

    def _pass_guard(self) -> ops.FiniteGuard:
        """A fresh guard, in this plugin's mode, for a pass over an experience's data: checked once at the end
        of the pass, before its result is committed (the pass writes only a temporary until then)."""
        return ops.FiniteGuard(self._finite.mode)

    def _views(self, kind: str) -> dict[str, Tensor] | None:
        """``kind`` per parameter name (views of the flat state), or None before there is state."""
        st = self._table.state
        return None if st is None else st.views(kind)

    # -- what differs between the regularisers --------------------------------------------------------
    def _penalty_active(self, strategy: Any) -> bool:
        """Whether the penalty applies in this iteration (default: from the second experience on, once
        there is state)."""
        return strategy.clock.train_exp_counter > 0 and self._table.state is not None

    def _penalty_strength(self, strategy: Any) -> float:
        """λ of the current iteration."""
        raise NotImplementedError

    def _penalty_constant(self) -> float:
        """C, added as λ·C to the reported value only (EWC's folded separate mode); 0 by default."""
        return 0.0

    def _penalty_mask(self) -> list[bool] | None:
        """Per table entry, whether it is in the penalty's gradient when its ``.grad`` is None
        (``clfast.ops.quad_penalty_grad_``'s ``penalised``); None: every entry."""
        return None

    def _follow_model(self, model: nn.Module) -> None:
        """Bring the table in step with ``model`` (grown or replaced parameters; new ones wait for the
        next consolidation)."""
        self._table.sync(model, add_new=False)

    # -- hooks ----------------------------------------------------------------------------------------
    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self._table.state is not None:
            self._follow_model(strategy.model)

    def after_eval(self, strategy: Any, **kwargs: Any) -> None:
        if self._table.state is not None:  # eval may have adapted (grown) the model
            self._follow_model(strategy.model)

    def _add_value(self, strategy: Any, value: Tensor, lam: float) -> None:
        """``strategy.loss += value + λ·C``, detached."""
        const = self._penalty_constant()
        if const:
            value = value + lam * const
        if self._table.sharded:  # FSDP2: this rank's shards' part of the sum (and of C); the loss is the whole
            value = dist.all_reduce_sum_(value.detach().to(device=dist.comm_device(), dtype=torch.float64))
        strategy.loss += value.detach().to(device=strategy.loss.device, dtype=strategy.loss.dtype)

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        """``strategy.loss += λ·Σ Ω⊙(θ−θ*)² + λ·C``, detached (one fused read of θ, θ*, Ω); with a clfast.optim
        optimizer, nothing yet (the penalty waits for ``before_update``)."""
        self._into_step = None
        if not self._penalty_active(strategy):
            return
        lam = self._penalty_strength(strategy)
        params = self._table.tensors(strategy.model)
        if (self.FUSES_INTO_STEP and params and step_is_due(strategy)
                and isinstance(getattr(strategy, "optimizer", None), FlatStepOptimizer)):
            self._into_step = lam
            return
        with torch.no_grad():
            value = ops.quad_penalty(params, self._table[self.WEIGHTS], self._table[self.ANCHOR], lam)
        self._add_value(strategy, value, lam)

    def after_backward(self, strategy: Any, **kwargs: Any) -> None:
        """``.grad += 2λΩ⊙(θ−θ*)`` in one fused pass (:func:`clfast.ops.quad_penalty_grad_` says what
        happens to parameters without a gradient), once per optimizer step (on the last minibatch of an
        accumulation window), in the units ``.grad`` holds (times the loss scale if it is still in)."""
        if not self._penalty_active(strategy) or self._into_step is not None or not step_is_due(strategy):
            return
        lam = self._penalty_strength(strategy)
        params = self._table.tensors(strategy.model)
        if params:
            ops.quad_penalty_grad_(params, self._table[self.WEIGHTS], self._table[self.ANCHOR],
                                   lam * grad_scale_of(strategy), penalised=self._penalty_mask())

    def before_update(self, strategy: Any, **kwargs: Any) -> None:
        """The waiting penalty goes into the optimizer's step; if the optimizer cannot take it (another
        penalty is in, the layout or a missing gradient differs), value and gradient are applied here."""
        lam = self._into_step
        if lam is None:
            return
        params = self._table.tensors(strategy.model)
        weights, anchor = self._table[self.WEIGHTS], self._table[self.ANCHOR]
        # A stand-in for a parameter the model lacks is in no param group, so take_penalty refuses that case too.
        optimizer = strategy.optimizer
        if optimizer.take_penalty(params, weights, anchor, lam):
            if self._take_step_extras(strategy, params):
                return
            optimizer.pop_penalty_value()  # what must go with the penalty could not: the penalty leaves the step too
        self._into_step = None
        scale = grad_scale_of(strategy)
        value = ops.quad_penalty_grad_(params, weights, anchor, lam * scale, penalised=self._penalty_mask())
        self._add_value(strategy, value / scale if scale != 1.0 else value, lam)

    def _take_step_extras(self, strategy: Any, params: list[Tensor]) -> bool:
        """Called once the optimizer took the penalty: hand it what else goes into the same step (SI: its path
        integral, which needs the penalised gradient). False if that was refused; the penalty then stays out of the
        step too. Default: nothing else, True."""
        return True

    def after_update(self, strategy: Any, **kwargs: Any) -> None:
        """The value of the penalty the step took (at the parameters before the step) joins ``strategy.loss``."""
        lam, self._into_step = self._into_step, None
        if lam is None:
            return
        value = strategy.optimizer.pop_penalty_value()
        if value is None:  # no step ran (the parameters are unchanged): the value as the unfused path reports it
            with torch.no_grad():
                value = ops.quad_penalty(self._table.tensors(strategy.model), self._table[self.WEIGHTS],
                                         self._table[self.ANCHOR], lam)
        self._add_value(strategy, value, lam)

    # -- state ----------------------------------------------------------------------------------------
    def _hparams(self) -> dict[str, Any]:
        """The constructor's hyper-parameters, for the record (``state_dict()["hparams"]``)."""
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        """State beyond the flat table (its entries go between ``"state"`` and ``"hparams"``)."""
        return {}

    def _check_state(self, sd: Mapping[str, Any], model: nn.Module | None) -> tuple[FlatState | None, dict[str, Any]]:
        """Validate everything of ``sd`` past its header, changing nothing: returns the flat state to
        install and ``{attribute: value}`` to set on commit. A subclass with extra entries checks them
        here, calling this (the table's check) where its checks need it."""
        return self._table.check_loadable(sd.get("state"), model), {}

    def state_dict(self) -> dict[str, Any]:
        """The flat state (with its table), the plugin's other state and its hyper-parameters.

        Pending deferred finite checks are read first: a state that may hold NaN or inf is not saved."""
        self._finite.check()
        return {"plugin": self.STATE_NAME, "version": STATE_VERSION, "state": self._table.state_dict(),
                **self._extra_state(), "hparams": self._hparams()}

    def load_state_dict(self, state_dict: Mapping[str, Any], model: nn.Module | None = None) -> None:
        """Restore :meth:`state_dict`'s output. With ``model``, the state must match its parameters.

        The input is validated completely first; on error (``ValueError``/``TypeError``) nothing changes.
        """
        sd = check_header(state_dict, self.STATE_NAME)
        state, attributes = self._check_state(sd, model)
        self._table.install(state)
        for name, value in attributes.items():
            setattr(self, name, value)
        self._finite.reset()  # what the deferred flags described has been replaced


def check_header(sd: Any, kind: str) -> Mapping[str, Any]:
    """Validate the common ``{"version", "plugin", ...}`` header of a plugin state dict."""
    if not isinstance(sd, Mapping):
        raise TypeError(f"{kind}.load_state_dict expects a dict, got {type(sd).__name__}")
    if sd.get("plugin") != kind:
        raise ValueError(f"this state dict is for {sd.get('plugin')!r}, not {kind}")
    if sd.get("version") != STATE_VERSION:
        raise ValueError(f"unsupported {kind} state version {sd.get('version')!r} (expected {STATE_VERSION})")
    return sd


def names_as_set(value: Any, what: str) -> set[str]:
    """A state dict's list of parameter names as a set (None: empty); anything else is a ``ValueError``."""
    if value is None:
        return set()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{what} must be a list of parameter names")
    out = set()
    for v in value:
        if not isinstance(v, str):
            raise ValueError(f"{what} must be a list of parameter names")
        out.add(v)
    return out
