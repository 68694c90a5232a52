"""Distributed data parallel (issue 7 item 2): 2 gloo processes on CPU vs one process over the same data.

For every case: (a) both ranks hold identical parameters, plugin state and metrics; (b) they equal a
single-process run at twice the per-rank batch whose batches are the union of the ranks' batches, within
float tolerance (``docs/distributed.md``).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _ddp_worker import ACCUM_CASES, AR1_CASES, CASES, run_case, spawn_cases, split_kind, worker

from clfast import distributed as dist
from clfast.plugins import PLUGINS, CWRStarPlugin
from clfast.strategies import AR1

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

TOL = {"rtol": 1e-4, "atol": 1e-6}


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return spawn_cases(worker, tmp_path_factory.mktemp("ddp"), [*CASES, *ACCUM_CASES, *AR1_CASES])


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
        return out
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (dict, list, tuple, torch.Tensor)) for v in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


def _assert_same(a: Any, b: Any, *, exact: bool) -> None:
    fa, fb = _flatten(a), _flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        x, y = fa[k], fb[k]
        if isinstance(x, torch.Tensor):
            if exact:
                assert torch.equal(x, y), k
            else:
                torch.testing.assert_close(x, y, **TOL, msg=lambda m, k=k: f"{k}: {m}")
        elif isinstance(x, float) and not exact:
            assert x == pytest.approx(y, rel=TOL["rtol"], abs=1e-6, nan_ok=True), k
        else:
            assert x == y or (x != x and y != y), k


@pytest.mark.parametrize("kind", [*CASES, *ACCUM_CASES, *AR1_CASES])
def test_ranks_identical_and_equal_to_single_process(ddp_results, kind):
    r0, r1 = ddp_results[kind]
    # loggers run on rank 0 only
    assert r0.pop("logged") > 0 and r1.pop("logged") == 0
    # (a) every rank holds the same parameters, plugin state and (reduced) metrics, bit for bit
    _assert_same(r0, r1, exact=True)
    # (b) the same as one process over the same global batches
    ref = run_case(kind, distributed=False)
    ref.pop("logged")
    comm, ref_comm = r0.pop("comm", None), ref.pop("comm", None)
    r1.pop("comm", None)
    if comm is not None:  # DDP all-reduces once per optimizer step (one bucket for this model): none under no_sync
        assert comm["steps"] == ref_comm["steps"] and comm["iterations"] == ref_comm["iterations"]
        assert comm["allreduces"] == comm["steps"]
        if "+accum" in kind:
            assert comm["steps"] < comm["iterations"]
    _assert_same(r0, ref, exact=False)
    if split_kind(kind)[0] != "naive":  # the regulariser did something: a non-trivial state
        flat = [v for v in _flatten(r0["plugin"]).values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        assert any(v.abs().sum() > 0 for v in flat)
    acc = [v for k, v in r0["metrics"].items() if k.startswith("Top1_Acc_Stream/eval_phase")]
    assert acc and all(0.0 <= v <= 1.0 for v in acc)


def test_plugins_declare_distributed_support():
    for cls in (*(spec.cls for spec in PLUGINS.values()), CWRStarPlugin, AR1):
        assert cls.supports_distributed is True


def test_ar1_case_exercises_replay_and_the_memory(ddp_results):
    r0, _ = ddp_results["ar1"]
    # 2nd experience: 6 current + 2 replayed per global batch (3 + 1 per rank), the single-process split at W·B
    assert r0["splits"] == [(2 * 4, 0), (6, 2)]
    assert r0["memory"]["x"].shape[0] == 9 and set(r0["memory"]["y"].tolist()) == {0, 1, 2, 3}
    assert r0["plugin"]["cwr"]["past_j"].sum() > 0


def test_ar1_refuses_a_wrapped_model():
    from _ddp_worker import TinyLatentNet
    with pytest.raises(TypeError, match="unwrapped"):
        AR1(model=torch.nn.DataParallel(TinyLatentNet()), freeze_below_layer="end_features.0", evaluator=None)


def test_helpers_without_a_process_group():
    assert not dist.is_distributed()
    assert dist.rank() == 0 and dist.world_size() == 1 and dist.is_main_process()
    t = torch.tensor([1.0, 2.0])
    assert dist.all_reduce_sum_(t) is t and t.tolist() == [1.0, 2.0]
    assert dist.all_reduce_mean_(t).tolist() == [1.0, 2.0]
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    assert dist.all_gather_object(3) == [3]
    dist.barrier()
    m = torch.nn.Linear(2, 2)
    assert dist.unwrap(m) is m and dist.unwrap(torch.nn.DataParallel(m)) is m
