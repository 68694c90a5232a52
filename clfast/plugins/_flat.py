"""Shared machinery of the regularisation plugins: flat per-parameter state over a model's named
parameters, the fused quadratic penalty, per-experience data passes and state (de)serialisation.

The penalty λ·Σ Ω⊙(θ−θ*)² is applied in two halves (``docs/plugins.md``, "When the penalty gradient
is written"):

* ``before_backward``: its *value* is added to ``strategy.loss`` as a detached number (one fused read
  of θ, θ*, Ω), so the logged loss is Avalanche's;
* ``after_backward``: its *gradient* 2λΩ⊙(θ−θ*) is accumulated into each ``.grad`` (one fused pass).

Between the two, ``.grad`` holds the gradient of everything else in ``strategy.loss``: RWalk reads its
task gradient there, with no extra forward/backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, default_collate

from .. import distributed as dist
from .. import ops
from ..distributed import unwrap
from ..state import FlatState
from ..training.utils import is_task_aware, module_modes  # noqa: F401 (re-exported)

_ops = torch.ops.clfast

#: Format version of the plugins' ``state_dict``.
STATE_VERSION = 1


# ---------------------------------------------------------------------------------------------------
# Flat state that follows a model
# ---------------------------------------------------------------------------------------------------


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

    # -- structure ----------------------------------------------------------------------------------
    def sync(self, model: nn.Module, *, add_new: bool, device: torch.device | None = None) -> list[str]:
        """Create the state, or grow it to follow ``model``; returns the names added or grown."""
        model = unwrap(model)
        named = self.select(model)
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
        named = self.select(unwrap(model))
        if self.state is None:
            return named
        return [(n, p) for n, p in named if n not in self.state]

    def copy_from_model(self, kind: str, model: nn.Module) -> None:
        """``kind`` ← the parameters' current values, for every entry the model has (one fused copy)."""
        assert self.state is not None
        views = self.state.views(kind)
        pairs = [(views[e.name], p) for e, p, a in zip(self.state.entries, self.tensors(model), self._active,
                                                        strict=True) if a]
        if pairs:
            with torch.no_grad():
                torch._foreach_copy_([v for v, _ in pairs], [p.detach() for _, p in pairs])

    def entry_slices(self, active: bool | None = None) -> list[slice]:
        """Flat slices of the table entries (only those with the given activity, if given)."""
        assert self.state is not None
        return [slice(e.offset, e.offset + e.numel) for e, a in zip(self.state.entries, self._active, strict=True)
                if active is None or a == active]

    def refresh_stand_ins(self) -> None:
        """Re-point the stand-ins after the state buffers were replaced."""
        if self._model is not None and self.state is not None:
            self._cache(self._model, self.select(self._model))

    def __getitem__(self, kind: str) -> Tensor:
        assert self.state is not None
        return self.state[kind]

    # -- (de)serialisation --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
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
            shapes = {n: p.shape for n, p in self.select(model)}
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
        self.state = state
        self._model = None
        self._tensors, self._active = [], []


# ---------------------------------------------------------------------------------------------------
# The quadratic penalty, in two halves
# ---------------------------------------------------------------------------------------------------

def penalty_value(params: Sequence[Tensor], importance: Tensor, anchor: Tensor, lam: float) -> Tensor:
    """λ·Σ Ω⊙(θ−θ*)², detached (one fused read of θ, θ*, Ω)."""
    with torch.no_grad():
        return ops.quad_penalty(params, importance, anchor, lam)


def add_penalty_grad_(params: Sequence[Tensor], importance: Tensor, anchor: Tensor, lam: float,
                      penalised: Sequence[bool] | None = None) -> None:
    """Accumulate 2λΩ⊙(θ−θ*) into each parameter's ``.grad`` in one fused pass
    (:func:`clfast.ops.quad_penalty_grad_`, which says what happens to parameters without a gradient)."""
    if params:
        ops.quad_penalty_grad_(params, importance, anchor, lam, penalised=penalised)


def add_to_loss(strategy: Any, value: Tensor | float) -> None:
    """``strategy.loss += value`` with a detached value (the reported loss includes the penalty)."""
    if isinstance(value, Tensor):
        value = value.detach().to(device=strategy.loss.device, dtype=strategy.loss.dtype)
    strategy.loss += value


# ---------------------------------------------------------------------------------------------------
# Per-experience passes over the experience's data
# ---------------------------------------------------------------------------------------------------


def experience_loader(strategy: Any, num_workers: int = 0) -> DataLoader:
    """The raw experience data (``strategy.experience.dataset``), unshuffled, at ``train_mb_size``.

    Under ``torch.distributed``, this rank's shard of it (an unshuffled ``DistributedSampler``: rank r
    gets samples r, r+W, …), ``train_mb_size`` per rank: batch k of all ranks together is samples
    [kWB, (k+1)WB) of the data, i.e. batch k of a single process at batch size W·B (``docs/distributed.md``).
    Passes over it average each batch's gradient over the ranks (:func:`sync_grads`) before using it.
    """
    dataset = strategy.experience.dataset
    collate = getattr(dataset, "collate_fn", None) or default_collate
    if dist.is_distributed():
        return DataLoader(dataset, batch_size=strategy.train_mb_size,
                          sampler=dist.distributed_sampler(dataset, shuffle=False), collate_fn=collate,
                          num_workers=num_workers)
    return DataLoader(dataset, batch_size=strategy.train_mb_size, shuffle=False, collate_fn=collate,
                      num_workers=num_workers)


def sync_grads(params: Sequence[Tensor]) -> None:
    """Average ``.grad`` over the ranks (what DDP does after backward), for passes run on the unwrapped
    model; a no-op in a single process."""
    dist.all_reduce_grads_(params)


def forward_batch(model: nn.Module, batch: Sequence[Any], device: torch.device) -> tuple[Any, Tensor]:
    """Forward one ``(x, y[, ..., t])`` batch; returns (output, y on the device).

    A task-aware model gets the batch's task labels (the last element of a batch with 3 or more
    elements). A 2-element batch has no task labels: a task-aware model then raises ``ValueError``
    (Avalanche would route by the class labels). A DDP-wrapped model is run unwrapped (no gradient
    all-reduce in backward: the passes call :func:`sync_grads` themselves).
    """
    model = unwrap(model)
    if len(batch) < 2:
        raise ValueError(f"expected (x, y[, t]) batches, got {len(batch)} elements")
    x = batch[0].to(device, non_blocking=True)
    y = batch[1].to(device, non_blocking=True)
    if is_task_aware(model):
        if len(batch) < 3:
            raise ValueError("the model is task-aware but the experience's batches have no task labels")
        return model(x, batch[-1].to(device, non_blocking=True)), y
    return model(x), y


def progress(iterable: Iterable[Any], enabled: bool, desc: str, total: int | None = None) -> Iterable[Any]:
    """A tqdm bar over ``iterable`` when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def strategy_num_workers(kwargs: Mapping[str, Any]) -> int:
    value = kwargs.get("num_workers", 0)
    return value if isinstance(value, int) and value >= 0 else 0


# ---------------------------------------------------------------------------------------------------
# state_dict helpers
# ---------------------------------------------------------------------------------------------------


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
