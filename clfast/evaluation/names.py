"""Metric values and Avalanche-style metric names:
``{Metric}/{phase}_phase/{stream}_stream/Task{t:03}[/Exp{e:03}]``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricValue:
    """One emitted value: its full name, the value, and ``x`` = ``clock.train_iterations`` at emission."""

    name: str
    value: Any
    x: int


def stream_name(experience: Any, default: str = "unknown") -> str:
    """The name of the stream an experience comes from (``origin_stream.name``)."""
    origin = getattr(experience, "origin_stream", None)
    name = getattr(origin, "name", None)
    return str(name) if name is not None else default


def phase_name(strategy: Any) -> str:
    """``"train"`` while training, ``"eval"`` otherwise."""
    return "train" if strategy.is_training else "eval"


def metric_name(base: str, strategy: Any, task: int | None = None, experience: int | None = None) -> str:
    """``{base}/{phase}_phase/{stream}_stream[/Task{task:03}][/Exp{experience:03}]``."""
    name = f"{base}/{phase_name(strategy)}_phase/{stream_name(strategy.experience)}_stream"
    if task is not None:
        name += f"/Task{int(task):03d}"
    if experience is not None:
        name += f"/Exp{int(experience):03d}"
    return name


def x_position(strategy: Any) -> int:
    """The x of a metric value: the clock's global training iteration count."""
    clock = getattr(strategy, "clock", None)
    return int(getattr(clock, "train_iterations", 0))
