"""clfast: fused CPU/CUDA kernels for continual learning, with Avalanche's plugin API.

``import clfast`` loads the compiled library, which registers the ``torch.ops.clfast.*`` ops,
and their fakes and autograd formulas (``clfast.ops``).
"""

from __future__ import annotations

import torch  # noqa: F401  (must be imported before _C: the library links against libtorch)

from . import (
    _C,  # noqa: F401  (registers torch.ops.clfast.*)
    ops,
)
from ._info import info
from .state import FlatState, StateEntry

__version__ = "0.1.0"

__all__ = ["FlatState", "StateEntry", "__version__", "info", "ops"]
