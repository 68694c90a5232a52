"""Strategies: a template plus fixed plugins. ``STRATEGIES`` maps command-line names to constructors that
take Naive's keyword arguments (``clfast train --strategy NAME``); later strategies register here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .naive import Naive
from .regularized import REGULARIZED, regularized

#: name -> constructor called as ``ctor(model, optimizer, criterion, train_mb_size=..., train_epochs=...,
#: eval_mb_size=..., device=..., plugins=..., evaluator=..., eval_every=...)``.
STRATEGIES: dict[str, Callable[..., Any]] = {"naive": Naive, **REGULARIZED}

__all__ = ["STRATEGIES", "Naive", "regularized"]
