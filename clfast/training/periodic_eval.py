"""Periodic evaluation during training (``eval_every``), with Avalanche's epoch and iteration rules."""

from __future__ import annotations

from typing import Any

from .._checks import check_choice, check_int
from .plugins import SupervisedPlugin

PEVAL_MODES = ("epoch", "iteration")


class PeriodicEval(SupervisedPlugin, supports_distributed=True):
    """Evaluates ``strategy._eval_streams`` during training.

    - ``eval_every=-1``: never (the template does not even add the plugin);
    - otherwise once in ``before_training``, then, with ``eval_every > 0``, after every epoch (or
      iteration) whose pre-increment counter is a multiple of ``eval_every`` (i.e. after the 1st,
      (k+1)-th, ... one), and at the end of every experience unless, in epoch mode, the last epoch
      already triggered it (``(train_epochs - 1) % eval_every == 0``).
    """

    def __init__(self, eval_every: int = -1, peval_mode: str = "epoch", do_initial: bool = True) -> None:
        check_choice("peval_mode", peval_mode, PEVAL_MODES)
        check_int("eval_every", eval_every, low=-1, type_error=ValueError)  # the template's rule
        self.eval_every = eval_every
        self.peval_mode = peval_mode
        self.do_initial = do_initial and eval_every > -1
        self.do_final = True

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        if self.do_initial:
            self._peval(strategy, **kwargs)

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        # Decided per experience because train_epochs may change between experiences.
        self.do_final = True
        if self.peval_mode == "epoch" and self.eval_every > 0 and (strategy.train_epochs - 1) % self.eval_every == 0:
            self.do_final = False

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self.do_final:
            self._peval(strategy, **kwargs)

    def after_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        if self.peval_mode == "epoch":
            self._maybe_peval(strategy, strategy.clock.train_exp_epochs, **kwargs)

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        if self.peval_mode == "iteration":
            self._maybe_peval(strategy, strategy.clock.train_exp_iterations, **kwargs)

    def _maybe_peval(self, strategy: Any, counter: int, **kwargs: Any) -> None:
        if self.eval_every > 0 and counter % self.eval_every == 0:
            self._peval(strategy, **kwargs)

    def _peval(self, strategy: Any, **kwargs: Any) -> None:
        for stream in strategy._eval_streams:
            strategy.eval(stream, **kwargs)
