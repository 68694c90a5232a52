"""Mixed precision and gradient accumulation as the templates and plugins see them (``docs/large-models.md``).

:class:`Precision` is what ``precision=`` means for one strategy: the autocast context of the forward passes
and, for ``"16-mixed"``, a ``torch.amp.GradScaler`` with the bookkeeping the plugins need (the factor ``.grad``
holds over the true gradient at a given moment, and whether the scaler skips the coming step).

The functions below are how a plugin asks a strategy about them. They accept any strategy: one without these
attributes (an Avalanche strategy, a test double) trains in float32 without accumulation, and they say so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .._checks import check_choice

__all__ = ["PRECISIONS", "Precision", "autocast_of", "grad_scale_of", "precision_of", "step_is_due",
           "step_was_taken"]

#: The accepted ``precision=`` values (Lightning's names): float32; bfloat16 autocast; float16 autocast with a
#: GradScaler.
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
#: The smallest loss scale a pass retries an overflowing batch at.
_MIN_PASS_SCALE = 2.0**-24
_AUTOCAST_DTYPE = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class Precision:
    """Autocast and loss scaling for one strategy.

    Args:
        precision: one of :data:`PRECISIONS`.
        device: the training device (its type picks the autocast and the scaler's device).
        init_scale: the GradScaler's first scale (``"16-mixed"`` only; torch's default 2**16).

    The scaled backward leaves ``.grad`` at ``scale`` times the true gradient; :meth:`unscale_` divides it out
    (torch's fused check-and-unscale, one pass) and records whether any gradient is inf/NaN, in which case the
    scaler skips the step (:meth:`step`) and lowers the scale.
    """

    def __init__(self, precision: str, device: torch.device | str, init_scale: float = 2.0**16) -> None:
        self.name = check_choice("precision", precision, PRECISIONS)
        self.device_type = torch.device(device).type
        self.autocast_dtype: torch.dtype | None = _AUTOCAST_DTYPE[precision]
        self.scaler: torch.amp.GradScaler | None = (
            torch.amp.GradScaler(self.device_type, init_scale=init_scale) if precision == "16-mixed" else None)
        self._scaled = False  # .grad holds scaled gradients now (a scaled backward ran since the last unscale)
        #: Whether the last :meth:`unscale_` found an inf/NaN gradient (the scaler then skips the step).
        self.found_inf = False

    @property
    def enabled(self) -> bool:
        """Whether the forward runs under autocast."""
        return self.autocast_dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward passes' context: ``torch.autocast`` in the precision's dtype, or nothing for ``"32"``."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    @property
    def grad_scale(self) -> float:
        """The factor by which ``.grad`` exceeds the true gradient right now: the scaler's scale between a scaled
        backward and :meth:`unscale_`, else 1. (Reading it syncs with the device.)"""
        if self.scaler is None or not self._scaled:
            return 1.0
        return float(self.scaler.get_scale())

    def backward(self, loss: Tensor, retain_graph: bool = False) -> None:
        """``loss.backward()``, of ``loss`` times the scale under ``"16-mixed"``."""
        if self.scaler is None:
            loss.backward(retain_graph=retain_graph)
            return
        self.scaler.scale(loss).backward(retain_graph=retain_graph)
        self._scaled = True

    def unscale_(self, optimizer: torch.optim.Optimizer) -> bool:
        """Divide the scale out of the gradients of ``optimizer``'s parameters (once per step) and return whether
        they are all finite (False: the scaler will skip this step). A no-op returning True without a scaler."""
        if self.scaler is None or not self._scaled:
            return not self.found_inf
        self.scaler.unscale_(optimizer)
        self._scaled = False
        # GradScaler keeps its per-device inf flags for the step it is about to take; reading them here (one sync,
        # which its step would make anyway) tells the plugins before the update whether it will be skipped.
        flags = self.scaler._found_inf_per_device(optimizer)
        self.found_inf = bool(sum(float(v.item()) for v in flags.values()))
        return not self.found_inf

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """``optimizer.step()``, through the scaler (which skips it on inf/NaN and updates its scale) under
        ``"16-mixed"``. Returns whether the step ran."""
        if self.scaler is None:
            optimizer.step()
            return True
        self.unscale_(optimizer)
        skipped = self.found_inf
        self.scaler.step(optimizer)
        self.scaler.update()
        self.found_inf = False
        return not skipped

    def pass_backward(self, compute_loss: Callable[[], Tensor], params: Sequence[Tensor],
                      zero_grad: Callable[[], None]) -> None:
        """A plugin's own forward and backward (an importance pass): ``zero_grad()``, ``compute_loss()`` under
        autocast, its backward; ``params``' gradients then hold true gradients.

        Under ``"16-mixed"`` the loss is scaled as in training (so that float16 activation gradients do not
        underflow) and the scale divided out again; where that overflows (a pass has no step to skip), the batch is
        run again at half the scale, down to 2**-24. A gradient that stays inf/NaN is left in ``.grad``, where the
        pass's finite check refuses it. The training scaler's state is not changed. One host sync per batch."""
        if self.scaler is None:
            zero_grad()
            with self.autocast():
                loss = compute_loss()
            loss.backward()
            return
        scale = float(self.scaler.get_scale())
        while True:
            zero_grad()
            with self.autocast():
                loss = compute_loss()
            (loss * scale).backward()
            if _unscale_grads_(params, scale) or scale <= _MIN_PASS_SCALE:
                return
            scale /= 2.0

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (empty without one), for checkpoints."""
        return {} if self.scaler is None else self.scaler.state_dict()

    def check_state(self, state: Mapping[str, Any]) -> None:
        """A ``ValueError`` when :meth:`state_dict`'s output ``state`` does not fit this precision."""
        if self.scaler is None and state:
            raise ValueError(f"the checkpoint has a GradScaler state (\"16-mixed\"); this strategy trains with "
                             f"precision={self.name!r}")
        if self.scaler is not None and not state:
            raise ValueError(f"precision={self.name!r} needs a GradScaler state; the checkpoint has none")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (checked by :meth:`check_state`)."""
        self.check_state(state)
        if self.scaler is not None:
            self.scaler.load_state_dict(dict(state))


def _unscale_grads_(params: Sequence[Tensor], scale: float) -> bool:
    """``.grad /= scale`` for every parameter that has one (torch's fused check-and-unscale, the GradScaler's kernel,
    per device and dtype); returns whether all of them are finite."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    finite = True
    for (device, _), grads in groups.items():
        found_inf = torch.zeros(1, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, torch.full((1,), 1.0 / scale, device=device))
        finite = finite and not bool(found_inf.item())
    return finite


# -- what a plugin asks a strategy ----------------------------------------------------------------------------------
_FLOAT32 = Precision("32", "cpu")


def precision_of(strategy: Any) -> Precision:
    """The strategy's :class:`Precision` (float32 for a strategy without one)."""
    amp = getattr(strategy, "amp", None)
    return amp if isinstance(amp, Precision) else _FLOAT32


@contextlib.contextmanager
def autocast_of(strategy: Any) -> Iterator[None]:
    """The strategy's autocast context, for a plugin's own forward passes."""
    with precision_of(strategy).autocast():
        yield


def grad_scale_of(strategy: Any) -> float:
    """The factor by which ``.grad`` exceeds the true gradient now (1 unless scaled gradients are pending): a
    gradient a plugin adds to ``.grad`` is multiplied by it, one it reads is divided by it."""
    return precision_of(strategy).grad_scale


def step_is_due(strategy: Any) -> bool:
    """Whether this training iteration ends with an optimizer step (the last minibatch of an accumulation window;
    every iteration without accumulation)."""
    return bool(getattr(strategy, "step_this_iteration", True))


def step_was_taken(strategy: Any) -> bool:
    """Whether this iteration's gradients update the parameters: a step is due and the scaler does not skip it.
    Known from ``after_backward`` on (the scaler's inf check runs right after the step's last backward)."""
    return step_is_due(strategy) and not bool(getattr(strategy, "step_skipped", False))
