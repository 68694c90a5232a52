"""Experience replay as Avalanche's ``ReplayPlugin``: a fixed-size memory of past training samples, preallocated on
the training device, filled after each experience by a storage policy (reservoir or class-balanced) and mixed into
every training minibatch by index selection, without a second DataLoader."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._checks import check_int
from ..training.plugins import SupervisedPlugin
from .replay_memory import (
    _MAX_SEED,
    POLICIES,
    STATE_VERSION,
    ClassBalancedBuffer,
    ReservoirSamplingBuffer,
    StoragePolicy,
    _check_generator_state,
    _check_header,
    _generator,
    make_policy,
)

__all__ = ["POLICIES", "ClassBalancedBuffer", "ReplayPlugin", "ReservoirSamplingBuffer", "StoragePolicy"]


class ReplayPlugin(SupervisedPlugin):
    """Experience replay: from the second experience on, every training minibatch is extended with samples drawn
    from a memory of past samples (Avalanche's ``ReplayPlugin``).

    * **Memory**: ``storage_policy`` (``"reservoir"``, the default, ``"class_balanced"``, or a
      :class:`StoragePolicy` with ``max_size == mem_size``), updated in ``after_training_exp`` from the
      experience's dataset as in Avalanche; its tensors are preallocated on ``strategy.device`` at the first update.
      Avalanche's default (experience-balanced) is not implemented: reservoir gives equal experiences equal shares.
    * **Minibatch**: in ``before_training_iteration``, once the memory holds n > 0 samples, k =
      min(``batch_size_mem``, n) distinct rows (``randperm(n)[:k]`` on the memory's device, from this plugin's
      generator) are appended to ``strategy.mbatch`` by ``index_select`` and ``torch.cat`` (``[x, y]`` or
      ``[x, y, t]``): current samples first, then memory samples, nothing through the host. ``mb_x``, ``mb_y``,
      ``mb_task_id``, the forward, the criterion, the training metrics and the later hooks all see the extended
      batch, as with Avalanche's ``ReplayDataLoader``, which cycles through a shuffled memory loader where here
      each minibatch draws afresh (a row may repeat between minibatches, never within one). The dataloader is
      kept, so an epoch has as many iterations as without replay. Put this plugin first for the other plugins'
      ``before_training_iteration`` (RWalk's ``separate_grad_pass``) to see the extended batch too.
    * **Regularisers**: the training gradients include the replayed samples (RWalk and SI read ``.grad``);
      MAS's importance and EWC's Fisher are passes over ``strategy.experience.dataset`` in ``after_training_exp``:
      they see the experience's own data only, as in Avalanche (§2.1, §9).
    * **State**: :meth:`state_dict` holds the memory rows, the policy's bookkeeping and both generators
      (``clfast.training.checkpoint`` saves it with the strategy). Seeded generators make a run repeat exactly on
      one device type (the minibatch draws differ between CPU and CUDA). Not ``supports_distributed``: every
      rank would replay the same rows.

    Args:
        mem_size: memory capacity in samples (>= 1).
        storage_policy: a name of ``POLICIES`` or a :class:`StoragePolicy` with ``max_size == mem_size``.
        batch_size_mem: memory samples per minibatch (>= 1); ``None``: the strategy's ``train_mb_size``.
        seed: seeds the minibatch draws, and the policy when it is given by name.
    """

    STATE_NAME = "ReplayPlugin"

    def __init__(self, mem_size: int = 200, *, storage_policy: str | StoragePolicy = "reservoir",
                 batch_size_mem: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.mem_size = check_int("mem_size", mem_size, low=1)
        self.seed = check_int("seed", seed, low=0, high=_MAX_SEED)
        self.batch_size_mem = None if batch_size_mem is None else check_int("batch_size_mem", batch_size_mem, low=1)
        self.storage_policy: StoragePolicy = make_policy("storage_policy", storage_policy, POLICIES, mem_size, seed)
        self._draws: torch.Generator | None = None  # made on the memory's device at the first draw
        self._loaded_draws: tuple[str, Tensor] | None = None  # (device type, state) from load_state_dict

    def _draw_generator(self, device: torch.device) -> torch.Generator:
        if self._draws is None or self._draws.device.type != device.type:
            self._draws = _generator(self.seed, 1, device)
            if self._loaded_draws is not None and self._loaded_draws[0] == device.type:
                self._draws.set_state(self._loaded_draws[1])
            elif self._loaded_draws is not None:
                warnings.warn(f"ReplayPlugin: the minibatch draws saved on {self._loaded_draws[0]} cannot continue "
                              f"on {device.type}; they restart from the seed", stacklevel=3)
            self._loaded_draws = None
        return self._draws

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """The memory (loaded, or made on another device) goes to the training device."""
        self.storage_policy.to_device(strategy.device)

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """Appends k = min(batch_size_mem, size) distinct memory rows to the minibatch (nothing while empty)."""
        policy, mb = self.storage_policy, strategy.mbatch
        n = policy.size
        if n == 0:
            return
        if len(mb) not in (2, 3) or not isinstance(mb[0], Tensor):
            raise ValueError(f"replay extends [x, y] or [x, y, t] minibatches of tensors, got {len(mb)} elements")
        policy.check_sample(mb[0])
        policy.to_device(mb[0].device)
        device = policy.x.device  # type: ignore[union-attr]
        k = min(self.batch_size_mem or strategy.train_mb_size, n)
        idx = torch.randperm(n, generator=self._draw_generator(device), device=device)[:k]
        x, y, t = (buf.index_select(0, idx) for buf in (policy.x, policy.y, policy.t))  # type: ignore[union-attr]
        out = [torch.cat((mb[0], x)), torch.cat((mb[1], y.to(mb[1].dtype)))]
        if len(mb) == 3:
            out.append(torch.cat((mb[2], t.to(mb[2].dtype))))
        strategy.mbatch = out

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """The storage policy takes its share of the experience's samples."""
        self.storage_policy.update(strategy)

    def state_dict(self) -> dict[str, Any]:
        """The policy's state (memory rows on the CPU, bookkeeping, generator) and the minibatch generator's."""
        draws = self._loaded_draws if self._draws is None else (self._draws.device.type, self._draws.get_state())
        return {"plugin": self.STATE_NAME, "version": STATE_VERSION, "mem_size": self.mem_size, "seed": self.seed,
                "batch_size_mem": self.batch_size_mem, "policy": self.storage_policy.state_dict(),
                "draws": None if draws is None else list(draws)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. All of it is validated before anything changes: a dict of another
        plugin, capacity or policy, or with inconsistent rows, raises ``ValueError`` (a non-dict ``TypeError``)
        and leaves the plugin as it was."""
        sd = _check_header(state_dict, "plugin", self.STATE_NAME)
        if sd.get("mem_size") != self.mem_size:
            raise ValueError(f"the saved memory has mem_size {sd.get('mem_size')!r}, this plugin {self.mem_size}")
        self.storage_policy._check_state(sd.get("policy"))
        draws = sd.get("draws")
        if draws is not None:
            if not isinstance(draws, (list, tuple)) or len(draws) != 2 or draws[0] not in ("cpu", "cuda"):
                raise ValueError("draws must be [device type, generator state] or None")
            _check_generator_state(draws[1], draws[0], "the minibatch generator state")
        self.storage_policy.load_state_dict(sd["policy"])  # validated above: cannot fail now
        self._draws = None
        self._loaded_draws = None if draws is None else (draws[0], draws[1].clone())
