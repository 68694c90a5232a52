"""AR1 with latent replay (Maltoni & Lomonaco 2019; Pellegrini et al. 2020), Avalanche's ``AR1`` strategy.

Specification: ``docs/avalanche-semantics.md`` §4 (4.1 signature, 4.2 model, 4.3 BRN swap, 4.4 freezing,
4.5 per-experience flow and modes, 4.6 minibatch composition, 4.7 memory update, 4.8 CWR*, 4.9 SI) and §5 (BRN).
The deliberate differences from Avalanche are listed in ``docs/avalanche-differences.md`` ("AR1"): correct replay
labels, a memory reshuffled every epoch, preallocated storage, freeze targets that must exist, BRN statistics in the
``state_dict``, CWR* and SI on the device, and the whole strategy's state in :meth:`AR1.state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import distributed as dist
from .._checks import check_bool, check_float, check_int
from ..evaluation import EvaluationPlugin, default_evaluator
from ..nn import LatentModel, MobileNetV1, change_brn_pars, replace_bn_with_brn
from ..nn.freeze import filter_bn_and_brn, freeze_up_to
from ..nn.latent_model import check_latent_model, output_layer_name
from ..plugins import CWRStarPlugin, SynapticIntelligencePlugin
from ..plugins.latent_memory import LatentReplayMemory, LatentStaging, new_pattern_count, rank_minibatch_split
from ..training.templates import SupervisedTemplate
from ..training.utils import module_modes
from .ar1_brn import recompute_ar1_brn_statistics
from .ar1_state import AR1StateMixin

__all__ = ["AR1", "ar1_from_optimizer", "check_latent_model"]

#: Avalanche's default ``freeze_below_layer`` (MobileNetV1's); with ``latent_layer`` it means the latent layer.
_DEFAULT_FREEZE = "lat_features.19.bn.beta"

class AR1(AR1StateMixin, SupervisedTemplate):
    """AR1*: CWR* on the output layer, Batch Renormalization, latent replay and optionally SI (§4).

    The model is split at a latent layer (its own split, as :class:`clfast.nn.MobileNetV1`'s, or any model split at
    ``latent_layer`` by :class:`clfast.nn.LatentModel`): ``lat_features`` (frozen from the second experience on,
    always in eval mode, §4.5), ``end_features`` and ``output`` (trained on current patterns plus replayed latents).
    Every BN layer becomes a :class:`clfast.nn.BatchRenorm2d` at construction (§4.3). Per experience (§4.5): from the
    second one the model is frozen below ``freeze_below_layer`` (norm layers excluded), the BRN settings switch to the
    incremental ones and a new SGD with ``inc_lr`` is built; minibatches hold current patterns and replayed latents
    (§4.6); the first epoch's current latents feed the memory after the experience (§4.7); CWR* (§4.8) consolidates
    the output layer, with the replayed classes counted; SI (§4.9) regularises the other parameters when
    ``ewc_lambda != 0``.

    Positional order is Avalanche's old documented one (v0.1-0.2.1), then ``inc_lr`` and ``model``.

    Args:
        criterion: the loss, ``None`` means ``CrossEntropyLoss()``.
        lr: SGD learning rate of the first experience (> 0).
        momentum: SGD momentum ([0, 1)).
        l2: SGD weight decay (>= 0).
        train_epochs: epochs per experience (>= 1).
        init_update_rate: BRN momentum during the first experience ([0, 1]).
        inc_update_rate: BRN momentum from the second experience ([0, 1]).
        max_r_max, max_d_max: BRN clamp limits (>= 1, >= 0); fixed at these from the second experience.
        inc_step: per-sample growth of BRN's r_max/d_max during the first experience (>= 0).
        rm_sz: replay memory size in latent patterns (>= 0; 0 disables replay).
        freeze_below_layer: from the second experience, every non-norm parameter *before* this layer is frozen
            (the layer itself is not). A layer name or a parameter name (``'lat_features.19.bn.beta'`` means the
            layer ``lat_features.19.bn``); a name the model lacks is a ValueError at construction. With
            ``latent_layer``, the default (which such a model lacks) means ``latent_layer`` itself: every non-norm
            parameter of the modules registered before it, the lower part for a model that registers its modules
            in the order its forward calls them (torchvision's ResNets).
        latent_layer_num: index of the last ``lat_features`` layer of the default MobileNetV1 (§4.2).
        ewc_lambda: SI strength (>= 0); 0 disables SI.
        train_mb_size: minibatch size, current plus replayed patterns (>= 1).
        eval_mb_size: eval minibatch size (>= 1).
        device: training device; ``None`` means CPU.
        plugins: user plugins, called before SI and CWR*.
        evaluator: as in :class:`clfast.training.SupervisedTemplate`.
        eval_every: periodic eval, as in the template.
        inc_lr: SGD learning rate from the second experience (> 0).
        model: a network with the latent split (:func:`check_latent_model`), or with ``latent_layer`` any network
            :func:`clfast.nn.split_at` can split there; default ``MobileNetV1(num_classes, latent_layer_num)``.
            Its BN layers are converted to BRN in place. A :class:`clfast.nn.LatentModel` is rebuilt over its
            ``source`` after the conversion (same ``latent_layer`` and output layer).
        num_classes: classes of the default model (default 50); with ``model`` it must match ``model.output``.
        replay_device: where the memory lives; default the training device when it fits (CUDA: at most half of
            the free memory), else pinned CPU memory.
        pin_memory: keep the memory in pinned CPU memory and copy replay slices asynchronously (needs CUDA).
        lat_train_mode_first_exp: for a network trained from scratch (not in Avalanche). During the first experience
            ``lat_features`` is in train mode, so its BRN layers normalise with batch statistics and learn running
            statistics, and the first experience's memory entries are the latents of the chosen patterns recomputed
            at its end with ``lat_features`` in eval mode, as every later experience sees them (the chosen *inputs*
            are staged instead of their latents). Default False: §4.5, meant for a pretrained network (with random
            BRN statistics a latent network in eval mode does not learn). It implies ``recompute_brn_stats``.
        recompute_brn_stats: not in Avalanche; ``None`` means ``lat_train_mode_first_exp``. At the end of every
            experience, before the memory update, the BRN running statistics are re-estimated from its data
            (:mod:`clfast.strategies.ar1_brn`: the whole model after the first, ``end_features`` after later ones),
            and the minibatch split (§4.6) uses the memory's filled size when it is below ``rm_sz``.
        latent_layer: not in Avalanche. The module (dotted name) that starts the trained part of ``model``, which
            then needs no latent split of its own: AR1 converts its BN layers, then trains
            ``LatentModel(model, latent_layer)`` (``self.model``), whose ``lat_features`` is the part before
            ``latent_layer`` (the memory holds its outputs, the input of ``latent_layer``), ``end_features`` the rest,
            and ``output`` (CWR*'s layer, excluded from SI) the model's last ``nn.Linear``. Parameter names stay the
            model's (``freeze_below_layer="layer2.1"``, ``state_dict()`` keys). ``None``: ``model``'s own split.
        precision, accumulate_grad_batches, train_iterations: as in :class:`clfast.training.SupervisedTemplate`
            (``docs/large-models.md``).

    Under ``torch.distributed`` (``docs/distributed.md``, "AR1"): pass the *unwrapped* model (AR1 converts its BN
    layers and freezes part of it, which changes the parameters a ``DistributedDataParallel`` wrapper registers);
    AR1 broadcasts rank 0's parameters and buffers at the first ``train()``, averages the gradients over the ranks
    itself after every ``backward()``, shards the current patterns and keeps the replay memory replicated.
    """

    #: Works under ``torch.distributed`` (``docs/distributed.md``, "AR1").
    supports_distributed = True

    def __init__(
        self,
        criterion: Callable[..., Tensor] | None = None,
        lr: float = 0.001,
        momentum: float = 0.9,
        l2: float = 0.0005,
        train_epochs: int = 4,
        init_update_rate: float = 0.01,
        inc_update_rate: float = 5e-05,
        max_r_max: float = 1.25,
        max_d_max: float = 0.5,
        inc_step: float = 4.1e-05,
        rm_sz: int = 1500,
        freeze_below_layer: str = "lat_features.19.bn.beta",
        latent_layer_num: int = 19,
        ewc_lambda: float = 0,
        train_mb_size: int = 128,
        eval_mb_size: int = 128,
        device: str | torch.device | None = None,
        plugins: Sequence[Any] | None = None,
        evaluator: EvaluationPlugin | Callable[[], EvaluationPlugin] | None = default_evaluator,
        eval_every: int = -1,
        inc_lr: float = 5e-05,
        model: nn.Module | None = None,
        *,
        num_classes: int | None = None,
        replay_device: str | torch.device | None = None,
        pin_memory: bool = False,
        lat_train_mode_first_exp: bool = False,
        recompute_brn_stats: bool | None = None,
        latent_layer: str | None = None,
        precision: str = "32",
        accumulate_grad_batches: int = 1,
        train_iterations: int | None = None,
    ) -> None:
        self.lr = check_float("lr", lr, low=0.0, low_open=True)
        self.inc_lr = check_float("inc_lr", inc_lr, low=0.0, low_open=True)
        self.momentum = check_float("momentum", momentum, low=0.0, high=1.0)
        if self.momentum == 1.0:
            raise ValueError("momentum must be < 1, got 1")
        self.l2 = check_float("l2", l2, low=0.0)
        self.init_update_rate = check_float("init_update_rate", init_update_rate, low=0.0, high=1.0)
        self.inc_update_rate = check_float("inc_update_rate", inc_update_rate, low=0.0, high=1.0)
        self.max_r_max = check_float("max_r_max", max_r_max, low=1.0)
        self.max_d_max = check_float("max_d_max", max_d_max, low=0.0)
        self.inc_step = check_float("inc_step", inc_step, low=0.0)
        self.rm_sz = check_int("rm_sz", rm_sz, low=0)
        self.latent_layer_num = check_int("latent_layer_num", latent_layer_num, low=0)
        self.ewc_lambda = check_float("ewc_lambda", ewc_lambda, low=0.0)
        if not isinstance(freeze_below_layer, str) or not freeze_below_layer:
            raise TypeError(f"freeze_below_layer must be a layer or parameter name (a non-empty str), got "
                            f"{freeze_below_layer!r}")
        self.freeze_below_layer = freeze_below_layer
        if not isinstance(pin_memory, bool):
            raise TypeError(f"pin_memory must be a bool, got {type(pin_memory).__name__}")
        if not isinstance(lat_train_mode_first_exp, bool):
            raise TypeError(f"lat_train_mode_first_exp must be a bool, got {type(lat_train_mode_first_exp).__name__}")
        self.lat_train_mode_first_exp = lat_train_mode_first_exp
        self.recompute_brn_stats = (lat_train_mode_first_exp if recompute_brn_stats is None else
                                    check_bool("recompute_brn_stats", recompute_brn_stats))
        if num_classes is not None:
            check_int("num_classes", num_classes, low=1)
        if latent_layer is not None and (not isinstance(latent_layer, str) or not latent_layer):
            raise TypeError(f"latent_layer must be a module name (a non-empty str) or None, got {latent_layer!r}")

        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            raise TypeError("AR1 needs the unwrapped model, not a DistributedDataParallel/DataParallel: it converts "
                            "the BN layers and freezes part of the model, and under torch.distributed it averages the "
                            "gradients over the ranks itself (docs/distributed.md)")
        # §4.3: every BatchNorm2d becomes a BatchRenorm2d with the first experience's settings.
        brn = {"momentum": self.init_update_rate, "r_d_max_inc_step": self.inc_step, "max_r_max": self.max_r_max,
               "max_d_max": self.max_d_max}
        output_layer = None
        if isinstance(model, LatentModel):  # rebuilt below: its parts would keep the BN layers the swap replaces
            if latent_layer is not None:
                raise TypeError("pass a LatentModel or a model and latent_layer, not both")
            latent_layer, output_layer, model = model.latent_layer, model.output_name, model.source
        self.latent_layer = latent_layer
        if latent_layer is not None:
            if model is None:
                raise ValueError("latent_layer needs a model (the default MobileNetV1 has its own latent split)")
            # The swap comes first: the split's graphs call the modules they find when built.
            model = LatentModel(replace_bn_with_brn(model, **brn), latent_layer, output_layer)
        elif model is None:
            model = MobileNetV1(num_classes=50 if num_classes is None else num_classes,
                                latent_layer_num=latent_layer_num)
        check_latent_model(model)
        if num_classes is not None and model.output.out_features != num_classes:
            raise ValueError(f"num_classes={num_classes} but model.output has {model.output.out_features} outputs")
        replace_bn_with_brn(model, **brn)  # (a LatentModel's were converted before the split: nothing left)
        modules, params = dict(model.named_modules()), dict(model.named_parameters())
        if latent_layer is not None and freeze_below_layer == _DEFAULT_FREEZE and freeze_below_layer not in params:
            freeze_below_layer = self.freeze_below_layer = latent_layer
        if freeze_below_layer not in modules and freeze_below_layer not in params:
            raise ValueError(f"freeze_below_layer={freeze_below_layer!r} is neither a layer nor a parameter of the "
                             f"model (e.g. 'lat_features.{latent_layer_num}.bn' or 'lat_features.{latent_layer_num}"
                             f".bn.beta' for the default MobileNetV1); AR1 never freezes the whole model")

        # Plugins: user plugins, then SI (if any), then CWR* (§4.5 step 3); the template appends evaluator/clock.
        self.si: SynapticIntelligencePlugin | None = None
        own: list[Any] = []
        out_name = output_layer_name(model)  # "output" for MobileNetV1, the model's own name under LatentModel
        if self.ewc_lambda != 0:
            self.si = SynapticIntelligencePlugin(self.ewc_lambda, excluded_parameters=[out_name])
            own.append(self.si)
        self.cwr = CWRStarPlugin(model, cwr_layer_name=out_name, freeze_remaining_model=False)
        own.append(self.cwr)
        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.l2)
        super().__init__(model, optimizer, criterion, train_mb_size=train_mb_size, train_epochs=train_epochs,
                         eval_mb_size=eval_mb_size, device=device, plugins=[*(plugins or []), *own],
                         evaluator=evaluator, eval_every=eval_every, precision=precision,
                         accumulate_grad_batches=accumulate_grad_batches, train_iterations=train_iterations)
        self._window_rows = 0  # rows (current plus replayed) of the accumulation window so far
        self.memory = LatentReplayMemory(self.rm_sz, device=replay_device, pin_memory=pin_memory)
        # One generator for every random draw of the strategy (loader order, memory slots and shuffles), seeded
        # from torch's global generator, so torch.manual_seed reproduces a run and state_dict() resumes it.
        self._generator = torch.Generator()
        # Under torch.distributed every rank uses rank 0's seed: the memory is replicated (docs/distributed.md).
        self._generator.manual_seed(dist.broadcast_object(int(torch.randint(0, 2**62, (), dtype=torch.int64))))
        self._params_broadcast = False
        self._global_position = 0
        self._staging: LatentStaging | None = None
        self._stage_inputs = False
        self._latent_path = False
        self._cur_bs, self._replay_bs = train_mb_size, 0
        self._latent_input: Tensor | None = None
        self._return_lat_acts = False
        self._lat_acts: Tensor | None = None
        self._collect = False  # this epoch stages latents for the memory (§4.7)
        self._epoch_iteration = 0
        self._cur_x: Tensor | None = None  # the current patterns of the iteration, for the staging
        self._cur_y: Tensor | None = None

    # ------------------------------------------------------------------------------------------------ modes
    def set_training_modes(self) -> None:
        """§4.5 step 1: the model in eval mode except ``end_features`` and ``output``; ``lat_features`` stays in
        eval mode in every experience (its BRN layers use, and never update, their running statistics)."""
        self.model.eval()
        self.model.end_features.train()
        self.model.output.train()
        if self.lat_train_mode_first_exp and self.clock.train_exp_counter == 0:
            self.model.lat_features.train()

    @property
    def current_split(self) -> tuple[int, int]:
        """(current, replayed) patterns per minibatch of the experience being trained (§4.6)."""
        return self._cur_bs, self._replay_bs

    # ------------------------------------------------------------------------------------------ experience
    def _before_training_exp(self, **kwargs: Any) -> None:
        """§4.5: modes; from the second experience freezing, incremental BRN settings and a new SGD; the template's
        steps (dataset, loader, plugins); then the replayed classes counted into CWR*."""
        exp_index = self.clock.train_exp_counter
        self.set_training_modes()
        if exp_index > 0:
            freeze_up_to(self.model, self.freeze_below_layer, layer_filter=filter_bn_and_brn)
            change_brn_pars(self.model, momentum=self.inc_update_rate, r_d_max_inc_step=0.0, r_max=self.max_r_max,
                            d_max=self.max_d_max)
            self.model.to(self.device)
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.inc_lr, momentum=self.momentum,
                                             weight_decay=self.l2)
        super()._before_training_exp(**kwargs)
        if exp_index > 0 and self.memory.size > 0:  # §4.5 step 4
            self.cwr.add_counts(self.memory.labels)
            self.cwr.reset_weights(self.cwr.cur_class)

    def make_train_dataloader(self, num_workers: int = 0, shuffle: bool = True, pin_memory: bool | None = None,
                              persistent_workers: bool = False, drop_last: bool = False, **kwargs: Any) -> None:
        """§4.6: a shuffled loader of ``cur_bs`` current patterns (all of them: ``drop_last`` is ignored, the
        first epoch feeds the memory) drawing from the strategy's generator, and the staging of the §4.7
        candidates. Under ``torch.distributed`` this rank's shard, as the template's (docs/distributed.md, "AR1")."""
        n = len(self.adapted_dataset)
        exp_index = self.clock.train_exp_counter
        world = dist.world_size()
        self._latent_path = exp_index > 0 and self.memory.allocated
        # With recompute_brn_stats the split counts the memory's filled rows, not rm_sz (a first experience smaller
        # than rm_sz leaves the memory short for good, and the nominal split would run out of replay early).
        rm = min(self.rm_sz, self.memory.size) if self.recompute_brn_stats and self.memory.size else self.rm_sz
        self._cur_bs, self._replay_bs = rank_minibatch_split(n, rm, self.train_mb_size,
                                                             self._latent_path and self.memory.size > 0, world)
        self.dataloader = self._make_loader("training", self._cur_bs, shuffle=shuffle, num_workers=num_workers,
                                            pin_memory=pin_memory, persistent_workers=persistent_workers,
                                            drop_last=False, seed=self.sampler_seed + exp_index,
                                            generator=self._generator)
        # The staging spans the union of the ranks' shards, padded as the DistributedSampler pads.
        n_total = world * len(self.dataloader.sampler) if world > 1 else n
        h = new_pattern_count(self.rm_sz, exp_index, n, self.memory.size)
        staging_device = self.memory.device
        if staging_device is None:
            staging_device = (torch.device("cpu") if self.memory.pin_memory else
                              self.memory.requested_device or self.device)
        self._staging = LatentStaging(n_total, h, self._generator, staging_device)
        self._stage_inputs = self.lat_train_mode_first_exp and exp_index == 0

    def training_epoch(self, **kwargs: Any) -> None:
        """One epoch of §4.6 on the template's iteration: the memory is reshuffled at its start, and every
        minibatch is extended with replayed latents (:meth:`_before_forward_step`); in the first epoch the current
        latents are staged for the memory (:meth:`_after_forward_step`)."""
        if self._latent_path:
            self.memory.shuffle_(self._generator)
        self._collect = self.clock.train_exp_epochs == 0 and self._staging is not None
        self._epoch_iteration = 0
        self._global_position = 0
        super().training_epoch(**kwargs)
        self._latent_input = None

    def _before_forward_step(self) -> None:
        """§4.6: the next ``replay_bs`` latents of the memory go to the forward as ``latent_input``; labels and task
        labels (0) are extended to match. The current patterns are kept for the staging."""
        self._cur_x, self._cur_y = self.mb_x, self.mbatch[1]
        self._latent_input = None
        if self._latent_path:
            # rank k's part of the iteration's global replay slice [it·W·r, (it+1)·W·r)
            r = self._replay_bs
            start = (self._epoch_iteration * dist.world_size() + dist.rank()) * r
            lat_x, lat_y = self.memory.batch(start, start + r, self.device)
            self._latent_input = lat_x
            self.mbatch[1] = torch.cat((self._cur_y, lat_y))
            if len(self.mbatch) >= 3:
                t = self.mbatch[2]
                self.mbatch[2] = torch.cat((t, torch.zeros(lat_y.shape[0], dtype=t.dtype, device=t.device)))
        self._epoch_iteration += 1
        self._return_lat_acts = self._collect and not self._stage_inputs

    def _after_forward_step(self) -> None:
        """§4.7, first epoch: the current patterns' latents (or, with ``lat_train_mode_first_exp`` in the first
        experience, their inputs) are staged with their own labels, at their positions in the union of the ranks'
        minibatches (in rank order)."""
        cur_x, cur_y = self._cur_x, self._cur_y
        self._cur_x = self._cur_y = None
        world = dist.world_size()
        positions = None
        if world > 1:
            b = int(cur_y.shape[0])
            positions = torch.arange(b) + self._global_position + dist.rank() * b
            self._global_position += world * b
        if self._collect and self._stage_inputs:
            self._staging.add(cur_x, cur_y, positions)  # type: ignore[union-attr]
        elif self._collect and self._lat_acts is not None:
            self._staging.add(self._lat_acts, cur_y, positions)  # type: ignore[union-attr]
        self._lat_acts = None

    def forward(self) -> Any:
        """Training: ``model(x, latent_input=replayed latents, return_lat_acts=first epoch)`` (§4.2, §4.6); eval:
        the template's forward."""
        if not self.is_training:
            return super().forward()
        out = self.model(self.mb_x, latent_input=self._latent_input, return_lat_acts=self._return_lat_acts)
        if self._return_lat_acts:
            out, self._lat_acts = out
        return out

    def backward(self) -> None:
        """``loss.backward()``; under ``torch.distributed`` the gradients are then averaged over the ranks, each
        rank's weighted by its rows (current plus replayed): Σ_r rows_r·g_r / Σ_r rows_r, the mean-loss gradient over
        the union of the ranks' minibatches (their replay parts may differ in size). Only the parameters with a
        ``.grad`` take part, the same on every rank. Before ``after_backward``, as DDP's. With gradient accumulation
        the average is taken once, after the window's last backward, each rank weighted by the window's rows."""
        super().backward()
        self._window_rows += int(self.mb_y.shape[0])
        if self.step_this_iteration:
            dist.all_reduce_grads_(list(self.model.parameters()), weight=self._window_rows, missing="skip")
            self._window_rows = 0

    def _before_training(self, **kwargs: Any) -> None:
        """Under ``torch.distributed``, at the first ``train()``: rank 0's parameters and buffers on every rank."""
        if dist.world_size() > 1 and not self._params_broadcast:
            dev = dist.comm_device()
            with torch.no_grad():
                for t in self.model.state_dict().values():
                    buf = t.to(dev)
                    torch.distributed.broadcast(buf, src=0)
                    t.copy_(buf)
            self._params_broadcast = True
        super()._before_training(**kwargs)

    def _after_training_exp(self, **kwargs: Any) -> None:
        """§4.7: the memory update, then the plugins' ``after_training_exp`` (SI, CWR*, evaluator, clock). With
        ``recompute_brn_stats`` the BRN statistics are re-estimated first, per rank before the average below."""
        if self.recompute_brn_stats:
            recompute_ar1_brn_statistics(self)
        if dist.world_size() > 1:  # per-rank BRN running statistics: averaged, so every rank holds the same model
            with torch.no_grad():
                for t in self.model.buffers():
                    if t.is_floating_point():
                        t.copy_(dist.all_reduce_mean_(t.to(dist.comm_device())))
        self._update_memory()
        super()._after_training_exp(**kwargs)

    def _update_memory(self) -> None:
        staging, self._staging = self._staging, None
        if staging is not None:
            staging.merge_ranks_()  # under torch.distributed: every rank's staged rows on every rank
        got = None if staging is None else staging.collected()
        if got is None:
            return
        x, y = got
        if self._stage_inputs:  # lat_train_mode_first_exp: the staged inputs' latents, lat_features in eval mode
            x = self._latents_of(x)
        if not self.memory.allocated:
            dev = self.memory.resolve_device(self.device, tuple(x.shape[1:]), x.dtype)
            self.memory.allocate(tuple(x.shape[1:]), x.dtype, dev)
        self.memory.update(x, y, self._generator)

    @torch.no_grad()
    def _latents_of(self, inputs: Tensor) -> Tensor:
        lat = self.model.lat_features
        with module_modes(lat, training=False):
            if inputs.shape[0] == 0:  # nothing to store, but the memory needs the latent shape
                return lat(torch.zeros((1, *inputs.shape[1:]), dtype=inputs.dtype, device=self.device))[:0]
            return torch.cat([lat(inputs[i: i + self.eval_mb_size].to(self.device, non_blocking=True))
                              for i in range(0, inputs.shape[0], self.eval_mb_size)])

    def _cleanup_after_training(self) -> None:
        super()._cleanup_after_training()
        self._staging = None
        self._latent_input = self._lat_acts = self._cur_x = self._cur_y = None


def ar1_from_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer,
                       criterion: Callable[..., Tensor] | None = None, **kwargs: Any) -> AR1:
    """The ``STRATEGIES["ar1"]`` constructor (``clfast train --strategy ar1``): AR1 on ``model`` (which needs the
    latent split, e.g. :class:`clfast.nn.MobileNetV1`, unless ``latent_layer=`` is passed), with the learning rate
    and momentum of ``optimizer``'s first parameter group as ``lr`` and ``momentum``. AR1 builds its own SGD over
    the converted model, so ``optimizer`` itself is not used. Other keywords go to :class:`AR1`."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    group = optimizer.param_groups[0]
    kwargs.setdefault("lr", group["lr"])
    kwargs.setdefault("momentum", group.get("momentum", 0.0))
    return AR1(criterion, model=model, **kwargs)
