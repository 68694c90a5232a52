"""Calls every clfast op on CUDA tensors, for compute-sanitizer (memcheck, racecheck, synccheck; scripts/gpu_check.sh).

Small on purpose, since the sanitizers slow each launch a hundredfold: every op's registry samples in every dtype
pair it is tested with, then the state ops on a chunk-crossing and a many-tensor model (several blocks, several
multi-tensor launches) and the Batch Renormalization kernels on an activation large enough to split over many
blocks. Checks nothing itself: the sanitizer's exit code and report are the result (the test suite compares the
values). Run it under ``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` so that each tensor is its own allocation and an
out-of-bounds access leaves it.

Usage: ``compute-sanitizer --tool memcheck --error-exitcode 9 python scripts/gpu_sanitize_ops.py``
"""

from __future__ import annotations

import sys

import torch

import clfast
from clfast.testing import opinfo
from clfast.testing.cases import SHAPE_SETS, make_brn_case


def registry_calls(device: str) -> int:
    """Every op once per sample and dtype pair; returns the number of calls."""
    calls = 0
    for info in opinfo.OPS:
        for dtypes in info.dtypes:
            for args in info.samples(device, *dtypes):
                info.op(*opinfo.clone_args(args))
                calls += 1
    return calls


def _per_param_lists_stretched(args: opinfo.Args, small: int, n: int) -> opinfo.Args:
    """A per-parameter list of plain values written for ``small`` parameters (quad_penalty_grad_'s modes),
    cycled to ``n``."""
    def one(a: object) -> object:
        if isinstance(a, list) and len(a) == small and all(isinstance(v, int) for v in a):
            return [a[i % small] for i in range(n)]
        return a
    return tuple(one(a) for a in args)


def state_op_calls_at_scale(device: str) -> int:
    """The state ops' samples on larger models: the registry builds them from ``SAMPLE_SHAPES``."""
    small = opinfo.SAMPLE_SHAPES
    opinfo.SAMPLE_SHAPES = SHAPE_SETS["large"] + SHAPE_SETS["many_small"]
    try:
        calls = 0
        for info in opinfo.OPS:
            if info.family == "state_ops":
                for args in info.samples(device, torch.float32, torch.float32):
                    args = _per_param_lists_stretched(args, len(small), len(opinfo.SAMPLE_SHAPES))
                    info.op(*opinfo.clone_args(args))
                    calls += 1
        return calls
    finally:
        opinfo.SAMPLE_SHAPES = small


def brn_calls_at_scale(device: str) -> int:
    """Batch Renormalization forward and backward, planar, channels-last and 2-d, over many blocks."""
    calls = 0
    ops = torch.ops.clfast
    for shape, channels_last in (((64, 16, 24, 24), False), ((64, 16, 24, 24), True), ((8192, 16), False)):
        x, p = make_brn_case(shape, torch.float32, torch.float32, seed=3, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        r_max, d_max = torch.tensor(3.0, device=device), torch.tensor(5.0, device=device)
        y, mean, std, r, d = ops.batch_renorm_forward(x, p["w"], p["b"], p["rm"], p["rs"], r_max, d_max, 1e-5)
        ops.batch_renorm_backward(torch.randn_like(y), x, p["w"], mean, std, r, d, True)
        ops.batch_renorm_eval(x, p["w"], p["b"], p["rm"], p["rs"])
        calls += 3
    return calls


def main() -> int:
    if not (torch.cuda.is_available() and "cuda" in clfast.info()["devices"]):
        print("gpu_sanitize_ops: needs a CUDA build of clfast and a GPU", file=sys.stderr)
        return 3
    calls = registry_calls("cuda") + state_op_calls_at_scale("cuda") + brn_calls_at_scale("cuda")
    torch.cuda.synchronize()
    print(f"gpu_sanitize_ops: {calls} op calls on {torch.cuda.get_device_name()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
