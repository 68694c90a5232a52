"""``clfast train --checkpoint-dir DIR [--checkpoint-every N] [--resume]``: a checkpoint after every experience (and
every N iterations inside one), and resuming from it.

The checkpoint (``DIR/checkpoint.pt``, written atomically by :func:`clfast.training.checkpoint.save_checkpoint`)
holds the strategy's complete state, the position in the stream, the timings so far and the run's
configuration. ``--resume`` refuses a checkpoint written with another configuration (other than output and
display options), so a resumed run continues exactly the run that was interrupted. Under ``--parallel fsdp`` every
rank writes its shards (:mod:`clfast.training.sharded_checkpoint`: ``DIR/sharded.pt`` names the complete one), and
a resumed run needs as many ranks.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import distributed as dist
from ..sharding import is_sharded_model
from ..training import checkpoint as ck
from ..training import sharded_checkpoint as sharded
from .errors import CLIError
from .report import json_safe

CHECKPOINT_NAME = "checkpoint.pt"
# Options that may differ between the interrupted run and its resumption.
_FREE = {"out", "plot", "quiet", "resume", "checkpoint_dir", "checkpoint_every", "threads", "device", "command"}


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The options that define the run (a resumed run must use the same)."""
    return {k: json_safe(v) for k, v in sorted(vars(args).items()) if k not in _FREE}


def load_for_resume(args: argparse.Namespace, strategy: Any) -> tuple[int, dict[str, Any]]:
    """Restore ``strategy`` from ``--checkpoint-dir``; returns (experiences already done, saved CLI state).

    With no checkpoint yet the run starts from the beginning. Raises :class:`CLIError` for an unreadable
    checkpoint or one of another configuration or model (the strategy is left untouched).
    """
    try:
        return _load(args, strategy)
    except (ValueError, FileNotFoundError) as err:
        raise CLIError(f"--resume: {err}") from err


def _load(args: argparse.Namespace, strategy: Any) -> tuple[int, dict[str, Any]]:
    directory = Path(args.checkpoint_dir)
    if is_sharded_model(strategy.model):
        cli = sharded.load_sharded_checkpoint(strategy, directory)
        if cli is None:
            return 0, {}
        _check_config(args, cli, directory)
        return int(cli["position"]), cli
    path = directory / CHECKPOINT_NAME
    for stale in directory.glob(f".{CHECKPOINT_NAME}.tmp-*"):
        stale.unlink(missing_ok=True)  # left by a process killed while writing
    if not path.is_file():
        return 0, {}
    saved = ck.load_checkpoint(path)
    cli = saved.get("cli")
    if not isinstance(cli, dict):
        raise ValueError(f"{path} was not written by `clfast train`")
    _check_config(args, cli, path)
    ck.load_strategy_state_dict(strategy, saved["state"])
    return int(cli["position"]), cli


def _check_config(args: argparse.Namespace, cli: dict[str, Any], where: Path) -> None:
    mine = run_config(args)
    diff = {k: (cli["config"].get(k), v) for k, v in mine.items() if cli["config"].get(k) != v}
    if diff:
        raise ValueError(f"{where} is a checkpoint of another run; options that differ (saved, now): {diff}")


def save_after_experience(args: argparse.Namespace, strategy: Any, position: int, extra: dict[str, Any],
                          in_experience: dict[str, Any] | None = None) -> Path | None:
    """Write the checkpoint for ``position`` experiences done (atomically); returns its path. With
    ``in_experience`` (``--checkpoint-every``), a checkpoint inside experience ``position``, where training
    resumes (:mod:`clfast.training.in_experience`). Every rank calls this: rank 0 writes, or under FSDP2 each rank
    its shards (None on the other ranks)."""
    cli = {"config": run_config(args), "position": position, **extra}
    if is_sharded_model(strategy.model):
        return sharded.save_sharded_checkpoint(strategy, args.checkpoint_dir, extra=cli, in_experience=in_experience)
    if not dist.is_main_process():
        return None
    obj = {"cli": cli, "state": ck.strategy_state_dict(strategy, in_experience=in_experience)}
    # Through the module attribute, so that the resume tests can interpose on the write (tests/_kill_entry.py).
    return ck.save_checkpoint(obj, Path(args.checkpoint_dir) / CHECKPOINT_NAME)
