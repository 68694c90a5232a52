"""The one list of clfast's regularisation plugins: ``PLUGINS[name]`` by command-line name (``clfast train
--strategy NAME``), each with its class, the keyword of its strength and the command line's defaults.

Read by ``clfast.strategies.regularized`` (the CLI strategies), the plugin tests, the distributed test and
``benchmarks/bench_plugins.py``: a new regulariser is one source file, one test file and one entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .base import RegularizerPlugin
from .ewc import EWCPlugin
from .mas import MASPlugin
from .rwalk import RWalkPlugin
from .si import SynapticIntelligencePlugin

__all__ = ["PLUGINS", "PluginSpec"]


@dataclass(frozen=True)
class PluginSpec:
    """A regulariser as the command line builds it.

    Attributes:
        name: the command-line name (``--strategy NAME``).
        cls: the plugin class.
        strength: the constructor keyword of the penalty strength (``--reg-lambda``).
        default_strength: the command line's strength when ``--reg-lambda`` is not given.
        defaults: the other constructor keywords the command line passes.
    """

    name: str
    cls: type[RegularizerPlugin]
    strength: str
    default_strength: float
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))  # frozen all the way down

    def make(self, strength: float | None = None, **overrides: Any) -> RegularizerPlugin:
        """A new plugin: ``defaults``, the strength (``default_strength`` when None), then ``overrides``."""
        kwargs = {**self.defaults, self.strength: self.default_strength if strength is None else strength,
                  **overrides}
        return self.cls(**kwargs)


def _specs(*specs: PluginSpec) -> dict[str, PluginSpec]:
    return {s.name: s for s in specs}


#: Default strengths were picked on Split-MNIST (1 epoch) and Split-Digits (4 epochs) with the command's SGD
#: (lr 0.05, momentum 0.9): about 3× larger makes training diverge on one of them (NaN gradients, which the
#: plugins refuse with a ValueError).
PLUGINS: dict[str, PluginSpec] = _specs(
    PluginSpec("mas", MASPlugin, "lambda_reg", 0.01, {"alpha": 0.5}),
    PluginSpec("rwalk", RWalkPlugin, "ewc_lambda", 10.0, {"ewc_alpha": 0.9, "delta_t": 10}),
    # Ω floored at 0: Avalanche's SI lets Ω go negative, and on task-incremental Split-Digits (a new head per
    # task) the penalty then drives the loss to -1e4 in the fifth experience (clfast compare --strategies si).
    PluginSpec("si", SynapticIntelligencePlugin, "si_lambda", 0.1, {"min_importance": 0.0}),
    PluginSpec("ewc", EWCPlugin, "ewc_lambda", 300.0, {"mode": "separate"}),
)
