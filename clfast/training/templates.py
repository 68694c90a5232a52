"""Training/eval templates with Avalanche's hook order (``docs/avalanche-semantics.md`` §1).

``BaseTemplate`` holds the outer loops (train over experiences, eval over experiences) and plugin dispatch;
``SupervisedTemplate`` adds the SGD loops: dataset adaptation, dataloaders, model/optimizer adaptation,
epochs, minibatches, forward/criterion/backward/update. See ``docs/plugin-api.md`` for the contract.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data.dataloader import default_collate

from .. import distributed as dist
from ..evaluation import EvaluationPlugin, default_evaluator
from .clock import Clock
from .periodic_eval import PEVAL_MODES, PeriodicEval
from .plugins import SUPERVISED_HOOKS, BasePlugin, SupervisedPlugin, unknown_hook_names
from .utils import (
    as_experience_list,
    group_by_stream,
    module_modes,
    stream_name,
    task_aware_forward,
    to_device,
)

ExpList = Any  # one experience or an iterable of experiences


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class BaseTemplate:
    """Outer loops and plugin dispatch.

    Args:
        model: the model; it is moved to ``device`` at every ``train()``.
        device: a ``torch.device`` or a string; ``None`` means CPU.
        plugins: plugin objects (any object with some hook methods), called in list order.
    """

    PLUGIN_CLASS: type = BasePlugin

    def __init__(self, model: nn.Module, *, device: str | torch.device | None = None,
                 plugins: Sequence[Any] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model: nn.Module = model
        self.device: torch.device = torch.device("cpu" if device is None else device)
        self.plugins: list[Any] = [] if plugins is None else list(plugins)
        for p in self.plugins:
            odd = unknown_hook_names(p)
            if odd:
                warnings.warn(f"plugin {type(p).__name__} defines {odd}, which are not hooks of "
                              f"{type(self).__name__}; they will never be called", stacklevel=3)
        self.experience: Any = None
        self.is_training: bool = False
        self.current_eval_stream: list[Any] | None = None
        self._eval_streams: list[list[Any]] = []
        self._distributed_checked = False

    @property
    def is_eval(self) -> bool:
        """True while evaluating."""
        return not self.is_training

    # ---------------------------------------------------------------- dispatch
    def _trigger(self, hook: str, **kwargs: Any) -> None:
        for p in self.plugins:
            fn = getattr(p, hook, None)
            if fn is not None:
                fn(self, **kwargs)

    def _check_distributed(self) -> None:
        if self._distributed_checked:
            return
        self._distributed_checked = True
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            bad = [type(p).__name__ for p in self.plugins if not getattr(p, "supports_distributed", False)]
            if not getattr(self, "supports_distributed", True):  # a strategy may opt out with a False attribute
                bad.insert(0, type(self).__name__)
            if bad:
                warnings.warn(f"strategy or plugins without distributed support: {bad}", stacklevel=3)

    # ---------------------------------------------------------------- train
    def train(self, experiences: ExpList, eval_streams: Iterable[Any] | None = None, **kwargs: Any) -> dict:
        """Trains on one experience or a sequence of them; ``kwargs`` reach every hook.

        ``eval_streams`` (experiences or streams) is what periodic eval evaluates; by default the
        training experiences themselves. Returns the evaluator's last metrics.
        """
        self._check_distributed()
        self.is_training = True
        self._stop_training = False
        self.model.train()
        self.model.to(self.device)
        exp_list = as_experience_list(experiences)
        self._eval_streams = group_by_stream([exp_list] if eval_streams is None else eval_streams)

        self._before_training(**kwargs)
        for exp in exp_list:
            self.experience = exp
            self._before_training_exp(**kwargs)
            self._train_exp(**kwargs)
            self._after_training_exp(**kwargs)
        self._after_training(**kwargs)
        self._cleanup_after_training()
        return self._last_metrics()

    def _before_training(self, **kwargs: Any) -> None:
        self._trigger("before_training", **kwargs)

    def _before_training_exp(self, **kwargs: Any) -> None:
        self._trigger("before_training_exp", **kwargs)

    def _train_exp(self, **kwargs: Any) -> None:
        raise NotImplementedError

    def _after_training_exp(self, **kwargs: Any) -> None:
        self._trigger("after_training_exp", **kwargs)

    def _after_training(self, **kwargs: Any) -> None:
        self._trigger("after_training", **kwargs)

    def _cleanup_after_training(self) -> None:
        self.experience = None

    # ---------------------------------------------------------------- eval
    def eval(self, exp_list: ExpList, **kwargs: Any) -> dict:
        """Evaluates one experience or a sequence of them, under ``torch.no_grad``.

        May be called during training (periodic eval): the experience, ``is_training``, every module's
        own ``training`` flag and the training dataset/dataloader are restored on return.
        """
        self._check_distributed()
        saved = self._save_train_state()
        try:
            with torch.no_grad(), module_modes(self.model):
                self.is_training = False
                self.model.eval()
                self.current_eval_stream = as_experience_list(exp_list)
                self._before_eval(**kwargs)
                for exp in self.current_eval_stream:
                    self.experience = exp
                    self._before_eval_exp(**kwargs)
                    self._eval_exp(**kwargs)
                    self._after_eval_exp(**kwargs)
                self._after_eval(**kwargs)
        finally:
            self._load_train_state(saved)
        return self._last_metrics()

    def _save_train_state(self) -> dict[str, Any]:
        return {"experience": self.experience, "is_training": self.is_training}

    def _load_train_state(self, state: dict[str, Any]) -> None:
        self.experience = state["experience"]
        self.is_training = state["is_training"]

    def _before_eval(self, **kwargs: Any) -> None:
        self._trigger("before_eval", **kwargs)

    def _before_eval_exp(self, **kwargs: Any) -> None:
        self._trigger("before_eval_exp", **kwargs)

    def _eval_exp(self, **kwargs: Any) -> None:
        raise NotImplementedError

    def _after_eval_exp(self, **kwargs: Any) -> None:
        self._trigger("after_eval_exp", **kwargs)

    def _after_eval(self, **kwargs: Any) -> None:
        self._trigger("after_eval", **kwargs)

    def _last_metrics(self) -> dict:
        return {}


class SupervisedTemplate(BaseTemplate):
    """Supervised SGD training with Avalanche's 26 hooks, clock and periodic eval.

    Args:
        model: the model.
        optimizer: a ``torch.optim.Optimizer`` over the model's parameters.
        criterion: the loss module, ``criterion(mb_output, mb_y)``; ``None`` means ``CrossEntropyLoss()``.
            If it is itself a plugin (has hook methods) it is called after the user plugins.
        train_mb_size: training minibatch size (>= 1).
        train_epochs: epochs per training experience (>= 1).
        eval_mb_size: eval minibatch size; ``None`` means ``train_mb_size``.
        device: a ``torch.device`` or string; ``None`` means CPU.
        plugins: user plugins, called in list order, before the evaluator, PeriodicEval and the Clock.
        evaluator: an ``EvaluationPlugin``, a callable returning one (default: ``default_evaluator``),
            or ``None`` for an evaluator without metrics.
        eval_every: -1 no periodic eval; 0 at the start of ``train()`` and the end of every experience;
            k > 0 also every k epochs (or iterations, see ``peval_mode``).
        peval_mode: ``"epoch"`` or ``"iteration"``.
    """

    PLUGIN_CLASS = SupervisedPlugin

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 criterion: Callable[..., torch.Tensor] | None = None, *, train_mb_size: int = 1,
                 train_epochs: int = 1, eval_mb_size: int | None = None,
                 device: str | torch.device | None = None, plugins: Sequence[Any] | None = None,
                 evaluator: EvaluationPlugin | Callable[[], EvaluationPlugin] | None = default_evaluator,
                 eval_every: int = -1, peval_mode: str = "epoch") -> None:
        self.train_mb_size = _check_positive_int("train_mb_size", train_mb_size)
        self.train_epochs = _check_positive_int("train_epochs", train_epochs)
        self.eval_mb_size = train_mb_size if eval_mb_size is None else _check_positive_int("eval_mb_size",
                                                                                            eval_mb_size)
        if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < -1:
            raise ValueError(f"eval_every must be an int >= -1, got {eval_every!r}")
        if peval_mode not in PEVAL_MODES:
            raise ValueError(f"peval_mode must be one of {PEVAL_MODES}, got {peval_mode!r}")
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
        self.dataloader = self._make_loader(self.adapted_dataset, self.train_mb_size, shuffle, num_workers,
                                            pin_memory, persistent_workers, drop_last, "training",
                                            seed=self.sampler_seed + self.clock.train_exp_counter)

    def _make_loader(self, dataset: Any, batch_size: int, shuffle: bool, num_workers: int,
                     pin_memory: bool | None, persistent_workers: bool, drop_last: bool, what: str,
                     seed: int = 0) -> DataLoader:
        if len(dataset) == 0:
            raise ValueError(f"{what} experience {getattr(self.experience, 'current_experience', '?')} of stream "
                             f"'{stream_name(self.experience)}' is empty")
        if pin_memory is None:
            pin_memory = self.device.type == "cuda"
        if dist.is_distributed():  # this rank's shard (docs/distributed.md)
            sampler = dist.distributed_sampler(dataset, shuffle=shuffle, seed=seed)
            return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                              pin_memory=pin_memory, persistent_workers=persistent_workers and num_workers > 0,
                              drop_last=drop_last,
                              collate_fn=getattr(dataset, "collate_fn", None) or default_collate)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                          pin_memory=pin_memory, persistent_workers=persistent_workers and num_workers > 0,
                          drop_last=drop_last, collate_fn=getattr(dataset, "collate_fn", None) or default_collate)

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

    def _train_exp(self, **kwargs: Any) -> None:
        for _ in range(self.train_epochs):
            self._trigger("before_training_epoch", **kwargs)
            if self._stop_training:
                self._stop_training = False
                break
            sampler = getattr(self.dataloader, "sampler", None)
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(self.clock.train_exp_epochs)
            self.training_epoch(**kwargs)
            self._trigger("after_training_epoch", **kwargs)

    def training_epoch(self, **kwargs: Any) -> None:
        """One pass over ``dataloader`` with the per-iteration hooks."""
        for mbatch in self.dataloader:
            if self._stop_training:
                break
            self.mbatch = mbatch
            self._unpack_minibatch()
            self._trigger("before_training_iteration", **kwargs)
            self.optimizer.zero_grad()
            self.loss = self._make_empty_loss()
            self._trigger("before_forward", **kwargs)
            self.mb_output = self.forward()
            self._trigger("after_forward", **kwargs)
            self.loss += self.criterion()
            self._trigger("before_backward", **kwargs)
            self.backward()
            self._trigger("after_backward", **kwargs)
            self._trigger("before_update", **kwargs)
            self.optimizer_step()
            self._trigger("after_update", **kwargs)
            self._trigger("after_training_iteration", **kwargs)

    def _unpack_minibatch(self) -> None:
        self.mbatch = [to_device(v, self.device) for v in self.mbatch]

    def forward(self) -> Any:
        """The model's output on ``mb_x`` (with ``mb_task_id`` for a task-aware model)."""
        if hasattr(self.experience, "task_labels") and len(self.mbatch) >= 3:
            return task_aware_forward(self.model, self.mb_x, self.mb_task_id)
        return self.model(self.mb_x)

    def criterion(self) -> torch.Tensor:
        """``_criterion(mb_output, mb_y)``."""
        return self._criterion(self.mb_output, self.mb_y)

    def backward(self) -> None:
        """``loss.backward(retain_graph=retain_graph)``."""
        self.loss.backward(retain_graph=self.retain_graph)

    def optimizer_step(self) -> None:
        """``optimizer.step()``."""
        self.optimizer.step()

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
        self.dataloader = self._make_loader(self.adapted_dataset, self.eval_mb_size, False, num_workers,
                                            pin_memory, persistent_workers, False, "eval")

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
