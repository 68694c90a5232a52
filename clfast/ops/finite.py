"""Finite-value checks: the ``nonfinite_flags`` op and :func:`check_finite`, which the state ops run before
they write so that a NaN or inf gradient cannot poison persistent state."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_finite", "nonfinite_flags"]

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


def check_finite(op: str, **named: Sequence[Tensor | None] | Tensor | None) -> None:
    """Raise ``ValueError`` naming the first argument (and index) that holds a NaN or inf.

    ``named`` maps argument names to a tensor, a list of tensors (``None`` entries skipped) or None.
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
    for idx in by_device.values():
        flags = _ops.nonfinite_flags([tensors[i] for i in idx]).tolist()
        for i, bad in zip(idx, flags, strict=True):
            if bad:
                raise ValueError(f"{op}: {labels[i]} contains NaN or inf")
