"""Metric math on a hand-made case: an oracle model whose predictions the test sets, so every accuracy,
loss and forgetting value below is computed by hand from the chosen table."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from torch import nn

from clfast.evaluation import (
    Accuracy,
    AccuracyMatrix,
    CSVLogger,
    EvaluationPlugin,
    Forgetting,
    InteractiveLogger,
    JSONLogger,
    Loss,
    TensorboardLogger,
    Timing,
    average_accuracy,
    average_accuracy_per_step,
    average_forgetting,
    default_metrics,
    forgetting,
    format_matrix,
    tensorboard_available,
)
from clfast.strategies import Naive
from clfast.testing.fakes import Experience, Stream, TensorExperienceDataset

C, L, N = 6, 2.0, 4  # classes, logit of the predicted class, samples per experience
A = [[1.0, 0.25, 0.0],
     [0.75, 0.75, 0.25],
     [0.25, 0.5, 1.0]]


class Oracle(nn.Module):
    """Input = sample id; predicts ``table[id]`` with logit L (0 elsewhere)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.register_buffer("table", torch.zeros(1000, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pred = self.table[x.long().view(-1)]
        return L * nn.functional.one_hot(pred, C).float() + 0 * self.w


def _stream(name: str, first_id: int, n_exps: int = 3, tasks: list[int] | None = None) -> Stream:
    stream = Stream(name)
    for e in range(n_exps):
        ids = torch.arange(first_id + e * N, first_id + (e + 1) * N).float().unsqueeze(1)
        y = torch.full((N,), e)
        t = torch.tensor(tasks) if tasks else torch.zeros(N, dtype=torch.long)
        exp = Experience(TensorExperienceDataset(ids, y, t), e, stream)
        exp.task_labels = sorted(set(t.tolist()))
        stream.append(exp)
    return stream


def _set_correct(model: Oracle, exp: Experience, k: int) -> None:
    """The first k samples of ``exp`` predicted right, the rest wrong."""
    ids = exp.dataset.x.long().view(-1)
    y = exp.dataset.targets
    model.table[ids] = torch.where(torch.arange(len(ids)) < k, y, (y + 1) % C)


def _ce(correct: bool) -> float:
    return math.log(1 + (C - 1) * math.exp(-L)) if correct else math.log(math.exp(L) + C - 1)


@pytest.fixture
def run():
    torch.manual_seed(0)
    model = Oracle()
    evaluator = EvaluationPlugin(*default_metrics())
    s = Naive(model, torch.optim.SGD(model.parameters(), lr=0.0), train_mb_size=2, evaluator=evaluator)
    train, test = _stream("train", 0), _stream("test", 100)
    results = []
    for i, exp in enumerate(train):
        s.train(exp)
        for j, texp in enumerate(test):
            _set_correct(model, texp, round(A[i][j] * N))
        results.append(s.eval(test))
    return s, evaluator, results


def test_accuracy_matrix_rows_are_evals_after_each_experience(run):
    _, evaluator, _ = run
    assert evaluator.accuracy_matrix("test") == A


def test_experience_and_stream_accuracy(run):
    _, _, results = run
    last = results[-1]
    for j in range(3):
        assert last[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}"] == A[2][j]
    # the stream value pools the 12 samples: 1 + 2 + 4 correct
    assert last["Top1_Acc_Stream/eval_phase/test_stream/Task000"] == pytest.approx(7 / 12)
    assert results[0]["Top1_Acc_Stream/eval_phase/test_stream/Task000"] == pytest.approx(5 / 12)


def test_avalanche_forgetting_initial_minus_last(run):
    _, _, results = run
    # after exp 1: exp 0 forgot 1.0 - 0.75; after exp 2: exp 0 1.0 - 0.25, exp 1 0.75 - 0.5
    assert results[0]["StreamForgetting/eval_phase/test_stream"] == 0.0
    assert results[1]["StreamForgetting/eval_phase/test_stream"] == pytest.approx(0.25)
    assert results[1]["ExperienceForgetting/eval_phase/test_stream/Task000/Exp000"] == pytest.approx(0.25)
    last = results[2]
    assert last["ExperienceForgetting/eval_phase/test_stream/Task000/Exp000"] == pytest.approx(0.75)
    assert last["ExperienceForgetting/eval_phase/test_stream/Task000/Exp001"] == pytest.approx(0.25)
    assert last["StreamForgetting/eval_phase/test_stream"] == pytest.approx(0.5)
    # never reported for an experience evaluated only before, or right after, its own training
    assert not any(k.endswith("Exp002") and k.startswith("ExperienceForgetting") for k in last)


def test_matrix_summaries_by_hand():
    assert average_accuracy(A) == pytest.approx((0.25 + 0.5 + 1.0) / 3)
    assert average_accuracy(A, row=0) == pytest.approx(1.25 / 3)
    assert average_accuracy_per_step(A, seen_only=True) == pytest.approx([1.0, 0.75, 1.75 / 3])
    f = forgetting(A)
    assert f[:2] == pytest.approx([0.75, 0.25]) and math.isnan(f[2])
    assert average_forgetting(A) == pytest.approx(0.5)
    assert average_forgetting([[0.9]]) == 0.0
    text = format_matrix(A)
    assert "100.0" in text and "25.0" in text and len(text.splitlines()) == 4
    with pytest.raises(ValueError):
        average_accuracy([])


def test_eval_loss_by_hand(run):
    _, _, results = run
    last = results[-1]
    exp0 = (_ce(True) + 3 * _ce(False)) / 4  # A[2][0] = 0.25: 1 of 4 right
    assert last["Loss_Exp/eval_phase/test_stream/Task000/Exp000"] == pytest.approx(exp0, rel=1e-6)
    stream = (7 * _ce(True) + 5 * _ce(False)) / 12
    assert last["Loss_Stream/eval_phase/test_stream/Task000"] == pytest.approx(stream, rel=1e-6)


def test_results_are_cumulative_and_x_is_the_train_iteration(run):
    s, evaluator, results = run
    assert "Top1_Acc_Epoch/train_phase/train_stream/Task000" in results[-1]  # train entries stay
    xs, vals = evaluator.get_all_metrics()["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    assert xs == [2, 4, 6] and vals == pytest.approx([5 / 12, 7 / 12, 7 / 12])  # 4+1+0, 3+3+1, 1+2+4
    assert s.clock.train_iterations == 6


def test_timing_metrics(run):
    _, _, results = run
    last = results[-1]
    epoch = last["Time_Epoch/train_phase/train_stream/Task000"]
    assert epoch > 0
    assert last["RunningTime_Epoch/train_phase/train_stream/Task000"] == pytest.approx(epoch / 2)
    assert last["Time_Exp/train_phase/train_stream/Task000/Exp002"] == pytest.approx(epoch)
    assert last["Time_Exp/eval_phase/test_stream/Task000/Exp001"] > 0


def test_train_epoch_accuracy_and_loss_per_task_label_and_loss_includes_penalties():
    model = Oracle()
    stream = _stream("train", 0, n_exps=1, tasks=[0, 0, 1, 1])
    _set_correct(model, stream[0], 1)  # task 0: ids 0, 1 -> 1 of 2 right; task 1: 0 of 2

    class Penalty:
        def before_backward(self, strategy, **kw):
            strategy.loss += 5.0

    s = Naive(model, torch.optim.SGD(model.parameters(), lr=0.0), train_mb_size=4, plugins=[Penalty()],
              evaluator=EvaluationPlugin(Accuracy(), Loss()))
    r = s.train(stream)
    assert r["Top1_Acc_Epoch/train_phase/train_stream/Task000"] == 0.5
    assert r["Top1_Acc_Epoch/train_phase/train_stream/Task001"] == 0.0
    batch_loss = (_ce(True) + 3 * _ce(False)) / 4 + 5.0  # one minibatch: its mean loss, penalty included
    assert r["Loss_Epoch/train_phase/train_stream/Task000"] == pytest.approx(batch_loss, rel=1e-6)
    assert r["Loss_Epoch/train_phase/train_stream/Task001"] == pytest.approx(batch_loss, rel=1e-6)


def test_periodic_eval_rows_use_the_last_eval_of_each_experience():
    model = Oracle()
    train, test = _stream("train", 0, n_exps=2), _stream("test", 100, n_exps=2)

    class SetTable:  # before each epoch, predictions get one more right on test exp 0
        k = 0

        def before_training_epoch(self, strategy, **kw):
            SetTable.k += 1
            _set_correct(model, test[0], SetTable.k)

    evaluator = EvaluationPlugin(AccuracyMatrix())
    s = Naive(model, torch.optim.SGD(model.parameters(), lr=0.0), train_mb_size=4, train_epochs=2, eval_every=1,
              plugins=[SetTable()], evaluator=evaluator)
    s.train(train, eval_streams=[test])
    m = evaluator.accuracy_matrix("test")
    assert [row[0] for row in m] == [0.5, 1.0]  # after epochs 2 and 4, not 1 and 3
    assert evaluator.accuracy_matrix("nothing") == []


def test_file_loggers_write_every_value(tmp_path):
    model = Oracle()
    jl, cl = JSONLogger(tmp_path / "m.json"), CSVLogger(tmp_path / "m.csv")
    ev = EvaluationPlugin(Accuracy(), Forgetting(), Timing(), loggers=[jl, cl])
    s = Naive(model, torch.optim.SGD(model.parameters(), lr=0.0), train_mb_size=4, evaluator=ev)
    test = _stream("test", 100, n_exps=2)
    s.train(_stream("train", 0, n_exps=1))
    s.eval(test)
    ev.close()
    data = json.loads((tmp_path / "m.json").read_text())["metrics"]
    names = {d["name"] for d in data}
    assert "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001" in names
    assert "StreamForgetting/eval_phase/test_stream" in names
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0] == "name,x,value" and len(rows) == len(data) + 1


@pytest.mark.parametrize("progress", [False, True])
def test_interactive_logger_prints_a_line_per_epoch_and_eval_experience(progress):
    out = io.StringIO()
    model = Oracle()
    logger = InteractiveLogger(file=out, progress=progress)
    ev = EvaluationPlugin(Accuracy(), loggers=[logger])
    s = Naive(model, torch.optim.SGD(model.parameters(), lr=0.0), train_mb_size=4, train_epochs=2, evaluator=ev)
    s.train(_stream("train", 0, n_exps=1))
    s.eval(_stream("test", 100, n_exps=2))
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("[train] exp 0 epoch") for line in lines) == 2
    assert sum(line.startswith("[eval]  exp") for line in lines) == 2
    assert any("Top1_Acc_Stream=" in line for line in lines)
    assert all(bar is None for bar in logger._bars.values())  # every bar opened was closed


def test_tensorboard_logger_is_optional(tmp_path):
    if tensorboard_available():
        logger = TensorboardLogger(tmp_path / "tb")
        logger.close()
    else:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            TensorboardLogger(tmp_path / "tb")


def test_evaluator_without_matrix_metric_says_so():
    with pytest.raises(ValueError, match="AccuracyMatrix"):
        EvaluationPlugin(Accuracy()).accuracy_matrix()


def test_epoch_time_excludes_periodic_evals_inside_the_epoch():
    import time

    class SlowEval:
        def before_eval_iteration(self, strategy, **kw):
            time.sleep(0.05)

    model = Oracle()
    s = Naive(model, torch.optim.SGD(model.parameters(), lr=0.0), train_mb_size=1, eval_mb_size=4, eval_every=2,
              peval_mode="iteration", plugins=[SlowEval()], evaluator=EvaluationPlugin(Timing()))
    r = s.train(_stream("train", 0, n_exps=1), eval_streams=[_stream("test", 100, n_exps=1)])
    # two evals ran inside the epoch (after iterations 1 and 3), 0.05 s each
    assert r["Time_Epoch/train_phase/train_stream/Task000"] < 0.05
