"""The regularisers' penalty inside a clfast.optim step: the same run as with the matching torch.optim optimizer
(relative difference at most 1e-5 after 3 experiences), the same logged loss, and the fused path really taken
(no penalty gradient written into .grad) or, where it cannot be, the unfused one."""

from __future__ import annotations

import copy

import pytest
import torch

import clfast.optim as co
from clfast import ops
from clfast.evaluation import EvaluationPlugin
from clfast.plugins import PLUGINS
from clfast.strategies import Naive
from clfast.testing.cases import max_relative_difference
from clfast.testing.plugin_fixtures import LossRecorder, mlp, seeded, stream, train_stream

STRENGTH = {"mas": 2.0, "rwalk": 2.0, "si": 10.0, "ewc": 5.0}
CONFIGS = {"mas": {}, "ewc": {}, "ewc_online": {"mode": "online", "decay_factor": 0.5}, "rwalk": {"delta_t": 2},
           "si": {}}
#: SI's state and loss divide by (θ−θ*)² + ξ, which amplifies the float rounding by which any two SGD/Adam
#: implementations differ (clfast.optim's ≤ 1e-6 after 100 steps, test_optim.py). The model itself is held to 1e-5
#: for every plugin.
STATE_RTOL = {"si": 1e-4}
OPTIMIZERS = {"sgd": (torch.optim.SGD, co.SGD, dict(lr=0.05, momentum=0.9)),
              "adam": (torch.optim.Adam, co.Adam, dict(lr=1e-2))}


def _plugin(name: str):
    base = name.split("_")[0]
    return PLUGINS[base].make(STRENGTH[base], **CONFIGS[name])


def _run(model, plugins, opt_cls, opt_kw, groups=None):
    params = groups(model) if groups is not None else model.parameters()
    strategy = Naive(model, opt_cls(params, **opt_kw), train_mb_size=8, train_epochs=2,
                     plugins=plugins, evaluator=EvaluationPlugin())
    train_stream(strategy, stream(3))
    return strategy



class GradWriteCounter:
    """Counts the unfused penalty-gradient passes (quad_penalty_grad_, ``calls``) and path-integral updates
    (path_integral_update_, ``path_calls``) while installed."""

    def __init__(self, monkeypatch):
        self.calls = self.path_calls = 0
        original, original_path = ops.quad_penalty_grad_, ops.path_integral_update_

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        def counted_path(*args, **kwargs):
            self.path_calls += 1
            return original_path(*args, **kwargs)
        monkeypatch.setattr("clfast.ops.quad_penalty_grad_", counted)
        monkeypatch.setattr("clfast.ops.path_integral_update_", counted_path)


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_fused_run_is_the_torch_optim_run(name, opt, monkeypatch):
    torch_cls, clfast_cls, kw = OPTIMIZERS[opt]
    model = seeded(mlp)
    rec_ref, rec = LossRecorder(), LossRecorder()
    plugin_ref, plugin = _plugin(name), _plugin(name)
    ref = _run(copy.deepcopy(model), [plugin_ref, rec_ref], torch_cls, kw)
    counter = GradWriteCounter(monkeypatch)
    ours = _run(model, [plugin, rec], clfast_cls, kw)
    assert max_relative_difference(ref.model, ours.model) <= 1e-5
    rtol = STATE_RTOL.get(name, 1e-5)
    torch.testing.assert_close(torch.tensor(rec.losses), torch.tensor(rec_ref.losses), rtol=rtol, atol=1e-7)
    # The state relative to each buffer's largest entry (RWalk's scores divide by (θ−θ_ckpt)²: an element's own
    # relative error is larger where that is small).
    buffers, buffers_ref = plugin.state_dict()["state"]["buffers"], plugin_ref.state_dict()["state"]["buffers"]
    assert set(buffers) == set(buffers_ref)
    for kind, ref_buffer in buffers_ref.items():
        if name == "rwalk" and kind == "grad":  # the task gradient's copy, which the fused path integral never needs
            continue
        scale = ref_buffer.abs().max().clamp_min(1e-30)
        assert ((buffers[kind] - ref_buffer).abs().max() / scale).item() <= rtol, kind
    # Every penalty goes into the step, and SI's and RWalk's path integrals with it.
    assert counter.calls == 0
    assert counter.path_calls == 0


@pytest.mark.parametrize("order", ["mas_first", "si_first"])
def test_si_with_another_penalty_in_the_step_integrates_the_whole_gradient(order, monkeypatch):
    """Whichever penalty takes the step's slot, SI's ω is the path integral of the whole gradient (task + both
    penalties), as with torch.optim, where both gradients are in .grad when ω is updated."""
    def plugins():
        pair = [_plugin("mas"), _plugin("si")]
        return pair if order == "mas_first" else pair[::-1]
    model = seeded(mlp)
    ref_plugins, our_plugins = plugins(), plugins()
    ref = _run(copy.deepcopy(model), ref_plugins, torch.optim.SGD, dict(lr=0.05, momentum=0.9))
    counter = GradWriteCounter(monkeypatch)
    ours = _run(model, our_plugins, co.SGD, dict(lr=0.05, momentum=0.9))
    assert counter.calls > 0 and counter.path_calls == 0  # one penalty in .grad, the path integral in the step
    assert max_relative_difference(ref.model, ours.model) <= 1e-5
    si_ref, si = (next(p for p in ps if p.STATE_NAME == "SynapticIntelligencePlugin") for ps in (ref_plugins,
                                                                                                   our_plugins))
    for kind in ("omega", "cum", "importance"):
        a, b = si.state_dict()["state"]["buffers"][kind], si_ref.state_dict()["state"]["buffers"][kind]
        assert ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() <= STATE_RTOL["si"], kind


def test_two_groups_or_two_penalties_fall_back_and_still_match(monkeypatch):
    def groups(model):
        return [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.02}]
    model = seeded(mlp)
    ref = _run(copy.deepcopy(model), [_plugin("mas"), _plugin("ewc")], torch.optim.SGD, dict(lr=0.05), groups)
    counter = GradWriteCounter(monkeypatch)
    ours = _run(copy.deepcopy(model), [_plugin("mas"), _plugin("ewc")], co.SGD, dict(lr=0.05), groups)
    assert counter.calls > 0  # two groups: the table is no one group's list
    assert max_relative_difference(ref.model, ours.model) <= 1e-5
    one_group_ref = _run(copy.deepcopy(model), [_plugin("mas"), _plugin("ewc")], torch.optim.SGD, dict(lr=0.05))
    counter.calls = 0
    one_group = _run(copy.deepcopy(model), [_plugin("mas"), _plugin("ewc")], co.SGD, dict(lr=0.05))
    assert counter.calls > 0  # MAS's penalty goes into the step; EWC's, second, is applied unfused
    assert max_relative_difference(one_group_ref.model, one_group.model) <= 1e-5


def test_a_step_that_does_not_run_drops_the_penalty_and_reports_its_value():
    model = seeded(mlp)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    opt = co.SGD(params, lr=0.1)
    total = sum(p.numel() for p in params)
    omega, anchor = torch.ones(total), torch.zeros(total)
    assert opt.take_penalty(params, omega, anchor, 0.5)
    assert not opt.take_penalty(params, omega, anchor, 0.5)  # one pending penalty at a time
    assert opt.pop_penalty_value() is None  # no step ran: nothing to report, and the penalty is dropped
    before = [p.detach().clone() for p in params]
    opt.step()
    assert opt.pop_penalty_value() is None
    for p, b, in zip(params, before, strict=True):
        torch.testing.assert_close(p.detach(), b - 0.1 * p.grad)  # no penalty in this step
    params[0].grad = None
    assert not opt.take_penalty(params, omega, anchor, 0.5)  # a missing gradient: the caller applies it
    assert not opt.take_penalty(params[::-1], omega, anchor, 0.5)  # not the group's order


def test_si_fused_refuses_to_consolidate_a_path_integral_with_nan():
    """The fused step checks nothing per iteration; a NaN/inf gradient stays in ω, and the experience's end refuses
    it before Ω, cum and θ* change."""
    from clfast.plugins import SynapticIntelligencePlugin
    from clfast.scenarios import tensors_benchmark

    torch.manual_seed(0)
    model = mlp()
    plugin = SynapticIntelligencePlugin(0.1)
    strategy = Naive(model, co.SGD(model.parameters(), lr=0.05, momentum=0.9), train_mb_size=8, train_epochs=1,
                     plugins=[plugin], evaluator=EvaluationPlugin())
    train_stream(strategy, stream(1))
    saved = {k: plugin._table[k].clone() for k in ("importance", "anchor", "cum")}
    first = stream(1)[0]
    x, y = first.dataset.x.clone(), first.dataset.targets.clone()
    x[5].view(-1)[0] = float("nan")
    bad = tensors_benchmark([(x, y)], [(x, y)], task_labels=[0])
    with pytest.raises(ValueError, match=r"omega.*NaN or inf"):  # ω named, before θ is even looked at
        strategy.train(bad.train_stream[0])
    assert all(torch.equal(saved[k], plugin._table[k]) for k in saved)
    assert not torch.isfinite(plugin._table["omega"]).all()  # the fused steps wrote it: that is what was refused


@pytest.mark.parametrize("case", ["with_mas", "two_groups"])
def test_rwalk_keeps_its_path_integral_out_of_the_step_where_the_gradient_would_differ(case, monkeypatch):
    """With another regulariser (whose penalty gradient may be in .grad at the step but not when RWalk read g) or
    parameters the step cannot take as one group, RWalk copies g and integrates after the step, as with torch.optim."""
    def groups(model):
        return [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.02}]
    names, split = (["rwalk", "mas"], None) if case == "with_mas" else (["rwalk"], groups)
    model = seeded(mlp)
    ref = _run(copy.deepcopy(model), [_plugin(n) for n in names], torch.optim.SGD, dict(lr=0.05, momentum=0.9),
               split)
    counter = GradWriteCounter(monkeypatch)
    ours = _run(model, [_plugin(n) for n in names], co.SGD, dict(lr=0.05, momentum=0.9), split)
    assert counter.path_calls > 0
    assert max_relative_difference(ref.model, ours.model) <= 1e-5
