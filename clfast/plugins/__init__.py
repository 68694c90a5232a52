"""clfast's plugins (MAS, RWalk, SI, EWC, CWR* are added by later issues). All derive from ``SupervisedPlugin``
and use only the strategy attributes documented in ``docs/plugin-api.md``."""

from __future__ import annotations

from ..training.plugins import SupervisedPlugin

__all__ = ["SupervisedPlugin"]
