"""Checkpoints inside an experience (``checkpoint_every``): where in an experience a checkpoint was taken, and how
a strategy resumes there exactly (``docs/large-models.md``, "Checkpoints inside an experience").

A checkpoint is taken after an iteration that ends an optimizer step (never with partial accumulated gradients),
once ``checkpoint_every`` iterations have passed since the experience started or since the last one. Besides
everything :func:`clfast.training.checkpoint.strategy_state_dict` saves, it records the experience, the epoch, the
iteration in the epoch and the random generators' states at the start of that epoch, before its data loader drew
its shuffle. Resuming replays exactly that: the pending state is applied after the experience's
``before_training_exp`` hooks (they run again, then their effect is overwritten by the saved state), the epoch
is re-entered without ``before_training_epoch`` (it ran before the checkpoint), the generators are set to the
epoch's start, the loader is created again (the same order) and advanced past the iterations already trained,
and the generators are set to their state at the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from . import checkpoint as ck

__all__ = ["InExperienceCheckpoints"]


class InExperienceCheckpoints:
    """The template's in-experience checkpointing; ``writer(strategy, position)`` writes one (``position``: the
    dictionary :func:`clfast.training.checkpoint.strategy_state_dict` stores as ``"in_experience"``)."""

    def __init__(self, every: int | None, writer: Callable[[Any, dict[str, Any]], None] | None) -> None:
        self.every = every
        self.writer = writer
        self.pending: dict[str, Any] | None = None   # a loaded state to re-apply at the experience's start
        self._resume: dict[str, Any] | None = None   # where the resumed experience continues
        self._epoch_rng: dict[str, Any] | None = None
        self._last = 0  # train_exp_iterations at the experience start or the last checkpoint

    # -- resuming ---------------------------------------------------------------------------------------------------
    def start_experience(self, strategy: Any) -> None:
        """After ``before_training_exp``: the pending state, if any, replaces what the hooks set up."""
        pending, self.pending = self.pending, None
        self._resume = None
        if pending is not None:
            position = pending["in_experience"]
            here = getattr(strategy.experience, "current_experience", None)
            if position["experience"] != here:
                raise ValueError(f"the checkpoint was taken inside experience {position['experience']}; "
                                 f"resume by training that experience, not {here}")
            ck.apply_strategy_state(strategy, pending)
            self._resume = {**position, "rng": pending["rng"]}
        self._last = strategy.clock.train_exp_iterations

    def first_epoch(self) -> int:
        """Epochs of this experience already finished (0 unless resuming)."""
        return 0 if self._resume is None else int(self._resume["epoch"])

    def resuming_epoch(self) -> bool:
        """Whether the next epoch is one re-entered after a checkpoint (its ``before_training_epoch`` ran)."""
        return self._resume is not None

    def epoch_batches(self, dataloader: Any) -> tuple[Iterator[Any], int]:
        """The epoch's minibatches and how many of them were trained before the checkpoint (already skipped)."""
        resume, self._resume = self._resume, None
        if resume is None:
            self._epoch_rng = ck.capture_rng()  # before the loader draws this epoch's shuffle
            return iter(dataloader), 0
        self._epoch_rng = resume["epoch_rng"]
        ck.restore_rng(self._epoch_rng)
        batches = iter(dataloader)
        done = int(resume["iteration"])
        for _ in range(done):
            next(batches)
        ck.restore_rng(resume["rng"])
        return batches, done

    # -- saving -----------------------------------------------------------------------------------------------------
    def after_iteration(self, strategy: Any) -> None:
        """Writes a checkpoint when one is due: a step has just ended and ``every`` iterations have passed."""
        if self.every is None or self.writer is None or not strategy.step_this_iteration:
            return
        if strategy.clock.train_exp_iterations - self._last < self.every:
            return
        self._last = strategy.clock.train_exp_iterations
        clock = strategy.clock
        self.writer(strategy, {"experience": getattr(strategy.experience, "current_experience", None),
                               "epoch": clock.train_exp_epochs, "iteration": clock.train_epoch_iterations,
                               "epoch_rng": self._epoch_rng})


def file_writer(path: Any) -> Callable[[Any, dict[str, Any]], None]:
    """A writer that saves ``{"state": strategy_state_dict(strategy, in_experience=position)}`` to ``path``
    atomically (the Python API's ``checkpoint_path``)."""

    def write(strategy: Any, position: dict[str, Any]) -> None:
        ck.save_checkpoint({"state": ck.strategy_state_dict(strategy, in_experience=position)}, path)

    return write
