"""``ParamTable``: the regularisers' flat per-parameter state (:class:`clfast.state.FlatState`), kept in step
with a model's named parameters (growth, replaced or missing parameters, DDP wrapping, FSDP2 shards)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..distributed import unwrap
from ..sharding import is_sharded, shard_view
from ..state import FlatState

__all__ = ["ParamTable", "kept"]


class ParamTable:
    """A :class:`FlatState` over (some of) a model's named parameters, kept in step with the model.

    * Growth (Avalanche's ``ParamData.expand``): a known parameter that grew keeps its state in the
      leading block, zeros elsewhere. Parameters new to the model join the table only when the caller
      says so (``sync(..., add_new=True)``, at consolidation), so, as in Avalanche, a parameter created
      after the state was taken is not regularised until the next consolidation.
    * Table entries missing from the model (or not selected any more) are kept; in the per-iteration
      calls they are stood in for by their ``stand_in`` view (e.g. the anchor), a constant with no
      gradient, so they add nothing.
    * A ``DistributedDataParallel`` (or ``DataParallel``) model is unwrapped first: the table holds the
      wrapped module's parameter names (no ``module.`` prefix), as in a single-process run.
    * Under FSDP2 (``DTensor`` parameters) the table holds this rank's shards: each parameter is stood for by
      its shard view (:func:`clfast.sharding.shard_view`, shapes are the local shards'), so the state is 1/W
      of the whole per rank.
    * ``tensors(model)`` returns the parameters in table order. It is cached per model object and
      refreshed by :meth:`sync` (called at experience boundaries and after eval, where model
      adaptation may replace or grow parameters).

    Args:
        kinds: the state kinds and their init (``"zeros"`` or ``"copy"`` of the parameters).
        stand_in: the kind whose view replaces a table entry that the model lacks.
        select: ``select(model) -> [(name, param)]``, the parameters to track (default: all).
    """

    def __init__(self, kinds: Mapping[str, str], stand_in: str,
                 select: Callable[[nn.Module], list[tuple[str, Tensor]]] | None = None) -> None:
        self.kinds = dict(kinds)
        self.stand_in = stand_in
        self.select = select or (lambda model: list(model.named_parameters()))
        self.state: FlatState | None = None
        self._model: nn.Module | None = None
        self._tensors: list[Tensor] = []
        self._active: list[bool] = []
        self._views: dict[int, tuple[Tensor, Tensor]] = {}  # id(DTensor parameter) -> (parameter, shard view)

    def _named(self, model: nn.Module) -> list[tuple[str, Tensor]]:
        """``select(model)``, each ``DTensor`` parameter replaced by its shard view (the same view object for
        the same parameter, its ``requires_grad`` refreshed)."""
        named = self.select(model)
        if not any(is_sharded(p) for _, p in named):
            return named
        views, out = {}, []
        for n, p in named:
            known = self._views.get(id(p))
            view = known[1] if known is not None and known[0] is p else shard_view(p)
            view.requires_grad_(p.requires_grad)
            views[id(p)] = (p, view)
            out.append((n, view))
        self._views = views
        return out

    @property
    def sharded(self) -> bool:
        """The table holds shards of ``DTensor`` parameters (FSDP2): sums and maxima over the whole state need a
        collective over the ranks."""
        return bool(self._views)

    # -- structure ----------------------------------------------------------------------------------
    def sync(self, model: nn.Module, *, add_new: bool, device: torch.device | None = None) -> list[str]:
        """Create the state, or grow it to follow ``model``; returns the names added or grown."""
        model = unwrap(model)
        named = self._named(model)
        if self.state is None:
            if not add_new:
                return []
            dev = device if device is not None else (named[0][1].device if named else torch.device("cpu"))
            self.state = FlatState(named, self.kinds, device=dev)
            changed = [n for n, _ in named]
        else:
            if named and device is None and named[0][1].device != self.state.device:
                self.state.to(named[0][1].device)  # the model moved: the state follows it
            elif device is not None and torch.device(device) != self.state.device:
                self.state.to(device)
            source = named if add_new else [(n, p) for n, p in named if n in self.state]
            init = {k: v for k, v in self.kinds.items() if v == "copy"}
            changed = self.state.grow(source, init=init)
        self._cache(model, named)
        return changed

    def _cache(self, model: nn.Module, named: list[tuple[str, Tensor]]) -> None:
        state = self.state
        self._model = model
        if state is None:
            self._tensors, self._active = [], []
            return
        lookup = dict(named)
        stand_in = state.views(self.stand_in)
        tensors, active = [], []
        for e in state.entries:
            p = lookup.get(e.name)
            if p is not None and p.shape != e.shape:
                raise ValueError(f"parameter {e.name!r} has shape {tuple(p.shape)} but the plugin state holds "
                                 f"{tuple(e.shape)}")
            if p is not None and p.device != state.device:
                raise ValueError(f"parameter {e.name!r} is on {p.device} but the plugin state is on "
                                 f"{state.device}; move the model before training")
            tensors.append(p if p is not None else stand_in[e.name])
            active.append(p is not None)
        self._tensors, self._active = tensors, active

    def tensors(self, model: nn.Module) -> list[Tensor]:
        """The model's parameters in table order (stand-ins for entries the model lacks)."""
        model = unwrap(model)
        if model is not self._model:
            self.sync(model, add_new=False)
        return self._tensors

    @property
    def active(self) -> list[bool]:
        """Per table entry: the model has this parameter (and it is selected)."""
        return self._active

    def new_params(self, model: nn.Module) -> list[tuple[str, Tensor]]:
        """Selected parameters of ``model`` not in the table yet, in the order ``sync(add_new=True)``
        appends them (after the existing entries)."""
        named = self._named(unwrap(model))
        if self.state is None:
            return named
        return [(n, p) for n, p in named if n not in self.state]

    def pending(self, model: nn.Module) -> tuple[int, list[Tensor]]:
        """Before a consolidation: the parameters in the order the table will hold them after
        ``sync(model, add_new=True)`` (the known entries, grown ones zero-padded first, then the new
        parameters), and the number of flat elements of the known part.

        Nothing new is added yet, so a pass over these parameters that fails leaves the table as it was.
        """
        if self.state is None:
            return 0, [p for _, p in self.new_params(model)]
        self.sync(model, add_new=False)
        return self.state.numel, self.tensors(model) + [p for _, p in self.new_params(model)]

    def copy_in(self, out: Tensor, values: Sequence[Tensor | None]) -> None:
        """Each table entry's slice of the flat ``out`` ← ``values[i]`` (one fused copy); entries whose
        value is None keep what they hold."""
        assert self.state is not None
        pairs = [(out[e.offset:e.offset + e.numel].view(e.shape), v.detach())
                 for e, v in zip(self.state.entries, values, strict=True) if v is not None]
        if pairs:
            with torch.no_grad():
                torch._foreach_copy_([d for d, _ in pairs], [v for _, v in pairs])

    def gather(self, model: nn.Module, out: Tensor) -> None:
        """``out`` ← the model's parameters in table order (entries the model lacks keep what they hold)."""
        self.copy_in(out, [p if a else None for p, a in zip(self.tensors(model), self._active, strict=True)])

    def copy_from_model(self, kind: str, model: nn.Module) -> None:
        """``kind`` ← the parameters' current values, for every entry the model has (one fused copy)."""
        assert self.state is not None
        self.gather(model, self.state[kind])

    def entry_slices(self, active: bool | None = None) -> list[slice]:
        """Flat slices of the table entries (only those with the given activity, if given)."""
        assert self.state is not None
        return [slice(e.offset, e.offset + e.numel) for e, a in zip(self.state.entries, self._active, strict=True)
                if active is None or a == active]

    def refresh_stand_ins(self) -> None:
        """Re-point the stand-ins after the state buffers were replaced."""
        if self._model is not None and self.state is not None:
            self._cache(self._model, self._named(self._model))

    def __getitem__(self, kind: str) -> Tensor:
        assert self.state is not None
        return self.state[kind]

    # -- (de)serialisation --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        """The flat state with its table (``FlatState.state_dict()``), or None before there is one."""
        return None if self.state is None else self.state.state_dict()

    def check_loadable(self, sd: Mapping[str, Any] | None, model: nn.Module | None) -> FlatState | None:
        """Validate ``sd`` (a ``FlatState.state_dict()`` or None) and return it as a new FlatState."""
        if sd is None:
            return None
        state = FlatState([], ["_"], device=self.state.device if self.state is not None else "cpu")
        state.load_state_dict(sd)
        if set(state.kinds) != set(self.kinds):
            raise ValueError(f"state kinds {sorted(state.kinds)} do not match this plugin's {sorted(self.kinds)}")
        if model is not None:
            model = unwrap(model)
            shapes = {n: p.shape for n, p in self._named(model)}
            missing = [e.name for e in state.entries if e.name not in shapes]
            if missing:
                raise ValueError(f"the state is for another model: parameters {missing[:5]} are not in the model")
            for e in state.entries:
                if shapes[e.name] != e.shape:
                    raise ValueError(f"the state is for another model: parameter {e.name!r} has shape "
                                     f"{tuple(shapes[e.name])} in the model, {tuple(e.shape)} in the state")
            state.to(next((p.device for _, p in self.select(model)), state.device))
        return state

    def install(self, state: FlatState | None) -> None:
        """Replace the state by one :meth:`check_loadable` returned (the model cache is dropped)."""
        self.state = state
        self._model = None
        self._tensors, self._active = [], []


@contextlib.contextmanager
def kept(flat: Tensor, slices: Sequence[slice]) -> Iterator[None]:
    """Within the block ``flat`` may be overwritten as a whole; afterwards the given slices (e.g. the
    entries of parameters the model no longer has) hold their old values again."""
    saved = [flat[s].clone() for s in slices]
    yield
    for s, old in zip(slices, saved, strict=True):
        flat[s].copy_(old)
