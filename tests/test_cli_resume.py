"""`clfast train --checkpoint-dir/--resume`: runs killed (SIGKILL) after or during a checkpoint write
resume to exactly the results of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clfast.training.checkpoint import load_checkpoint

KILL_ENTRY = Path(__file__).with_name("_kill_entry.py")  # `clfast` killed at a checkpoint (a real crash)
ARGS = ["--scenario", "split-digits", "--strategy", "mas", "--epochs", "1", "--quiet", "--seed", "3"]


def _train(tmp: Path, name: str, *extra: str, kill: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    """``clfast train`` in a new process; ``kill=("after"|"during", N)`` ends it with SIGKILL right after or
    halfway through writing checkpoint N."""
    entry = ["-m", "clfast"] if kill is None else [str(KILL_ENTRY), kill[0], str(kill[1])]
    cmd = [sys.executable, *entry, "train", *ARGS, "--checkpoint-dir", str(tmp / f"ckpt-{name}"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _results(tmp: Path, name: str) -> dict:
    return json.loads((tmp / f"out-{name}" / "results.json").read_text())


@pytest.mark.slow
def test_killed_runs_resume_to_the_uninterrupted_results(tmp_path):
    whole = _train(tmp_path, "whole", "--out", str(tmp_path / "out-whole"))
    assert whole.returncode == 0, whole.stderr

    # Killed right after the 2nd checkpoint was written.
    killed = _train(tmp_path, "after", kill=("after", 2))
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "ckpt-after" / "checkpoint.pt")["cli"]["position"] == 2
    resumed = _train(tmp_path, "after", "--resume", "--out", str(tmp_path / "out-after"))
    assert resumed.returncode == 0, resumed.stderr

    # Killed halfway through writing the 3rd: the 2nd must still be there, whole and loadable.
    killed = _train(tmp_path, "during", kill=("during", 3))
    assert killed.returncode == -signal.SIGKILL
    ckpt_dir = tmp_path / "ckpt-during"
    assert any(p.name.startswith(".checkpoint.pt.tmp-") for p in ckpt_dir.iterdir())  # the torn write
    assert load_checkpoint(ckpt_dir / "checkpoint.pt")["cli"]["position"] == 2
    resumed = _train(tmp_path, "during", "--resume", "--out", str(tmp_path / "out-during"))
    assert resumed.returncode == 0, resumed.stderr
    assert not any(p.name.startswith(".checkpoint.pt.tmp-") for p in ckpt_dir.iterdir())

    ref = _results(tmp_path, "whole")
    for name in ("after", "during"):
        got = _results(tmp_path, name)
        assert got["model_sha256"] == ref["model_sha256"], name  # bit-identical final parameters
        assert got["accuracy_matrix"] == ref["accuracy_matrix"], name
        assert got["average_forgetting"] == ref["average_forgetting"], name

    # Another configuration cannot resume this run's checkpoint.
    other = _train(tmp_path, "whole", "--resume", "--lr", "0.2")
    assert other.returncode == 2
    assert "another run" in other.stderr and "lr" in other.stderr


@pytest.mark.slow
def test_a_run_killed_inside_an_experience_resumes_bit_identically(tmp_path):
    # 2 experiences of 23 minibatches per epoch, 2 epochs: 5 checkpoints inside each (every 8 iterations); killed
    # after the 9th: the second experience, iteration 32, in its second epoch. (tests/test_checkpoint_inside.py covers
    # other points in one process.)
    kill_at = 9
    extra = ["--strategy", "si", "--epochs", "2", "--n-experiences", "2", "--checkpoint-every", "8",
             "--precision", "16-mixed"]
    whole = _train(tmp_path, "whole", *extra, "--out", str(tmp_path / "out-whole"))
    assert whole.returncode == 0, whole.stderr
    killed = _train(tmp_path, "inside", *extra, kill=("inside", kill_at))
    assert killed.returncode == -signal.SIGKILL
    saved = load_checkpoint(tmp_path / "ckpt-inside" / "checkpoint.pt")
    assert saved["state"]["in_experience"] == {**saved["state"]["in_experience"], "experience": 1, "epoch": 1}
    resumed = _train(tmp_path, "inside", *extra, "--resume", "--out", str(tmp_path / "out-inside"))
    assert resumed.returncode == 0, resumed.stderr
    ref, got = _results(tmp_path, "whole"), _results(tmp_path, "inside")
    assert got["model_sha256"] == ref["model_sha256"]
    assert got["accuracy_matrix"] == ref["accuracy_matrix"]
