"""Naive plus one regularisation plugin, for ``clfast train --strategy mas|rwalk|si|ewc``.

Default strengths were picked on Split-MNIST (1 epoch) and Split-Digits (4 epochs) with the command's SGD
(lr 0.05, momentum 0.9): about 3× larger makes training diverge on one of them (NaN gradients, which the
plugins refuse with a ValueError). Class-incremental streams are hard for regularisers: expect little gain.
``clfast train --reg-lambda X`` overrides the strength.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.optim import Optimizer

from ..plugins import EWCPlugin, MASPlugin, RWalkPlugin, SynapticIntelligencePlugin
from .naive import Naive

#: name -> (plugin factory taking the strength, default strength).
PLUGIN_FACTORIES: dict[str, tuple[Callable[[float], Any], float]] = {
    "mas": (lambda lam: MASPlugin(lambda_reg=lam, alpha=0.5), 0.01),
    "rwalk": (lambda lam: RWalkPlugin(ewc_lambda=lam, ewc_alpha=0.9, delta_t=10), 10.0),
    "si": (lambda lam: SynapticIntelligencePlugin(si_lambda=lam), 0.1),
    "ewc": (lambda lam: EWCPlugin(ewc_lambda=lam, mode="separate"), 300.0),
}


def regularized(name: str, reg_lambda: float | None = None) -> Callable[..., Naive]:
    """A constructor of ``Naive`` with the plugin ``name`` (strength ``reg_lambda``, default per plugin)
    placed first among the plugins, taking Naive's arguments."""
    factory, default = PLUGIN_FACTORIES[name]

    def build(model: nn.Module, optimizer: Optimizer, criterion: Any = None, *,
              plugins: list[Any] | None = None, **kwargs: Any) -> Naive:
        plugin = factory(default if reg_lambda is None else reg_lambda)
        return Naive(model, optimizer, criterion, plugins=[plugin, *(plugins or [])], **kwargs)

    build.__name__ = f"naive_{name}"
    build.__doc__ = f"Naive with {type(factory(default)).__name__} (default strength {default})."
    return build


REGULARIZED: dict[str, Callable[..., Naive]] = {name: regularized(name) for name in PLUGIN_FACTORIES}
