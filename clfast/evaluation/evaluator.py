"""``EvaluationPlugin``: runs metrics on the strategy's hooks, keeps their values, feeds loggers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .. import distributed as dist
from .loggers import InteractiveLogger
from .metrics import Accuracy, AccuracyMatrix, Forgetting, Loss, Timing
from .names import MetricValue

_HOOK_PREFIXES = ("before_", "after_")


def _flatten(items: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


class EvaluationPlugin:
    """Collects metric values on every hook.

    Like Avalanche's, it is not a ``BasePlugin``: it answers every ``before_*``/``after_*`` name, calling
    ``metric.<hook>(strategy)`` on each metric that has it, recording what they return, then passing the new
    values to each logger's ``log_metrics`` and calling ``logger.<hook>(strategy, **kwargs)`` when present.
    Under ``torch.distributed`` the metrics are reduced over the ranks and only rank 0 calls the loggers.

    Args:
        *metrics: metric objects (or lists of them).
        loggers: logger objects; ``None`` means none.
        collect_all: keep the full history (``get_all_metrics``), not only the last values.
    """

    supports_distributed = True

    def __init__(self, *metrics: Any, loggers: Iterable[Any] | None = None, collect_all: bool = True) -> None:
        self.metrics: list[Any] = _flatten(metrics)
        self.loggers: list[Any] = [] if loggers is None else list(loggers)
        self.collect_all = collect_all
        self.last_metric_results: dict[str, Any] = {}
        self.all_metric_results: dict[str, tuple[list[int], list[Any]]] = {}

    def __getattr__(self, name: str) -> Callable[..., None]:
        # Only reached for names not found normally: synthesise (and cache) a dispatcher for hook names.
        if not name.startswith(_HOOK_PREFIXES):
            raise AttributeError(name)

        def dispatch(strategy: Any, **kwargs: Any) -> None:
            self._dispatch(name, strategy, **kwargs)

        self.__dict__[name] = dispatch
        return dispatch

    def _dispatch(self, hook: str, strategy: Any, **kwargs: Any) -> None:
        values: list[MetricValue] = []
        for metric in self.metrics:
            fn = getattr(metric, hook, None)
            if fn is not None:
                out = fn(strategy)
                if out:
                    values.extend(out)
        for v in values:
            self.last_metric_results[v.name] = v.value
            if self.collect_all:
                xs, ys = self.all_metric_results.setdefault(v.name, ([], []))
                xs.append(v.x)
                ys.append(v.value)
        if not dist.is_main_process():  # loggers write on rank 0 only (every rank keeps the values)
            return
        for logger in self.loggers:
            if values:
                logger.log_metrics(values)
            fn = getattr(logger, hook, None)
            if fn is not None:
                fn(strategy, **kwargs)

    def get_last_metrics(self) -> dict[str, Any]:
        """A copy of ``{name: last value}`` of every metric emitted so far (train and eval)."""
        return dict(self.last_metric_results)

    def get_all_metrics(self) -> dict[str, tuple[list[int], list[Any]]]:
        """``{name: ([x...], [value...])}``, x = ``clock.train_iterations`` at emission."""
        return {k: (list(x), list(v)) for k, (x, v) in self.all_metric_results.items()}

    def accuracy_matrix(self, stream: str = "test") -> list[list[float]]:
        """The accuracy matrix of ``stream`` from the first ``AccuracyMatrix`` metric (see its docs)."""
        for m in self.metrics:
            if isinstance(m, AccuracyMatrix):
                return m.matrix(stream)
        raise ValueError("this evaluator has no AccuracyMatrix metric")

    def state_dict(self) -> dict[str, Any]:
        """Metric history and the state of the metrics that keep some between evals (for checkpoints)."""
        return {
            "last": dict(self.last_metric_results),
            "all": {k: (list(x), list(v)) for k, (x, v) in self.all_metric_results.items()},
            "metrics": [m.state_dict() if hasattr(m, "state_dict") else None for m in self.metrics],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the evaluator must have the same metrics, in the same order."""
        saved = state["metrics"]
        mine = [hasattr(m, "state_dict") for m in self.metrics]
        if len(saved) != len(self.metrics) or [s is not None for s in saved] != mine:
            raise ValueError(f"evaluator state has {len(saved)} metrics, this evaluator has {len(self.metrics)} "
                             "(or a different kind in some position): build it with the same metrics")
        for m, s in zip(self.metrics, saved, strict=True):
            if s is not None:
                m.load_state_dict(s)
        self.last_metric_results = dict(state["last"])
        self.all_metric_results = {k: (list(x), list(v)) for k, (x, v) in state["all"].items()}

    def close(self) -> None:
        """Closes the loggers that have a ``close`` method (flushes files)."""
        for logger in self.loggers:
            fn = getattr(logger, "close", None)
            if fn is not None:
                fn()


def default_metrics() -> list[Any]:
    """Accuracy and loss (epoch/experience/stream), timing, forgetting and the accuracy matrix."""
    return [Accuracy(), Loss(), Timing(), Forgetting(), AccuracyMatrix()]


def default_evaluator() -> EvaluationPlugin:
    """A new evaluator with :func:`default_metrics` and an ``InteractiveLogger`` (Avalanche's default shape)."""
    return EvaluationPlugin(*default_metrics(), loggers=[InteractiveLogger()])
