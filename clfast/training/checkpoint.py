"""Checkpoints of a training run: a strategy's complete state, written atomically.

``strategy_state_dict(strategy)`` gathers what a resumed run needs to continue exactly where the
interrupted one stopped (at an experience boundary): the model, the optimizer, every plugin that has a
``state_dict()``, the clock, the evaluator's metric history and the random number generators of torch
(CPU and CUDA), numpy and Python. A strategy with its own complete ``state_dict()`` (AR1) is saved
through it. Everything in it is a tensor or a plain Python container of numbers
and strings, so ``load_checkpoint`` reads it with ``torch.load(weights_only=True)``: a checkpoint file
cannot run code.

``save_checkpoint`` never leaves a half-written file where a checkpoint was: it writes a temporary file
in the same directory, flushes and fsyncs it, renames it over the target (atomic on POSIX) and fsyncs
the directory. A process killed at any moment leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .precision import precision_of

FORMAT = "clfast-checkpoint"
VERSION = 1


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``obj`` (``torch.save``) to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(dict(obj), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only, onto the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file
        raise ValueError(f"{path} is not a readable clfast checkpoint: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a clfast checkpoint (it holds a {type(obj).__name__})")
    return obj


# ---------------------------------------------------------------------------------------------------
# Random number generators
# ---------------------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """The states of torch's CPU (and CUDA) generators, numpy's global one and Python's ``random``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": _python_state(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state(st: tuple) -> list[Any]:
    version, internal, gauss = st
    return [int(version), [int(v) for v in internal], gauss]


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the generators back to a :func:`capture_rng` state."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------------


def _stateful_plugins(strategy: Any) -> list[Any]:
    """The strategy's plugins that carry state, except the evaluator and the clock (saved on their own)."""
    skip = {id(getattr(strategy, "evaluator", None)), id(getattr(strategy, "clock", None))}
    return [p for p in strategy.plugins if id(p) not in skip and callable(getattr(p, "state_dict", None))]


def _whole_state(strategy: Any) -> Any:
    """A strategy's own complete ``state_dict`` (AR1 has one: model, optimizer, memory, CWR*, SI, clock)."""
    fn = getattr(strategy, "state_dict", None)
    return fn if callable(fn) and callable(getattr(strategy, "load_state_dict", None)) else None


def strategy_state_dict(strategy: Any, in_experience: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to continue training ``strategy`` from the current experience boundary, or, with
    ``in_experience`` (where in the experience: :mod:`clfast.training.in_experience`), from inside it.

    A strategy with its own ``state_dict()``/``load_state_dict()`` (AR1) is saved through them; for the
    others the model, optimizer, clock and stateful plugins are saved here. The evaluator's history and the
    global random generators are saved in both cases.
    """
    evaluator = getattr(strategy, "evaluator", None)
    common = {
        "format": FORMAT,
        "version": VERSION,
        # the template builds (and resets) the optimizer state once, on the first training experience
        "optimizer_initialized": bool(getattr(strategy, "_optimizer_initialized", False)),
        "evaluator": evaluator.state_dict() if callable(getattr(evaluator, "state_dict", None)) else None,
        "rng": capture_rng(),
        "scaler": precision_of(strategy).state_dict(),  # the GradScaler's scale and growth tracker ("16-mixed")
        "in_experience": None if in_experience is None else dict(in_experience),
    }
    whole = _whole_state(strategy)
    if whole is not None:
        return {**common, "whole": whole()}
    opt = getattr(strategy, "optimizer", None)
    return {
        **common,
        "model": strategy.model.state_dict(),
        "optimizer": None if opt is None else opt.state_dict(),
        "clock": strategy.clock.as_dict(),
        "plugins": [[type(p).__name__, p.state_dict()] for p in _stateful_plugins(strategy)],
    }


def load_strategy_state_dict(strategy: Any, state: Mapping[str, Any]) -> None:
    """Restore :func:`strategy_state_dict`'s output into a strategy built the same way.

    Checks that the checkpoint matches the strategy (format, model keys and shapes, plugin kinds) before
    changing anything, so a checkpoint of another model or configuration raises ``ValueError`` and leaves
    the strategy as it was. A checkpoint taken inside an experience is also kept pending: the next
    ``train()`` of that experience applies it again after its ``before_training_exp`` hooks and continues
    from the saved iteration.
    """
    mid = state.get("in_experience")
    if mid is not None and getattr(strategy, "in_experience_checkpoints", None) is None:
        raise ValueError(f"the checkpoint was taken inside an experience; {type(strategy).__name__} cannot resume "
                         "there (it has no in-experience checkpoints)")
    apply_strategy_state(strategy, state)
    if mid is not None:
        strategy.in_experience_checkpoints.pending = dict(state)


def apply_strategy_state(strategy: Any, state: Mapping[str, Any]) -> None:
    """:func:`load_strategy_state_dict` without keeping an in-experience checkpoint pending."""
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise ValueError(f"not a clfast checkpoint of version {VERSION} (format {state.get('format')!r}, "
                         f"version {state.get('version')!r})")
    precision_of(strategy).check_state(state.get("scaler") or {})
    whole = _whole_state(strategy)
    if (whole is not None) != ("whole" in state):
        raise ValueError(f"checkpoint was written by another kind of strategy than {type(strategy).__name__}")
    if whole is not None:
        strategy.load_state_dict(state["whole"])  # checks everything before changing anything
        _load_common(strategy, state)
        return
    own = strategy.model.state_dict()
    saved = state["model"]
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or unexpected:
        raise ValueError(f"checkpoint is of another model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [k for k in own if tuple(own[k].shape) != tuple(saved[k].shape)]
    if wrong:
        k = wrong[0]
        raise ValueError(f"checkpoint is of another model: {k} has shape {tuple(saved[k].shape)} there, "
                         f"{tuple(own[k].shape)} here")
    plugins = _stateful_plugins(strategy)
    kinds = [type(p).__name__ for p in plugins]
    saved_kinds = [k for k, _ in state["plugins"]]
    if kinds != saved_kinds:
        raise ValueError(f"checkpoint has plugins {saved_kinds}, this strategy has {kinds}")
    opt = getattr(strategy, "optimizer", None)
    if (opt is None) != (state["optimizer"] is None):
        raise ValueError("checkpoint and strategy disagree on having an optimizer")

    backup = strategy_state_dict(strategy)
    try:
        _load_unchecked(strategy, state, plugins)
    except Exception:
        _load_unchecked(strategy, backup, plugins)  # leave the strategy as it was
        raise


def _load_unchecked(strategy: Any, state: Mapping[str, Any], plugins: list[Any]) -> None:
    opt = getattr(strategy, "optimizer", None)
    strategy.model.load_state_dict(state["model"])
    if opt is not None:
        opt.load_state_dict(state["optimizer"])
    for p, (_, sd) in zip(plugins, state["plugins"], strict=True):
        p.load_state_dict(sd)
    for k, v in state["clock"].items():
        setattr(strategy.clock, k, int(v))
    _load_common(strategy, state)


def _load_common(strategy: Any, state: Mapping[str, Any]) -> None:
    precision_of(strategy).load_state_dict(state.get("scaler") or {})
    if hasattr(strategy, "_optimizer_initialized"):
        strategy._optimizer_initialized = bool(state["optimizer_initialized"])
    evaluator = getattr(strategy, "evaluator", None)
    if state["evaluator"] is not None and callable(getattr(evaluator, "load_state_dict", None)):
        evaluator.load_state_dict(state["evaluator"])
    restore_rng(state["rng"])
