"""Timing and reporting shared by the benchmark scripts under ``benchmarks/``: device synchronisation, the
interleaved median timer, copy bandwidth, the device's name and the results writer (JSON + markdown)."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["copy_bandwidth", "device_name", "sync", "time_contenders", "write_results"]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_contenders(w: Any, contenders: dict[str, Callable], device: str, reps: int) -> dict[str, float]:
    """Median seconds per call; contenders interleaved so drift hits all alike."""
    for fn in contenders.values():  # warm-up
        fn(w)
    sync(device)
    samples: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            sync(device)
            t0 = time.perf_counter()
            fn(w)
            sync(device)
            samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def copy_bandwidth(numel: int, device: str, reps: int) -> float:
    """Bytes/s of dst.copy_(src) for `numel` fp32 elements (read + write counted)."""
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    t = time_contenders(None, {"copy": lambda _: dst.copy_(src)}, device, reps)["copy"]
    return 8 * numel / t


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def write_results(out: Path, prefix: str, device: str, result: dict, md: str, suffix: str = "") -> None:
    """Writes ``<prefix>_<device tag><suffix>.json`` and ``.md`` under ``out`` and prints the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{device}-{torch.get_num_threads()}threads" if device == "cpu" else \
        torch.cuda.get_device_name().replace(" ", "_")
    (out / f"{prefix}_{tag}{suffix}.json").write_text(json.dumps(result, indent=1))
    (out / f"{prefix}_{tag}{suffix}.md").write_text(md)
    print(md)
