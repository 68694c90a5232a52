"""Drop-in replacements for ``torch.optim.SGD``, ``Adam`` and ``AdamW`` whose step is one fused multi-tensor pass
per parameter group (:mod:`clfast.ops.optim`), over flat optimizer state (``docs/optim.md``)."""

from __future__ import annotations

from .adam import Adam, AdamW
from .sgd import SGD

__all__ = ["SGD", "Adam", "AdamW"]
