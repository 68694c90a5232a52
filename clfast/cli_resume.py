"""``clfast train --checkpoint-dir DIR [--resume]``: a checkpoint after every experience, and resuming from it.

The checkpoint (``DIR/checkpoint.pt``, written atomically by :mod:`clfast.training.checkpoint`) holds the
strategy's complete state, the position in the stream, the timings so far and the run's configuration.
``--resume`` refuses a checkpoint written with another configuration (other than output and display
options), so a resumed run continues exactly the run that was interrupted.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
from pathlib import Path
from typing import Any

import torch

from .cli_train import _json_safe
from .training import checkpoint as ck

CHECKPOINT_NAME = "checkpoint.pt"
# Options that may differ between the interrupted run and its resumption.
_FREE = {"out", "plot", "quiet", "resume", "checkpoint_dir", "threads", "device", "command"}
# Test hooks: end the process with SIGKILL right after checkpoint number N is written, or halfway through
# writing it (a real crash, for the resume tests; never set them otherwise).
_KILL_AFTER = "CLFAST_TEST_KILL_AFTER_CHECKPOINT"
_KILL_DURING = "CLFAST_TEST_KILL_DURING_CHECKPOINT"


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The options that define the run (a resumed run must use the same)."""
    return {k: _json_safe(v) for k, v in sorted(vars(args).items()) if k not in _FREE}


def load_for_resume(args: argparse.Namespace, strategy: Any) -> tuple[int, dict[str, Any]]:
    """Restore ``strategy`` from ``--checkpoint-dir``; returns (experiences already done, saved CLI state).

    With no checkpoint yet the run starts from the beginning. Raises ``ValueError`` for a checkpoint of
    another configuration or model (the strategy is left untouched).
    """
    path = Path(args.checkpoint_dir) / CHECKPOINT_NAME
    for stale in Path(args.checkpoint_dir).glob(f".{CHECKPOINT_NAME}.tmp-*"):
        stale.unlink(missing_ok=True)  # left by a process killed while writing
    if not path.is_file():
        return 0, {}
    saved = ck.load_checkpoint(path)
    cli = saved.get("cli")
    if not isinstance(cli, dict):
        raise ValueError(f"{path} was not written by `clfast train`")
    mine = run_config(args)
    diff = {k: (cli["config"].get(k), v) for k, v in mine.items() if cli["config"].get(k) != v}
    if diff:
        raise ValueError(f"{path} is a checkpoint of another run; options that differ (saved, now): {diff}")
    ck.load_strategy_state_dict(strategy, saved["state"])
    return int(cli["position"]), cli


def save_after_experience(args: argparse.Namespace, strategy: Any, position: int, extra: dict[str, Any]) -> None:
    """Write the checkpoint for ``position`` experiences done (atomically)."""
    obj = {"cli": {"config": run_config(args), "position": position, **extra},
           "state": ck.strategy_state_dict(strategy)}
    path = Path(args.checkpoint_dir) / CHECKPOINT_NAME
    if os.environ.get(_KILL_DURING) == str(position):
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getvalue()
        with open(path.with_name(f".{path.name}.tmp-{os.getpid()}"), "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    ck.save_checkpoint(obj, path)
    if os.environ.get(_KILL_AFTER) == str(position):
        os.kill(os.getpid(), signal.SIGKILL)
