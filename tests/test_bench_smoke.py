"""The benchmark script runs and its contenders agree with the Avalanche-style loop (no timing asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from clfast.testing.model_shapes import MODELS


def _script(name: str) -> ModuleType:
    """A benchmark script loaded as a module (the scripts import only clfast, so no path set-up is needed)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _script("bench_state_ops")


def test_contenders_agree_with_the_loop():
    bench.check_against_loop([(3, 4), (5,), (0,), (70001,), (2, 2, 3)], "cpu")


def test_model_shape_lists_match_torchvision_counts():
    import math

    counts = {k: (len(f()), sum(math.prod(s) for s in f())) for k, f in MODELS.items()}
    assert counts == {"resnet18": (62, 11_689_512), "resnet50": (161, 25_557_032), "vit_b_16": (152, 86_567_656)}


def test_benchmark_writes_json_and_markdown(tmp_path):
    result = bench.main(["--device", "cpu", "--reps", "1", "--models", "resnet18", "--no-sweep", "--out",
                         str(tmp_path)])
    assert {r["op"] for r in result["rows"]} == {"penalty", "mas", "ewc", "si", "sgd", "adam", "sgd+penalty"}
    assert all(r["median_ms"] > 0 for r in result["rows"])
    assert len(list(tmp_path.glob("state_ops_*.json"))) == 1
    assert len(list(tmp_path.glob("state_ops_*.md"))) == 1


def test_batch_renorm_benchmark_agrees_and_writes_results(tmp_path):
    brn_bench = _script("bench_batch_renorm")

    brn_bench.check_agreement("cpu")  # clfast vs the eager Avalanche formula, both memory formats
    result = brn_bench.main(["--device", "cpu", "--reps", "1", "--only-issue-shapes", "--formats", "channels_last",
                             "--out", str(tmp_path)])
    assert {r["contender"] for r in result["rows"]} == {"clfast", "avalanche", "batchnorm"}
    assert {r["phase"] for r in result["rows"]} == {"fwd", "fwd+bwd"}
    assert len(list(tmp_path.glob("batch_renorm_*.json"))) == 1


def test_plugin_benchmark_runs_every_contender_and_writes_results(tmp_path):
    bench_plugins = _script("bench_plugins")

    result = bench_plugins.main(["--device", "cpu", "--models", "mlp", "--mlp-hidden", "32", "--batch", "8",
                                 "--exp1-iters", "10", "--warmup", "1", "--reps", "2", "--optimizer", "both",
                                 "--momentum", "0.9", "--out", str(tmp_path)])
    rows = {(r["implementation"], r["plugin"]): r for r in result["rows"]}
    assert set(rows) == {("naive", "-"), ("naive+optim", "-")} | {
        (i, p) for i in ("clfast", "clfast+optim", "avalanche") for p in bench_plugins.PLUGINS}
    assert not [r["error"] for r in rows.values() if "error" in r]
    for (impl, _), r in rows.items():  # a registered plugin without an Avalanche-style peer is reported as missing
        if "missing" in r:
            assert impl == "avalanche"
        else:
            assert r["median_ms"] > 0 and r["ratio"] > 0
    assert len(list(tmp_path.glob("plugins_cpu-*.json"))) == 1 and len(list(tmp_path.glob("plugins_cpu-*.md"))) == 1


@pytest.mark.parametrize("backbone", [["--width-mult", "0.25"],
                                      ["--backbone", "resnet18", "--resnet-width", "8", "--latent-layer", "layer3"]])
def test_ar1_benchmark_runs_both_contenders_and_writes_results(tmp_path, backbone):
    bench_ar1 = _script("bench_ar1")

    result = bench_ar1.main(["--image-size", "32", "--batch", "8", "--rm-size", "20", "--n-second", "24",
                             "--epochs", "1", "--rounds", "1", "--warmup", "1", *backbone,
                             "--threads", "1", "--out", str(tmp_path)])
    rows = {r["contender"]: r for r in result["rows"]}
    assert set(rows) == {"clfast", "avalanche"}
    assert all(r["iterations"] > 0 and r["median_ms"] > 0 for r in rows.values())
    assert result["composition"]["current"] + result["composition"]["replayed"] == 8
    # MobileNetV1 after entry 19 at 32 px: (128 channels at width 0.25, 2, 2); ResNet-18 before layer3: (16, 4, 4)
    assert result["composition"]["latent_shape"] == ([128, 2, 2] if len(backbone) == 2 else [16, 4, 4])
    assert len(list(tmp_path.glob("ar1_*.json"))) == 1 and len(list(tmp_path.glob("ar1_*.md"))) == 1


@pytest.mark.slow
def test_large_benchmark_runs_fsdp_with_one_and_two_ranks(monkeypatch):
    # imported by name: its ranks are spawned processes that import the module again
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_large

    result = bench_large.main(["--quick", "--worlds", "1,2", "--precisions", "32"])
    configs = {c["world"]: c["rows"] for c in result["configs"]}
    assert set(configs) == {1, 2} and all(set(rows) == set(bench_large.CONTENDERS) for rows in configs.values())
    for name in bench_large.CONTENDERS:
        assert configs[1][name]["ms"] > 0 and configs[2][name]["over_naive"] > 0
        if name != "naive":  # every parameter's rows split evenly in two at this width
            assert configs[2][name]["state_bytes"] * 2 == configs[1][name]["state_bytes"] > 0
