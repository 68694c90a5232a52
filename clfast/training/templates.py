"""``SupervisedTemplate``: Avalanche's SGD loops (``docs/avalanche-semantics.md`` §1) on top of
:class:`clfast.training.base.BaseTemplate` (outer loops, plugin dispatch): dataset adaptation, dataloaders,
model/optimizer adaptation, epochs, minibatches, forward/criterion/backward/update, as overridable steps.
See ``docs/plugin-api.md`` for the contract.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from .. import distributed as dist
from .._checks import check_choice, check_int
from ..evaluation import EvaluationPlugin, default_evaluator
from ..sharding import is_sharded_model
from .base import BaseTemplate
from .clock import Clock
from .in_experience import InExperienceCheckpoints, file_writer
from .periodic_eval import PEVAL_MODES, PeriodicEval
from .plugins import SUPERVISED_HOOKS, BasePlugin, SupervisedPlugin
from .precision import Precision
from .utils import is_task_aware, make_loader, stream_name, task_aware_forward, to_device

__all__ = ["BaseTemplate", "SupervisedTemplate"]


class SupervisedTemplate(BaseTemplate):
    """Supervised SGD training with Avalanche's 26 hooks, clock and periodic eval.

    Args:
        model: the model.
        optimizer: a ``torch.optim.Optimizer`` over the model's parameters.
        criterion: the loss module, ``criterion(mb_output, mb_y)``; ``None`` means ``CrossEntropyLoss()``.
            If it is itself a plugin (has hook methods) it is called after the user plugins.
        train_mb_size: training minibatch size (>= 1).
        train_epochs: epochs per training experience (>= 1).
        train_iterations: an iteration budget per training experience instead (>= 1, or None): exactly this many
            minibatches, in as many epochs (passes over the shuffled data) as it takes; ``train_epochs`` is then
            ignored. (The protocol of van de Ven & Tolias 2019: 2000 iterations per task.)
        checkpoint_every, checkpoint_path: write a checkpoint to ``checkpoint_path`` (atomically) every
            ``checkpoint_every`` training iterations inside an experience, at the end of an optimizer step; after
            :func:`clfast.training.checkpoint.load_strategy_state_dict` of it, training that experience resumes
            at the saved iteration exactly (``docs/large-models.md``).
        eval_mb_size: eval minibatch size; ``None`` means ``train_mb_size``.
        device: a ``torch.device`` or string; ``None`` means CPU.
        plugins: user plugins, called in list order, before the evaluator, PeriodicEval and the Clock.
        evaluator: an ``EvaluationPlugin``, a callable returning one (default: ``default_evaluator``),
            or ``None`` for an evaluator without metrics.
        eval_every: -1 no periodic eval; 0 at the start of ``train()`` and the end of every experience;
            k > 0 also every k epochs (or iterations, see ``peval_mode``).
        peval_mode: ``"epoch"`` or ``"iteration"``.
        precision: ``"32"``, ``"bf16-mixed"`` (bfloat16 autocast) or ``"16-mixed"`` (float16 autocast and a
            ``torch.amp.GradScaler``), or a :class:`clfast.training.precision.Precision` (to choose the scaler's
            initial scale): see ``docs/large-models.md``.
        accumulate_grad_batches: k >= 1: one optimizer step per k minibatches, each minibatch's loss divided by
            the number of minibatches in its window (k, fewer at the end of an epoch).

    Training is a sequence of steps, each a method a strategy may override without re-spelling the hook
    order; the hooks (in brackets) fire between them. Per experience: ``train_dataset_adaptation()``
    [before/after_train_dataset_adaptation], ``make_train_dataloader()``, ``check_model_and_optimizer()``
    (``model_adaptation()``, ``make_optimizer()``) [before_training_exp]; per epoch ``_train_exp()`` runs
    [before_training_epoch] ``training_epoch()`` [after_training_epoch]; ``training_epoch()`` calls
    ``training_iteration(mbatch)`` on each minibatch, which runs:

    1. ``_unpack_minibatch()``: ``mbatch`` to the device. [before_training_iteration]
    2. ``reset_grad_and_loss()``: ``optimizer.zero_grad()``, ``loss = zeros(1)``.
    3. ``_before_forward_step()``: hook-free, nothing here (AR1 appends the replayed labels). [before_forward]
    4. ``mb_output = forward()``.
    5. ``_after_forward_step()``: hook-free, nothing here (AR1 stages the current latents). [after_forward]
    6. ``loss += criterion()``. [before_backward]
    7. ``backward()`` (AR1 then averages the gradients over the ranks); on a step's last minibatch under
       ``"16-mixed"`` the gradients are unscaled. [after_backward] [before_update]
    8. ``optimizer_step()``. [after_update] [after_training_iteration]

    Steps 4 and 6 run under autocast (``precision``). With ``accumulate_grad_batches`` = k, step 2 zeroes the
    gradients and [before_update] 8 [after_update] run only on the last minibatch of each window of k;
    ``step_this_iteration`` says which minibatch that is (``docs/plugin-api.md``, "Accumulation").
    """

    PLUGIN_CLASS = SupervisedPlugin

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 criterion: Callable[..., torch.Tensor] | None = None, *, train_mb_size: int = 1,
                 train_epochs: int = 1, eval_mb_size: int | None = None,
                 device: str | torch.device | None = None, plugins: Sequence[Any] | None = None,
                 evaluator: EvaluationPlugin | Callable[[], EvaluationPlugin] | None = default_evaluator,
                 eval_every: int = -1, peval_mode: str = "epoch", precision: str | Precision = "32",
                 accumulate_grad_batches: int = 1, train_iterations: int | None = None,
                 checkpoint_every: int | None = None, checkpoint_path: str | os.PathLike | None = None) -> None:
        # A size or count of the wrong type is a ValueError here, as it has always been for the templates.
        self.train_mb_size = check_int("train_mb_size", train_mb_size, low=1, type_error=ValueError)
        self.train_epochs = check_int("train_epochs", train_epochs, low=1, type_error=ValueError)
        self.eval_mb_size = train_mb_size if eval_mb_size is None else check_int("eval_mb_size", eval_mb_size,
                                                                                 low=1, type_error=ValueError)
        check_int("eval_every", eval_every, low=-1, type_error=ValueError)
        check_choice("peval_mode", peval_mode, PEVAL_MODES)
        self.accumulate_grad_batches = check_int("accumulate_grad_batches", accumulate_grad_batches, low=1)
        self.train_iterations = (None if train_iterations is None else
                                 check_int("train_iterations", train_iterations, low=1, type_error=ValueError))
        if checkpoint_every is not None:
            check_int("checkpoint_every", checkpoint_every, low=1, type_error=ValueError)
            if checkpoint_path is None:
                raise ValueError("checkpoint_every needs a checkpoint_path to write to")
        #: In-experience checkpoints: ``every`` (iterations, or None) and the ``writer`` (the CLI sets its own).
        self.in_experience_checkpoints = InExperienceCheckpoints(
            checkpoint_every, None if checkpoint_path is None else file_writer(checkpoint_path))
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if criterion is None:
            criterion = nn.CrossEntropyLoss()
        if not callable(criterion):
            raise TypeError(f"criterion must be callable, got {type(criterion).__name__}")
        super().__init__(model, device=device, plugins=plugins)
        self.optimizer = optimizer
        self._criterion = criterion
        self.eval_every = eval_every
        self.peval_mode = peval_mode
        self.retain_graph = False
        #: Autocast and loss scaling (``precision``); plugins read it through ``clfast.training.precision``.
        self.amp = precision if isinstance(precision, Precision) else Precision(precision, self.device)
        if self.amp.scaler is not None and is_sharded_model(model):
            raise ValueError("precision '16-mixed' is not supported with an FSDP2 model (its scaler does not unscale "
                             "sharded gradients); use 'bf16-mixed'")
        #: Whether the current training iteration ends with an optimizer step (False on the first k-1
        #: minibatches of an accumulation window).
        self.step_this_iteration = True
        #: Whether the GradScaler skips the current step (inf/NaN gradients); set right after the step's last
        #: backward, before ``after_backward``.
        self.step_skipped = False
        self._window = 1         # minibatches in the current accumulation window
        self._window_pos = 0     # the next minibatch's position in it
        self._window_start = True  # the current minibatch starts a window (its gradients are zeroed first)
        self._epoch_left: int | None = None  # minibatches of the epoch not yet trained (None: unknown length)

        if evaluator is None:
            evaluator = EvaluationPlugin()
        elif not isinstance(evaluator, EvaluationPlugin) and callable(evaluator):
            evaluator = evaluator()
        self.evaluator = evaluator
        # Final order: user plugins, criterion (if a plugin), evaluator, PeriodicEval, Clock (always last).
        if isinstance(criterion, BasePlugin) or any(hasattr(criterion, h) for h in SUPERVISED_HOOKS):
            self.plugins.append(criterion)
        self.plugins.append(self.evaluator)
        if eval_every > -1:
            self.plugins.append(PeriodicEval(eval_every, peval_mode))
        self.clock = Clock()
        self.plugins.append(self.clock)

        self.adapted_dataset: Any = None
        self.dataloader: Any = None
        self.mbatch: list[Any] | None = None
        self.mb_output: Any = None
        self.loss: torch.Tensor = self._make_empty_loss()
        self._stop_training = False
        self._optimizer_initialized = False
        #: Seed of the training ``DistributedSampler`` (the same on every rank; see ``docs/distributed.md``).
        self.sampler_seed: int = 0

    # ---------------------------------------------------------------- minibatch views
    @property
    def mb_x(self) -> Any:
        """The current minibatch's input, ``mbatch[0]``."""
        return self.mbatch[0]

    @property
    def mb_y(self) -> torch.Tensor:
        """The current minibatch's targets, ``mbatch[1]``."""
        return self.mbatch[1]

    @property
    def mb_task_id(self) -> torch.Tensor:
        """The current minibatch's task labels, ``mbatch[-1]`` (needs at least 3 elements)."""
        if len(self.mbatch) < 3:
            raise ValueError(f"the minibatch has {len(self.mbatch)} elements; task labels need [x, y, t]")
        return self.mbatch[-1]

    def stop_training(self) -> None:
        """Stops the current experience's training after the current iteration (next epoch is skipped)."""
        self._stop_training = True

    def _make_empty_loss(self) -> torch.Tensor:
        return torch.zeros(1, device=self.device)

    def _last_metrics(self) -> dict:
        return self.evaluator.get_last_metrics()

    # ---------------------------------------------------------------- training experience
    def _before_training_exp(self, **kwargs: Any) -> None:
        self._trigger("before_train_dataset_adaptation", **kwargs)
        self.train_dataset_adaptation(**kwargs)
        self._trigger("after_train_dataset_adaptation", **kwargs)
        self.make_train_dataloader(**kwargs)
        self.check_model_and_optimizer()
        super()._before_training_exp(**kwargs)
        self.in_experience_checkpoints.start_experience(self)  # a pending in-experience checkpoint, if any

    def train_dataset_adaptation(self, **kwargs: Any) -> None:
        """``adapted_dataset`` = the experience's dataset in train mode (``dataset.train()`` when it has one)."""
        self.adapted_dataset = _dataset_mode(self.experience.dataset, "train")

    def make_train_dataloader(self, num_workers: int = 0, shuffle: bool = True, pin_memory: bool | None = None,
                              persistent_workers: bool = False, drop_last: bool = False,
                              **kwargs: Any) -> None:
        """A shuffled ``DataLoader`` of ``adapted_dataset`` with ``train_mb_size``.

        Under ``torch.distributed``: this rank's shard, by a ``DistributedSampler`` seeded with
        ``sampler_seed + clock.train_exp_counter`` (the epoch is set before every epoch), ``train_mb_size``
        samples per rank and batch.
        """
        self.dataloader = self._make_loader("training", self.train_mb_size, shuffle=shuffle, num_workers=num_workers,
                                            pin_memory=pin_memory, persistent_workers=persistent_workers,
                                            drop_last=drop_last, seed=self.sampler_seed + self.clock.train_exp_counter)

    def _make_loader(self, what: str, batch_size: int, *, shuffle: bool, num_workers: int, pin_memory: bool | None,
                     persistent_workers: bool, drop_last: bool, seed: int = 0,
                     generator: torch.Generator | None = None) -> DataLoader:
        """:func:`clfast.training.utils.make_loader` of ``adapted_dataset`` (pinned by default on CUDA); an empty
        dataset is a ``ValueError`` naming the ``what`` ("training"/"eval") experience and its stream."""
        exp = self.experience
        return make_loader(self.adapted_dataset, batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers,
                           pin_memory=self.device.type == "cuda" if pin_memory is None else pin_memory,
                           persistent_workers=persistent_workers, drop_last=drop_last, generator=generator,
                           empty_name=f"{what} experience {getattr(exp, 'current_experience', '?')} of stream "
                                      f"'{stream_name(exp)}'")

    def check_model_and_optimizer(self) -> None:
        """Model adaptation then optimizer update, at the start of every training experience."""
        if not self._optimizer_initialized:
            self.make_optimizer(reset_optimizer_state=True)
            self._optimizer_initialized = True
        self.model = self.model_adaptation()
        self.make_optimizer()

    def model_adaptation(self, model: nn.Module | None = None) -> nn.Module:
        """Calls ``adaptation(experience)`` on every module that has one (Avalanche's dynamic modules,
        e.g. growing heads), then moves the model to the device. Strategies may override it."""
        model = self.model if model is None else model
        for module in model.modules():
            adapt = getattr(module, "adaptation", None)
            if callable(adapt):
                adapt(self.experience)
        return model.to(self.device)

    def make_optimizer(self, reset_optimizer_state: bool = False) -> None:
        """Adds model parameters the optimizer lacks (e.g. a grown head) to its first param group; with
        ``reset_optimizer_state`` clears its state. Strategies (AR1) may override it to build a new one."""
        known = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        new = [p for p in self.model.parameters() if id(p) not in known]
        if new:
            self.optimizer.param_groups[0]["params"].extend(new)
        if reset_optimizer_state:
            self.optimizer.state.clear()

    def _iterations_left(self) -> int | None:
        """Iterations of the experience's budget still to run (None without ``train_iterations``)."""
        if self.train_iterations is None:
            return None
        return max(0, self.train_iterations - self.clock.train_exp_iterations)

    def _train_exp(self, **kwargs: Any) -> None:
        epochs_done = self.in_experience_checkpoints.first_epoch()
        while self._another_epoch(epochs_done):
            epochs_done += 1
            if not self.in_experience_checkpoints.resuming_epoch():  # a resumed epoch has begun before
                self._trigger("before_training_epoch", **kwargs)
                if self._stop_training:
                    self._stop_training = False
                    break
            sampler = getattr(self.dataloader, "sampler", None)
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(self.clock.train_exp_epochs)
            before = self.clock.train_exp_iterations
            self.training_epoch(**kwargs)
            self._trigger("after_training_epoch", **kwargs)
            if self.clock.train_exp_iterations == before:  # an epoch without minibatches: a budget is never met
                break

    def _another_epoch(self, epochs_done: int) -> bool:
        if self.train_iterations is None:
            return epochs_done < self.train_epochs
        return self._iterations_left() > 0

    @property
    def precision(self) -> str:
        """The ``precision`` the strategy trains in."""
        return self.amp.name

    def training_epoch(self, **kwargs: Any) -> None:
        """One pass over ``dataloader``: :meth:`training_iteration` on each minibatch, until ``stop_training()`` or
        the end of the ``train_iterations`` budget."""
        self._window_pos = 0
        batches, done = self.in_experience_checkpoints.epoch_batches(self.dataloader)
        budget = self._iterations_left()
        try:
            left = len(self.dataloader) - done
            self._epoch_left = left if budget is None else min(budget, left)
        except TypeError:  # an iterable without a length: windows of k, the last one stepped only if full
            self._epoch_left = budget
        for mbatch in batches:
            if self._stop_training or self._iterations_left() == 0:
                break
            self.training_iteration(mbatch, **kwargs)
            self.in_experience_checkpoints.after_iteration(self)
        self._epoch_left = None

    def _plan_step(self) -> None:
        """Where this minibatch stands in its accumulation window: at a window's start its size (k, or the
        minibatches the epoch has left), and whether the step comes after it."""
        self._window_start = self._window_pos == 0
        if self._window_start:
            left = self._epoch_left
            self._window = self.accumulate_grad_batches if left is None else max(1, min(self.accumulate_grad_batches,
                                                                                     left))
        self.step_this_iteration = self._window_pos == self._window - 1
        self.step_skipped = False
        if self._epoch_left is not None:
            self._epoch_left -= 1
        self._window_pos = 0 if self.step_this_iteration else self._window_pos + 1
        if self.accumulate_grad_batches > 1:  # DDP/FSDP2: one gradient collective per step, not per minibatch
            dist.set_gradient_sync(self.model, self.step_this_iteration)

    def training_iteration(self, mbatch: Any, **kwargs: Any) -> None:
        """One SGD step on ``mbatch``: the steps and hooks listed in the class docstring, in that order."""
        self.mbatch = mbatch
        self._plan_step()
        self._unpack_minibatch()
        self._trigger("before_training_iteration", **kwargs)
        self.reset_grad_and_loss()
        self._before_forward_step()
        self._trigger("before_forward", **kwargs)
        with self.amp.autocast():
            self.mb_output = self.forward()
        self._after_forward_step()
        self._trigger("after_forward", **kwargs)
        with self.amp.autocast():
            self.loss += self.criterion()
        self._trigger("before_backward", **kwargs)
        self.backward()
        if self.step_this_iteration:
            self.step_skipped = not self.amp.unscale_(self.optimizer)
        self._trigger("after_backward", **kwargs)
        if self.step_this_iteration:
            self._trigger("before_update", **kwargs)
            self.optimizer_step()
            self._trigger("after_update", **kwargs)
        self._trigger("after_training_iteration", **kwargs)

    def _unpack_minibatch(self) -> None:
        self.mbatch = [to_device(v, self.device) for v in self.mbatch]

    def reset_grad_and_loss(self) -> None:
        """``optimizer.zero_grad()`` (at the start of an accumulation window only), and ``loss`` back to
        ``zeros(1)`` (the criterion and penalties add to it)."""
        if self._window_start:
            self.optimizer.zero_grad()
        self.loss = self._make_empty_loss()

    def _before_forward_step(self) -> None:
        """Hook-free step before ``before_forward``: where a strategy changes the minibatch (AR1 appends the
        replayed labels). Nothing in the template."""

    def _after_forward_step(self) -> None:
        """Hook-free step between ``forward()`` and ``after_forward``: where a strategy uses the forward's side
        results (AR1 stages the current latents). Nothing in the template."""

    def forward(self) -> Any:
        """The model's output on ``mb_x`` (with ``mb_task_id`` for a task-aware model)."""
        # The model is asked first: an experience's task_labels may be computed on each access (a unique over the
        # dataset's labels), which a model without task routing never needs.
        if len(self.mbatch) >= 3 and is_task_aware(self.model) and hasattr(self.experience, "task_labels"):
            return task_aware_forward(self.model, self.mb_x, self.mb_task_id)
        return self.model(self.mb_x)

    def criterion(self) -> torch.Tensor:
        """``_criterion(mb_output, mb_y)``."""
        return self._criterion(self.mb_output, self.mb_y)

    def backward(self) -> None:
        """``loss.backward(retain_graph=retain_graph)``, of the loss divided by the accumulation window's size and,
        under ``"16-mixed"``, times the scaler's scale. ``loss`` itself stays the minibatch's (for loggers)."""
        loss = self.loss if self._window == 1 else self.loss / self._window
        self.amp.backward(loss, retain_graph=self.retain_graph)

    def optimizer_step(self) -> None:
        """``optimizer.step()`` (through the GradScaler under ``"16-mixed"``, which skips it on inf/NaN)."""
        self.amp.step(self.optimizer)

    def _cleanup_after_training(self) -> None:
        super()._cleanup_after_training()
        self.adapted_dataset = None
        self.dataloader = None
        self.mbatch = None
        self.mb_output = None
        self.loss = self._make_empty_loss()

    # ---------------------------------------------------------------- eval experience
    def _save_train_state(self) -> dict[str, Any]:
        state = super()._save_train_state()
        state.update(adapted_dataset=self.adapted_dataset, dataloader=self.dataloader)
        return state

    def _load_train_state(self, state: dict[str, Any]) -> None:
        super()._load_train_state(state)
        self.adapted_dataset = state["adapted_dataset"]
        self.dataloader = state["dataloader"]

    def _before_eval_exp(self, **kwargs: Any) -> None:
        self._trigger("before_eval_dataset_adaptation", **kwargs)
        self.eval_dataset_adaptation(**kwargs)
        self._trigger("after_eval_dataset_adaptation", **kwargs)
        self.make_eval_dataloader(**kwargs)
        self.model = self.model_adaptation()
        super()._before_eval_exp(**kwargs)

    def eval_dataset_adaptation(self, **kwargs: Any) -> None:
        """``adapted_dataset`` = the experience's dataset in eval mode (``dataset.eval()`` when it has one)."""
        self.adapted_dataset = _dataset_mode(self.experience.dataset, "eval")

    def make_eval_dataloader(self, num_workers: int = 0, pin_memory: bool | None = None,
                             persistent_workers: bool = False, **kwargs: Any) -> None:
        """An unshuffled ``DataLoader`` of ``adapted_dataset`` with ``eval_mb_size``."""
        self.dataloader = self._make_loader("eval", self.eval_mb_size, shuffle=False, num_workers=num_workers,
                                            pin_memory=pin_memory, persistent_workers=persistent_workers,
                                            drop_last=False)

    def _eval_exp(self, **kwargs: Any) -> None:
        for mbatch in self.dataloader:
            self.mbatch = mbatch
            self._unpack_minibatch()
            self._trigger("before_eval_iteration", **kwargs)
            self._trigger("before_eval_forward", **kwargs)
            self.mb_output = self.forward()
            self._trigger("after_eval_forward", **kwargs)
            self.loss = self.criterion()
            self._trigger("after_eval_iteration", **kwargs)


def _dataset_mode(dataset: Any, mode: str) -> Any:
    # Avalanche datasets switch transforms with .train()/.eval(); a plain map-style dataset is used as is.
    # (torchvision datasets have a boolean ``train`` attribute, hence the callable check.)
    fn = getattr(dataset, mode, None)
    return fn() if callable(fn) else dataset
