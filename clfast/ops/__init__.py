"""Typed wrappers of the ``torch.ops.clfast.*`` ops, with their fakes and autograd, one module per op family.

- :mod:`clfast.ops.state_ops`: the list/flat state ops (quadratic penalty, importance updates, RWalk and SI).
- :mod:`clfast.ops.batch_renorm`: Batch Renormalization.
- :mod:`clfast.ops.finite`: the NaN/inf checks the state ops run before they write.
- :mod:`clfast.ops.optim`: the optimizer steps (SGD, Adam/AdamW) with the penalty optionally inside.

Each op is one block in its family's module: the typed wrapper (named like the op), its fake (shape, dtype and
device only, for ``torch.compile`` and meta tensors) and its autograd formula when it has one. The schemas are in
``csrc/ops.cpp``; the math of every op is restated in plain PyTorch in :mod:`clfast._reference`; the op-spec
registry :mod:`clfast.testing.opinfo` ties the three together for the tests.

Layout contract (every state op): ``params[i]`` (and ``grads[i]``) own the slice
``[sum(numel of params[:i]), sum(numel of params[:i+1]))`` of every flat state buffer. This is
the order of :class:`clfast.state.FlatState`'s table; ``FlatState.params(model)`` returns the
parameters in that order. State buffers are 1-D contiguous float32/float64; model tensors are
float32, float64, bfloat16 or float16 and contiguous; arithmetic is done in float32 (float64 when
a float64 tensor is involved).

Finite-value checks: the ops that update persistent state (importance, Fisher, path integrals,
scores) take ``check_finite=True`` by default. It reads the model tensors once more before any
write and raises ``ValueError`` naming the first tensor holding a NaN or inf, so a bad gradient
cannot poison the state. Pass ``check_finite=False`` on hot paths that already guarantee finite
inputs, or a :class:`~clfast.ops.finite.FiniteGuard` to keep the flags on the device and raise later
(no host sync per call; the plugins do this on CUDA). The penalty ops default to ``False``: a NaN
there shows up in the returned value.
"""

from __future__ import annotations

from . import batch_renorm, finite, optim, state_ops
from .batch_renorm import *  # noqa: F403
from .finite import *  # noqa: F403
from .optim import *  # noqa: F403
from .state_ops import *  # noqa: F403

__all__ = [*finite.__all__, *state_ops.__all__, *optim.__all__, *batch_renorm.__all__]
