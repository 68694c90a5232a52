"""Checkpoints of a strategy whose model is sharded by FSDP2 (``docs/distributed.md``, "FSDP2").

The model and the optimizer go through ``torch.distributed.checkpoint`` (DCP): every rank writes its own shards
of them, and a run with the same number of ranks reads them back into its own sharded model and optimizer. The
rest of :func:`clfast.training.checkpoint.strategy_state_dict` (the plugins' state, which under FSDP2 is this
rank's shards, the clock, the evaluator's history, this rank's generators, the scaler) goes into one file per
rank, written atomically. A checkpoint is a directory ``DIR/<name>/`` with ``sharded/`` (DCP) and
``rank<r>.pt``; ``DIR/sharded.pt`` names the complete one and is replaced (atomically, by rank 0, after every rank
has written) only when a new one is complete, so a run killed at any moment leaves the previous checkpoint.
Then the previous directory is removed.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import distributed as dist
from . import checkpoint as ck

__all__ = ["MARKER", "load_sharded_checkpoint", "save_sharded_checkpoint"]

#: The file in the checkpoint directory that names the complete checkpoint.
MARKER = "sharded.pt"


def _model_and_optimizer_state(strategy: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    if getattr(strategy, "optimizer", None) is None:
        raise ValueError("a sharded checkpoint needs the strategy's optimizer")
    return get_state_dict(strategy.model, strategy.optimizer)


def save_sharded_checkpoint(strategy: Any, directory: str | os.PathLike, extra: Mapping[str, Any] | None = None,
                            in_experience: Mapping[str, Any] | None = None) -> Path:
    """Write ``strategy``'s checkpoint under ``directory`` (every rank calls this; a collective); returns the new
    checkpoint's directory. ``extra`` (plain data) is kept with it; ``in_experience`` as in
    :func:`clfast.training.checkpoint.strategy_state_dict`."""
    import torch.distributed.checkpoint as dcp

    directory = Path(directory)
    name = dist.broadcast_object(f"ckpt-{uuid.uuid4().hex}")  # rank 0's, on every rank
    target = directory / name
    state = ck.strategy_state_dict(strategy, in_experience=in_experience)
    if "whole" in state:
        raise ValueError(f"{type(strategy).__name__} has its own state dict; it does not run under FSDP2")
    del state["model"], state["optimizer"]  # in DCP's shards instead
    model_sd, optim_sd = _model_and_optimizer_state(strategy)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(target / "sharded"))
    ck.save_checkpoint({"state": state, "extra": dict(extra or {})}, target / f"rank{dist.rank()}.pt")
    dist.barrier()  # every rank's part is on disk
    if dist.is_main_process():
        previous = _complete_name(directory)
        ck.save_checkpoint({"name": name, "world_size": dist.world_size()}, directory / MARKER)
        if previous is not None and previous != name:
            shutil.rmtree(directory / previous, ignore_errors=True)
    dist.barrier()
    return target


def _complete_name(directory: Path) -> str | None:
    marker = directory / MARKER
    return str(ck.load_checkpoint(marker)["name"]) if marker.is_file() else None


def load_sharded_checkpoint(strategy: Any, directory: str | os.PathLike) -> dict[str, Any] | None:
    """Restore the complete checkpoint under ``directory`` into ``strategy`` (built as the saved one, on as many
    ranks; every rank calls this); returns its ``extra``, or None when there is no checkpoint yet. A checkpoint
    of another world size or model is a ``ValueError``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    directory = Path(directory)
    marker_path = directory / MARKER
    if not marker_path.is_file():
        return None
    marker = ck.load_checkpoint(marker_path)
    if int(marker["world_size"]) != dist.world_size():
        raise ValueError(f"{directory} was written by {marker['world_size']} ranks, this run has "
                         f"{dist.world_size()}: the plugins' state is per rank")
    target = directory / str(marker["name"])
    saved = ck.load_checkpoint(target / f"rank{dist.rank()}.pt")
    model_sd, optim_sd = _model_and_optimizer_state(strategy)  # the targets DCP reads into, shard by shard
    dcp.load({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(target / "sharded"))
    set_state_dict(strategy.model, strategy.optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    state = dict(saved["state"])
    # what the rest of the restore checks against and loads: the model and optimizer as DCP just set them
    state["model"], state["optimizer"] = strategy.model.state_dict(), strategy.optimizer.state_dict()
    ck.load_strategy_state_dict(strategy, state)
    return dict(saved["extra"])
