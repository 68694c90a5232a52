"""Latent replay for any strategy and any backbone: ``LatentReplayPlugin`` splits the model at a named module
(:func:`clfast.nn.split_at`), keeps a preallocated memory of latents (the input of that module) with their labels,
and appends replayed latents to the upper part's input in every training forward, as AR1 does (§4.6, §4.7) but
as a plugin, so that Naive and the regularisers get it too.

How the forward changes without the strategy overriding ``forward``: in ``before_forward`` the plugin puts a
stand-in module in ``strategy.model`` that computes ``upper(cat(lower(x), replayed latents))`` and, as soon as it
has run once, puts the original model back. The stand-in registers the model's own parameters, buffers and
children under the model's names, so that ``named_parameters()`` and ``state_dict()`` are the model's even in that
window (the regularisers key their state by parameter name). Everywhere else (penalties, importance passes, eval,
checkpoints) ``strategy.model`` is the original object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from .._checks import check_bool, check_int
from ..nn.latent_model import adopt_names
from ..nn.split import split_at
from ..training.plugins import SupervisedPlugin
from ..training.utils import is_task_aware, module_modes
from .latent_memory import new_pattern_count, new_pattern_positions, replacement_slots
from .replay_memory import _MAX_SEED, POLICIES, StoragePolicy, _check_generator_state, _generator, _read, make_policy

__all__ = ["LATENT_POLICIES", "AR1Buffer", "LatentReplayPlugin"]

#: Format version of :meth:`LatentReplayPlugin.state_dict`.
STATE_VERSION = 1


class AR1Buffer(StoragePolicy):
    """AR1's memory update (§4.7) as a storage policy: after the i-th update (0-based, one per experience),
    ``h = min(max_size // (i + 1), n)`` of the experience's n samples, a uniform random subset, are stored. The
    first update writes them to rows ``[0, h)`` and fixes the memory's size at h (a first experience smaller than
    ``max_size`` leaves the rest unused, as in AR1); every later one overwrites h random distinct rows. The rules
    are those of :mod:`clfast.plugins.latent_memory`, which AR1 itself uses. Arguments: those of
    :class:`StoragePolicy`."""

    NAME = "ar1"

    def __init__(self, max_size: int, *, seed: int = 0) -> None:
        super().__init__(max_size, seed=seed)
        #: Updates done so far (the i of the next one).
        self.updates = 0

    def _update(self, dataset: Any, device: torch.device) -> None:
        n = len(dataset)
        h = new_pattern_count(self.max_size, self.updates, n, self.size)
        sources = new_pattern_positions(n, h, self.generator)
        slots = replacement_slots(self.size, h, self.generator)
        rows = _read(dataset, sources.tolist())
        self.check_sample(rows[0])
        self._write(slots, rows, device)
        self.size = self.size or h
        self.updates += 1

    def _extra_state(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def _check_extra(self, sd: Mapping[str, Any], size: int, y: Tensor | None) -> dict[str, Any]:
        updates = sd.get("updates")
        # The first update stores at least one sample (experiences are never empty), and the size never shrinks.
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0 or (updates == 0) != (size == 0):
            raise ValueError(f"updates = {updates!r} does not match the memory's size {size}")
        return {"updates": updates}


#: The ``policy`` names :class:`LatentReplayPlugin` accepts.
LATENT_POLICIES: dict[str, type[StoragePolicy]] = {"ar1": AR1Buffer, **POLICIES}


class _Split:
    """``split_at(model, latent_layer)`` and what the plugin derives from it: the parameters and modules that
    only the lower part uses (frozen from the second experience), and the stand-in module."""

    def __init__(self, model: nn.Module, latent_layer: str) -> None:
        if is_task_aware(model):
            raise ValueError(f"LatentReplayPlugin needs a model called as model(x); {type(model).__name__} takes "
                             f"task labels")
        self.model = model
        self.signature = _module_ids(model)
        self.lower, self.upper = split_at(model, latent_layer)
        own = {id(m) for m in model.modules()}
        upper_modules = {id(m) for m in self.upper.modules()}
        upper_params = {id(p) for p in self.upper.parameters()}
        # A module the forward calls on both sides of the split stays trainable (through its upper use).
        self.lower_only_params = [p for p in self.lower.parameters() if id(p) not in upper_params]
        self.lower_only_modules = nn.ModuleList(
            [m for m in self.lower.modules() if id(m) in own and id(m) not in upper_modules])
        self.stand_in = _ReplayForward(model, self)

    def follows(self, model: nn.Module) -> bool:
        """Whether this split is still of ``model`` (same object, same modules: no adaptation replaced one)."""
        return model is self.model and _module_ids(model) == self.signature

    def freeze(self) -> None:
        """The lower part's own parameters stop training (``requires_grad=False``: no gradient, so neither the
        loss nor a penalty nor the optimizer's momentum or weight decay moves them)."""
        for p in self.lower_only_params:
            p.requires_grad_(False)

    @torch.no_grad()
    def encode(self, x: Tensor, device: torch.device) -> Tensor:
        """The latents of the inputs ``x``: the lower part in eval mode, as the frozen part computes them."""
        with module_modes(self.lower, training=False):
            return self.lower(x.to(device, non_blocking=True))


def _module_ids(model: nn.Module) -> tuple[int, ...]:
    return tuple(id(m) for m in model.modules())


class _ReplayForward(nn.Module):
    """``strategy.model`` during one training forward: ``upper(cat(lower(x), replayed))``, the lower part under
    ``no_grad`` and in eval mode once frozen. It holds the model's parameters, buffers and children under the
    model's names, and calls ``restore`` (which puts the model back in ``strategy.model``) when it has run."""

    def __init__(self, model: nn.Module, split: _Split) -> None:
        super().__init__()
        adopt_names(self, model)
        # Plain attributes, not submodules: the parts would add names the model does not have.
        self._parts = SimpleNamespace(split=split)
        self._replay: Tensor | None = None
        self._frozen = False
        self._restore: Callable[[], None] | None = None

    def arm(self, replay: Tensor | None, frozen: bool, training: bool, restore: Callable[[], None]) -> None:
        """Set up the next call."""
        self._replay, self._frozen, self._restore = replay, frozen, restore
        self.training = training

    def disarm(self) -> None:
        """Forget the next call's setup (its replay rows, the restore callback)."""
        self._replay = self._restore = None

    def forward(self, x: Tensor) -> Any:
        split: _Split = self._parts.split
        replay, restore = self._replay, self._restore
        self.disarm()
        try:
            if self._frozen:
                with torch.no_grad(), module_modes(split.lower_only_modules, training=False):
                    latent = split.lower(x)
            else:
                latent = split.lower(x)
            if replay is not None:
                if replay.shape[1:] != latent.shape[1:]:
                    raise ValueError(f"LatentReplayPlugin: the memory holds latents of shape {tuple(replay.shape[1:])}"
                                     f" but the model's latents now have shape {tuple(latent.shape[1:])}")
                # Under autocast the current latents may be in half precision; the memory keeps the full one.
                latent = torch.cat((latent, replay.to(latent.dtype)))
            return split.upper(latent)
        finally:
            if restore is not None:
                restore()


class _EncodedDataset:
    """An experience's dataset as a storage policy reads it, with the inputs replaced by their latents: items are
    the dataset's own, and :meth:`collate_fn` (which the policies' reader uses) encodes a collated batch in one
    call of the lower part. So a stored latent and its labels come from the very same item."""

    def __init__(self, dataset: Any, encode: Callable[[Tensor], Tensor]) -> None:
        self.dataset, self.encode = dataset, encode
        self._collate = getattr(dataset, "collate_fn", None) or default_collate

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]

    @property
    def targets(self) -> Any:
        """The dataset's ``targets`` (None when it has none: the class-balanced policy then reads the items)."""
        return getattr(self.dataset, "targets", None)

    def collate_fn(self, items: list[Any]) -> list[Any]:
        batch = list(self._collate(items))
        batch[0] = self.encode(batch[0])
        return batch


class LatentReplayPlugin(SupervisedPlugin):
    """Latent replay at a named module, for any strategy (Naive, the regularisers) and any model that
    :func:`clfast.nn.split_at` can split there.

    * **Split**: at ``before_training_exp`` the model is split so that ``latent_layer`` starts the upper part;
      the latents are that module's input. The split is made again when model adaptation replaced a module.
    * **Freezing**: with ``freeze_lower_after_first``, from the second experience on the parameters only the
      lower part uses get ``requires_grad=False`` (left so afterwards, as AR1 leaves ``lat_features``), and in
      training the lower part runs under ``no_grad`` with its own modules in eval mode (BatchNorm statistics and
      dropout fixed). Without it the lower part trains on the current samples throughout, and stored latents go
      stale as it changes.
    * **Memory**: ``mem_size`` latents with their targets and task labels, preallocated on the training device at
      the first update (``policy``: a name of :data:`LATENT_POLICIES` or a :class:`StoragePolicy` with
      ``max_size == mem_size``). At ``after_training_exp`` the policy picks samples of
      ``strategy.experience.dataset`` and stores their latents, computed from the items by the lower part at the
      end of the experience in eval mode (what the frozen part computes from then on), with the labels of the
      same items: ``"ar1"`` AR1's per-experience update (§4.7, :class:`AR1Buffer`), ``"reservoir"`` reservoir
      sampling over every sample seen, ``"class_balanced"`` equal quotas per class seen.
    * **Minibatch**: in ``before_forward``, once the memory holds n > 0 latents, k = min(``replay_mb_size``, n)
      distinct rows (``randperm(n)[:k]`` from this plugin's CPU generator, the rows gathered on the device) join
      the forward after the current samples' latents; ``mbatch``'s targets (and task labels, for ``[x, y, t]``
      batches) are extended to match, ``mb_x`` stays the current inputs. The criterion, the training metrics and
      the later hooks see ``mb_output`` and ``mb_y`` with the replayed rows. Each minibatch of a gradient
      accumulation window replays its own rows; under autocast the replayed latents are cast to the current ones'
      dtype.
    * **Regularisers**: their penalties and gradients cover the replayed rows' loss; frozen parameters have no
      gradient, so a penalty never moves them. MAS's and EWC's importance passes run ``strategy.model`` on the
      experience's own data, without replay. MAS's pass runs in train mode: BatchNorm layers of the frozen lower
      part then update their running statistics once per experience, and earlier latents no longer match them
      exactly.
    * **State**: :meth:`state_dict` holds the memory, the policy's bookkeeping and the generators (checkpoints
      resume). Freezing follows ``strategy.clock``. Not ``supports_distributed``: the stand-in forward bypasses a
      ``DistributedDataParallel`` wrapper. The model must take ``model(x)`` (not task labels).

    Args:
        latent_layer: the dotted module name where the upper part starts (``"layer3"``, ``"encoder.2"``); a name
            the model lacks is :func:`clfast.nn.split_at`'s ``ValueError`` at the first experience.
        mem_size: memory capacity in latents (>= 1).
        policy: ``"ar1"`` (default), ``"reservoir"``, ``"class_balanced"``, or a :class:`StoragePolicy`.
        replay_mb_size: replayed latents per minibatch (>= 1); ``None``: the strategy's ``train_mb_size``.
        freeze_lower_after_first: freeze the lower part from the second experience on (default True).
        seed: seeds the minibatch draws, and the policy when it is given by name.
    """

    STATE_NAME: ClassVar[str] = "LatentReplayPlugin"

    def __init__(self, latent_layer: str, mem_size: int, *, policy: str | StoragePolicy = "ar1",
                 replay_mb_size: int | None = None, freeze_lower_after_first: bool = True, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(latent_layer, str):
            raise TypeError(f"latent_layer must be a module name (str), got {type(latent_layer).__name__}")
        if not latent_layer:
            raise ValueError("latent_layer must name a module of the model, got ''")
        self.latent_layer = latent_layer
        self.mem_size = check_int("mem_size", mem_size, low=1)
        self.replay_mb_size = None if replay_mb_size is None else check_int("replay_mb_size", replay_mb_size, low=1)
        self.freeze_lower_after_first = check_bool("freeze_lower_after_first", freeze_lower_after_first)
        self.seed = check_int("seed", seed, low=0, high=_MAX_SEED)
        self.storage_policy: StoragePolicy = make_policy("policy", policy, LATENT_POLICIES, mem_size, seed)
        self._draws = _generator(self.seed, 1)
        self._split: _Split | None = None
        self._frozen = False

    @property
    def frozen(self) -> bool:
        """Whether the lower part is frozen in the experience being trained."""
        return self._frozen

    @property
    def parts(self) -> tuple[nn.Module, nn.Module] | None:
        """``(lower, upper)`` of the current split (None before the first experience)."""
        return None if self._split is None else (self._split.lower, self._split.upper)

    def _follow(self, strategy: Any) -> _Split:
        """The split of ``strategy.model``, made again when the model or one of its modules was replaced."""
        split = self._split
        if split is None or not split.follows(strategy.model):
            split = self._split = _Split(strategy.model, self.latent_layer)
            if self._frozen:
                split.freeze()
        return split

    def _put_back(self, strategy: Any) -> None:
        # The stand-in puts the model back itself once it has run; this covers a forward that never called it.
        split = self._split
        if split is not None and strategy.model is split.stand_in:
            split.stand_in.disarm()
            strategy.model = split.model

    # -- hooks ----------------------------------------------------------------------------------------
    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        self._put_back(strategy)

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Split (again, if the model changed), freeze from the second experience, memory to the device."""
        self._frozen = self.freeze_lower_after_first and strategy.clock.train_exp_counter > 0
        split = self._follow(strategy)
        if self._frozen:
            split.freeze()
        self.storage_policy.to_device(strategy.device)

    def before_forward(self, strategy: Any, **kwargs: Any) -> None:
        """Replayed labels join ``mbatch``; the stand-in forward goes into ``strategy.model`` for one call."""
        split = self._follow(strategy)
        policy, mb = self.storage_policy, strategy.mbatch
        replay = None
        if policy.size:
            if len(mb) not in (2, 3):
                raise ValueError(f"latent replay extends [x, y] or [x, y, t] minibatches, got {len(mb)} elements")
            policy.to_device(strategy.device)
            k = min(self.replay_mb_size or strategy.train_mb_size, policy.size)
            rows = torch.randperm(policy.size, generator=self._draws)[:k].to(policy.x.device)  # type: ignore[union-attr]
            replay, y, t = (buf.index_select(0, rows) for buf in (policy.x, policy.y, policy.t))  # type: ignore[union-attr]
            mb[1] = torch.cat((mb[1], y.to(mb[1].device, mb[1].dtype)))
            if len(mb) == 3:
                mb[2] = torch.cat((mb[2], t.to(mb[2].device, mb[2].dtype)))
        if replay is None and not self._frozen:
            return  # nothing to change: the model's own forward is upper(lower(x)), bit for bit
        model = split.model
        split.stand_in.arm(replay, self._frozen, model.training, lambda: setattr(strategy, "model", model))
        strategy.model = split.stand_in

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        self._put_back(strategy)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """The policy stores latents of the experience's samples, with their own labels."""
        split = self._follow(strategy)
        device = strategy.device
        view = _EncodedDataset(strategy.experience.dataset, lambda x: split.encode(x, device))
        # StoragePolicy.update reads a strategy's experience.dataset and device: give it the encoded view.
        self.storage_policy.update(SimpleNamespace(experience=SimpleNamespace(dataset=view), device=device))

    def before_eval(self, strategy: Any, **kwargs: Any) -> None:
        self._put_back(strategy)

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The memory (rows on the CPU, the policy's bookkeeping and generator), the draws' generator and the
        hyper-parameters."""
        return {"plugin": self.STATE_NAME, "version": STATE_VERSION, "latent_layer": self.latent_layer,
                "mem_size": self.mem_size, "policy": self.storage_policy.state_dict(),
                "draws": self._draws.get_state(),
                "hparams": {"replay_mb_size": self.replay_mb_size, "seed": self.seed,
                            "freeze_lower_after_first": self.freeze_lower_after_first}}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. Everything is checked first (``TypeError`` for a non-dict,
        ``ValueError`` for another plugin, layer, capacity or policy, inconsistent rows, a bad generator state);
        then nothing has changed. Loaded rows wait on the CPU until the next experience moves them."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{self.STATE_NAME}.load_state_dict expects a dict, got {type(state_dict).__name__}")
        sd = state_dict
        if sd.get("plugin") != self.STATE_NAME or sd.get("version") != STATE_VERSION:
            raise ValueError(f"this state dict is for {sd.get('plugin')!r} version {sd.get('version')!r}, not "
                             f"{self.STATE_NAME} version {STATE_VERSION}")
        for key, mine in (("latent_layer", self.latent_layer), ("mem_size", self.mem_size)):
            if sd.get(key) != mine:
                raise ValueError(f"the saved plugin has {key} {sd.get(key)!r}, this one {mine!r}")
        self.storage_policy._check_state(sd.get("policy"))
        _check_generator_state(sd.get("draws"), "cpu", "the minibatch draws' generator state")
        self.storage_policy.load_state_dict(sd["policy"])  # validated above: cannot fail now
        self._draws.set_state(sd["draws"])
