"""Strategies: a template plus fixed plugins. ``STRATEGIES`` maps command-line names to constructors that
take Naive's keyword arguments (``clfast train --strategy NAME``); later strategies register here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .ar1 import AR1, ar1_from_optimizer
from .naive import Naive
from .regularized import REGULARIZED, regularized

#: name -> constructor called as ``ctor(model, optimizer, criterion, train_mb_size=..., train_epochs=...,
#: eval_mb_size=..., device=..., plugins=..., evaluator=..., eval_every=...)``.
#: ``"ar1"`` takes lr and momentum from the optimizer and needs a model with the latent split (MobileNetV1).
STRATEGIES: dict[str, Callable[..., Any]] = {"naive": Naive, **REGULARIZED, "ar1": ar1_from_optimizer}

__all__ = ["AR1", "STRATEGIES", "Naive", "ar1_from_optimizer", "regularized"]
