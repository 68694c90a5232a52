"""Benchmark of the regularisers on a sharded model: per-rank plugin memory and time per training iteration over
Naive's under FSDP2 with W = 1 and W = 2 processes, in fp32 and under bf16-mixed.

Each configuration (W, precision) starts W processes (gloo on the CPU, NCCL with ``--device cuda``, one GPU per
rank). Every rank builds the same MLP (``--width`` hidden units, ``--layers`` hidden layers, 3072 inputs, 10
outputs) from seed 0, shards it with :func:`clfast.sharding.shard_model` and trains it with Naive alone and with
MAS, EWC (online), SI and RWalk (``clfast.plugins.PLUGINS``, their command-line strengths) on a synthetic
two-experience stream (standard-normal inputs, nothing downloaded). The first experience (``--first`` iterations
per rank) makes the plugin state; the iterations of the second are timed, from fetching the minibatch to the end of
``after_training_iteration`` (all hooks, forward, backward, step; CUDA synchronised). The contenders take turns
one experience at a time for ``--rounds`` rounds; per contender the median over rounds of the round's median
iteration time is reported (and the spread of the round medians), with its ratio over Naive's of the same
configuration. Plugin memory: the bytes of the plugin's flat state on rank 0 (every rank holds about the same),
and its ratio to the W = 1 run's (the issue's target: at most 0.55 at W = 2).

Writes ``benchmarks/results/large_<device>.{json,md}`` (``--out``).

Usage: ``python benchmarks/bench_large.py [--quick] [--device cpu|cuda] [--worlds 1,2] [--precisions 32,bf16-mixed]``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn

from clfast import distributed as dist
from clfast.evaluation import EvaluationPlugin
from clfast.plugins import PLUGINS
from clfast.sharding import shard_model
from clfast.strategies import Naive
from clfast.testing.bench import device_name, sync
from clfast.testing.fakes import Experience, Stream, TensorExperienceDataset

HERE = Path(__file__).resolve().parent
CONTENDERS = ("naive", *PLUGINS)
IN_FEATURES = 3072


def make_model(width: int, layers: int) -> nn.Module:
    torch.manual_seed(0)
    blocks: list[nn.Module] = []
    d = IN_FEATURES
    for _ in range(layers):
        blocks += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*blocks, nn.Linear(d, 10))


class IterationTimer:
    """Seconds per training iteration of the experience being trained (CUDA synchronised)."""

    supports_distributed = True

    def __init__(self, device: str) -> None:
        self.device, self.times, self._t0 = device, [], 0.0

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        sync(self.device)
        self._t0 = time.perf_counter()

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        sync(self.device)
        self.times.append(time.perf_counter() - self._t0)


def _experience(index: int, n: int, seed: int) -> Experience:
    """Experience ``index`` of a class-incremental stream: ``n`` standard-normal inputs, labels cycling through
    classes 5·index ... 5·index + 4 (unit-scale inputs keep SGD stable on the wide first layer)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_FEATURES, generator=g)
    y = torch.arange(n) % 5 + 5 * index
    stream = Stream("train")
    stream.append(Experience(TensorExperienceDataset(x, y, torch.zeros(n)), index, stream))
    return stream[0]


def _build(name: str, args: argparse.Namespace, device: torch.device, precision: str) -> tuple[Naive, Any]:
    model = shard_model(make_model(args.width, args.layers).to(device))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    plugin = None if name == "naive" else PLUGINS[name].make(
        None, **({"mode": "online", "decay_factor": 0.9} if name == "ewc" else {}))
    timer = IterationTimer(device.type)
    strategy = Naive(model, opt, train_mb_size=args.batch, train_epochs=1, device=device, precision=precision,
                     plugins=[timer] if plugin is None else [plugin, timer], evaluator=EvaluationPlugin())
    return strategy, (plugin, timer)


def rank_main(rank: int, world: int, port: int, args: argparse.Namespace, precision: str, out: str) -> None:
    """One rank of one configuration: every contender, alternating per round; rank 0 writes the figures."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        # per rank: --first iterations in the first experience, --timed in the second
        first = _experience(0, args.first * args.batch * world, seed=1)
        second = _experience(1, args.timed * args.batch * world, seed=2)
        per_round: dict[str, list[float]] = {n: [] for n in CONTENDERS}
        state_bytes: dict[str, int] = {}
        for _ in range(args.rounds):
            for name in CONTENDERS:
                strategy, (plugin, timer) = _build(name, args, device, precision)
                strategy.train(first)
                timer.times.clear()
                strategy.train(second)
                per_round[name].append(statistics.median(timer.times[args.warmup:]))
                st = None if plugin is None else plugin._table.state
                state_bytes[name] = 0 if st is None else sum(b.numel() * b.element_size()
                                                             for b in (st[k] for k in st.kinds))
                del strategy, plugin
        if dist.is_main_process():
            Path(out).write_text(json.dumps({"per_round_s": per_round, "state_bytes": state_bytes}))
        dist.barrier()
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(args: argparse.Namespace, world: int, precision: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank0.json")
        mp.spawn(rank_main, args=(world, _free_port(), args, precision, out), nprocs=world, join=True)
        raw = json.loads(Path(out).read_text())
    rows = {}
    naive = statistics.median(raw["per_round_s"]["naive"])
    for name, values in raw["per_round_s"].items():
        med = statistics.median(values)
        rows[name] = {"ms": 1e3 * med, "spread_ms": [1e3 * min(values), 1e3 * max(values)],
                      "over_naive": med / naive, "state_bytes": raw["state_bytes"][name]}
    return rows


def format_table(results: dict[str, Any]) -> str:
    lines = ["| W | precision | contender | ms/iteration (min-max over rounds) | over Naive | plugin state per rank "
             "(MiB) | state vs W=1 |", "|---:|---|---|---:|---:|---:|---:|"]
    for cfg in results["configs"]:
        base = next((c for c in results["configs"] if c["world"] == 1 and c["precision"] == cfg["precision"]), None)
        for name, r in cfg["rows"].items():
            ratio = ""
            if base is not None and r["state_bytes"] and base["rows"][name]["state_bytes"]:
                ratio = f"{r['state_bytes'] / base['rows'][name]['state_bytes']:.3f}"
            lines.append(f"| {cfg['world']} | {cfg['precision']} | {name} | {r['ms']:.2f} ({r['spread_ms'][0]:.2f}-"
                         f"{r['spread_ms'][1]:.2f}) | {r['over_naive']:.2f}x | {r['state_bytes'] / 2**20:.2f} | "
                         f"{ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--worlds", default="1,2", help="comma-separated process counts (default %(default)s)")
    p.add_argument("--precisions", default="32,bf16-mixed", help="comma-separated (default %(default)s)")
    p.add_argument("--width", type=int, default=2000, help="hidden units (default %(default)s: 10.2M parameters)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32, help="per rank (default %(default)s)")
    p.add_argument("--first", type=int, default=6, help="first-experience iterations per rank")
    p.add_argument("--timed", type=int, default=20, help="timed second-experience iterations per rank")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations at the start of the second")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="a small model and few iterations (a smoke run)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.first, args.timed, args.warmup, args.rounds = 64, 2, 4, 1, 1
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available")
    worlds = [int(w) for w in args.worlds.split(",")]
    if args.device == "cuda" and max(worlds) > torch.cuda.device_count():
        sys.exit(f"--worlds {args.worlds}: only {torch.cuda.device_count()} GPU(s)")
    configs = []
    for precision in args.precisions.split(","):
        for world in worlds:
            rows = run_config(args, world, precision)
            configs.append({"world": world, "precision": precision, "rows": rows})
            print(f"W={world} {precision}: " + ", ".join(f"{n} {r['over_naive']:.2f}x" for n, r in rows.items()),
                  flush=True)
    n_params = sum(p.numel() for p in make_model(args.width, args.layers).parameters())
    results = {"device": device_name(args.device), "torch": torch.__version__, "model": {
        "kind": "mlp", "in": IN_FEATURES, "width": args.width, "layers": args.layers, "parameters": n_params},
        "batch_per_rank": args.batch, "rounds": args.rounds, "timed_iterations": args.timed - args.warmup,
        "threads_per_rank": args.threads, "configs": configs}
    table = format_table(results)
    print(table)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"large_{args.device}"
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
        stem.with_suffix(".md").write_text(f"# bench_large.py on {results['device']} (torch {torch.__version__})\n\n"
                                           f"MLP {IN_FEATURES}-{'-'.join([str(args.width)] * args.layers)}-10 "
                                           f"({n_params:,} parameters), batch {args.batch} per rank, "
                                           f"{args.threads} thread(s) per rank, {args.rounds} rounds.\n\n{table}\n")
    return results


if __name__ == "__main__":
    main()
