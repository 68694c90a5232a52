"""``clfast train --parallel ddp|fsdp`` under ``torchrun``: the process group from the environment, the device of
this rank, the model wrapped (DDP) or sharded (FSDP2), and which rank speaks (``docs/distributed.md``, "From the
command line").

``torchrun --nproc-per-node N -m clfast train ... --parallel ddp`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address in their environment. Each process joins the group (gloo on the CPU,
NCCL on CUDA, one GPU per process: ``cuda:LOCAL_RANK``), builds the same run from the same seed, and the
strategies shard the data themselves (``train_mb_size`` per rank). Rank 0 alone prints, writes ``--out`` and
checkpoints; every rank reads a checkpoint to resume.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from ..sharding import shard_model
from .errors import CLIError

__all__ = ["PARALLEL", "process_group", "rank_device", "wrap_model"]

#: ``--parallel`` choices.
PARALLEL = ("none", "ddp", "fsdp")
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def process_group(args: argparse.Namespace) -> Iterator[None]:
    """With ``--parallel ddp|fsdp``: joins the process group that ``torchrun`` describes in the environment for the
    command's duration (a :class:`CLIError` outside ``torchrun``), and sets ``args.device`` to this rank's."""
    if args.parallel == "none":
        yield
        return
    missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise CLIError(f"--parallel {args.parallel} runs under torchrun (torchrun --nproc-per-node N -m clfast "
                       f"train ...); the environment lacks {', '.join(missing)}")
    device = rank_device(torch.device(args.device), int(os.environ["LOCAL_RANK"]))
    args.device = str(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def rank_device(requested: torch.device, local_rank: int) -> torch.device:
    """This rank's device: the CPU, or the GPU numbered ``LOCAL_RANK`` when ``--device cuda`` is asked for."""
    if requested.type != "cuda":
        return requested
    if local_rank >= torch.cuda.device_count():
        raise CLIError(f"--parallel: local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible)")
    return torch.device("cuda", local_rank)


def wrap_model(model: nn.Module, device: torch.device, mode: str = "ddp") -> nn.Module:
    """``mode="ddp"``: the model in ``DistributedDataParallel`` on ``device`` (rank 0's parameters broadcast at
    construction). ``"fsdp"``: the model on ``device`` sharded in place by :func:`clfast.sharding.shard_model`
    (every rank built it from the same seed, so the shards come from identical parameters)."""
    model = model.to(device)
    if mode == "fsdp":
        return shard_model(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
