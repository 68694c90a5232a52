"""``clfast reproduce three-scenarios``: the command's output files, its statistics, the protocol's models and the
methods' hyper-parameters against the documented values (van de Ven & Tolias 2019 and the authors' code)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import needs_mnist
from torch import nn

from clfast.cli import main
from clfast.cli.protocol import (
    HPARAMS,
    PAPER_METHODS,
    ActiveClasses,
    Options,
    build_plugins,
    build_run,
    method_config,
)
from clfast.cli.report import sem
from clfast.nn import MultiHeadMLP
from clfast.plugins import EWCPlugin, ReplayPlugin, SynapticIntelligencePlugin

pytestmark = needs_mnist  # the protocol's benchmark is Split-MNIST (split-digits, for quick runs, is not the default)

#: The authors' values (their definitions: EWC (λ/2)·ΣF(θ−θ*)², Online EWC (λ/2)·γ·F̃(θ−θ*)², SI c·ΣΩ(θ−θ*)²):
#: "paper" from the paper's code (param_values.py, 2019), "current" from the authors' repository today.
DOCUMENTED = {
    "paper": {"task": (1e7, 1e8, 0.8, 50.0), "domain": (1e6, 1e8, 0.7, 500.0), "class": (1e8, 1e9, 0.8, 0.5)},
    "current": {"task": (1e5, 1e5, 1.0, 10.0), "domain": (1e10, 1e10, 1.0, 5e4), "class": (1e9, 1e9, 1.0, 5e3)},
}


def _run(tmp_path, capsys, *extra):
    rc = main(["reproduce", "three-scenarios", "--settings", "domain", "--iterations", "20", "--seeds", "2",
               "--fisher-samples", "256", "--out", str(tmp_path), *extra])
    assert rc == 0
    return json.loads((tmp_path / "results.json").read_text()), capsys.readouterr().out


def test_the_command_writes_results_json_in_the_schema(tmp_path, capsys):
    doc, out = _run(tmp_path, capsys)
    assert set(doc) == {"protocol", "results"}
    assert list(doc["results"]) == ["domain"]
    assert list(doc["results"]["domain"]) == list(PAPER_METHODS)
    runs = json.loads((tmp_path / "runs.json").read_text())
    for method, r in doc["results"]["domain"].items():
        assert set(r) == {"mean", "sem", "runs"}
        assert len(r["runs"]) == 2 and all(0.0 <= a <= 100.0 for a in r["runs"])  # percent
        assert r["mean"] == pytest.approx(sum(r["runs"]) / 2)
        assert r["sem"] == pytest.approx(abs(r["runs"][0] - r["runs"][1]) / 2)  # n = 2: s/√2 = |a − b|/2
        assert r["runs"] == [x["accuracy"] for x in runs if x["method"] == method]
    mine = [x for x in runs if x["method"] == "none"]
    assert [x["seed"] for x in mine] == [1, 2] and mine[0]["iterations"] == 5 * 20
    assert mine[0]["accuracy"] == pytest.approx(sum(mine[0]["per_task"]) / 5)
    p = doc["protocol"]
    assert p["iterations_per_task"] == 20 and p["seeds"] == [1, 2] and p["batch_size"] == 128
    assert p["configs"]["domain"]["ewc"][0]["ewc_lambda"] == 1e6 / 2
    assert "domain-incremental" in out and "Online EWC" in out
    assert f"{doc['results']['domain']['si']['mean']:.2f}" in out


def test_runs_repeat_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    first, _ = _run(tmp_path / "a", capsys, "--methods", "none", "--plot")
    again, _ = _run(tmp_path / "b", capsys, "--methods", "none")
    assert first["results"] == again["results"]
    assert (tmp_path / "a" / "results.png").stat().st_size > 0


@pytest.mark.slow
def test_worker_processes_give_the_same_runs(tmp_path, capsys):
    args = ["--benchmark", "split-digits", "--methods", "none,si"]
    serial, _ = _run(tmp_path / "a", capsys, *args)
    parallel, _ = _run(tmp_path / "b", capsys, *args, "--jobs", "2")
    assert serial["results"] == parallel["results"]


@pytest.mark.parametrize("bad", [["--methods", "none,bogus"], ["--settings", "task,nope"], ["--methods", ","],
                                 ["--strength", "none=1"], ["--strength", "si=-1"]])
def test_bad_lists_are_usage_errors(bad):
    with pytest.raises(SystemExit) as err:
        main(["reproduce", "three-scenarios", "--iterations", "1", *bad])
    assert err.value.code == 2


def test_sem_against_a_hand_computation():
    # mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9; / (n − 1) = 7/3; SEM = √(7/3) / √3 = √7 / 3
    assert sem([1.0, 2.0, 4.0]) == pytest.approx(math.sqrt(7) / 3, rel=1e-12)
    x = [19.9, 20.1, 20.0, 19.7]
    assert sem(x) == pytest.approx(math.sqrt(np.var(x) / (len(x) - 1)))  # the authors' compare.py formula
    assert sem([42.0]) is None


def _outputs(setting: str) -> list[int]:
    """The output width on each test experience after training-mode adaptation to all five experiences."""
    bench, strategy, _ = build_run(setting, "none", 1, Options(iterations=1))
    model = strategy.model
    widths = []
    for exp in bench.train_stream:
        for m in model.modules():
            if hasattr(m, "adaptation"):
                m.adaptation(exp)
    model.eval()
    for exp in bench.test_stream:
        x, _, t = exp.dataset.collate_fn(exp.dataset.__getitems__([0, 1, 2]))
        out = model(x, t) if isinstance(model, MultiHeadMLP) else model(x)
        widths.append(out.shape[1])
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears[:2]] == [(784, 400), (400, 400)]
    return widths


def test_model_output_widths_per_setting():
    assert _outputs("task") == [2] * 5
    assert _outputs("domain") == [2] * 5
    assert _outputs("class") == [10] * 5
    _, strategy, _ = build_run("task", "none", 1, Options(iterations=1))
    assert isinstance(strategy.model, MultiHeadMLP)


def test_class_incremental_training_sees_only_the_classes_so_far():
    bench, strategy, _ = build_run("class", "none", 1, Options(iterations=1))
    model = strategy.model
    assert isinstance(model, ActiveClasses)
    x = torch.rand(4, 1, 28, 28)
    widths = []
    for exp in bench.train_stream:
        model.train()
        model.adaptation(exp)
        model.eval()
        model.adaptation(bench.test_stream[0])  # evaluation never narrows it
        widths.append(model(x).shape[1])
    assert widths == [2, 4, 6, 8, 10]
    _, all_out, _ = build_run("class", "none", 1, Options(iterations=1, active_classes="all"))
    assert not isinstance(all_out.model, ActiveClasses)


@pytest.mark.parametrize("hparams", sorted(DOCUMENTED))
@pytest.mark.parametrize("setting", ["task", "domain", "class"])
def test_method_configs_are_the_documented_ones(hparams, setting):
    lam, o_lam, gamma, c = DOCUMENTED[hparams][setting]
    assert HPARAMS[hparams][setting] == {"ewc": {"lambda": lam}, "online-ewc": {"lambda": o_lam, "gamma": gamma},
                                         "si": {"c": c, "epsilon": 0.1}}
    labels = "pred" if hparams == "paper" else "all"
    options = Options(hparams=hparams, fisher_labels=labels)
    (ewc,) = build_plugins("ewc", setting, options, 1)
    assert isinstance(ewc, EWCPlugin) and ewc.mode == "separate" and ewc.ewc_lambda == lam / 2
    assert (ewc.fisher, ewc.fisher_labels, ewc.fisher_samples) == ("sample", labels, None)
    (online,) = build_plugins("online-ewc", setting, options, 1)
    assert online.mode == "online" and online.decay_factor == gamma
    assert online.ewc_lambda == pytest.approx(o_lam * gamma / 2)
    (si,) = build_plugins("si", setting, options, 1)
    assert isinstance(si, SynapticIntelligencePlugin) and si.si_lambda == [2 * c]
    assert si.eps == 0.1 and si.clip is None
    assert method_config("si", setting, options)[0]["authors"] == {"c": c, "epsilon": 0.1}
    assert build_plugins("none", setting, options, 1) == []


def test_strength_overrides_and_extra_methods():
    options = Options(strengths={"si": 3.0, "ewc": 8.0, "mas": 0.5})
    assert build_plugins("si", "task", options, 1)[0].si_lambda == [6.0]
    assert build_plugins("ewc", "task", options, 1)[0].ewc_lambda == 4.0
    assert build_plugins("mas", "task", options, 1)[0].lambda_reg == 0.5
    replay, si = build_plugins("replay+si", "class", Options(), 3)
    assert isinstance(replay, ReplayPlugin) and replay.mem_size == 1000 and replay.seed == 3
    assert si.si_lambda == [2 * 0.5]
