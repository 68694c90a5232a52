"""Plugin base classes: every hook of Avalanche's ``SupervisedPlugin``, each doing nothing.

A plugin does not have to derive from these classes. The template calls a hook on every plugin that has
an attribute of that name (``hook(strategy, **kwargs)``), so any object with a few hook methods works,
exactly as in Avalanche.
"""

from __future__ import annotations

from typing import Any

#: The 8 hooks of the outer loops (Avalanche's ``BasePlugin``), in the order they first fire, each with when it fires:
#: the one list of these hooks (the no-op methods of :class:`BasePlugin` are made from it).
_BASE_HOOK_DOCS: dict[str, str] = {
    "before_training": "Start of ``train()``, before the first experience.",
    "before_training_exp": "After dataset adaptation, dataloader creation and model/optimizer adaptation of an "
                           "experience.",
    "after_training_exp": "After the last epoch of an experience.",
    "after_training": "End of ``train()``.",
    "before_eval": "Start of ``eval()``.",
    "before_eval_exp": "After the eval dataloader and model adaptation of an experience.",
    "after_eval_exp": "After the last eval minibatch of an experience.",
    "after_eval": "End of ``eval()``.",
}

#: The 18 hooks added by the SGD loops (Avalanche's ``BaseSGDPlugin``), each with when it fires.
_SGD_HOOK_DOCS: dict[str, str] = {
    "before_train_dataset_adaptation": "Before ``strategy.adapted_dataset`` is built for a training experience.",
    "after_train_dataset_adaptation": "After ``strategy.adapted_dataset`` is built; it may be replaced here.",
    "before_training_epoch": "Start of an epoch.",
    "after_training_epoch": "End of an epoch.",
    "before_training_iteration": "A minibatch is unpacked (``strategy.mbatch`` on the device), before ``zero_grad``.",
    "after_training_iteration": "After the optimizer step of a minibatch.",
    "before_forward": "Before the training forward pass.",
    "after_forward": "``strategy.mb_output`` holds the training forward output.",
    "before_backward": "``strategy.loss`` holds the criterion; regularisers add their penalty here.",
    "after_backward": "Gradients are in ``.grad``.",
    "before_update": "Before ``optimizer.step()``.",
    "after_update": "After ``optimizer.step()``.",
    "before_eval_dataset_adaptation": "Before ``strategy.adapted_dataset`` is built for an eval experience.",
    "after_eval_dataset_adaptation": "After ``strategy.adapted_dataset`` is built for an eval experience.",
    "before_eval_iteration": "An eval minibatch is unpacked.",
    "before_eval_forward": "Before the eval forward pass.",
    "after_eval_forward": "``strategy.mb_output`` holds the eval forward output.",
    "after_eval_iteration": "``strategy.loss`` holds the eval criterion of the minibatch.",
}

#: The 8 hooks of the outer loops, in the order they first fire.
BASE_HOOKS: tuple[str, ...] = tuple(_BASE_HOOK_DOCS)

#: The 18 hooks added by the SGD loops.
SGD_HOOKS: tuple[str, ...] = tuple(_SGD_HOOK_DOCS)

#: All 26 hooks of a supervised plugin.
SUPERVISED_HOOKS: tuple[str, ...] = BASE_HOOKS + SGD_HOOKS


def _add_no_op_hooks(cls: type, docs: dict[str, str]) -> type:
    """Gives ``cls`` one method per hook of ``docs``, ``hook(self, strategy, **kwargs)``, that does nothing."""
    for name, doc in docs.items():
        def hook(self: Any, strategy: Any, **kwargs: Any) -> None:
            return None

        hook.__name__, hook.__qualname__, hook.__doc__ = name, f"{cls.__qualname__}.{name}", doc
        setattr(cls, name, hook)
    return cls


class BasePlugin:
    """The outer-loop hooks (training, experience, eval), all no-ops.

    ``supports_distributed`` is a per-class flag, set with ``class P(BasePlugin, supports_distributed=True)``;
    a subclass that does not repeat the keyword gets ``False`` (Avalanche's rule).
    """

    supports_distributed: bool = False

    def __init_subclass__(cls, supports_distributed: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.supports_distributed = supports_distributed


class BaseSGDPlugin(BasePlugin):
    """Adds the hooks of the epoch/minibatch loops and of dataset adaptation, all no-ops."""


class SupervisedPlugin(BaseSGDPlugin):
    """The base class of clfast's plugins: all 26 hooks of Avalanche's ``SupervisedPlugin``, each a no-op."""


_add_no_op_hooks(BasePlugin, _BASE_HOOK_DOCS)
_add_no_op_hooks(BaseSGDPlugin, _SGD_HOOK_DOCS)


def unknown_hook_names(plugin: object) -> list[str]:
    """Names on ``plugin`` that look like hooks (``before*``/``after*``) but are not supervised hooks."""
    known = set(SUPERVISED_HOOKS)
    return sorted(n for n in dir(plugin) if n.startswith(("before", "after")) and n not in known)
