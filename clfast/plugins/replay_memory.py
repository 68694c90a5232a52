"""The replay memory's storage policies (``ReplayPlugin``, ``LatentReplayPlugin``): a fixed-size memory preallocated
on the training device and the rule that fills it after each experience (reservoir sampling or class-balanced
quotas), with validated state dicts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.data import default_collate

from .._checks import check_choice, check_int, is_int

__all__ = ["POLICIES", "ClassBalancedBuffer", "ReservoirSamplingBuffer", "StoragePolicy", "make_policy",
           "reservoir_slots"]


#: Format version of the state dicts of the plugin and of its storage policies.
STATE_VERSION = 1
#: Samples read from a dataset and collated at a time while the memory is updated.
_READ_CHUNK = 256
#: The largest seed: the generators are seeded with 2·seed and 2·seed + 1, which must fit in 64 bits.
_MAX_SEED = 2**62

Rows = tuple[Tensor, Tensor, Tensor]


def _generator(seed: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    # Two streams (storage choices, minibatch draws) per seed, none shared with a neighbouring seed's.
    return torch.Generator(device=device).manual_seed(2 * seed + stream)


def _on(t: Tensor, device: torch.device) -> bool:
    # torch.device("cuda") has no index while tensors placed there have one: it means the current device.
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


def _check_header(sd: Any, key: str, name: str) -> Mapping[str, Any]:
    if not isinstance(sd, Mapping):
        raise TypeError(f"{name}.load_state_dict expects a dict, got {type(sd).__name__}")
    if sd.get(key) != name or sd.get("version") != STATE_VERSION:
        raise ValueError(f"this state dict is for {sd.get(key)!r} version {sd.get('version')!r}, not {name} "
                         f"version {STATE_VERSION}")
    return sd


def _check_generator_state(state: Any, device_type: str, what: str) -> None:
    """A ``get_state()`` tensor that a generator of ``device_type`` accepts (tried on a scratch generator)."""
    if not isinstance(state, Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
        raise ValueError(f"{what} must be a 1-D uint8 generator state")
    if device_type == "cuda" and not torch.cuda.is_available():
        return  # cannot be tried here; ReplayPlugin reseeds with a warning when resumed without CUDA
    try:
        torch.Generator(device=device_type).set_state(state)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{what} is not a valid {device_type} generator state: {err}") from err


def reservoir_slots(seen: int, n_new: int, capacity: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Vitter's algorithm R over ``n_new`` more samples after ``seen``: (slots, sources), the ascending memory
    slots that change and the new sample (0-based among the new ones) each receives.

    Sample number n (0-based, over everything seen) goes into slot n while n < ``capacity``; after that it draws
    j = ⌊u·(n+1)⌋ (u uniform in [0, 1), float64, one draw per such sample in order, from ``generator``) and
    replaces slot j when j < ``capacity``. When several new samples land on one slot the last one wins, as in
    the sequential algorithm; every sample seen is then kept with probability capacity / (samples seen).
    """
    n = torch.arange(seen, seen + n_new, dtype=torch.long)
    slot = torch.where(n < capacity, n, -1)
    late = n >= capacity  # a contiguous tail, since n grows
    if bool(late.any()):
        u = torch.rand(int(late.sum()), generator=generator, dtype=torch.float64)
        j = torch.minimum((u * (n[late] + 1).double()).floor().long(), n[late])  # u·(n+1) may round up to n+1
        slot[late] = torch.where(j < capacity, j, -1)
    hit = slot >= 0
    src = torch.full((capacity,), -1, dtype=torch.long)
    src.scatter_reduce_(0, slot[hit], torch.arange(n_new)[hit], reduce="amax")  # the last sample per slot
    slots = torch.nonzero(src >= 0).squeeze(1)
    return slots, src[slots]


def _read(dataset: Any, indices: Sequence[int]) -> Rows:
    """(x, y, t) of ``dataset[i]`` for ``indices``, collated on the host (t = 0 for ``(x, y)`` items)."""
    collate = getattr(dataset, "collate_fn", None) or default_collate
    parts = []
    for start in range(0, len(indices), _READ_CHUNK):
        batch = collate([dataset[i] for i in indices[start:start + _READ_CHUNK]])
        if not isinstance(batch, (list, tuple)) or len(batch) < 2 or not isinstance(batch[0], Tensor):
            raise ValueError("replay needs a dataset of (x, y[, t]) items with tensor inputs")
        y = torch.as_tensor(batch[1]).long().reshape(-1)
        parts.append((batch[0], y, torch.as_tensor(batch[-1]).long().reshape(-1) if len(batch) > 2 else 0 * y))
    empty = (torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    return tuple(torch.cat(p) for p in zip(*parts, strict=True)) if parts else empty  # type: ignore[return-value]


def make_policy(what: str, policy: Any, policies: Mapping[str, Callable[..., Any]], mem_size: int,
                seed: int) -> StoragePolicy:
    """``policy`` as a storage policy of ``mem_size`` rows: a name from ``policies`` (built with ``seed``) or a
    :class:`StoragePolicy` of that size; anything else is a clear error naming the argument ``what``."""
    if isinstance(policy, str):
        return policies[check_choice(what, policy, tuple(policies))](mem_size, seed=seed)
    if not isinstance(policy, StoragePolicy):
        raise TypeError(f"{what} must be one of {tuple(policies)} or a StoragePolicy, got {type(policy).__name__}")
    if policy.max_size != mem_size:
        raise ValueError(f"{what}.max_size ({policy.max_size}) must equal mem_size ({mem_size})")
    return policy


class StoragePolicy:
    """Base of the storage policies: the preallocated memory and its state dict. A subclass decides what is kept:
    ``_update(dataset, device)``, ``_extra_state()`` (its state-dict entries) and ``_check_extra(sd, size, y)``
    (validates them; returns ``{attribute: value}`` to set when the state dict is loaded).

    The memory is three tensors of ``max_size`` rows, allocated on the training device at the first update that
    stores a sample, with that sample's shape and dtype: inputs ``x`` of shape ``(max_size, *sample_shape)``,
    targets ``y`` and task labels ``t`` (int64). Rows ``[0, size)`` are filled. An update reads and checks its new
    samples (at most ``max_size``, on the host) before it writes anything, then writes them with one copy per
    tensor: a dataset that cannot be read leaves the policy as it was. Later samples must have the first one's
    shape and dtype (``ValueError``). Samples come from ``strategy.experience.dataset`` as it is (train-stream
    datasets are in train mode): a random train transform is applied once, when the sample is stored.

    Args:
        max_size: the capacity in samples (>= 1).
        seed: seeds ``generator``, the source of the policy's random choices.
    """

    NAME: ClassVar[str]
    _update: Callable[[Any, torch.device], None]
    _extra_state: Callable[[], dict[str, Any]]
    _check_extra: Callable[[Mapping[str, Any], int, Tensor | None], dict[str, Any]]

    def __init__(self, max_size: int, *, seed: int = 0) -> None:
        self.max_size = check_int("max_size", max_size, low=1)
        self.seed = check_int("seed", seed, low=0, high=_MAX_SEED)
        self.generator = _generator(self.seed, 0)
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.t: Tensor | None = None
        self.size = 0

    def _allocate(self, like: Tensor, device: torch.device) -> None:
        self.x = torch.empty((self.max_size, *like.shape[1:]), dtype=like.dtype, device=device)
        self.y, self.t = (torch.empty(self.max_size, dtype=torch.long, device=device) for _ in range(2))

    def to_device(self, device: torch.device) -> None:
        """Move the memory to ``device`` (a loaded memory waits on the CPU); storage already there stays put."""
        if self.x is not None and not _on(self.x, device):
            self.x, self.y, self.t = (buf.to(device) for buf in (self.x, self.y, self.t))  # type: ignore[union-attr]

    def rows(self) -> Rows | None:
        """The filled rows (x, y, t) as views of the memory; None before anything was stored."""
        return None if self.x is None else (self.x[: self.size], self.y[: self.size], self.t[: self.size])  # type: ignore

    def check_sample(self, x: Tensor) -> None:
        """``ValueError`` unless the inputs ``x`` (a batch) have the memory's sample shape and dtype."""
        m = self.x
        if m is not None and x.shape[0] and (x.shape[1:] != m.shape[1:] or x.dtype != m.dtype):
            raise ValueError(f"samples of shape {tuple(x.shape[1:])} and dtype {x.dtype} do not match the memory's "
                             f"{tuple(m.shape[1:])}, {m.dtype}")

    def _write(self, slots: Tensor, rows: Rows, device: torch.device) -> None:
        if not len(slots):
            return
        if self.x is None:
            self._allocate(rows[0], device)
        self.to_device(device)
        dev_slots = slots.to(self.x.device)  # type: ignore[union-attr]
        for dst, src in zip((self.x, self.y, self.t), rows, strict=True):
            dst.index_copy_(0, dev_slots, src.to(dev_slots.device, dst.dtype))  # type: ignore[union-attr]

    def update(self, strategy: Any) -> None:
        """Store samples of ``strategy.experience.dataset`` (by the policy's rule) in memory on ``strategy.device``."""
        saved = self.generator.get_state()
        try:
            self._update(strategy.experience.dataset, strategy.device)
        except BaseException:
            self.generator.set_state(saved)  # a failed update draws nothing either
            raise

    def state_dict(self) -> dict[str, Any]:
        """The filled rows (copies on the CPU), the generator's state and the policy's bookkeeping."""
        rows = self.rows()
        x, y, t = (None, None, None) if rows is None else (r.detach().to("cpu", copy=True) for r in rows)
        return {"policy": self.NAME, "version": STATE_VERSION, "max_size": self.max_size, "seed": self.seed,
                "size": self.size, "x": x, "y": y, "t": t, "generator": self.generator.get_state(),
                **self._extra_state()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output, validated completely first: on a ``TypeError``/``ValueError``
        nothing changes. The rows go into the existing memory when it has their shape and dtype, else into new
        storage on the CPU, moved to the training device at the next experience."""
        commit = self._check_state(state_dict)
        x, y, t = commit.pop("_rows")
        self.generator.set_state(commit.pop("_generator"))
        if x is None:
            self.x = self.y = self.t = None  # nothing was ever stored
        else:
            if self.x is None or self.x.shape[1:] != x.shape[1:] or self.x.dtype != x.dtype:
                self._allocate(x, torch.device("cpu") if self.x is None else self.x.device)
            for dst, src in zip((self.x, self.y, self.t), (x, y, t), strict=True):
                dst[: len(src)].copy_(src)  # type: ignore[index]
        for name, value in commit.items():
            setattr(self, name, value)

    def _check_state(self, sd: Any) -> dict[str, Any]:
        sd = _check_header(sd, "policy", self.NAME)
        if sd.get("max_size") != self.max_size:
            raise ValueError(f"the saved memory has max_size {sd.get('max_size')!r}, this one {self.max_size}")
        size, x, y, t = sd.get("size"), sd.get("x"), sd.get("y"), sd.get("t")
        if not is_int(size) or not 0 <= size <= self.max_size:
            raise ValueError(f"bad memory size {size!r}")
        if x is None and (size or y is not None or t is not None):
            raise ValueError("the saved memory has rows but no inputs")
        if x is not None and not (all(isinstance(v, Tensor) for v in (x, y, t)) and x.dim() >= 1 and x.shape[0] == size
                                  and y.shape == t.shape == (size,) and y.dtype == t.dtype == torch.long):
            raise ValueError(f"the saved inputs, targets and task labels are not {size} rows (int64 labels)")
        _check_generator_state(sd.get("generator"), "cpu", "the policy's generator state")
        return {"size": size, "_rows": (x, y, t), "_generator": sd["generator"], **self._check_extra(sd, size, y)}


class ReservoirSamplingBuffer(StoragePolicy):
    """Reservoir sampling (Vitter's algorithm R, :func:`reservoir_slots`) over every training sample seen.

    After each experience its dataset is streamed in index order through algorithm R, so the memory is a uniform
    random subset of all the samples seen so far (``seen`` counts them), each kept with probability
    ``max_size / seen``. Avalanche's ``ReservoirSamplingBuffer`` draws the same distribution another way (random
    weights, the ``max_size`` largest kept); the draws differ. Arguments: those of :class:`StoragePolicy`.
    """

    NAME = "reservoir"

    def __init__(self, max_size: int, *, seed: int = 0) -> None:
        super().__init__(max_size, seed=seed)
        self.seen = 0

    def _update(self, dataset: Any, device: torch.device) -> None:
        slots, sources = reservoir_slots(self.seen, len(dataset), self.max_size, self.generator)
        rows = _read(dataset, sources.tolist())
        self.check_sample(rows[0])
        self._write(slots, rows, device)
        self.seen += len(dataset)
        self.size = min(self.seen, self.max_size)

    def _extra_state(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def _check_extra(self, sd: Mapping[str, Any], size: int, y: Tensor | None) -> dict[str, Any]:
        seen = sd.get("seen")
        if not is_int(seen) or seen < 0 or min(seen, self.max_size) != size:
            raise ValueError(f"seen = {seen!r} does not match the memory's size {size}")
        return {"seen": seen}


class ClassBalancedBuffer(StoragePolicy):
    """``max_size`` split evenly over the classes seen so far (Avalanche's ``ClassBalancedBuffer`` with
    ``adaptive_size=True``).

    Quotas: with C classes seen, each may hold ``max_size // C`` samples, and the ``max_size % C`` remaining slots
    go one each to the classes seen first (in order of first appearance; classes new in the same experience in
    ascending order), so the oldest classes keep an extra slot longest. After each experience the quotas are
    recomputed; a class over its quota keeps the samples it stored first and drops the others (the rows are then
    compacted to ``[0, size)``); each class of the experience with room left fills it with a uniform random subset
    of its samples there (drawn from ``generator``; a class seen before adds to what it kept). A class with fewer
    samples than its quota leaves the difference unused, as in Avalanche. Classes come from ``dataset.targets``
    (one pass over the items when there is none), which must agree with the items' own targets. Arguments: those
    of :class:`StoragePolicy`.
    """

    NAME = "class_balanced"

    def __init__(self, max_size: int, *, seed: int = 0) -> None:
        super().__init__(max_size, seed=seed)
        self.classes: list[int] = []  # in order of first appearance
        self._slots: dict[int, list[int]] = {}  # class -> its rows, in the order they were stored

    def quotas(self, classes: Sequence[int] | None = None) -> dict[int, int]:
        """Class -> how many samples it may hold, for ``classes`` (default: those seen) in order of appearance."""
        classes = self.classes if classes is None else classes
        q, r = divmod(self.max_size, max(len(classes), 1))
        return {c: q + (i < r) for i, c in enumerate(classes)}

    @property
    def class_slots(self) -> dict[int, list[int]]:
        """Class -> the memory rows holding it, in the order its samples were stored (a copy)."""
        return {c: list(self._slots[c]) for c in self.classes}

    def _update(self, dataset: Any, device: torch.device) -> None:
        targets = getattr(dataset, "targets", None)
        if targets is None:
            targets = [int(torch.as_tensor(dataset[i][1])) for i in range(len(dataset))]
        targets = torch.as_tensor(targets).long().reshape(-1)
        if targets.numel() != len(dataset):
            raise ValueError(f"dataset.targets has {targets.numel()} entries for {len(dataset)} samples")
        present = sorted(set(targets.tolist()))
        classes = self.classes + [c for c in present if c not in self._slots]
        quota = self.quotas(classes)
        slots = {c: self._slots.get(c, [])[: quota[c]] for c in classes}  # each keeps the samples stored first
        kept = sum(map(len, slots.values()))
        holes = sorted(set(range(kept)) - {s for v in slots.values() for s in v})
        movers = sorted(s for v in slots.values() for s in v if s >= kept)
        moved = dict(zip(movers, holes, strict=True))
        slots = {c: [moved.get(s, s) for s in v] for c, v in slots.items()}
        sources: list[int] = []
        for c in present:
            idx = torch.nonzero(targets == c).squeeze(1)
            pick = idx[torch.randperm(len(idx), generator=self.generator)[: quota[c] - len(slots[c])]].tolist()
            slots[c] += range(kept + len(sources), kept + len(sources) + len(pick))
            sources += pick
        rows = _read(dataset, sources)
        self.check_sample(rows[0])
        wrong = torch.nonzero(rows[1] != targets[torch.tensor(sources, dtype=torch.long)])
        if len(wrong):
            raise ValueError(f"sample {sources[int(wrong[0])]}: its item's target disagrees with dataset.targets")
        if movers:  # compaction: holes < kept <= movers, and index_select copies before index_copy_ writes
            self.to_device(device)
            src, dst = (torch.tensor(v, device=self.x.device) for v in (movers, holes))  # type: ignore[union-attr]
            for buf in (self.x, self.y, self.t):
                buf.index_copy_(0, dst, buf.index_select(0, src))  # type: ignore[union-attr]
        self._write(torch.arange(kept, kept + len(sources)), rows, device)
        self.classes, self._slots = classes, slots
        self.size = kept + len(sources)

    def _extra_state(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "class_slots": [list(self._slots[c]) for c in self.classes]}

    def _check_extra(self, sd: Mapping[str, Any], size: int, y: Tensor | None) -> dict[str, Any]:
        classes, lists = sd.get("classes"), sd.get("class_slots")
        if not (isinstance(classes, list) and isinstance(lists, list) and all(map(is_int, classes))
                and len(lists) == len(classes) == len(set(classes))
                and all(isinstance(v, list) and all(map(is_int, v)) for v in lists)):
            raise ValueError("classes must be distinct ints, each with a list of int slots")
        slots = {c: list(v) for c, v in zip(classes, lists, strict=True)}
        if sorted(s for v in slots.values() for s in v) != list(range(size)):
            raise ValueError(f"the class slots do not cover the memory's {size} rows exactly once")
        quota = self.quotas(classes)
        for c, v in slots.items():
            if len(v) > quota[c] or (y is not None and v and bool((y[torch.tensor(v)] != c).any())):
                raise ValueError(f"class {c}: its slots exceed its quota or hold other targets")
        return {"classes": classes, "_slots": slots}


#: The ``storage_policy`` names :class:`ReplayPlugin` accepts.
POLICIES: dict[str, type[StoragePolicy]] = {"reservoir": ReservoirSamplingBuffer, "class_balanced": ClassBalancedBuffer}
