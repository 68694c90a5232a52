"""clfast: fused CPU/CUDA kernels for continual learning, with Avalanche's plugin API.

``import clfast`` loads the compiled library, which registers the ``torch.ops.clfast.*`` ops,
and their fakes and autograd formulas (``clfast.ops``).
"""

from __future__ import annotations

import torch  # noqa: F401  (must be imported before _C: the library links against libtorch)

from ._native import preload_emulated_c

preload_emulated_c()  # CLFAST_EMULATED_C may name another build of _C (docs/cuda-emulation.md)

from . import (  # noqa: E402  (after the preload)
    _C,  # noqa: F401  (registers torch.ops.clfast.*)
    ops,
)
from ._info import info  # noqa: E402
from .state import FlatState, StateEntry  # noqa: E402

__version__ = "0.1.0"

__all__ = ["FlatState", "StateEntry", "__version__", "info", "ops"]
