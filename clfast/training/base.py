"""``BaseTemplate``: the outer loops of Avalanche's templates (train over experiences, eval over experiences)
and plugin dispatch (``docs/avalanche-semantics.md`` §1); :class:`clfast.training.SupervisedTemplate` adds the
SGD loops."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .plugins import BasePlugin, unknown_hook_names
from .utils import as_experience_list, group_by_stream, module_modes

ExpList = Any  # one experience or an iterable of experiences


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
        self._trigger("after_training", **kwargs)
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
                self._trigger("before_eval", **kwargs)
                for exp in self.current_eval_stream:
                    self.experience = exp
                    self._before_eval_exp(**kwargs)
                    self._eval_exp(**kwargs)
                    self._trigger("after_eval_exp", **kwargs)
                self._trigger("after_eval", **kwargs)
        finally:
            self._load_train_state(saved)
        return self._last_metrics()

    def _save_train_state(self) -> dict[str, Any]:
        return {"experience": self.experience, "is_training": self.is_training}

    def _load_train_state(self, state: dict[str, Any]) -> None:
        self.experience = state["experience"]
        self.is_training = state["is_training"]

    def _before_eval_exp(self, **kwargs: Any) -> None:
        self._trigger("before_eval_exp", **kwargs)

    def _eval_exp(self, **kwargs: Any) -> None:
        raise NotImplementedError

    def _last_metrics(self) -> dict:
        return {}
