"""Mixed precision (``precision="bf16-mixed" | "16-mixed"``) and bfloat16 models: every regulariser's importances
and the final parameters stay within a few percent of float32 training; under loss scaling the plugins see true
gradients; a step the GradScaler skips changes neither the parameters nor any per-step state; the scaler's state
travels with checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clfast import optim as clfast_optim
from clfast.evaluation import EvaluationPlugin
from clfast.plugins import PLUGINS, EWCPlugin, RWalkPlugin, SynapticIntelligencePlugin
from clfast.strategies import Naive
from clfast.testing.plugin_fixtures import N_FEATURES, mlp, seeded, stream, train_stream
from clfast.training.checkpoint import load_strategy_state_dict, strategy_state_dict
from clfast.training.precision import Precision

torch.set_num_threads(1)

MIXED = ["bf16-mixed", "16-mixed"]
#: Strengths at which these runs are stable (lr·λ·Ω well inside SGD's stability limit): at the registry's
#: defaults EWC's penalty makes the step oscillate, which would amplify any rounding difference without bound.
STRENGTH = {"mas": 0.01, "rwalk": 1.0, "si": 0.1, "ewc": 10.0}


def _wide_mlp() -> nn.Module:
    # Wide enough that float16/bfloat16 rounding averages out over the dot products.
    return nn.Sequential(nn.Linear(N_FEATURES, 64), nn.ReLU(), nn.Linear(64, 6))


def _strategy(model: nn.Module, plugins: list, precision: str = "32", optim: str = "torch", **kw) -> Naive:
    if precision == "16-mixed":
        # A scale at which these small models' float16 gradients do not overflow: a skipped step would make the
        # comparison with float32 one of different training runs, not of precisions (tested on its own below).
        precision = Precision("16-mixed", "cpu", init_scale=2.0**8)
    opt_cls = torch.optim.SGD if optim == "torch" else clfast_optim.SGD
    return Naive(model, opt_cls(model.parameters(), lr=0.05, momentum=0.5), train_mb_size=8, train_epochs=2,
                 plugins=plugins, evaluator=EvaluationPlugin(), precision=precision, **kw)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])


def _rel_importance(name: str, a: torch.Tensor, b: torch.Tensor) -> float:
    """How far importance ``a`` is from ``b``: the relative norm of the difference, except for SI, whose
    Ω = min(−c·ω/((θ−θ*)² + ε), 0.001) changes sign wherever the path integral ω is near zero, so that a handful of
    elements differ by O(1) between any two runs: there the 99th percentile of the elementwise relative error."""
    if name != "si":
        return _rel(a, b)
    err = (a.double() - b.double()).abs() / b.double().abs().clamp_min(1e-12)
    return float(err.quantile(0.99))


class _SkipCounter:
    skipped = 0

    def after_backward(self, strategy, **kwargs) -> None:
        self.skipped += strategy.step_skipped


def _importance(plugin) -> torch.Tensor:
    return plugin._table[plugin.WEIGHTS].clone()


@pytest.mark.parametrize("optim", ["torch", "clfast"])
@pytest.mark.parametrize("precision", MIXED)
@pytest.mark.parametrize("name", list(PLUGINS))
def test_mixed_precision_is_within_a_few_percent_of_float32(name: str, precision: str, optim: str) -> None:
    experiences = stream(n_experiences=3, n_per_exp=32)
    model = seeded(_wide_mlp)
    runs = {}
    for prec in ("32", precision):
        plugin = PLUGINS[name].make(STRENGTH[name])
        skips = _SkipCounter()
        strategy = _strategy(copy.deepcopy(model), [plugin, skips], prec, optim)
        train_stream(strategy, experiences)
        assert skips.skipped == 0
        runs[prec] = (_params(strategy.model), _importance(plugin), plugin._table.state.dtype)
    (p32, i32, _), (pmx, imx, dtype) = runs["32"], runs[precision]
    assert dtype == torch.float32  # the plugin state stays float32 under autocast
    # "A few percent": bfloat16 keeps 8 significant bits, float16 11.
    tolerance = {"bf16-mixed": 0.05, "16-mixed": 0.03}[precision]
    assert _rel(pmx, p32) < tolerance, f"final parameters: {_rel(pmx, p32)}"
    assert _rel_importance(name, imx, i32) < 2 * tolerance, f"importance: {_rel_importance(name, imx, i32)}"


@pytest.mark.parametrize("name", list(PLUGINS))
def test_a_bfloat16_model_keeps_float32_plugin_state_and_follows_the_float32_run(name: str) -> None:
    experiences = stream(n_experiences=3, n_per_exp=32)
    model = seeded(_wide_mlp)
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        plugin = PLUGINS[name].make(STRENGTH[name])
        strategy = _strategy(copy.deepcopy(model).to(dtype), [plugin])
        for exp in experiences:  # a bfloat16 model takes bfloat16 inputs (outside autocast)
            exp.dataset.x = exp.dataset.x.to(dtype)
        train_stream(strategy, experiences)
        assert plugin._table.state.dtype == torch.float32
        assert all(p.dtype == dtype for p in strategy.model.parameters())
        runs[dtype] = (_params(strategy.model), _importance(plugin))
    assert _rel(runs[torch.bfloat16][0], runs[torch.float32][0]) < 0.05
    importance = runs[torch.bfloat16][1]
    assert torch.isfinite(importance).all()
    if name in ("mas", "ewc"):
        # From gradient passes: as close as the gradients. (SI's and RWalk's path integrals follow the bfloat16
        # steps themselves, Δθ in bfloat16 ulps, so they measure another trajectory; not compared.)
        assert _rel(importance, runs[torch.float32][1]) < 0.1


def test_under_loss_scaling_the_penalty_and_importances_are_in_true_units() -> None:
    # A strong EWC penalty and a scale of 2**20: were the penalty gradient added to the scaled gradients (or the
    # Fisher taken from them), the second experience would move far from the float32 run.
    experiences = stream(n_experiences=2, n_per_exp=32)
    model = seeded(_wide_mlp)
    runs = {}
    for prec in ("32", "16-mixed"):
        plugin = EWCPlugin(ewc_lambda=2000.0)
        strategy = _strategy(copy.deepcopy(model), [plugin], prec)
        strategy.optimizer.param_groups[0]["lr"] = 0.002  # stable under the strong penalty
        if prec == "16-mixed":
            strategy.amp = Precision("16-mixed", "cpu", init_scale=2.0**12)
        train_stream(strategy, experiences)
        runs[prec] = (_params(strategy.model), _importance(plugin))
    assert _rel(runs["16-mixed"][1], runs["32"][1]) < 0.05
    assert _rel(runs["16-mixed"][0], runs["32"][0]) < 0.02


class _Snapshot:
    """Copies of the parameters and of chosen plugin state before every training iteration."""

    def __init__(self, plugin, kinds: tuple[str, ...]) -> None:
        self.plugin, self.kinds, self.at_start = plugin, kinds, None
        self.skipped: list[bool] = []

    def before_training_iteration(self, strategy, **kwargs) -> None:
        table = self.plugin._table
        self.at_start = (_params(strategy.model), {k: table[k].clone() for k in self.kinds} if table.state else {})

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self.skipped.append(strategy.step_skipped)


@pytest.mark.parametrize("optim", ["torch", "clfast"])
@pytest.mark.parametrize("plugin_cls, kinds", [(SynapticIntelligencePlugin, ("omega", "prev")),
                                               (RWalkPlugin, ("fisher", "loss", "grad", "prev"))])
def test_a_step_the_scaler_skips_changes_nothing(plugin_cls, kinds, optim) -> None:
    exp0, exp1 = stream(n_experiences=2, n_per_exp=16)
    plugin = plugin_cls(0.5) if plugin_cls is SynapticIntelligencePlugin else plugin_cls(ewc_lambda=1.0)
    snapshot = _Snapshot(plugin, kinds)
    strategy = _strategy(seeded(_wide_mlp), [plugin, snapshot], "16-mixed", optim)
    strategy.train_epochs = 1
    torch.manual_seed(0)
    strategy.train(exp0)
    assert not any(snapshot.skipped)
    # A scale of 2**40 overflows the float16 activation gradients: the next step is skipped, the scale backs off.
    strategy.amp.scaler.update(new_scale=2.0**40)
    snapshot.skipped.clear()
    strategy.train_mb_size = 16  # one iteration: the whole experience
    torch.manual_seed(1)
    strategy.train(exp1)
    assert snapshot.skipped == [True]
    params_before, state_before = snapshot.at_start
    torch.testing.assert_close(_params(strategy.model), params_before, rtol=0, atol=0)
    for kind, value in state_before.items():
        assert torch.isfinite(plugin._table[kind]).all(), kind
        torch.testing.assert_close(plugin._table[kind], value, rtol=0, atol=0, msg=kind)
    assert strategy.amp.scaler.get_scale() == 2.0**39
    assert strategy.clock.train_steps == 2 + 1  # a skipped step is counted as a step


def test_the_scaler_state_is_checkpointed_and_a_precision_mismatch_is_refused() -> None:
    exp = stream(n_experiences=1, n_per_exp=16)[0]
    strategy = _strategy(seeded(mlp), [EWCPlugin(ewc_lambda=1.0)], "16-mixed")
    strategy.train(exp)
    strategy.amp.scaler.update(new_scale=1234.0)
    state = strategy_state_dict(strategy)
    fresh = _strategy(seeded(mlp), [EWCPlugin(ewc_lambda=1.0)], "16-mixed")
    load_strategy_state_dict(fresh, state)
    assert fresh.amp.scaler.get_scale() == 1234.0
    other = _strategy(seeded(mlp), [EWCPlugin(ewc_lambda=1.0)], "32")
    before = copy.deepcopy(other.model.state_dict())
    with pytest.raises(ValueError, match="GradScaler"):
        load_strategy_state_dict(other, state)
    for k, v in other.model.state_dict().items():  # refused before anything changed
        assert torch.equal(v, before[k])


def test_the_forward_runs_under_autocast_and_the_loss_is_float32() -> None:
    seen = []

    class Probe:
        def after_forward(self, strategy, **kwargs) -> None:
            seen.append((strategy.mb_output.dtype, torch.is_autocast_enabled("cpu")))

        def before_backward(self, strategy, **kwargs) -> None:
            seen.append((strategy.loss.dtype, torch.is_autocast_enabled("cpu")))

    exp = stream(n_experiences=1, n_per_exp=8)[0]
    strategy = _strategy(seeded(mlp), [Probe()], "bf16-mixed")
    strategy.train_epochs = 1
    strategy.train(exp)
    # the output in bfloat16, hooks outside autocast, the loss accumulated in float32
    assert seen[0] == (torch.bfloat16, False) and seen[1] == (torch.float32, False)
    assert strategy.precision == "bf16-mixed"


@pytest.mark.parametrize("bad", ["16", "fp16", "bf16", 32, None])
def test_an_unknown_precision_is_refused(bad) -> None:
    model = mlp()
    with pytest.raises((ValueError, TypeError), match="precision"):
        Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), precision=bad)
