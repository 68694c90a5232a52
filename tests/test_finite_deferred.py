"""The NaN/inf guards of the regularisers without a host sync per iteration (issue 12, item 4).

On CUDA the plugins' per-iteration state updates record their finite flags on the device and the check runs at
the experience's end (``docs/plugins.md``, "What is checked when"). Here the deferred mode is forced on the CPU:
no ``.tolist()``/``.item()``/``bool()`` from the ops or the plugins per iteration, the same numbers as the
immediate mode, and a NaN still raises, before anything is consolidated.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import clfast
from clfast import ops
from clfast.plugins import EWCPlugin, MASPlugin, RWalkPlugin, SynapticIntelligencePlugin
from clfast.testing.plugin_fixtures import naive, seeded, stream, train_stream

_WATCHED = (str(Path(clfast.__file__).parent / "ops"), str(Path(clfast.__file__).parent / "plugins"))
_READS = ("tolist", "item", "__bool__", "__float__", "__int__")

PLUGINS = {"si": lambda: SynapticIntelligencePlugin(1.0), "rwalk": lambda: RWalkPlugin(0.1, delta_t=2),
           "mas": lambda: MASPlugin(0.1), "ewc": lambda: EWCPlugin(0.1)}


@pytest.fixture
def host_reads(monkeypatch):
    """Counts the device-to-host reads made from clfast.ops and clfast.plugins (where a sync would be)."""
    calls: list[str] = []
    for name in _READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(_WATCHED):
                calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def _run(make, mode: str, epochs: int, every: int | None = None, inject: int | None = None):
    plugin = make()
    plugin.set_finite_check(mode, every)
    plugins = [plugin] if inject is None else [_NanAt(inject), plugin]
    strategy = naive(seeded(lambda: torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.ReLU(),
                                                        torch.nn.Linear(8, 6))), plugins, epochs=epochs)
    return strategy, plugin


class _NanAt:
    """Puts a NaN into the first gradient at one training iteration (before the regulariser reads it)."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def after_backward(self, strategy, **kwargs):
        if strategy.clock.train_iterations == self.iteration:
            next(strategy.model.parameters()).grad.view(-1)[0] = float("nan")


@pytest.mark.parametrize("name", ["si", "rwalk"])
def test_deferred_checks_make_no_host_read_per_iteration(name, host_reads):
    counts = []
    for epochs in (1, 4):
        strategy, _ = _run(PLUGINS[name], "deferred", epochs)
        host_reads.clear()
        train_stream(strategy, stream(2))
        counts.append(len(host_reads))
    assert counts[0] == counts[1], f"host reads grow with the iterations: {counts}"
    # The immediate mode reads the flags back on every update: the count grows (what CUDA would sync on).
    strategy, _ = _run(PLUGINS[name], "immediate", 4)
    host_reads.clear()
    train_stream(strategy, stream(2))
    assert len(host_reads) >= counts[0] + 20  # 2 experiences x 4 epochs x 3 iterations: one read per update


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_deferred_and_immediate_checks_train_the_same(name):
    states = []
    for mode in ("immediate", "deferred"):
        strategy, plugin = _run(PLUGINS[name], mode, 2)
        train_stream(strategy, stream(2))
        states.append(plugin.state_dict()["state"]["buffers"])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("name", ["si", "rwalk"])
def test_a_deferred_nan_raises_at_the_boundary_before_consolidating(name):
    strategy, plugin = _run(PLUGINS[name], "deferred", 2, inject=8)
    s = stream(2)
    train_stream(strategy, s[:1])  # experience 0 is clean (its iterations end before 8)
    consolidated = {"si": ("importance", "cum", "anchor"), "rwalk": ("exp_fisher", "exp_scores", "penalty")}[name]
    saved = {k: plugin._table[k].clone() for k in consolidated}
    with pytest.raises(ValueError, match=r"(params|grads)\[0\] contains NaN or inf \(deferred check"):
        train_stream(strategy, s[1:])
    assert all(torch.equal(saved[k], plugin._table[k]) for k in consolidated), "a poisoned state was consolidated"
    with pytest.raises(ValueError, match="contains NaN or inf"):  # tripped: no checkpoint of a poisoned state
        plugin.state_dict()


def test_check_every_k_iterations_raises_within_the_experience():
    strategy, _ = _run(PLUGINS["si"], "deferred", 3, every=2, inject=2)
    seen = []

    class Spy:
        def after_training_iteration(self, strategy, **kwargs):
            seen.append(strategy.clock.train_iterations)

    strategy.plugins.append(Spy())
    with pytest.raises(ValueError, match=r"path_integral_update_: (params|grads)\[0\] contains NaN or inf"):
        train_stream(strategy, stream(1))
    # The NaN entered in iteration 2 (0-based); the check at the 4th tick, in iteration 3, raised it before the
    # spy (after the plugin) saw that iteration: the spy saw iterations 0, 1, 2 (the clock counts them done).
    assert seen == [1, 2, 3]


def test_the_immediate_check_still_refuses_before_writing():
    strategy, plugin = _run(PLUGINS["si"], "auto", 2, inject=1)  # auto on the CPU: immediate
    with pytest.raises(ValueError, match=r"path_integral_update_: (params|grads)\[0\] contains NaN or inf$"):
        train_stream(strategy, stream(1))
    assert bool(torch.isfinite(plugin._table["omega"]).all())


def test_guard_records_on_the_device_and_stays_tripped_until_reset():
    guard = ops.FiniteGuard("deferred")
    state = torch.zeros(6)
    good, bad = [torch.ones(2, 3)], [torch.tensor([[1.0, float("inf"), 0.0], [0.0, 0.0, 0.0]])]
    ops.mas_importance_update_(state, good, grads=good, check_finite=guard)
    assert guard.pending
    guard.check()  # nothing bad: cleared
    assert not guard.pending
    ops.mas_importance_update_(state, good, grads=bad, check_finite=guard)
    ops.mas_importance_update_(state, good, grads=good, check_finite=guard)  # ORed into the same record
    for _ in range(2):
        with pytest.raises(ValueError, match=r"mas_importance_update_: (params|grads)\[0\] contains NaN or inf"):
            guard.check()
    assert torch.isinf(state).any(), "the deferred update has run (documented)"
    guard.reset()
    guard.check()
    assert ops.FiniteGuard("auto").defers_on(torch.device("cuda")) and not ops.FiniteGuard().defers_on(
        torch.device("cpu"))


@pytest.mark.parametrize("mode, every, error", [("later", None, ValueError), ("deferred", 0, ValueError),
                                                ("deferred", 1.5, TypeError)])
def test_bad_settings_are_named(mode, every, error):
    with pytest.raises(error, match="finite_check"):
        SynapticIntelligencePlugin(1.0).set_finite_check(mode, every)
