"""Naive plus one regularisation plugin, for ``clfast train --strategy mas|rwalk|si|ewc``.

The plugins and their default strengths are ``clfast.plugins.PLUGINS`` (the registry says how they were
picked). Class-incremental streams are hard for regularisers: expect little gain. ``clfast train --reg-lambda X``
overrides the strength.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.optim import Optimizer

from ..plugins.registry import PLUGINS
from .naive import Naive


def regularized(name: str, reg_lambda: float | None = None) -> Callable[..., Naive]:
    """A constructor of ``Naive`` with the plugin ``name`` (strength ``reg_lambda``, default per plugin)
    placed first among the plugins, taking Naive's arguments."""
    spec = PLUGINS[name]

    def build(model: nn.Module, optimizer: Optimizer, criterion: Any = None, *,
              plugins: list[Any] | None = None, **kwargs: Any) -> Naive:
        return Naive(model, optimizer, criterion, plugins=[spec.make(reg_lambda), *(plugins or [])], **kwargs)

    build.__name__ = f"naive_{name}"
    build.__doc__ = f"Naive with {spec.cls.__name__} (default strength {spec.default_strength})."
    return build


REGULARIZED: dict[str, Callable[..., Naive]] = {name: regularized(name) for name in PLUGINS}
