"""FSDP2 (issue 13 part 3): 2 gloo processes with the model under ``fully_shard`` vs one process over the same data.

For every case: (a) the ranks agree on the whole parameters and the whole plugin state (their shards joined);
(b) these equal a single-process run at twice the per-rank batch whose batches are the union of the ranks'
batches, within the tolerance of the DDP tests, and so do the reported losses (the penalty value summed over
the ranks' shards) and the accuracy matrix; (c) each rank holds at most 0.55 of the plugin state.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _ddp_worker import spawn_cases
from _fsdp_worker import FSDP_CASES, RESUME_CASES, run_fsdp_case, worker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                       reason="torch.distributed with gloo is not available"),
]

TOL = {"rtol": 1e-4, "atol": 1e-6}


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return spawn_cases(worker, tmp_path_factory.mktemp("fsdp"), [*FSDP_CASES, *RESUME_CASES, "refusals"])


@pytest.mark.parametrize("kind", FSDP_CASES)
def test_sharded_run_equals_single_process(fsdp_results, kind):
    r0, r1 = fsdp_results[kind]
    ref = run_fsdp_case(kind, sharded=False)
    for name, p in ref["params"].items():
        assert torch.equal(r0["params"][name], r1["params"][name]), name
        torch.testing.assert_close(r0["params"][name], p, **TOL, msg=lambda m, n=name: f"{n}: {m}")
    assert r0["state"].keys() == ref["state"].keys()
    for kind_, views in ref["state"].items():
        for name, v in views.items():
            assert torch.equal(r0["state"][kind_][name], r1["state"][kind_][name]), (kind_, name)
            torch.testing.assert_close(r0["state"][kind_][name], v, **TOL,
                                       msg=lambda m, k=kind_, n=name: f"{k}/{n}: {m}")
    # the ranks' minibatches are equal in size: their mean loss is the global batch's; the penalty is the whole
    mean_loss = [(a + b) / 2 for a, b in zip(r0["losses"], r1["losses"], strict=True)]
    assert mean_loss == pytest.approx(ref["losses"], rel=TOL["rtol"], abs=1e-6)
    torch.testing.assert_close(torch.tensor(r0["matrix"]), torch.tensor(ref["matrix"]), rtol=0, atol=1e-6)
    if kind != "naive":
        assert any(v.abs().sum() > 0 for views in r0["state"].values() for v in views.values())
        # the plugin state per rank: a shard of every parameter (dim 0 split in 2; the 4 output rows evenly)
        assert r0["numel"] + r1["numel"] == ref["numel"]
        assert max(r0["numel"], r1["numel"]) <= 0.55 * ref["numel"]


@pytest.mark.parametrize("kind", RESUME_CASES)
def test_sharded_checkpoint_resumes_bit_identically(fsdp_results, kind):
    """Saved through torch.distributed.checkpoint after the first experience and restored into a new sharded
    strategy, the second experience ends where the uninterrupted run does, bit for bit, on both ranks."""
    for r in fsdp_results[kind]:
        assert r["extra"] == {"position": 1}
        assert len(r["files"]) == 2 and "sharded.pt" in r["files"]  # the marker and one checkpoint: the first went
        for part in ("params", "state"):
            flat_a = {(k, n): v for k, d in r["straight"][part].items() for n, v in
                      (d.items() if isinstance(d, dict) else [("", d)])}
            flat_b = {(k, n): v for k, d in r["resumed"][part].items() for n, v in
                      (d.items() if isinstance(d, dict) else [("", d)])}
            assert flat_a.keys() == flat_b.keys()
            for key, v in flat_a.items():
                assert torch.equal(v, flat_b[key]), (part, key)


def test_what_fsdp2_does_not_take_is_a_clear_error(fsdp_results):
    for r in fsdp_results["refusals"]:
        assert "'16-mixed' is not supported with an FSDP2 model" in r["16-mixed"]
        assert "fisher='sample') does not run under FSDP2" in r["fisher=sample"]
