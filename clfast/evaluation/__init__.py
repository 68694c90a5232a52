"""Evaluation: metrics (accuracy matrix, forgetting, loss, time), the ``EvaluationPlugin`` and loggers."""

from __future__ import annotations

from .evaluator import EvaluationPlugin, default_evaluator, default_metrics
from .loggers import BaseLogger, CSVLogger, InteractiveLogger, JSONLogger, TensorboardLogger, tensorboard_available
from .matrix import average_accuracy, average_accuracy_per_step, average_forgetting, forgetting, format_matrix
from .metrics import Accuracy, AccuracyMatrix, Forgetting, Loss, Timing
from .names import MetricValue, metric_name
from .plot import plot_accuracy_matrix

__all__ = [
    "Accuracy",
    "AccuracyMatrix",
    "BaseLogger",
    "CSVLogger",
    "EvaluationPlugin",
    "Forgetting",
    "InteractiveLogger",
    "JSONLogger",
    "Loss",
    "MetricValue",
    "TensorboardLogger",
    "Timing",
    "average_accuracy",
    "average_accuracy_per_step",
    "average_forgetting",
    "default_evaluator",
    "default_metrics",
    "forgetting",
    "format_matrix",
    "metric_name",
    "plot_accuracy_matrix",
    "tensorboard_available",
]
