"""Loggers: receive metric values from the ``EvaluationPlugin`` (``log_metrics``) and, optionally, hooks.

``InteractiveLogger`` shows tqdm progress bars and one line per epoch / eval experience; ``JSONLogger`` and
``CSVLogger`` write files; ``TensorboardLogger`` works when ``torch.utils.tensorboard`` imports.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from functools import partialmethod
from pathlib import Path
from typing import Any, TextIO

from .names import MetricValue


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))


class BaseLogger:
    """A logger: ``log_metrics`` receives the values emitted on each hook."""

    def log_metrics(self, values: list[MetricValue]) -> None:
        """Called with the values a hook produced (never empty)."""

    def close(self) -> None:
        """Flushes and releases files."""


class InteractiveLogger(BaseLogger):
    """Progress bars (tqdm, on stderr; ``progress=False`` turns them off) over minibatches and, unless
    ``lines=False``, a summary line per epoch and per eval experience (on ``file``, default stdout)."""

    def __init__(self, file: TextIO | None = None, progress: bool = True, lines: bool = True) -> None:
        self.file = file
        self.progress = progress
        self.lines = lines
        # one bar per phase: periodic eval in iteration mode runs while the training bar is open
        self._bars: dict[str, Any] = {"train": None, "eval": None}
        self._pending: list[MetricValue] = []

    def log_metrics(self, values: list[MetricValue]) -> None:
        self._pending.extend(values)

    def _print(self, head: str) -> None:
        if not self.lines:
            self._pending = []
            return
        parts = [head]
        for v in self._pending:
            base = v.name.split("/")[0]
            parts.append(f"{base}={v.value:.4f}" if isinstance(v.value, float) else f"{base}={v.value}")
        self._pending = []
        print("  ".join(parts), file=self.file or sys.stdout)

    @staticmethod
    def _label(phase: str, strategy: Any) -> str:
        e = strategy.experience.current_experience
        if phase == "train":
            return f"exp {e} epoch {strategy.clock.train_exp_epochs + 1}/{strategy.train_epochs}"
        return f"exp {e}"

    def _print_line(self, phase: str, what: str) -> None:
        self._print(f"{'[' + phase + ']':<7} {what}")  # "[eval] " padded to the width of "[train]"

    def _open_bar(self, phase: str, strategy: Any, **kwargs: Any) -> None:
        """A bar over the minibatches of a training epoch or an eval experience."""
        if not self.progress:
            return
        from tqdm.auto import tqdm

        try:
            total = len(strategy.dataloader)
        except TypeError:
            total = None
        self._bars[phase] = tqdm(total=total, desc=f"{phase} {self._label(phase, strategy)}", leave=False,
                                 file=sys.stderr, dynamic_ncols=True)

    def _step_bar(self, phase: str, strategy: Any, **kwargs: Any) -> None:
        if self._bars[phase] is not None:
            self._bars[phase].update(1)

    def _close_bar(self, phase: str) -> None:
        if self._bars[phase] is not None:
            self._bars[phase].close()
        self._bars[phase] = None

    def _end(self, phase: str, strategy: Any, **kwargs: Any) -> None:
        """The end of a training epoch or an eval experience: its bar closes, its summary line prints."""
        self._close_bar(phase)
        self._print_line(phase, self._label(phase, strategy))

    before_training_epoch = partialmethod(_open_bar, "train")
    after_training_iteration = partialmethod(_step_bar, "train")
    after_training_epoch = partialmethod(_end, "train")
    before_eval_exp = partialmethod(_open_bar, "eval")
    after_eval_iteration = partialmethod(_step_bar, "eval")
    after_eval_exp = partialmethod(_end, "eval")

    def after_eval(self, strategy: Any, **kwargs: Any) -> None:
        self._print_line("eval", "stream")

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self._pending:
            self._print_line("train", f"exp {strategy.experience.current_experience} done")

    def close(self) -> None:
        for phase in self._bars:
            self._close_bar(phase)


class JSONLogger(BaseLogger):
    """Writes every value as ``{"metrics": [{"name", "x", "value"}, ...]}`` to ``path``, rewritten at the end
    of every ``train()`` / ``eval()`` and on ``close()``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []

    def log_metrics(self, values: list[MetricValue]) -> None:
        self.records.extend({"name": v.name, "x": v.x, "value": v.value} for v in values)

    def _write(self) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps({"metrics": self.records}, indent=1))
        tmp.replace(self.path)

    def after_training(self, strategy: Any, **kwargs: Any) -> None:
        self._write()

    def after_eval(self, strategy: Any, **kwargs: Any) -> None:
        self._write()

    def close(self) -> None:
        self._write()


class CSVLogger(BaseLogger):
    """Appends one ``name,x,value`` row per value to ``path`` (header written once)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = self.path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(["name", "x", "value"])

    def log_metrics(self, values: list[MetricValue]) -> None:
        if self._file is None:
            raise ValueError(f"CSVLogger for {self.path} is closed")
        self._writer.writerows([v.name, v.x, v.value] for v in values)

    def after_training(self, strategy: Any, **kwargs: Any) -> None:
        if self._file is not None:
            self._file.flush()

    def after_eval(self, strategy: Any, **kwargs: Any) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorboardLogger(BaseLogger):
    """Scalars to TensorBoard (``add_scalar(name, value, x)``). Needs ``torch.utils.tensorboard`` (the
    ``tensorboard`` package); raises ``ImportError`` with an install hint otherwise."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError("TensorboardLogger needs the tensorboard package: pip install tensorboard") from err
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_metrics(self, values: list[MetricValue]) -> None:
        for v in values:
            if _finite_number(v.value):
                self.writer.add_scalar(v.name, v.value, v.x)

    def close(self) -> None:
        self.writer.close()


def tensorboard_available() -> bool:
    """True when ``torch.utils.tensorboard`` can be imported."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True
