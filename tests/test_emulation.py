"""The CUDA emulator itself (docs/cuda-emulation.md): its barriers and shuffles work, and the misuses a GPU
would punish (bad launch configurations, too many kernel-parameter bytes, divergent barriers, bad shuffle masks,
unchecked launch errors) are reported as errors. Runs only against the emulated build (scripts/cuda_emulate.sh)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import clfast
from clfast._info import parse_build_info

EMULATED = parse_build_info(clfast._C.build_info()).get("cuda_emulation") == "1"
pytestmark = pytest.mark.skipif(not EMULATED, reason="needs the emulated _C (scripts/cuda_emulate.sh)")


def _selftest(case: str) -> torch.Tensor:
    return torch.ops.clfast_emu.selftest(case)


def test_the_cuda_kernels_are_the_cpu_kernels_here():
    # The emulated library registers the .cu kernels under CPU; its own CPU kernels are left out.
    assert torch._C._dispatch_has_kernel_for_dispatch_key("clfast::quad_penalty", "CPU")
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("clfast::quad_penalty", "CUDA")


def test_a_barrier_orders_shared_memory_writes_before_reads():
    out = _selftest("barrier")  # 3 blocks of 100: thread t reads what thread (t + 1) % 100 wrote
    want = torch.tensor([b * 1000 + (t + 1) % 100 for b in range(3) for t in range(100)])
    assert torch.equal(out[:300], want)


def test_shuffles_and_block_votes_exchange_values():
    out = _selftest("shuffle")  # 8 warps: a shuffle-tree sum of the lane ids, then __syncthreads_or
    assert out[:8].tolist() == [sum(range(32))] * 8
    assert out[8].item() == 1


def test_many_blocks_run():
    assert _selftest("many_blocks")[0].item() == 1


@pytest.mark.parametrize(("case", "message"), [
    ("zero_grid", "zero-sized launch"),
    ("zero_block", "zero-sized launch"),
    ("grid_x", "exceeds the limits"),
    ("grid_y", "exceeds the limits"),
    ("block_size", "exceeds the limits"),
    ("params", "over the 4096-byte limit"),
    ("divergent_barrier", "barrier divergence"),
    ("barrier_vs_shuffle", "warp divergence"),
    ("bad_mask", "leaves out lane 0"),
    ("exited_lane", "which has exited"),
    ("unchecked", "launched after an unchecked error"),
])
def test_misuse_is_reported(case, message):
    with pytest.raises(RuntimeError, match=message):
        _selftest(case)
    # The error was consumed by the launch check: the next launch is clean.
    assert _selftest("many_blocks")[0].item() == 1


def test_an_unknown_case_is_named():
    with pytest.raises(RuntimeError, match="unknown case 'nope'"):
        _selftest("nope")


def test_the_sm_count_setting_is_validated():
    env = dict(os.environ, CLFAST_EMU_SM_COUNT="zero")
    code = "import torch, clfast; x = torch.randn(4, 3, 8, 8); o = torch.ones(3); l = torch.tensor(2.0); " \
           "clfast.ops.batch_renorm_forward(x, o, o, o * 0, o, l, l, 1e-5)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "CLFAST_EMU_SM_COUNT must be an integer" in proc.stderr
