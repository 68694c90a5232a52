"""``python tests/_kill_entry.py after|during|inside N ARGS...``: ``clfast ARGS`` ended by SIGKILL at a checkpoint.

A real crash for ``test_cli_resume.py``, kept out of the production code: the checkpoint writer of
:mod:`clfast.training.checkpoint` (which :mod:`clfast.cli.resume` calls through the module) is wrapped so
that the process kills itself

- ``after``: right after checkpoint number N (``position == N``) is written;
- ``during``: halfway through writing checkpoint N, leaving its half-written temporary file behind (the
  real writer runs with a ``torch.save`` that stops in the middle of the bytes);
- ``inside``: right after the N-th checkpoint taken inside an experience (``--checkpoint-every``) is written.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

import torch

from clfast.cli import main
from clfast.training import checkpoint

_real_save_checkpoint = checkpoint.save_checkpoint
_real_torch_save = torch.save


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _torn_torch_save(obj: Any, f: Any) -> None:
    buf = io.BytesIO()
    _real_torch_save(obj, buf)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    _die()


def _install(mode: str, n: int) -> None:
    inside = [0]

    def save_checkpoint(obj: Mapping[str, Any], path: Any) -> Any:
        position = obj["cli"]["position"]
        if mode == "inside" and obj["state"].get("in_experience") is not None:
            inside[0] += 1
            written = _real_save_checkpoint(obj, path)
            if inside[0] == n:
                _die()
            return written
        if mode == "during" and position == n:
            torch.save = _torn_torch_save  # the real writer opens the temporary file, then dies inside the save
        written = _real_save_checkpoint(obj, path)
        if mode == "after" and position == n:
            _die()
        return written

    checkpoint.save_checkpoint = save_checkpoint


if __name__ == "__main__":
    mode, n, *argv = sys.argv[1:]
    if mode not in ("after", "during", "inside"):
        raise SystemExit(f"usage: {sys.argv[0]} after|during|inside N ARGS...")
    _install(mode, int(n))
    sys.exit(main(argv))
