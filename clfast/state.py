"""Flat per-parameter state: one contiguous buffer per state kind plus a table of entries.

A regularisation plugin keeps several parameter-sized tensors per model parameter (importance Ω,
anchor θ*, ω, Fisher, scores...). :class:`FlatState` stores each *kind* as one contiguous 1-D
buffer, with a table of ``(name, offset, shape)`` entries: entry i occupies
``buffer[offset_i : offset_i + numel_i]``, the entries laid end to end in table order. Per-parameter
tensors are views (slices) of those buffers, and every ``clfast.ops`` op runs over the whole table
in one call given ``state.params(model)``, the model's parameters in table order.

Growth follows Avalanche's ``ParamData.expand`` (``avalanche-semantics.md`` §4.10): a parameter that
grows along one dimension keeps its old values in the leading block and gets zeros in the new part;
a shrink or growth along two dimensions is an error; parameters new to the model are appended.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["FlatState", "StateEntry"]

Init = Literal["zeros", "copy"]
NamedParams = nn.Module | Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]

_STATE_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class StateEntry:
    """One parameter's place in the flat buffers."""

    name: str
    offset: int
    shape: torch.Size

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())


def _named(source: NamedParams) -> list[tuple[str, Tensor]]:
    if isinstance(source, nn.Module):
        items = list(source.named_parameters())
    elif isinstance(source, Mapping):
        items = list(source.items())
    else:
        items = list(source)
    names = set()
    for name, t in items:
        if not isinstance(name, str) or not isinstance(t, Tensor):
            raise TypeError(f"expected (name: str, tensor: Tensor) pairs, got ({type(name)}, {type(t)})")
        if name in names:
            raise ValueError(f"parameter name {name!r} appears twice")
        names.add(name)
    return items


def _grown_shape_ok(old: torch.Size, new: torch.Size, name: str) -> None:
    """Avalanche's ParamData.expand rule: same rank, nothing shrinks, at most one dimension grows."""
    if len(old) != len(new):
        raise ValueError(f"parameter {name!r} changed rank from {tuple(old)} to {tuple(new)}; only growth "
                         "along one dimension is supported")
    grown = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if b != a]
    if any(new[i] < old[i] for i in grown):
        raise ValueError(f"parameter {name!r} shrank from {tuple(old)} to {tuple(new)}; only growth is supported")
    if len(grown) > 1:
        raise ValueError(f"parameter {name!r} grew along {len(grown)} dimensions ({tuple(old)} -> {tuple(new)}); "
                         "at most one may grow")


class FlatState:
    """Per-parameter state of several kinds, each kind one contiguous 1-D buffer.

    Args:
        params: a module (its ``named_parameters()``), a ``{name: tensor}`` mapping or
            ``(name, tensor)`` pairs; their order is the table order.
        kinds: the state kinds, as names (zero-filled) or a ``{kind: "zeros" | "copy"}`` mapping
            ("copy" fills the kind with the parameters' current values, e.g. an anchor θ*).
        dtype: float32 (default) or float64.
        device: where the buffers live; defaults to the first parameter's device (CPU if none).

    Example::

        state = FlatState(model, {"importance": "zeros", "anchor": "copy"})
        loss = loss + clfast.ops.quad_penalty(state.params(model), state["importance"], state["anchor"], 1.0)
    """

    def __init__(
        self,
        params: NamedParams,
        kinds: Sequence[str] | Mapping[str, Init],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if dtype not in _STATE_DTYPES:
            raise ValueError(f"FlatState dtype must be torch.float32 or torch.float64, got {dtype}")
        inits = self._normalise_kinds(kinds)
        items = _named(params)
        if device is None:
            device = items[0][1].device if items else torch.device("cpu")
        self._dtype = dtype
        self._device = torch.device(device)
        self._entries: list[StateEntry] = []
        offset = 0
        for name, t in items:
            self._entries.append(StateEntry(name, offset, torch.Size(t.shape)))
            offset += t.numel()
        self._index = {e.name: i for i, e in enumerate(self._entries)}
        self._numel = offset
        self._buffers: dict[str, Tensor] = {}
        for kind, init in inits.items():
            self._buffers[kind] = torch.zeros(offset, dtype=dtype, device=self._device)
            if init == "copy":
                self._copy_in(kind, [t for _, t in items], range(len(items)))

    # ---- inspection ----------------------------------------------------------------------------
    @staticmethod
    def _normalise_kinds(kinds: Sequence[str] | Mapping[str, Init]) -> dict[str, Init]:
        if isinstance(kinds, str):
            raise TypeError("kinds must be a sequence of names or a {kind: init} mapping, not a string")
        inits = dict(kinds) if isinstance(kinds, Mapping) else dict.fromkeys(kinds, "zeros")
        if not inits:
            raise ValueError("FlatState needs at least one state kind")
        for kind, init in inits.items():
            if init not in ("zeros", "copy"):
                raise ValueError(f"init of state kind {kind!r} must be 'zeros' or 'copy', got {init!r}")
        return inits

    @property
    def entries(self) -> tuple[StateEntry, ...]:
        """The table: one (name, offset, shape) entry per parameter, in buffer order."""
        return tuple(self._entries)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    @property
    def kinds(self) -> list[str]:
        return list(self._buffers)

    @property
    def numel(self) -> int:
        """Total number of elements of each buffer."""
        return self._numel

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, kind: str) -> Tensor:
        """The flat 1-D buffer of ``kind``."""
        try:
            return self._buffers[kind]
        except KeyError:
            raise KeyError(f"no state kind {kind!r}; kinds are {self.kinds}") from None

    def entry(self, name: str) -> StateEntry:
        try:
            return self._entries[self._index[name]]
        except KeyError:
            raise KeyError(f"no parameter {name!r} in the state table") from None

    def view(self, kind: str, name: str) -> Tensor:
        """The state of ``kind`` for parameter ``name``, shaped like the parameter (a view)."""
        e = self.entry(name)
        return self[kind][e.offset : e.offset + e.numel].view(e.shape)

    def views(self, kind: str) -> dict[str, Tensor]:
        """``{name: view}`` for every parameter, in table order."""
        buf = self[kind]
        return {e.name: buf[e.offset : e.offset + e.numel].view(e.shape) for e in self._entries}

    def params(self, source: NamedParams) -> list[Tensor]:
        """The tensors of ``source`` in table order, checked against the table's shapes.

        Raises ``KeyError`` if a table entry is missing from ``source`` and ``ValueError`` if a
        shape differs (call :meth:`grow` first when the model has grown).
        """
        lookup = dict(_named(source))
        out = []
        for e in self._entries:
            t = lookup.get(e.name)
            if t is None:
                raise KeyError(f"parameter {e.name!r} of the state table is missing from the model")
            if t.shape != e.shape:
                raise ValueError(f"parameter {e.name!r} has shape {tuple(t.shape)} but the state holds "
                                 f"{tuple(e.shape)}; call FlatState.grow(model) after the model grows")
            out.append(t)
        return out

    # ---- filling ------------------------------------------------------------------------------
    def _copy_in(self, kind: str, tensors: Sequence[Tensor], indices: Iterable[int]) -> None:
        buf = self._buffers[kind]
        with torch.no_grad():
            for i, t in zip(indices, tensors, strict=True):
                e = self._entries[i]
                buf[e.offset : e.offset + e.numel].copy_(t.detach().reshape(-1))

    def copy_from(self, kind: str, source: NamedParams) -> FlatState:
        """Fill ``kind`` with the current values of the parameters (e.g. the anchor θ* ← θ)."""
        tensors = self.params(source)
        self[kind]  # KeyError for unknown kinds
        self._copy_in(kind, tensors, range(len(tensors)))
        return self

    def zero_(self, kind: str) -> FlatState:
        self[kind].zero_()
        return self

    def add_kind(self, kind: str, init: Init = "zeros", source: NamedParams | None = None) -> Tensor:
        """Add a new state kind (zeros, or a copy of ``source``'s parameters) and return its buffer."""
        if kind in self._buffers:
            raise ValueError(f"state kind {kind!r} already exists")
        if init not in ("zeros", "copy"):
            raise ValueError(f"init must be 'zeros' or 'copy', got {init!r}")
        if init == "copy" and source is None:
            raise ValueError("add_kind(init='copy') needs the source parameters")
        tensors = self.params(source) if init == "copy" else None
        self._buffers[kind] = torch.zeros(self._numel, dtype=self._dtype, device=self._device)
        if tensors is not None:
            self._copy_in(kind, tensors, range(len(tensors)))
        return self._buffers[kind]

    # ---- growth -------------------------------------------------------------------------------
    def grow(self, source: NamedParams, init: Mapping[str, Init] | None = None) -> list[str]:
        """Follow the model's growth; returns the names that were added or grew.

        - A parameter whose shape grew along one dimension keeps its old values in the leading
          block; the new part is zero in every kind (Avalanche's ``ParamData.expand``).
        - A parameter new to the table is appended, zero-filled, or copied from the parameter for
          the kinds that ``init`` maps to "copy".
        - Table entries absent from ``source`` are kept as they are.

        Nothing changes if the check of any shape fails (``ValueError``).
        """
        init = dict(init or {})
        for kind, how in init.items():
            self[kind]
            if how not in ("zeros", "copy"):
                raise ValueError(f"init of state kind {kind!r} must be 'zeros' or 'copy', got {how!r}")
        items = _named(source)
        new_shapes: dict[str, torch.Size] = {e.name: e.shape for e in self._entries}
        changed: list[str] = []
        added: list[tuple[str, Tensor]] = []
        for name, t in items:
            if name in new_shapes:
                old = new_shapes[name]
                if t.shape != old:
                    _grown_shape_ok(old, torch.Size(t.shape), name)
                    new_shapes[name] = torch.Size(t.shape)
                    changed.append(name)
            else:
                added.append((name, t))
                changed.append(name)
        if not changed:
            return []
        old_entries = self._entries
        entries: list[StateEntry] = []
        offset = 0
        for e in old_entries:
            shape = new_shapes[e.name]
            entries.append(StateEntry(e.name, offset, shape))
            offset += shape.numel()
        for name, t in added:
            entries.append(StateEntry(name, offset, torch.Size(t.shape)))
            offset += t.numel()
        buffers = {}
        with torch.no_grad():
            for kind, old_buf in self._buffers.items():
                buf = torch.zeros(offset, dtype=self._dtype, device=self._device)
                for old_e, new_e in zip(old_entries, entries, strict=False):
                    src = old_buf[old_e.offset : old_e.offset + old_e.numel].view(old_e.shape)
                    dst = buf[new_e.offset : new_e.offset + new_e.numel].view(new_e.shape)
                    dst[tuple(slice(0, n) for n in old_e.shape)].copy_(src)
                buffers[kind] = buf
        self._entries = entries
        self._index = {e.name: i for i, e in enumerate(entries)}
        self._numel = offset
        self._buffers = buffers
        first_new = len(old_entries)
        for kind, how in init.items():
            if how == "copy" and added:
                self._copy_in(kind, [t for _, t in added], range(first_new, len(entries)))
        return changed

    # ---- device / dtype -----------------------------------------------------------------------
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> FlatState:
        """Move (and/or cast) every buffer in place; returns self."""
        if dtype is not None and dtype not in _STATE_DTYPES:
            raise ValueError(f"FlatState dtype must be torch.float32 or torch.float64, got {dtype}")
        device = self._device if device is None else torch.device(device)
        dtype = self._dtype if dtype is None else dtype
        self._buffers = {k: b.to(device=device, dtype=dtype) for k, b in self._buffers.items()}
        self._device = self._buffers[next(iter(self._buffers))].device
        self._dtype = dtype
        return self

    # ---- serialisation ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Table and buffers, as plain Python values and tensors (``torch.save``-able)."""
        return {
            "entries": [(e.name, e.offset, list(e.shape)) for e in self._entries],
            "buffers": {k: b.detach().clone() for k, b in self._buffers.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace table and buffers with ``state`` (kept on this state's device and dtype).

        The whole input is validated first; on error nothing changes.
        """
        try:
            raw_entries = state["entries"]
            raw_buffers = state["buffers"]
        except (KeyError, TypeError):
            raise ValueError("FlatState.load_state_dict expects a dict with 'entries' and 'buffers'") from None
        entries: list[StateEntry] = []
        offset = 0
        for item in raw_entries:
            name, off, shape = item
            shape = torch.Size(shape)
            if off != offset:
                raise ValueError(f"state entry {name!r} has offset {off}, expected {offset}")
            entries.append(StateEntry(str(name), offset, shape))
            offset += shape.numel()
        if len({e.name for e in entries}) != len(entries):
            raise ValueError("state entries have duplicate names")
        if not raw_buffers:
            raise ValueError("state has no buffers")
        buffers = {}
        for kind, buf in raw_buffers.items():
            if not isinstance(buf, Tensor) or buf.dim() != 1 or buf.numel() != offset:
                raise ValueError(f"buffer {kind!r} must be a 1-D tensor of {offset} elements, "
                                 f"got {getattr(buf, 'shape', type(buf))}")
            if not buf.is_floating_point():
                raise ValueError(f"buffer {kind!r} must be floating point, got {buf.dtype}")
            buffers[kind] = buf.detach().to(device=self._device, dtype=self._dtype).clone()
        self._entries = entries
        self._index = {e.name: i for i, e in enumerate(entries)}
        self._numel = offset
        self._buffers = buffers

    def __repr__(self) -> str:
        return (f"FlatState({len(self._entries)} params, {self._numel} elements, kinds={self.kinds}, "
                f"dtype={self._dtype}, device={self._device})")
