"""``clfast reproduce avalanche-baselines``: the documented set-up and targets, the stream accuracy against a hand
computation from the per-task accuracies, the output file and a bad method."""

from __future__ import annotations

import json

import pytest
from conftest import needs_mnist

from clfast.cli import main
from clfast.cli.baselines import METHODS, SETUP
from clfast.plugins import RWalkPlugin, SynapticIntelligencePlugin

pytestmark = needs_mnist


def test_the_setup_is_the_baselines():
    assert SETUP["hidden_layers"] == [256, 256] and SETUP["lr"] == 1e-3 and SETUP["epochs"] == 10
    assert SETUP["batch_size"] == 64
    assert METHODS["si"]["plugin"] is SynapticIntelligencePlugin
    assert METHODS["si"]["kwargs"] == {"si_lambda": 1.0, "eps": 0.1} and METHODS["si"]["target"] == 97.0
    assert METHODS["rwalk"]["plugin"] is RWalkPlugin
    assert METHODS["rwalk"]["kwargs"] == {"ewc_lambda": 0.1, "ewc_alpha": 0.9, "delta_t": 10}
    assert METHODS["rwalk"]["target"] == 99.0


@pytest.mark.slow
def test_one_epoch_run_writes_results_and_learns(tmp_path, capsys):
    assert main(["reproduce", "avalanche-baselines", "--methods", "si", "--epochs", "1", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    (run,) = doc["runs"]
    # MNIST's test digits per pair: 0/1 2115, 2/3 2042, 4/5 1874, 6/7 1986, 8/9 1983
    sizes = [2115, 2042, 1874, 1986, 1983]
    weighted = sum(a * n for a, n in zip(run["per_task"], sizes, strict=True)) / 10000
    assert run["stream_accuracy"] == pytest.approx(weighted)
    assert doc["results"]["si"]["runs"] == [run["stream_accuracy"]] and doc["results"]["si"]["target"] == 97.0
    assert run["stream_accuracy"] > 90.0  # two-way choices within a task: far above the 50% of chance
    assert run["iterations"] == sum(-(-n // 64) for n in (12665, 12089, 11263, 12183, 11800))
    assert "si" in capsys.readouterr().out


def test_a_bad_method_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as err:
        main(["reproduce", "avalanche-baselines", "--methods", "ewc"])
    assert err.value.code == 2 and "unknown method" in capsys.readouterr().err
