"""Latent replay for AR1: the replay memory, the first-epoch staging of current latents, and the minibatch split;
and the §4.7 rules (how many new patterns, which ones, which rows they replace), which
:class:`clfast.plugins.LatentReplayPlugin`'s ``"ar1"`` policy shares.

Specification: ``docs/avalanche-semantics.md`` §4.6 (minibatch composition) and §4.7 (memory
update). What differs from Avalanche, on purpose (``docs/avalanche-differences.md``, "AR1"):

* Labels travel with their latents: a current latent is staged together with the label of the same minibatch
  row, so stored labels cannot be misaligned (Avalanche pairs shuffled-loader latents with dataset-order
  labels, §4.7's bug).
* Storage is preallocated: the memory holds ``rm_sz`` latents and labels, and the current experience's
  candidates are written into a staging buffer of ``h`` rows during the first epoch (Avalanche grows a CPU
  buffer of *every* current latent with ``torch.cat``, quadratic copying). The ``h`` new patterns are the same
  uniform random subset §4.7 draws, chosen up front as positions in loader order.
* The memory is reshuffled at the start of every epoch (one seeded permutation per epoch); Avalanche replays the
  same sequential slices in every epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .. import distributed as dist

__all__ = ["LatentReplayMemory", "LatentStaging", "minibatch_split", "new_pattern_count", "new_pattern_positions",
           "rank_minibatch_split", "replacement_slots"]

#: Format version of :meth:`LatentReplayMemory.state_dict`.
MEMORY_STATE_VERSION = 1

#: The memory goes to the CUDA training device only when it needs at most this fraction of the free memory.
DEVICE_FIT_FRACTION = 0.5


def minibatch_split(n_current: int, rm_sz: int, train_mb_size: int, replay: bool) -> tuple[int, int]:
    """(current patterns, replayed patterns) per minibatch, §4.6.

    Without replay (the first experience, or an empty memory) every minibatch holds ``train_mb_size`` current
    patterns. With replay: ``cur_bs = n_current // ((n_current + rm_sz) // train_mb_size)`` (the *nominal*
    ``rm_sz``, as Avalanche), then ``cur_bs = max(1, cur_bs)`` and ``replay_bs = max(0, train_mb_size - cur_bs)``.
    Avalanche raises ZeroDivisionError when ``n_current + rm_sz < train_mb_size``; here the rule is that
    the whole experience then forms one minibatch (``cur_bs = n_current``), topped up with replay to
    ``train_mb_size``.
    """
    for name, v in (("n_current", n_current), ("rm_sz", rm_sz), ("train_mb_size", train_mb_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    if train_mb_size < 1:
        raise ValueError(f"train_mb_size must be >= 1, got {train_mb_size}")
    if not replay:
        return train_mb_size, 0
    groups = (n_current + rm_sz) // train_mb_size
    cur_bs = n_current // groups if groups > 0 else n_current
    cur_bs = max(1, cur_bs)
    return cur_bs, max(0, train_mb_size - cur_bs)


def rank_minibatch_split(n_current: int, rm_sz: int, train_mb_size: int, replay: bool,
                         world_size: int) -> tuple[int, int]:
    """(current, replayed) patterns per minibatch *of one rank* when ``world_size`` ranks train with
    ``train_mb_size`` each (``docs/distributed.md``, "AR1").

    From the single-process split at the global batch ``W·B``, ``(cur, replay) = minibatch_split(n_current, rm_sz,
    W·B, replay)``: each rank takes ``max(1, cur // W)`` current patterns and tops up with replay to ``B``. When
    ``W`` divides ``cur`` the union over the ranks is exactly the single-process split at ``W·B``. ``W = 1`` is
    :func:`minibatch_split`.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if world_size == 1 or not replay:
        return minibatch_split(n_current, rm_sz, train_mb_size, replay)
    cur, _ = minibatch_split(n_current, rm_sz, world_size * train_mb_size, replay)
    cur = max(1, cur // world_size)
    return cur, max(0, train_mb_size - cur)


def new_pattern_count(rm_sz: int, exp_index: int, n_current: int, memory_size: int) -> int:
    """How many current patterns enter the memory after experience ``exp_index`` (0-based), §4.7.

    ``h = min(rm_sz // (exp_index + 1), n_current)``. After the first fill the memory's size is fixed and
    ``h`` random distinct slots are overwritten, so ``h`` is also capped by the memory's size.
    """
    h = min(rm_sz // (exp_index + 1), n_current)
    return min(h, memory_size) if memory_size > 0 else h


def new_pattern_positions(n_current: int, h: int, generator: torch.Generator | None) -> Tensor:
    """Which ``h`` of ``n_current`` patterns enter the memory, §4.7: ``randperm(n_current)[:h]`` (a uniform random
    subset, in draw order)."""
    return torch.randperm(n_current, generator=generator)[:h]


def replacement_slots(size: int, n: int, generator: torch.Generator | None) -> Tensor:
    """The memory rows ``n`` new patterns go to, §4.7: rows ``[0, n)`` of an empty memory (``size == 0``; they
    then fix its size at ``n``), else ``n`` random distinct rows of the ``size`` filled ones
    (``randperm(size)[:n]``)."""
    if size == 0:
        return torch.arange(n)
    if n > size:
        raise ValueError(f"{n} new patterns exceed the memory's size {size}")
    return torch.randperm(size, generator=generator)[:n]


def _check_device_type(device: torch.device, what: str) -> None:
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{what} must be a cpu or cuda device, got {device}")


class LatentReplayMemory:
    """A fixed-capacity memory of latent activations and their labels (§4.7), in preallocated storage.

    Storage (``rm_sz`` rows of the latent shape, plus int64 labels) is allocated at the first update, when the
    latent shape is known, on:

    * ``device`` when given (the strategy passes ``replay_device``);
    * otherwise the training device when the storage needs at most half of its free memory (CUDA), else
      CPU memory (pinned when CUDA is available), with a warning;
    * pinned CPU memory when ``pin_memory=True`` (needs CUDA): replay slices are copied to the training device
      with ``non_blocking=True``, so the copy overlaps the current patterns' forward.

    Args:
        rm_sz: capacity (>= 0).
        device: where the storage lives (None: decided at allocation, see above).
        pin_memory: keep the storage in pinned CPU memory (needs ``torch.cuda.is_available()``).
    """

    def __init__(self, rm_sz: int, device: str | torch.device | None = None, pin_memory: bool = False) -> None:
        if isinstance(rm_sz, bool) or not isinstance(rm_sz, int) or rm_sz < 0:
            raise ValueError(f"rm_sz must be an int >= 0, got {rm_sz!r}")
        if not isinstance(pin_memory, bool):
            raise TypeError(f"pin_memory must be a bool, got {type(pin_memory).__name__}")
        if pin_memory and not torch.cuda.is_available():
            raise ValueError("pin_memory=True keeps the replay memory in pinned CPU memory for asynchronous copies to "
                             "a CUDA device, but CUDA is not available; leave pin_memory=False")
        dev = None if device is None else torch.device(device)
        if dev is not None:
            _check_device_type(dev, "replay_device")
            if pin_memory and dev.type != "cpu":
                raise ValueError(f"pin_memory=True stores the memory in pinned CPU memory; it conflicts with "
                                 f"replay_device={dev}")
        self.rm_sz = rm_sz
        self.requested_device = dev
        self.pin_memory = pin_memory
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.size = 0

    # -- storage ------------------------------------------------------------------------------------------
    @property
    def allocated(self) -> bool:
        """True once the storage exists (the latent shape is known)."""
        return self.x is not None

    @property
    def device(self) -> torch.device | None:
        """Where the storage lives (None before allocation)."""
        return None if self.x is None else self.x.device

    @property
    def latent_shape(self) -> tuple[int, ...] | None:
        """The shape of one stored latent (None before allocation)."""
        return None if self.x is None else tuple(self.x.shape[1:])

    def nbytes(self, latent_shape: tuple[int, ...], dtype: torch.dtype) -> int:
        """Bytes of the storage for ``latent_shape`` latents of ``dtype`` (labels included)."""
        per = torch.Size(latent_shape).numel() * torch.empty((), dtype=dtype).element_size() + 8
        return self.rm_sz * per

    def resolve_device(self, train_device: torch.device, latent_shape: tuple[int, ...],
                       dtype: torch.dtype) -> torch.device:
        """The storage device for a given training device (see the class docstring)."""
        if self.pin_memory:
            return torch.device("cpu")
        if self.requested_device is not None:
            return self.requested_device
        if train_device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(train_device)
            need = self.nbytes(latent_shape, dtype)
            if need > DEVICE_FIT_FRACTION * free:
                warnings.warn(f"the replay memory ({need / 2**20:.0f} MiB) does not fit comfortably on {train_device} "
                              f"({free / 2**20:.0f} MiB free): it is kept in pinned CPU memory", stacklevel=3)
                self.pin_memory = True
                return torch.device("cpu")
        return train_device

    def allocate(self, latent_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        """Allocate empty storage of ``rm_sz`` latents (a no-op if it already has that shape, dtype, device)."""
        device = torch.device(device)
        if (self.x is not None and tuple(self.x.shape[1:]) == tuple(latent_shape) and self.x.dtype == dtype
                and self.x.device == device):
            return
        pin = self.pin_memory and device.type == "cpu"
        self.x = torch.empty((self.rm_sz, *latent_shape), dtype=dtype, device=device, pin_memory=pin)
        self.y = torch.empty((self.rm_sz,), dtype=torch.long, device=device, pin_memory=pin)
        self.size = 0

    def _wait_for_async_copies(self) -> None:
        # Pinned storage is read by asynchronous host->device copies; wait for them before rewriting it.
        if self.pin_memory and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    # -- §4.7 update ----------------------------------------------------------------------------------------
    def update(self, acts: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Store ``acts`` (the new patterns, already drawn at random) with their ``labels``; returns the slots.

        Into an empty memory (after the first experience) the patterns are written in order and fix the size;
        into a filled one they overwrite ``len(acts)`` random distinct slots (``randperm(size)[:len(acts)]``,
        drawn from ``generator``), §4.7. The storage must be allocated.
        """
        if self.x is None or self.y is None:
            raise RuntimeError("allocate the memory before updating it")
        n = int(acts.shape[0])
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        if tuple(acts.shape[1:]) != tuple(self.x.shape[1:]):
            raise ValueError(f"latents of shape {tuple(acts.shape[1:])} do not match the memory's "
                             f"{tuple(self.x.shape[1:])}")
        self._wait_for_async_copies()
        if self.size == 0 and n > self.rm_sz:
            raise ValueError(f"{n} patterns do not fit in a memory of {self.rm_sz}")
        slots = replacement_slots(self.size, n, generator)
        self.size = self.size or n
        if n:
            dev_slots = slots.to(self.x.device)
            self.x.index_copy_(0, dev_slots, acts.to(self.x.device, self.x.dtype))
            self.y.index_copy_(0, dev_slots, labels.to(self.y.device, torch.long))
        return slots

    def shuffle_(self, generator: torch.Generator | None = None) -> None:
        """Permute the stored patterns (latents and labels together) with one seeded permutation."""
        if self.x is None or self.y is None or self.size < 2:
            return
        self._wait_for_async_copies()
        perm = torch.randperm(self.size, generator=generator).to(self.x.device)
        self.x[: self.size] = self.x[: self.size].index_select(0, perm)
        self.y[: self.size] = self.y[: self.size].index_select(0, perm)

    def batch(self, start: int, stop: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Rows ``[start, stop)`` (clipped to the size: possibly empty) on ``device``; asynchronous from pinned
        storage. The memory must be allocated."""
        if self.x is None or self.y is None:
            raise RuntimeError("the memory is not allocated")
        start = min(max(start, 0), self.size)
        stop = min(max(stop, start), self.size)
        x, y = self.x[start:stop], self.y[start:stop]
        if x.device != device:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
        return x, y

    @property
    def labels(self) -> Tensor:
        """The labels of the stored patterns (a view of the storage; empty before allocation)."""
        if self.y is None:
            return torch.empty(0, dtype=torch.long)
        return self.y[: self.size]

    @property
    def latents(self) -> Tensor | None:
        """The stored latents (a view of the storage; None before allocation)."""
        return None if self.x is None else self.x[: self.size]

    # -- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The stored patterns (on the CPU) and the capacity."""
        return {"version": MEMORY_STATE_VERSION, "rm_sz": self.rm_sz, "size": self.size,
                "x": None if self.x is None else self.x[: self.size].detach().cpu().clone(),
                "y": None if self.y is None else self.y[: self.size].detach().cpu().clone(),
                "latent_shape": self.latent_shape,
                "dtype": None if self.x is None else str(self.x.dtype).replace("torch.", "")}

    @staticmethod
    def check_state(sd: Mapping[str, Any], rm_sz: int) -> None:
        """Validate a :meth:`state_dict` output for a memory of capacity ``rm_sz`` (ValueError otherwise)."""
        if not isinstance(sd, Mapping) or sd.get("version") != MEMORY_STATE_VERSION:
            raise ValueError("not a LatentReplayMemory state_dict (or an unknown version)")
        if sd.get("rm_sz") != rm_sz:
            raise ValueError(f"the saved memory has capacity {sd.get('rm_sz')}, this one {rm_sz}")
        size, x, y = sd.get("size"), sd.get("x"), sd.get("y")
        if not isinstance(size, int) or not 0 <= size <= rm_sz:
            raise ValueError(f"bad memory size {size!r}")
        if x is None:
            if size:
                raise ValueError("the saved memory has a size but no latents")
            return
        if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.shape[0] != size or y.shape != (size,):
            raise ValueError("the saved latents/labels do not match the saved size")

    def load_state_dict(self, sd: Mapping[str, Any], train_device: torch.device) -> None:
        """Restore :meth:`state_dict`'s output (validated first; storage on the device rules of the class)."""
        self.check_state(sd, self.rm_sz)
        x, y = sd["x"], sd["y"]
        if x is None:
            self.x = self.y = None
            self.size = 0
            return
        shape = tuple(x.shape[1:])
        dev = self.resolve_device(torch.device(train_device), shape, x.dtype)
        self.x = None
        self.allocate(shape, x.dtype, dev)
        assert self.x is not None and self.y is not None
        self.x[: sd["size"]].copy_(x)
        self.y[: sd["size"]].copy_(y)
        self.size = sd["size"]


class LatentStaging:
    """The current experience's candidates for the memory, collected during its first epoch (§4.6, §4.7).

    ``h`` of the experience's ``n_total`` patterns are drawn uniformly at random up front, as positions in
    loader order (``randperm(n_total)[:h]``); while the first epoch runs, :meth:`add` receives every minibatch's
    current latents *with the labels of the same minibatch* and copies the chosen rows into a preallocated
    buffer of ``h`` rows. The same subset distribution as §4.7's ``randperm(len(cur_acts))[:h]``, with labels
    that cannot be misaligned, and no buffer of every current latent.

    Args:
        n_total: patterns in the experience (the loader yields them all in the first epoch).
        h: how many to keep (``0 <= h <= n_total``).
        generator: the draw's generator.
        device: where the buffer lives (the memory's device).
    """

    def __init__(self, n_total: int, h: int, generator: torch.Generator | None, device: torch.device) -> None:
        if not 0 <= h <= n_total:
            raise ValueError(f"h must be in [0, n_total={n_total}], got {h}")
        self.n_total, self.h, self.device = n_total, h, torch.device(device)
        chosen = new_pattern_positions(n_total, h, generator)
        self.slot_of = torch.full((n_total,), -1, dtype=torch.long)
        self.slot_of[chosen] = torch.arange(h)
        self.x: Tensor | None = None
        self.y = torch.empty((h,), dtype=torch.long, device=self.device)
        self.written = torch.zeros((h,), dtype=torch.bool)
        self.position = 0
        self.latent_shape: tuple[int, ...] | None = None
        self.dtype: torch.dtype | None = None

    def add(self, acts: Tensor, labels: Tensor, positions: Tensor | None = None) -> None:
        """Stage the chosen rows of one minibatch's current latents ``acts`` and their ``labels``.

        ``positions``: the rows' positions in the draw's order (distributed AR1: their positions in the union of
        the ranks' minibatches); default the next ``len(acts)`` positions after the previous call's."""
        b = int(acts.shape[0])
        if labels.shape[0] != b:
            raise ValueError(f"{b} latents but {labels.shape[0]} labels")
        if self.latent_shape is None:
            self.latent_shape, self.dtype = tuple(acts.shape[1:]), acts.dtype
            self.x = torch.empty((self.h, *self.latent_shape), dtype=acts.dtype, device=self.device)
        if positions is None:
            if self.position + b > self.n_total:
                raise RuntimeError(f"the first epoch yielded more than the experience's {self.n_total} patterns")
            slots = self.slot_of[self.position: self.position + b]
            self.position += b
        else:
            pos = torch.as_tensor(positions, dtype=torch.long).reshape(-1).cpu()
            if pos.shape[0] != b:
                raise ValueError(f"{b} latents but {pos.shape[0]} positions")
            if b and (int(pos.min()) < 0 or int(pos.max()) >= self.n_total):
                raise RuntimeError(f"staging positions outside the experience's {self.n_total} patterns")
            slots = self.slot_of[pos]
        rows = torch.nonzero(slots >= 0).squeeze(1)
        if rows.numel() == 0:
            return
        dst = slots[rows]
        self.written[dst] = True
        assert self.x is not None
        src_rows = rows.to(acts.device, non_blocking=True)
        picked = acts.detach().index_select(0, src_rows)
        picked_y = labels.index_select(0, src_rows.to(labels.device))
        dst_dev = dst.to(self.device, non_blocking=True)
        self.x.index_copy_(0, dst_dev, picked.to(self.device, self.x.dtype))
        self.y.index_copy_(0, dst_dev, picked_y.to(self.device, torch.long))

    def merge_ranks_(self) -> None:
        """Under ``torch.distributed``: every rank staged the chosen rows it saw (disjoint positions); afterwards
        every rank holds all of them (one sum over the ranks of the zero-filled buffers, exact). A no-op in a
        single process. Every rank must call it, after the same number of :meth:`add` calls' worth of epochs."""
        if dist.world_size() <= 1 or self.x is None:
            return
        dev = dist.comm_device()
        written = self.written.to(self.device)
        x = torch.where(written.reshape(-1, *([1] * (self.x.dim() - 1))), self.x,
                        torch.zeros((), dtype=self.x.dtype, device=self.device)).to(dev)
        meta = torch.stack((torch.where(written, self.y, torch.zeros_like(self.y)).to(dev),
                            written.long().to(dev)))
        dist.all_reduce_sum_(x)
        dist.all_reduce_sum_(meta)
        self.x, self.y = x.to(self.device), meta[0].to(self.device)
        self.written = meta[1].cpu() > 0

    def collected(self) -> tuple[Tensor, Tensor] | None:
        """The staged (latents, labels), in draw order; only rows actually seen (an epoch stopped early sees
        fewer). None when nothing was staged."""
        if self.x is None:
            return None
        if bool(self.written.all()):
            return self.x, self.y
        keep = torch.nonzero(self.written).squeeze(1).to(self.device)
        return self.x.index_select(0, keep), self.y.index_select(0, keep)
