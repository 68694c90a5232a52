"""``clfast train`` end to end on Split-Digits (bundled with scikit-learn), and its argument errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

import clfast.scenarios
from clfast.cli import main


def _train(tmp_path, *extra: str) -> tuple[int, dict]:
    code = main(["train", "--epochs", "1", "--quiet", "--out", str(tmp_path), *extra])
    results = json.loads((tmp_path / "results.json").read_text()) if code == 0 else {}
    return code, results


def test_train_on_split_digits_writes_results_and_plot(tmp_path, capsys):
    code, res = _train(tmp_path, "--plot")
    out = capsys.readouterr().out
    assert code == 0
    m = res["accuracy_matrix"]
    assert len(m) == 5 and all(len(r) == 5 for r in m)
    assert all(0.0 <= v <= 1.0 for r in m for v in r)
    assert m[4][4] > 0.5  # the experience just learned is learned
    assert res["average_accuracy"] == pytest.approx(sum(m[4]) / 5)
    assert res["forgetting"][:4] == pytest.approx([m[j][j] - m[4][j] for j in range(4)])
    assert res["forgetting"][4] is None
    assert "Top1_Acc_Stream/eval_phase/test_stream/Task000" in res["metrics"]
    assert res["timings"]["train_iterations"] > 0 and len(res["timings"]["train_per_experience_s"]) == 5
    assert (tmp_path / "accuracy_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "accuracy_matrix.csv").read_text().splitlines()[0] == "after_exp,exp0,exp1,exp2,exp3,exp4"
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert (tmp_path / "metrics.csv").read_text().startswith("name,x,value")
    for text in ("accuracy matrix", "average accuracy", "average forgetting", "ms per iteration"):
        assert text in out


def test_train_is_deterministic_with_a_seed(tmp_path):
    _, a = _train(tmp_path / "a", "--n-experiences", "2", "--seed", "3", "--model", "cnn")
    _, b = _train(tmp_path / "b", "--n-experiences", "2", "--seed", "3", "--model", "cnn")
    assert len(a["accuracy_matrix"]) == 2 and a["accuracy_matrix"] == b["accuracy_matrix"]
    assert a["config"]["seed"] == 3 and a["config"]["model"] == "cnn"


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_precision_and_accumulation_options_reach_the_strategy(tmp_path, precision):
    _, one = _train(tmp_path / "one", "--n-experiences", "2", "--mb-size", "32")
    code, res = _train(tmp_path / "acc", "--n-experiences", "2", "--mb-size", "16", "--precision", precision,
                       "--accumulate-grad-batches", "2")
    assert code == 0
    assert res["config"]["precision"] == precision and res["config"]["accumulate_grad_batches"] == 2
    # minibatches of half the size: twice as many (up to one per experience, where a last batch is short); the
    # experience just trained is learned
    assert abs(res["timings"]["train_iterations"] - 2 * one["timings"]["train_iterations"]) <= 2
    assert res["accuracy_matrix"][1][1] > 0.5


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_and_an_iteration_budget_from_the_command_line(tmp_path, optimizer):
    code, res = _train(tmp_path, "--n-experiences", "2", "--optimizer", optimizer, "--train-iterations", "30")
    assert code == 0
    assert res["config"]["optimizer"] == optimizer and res["config"]["lr"] == 1e-3  # Adam's default lr
    assert res["timings"]["train_iterations"] == 2 * 30
    assert res["accuracy_matrix"][1][1] > 0.5


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "clfast", "train", "--epochs", "1", "--n-experiences", "2",
                           "--quiet", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "accuracy matrix" in proc.stdout and (tmp_path / "results.json").exists()


@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "--epochs: expected a positive integer"),
    (["--mb-size", "x"], "--mb-size: expected a positive integer"),
    (["--n-experiences", "-1"], "--n-experiences"),
    (["--lr", "-0.1"], "--lr: expected a number in"),
    (["--momentum", "2"], "--momentum"),
    (["--seed", "-5"], "--seed"),
    (["--scenario", "nope"], "--scenario: invalid choice"),
    (["--strategy", "nope"], "--strategy: invalid choice"),
    (["--model", "nope"], "--model: invalid choice"),
    (["--device", "tpu9"], "--device"),
    (["--precision", "fp16"], "--precision: invalid choice"),
    (["--optimizer", "rmsprop"], "--optimizer: invalid choice"),
    (["--train-iterations", "0"], "--train-iterations: expected a positive integer"),
    (["--strategy", "ar1", "--optimizer", "adam"], "AR1 builds its own SGD"),
    (["--accumulate-grad-batches", "0"], "--accumulate-grad-batches: expected a positive integer"),
])
def test_bad_arguments_give_a_clear_error(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_an_error(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err


def test_scenario_errors_are_reported_not_raised(monkeypatch, capsys):
    def broken(**kw):
        raise ValueError("10 classes cannot be split into 3 experiences")

    monkeypatch.setitem(clfast.scenarios.SCENARIOS, "split-digits", broken)
    assert main(["train", "--quiet"]) == 2
    assert "cannot be split" in capsys.readouterr().err


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["train", "--quiet", "--plot", "--out", str(tmp_path)]) == 2
    assert "needs matplotlib" in capsys.readouterr().err


def test_info_still_works(capsys):
    assert main(["info"]) == 0
    assert capsys.readouterr().out


def test_report_marks_unmeasured_entries():
    from clfast.cli.report import format_report

    summary = {"accuracy_matrix": [[1.0, math.nan], [0.5, 0.75]], "average_accuracy": 0.625,
               "stream_accuracy": None, "average_forgetting": 0.5, "forgetting": [0.5, math.nan],
               "timings": {"total_s": 1.0, "setup_s": 0.1, "train_s": 0.5, "eval_s": 0.1,
                           "train_per_experience_s": [0.25, 0.25], "train_iterations": 10,
                           "train_iteration_mean_s": 0.05}}
    text = format_report(summary)
    assert "62.50%" in text and "50.0, -" in text and "50.00 ms per iteration" in text


def test_thread_count_is_restored(tmp_path):
    before = torch.get_num_threads()
    assert main(["train", "--epochs", "1", "--n-experiences", "2", "--quiet", "--threads", "1"]) == 0
    assert torch.get_num_threads() == before


def test_a_diverging_training_ends_with_a_clear_error(capsys):
    """EWC's strength 300 with two minibatches per step: the Fisher of a less converged model is larger and the
    penalty makes SGD diverge in the fifth experience; the ops refuse the NaN gradients, the command says so."""
    rc = main(["train", "--strategy", "ewc", "--accumulate-grad-batches", "2", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "experience 4" in err and "NaN or inf" in err and "training diverged?" in err
