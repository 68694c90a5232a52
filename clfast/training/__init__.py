"""Training templates with Avalanche's hook API: plugins, clock, periodic eval, the supervised template."""

from __future__ import annotations

from .base import BaseTemplate
from .clock import Clock
from .periodic_eval import PeriodicEval
from .plugins import BASE_HOOKS, SGD_HOOKS, SUPERVISED_HOOKS, BasePlugin, BaseSGDPlugin, SupervisedPlugin
from .templates import SupervisedTemplate

__all__ = [
    "BASE_HOOKS",
    "SGD_HOOKS",
    "SUPERVISED_HOOKS",
    "BasePlugin",
    "BaseSGDPlugin",
    "BaseTemplate",
    "Clock",
    "PeriodicEval",
    "SupervisedPlugin",
    "SupervisedTemplate",
]
