"""Benchmark of Batch Renormalization: clfast against the layers a user would otherwise run.

Contenders, all timed in one process on the same input (median of interleaved repetitions):

- ``clfast``: :class:`clfast.nn.BatchRenorm2d` in training mode (fused forward, backward, running update);
- ``avalanche``: Avalanche's ``BatchRenorm2D`` forward (avalanche-semantics.md §5.2) written out below in
  eager ops, differentiated by autograd;
- ``batchnorm``: ``nn.BatchNorm2d`` (native CPU kernel, cuDNN on CUDA), the speed to match;
- ``syncbn-prims`` (CUDA only): the best two-pass composition available from Python, PyTorch's
  SyncBatchNorm primitives (``batch_norm_stats``, ``batch_norm_elemt``, ``batch_norm_backward_reduce``,
  ``batch_norm_backward_elemt``) with BRN's r and d folded into the weight and bias.

Phases: forward+backward (training step) and forward only (training mode, no autograd graph). Shapes:
MobileNetV1 at 128 px (AR1's network) and ResNet-50 at 224 px, batch 32 (and 128 on CUDA), NCHW and
channels-last. Each row gives the median, the ratio to ``batchnorm`` and to ``avalanche``, and the
fraction of the two-pass floor: the floor's bytes (3 s per element forward, 8 s forward+backward, s the
element size; performance-model.md) over time, divided by the bandwidth of a same-size ``copy_``.

Usage: ``python benchmarks/bench_batch_renorm.py [--quick] [--device cpu|cuda] [--dtype float32|bfloat16]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import clfast
from clfast.nn import BatchRenorm2d
from clfast.testing.avalanche import AvalancheBatchRenorm2D
from clfast.testing.bench import device_name, sync, time_contenders, write_results

# Two-pass floor in bytes per element, in units of the element size (performance-model.md).
FLOOR = {"fwd": 3, "fwd+bwd": 8}

# (channels, height = width) of the distinct BN inputs of each network.
MOBILENET_128 = [(32, 64), (64, 64), (128, 32), (256, 16), (512, 8), (1024, 4)]
RESNET50_224 = [(64, 112), (64, 56), (256, 56), (128, 28), (512, 28), (256, 14), (1024, 14), (512, 7), (2048, 7)]
ISSUE_SHAPES = [(64, 32), (256, 16), (512, 8)]  # the shapes of the issue's CPU target, batch 32


class _SyncBNPrimsBRN(torch.autograd.Function):
    """BRN through PyTorch's SyncBatchNorm primitives: y = bn_elemt(x, γr, γd + β), r and d constants."""

    @staticmethod
    def forward(ctx, x, gamma, beta, run_mean, run_std, r_max, d_max, eps):
        mean, invstd = torch.batch_norm_stats(x, eps)
        r = (1.0 / (invstd * run_std)).clamp(1.0 / r_max, r_max)
        d = ((mean - run_mean) / run_std).clamp(-d_max, d_max)
        w = gamma * r
        y = torch.batch_norm_elemt(x, w, gamma * d + beta, mean, invstd, eps)
        ctx.save_for_backward(x, mean, invstd, w, r, d)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, mean, invstd, w, r, d = ctx.saved_tensors
        gy = gy.contiguous(memory_format=torch.channels_last if x.is_contiguous(
            memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format)
        sum_dy, sum_dy_xmu, grad_w_u, grad_b = torch.batch_norm_backward_reduce(gy, x, mean, invstd, w, True, True,
                                                                               True)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=torch.int32, device=x.device)
        gx = torch.batch_norm_backward_elemt(gy, x, mean, invstd, w, sum_dy, sum_dy_xmu, count)
        # grad_w_u = Σ g u with u = (x − μ) invstd; dγ = r Σ g u + d Σ g (§5.4)
        return gx, r * grad_w_u + d * grad_b, grad_b, None, None, None, None, None


class SyncBNPrimsBRN(nn.Module):
    def __init__(self, C: int, eps: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(C))
        self.beta = nn.Parameter(torch.zeros(C))
        self.register_buffer("run_mean", torch.zeros(C))
        self.register_buffer("run_std", torch.ones(C))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SyncBNPrimsBRN.apply(x, self.gamma, self.beta, self.run_mean, self.run_std, 3.0, 5.0, self.eps)


def make_contenders(C: int, device: str) -> dict[str, nn.Module]:
    mods: dict[str, nn.Module] = {
        "clfast": BatchRenorm2d(C, r_max=3.0, d_max=5.0),
        "avalanche": AvalancheBatchRenorm2D(C),
        "batchnorm": nn.BatchNorm2d(C),
    }
    if device == "cuda":
        mods["syncbn-prims"] = SyncBNPrimsBRN(C)
    return {k: m.to(device).train() for k, m in mods.items()}


def check_agreement(device: str) -> None:
    """clfast and the eager Avalanche formula agree before anything is timed."""
    torch.manual_seed(0)
    for cl in (False, True):
        x = torch.randn(8, 16, 6, 5, device=device) * 2 + 0.5
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        g = torch.randn_like(x)
        a = BatchRenorm2d(16).to(device)
        b = AvalancheBatchRenorm2D(16).to(device)
        outs = []
        for m in (a, b):
            xi = x.clone().requires_grad_()
            y = m(xi)
            y.backward(g)
            outs.append((y.detach(), xi.grad, m.gamma.grad.flatten()))
        for u, v in zip(*outs, strict=True):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4)


def step_fn(m: nn.Module, x: torch.Tensor, g: torch.Tensor, phase: str) -> Callable:
    if phase == "fwd":
        def run(_):
            with torch.no_grad():
                m(x)
    else:
        xg = x.detach().requires_grad_()

        def run(_):
            m(xg).backward(g)
            xg.grad = None
    return run


def copy_seconds(x: torch.Tensor, device: str, reps: int) -> float:
    dst = torch.empty_like(x)
    return time_contenders(None, {"copy": lambda _: dst.copy_(x)}, device, reps)["copy"]


def run_case(net: str, shape: tuple[int, int, int, int], fmt: str, dtype: torch.dtype, device: str,
             reps: int) -> list[dict]:
    C = shape[1]
    x = torch.randn(shape, device=device, dtype=dtype) * 1.5 + 0.3
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    mods = make_contenders(C, device)
    t_copy = copy_seconds(x, device, reps)
    copy_bw = 2 * x.numel() * x.element_size() / t_copy
    rows = []
    for phase in ("fwd+bwd", "fwd"):
        times = time_contenders(None, {k: step_fn(m, x, g, phase) for k, m in mods.items()}, device, reps)
        for name, t in times.items():
            floor_bw = FLOOR[phase] * x.numel() * x.element_size() / t
            rows.append({"net": net, "shape": list(shape), "format": fmt, "dtype": str(dtype).replace("torch.", ""),
                         "phase": phase, "contender": name, "median_ms": 1e3 * t,
                         "vs_batchnorm": t / times["batchnorm"], "speedup_vs_avalanche": times["avalanche"] / t,
                         "fraction_of_floor": floor_bw / copy_bw, "copy_GBps": copy_bw / 1e9})
    return rows


def cases(device: str, quick: bool) -> list[tuple[str, tuple[int, int, int, int]]]:
    out = [("issue", (32, c, s, s)) for c, s in ISSUE_SHAPES]
    batches = [32] if device == "cpu" else [32, 128]
    for n in batches:
        mob = MOBILENET_128[1::2] if quick else MOBILENET_128
        res = RESNET50_224[::3] if quick else RESNET50_224
        out += [("mobilenetv1-128", (n, c, s, s)) for c, s in mob]
        out += [("resnet50-224", (n, c, s, s)) for c, s in res]
    return out


def to_markdown(result: dict) -> str:
    lines = [f"# Batch Renormalization: {result['device_name']}", "",
             f"torch {result['torch']}, clfast {result['clfast']}, {result['date']}, {result['dtype']}; median of "
             f"{result['reps']} interleaved repetitions. `× BN` = time / nn.BatchNorm2d's time (lower is better); "
             "`× faster than eager` = Avalanche-style eager time / time; `of floor` = two-pass floor bytes "
             "(3 s fwd, 8 s fwd+bwd) per second over a same-size copy's bandwidth.", "",
             "| net | shape | format | phase | contender | median ms | × BN | × faster than eager | of floor |",
             "|---|---|---|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['net']} | {'x'.join(map(str, r['shape']))} | {r['format']} | {r['phase']} | "
                     f"{r['contender']} | {r['median_ms']:.3f} | {r['vs_batchnorm']:.2f} | "
                     f"{r['speedup_vs_avalanche']:.2f} | {100 * r['fraction_of_floor']:.0f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--formats", default="nchw,channels_last")
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    ap.add_argument("--only-issue-shapes", action="store_true", help="only the issue's three CPU target shapes")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    if args.device == "cuda" and "cuda" not in clfast.info()["devices"]:
        ap.error("this clfast build has no CUDA kernels")
    reps = args.reps or (5 if args.quick else 15)
    dtype = getattr(torch, args.dtype)
    check_agreement(args.device)
    rows = []
    todo = cases(args.device, args.quick)
    if args.only_issue_shapes:
        todo = [c for c in todo if c[0] == "issue"]
    for net, shape in todo:
        for fmt in args.formats.split(","):
            print(f"[bench] {net} {shape} {fmt}", flush=True)
            rows += run_case(net, shape, fmt, dtype, args.device, reps)
            sync(args.device)
    result = {"device": args.device, "device_name": device_name(args.device), "torch": torch.__version__,
              "clfast": clfast.__version__, "date": time.strftime("%Y-%m-%d"), "reps": reps, "dtype": args.dtype,
              "rows": rows}
    suffix = "" if args.dtype == "float32" else f"-{args.dtype}"
    write_results(Path(args.out), "batch_renorm", args.device, result, to_markdown(result), suffix)
    return result


if __name__ == "__main__":
    main()
