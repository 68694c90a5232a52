"""``torchrun -m clfast train --parallel ddp``: the process group from torchrun's environment (gloo here), the data
sharded, rank 0 alone printing and writing; 2 ranks at B per rank train like 1 rank at 2·B (the definition of
``docs/distributed.md``, up to the padding of an odd shard)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clfast.cli import main

ARGS = ["train", "--parallel", "ddp", "--epochs", "1", "--n-experiences", "2", "--strategy", "mas", "--seed", "1"]


def _torchrun(nproc: int, out, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "clfast", *ARGS, "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_ranks_train_like_one_rank_at_twice_the_batch(tmp_path):
    two = _torchrun(2, tmp_path / "w2", "--mb-size", "16")
    assert two.returncode == 0, two.stderr[-3000:]
    one = _torchrun(1, tmp_path / "w1", "--mb-size", "32")
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.stdout.count("accuracy matrix") == 1  # rank 0 alone reports
    a = json.loads((tmp_path / "w2" / "results.json").read_text())
    b = json.loads((tmp_path / "w1" / "results.json").read_text())
    assert a["config"]["parallel"] == "ddp"
    # Equal up to the samples DistributedSampler repeats to even out an odd shard (one per eval experience here).
    for row_a, row_b in zip(a["accuracy_matrix"], b["accuracy_matrix"], strict=True):
        assert row_a == pytest.approx(row_b, abs=0.01)
    assert a["accuracy_matrix"][1][1] > 0.5


def test_parallel_outside_torchrun_is_a_clear_error(monkeypatch, capsys):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert main([*ARGS, "--quiet"]) == 2
    assert "runs under torchrun" in capsys.readouterr().err


@pytest.mark.slow
def test_fsdp_two_ranks_train_like_one_rank_at_twice_the_batch(tmp_path):
    """``--parallel fsdp``: the model sharded, MAS's state over the shards; the same accuracy matrix as one process
    at twice the batch (up to the padding of an odd shard) and, gathered whole, the same model as the DDP run."""
    fsdp = _torchrun(2, tmp_path / "fsdp", "--mb-size", "16", "--parallel", "fsdp")
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    assert fsdp.stdout.count("accuracy matrix") == 1
    ddp = _torchrun(2, tmp_path / "ddp", "--mb-size", "16")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = json.loads((tmp_path / "fsdp" / "results.json").read_text())
    b = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert a["config"]["parallel"] == "fsdp"
    for row_a, row_b in zip(a["accuracy_matrix"], b["accuracy_matrix"], strict=True):
        assert row_a == pytest.approx(row_b, abs=1e-6)
    assert a["accuracy_matrix"][1][1] > 0.5


@pytest.mark.slow
def test_fsdp_checkpoints_are_sharded_and_resume(tmp_path):
    """``--parallel fsdp --checkpoint-dir``: every rank writes its shards (DCP) and its own file; ``--resume`` reads
    them back, checks the configuration and reports the same model."""
    args = ["--mb-size", "16", "--parallel", "fsdp", "--checkpoint-dir", str(tmp_path / "ck")]
    first = _torchrun(2, tmp_path / "a", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    names = {p.name for p in (tmp_path / "ck").iterdir()}
    assert "sharded.pt" in names and len(names) == 2  # the marker and the last experience's checkpoint
    (ckpt,) = [p for p in (tmp_path / "ck").iterdir() if p.is_dir()]
    assert {p.name for p in ckpt.iterdir()} == {"sharded", "rank0.pt", "rank1.pt"}
    again = _torchrun(2, tmp_path / "b", *args, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming after 2 experience(s)" in again.stdout
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert a["model_sha256"] == b["model_sha256"] and a["accuracy_matrix"] == b["accuracy_matrix"]
    other = _torchrun(2, tmp_path / "c", *args, "--resume", "--lr", "0.01")
    assert other.returncode != 0 and "checkpoint of another run" in other.stderr  # (torchrun exits 1)


@pytest.mark.parametrize("extra", [["--strategy", "ar1"], ["--precision", "16-mixed"]])
def test_fsdp_refusals_are_usage_errors(extra, capsys):
    args = [a for a in ARGS if a not in ("--strategy", "mas")]
    with pytest.raises(SystemExit) as err:
        main([*args, "--parallel", "fsdp", *extra, "--quiet"])
    assert err.value.code == 2
    assert "--parallel fsdp does not take" in capsys.readouterr().err
