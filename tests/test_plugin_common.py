"""What the regularisation plugins share: validation, state_dict, the attribute contract, NaN
rejection, distributed flag, and the CLI registration; parametrized over the registry ``clfast.plugins.PLUGINS``."""

from __future__ import annotations

import copy
import io
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from clfast.plugins import PLUGINS, EWCPlugin, MASPlugin, RWalkPlugin, SupervisedPlugin, SynapticIntelligencePlugin
from clfast.strategies import STRATEGIES
from clfast.testing.fakes import Experience, Stream, TensorExperienceDataset
from clfast.testing.plugin_fixtures import (
    GrowingHead,
    LossRecorder,
    MiniStrategy,
    assert_dicts_close,
    assert_losses_close,
    assert_models_close,
    mlp,
    naive,
    seeded,
    stream,
    train_stream,
    trained,
)

#: Per-test strengths, larger than the command line's so that the penalty's effect is visible (a plugin
#: missing here runs at its registry default), and overrides on top of the registry's defaults.
STRENGTH = {"mas": 2.0, "rwalk": 2.0, "si": 10.0, "ewc": 5.0}
OVERRIDES: dict[str, dict] = {"rwalk": {"delta_t": 2}}
#: Further configurations: name -> (registry name, overrides).
VARIANTS = {"rwalk_pass": ("rwalk", {"delta_t": 2, "separate_grad_pass": True}),
            "ewc_online": ("ewc", {"mode": "online", "decay_factor": 0.5})}
CONFIGS = {**{name: (name, OVERRIDES.get(name, {})) for name in PLUGINS}, **VARIANTS}
MAKERS = {name: partial(PLUGINS[base].make, STRENGTH.get(base), **kw) for name, (base, kw) in CONFIGS.items()}


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_runs_in_a_strategy_with_only_avalanches_attributes(kind):
    """``MiniStrategy`` has ``__slots__`` with only the documented attributes: same numbers as in Naive."""
    exps = stream()
    model = seeded(mlp)
    rec_a, rec_b = LossRecorder(), LossRecorder()
    sa = naive(model, [MAKERS[kind](), rec_a])
    mb = copy.deepcopy(model)
    sb = MiniStrategy(mb, torch.optim.SGD(mb.parameters(), lr=0.1), [MAKERS[kind](), rec_b])
    train_stream(sa, exps)
    train_stream(sb, exps)
    assert_losses_close(rec_a, rec_b, rtol=1e-5)
    assert_models_close(sa.model, sb.model, rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_state_dict_round_trip_continues_identically(kind, tmp_path):
    exps = stream()
    model = seeded(mlp)
    p1 = MAKERS[kind]()
    s1 = naive(model, [p1])
    train_stream(s1, exps[:2])
    buf = io.BytesIO()
    torch.save(p1.state_dict(), buf)
    buf.seek(0)
    p2 = MAKERS[kind]()
    p2.load_state_dict(torch.load(buf, weights_only=False), model=s1.model)
    model2 = copy.deepcopy(s1.model)
    s2 = naive(model2, [p2])
    s2.clock.train_exp_counter = s1.clock.train_exp_counter
    s2.clock.train_iterations = s1.clock.train_iterations
    rec1, rec2 = LossRecorder(), LossRecorder()
    s1.plugins.insert(1, rec1)
    s2.plugins.insert(1, rec2)
    opt_state = copy.deepcopy(s1.optimizer.state_dict())
    s2.optimizer.load_state_dict(opt_state)
    train_stream(s1, exps[2:])
    train_stream(s2, exps[2:])
    assert_losses_close(rec1, rec2, rtol=1e-6)
    assert_models_close(s1.model, s2.model, rtol=1e-6)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_state_for_another_model_is_refused_and_changes_nothing(kind):
    p = MAKERS[kind]()
    trained([p], mlp, stream()[:1])
    before = p.state_dict()
    other = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 6))
    fresh = MAKERS[kind]()
    fresh_before = fresh.state_dict()
    with pytest.raises(ValueError, match="another model"):
        fresh.load_state_dict(before, model=other)
    assert fresh.state_dict()["state"] == fresh_before["state"]
    with pytest.raises(ValueError):
        p.load_state_dict({**before, "plugin": "SomethingElse"})
    with pytest.raises(TypeError):
        p.load_state_dict([1, 2])
    after = p.state_dict()
    for kind_ in before["state"]["buffers"]:
        assert torch.equal(before["state"]["buffers"][kind_], after["state"]["buffers"][kind_])


def _nan_on(call: int):
    count = {"n": 0}

    def criterion(out, y):
        count["n"] += 1
        loss = nn.functional.cross_entropy(out, y)
        return loss * float("nan") if count["n"] == call else loss

    return criterion


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_nan_gradients_are_rejected_without_corrupting_state(kind):
    p = MAKERS[kind]()
    exps = stream()
    s = trained([p], mlp, exps[:1])
    before = p.state_dict()
    if kind == "mas" or kind.startswith("ewc"):  # no per-iteration state: gradients enter in the importance pass
        bad = SimpleNamespace(model=s.model, device=s.device, train_mb_size=4, optimizer=s.optimizer,
                              clock=SimpleNamespace(train_exp_counter=1), _criterion=s._criterion,
                              experience=_nan_experience())
        with pytest.raises(ValueError, match="NaN"):
            p.after_training_exp(bad)
    else:
        snap = _Snapshot(p)
        s.plugins.insert(0, snap)
        s._criterion = _nan_on(2)
        with pytest.raises(ValueError, match="NaN"):
            train_stream(s, exps[1:2])
        before = snap.last  # the state when the failing iteration began
    after = p.state_dict()
    for k, buf in before["state"]["buffers"].items():
        assert torch.equal(buf, after["state"]["buffers"][k]), k


class _Snapshot:
    def __init__(self, plugin):
        self.plugin, self.last = plugin, None

    def before_forward(self, strategy, **kwargs):  # after RWalk's separate pass, if any
        self.last = self.plugin.state_dict()


def _nan_experience():
    x = torch.randn(8, 10)
    x[3, 0] = float("nan")
    return Experience(TensorExperienceDataset(x, torch.arange(8) % 2, torch.zeros(8)), 1, Stream("train"))


BAD = [
    (MASPlugin, {"lambda_reg": -1.0}, ValueError), (MASPlugin, {"alpha": 1.5}, ValueError),
    (MASPlugin, {"lambda_reg": "1"}, TypeError), (MASPlugin, {"verbose": 1}, TypeError),
    (MASPlugin, {"alpha": float("nan")}, ValueError),
    (RWalkPlugin, {"ewc_alpha": -0.1}, ValueError), (RWalkPlugin, {"delta_t": 0}, ValueError),
    (RWalkPlugin, {"delta_t": 2.5}, TypeError), (RWalkPlugin, {"ewc_lambda": float("inf")}, ValueError),
    (RWalkPlugin, {"separate_grad_pass": "yes"}, TypeError),
    (SynapticIntelligencePlugin, {"si_lambda": -1.0}, ValueError),
    (SynapticIntelligencePlugin, {"si_lambda": []}, ValueError),
    (SynapticIntelligencePlugin, {"si_lambda": 1.0, "eps": 0.0}, ValueError),
    (SynapticIntelligencePlugin, {"si_lambda": 1.0, "excluded_parameters": "output"}, TypeError),
    (SynapticIntelligencePlugin, {"si_lambda": 1.0, "device": "nonsense"}, ValueError),
    (EWCPlugin, {"ewc_lambda": -1.0}, ValueError), (EWCPlugin, {"ewc_lambda": 1.0, "mode": "both"}, ValueError),
    (EWCPlugin, {"ewc_lambda": 1.0, "mode": "online"}, ValueError),
    (EWCPlugin, {"ewc_lambda": 1.0, "decay_factor": 0.5}, ValueError),
    (EWCPlugin, {"ewc_lambda": 1.0, "mode": "online", "decay_factor": 2.0}, ValueError),
    (EWCPlugin, {"ewc_lambda": 1.0, "keep_importance_data": None}, TypeError),
]


@pytest.mark.parametrize(("cls", "kwargs", "err"), BAD, ids=[f"{c.__name__}-{sorted(k)}" for c, k, _ in BAD])
def test_bad_hyper_parameters_are_refused_at_construction(cls, kwargs, err):
    with pytest.raises(err):
        cls(**kwargs)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_distributed_support_is_declared_and_hooks_are_known(kind):
    p = MAKERS[kind]()
    assert isinstance(p, SupervisedPlugin)
    assert type(p).supports_distributed is True  # tests/test_distributed.py


def test_the_registry_holds_the_command_lines_defaults():
    expected = {"mas": (MASPlugin, "lambda_reg", 0.01), "rwalk": (RWalkPlugin, "ewc_lambda", 10.0),
                "si": (SynapticIntelligencePlugin, "si_lambda", 0.1), "ewc": (EWCPlugin, "ewc_lambda", 300.0)}
    assert {n: (PLUGINS[n].cls, PLUGINS[n].strength, PLUGINS[n].default_strength) for n in expected} == expected
    assert all(name == spec.name for name, spec in PLUGINS.items())
    p = PLUGINS["rwalk"].make()
    assert (p.ewc_lambda, p.ewc_alpha, p.delta_t) == (10.0, 0.9, 10)
    assert PLUGINS["mas"].make(3.0, alpha=0.25).lambda_reg == 3.0
    assert PLUGINS["ewc"].make(mode="online", decay_factor=0.5).mode == "online"


@pytest.mark.parametrize("kind", sorted(PLUGINS))
def test_registered_for_the_command_line(kind):
    model = seeded(mlp)
    s = STRATEGIES[kind](model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                         train_mb_size=8, train_epochs=1)
    assert isinstance(s.plugins[0], PLUGINS[kind].cls)


def test_growing_parameters_keep_old_state_zero_padded():
    p = MASPlugin()
    exps = stream()
    s = trained([p], GrowingHead, exps[:1])
    old = p.importance["classifier.weight"].clone()
    train_stream(s, exps[1:2])
    assert p.importance["classifier.weight"].shape[0] == 4
    # rows 0-1: α·old + (1−α)·cur; rows 2-3: only (1−α)·cur (old padded with zeros)
    assert not torch.equal(p.importance["classifier.weight"][:2], old)
    assert_dicts_close({"a": p.params["classifier.weight"]}, {"a": s.model.classifier.weight}, "anchor")


def test_every_regularizer_of_the_package_is_registered():
    """The registry is the one list: a RegularizerPlugin under clfast/plugins/ without an entry fails here."""
    import importlib
    import pkgutil

    import clfast.plugins
    from clfast.plugins import RegularizerPlugin

    for info in pkgutil.iter_modules(clfast.plugins.__path__):
        importlib.import_module(f"clfast.plugins.{info.name}")
    found, todo = set(), list(RegularizerPlugin.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__module__.startswith("clfast.plugins."):
            found.add(cls)
    assert found == {spec.cls for spec in PLUGINS.values()}
