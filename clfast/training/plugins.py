"""Plugin base classes: every hook of Avalanche's ``SupervisedPlugin``, each doing nothing.

A plugin does not have to derive from these classes. The template calls a hook on every plugin that has
an attribute of that name (``hook(strategy, **kwargs)``), so any object with a few hook methods works,
exactly as in Avalanche.
"""

from __future__ import annotations

from typing import Any

#: The 8 hooks of the outer loops (Avalanche's ``BasePlugin``), in the order they first fire.
BASE_HOOKS: tuple[str, ...] = (
    "before_training",
    "before_training_exp",
    "after_training_exp",
    "after_training",
    "before_eval",
    "before_eval_exp",
    "after_eval_exp",
    "after_eval",
)

#: The 18 hooks added by the SGD loops (Avalanche's ``BaseSGDPlugin``).
SGD_HOOKS: tuple[str, ...] = (
    "before_train_dataset_adaptation",
    "after_train_dataset_adaptation",
    "before_training_epoch",
    "after_training_epoch",
    "before_training_iteration",
    "after_training_iteration",
    "before_forward",
    "after_forward",
    "before_backward",
    "after_backward",
    "before_update",
    "after_update",
    "before_eval_dataset_adaptation",
    "after_eval_dataset_adaptation",
    "before_eval_iteration",
    "before_eval_forward",
    "after_eval_forward",
    "after_eval_iteration",
)

#: All 26 hooks of a supervised plugin.
SUPERVISED_HOOKS: tuple[str, ...] = BASE_HOOKS + SGD_HOOKS


class BasePlugin:
    """The outer-loop hooks (training, experience, eval), all no-ops.

    ``supports_distributed`` is a per-class flag, set with ``class P(BasePlugin, supports_distributed=True)``;
    a subclass that does not repeat the keyword gets ``False`` (Avalanche's rule).
    """

    supports_distributed: bool = False

    def __init_subclass__(cls, supports_distributed: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.supports_distributed = supports_distributed

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Start of ``train()``, before the first experience."""

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """After dataset adaptation, dataloader creation and model/optimizer adaptation of an experience."""

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """After the last epoch of an experience."""

    def after_training(self, strategy: Any, **kwargs: Any) -> None:
        """End of ``train()``."""

    def before_eval(self, strategy: Any, **kwargs: Any) -> None:
        """Start of ``eval()``."""

    def before_eval_exp(self, strategy: Any, **kwargs: Any) -> None:
        """After the eval dataloader and model adaptation of an experience."""

    def after_eval_exp(self, strategy: Any, **kwargs: Any) -> None:
        """After the last eval minibatch of an experience."""

    def after_eval(self, strategy: Any, **kwargs: Any) -> None:
        """End of ``eval()``."""


class BaseSGDPlugin(BasePlugin):
    """Adds the hooks of the epoch/minibatch loops and of dataset adaptation, all no-ops."""

    def before_train_dataset_adaptation(self, strategy: Any, **kwargs: Any) -> None:
        """Before ``strategy.adapted_dataset`` is built for a training experience."""

    def after_train_dataset_adaptation(self, strategy: Any, **kwargs: Any) -> None:
        """After ``strategy.adapted_dataset`` is built; it may be replaced here."""

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        """Start of an epoch."""

    def after_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        """End of an epoch."""

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """A minibatch is unpacked (``strategy.mbatch`` on the device), before ``zero_grad``."""

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """After the optimizer step of a minibatch."""

    def before_forward(self, strategy: Any, **kwargs: Any) -> None:
        """Before the training forward pass."""

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        """``strategy.mb_output`` holds the training forward output."""

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        """``strategy.loss`` holds the criterion; regularisers add their penalty here."""

    def after_backward(self, strategy: Any, **kwargs: Any) -> None:
        """Gradients are in ``.grad``."""

    def before_update(self, strategy: Any, **kwargs: Any) -> None:
        """Before ``optimizer.step()``."""

    def after_update(self, strategy: Any, **kwargs: Any) -> None:
        """After ``optimizer.step()``."""

    def before_eval_dataset_adaptation(self, strategy: Any, **kwargs: Any) -> None:
        """Before ``strategy.adapted_dataset`` is built for an eval experience."""

    def after_eval_dataset_adaptation(self, strategy: Any, **kwargs: Any) -> None:
        """After ``strategy.adapted_dataset`` is built for an eval experience."""

    def before_eval_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """An eval minibatch is unpacked."""

    def before_eval_forward(self, strategy: Any, **kwargs: Any) -> None:
        """Before the eval forward pass."""

    def after_eval_forward(self, strategy: Any, **kwargs: Any) -> None:
        """``strategy.mb_output`` holds the eval forward output."""

    def after_eval_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """``strategy.loss`` holds the eval criterion of the minibatch."""


class SupervisedPlugin(BaseSGDPlugin):
    """The base class of clfast's plugins: all 26 hooks of Avalanche's ``SupervisedPlugin``, each a no-op."""


def unknown_hook_names(plugin: object) -> list[str]:
    """Names on ``plugin`` that look like hooks (``before*``/``after*``) but are not supervised hooks."""
    known = set(SUPERVISED_HOOKS)
    return sorted(n for n in dir(plugin) if n.startswith(("before", "after")) and n not in known)
