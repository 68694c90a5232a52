"""Plugin metrics: accuracy, loss, timing, forgetting and the accuracy matrix.

A metric is an object with some hook methods ``hook(strategy) -> list[MetricValue] | None``; the
``EvaluationPlugin`` calls them and collects what they return. Accumulation stays on the model's device;
values are read back (one sync) only when a metric is emitted. Under ``torch.distributed`` each rank
accumulates its own shard and the sums and counts are added over the ranks when a metric is emitted, so
every rank reports the global value (``Timing`` stays per rank).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from .. import distributed as dist
from .names import MetricValue, metric_name, stream_name, x_position


class _PerTask:
    """Weighted means per task label; sums may be device tensors (summed lazily)."""

    def __init__(self) -> None:
        self.sums: dict[int, Any] = {}
        self.weights: dict[int, float] = {}

    def add(self, task: int, value: Any, weight: float) -> None:
        self.sums[task] = self.sums.get(task, 0.0) + value
        self.weights[task] = self.weights.get(task, 0.0) + weight

    def result(self) -> dict[int, float]:
        return {t: float(self.sums[t]) / w for t, w in sorted(self.weights.items()) if w > 0}

    def overall(self) -> float:
        total = sum(self.weights.values())
        return float(sum(self.sums.values())) / total if total > 0 else math.nan

    def reduced(self) -> _PerTask:
        """The sums and weights added over all ranks (every rank gets the global values); ``self`` when
        not distributed. A collective: every rank must call it at the same point."""
        if dist.world_size() <= 1:
            return self
        tasks = sorted(set().union(*dist.all_gather_object(sorted(self.weights))))
        local = torch.tensor([float(self.sums.get(t, 0.0)) for t in tasks]
                             + [self.weights.get(t, 0.0) for t in tasks], dtype=torch.float64,
                             device=dist.comm_device())
        dist.all_reduce_sum_(local)
        values = local.tolist()
        out = _PerTask()
        n = len(tasks)
        for i, t in enumerate(tasks):
            out.sums[t], out.weights[t] = values[i], values[n + i]
        return out


def _task_masks(strategy: Any, n: int) -> list[tuple[int, torch.Tensor | None]]:
    """(task label, sample mask or None for all) of the current minibatch."""
    labels = getattr(strategy.experience, "task_labels", None)
    if labels is not None and len(labels) == 1:
        return [(int(labels[0]), None)]
    mbatch = strategy.mbatch
    if mbatch is not None and len(mbatch) >= 3 and isinstance(mbatch[-1], torch.Tensor) and mbatch[-1].numel() == n:
        t = mbatch[-1]
        return [(int(u), t == u) for u in torch.unique(t).tolist()]
    return [(0, None)]


def _correct(strategy: Any) -> torch.Tensor:
    out, y = strategy.mb_output, strategy.mb_y
    pred = out.argmax(dim=1) if out.dim() > 1 else out
    if y.dim() > 1:
        y = y.argmax(dim=1)
    return pred == y


def _accumulate_correct(acc: _PerTask, strategy: Any) -> None:
    correct = _correct(strategy)
    for task, mask in _task_masks(strategy, correct.numel()):
        sel = correct if mask is None else correct[mask]
        acc.add(task, sel.sum(), float(sel.numel()))


def _accumulate_loss(acc: _PerTask, strategy: Any) -> None:
    loss = strategy.loss.detach().mean()
    n = len(strategy.mb_y)
    for task, mask in _task_masks(strategy, n):
        k = n if mask is None else int(mask.sum())
        acc.add(task, loss * k, float(k))


class _EpochExpStream:
    """Shared shape of accuracy and loss: epoch (train), experience and stream (eval) levels."""

    base = ""

    def __init__(self, epoch: bool = True, experience: bool = True, stream: bool = True) -> None:
        self.epoch, self.experience, self.stream = epoch, experience, stream
        self._epoch = _PerTask()
        self._exp = _PerTask()
        self._stream = _PerTask()

    def _update(self, acc: _PerTask, strategy: Any) -> None:
        raise NotImplementedError

    def before_training_epoch(self, strategy: Any) -> None:
        self._epoch = _PerTask()

    def after_training_iteration(self, strategy: Any) -> None:
        if self.epoch:
            self._update(self._epoch, strategy)

    def _emit(self, enabled: bool, level: str, acc: _PerTask, strategy: Any,
              per_experience: bool = False) -> list[MetricValue] | None:
        """``{base}_{level}`` per task label of ``acc`` (reduced over ranks; named with the eval experience
        when ``per_experience``), or None when the level is off."""
        if not enabled:
            return None
        x, e = x_position(strategy), strategy.experience.current_experience if per_experience else None
        return [MetricValue(metric_name(f"{self.base}_{level}", strategy, t, e), v, x)
                for t, v in acc.reduced().result().items()]

    def after_training_epoch(self, strategy: Any) -> list[MetricValue] | None:
        return self._emit(self.epoch, "Epoch", self._epoch, strategy)

    def state_dict(self) -> dict[str, Any]:
        """The running epoch sums (what a checkpoint inside an epoch must carry; eval sums do not outlive an eval)."""
        return {"epoch_sums": {t: float(v) for t, v in self._epoch.sums.items()},
                "epoch_weights": dict(self._epoch.weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epoch = _PerTask()
        self._epoch.sums = {int(t): float(v) for t, v in state["epoch_sums"].items()}
        self._epoch.weights = {int(t): float(v) for t, v in state["epoch_weights"].items()}

    def before_eval(self, strategy: Any) -> None:
        self._stream = _PerTask()

    def before_eval_exp(self, strategy: Any) -> None:
        self._exp = _PerTask()

    def after_eval_iteration(self, strategy: Any) -> None:
        if self.experience or self.stream:
            per_iter = _PerTask()
            self._update(per_iter, strategy)
            for t in per_iter.weights:
                self._exp.add(t, per_iter.sums[t], per_iter.weights[t])
                self._stream.add(t, per_iter.sums[t], per_iter.weights[t])

    def after_eval_exp(self, strategy: Any) -> list[MetricValue] | None:
        return self._emit(self.experience, "Exp", self._exp, strategy, per_experience=True)

    def after_eval(self, strategy: Any) -> list[MetricValue] | None:
        return self._emit(self.stream, "Stream", self._stream, strategy)


class Accuracy(_EpochExpStream):
    """Top-1 accuracy in [0, 1]: ``Top1_Acc_Epoch`` (train), ``Top1_Acc_Exp`` and ``Top1_Acc_Stream`` (eval),
    per task label. The stream value pools all samples of the stream (not a mean over experiences)."""

    base = "Top1_Acc"

    def _update(self, acc: _PerTask, strategy: Any) -> None:
        _accumulate_correct(acc, strategy)


class Loss(_EpochExpStream):
    """Mean loss per sample, read from ``strategy.loss`` (so it includes plugins' penalties in training):
    ``Loss_Epoch`` (train), ``Loss_Exp`` and ``Loss_Stream`` (eval), per task label."""

    base = "Loss"

    def _update(self, acc: _PerTask, strategy: Any) -> None:
        _accumulate_loss(acc, strategy)


def _sync(strategy: Any) -> None:
    device = getattr(strategy, "device", None)
    if isinstance(device, torch.device) and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def _single_task(strategy: Any) -> int | None:
    labels = getattr(strategy.experience, "task_labels", None)
    return int(labels[0]) if labels is not None and len(labels) == 1 else None


class Timing:
    """Wall-clock seconds: ``Time_Epoch`` and ``RunningTime_Epoch`` (mean seconds per iteration) per training
    epoch, ``Time_Exp`` per training experience (sum of its epochs) and per eval experience. Periodic evals
    that run inside an epoch (iteration mode) are not counted in the epoch's time."""

    def __init__(self) -> None:
        self._epoch_t0 = self._eval_t0 = self._exp_t0 = 0.0  # perf_counter() at the start of each span
        self._paused = 0.0  # seconds of eval inside the current epoch, left out of its time
        self._exp_seconds = 0.0
        self._iters = 0

    def before_training_exp(self, strategy: Any) -> None:
        self._exp_seconds = 0.0

    def before_training_epoch(self, strategy: Any) -> None:
        _sync(strategy)
        self._iters = 0
        self._paused = 0.0
        self._epoch_t0 = time.perf_counter()

    def after_training_iteration(self, strategy: Any) -> None:
        self._iters += 1

    def after_training_epoch(self, strategy: Any) -> list[MetricValue]:
        _sync(strategy)
        dt = time.perf_counter() - self._epoch_t0 - self._paused
        self._exp_seconds += dt
        x, t = x_position(strategy), _single_task(strategy)
        per_iter = dt / self._iters if self._iters else math.nan
        return [MetricValue(metric_name("Time_Epoch", strategy, t), dt, x),
                MetricValue(metric_name("RunningTime_Epoch", strategy, t), per_iter, x)]

    def after_training_exp(self, strategy: Any) -> list[MetricValue]:
        return [MetricValue(metric_name("Time_Exp", strategy, _single_task(strategy),
                                        strategy.experience.current_experience), self._exp_seconds,
                            x_position(strategy))]

    def before_eval(self, strategy: Any) -> None:
        _sync(strategy)
        self._eval_t0 = time.perf_counter()

    def after_eval(self, strategy: Any) -> None:
        _sync(strategy)
        self._paused += time.perf_counter() - self._eval_t0

    def before_eval_exp(self, strategy: Any) -> None:
        _sync(strategy)
        self._exp_t0 = time.perf_counter()

    def after_eval_exp(self, strategy: Any) -> list[MetricValue]:
        _sync(strategy)
        return [MetricValue(metric_name("Time_Exp", strategy, _single_task(strategy),
                                        strategy.experience.current_experience),
                            time.perf_counter() - self._exp_t0, x_position(strategy))]


class Forgetting:
    """Avalanche's ``ExperienceForgetting`` and ``StreamForgetting`` on accuracy.

    For an eval experience k: "initial" = its accuracy in the latest eval during which the experience being
    trained (or last trained) is k; "last" = its accuracy in the current eval when the training experience is
    another one. Forgetting = initial - last, emitted only when both exist (so never for the experience just
    trained). The stream value is the mean over the experiences of the eval that have one (0 when none).
    """

    def __init__(self, experience: bool = True, stream: bool = True) -> None:
        self.experience, self.stream = experience, stream
        self.initial: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.train_exp_id: int | None = None
        self._acc = _PerTask()
        self._stream_values: list[float] = []

    def before_training_exp(self, strategy: Any) -> None:
        self.train_exp_id = strategy.experience.current_experience

    def before_eval(self, strategy: Any) -> None:
        self.last = {}
        self._stream_values = []

    def before_eval_exp(self, strategy: Any) -> None:
        self._acc = _PerTask()

    def after_eval_iteration(self, strategy: Any) -> None:
        correct = _correct(strategy)
        self._acc.add(0, correct.sum(), float(correct.numel()))

    def after_eval_exp(self, strategy: Any) -> list[MetricValue] | None:
        k = strategy.experience.current_experience
        acc = self._acc.reduced().overall()
        if k == self.train_exp_id:
            self.initial[k] = acc
        else:
            self.last[k] = acc
        if k not in self.initial or k not in self.last:
            return None
        value = self.initial[k] - self.last[k]
        self._stream_values.append(value)
        if not self.experience:
            return None
        return [MetricValue(metric_name("ExperienceForgetting", strategy, _single_task(strategy), k), value,
                            x_position(strategy))]

    def state_dict(self) -> dict[str, Any]:
        """What persists between evals (for checkpoints): the initial and last accuracies per experience."""
        return {"initial": dict(self.initial), "last": dict(self.last), "train_exp_id": self.train_exp_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial = {int(k): float(v) for k, v in state["initial"].items()}
        self.last = {int(k): float(v) for k, v in state["last"].items()}
        self.train_exp_id = None if state["train_exp_id"] is None else int(state["train_exp_id"])

    def after_eval(self, strategy: Any) -> list[MetricValue] | None:
        if not self.stream:
            return None
        vals = self._stream_values
        value = sum(vals) / len(vals) if vals else 0.0
        return [MetricValue(metric_name("StreamForgetting", strategy), value, x_position(strategy))]


class AccuracyMatrix:
    """Records ``A[i][j]``: accuracy on experience j of a stream after training experience i.

    Row i (0-based, counted across ``train()`` calls) holds the latest eval of that stream made after the
    i-th training experience started and before the next one starts: the eval after the experience (the
    usual ``train(exp); eval(test_stream)`` loop, or periodic eval's final one), else the last periodic eval
    inside the experience, which follows its last epoch (Avalanche's rules make the last eval of an
    experience come after its last epoch or iteration). Evals before any training are not rows.
    Emits nothing; read it with :meth:`matrix`.
    """

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, dict[int, float]]] = {}
        self._started = 0
        self._current: dict[int, float] = {}
        self._acc = _PerTask()

    def before_training_exp(self, strategy: Any) -> None:
        self._started += 1

    def before_eval(self, strategy: Any) -> None:
        self._current = {}

    def before_eval_exp(self, strategy: Any) -> None:
        self._acc = _PerTask()

    def after_eval_iteration(self, strategy: Any) -> None:
        correct = _correct(strategy)
        self._acc.add(0, correct.sum(), float(correct.numel()))

    def after_eval_exp(self, strategy: Any) -> None:
        self._current[strategy.experience.current_experience] = self._acc.reduced().overall()

    def after_eval(self, strategy: Any) -> None:
        if self._started == 0:
            return
        stream = stream_name(strategy.experience)
        self.rows.setdefault(stream, {}).setdefault(self._started - 1, {}).update(self._current)

    def state_dict(self) -> dict[str, Any]:
        """The recorded rows and the count of training experiences started (for checkpoints)."""
        return {"rows": {s: {i: dict(r) for i, r in rows.items()} for s, rows in self.rows.items()},
                "started": self._started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = {str(s): {int(i): {int(j): float(v) for j, v in r.items()} for i, r in rows.items()}
                     for s, rows in state["rows"].items()}
        self._started = int(state["started"])

    def matrix(self, stream: str = "test") -> list[list[float]]:
        """Rows for training experiences 0..last, columns for experience ids 0..max seen; NaN where unmeasured."""
        rows = self.rows.get(stream, {})
        cols = [j for r in rows.values() for j in r]
        if not rows or not cols:
            return []
        return [[rows.get(i, {}).get(j, math.nan) for j in range(max(cols) + 1)] for i in range(max(rows) + 1)]
