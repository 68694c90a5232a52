"""Benchmark of the clfast state ops against the peers a user would otherwise run.

For the parameter shapes of ResNet-18, ResNet-50 and ViT-B/16, and a sweep of tensor count and
total size, it times (median over interleaved repetitions, all in one process):

- penalty forward+backward (λΣΩ(θ−θ*)² and its gradient added to an existing ``.grad``),
- MAS importance Ω += |g|, EWC++ Fisher F = αg² + (1−α)F, SI path integral ω −= g(θ−θ_old); θ_old = θ,
- optimizer steps: SGD with momentum 0.9 and Adam alone (``torch.optim`` with ``foreach=True`` against
  ``clfast.optim``), and the SGD step with the penalty (``sgd+penalty``: the penalty gradient written into
  ``.grad`` and then torch.optim's step, against one fused ``sgd_step_``),

for: ``loop`` (Avalanche-style Python loop over parameters), ``foreach`` (``torch._foreach_*``, the
closed-form gradient written by hand), ``foreach+compile`` (the same under ``torch.compile``, penalty
only, with ``--compile``), ``clfast-autograd`` (``clfast.ops.quad_penalty(...).backward()``) and
``clfast`` (the fused op). Each row gives the median time, the speed-up over ``loop``, the effective
bandwidth (the op's minimum fp32 traffic per element, times elements, over time) and that bandwidth as
a fraction of a same-size ``copy_`` measured in the same run. Results are checked against the loop
before timing. Writes JSON and a markdown table (``--out``, default ``benchmarks/results``).

Usage: ``python benchmarks/bench_state_ops.py [--quick] [--compile] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

import clfast
import clfast.ops as ops
import clfast.optim
from clfast.testing.bench import copy_bandwidth, device_name, time_contenders, write_results
from clfast.testing.model_shapes import MODELS

# Minimum fp32 memory traffic per parameter element (docs/performance-model.md).
# The steps: SGD reads θ, g, b and writes θ, b (20 B); Adam reads θ, g, m, v and writes θ, m, v (28 B); SGD with
# the penalty inside also reads Ω and θ* (28 B; unfused, the penalty pass's 20 B come on top of the step's 20 B).
FLOOR_BYTES = {"penalty": 20, "mas": 12, "ewc": 12, "si": 24, "sgd": 20, "adam": 28, "sgd+penalty": 28}
LR, MOMENTUM = 1e-4, 0.9
LAM, ALPHA = 0.5, 0.9


class Workload:
    """Model tensors (θ, .grad) and their state, both per parameter (for peers) and flat (clfast)."""

    def __init__(self, shapes: list[tuple[int, ...]], device: str, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.params = [torch.randn(s, generator=g).to(device).requires_grad_() for s in shapes]
        for p in self.params:
            p.grad = torch.randn(p.shape, generator=g).to(device)
        self.numel = sum(p.numel() for p in self.params)
        self.flat = {k: torch.rand(self.numel, generator=g).to(device) for k in ("imp", "anchor", "fisher", "omega",
                                                                                  "prev")}
        sizes = [p.numel() for p in self.params]
        self.per = {k: [t.view(p.shape) for t, p in zip(torch.split(v, sizes), self.params, strict=True)]
                    for k, v in self.flat.items()}
        self.grads = [p.grad for p in self.params]
        #: Per contender, its optimizer (made at its first call).
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def optimizer(self, name: str, make: Callable[[list[torch.Tensor]], torch.optim.Optimizer]):
        if name not in self.optimizers:
            self.optimizers[name] = make(self.params)
        return self.optimizers[name]


# ---- peers -------------------------------------------------------------------------------------


def penalty_loop(w: Workload) -> None:
    # Avalanche MAS/EWC style: a loop over parameters building the penalty, then autograd.
    loss = 0.0
    for p, imp, anc in zip(w.params, w.per["imp"], w.per["anchor"], strict=True):
        loss = loss + (imp * (p - anc).pow(2)).sum()
    (LAM * loss).backward()


def _penalty_foreach(params, anchors, imps, grads):
    # What a skilled user writes: the closed-form gradient 2λΩ(θ−θ*) added with _foreach ops.
    d = torch._foreach_sub(params, anchors)
    wd = torch._foreach_mul(d, imps)
    value = LAM * torch.stack([t.sum() for t in torch._foreach_mul(wd, d)]).sum()
    torch._foreach_add_(grads, wd, alpha=2 * LAM)
    return value


def penalty_foreach(w: Workload) -> torch.Tensor:
    with torch.no_grad():
        return _penalty_foreach([p.detach() for p in w.params], w.per["anchor"], w.per["imp"], w.grads)


def penalty_clfast_autograd(w: Workload) -> None:
    ops.quad_penalty(w.params, w.flat["imp"], w.flat["anchor"], LAM).backward()


def penalty_clfast(w: Workload) -> torch.Tensor:
    return ops.quad_penalty_grad_(w.params, w.flat["imp"], w.flat["anchor"], LAM)


def mas_loop(w: Workload) -> None:
    with torch.no_grad():
        for imp, g in zip(w.per["imp"], w.grads, strict=True):
            imp += g.abs()


def mas_foreach(w: Workload) -> None:
    torch._foreach_add_(w.per["imp"], torch._foreach_abs(w.grads))


def mas_clfast(w: Workload) -> None:
    ops.mas_importance_update_(w.flat["imp"], w.params, 1.0, check_finite=False)


def ewc_loop(w: Workload) -> None:
    # EWC++ as Avalanche's RWalk writes it: new tensors per parameter, copied back here.
    with torch.no_grad():
        for f, g in zip(w.per["fisher"], w.grads, strict=True):
            f.copy_(ALPHA * g.clone() ** 2 + (1 - ALPHA) * f)


def ewc_foreach(w: Workload) -> None:
    torch._foreach_mul_(w.per["fisher"], 1 - ALPHA)
    torch._foreach_addcmul_(w.per["fisher"], w.grads, w.grads, value=ALPHA)


def ewc_clfast(w: Workload) -> None:
    ops.ema_sq_update_(w.flat["fisher"], w.params, ALPHA, check_finite=False)


def si_loop(w: Workload) -> None:
    with torch.no_grad():
        for om, prev, p, g in zip(w.per["omega"], w.per["prev"], w.params, w.grads, strict=True):
            om -= g * (p - prev)
            prev.copy_(p)


def si_foreach(w: Workload) -> None:
    with torch.no_grad():
        params = [p.detach() for p in w.params]
        d = torch._foreach_sub(params, w.per["prev"])
        torch._foreach_addcmul_(w.per["omega"], w.grads, d, value=-1.0)
        torch._foreach_copy_(w.per["prev"], params)


def si_clfast(w: Workload) -> None:
    ops.path_integral_update_(w.flat["omega"], w.flat["prev"], w.params, check_finite=False)


def _step(name: str, make: Callable[[list[torch.Tensor]], torch.optim.Optimizer]) -> Callable[[Workload], None]:
    """A contender that steps its own optimizer over the workload's parameters and gradients."""
    def run(w: Workload) -> None:
        w.optimizer(name, make).step()
    return run


def _sgd_penalty_unfused(w: Workload) -> None:
    # The unfused path at its best: clfast's fused penalty pass into .grad, then torch.optim's foreach step.
    ops.quad_penalty_grad_(w.params, w.flat["imp"], w.flat["anchor"], LAM)
    w.optimizer("unfused", lambda ps: torch.optim.SGD(ps, lr=LR, momentum=MOMENTUM, foreach=True)).step()


def _sgd_penalty_loop(w: Workload) -> None:
    penalty_loop(w)  # Avalanche's way: the penalty through autograd, then the for-loop step
    w.optimizer("loop", lambda ps: torch.optim.SGD(ps, lr=LR, momentum=MOMENTUM, foreach=False)).step()


def _sgd_penalty_fused(w: Workload) -> None:
    opt = w.optimizer("fused", lambda ps: clfast.optim.SGD(ps, lr=LR, momentum=MOMENTUM))
    opt.take_penalty(w.params, w.flat["imp"], w.flat["anchor"], LAM)
    opt.step()
    opt.pop_penalty_value()


CONTENDERS: dict[str, dict[str, Callable[[Workload], object]]] = {
    "penalty": {"loop": penalty_loop, "foreach": penalty_foreach, "clfast-autograd": penalty_clfast_autograd,
                "clfast": penalty_clfast},
    "mas": {"loop": mas_loop, "foreach": mas_foreach, "clfast": mas_clfast},
    "ewc": {"loop": ewc_loop, "foreach": ewc_foreach, "clfast": ewc_clfast},
    "si": {"loop": si_loop, "foreach": si_foreach, "clfast": si_clfast},
    "sgd": {"loop": _step("loop", lambda ps: torch.optim.SGD(ps, lr=LR, momentum=MOMENTUM, foreach=False)),
            "foreach": _step("foreach", lambda ps: torch.optim.SGD(ps, lr=LR, momentum=MOMENTUM, foreach=True)),
            "clfast": _step("clfast", lambda ps: clfast.optim.SGD(ps, lr=LR, momentum=MOMENTUM))},
    "adam": {"loop": _step("loop", lambda ps: torch.optim.Adam(ps, lr=LR, foreach=False)),
             "foreach": _step("foreach", lambda ps: torch.optim.Adam(ps, lr=LR, foreach=True)),
             "clfast": _step("clfast", lambda ps: clfast.optim.Adam(ps, lr=LR))},
    "sgd+penalty": {"loop": _sgd_penalty_loop, "foreach": _sgd_penalty_unfused, "clfast": _sgd_penalty_fused},
}


# ---- correctness check before timing ------------------------------------------------------------


def check_against_loop(shapes, device: str) -> None:
    """Every contender must give the loop's state (and .grad) on the same inputs."""
    for op, contenders in CONTENDERS.items():
        outputs = {}
        for name, fn in contenders.items():
            w = Workload(shapes, device, seed=7)
            fn(w)
            key = {"penalty": "grads", "mas": "imp", "ewc": "fisher", "si": "omega"}.get(op, "params")
            if key in ("grads", "params"):
                outputs[name] = torch.cat([t.detach().reshape(-1) for t in getattr(w, key)])
            else:
                outputs[name] = w.flat[key].clone()
        for name, out in outputs.items():
            torch.testing.assert_close(out, outputs["loop"], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, op=op, name=name: f"{op}/{name} differs from loop: {m}")


# ---- timing ------------------------------------------------------------------------------------


def run_case(label: str, shapes, device: str, reps: int, ops_to_run, compile_foreach: bool) -> list[dict]:
    w = Workload(shapes, device)
    copy_bw = copy_bandwidth(w.numel, device, reps)
    rows = []
    for op in ops_to_run:
        contenders = dict(CONTENDERS[op])
        if op == "penalty" and compile_foreach:
            compiled = torch.compile(_penalty_foreach, fullgraph=True)
            contenders["foreach+compile"] = lambda w, c=compiled: c(
                [p.detach() for p in w.params], w.per["anchor"], w.per["imp"], w.grads)
        times = time_contenders(w, contenders, device, reps)
        for name, t in times.items():
            bw = FLOOR_BYTES[op] * w.numel / t
            rows.append({"case": label, "op": op, "contender": name, "tensors": len(shapes), "numel": w.numel,
                         "median_ms": 1e3 * t, "speedup_vs_loop": times["loop"] / t, "effective_GBps": bw / 1e9,
                         "fraction_of_copy_bw": bw / copy_bw, "copy_GBps": copy_bw / 1e9})
    return rows


def sweep_cases(quick: bool):
    counts = [1, 10, 100, 1000]
    sizes = [10**3, 10**5, 10**6, 10**7] + ([] if quick else [10**8])
    cases = []
    for n in counts:
        total = 10**6
        cases.append((f"count={n},numel=1e6", [(total // n,)] * n))
    for s in sizes:
        n = 100
        cases.append((f"count=100,numel=1e{round(math.log10(s))}", [(max(1, s // n),)] * n))
    return cases


def to_markdown(result: dict) -> str:
    lines = [f"# clfast state ops: {result['device_name']}", "",
             f"torch {result['torch']}, clfast {result['clfast']}, {result['date']}; median of {result['reps']} "
             "interleaved repetitions. Effective bandwidth = minimum fp32 traffic of the op "
             f"({', '.join(f'{k} {v} B' for k, v in FLOOR_BYTES.items())} per element) over time.", "",
             "| case | tensors | elements | op | contender | median ms | × vs loop | eff. GB/s | of copy BW |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['case']} | {r['tensors']} | {r['numel']:,} | {r['op']} | {r['contender']} | "
                     f"{r['median_ms']:.3f} | {r['speedup_vs_loop']:.2f} | {r['effective_GBps']:.1f} | "
                     f"{100 * r['fraction_of_copy_bw']:.0f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, no 1e8 sweep point")
    ap.add_argument("--compile", action="store_true", help="also time the _foreach penalty under torch.compile")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    if args.device == "cuda" and "cuda" not in clfast.info()["devices"]:
        ap.error("this clfast build has no CUDA kernels")
    reps = args.reps or (5 if args.quick else 11)
    torch.manual_seed(0)

    check_against_loop([(3, 4), (5,), (0,), (70001,)], args.device)
    rows = []
    for name in args.models.split(","):
        shapes = MODELS[name]()
        print(f"[bench] {name}: {len(shapes)} tensors", flush=True)
        rows += run_case(name, shapes, args.device, reps, list(CONTENDERS), args.compile)
    if not args.no_sweep:
        for label, shapes in sweep_cases(args.quick):
            print(f"[bench] sweep {label}", flush=True)
            rows += run_case(label, shapes, args.device, reps, ["penalty", "mas"], compile_foreach=False)

    result = {"device": args.device, "device_name": device_name(args.device), "torch": torch.__version__,
              "clfast": clfast.__version__, "date": time.strftime("%Y-%m-%d"), "reps": reps, "rows": rows}
    write_results(Path(args.out), "state_ops", args.device, result, to_markdown(result))
    return result


if __name__ == "__main__":
    main()
