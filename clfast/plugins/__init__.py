"""clfast's plugins: MAS, RWalk, SI and EWC on flat state and fused ops (one base class,
``RegularizerPlugin``, and one registry, ``PLUGINS``); CWR*.

All derive from ``SupervisedPlugin`` and use only the strategy attributes documented in
``docs/plugin-api.md``, so they also run inside an Avalanche strategy. ``docs/plugins.md`` describes each
one's cost and ``docs/avalanche-differences.md`` its differences from Avalanche.
"""

from __future__ import annotations

from ..training.plugins import SupervisedPlugin
from .base import RegularizerPlugin
from .cwr_star import CWRStarPlugin, get_last_fc_layer
from .ewc import EWCPlugin
from .latent_replay import LATENT_POLICIES, AR1Buffer, LatentReplayPlugin
from .mas import MASPlugin
from .registry import PLUGINS, PluginSpec
from .replay import ClassBalancedBuffer, ReplayPlugin, ReservoirSamplingBuffer, StoragePolicy
from .rwalk import RWalkPlugin
from .si import SynapticIntelligencePlugin, si_allowed_parameters

__all__ = ["LATENT_POLICIES", "PLUGINS", "AR1Buffer", "CWRStarPlugin", "ClassBalancedBuffer", "EWCPlugin",
           "LatentReplayPlugin", "MASPlugin", "PluginSpec", "RWalkPlugin", "RegularizerPlugin", "ReplayPlugin",
           "ReservoirSamplingBuffer", "StoragePolicy", "SupervisedPlugin", "SynapticIntelligencePlugin",
           "get_last_fc_layer", "si_allowed_parameters"]
