"""Finite-value checks: the ``nonfinite_flags`` op, :func:`check_finite`, which the state ops run before they
write so that a NaN or inf gradient cannot poison persistent state, and :class:`FiniteGuard`, which defers those
checks on an accelerator so that no per-iteration call waits for the device (``docs/plugins.md``, "What is
checked when")."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import check_choice, check_int

__all__ = ["FINITE_CHECK_MODES", "FiniteGuard", "check_finite", "nonfinite_flags"]

#: What a :class:`FiniteGuard` does with a check: ``"immediate"`` raises before the op writes (one host sync per
#: call on an accelerator), ``"deferred"`` records on the device and raises at :meth:`FiniteGuard.check`,
#: ``"auto"`` is immediate on the CPU (where reading the flags costs no sync) and deferred elsewhere.
FINITE_CHECK_MODES = ("auto", "immediate", "deferred")

_ops = torch.ops.clfast

# ---- nonfinite_flags ---------------------------------------------------------------------------------------------


@torch.library.register_fake("clfast::nonfinite_flags")
def _nonfinite_flags_fake(tensors):
    return tensors[0].new_empty((len(tensors),), dtype=torch.bool)


def nonfinite_flags(tensors: Sequence[Tensor]) -> Tensor:
    """One bool per tensor: True where the tensor holds a NaN or an infinity (one fused pass)."""
    tensors = list(tensors)
    if not tensors:
        return torch.zeros(0, dtype=torch.bool)
    return _ops.nonfinite_flags(tensors)


# ---- check_finite (on nonfinite_flags) ---------------------------------------------------------------------------

_CHECKED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check_finite(op: str, *, guard: FiniteGuard | None = None,
                 **named: Sequence[Tensor | None] | Tensor | None) -> None:
    """Raise ``ValueError`` naming the first argument (and index) that holds a NaN or inf.

    ``named`` maps argument names to a tensor, a list of tensors (``None`` entries skipped) or None.
    With a ``guard`` whose mode defers on these tensors' device, nothing is read back: the flags are
    recorded on the device and :meth:`FiniteGuard.check` raises later.
    Skipped under ``torch.compile`` tracing, where a data-dependent raise would break the graph.
    """
    if torch.compiler.is_compiling():
        return
    labels: list[str] = []
    tensors: list[Tensor] = []
    for name, value in named.items():
        if value is None:
            continue
        if isinstance(value, Tensor):
            value = [value]
            fmt = "{name}"
        else:
            fmt = "{name}[{i}]"
        for i, t in enumerate(value):
            # Only tensors the ops accept can hold a NaN worth reporting here; any other dtype (or layout) is
            # left for the op itself to refuse, with the argument's own name.
            if isinstance(t, Tensor) and t.numel() > 0 and t.dtype in _CHECKED_DTYPES:
                labels.append(fmt.format(name=name, i=i))
                tensors.append(t.detach().contiguous())
    if not tensors:
        return
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    for device, idx in by_device.items():
        flags = _ops.nonfinite_flags([tensors[i] for i in idx])
        if guard is not None and guard.defers_on(device):
            guard.record(op, tuple(labels[i] for i in idx), flags)
            continue
        for i, bad in zip(idx, flags.tolist(), strict=True):
            if bad:
                raise ValueError(f"{op}: {labels[i]} contains NaN or inf")


# ---- FiniteGuard: checks now, or flags kept on the device until a boundary ---------------------------------------


class FiniteGuard:
    """Where the finite checks of a plugin's state updates go: raised at once, or kept on the device.

    Pass it as ``check_finite=`` to a state update. In deferred mode each call ORs its per-tensor flags
    into a device-side record (no ``.tolist()``/``.item()``, so no host sync); :meth:`check` reads the
    records once and raises the ``ValueError`` the immediate check would have raised, for the first
    argument found bad since the guard was last cleared. The update itself has already run: the state
    it wrote may hold the NaN or inf. A guard that found something stays tripped (every later
    :meth:`check` raises again) until :meth:`reset`, so poisoned state cannot be consolidated silently.

    Args:
        mode: one of :data:`FINITE_CHECK_MODES`.
        every: with deferred checks, also :meth:`check` every ``every`` calls of :meth:`tick` (one sync
            each time); None: only where the owner calls :meth:`check` (experience boundaries).
    """

    def __init__(self, mode: str = "auto", every: int | None = None) -> None:
        self.mode = check_choice("finite_check", mode, FINITE_CHECK_MODES)
        self.every = None if every is None else check_int("finite_check_every", every, low=1)
        self._records: dict[tuple[str, tuple[str, ...], torch.device], Tensor] = {}
        self._ticks = 0

    def defers_on(self, device: torch.device) -> bool:
        """Whether checks of tensors on ``device`` are deferred."""
        return self.mode == "deferred" or (self.mode == "auto" and device.type != "cpu")

    def record(self, op: str, labels: tuple[str, ...], flags: Tensor) -> None:
        """OR ``flags`` (one bool per label, on the device) into the record of ``(op, labels)``."""
        key = (op, labels, flags.device)
        acc = self._records.get(key)
        if acc is None:
            self._records[key] = flags.clone()
        else:
            acc.logical_or_(flags)

    @property
    def pending(self) -> bool:
        """Whether deferred flags were recorded since the last clear (known on the host: no sync)."""
        return bool(self._records)

    def check(self) -> None:
        """Read the deferred flags (one host sync per record) and raise ``ValueError`` on the first bad one."""
        for (op, labels, _), acc in self._records.items():
            for label, bad in zip(labels, acc.tolist(), strict=True):
                if bad:
                    raise ValueError(f"{op}: {label} contains NaN or inf (deferred check: found in a call since the "
                                     "last check; the state that call and later ones wrote may hold NaN or inf)")
        self._records.clear()

    def tick(self) -> None:
        """One iteration done: :meth:`check` if ``every`` iterations have passed since the last tick-check."""
        self._ticks += 1
        if self.every is not None and self._ticks % self.every == 0 and self._records:
            self.check()

    def reset(self) -> None:
        """Forget every record (the state they describe has been rebuilt or replaced)."""
        self._records.clear()
        self._ticks = 0
