"""The templates against the hook/clock specification (docs/avalanche-semantics.md §1).

Expected hook sequences are written out from the spec's text (§1.4 train order, §1.5 eval order, §1.7 clock
table, §1.8 periodic eval), independently of the implementation.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clfast.evaluation import EvaluationPlugin
from clfast.plugins import SupervisedPlugin
from clfast.strategies import Naive
from clfast.testing.fakes import Stream, make_stream
from clfast.training import SUPERVISED_HOOKS, SupervisedTemplate

CLOCK_FIELDS = ("train_iterations", "train_exp_counter", "train_exp_epochs", "train_exp_iterations",
                "train_epoch_iterations", "total_iterations")


def _model(n_in: int = 3, n_out: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, 8), nn.ReLU(), nn.Linear(8, n_out))


def _naive(model: nn.Module | None = None, **kw) -> Naive:
    model = model if model is not None else _model()
    kw.setdefault("evaluator", EvaluationPlugin())  # no metrics, no printing
    return Naive(model, torch.optim.SGD(model.parameters(), lr=0.01), **kw)


class Recorder:
    """A plain object (no base class) with all 26 hooks, recording (hook, clock, phase, experience)."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.kwargs: list[dict] = []

    def _rec(self, name: str, strategy, kwargs: dict) -> None:
        clock = tuple(getattr(strategy.clock, f) for f in CLOCK_FIELDS)
        exp = None if strategy.experience is None else strategy.experience.current_experience
        self.events.append((name, clock, strategy.is_training, exp))
        self.kwargs.append(kwargs)


for _hook in SUPERVISED_HOOKS:
    setattr(Recorder, _hook, lambda self, strategy, _n=_hook, **kw: self._rec(_n, strategy, kw))


class SpecClock:
    """The clock table of §1.7, advanced by the expected-sequence writer below."""

    def __init__(self) -> None:
        self.v = dict.fromkeys(CLOCK_FIELDS, 0)

    def snap(self) -> tuple:
        return tuple(self.v[f] for f in CLOCK_FIELDS)


def expected_sequence(eval_every: int, n_exps: int = 2, epochs: int = 2, iters: int = 2,
                      eval_iters: int = 2) -> list[tuple]:
    """§1.4/§1.5/§1.7/§1.8 for ``train(stream_of_n_exps)`` with eval_streams defaulting to the training
    experiences, as seen by the first user plugin (so counters are pre-increment / pre-reset)."""
    c = SpecClock()
    ev: list[tuple] = []
    state = {"training": True, "exp": None}

    def emit(name: str) -> None:
        ev.append((name, c.snap(), state["training"], state["exp"]))

    def do_eval() -> None:
        saved = dict(state)
        state["training"] = False
        emit("before_eval")
        for e in range(n_exps):  # default eval stream = the training experiences
            state["exp"] = e
            for h in ("before_eval_dataset_adaptation", "after_eval_dataset_adaptation", "before_eval_exp"):
                emit(h)
            for _ in range(eval_iters):
                for h in ("before_eval_iteration", "before_eval_forward", "after_eval_forward",
                          "after_eval_iteration"):
                    emit(h)
                c.v["total_iterations"] += 1  # clock: after_eval_iteration
            emit("after_eval_exp")
        emit("after_eval")
        state.update(saved)

    emit("before_training")
    if eval_every > -1:
        do_eval()  # PeriodicEval's initial eval in before_training
    for e in range(n_exps):
        state["exp"] = e
        emit("before_train_dataset_adaptation")
        emit("after_train_dataset_adaptation")
        emit("before_training_exp")
        c.v["train_exp_iterations"] = 0
        c.v["train_exp_epochs"] = 0
        do_final = not (eval_every > 0 and (epochs - 1) % eval_every == 0)
        for _ in range(epochs):
            emit("before_training_epoch")
            c.v["train_epoch_iterations"] = 0
            for _ in range(iters):
                for h in ("before_training_iteration", "before_forward", "after_forward", "before_backward",
                          "after_backward", "before_update", "after_update", "after_training_iteration"):
                    emit(h)
                for f in ("train_epoch_iterations", "train_exp_iterations", "train_iterations",
                          "total_iterations"):
                    c.v[f] += 1
            emit("after_training_epoch")
            if eval_every > 0 and c.v["train_exp_epochs"] % eval_every == 0:
                do_eval()
            c.v["train_exp_epochs"] += 1
        emit("after_training_exp")
        if eval_every > -1 and do_final:
            do_eval()
        c.v["train_exp_counter"] += 1
    emit("after_training")
    return ev


@pytest.mark.parametrize("eval_every", [-1, 0, 1])
def test_full_hook_sequence_with_clock_values(eval_every):
    rec = Recorder()
    stream = make_stream("train", n_experiences=2, n_per_exp=4)
    s = _naive(plugins=[rec], train_mb_size=2, train_epochs=2, eval_every=eval_every)
    s.train(stream)
    assert rec.events == expected_sequence(eval_every)


def test_hook_sequence_spot_checks_written_by_hand():
    rec = Recorder()
    s = _naive(plugins=[rec], train_mb_size=2, train_epochs=2, eval_every=-1)
    s.train(make_stream("train", n_experiences=2, n_per_exp=4))
    names = [e[0] for e in rec.events]
    # 1 + 2 x (3 + 2 x (1 + 2 x 8 + 1) + 1) + 1 events
    assert len(names) == 82
    assert names[:5] == ["before_training", "before_train_dataset_adaptation", "after_train_dataset_adaptation",
                         "before_training_exp", "before_training_epoch"]
    by = {}
    for name, clock, _, exp in rec.events:
        by.setdefault((name, exp), []).append(dict(zip(CLOCK_FIELDS, clock, strict=True)))
    # after_training_exp sees the index of the experience just finished (clock increments after)
    assert [d["train_exp_counter"] for d in by[("after_training_exp", 0)]] == [0]
    assert [d["train_exp_counter"] for d in by[("after_training_exp", 1)]] == [1]
    # before_training_exp of the 2nd experience still sees the 1st one's per-experience counters (reset is later)
    assert by[("before_training_exp", 1)][0]["train_exp_epochs"] == 2
    assert by[("before_training_exp", 1)][0]["train_exp_iterations"] == 4
    # the first training iteration of the run sees zeros everywhere
    assert by[("before_training_iteration", 0)][0] == dict.fromkeys(CLOCK_FIELDS, 0)
    # after_training_epoch sees the epoch count before its increment: 0 then 1
    assert [d["train_exp_epochs"] for d in by[("after_training_epoch", 0)]] == [0, 1]
    assert s.clock.train_iterations == 8 and s.clock.train_exp_counter == 2 and s.clock.total_iterations == 8


@pytest.mark.parametrize("eval_every,n_evals", [(-1, 0), (0, 3), (1, 5)])
def test_number_of_periodic_evals(eval_every, n_evals):
    rec = Recorder()
    s = _naive(plugins=[rec], train_mb_size=2, train_epochs=2, eval_every=eval_every)
    s.train(make_stream("train", n_experiences=2, n_per_exp=4))
    assert [e[0] for e in rec.events].count("before_eval") == n_evals


def _epochs_with_eval(events: list[tuple]) -> list[int]:
    """Epoch numbers (1-based) after which an eval ran, and 'end' for the experience-end eval."""
    out, epoch = [], 0
    for i, (name, *_rest) in enumerate(events):
        if name == "after_training_epoch":
            epoch += 1
        if name == "before_eval" and epoch:
            out.append("end" if events[i - 1][0] == "after_training_exp" else epoch)
    return out


@pytest.mark.parametrize("eval_every,expected", [(2, [1, 3, "end"]), (3, [1, 4]), (0, ["end"]), (1, [1, 2, 3, 4])])
def test_epoch_mode_evals_follow_epochs_1_k_plus_1(eval_every, expected):
    # §1.8 verified with 4 epochs: 2 -> after 1, 3, 4; 3 -> 1, 4; 0 -> the end only
    rec = Recorder()
    s = _naive(plugins=[rec], train_mb_size=4, train_epochs=4, eval_every=eval_every)
    s.train(make_stream("train", n_experiences=1, n_per_exp=4))
    assert _epochs_with_eval(rec.events) == expected


def test_iteration_mode_evals_after_iterations_1_k_plus_1_and_at_the_end():
    rec = Recorder()
    s = _naive(plugins=[rec], train_mb_size=1, train_epochs=1, eval_every=2, peval_mode="iteration")
    s.train(make_stream("train", n_experiences=1, n_per_exp=5))
    after_iters, n_iter = [], 0
    for i, (name, *_r) in enumerate(rec.events):
        if name == "after_training_iteration":
            n_iter += 1
        if name == "before_eval" and n_iter:
            after_iters.append("end" if rec.events[i - 1][0] == "after_training_exp" else n_iter)
    assert after_iters == [1, 3, 5, "end"]


def test_all_26_hooks_fire_in_one_train_and_one_eval():
    rec = Recorder()
    stream = make_stream("train")
    s = _naive(plugins=[rec], train_mb_size=2)
    s.train(stream[0])
    s.eval(stream)
    assert {e[0] for e in rec.events} == set(SUPERVISED_HOOKS)
    assert len(SUPERVISED_HOOKS) == 26


def test_kwargs_of_train_and_eval_reach_every_hook_including_periodic_eval():
    rec = Recorder()
    stream = make_stream("train")
    s = _naive(plugins=[rec], train_mb_size=2, eval_every=1)
    s.train(stream, num_workers=0, tag="t")
    assert rec.kwargs and all(k == {"num_workers": 0, "tag": "t"} for k in rec.kwargs)
    assert any(e[0] == "after_eval_iteration" for e in rec.events)
    rec.kwargs.clear()
    s.eval(stream, tag="e")
    assert rec.kwargs and all(k == {"tag": "e"} for k in rec.kwargs)


def test_eval_runs_without_grad_in_eval_mode_and_restores_each_modules_flag():
    model = _model()
    seen = []

    class Probe:
        def before_eval_forward(self, strategy, **kw):
            seen.append((torch.is_grad_enabled(), any(m.training for m in strategy.model.modules())))

    s = _naive(model, plugins=[Probe()], train_mb_size=2)
    model.train()
    model[1].eval()  # a module left in eval mode by the user stays so
    s.eval(make_stream("test"))
    assert seen and all(s_ == (False, False) for s_ in seen)
    assert [m.training for m in model] == [True, False, True] and model.training
    assert torch.is_grad_enabled()


def test_periodic_eval_inside_training_restores_train_state():
    model = _model()
    seen = []

    class FreezeFirstLayer:  # an AR1-like plugin that keeps a sub-module in eval mode during training
        def before_training_exp(self, strategy, **kw):
            strategy.model[0].eval()

        def before_training_iteration(self, strategy, **kw):
            seen.append((strategy.is_training, strategy.model[0].training, strategy.model[2].training,
                         strategy.experience.current_experience, strategy.dataloader is not None))

    train, test = make_stream("train"), make_stream("test")
    s = _naive(model, plugins=[FreezeFirstLayer()], train_mb_size=2, train_epochs=2, eval_every=1)
    s.train(train, eval_streams=[test])
    assert len(seen) == 8
    assert all(x == (True, False, True, x[3], True) for x in seen)
    assert [x[3] for x in seen] == [0, 0, 0, 0, 1, 1, 1, 1]


class _OnlyBackward:
    """Avalanche-style plugin: a plain object with one hook, adding c * sum(w^2) of the first layer."""

    def __init__(self, c: float) -> None:
        self.c = c
        self.loss_shapes: list[tuple] = []

    def before_backward(self, strategy, **kwargs):
        self.loss_shapes.append(tuple(strategy.loss.shape))
        strategy.loss += self.c * (strategy.model[0].weight ** 2).sum()


def _first_layer_grads(plugins) -> list[torch.Tensor]:
    grads = []

    class Grab:
        def after_backward(self, strategy, **kw):
            grads.append(strategy.model[0].weight.grad.clone())

    model = _model()
    s = Naive(model, torch.optim.SGD(model.parameters(), lr=0.0), plugins=[*plugins, Grab()], train_mb_size=4,
              evaluator=EvaluationPlugin())
    s.train(make_stream("train", n_experiences=1, n_per_exp=4))
    return grads, model


def test_plain_object_plugin_extends_loss_in_before_backward_and_changes_the_gradient():
    plugin = _OnlyBackward(c=0.5)
    base, _ = _first_layer_grads([])
    extended, model = _first_layer_grads([plugin])
    assert plugin.loss_shapes == [(1,)]  # loss is reset to zeros(1) per iteration, shape (1,)
    # d/dw of c * sum(w^2) is 2 c w; lr=0 leaves w unchanged
    torch.testing.assert_close(extended[0] - base[0], 2 * 0.5 * model[0].weight.detach())


def test_plugin_with_unknown_hook_name_warns_but_runs():
    class Odd:
        calls = 0

        def before_backwards(self, strategy, **kw):  # misspelt: never a hook
            pass

        def after_update(self, strategy, **kw):
            Odd.calls += 1

    with pytest.warns(UserWarning, match="before_backwards"):
        s = _naive(plugins=[Odd()], train_mb_size=2)
    s.train(make_stream("train", n_experiences=1))
    assert Odd.calls == 2


def test_supervised_plugin_base_has_26_noop_hooks_and_distributed_flag_rule():
    p = SupervisedPlugin()
    for h in SUPERVISED_HOOKS:
        assert getattr(p, h)(None, anything=1) is None
    assert SupervisedPlugin.supports_distributed is False

    class Dist(SupervisedPlugin, supports_distributed=True):
        pass

    class Child(Dist):
        pass

    assert Dist.supports_distributed is True and Child.supports_distributed is False


def test_stop_training_stops_after_the_current_iteration():
    class EarlyStop:  # §7: stop at train_epoch_iterations == 10 leaves the counter at 11
        def after_training_iteration(self, strategy, **kw):
            if strategy.clock.train_epoch_iterations == 10:
                strategy.stop_training()

    s = _naive(plugins=[EarlyStop()], train_mb_size=1, train_epochs=1)
    s.train(make_stream("train", n_experiences=1, n_per_exp=16))
    assert s.clock.train_epoch_iterations == 11


def test_stop_training_skips_the_remaining_epochs_of_that_experience_only():
    rec = Recorder()

    class StopInFirstExp:
        def after_training_iteration(self, strategy, **kw):
            if strategy.experience.current_experience == 0 and strategy.clock.train_epoch_iterations == 1:
                strategy.stop_training()

    s = _naive(plugins=[rec, StopInFirstExp()], train_mb_size=1, train_epochs=3)
    s.train(make_stream("train", n_experiences=2, n_per_exp=4))
    names0 = [e[0] for e in rec.events if e[3] == 0]
    assert names0.count("after_training_iteration") == 2
    assert names0.count("before_training_epoch") == 2 and names0.count("after_training_epoch") == 1
    names1 = [e[0] for e in rec.events if e[3] == 1]
    assert names1.count("after_training_iteration") == 12


def test_before_training_exp_fires_after_dataloader_and_model_adaptation_and_may_replace_the_loader():
    order = []

    class Growing(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(3, 4)
            self.extra = nn.ParameterList()

        def adaptation(self, experience):
            order.append(("adaptation", experience.current_experience))
            self.extra.append(nn.Parameter(torch.zeros(1)))

        def forward(self, x):
            return self.body(x) + sum(p.sum() for p in self.extra)

    class ReplayLike:
        def before_training_exp(self, strategy, **kw):
            n_opt = sum(len(g["params"]) for g in strategy.optimizer.param_groups)
            order.append(("before_training_exp", strategy.dataloader is not None, n_opt))
            strategy.dataloader = [[torch.zeros(5, 3), torch.zeros(5, dtype=torch.long), torch.zeros(5)]]

        def before_forward(self, strategy, **kw):
            order.append(("forward", len(strategy.mb_x)))

    model = Growing()
    s = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[ReplayLike()], train_mb_size=2,
              evaluator=EvaluationPlugin())
    s.train(make_stream("train", n_experiences=2, n_per_exp=4))
    assert order == [("adaptation", 0), ("before_training_exp", True, 3), ("forward", 5),
                     ("adaptation", 1), ("before_training_exp", True, 4), ("forward", 5)]


def test_task_aware_model_receives_the_task_labels():
    seen = []

    class MultiHead(nn.Linear):
        def forward(self, x, task_labels):
            seen.append(task_labels.tolist())
            return super().forward(x)

    model = MultiHead(3, 4)
    s = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=4, evaluator=EvaluationPlugin())
    s.train(make_stream("train", n_experiences=2, n_per_exp=4, task_aware=True))
    assert seen == [[0, 0, 0, 0], [1, 1, 1, 1]]


def test_default_eval_streams_are_the_training_experiences_grouped_by_stream():
    evaluated = []

    class Watch:
        def before_eval(self, strategy, **kw):
            evaluated.append([(e.origin_stream.name, e.current_experience) for e in strategy.current_eval_stream])

    train, test = make_stream("train", 3, classes_per_exp=1), make_stream("test", 2)
    s = _naive(plugins=[Watch()], train_mb_size=4, eval_every=0)
    s.train(train[:2])
    assert evaluated[0] == [("train", 0), ("train", 1)]
    evaluated.clear()
    s.train(train[2], eval_streams=[test[0], train[0], test[1]])
    assert evaluated[0] == [("test", 0), ("test", 1)] and evaluated[1] == [("train", 0)]


def test_attributes_cleared_after_training_and_mb_views():
    seen = {}

    class Look:
        def after_forward(self, strategy, **kw):
            seen.update(x=strategy.mb_x is strategy.mbatch[0], y=strategy.mb_y is strategy.mbatch[1],
                        t=strategy.mb_task_id is strategy.mbatch[-1], dev=strategy.mb_x.device)

    s = _naive(plugins=[Look()], train_mb_size=2)
    s.train(make_stream("train", 1))
    assert seen == {"x": True, "y": True, "t": True, "dev": torch.device("cpu")}
    assert s.experience is None and s.dataloader is None and s.mbatch is None and s.mb_output is None
    assert s.loss.shape == (1,) and float(s.loss) == 0.0


def test_naive_defaults_match_avalanche():
    model = _model()
    s = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert (s.train_mb_size, s.train_epochs, s.eval_mb_size, s.eval_every) == (1, 1, 1, -1)
    assert s.device == torch.device("cpu") and isinstance(s._criterion, nn.CrossEntropyLoss)
    assert s.plugins[-1] is s.clock and s.plugins[-2] is s.evaluator
    assert isinstance(s, SupervisedTemplate)


@pytest.mark.parametrize("kw,match", [
    ({"train_mb_size": 0}, "train_mb_size"), ({"train_epochs": 0}, "train_epochs"),
    ({"eval_mb_size": 0}, "eval_mb_size"), ({"eval_every": -2}, "eval_every"),
    ({"peval_mode": "step"}, "peval_mode"), ({"train_mb_size": 1.5}, "train_mb_size"),
])
def test_bad_hyper_parameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        _naive(**kw)


def test_misspelt_keyword_and_bad_types_raise_type_error():
    with pytest.raises(TypeError):
        _naive(train_epoch=2)
    with pytest.raises(TypeError, match="optimizer"):
        Naive(_model(), optimizer="sgd")
    with pytest.raises(TypeError, match="model"):
        Naive("model", torch.optim.SGD(_model().parameters(), lr=0.1))


def test_empty_experience_raises_value_error_naming_it():
    stream = make_stream("train", n_experiences=2)
    ds = stream[1].dataset
    ds.x, ds.targets, ds.targets_task_labels = ds.x[:0], ds.targets[:0], ds.targets_task_labels[:0]
    s = _naive(train_mb_size=2)
    with pytest.raises(ValueError, match="training experience 1 of stream 'train' is empty"):
        s.train(stream)
    with pytest.raises(ValueError, match="eval experience 1 of stream 'train' is empty"):
        s.eval(stream)


def test_experiences_argument_accepts_one_experience_or_a_list():
    s = _naive(train_mb_size=4)
    stream = make_stream("train", 2)
    s.train(stream[0])
    s.train(Stream("train", [stream[1]]))
    assert s.clock.train_exp_counter == 2


def test_the_forward_of_a_model_without_task_routing_never_reads_the_experiences_task_labels():
    # An experience's task_labels may be a unique over its whole dataset: the template must not compute it per
    # iteration for a model that ignores task labels.
    exp = make_stream("train", n_experiences=1, n_per_exp=8)[0]
    reads = []

    class Counting(type(exp)):
        @property
        def task_labels(self):
            reads.append(1)
            return [0]

    exp.__class__ = Counting
    model = torch.nn.Linear(exp.dataset[0][0].numel(), 4)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=2, evaluator=EvaluationPlugin())
    strategy.train(exp)
    assert strategy.clock.train_iterations == 4
    assert len(reads) <= 2  # the evaluator's per-experience bookkeeping, not once per iteration
