"""The training clock: Avalanche's counters, kept by a plugin that is always the last one called."""

from __future__ import annotations

from typing import Any

from .plugins import SupervisedPlugin


class Clock(SupervisedPlugin, supports_distributed=True):
    """Counters of training progress.

    The template appends the clock after every other plugin, so a hook of any other plugin sees the
    counters as they were before the clock reacts to the same event (pre-increment, pre-reset).

    Attributes:
        train_iterations: training iterations since construction (never reset).
        train_exp_counter: training experiences finished since construction (never reset).
        train_exp_epochs: epochs finished in the current experience.
        train_exp_iterations: iterations finished in the current experience.
        train_epoch_iterations: iterations finished in the current epoch.
        total_iterations: training plus eval iterations since construction (never reset).
        train_steps: optimizer steps since construction (never reset): ``train_iterations`` divided by the
            strategy's ``accumulate_grad_batches``, counting a step the GradScaler skipped. Counted in
            ``after_update``, so a later ``after_training_iteration`` sees this step counted.
    """

    #: The counters, in :meth:`as_dict` order.
    COUNTERS: tuple[str, ...] = ("train_iterations", "train_exp_counter", "train_exp_epochs", "train_exp_iterations",
                                 "train_epoch_iterations", "total_iterations", "train_steps")

    train_iterations: int
    train_exp_counter: int
    train_exp_epochs: int
    train_exp_iterations: int
    train_epoch_iterations: int
    total_iterations: int
    train_steps: int

    def __init__(self) -> None:
        for name in self.COUNTERS:
            setattr(self, name, 0)

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.train_exp_iterations = 0
        self.train_exp_epochs = 0

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        self.train_epoch_iterations = 0

    def after_update(self, strategy: Any, **kwargs: Any) -> None:
        self.train_steps += 1

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.train_epoch_iterations += 1
        self.train_exp_iterations += 1
        self.train_iterations += 1
        self.total_iterations += 1

    def after_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        self.train_exp_epochs += 1

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.train_exp_counter += 1

    def after_eval_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.total_iterations += 1

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {name: getattr(self, name) for name in self.COUNTERS}
