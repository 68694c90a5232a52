"""Input transforms used by the benchmark builders."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class PixelsPermutation:
    """A fixed permutation of an input's elements: ``out.flatten()[i] = x.flatten()[permutation[i]]``.

    The output has the input's shape. This is the gather Avalanche's ``PixelsPermutation`` performs
    on tensors. ``apply_batch`` does the same to every row of a batch in one indexing operation.
    """

    def __init__(self, permutation: Sequence[int] | torch.Tensor) -> None:
        perm = torch.as_tensor(permutation)
        if perm.dim() != 1 or perm.dtype not in (torch.int32, torch.int64):
            raise TypeError("permutation must be a 1-D integer sequence")
        perm = perm.to(torch.long)
        if not torch.equal(torch.sort(perm).values, torch.arange(perm.numel())):
            raise ValueError(f"permutation must hold each of 0..{perm.numel() - 1} exactly once")
        self.permutation = perm

    def _check(self, numel: int) -> None:
        if numel != self.permutation.numel():
            raise ValueError(f"the permutation has {self.permutation.numel()} entries but the input has {numel}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"PixelsPermutation needs a tensor input, got {type(x).__name__}")
        self._check(x.numel())
        return x.reshape(-1)[self.permutation].reshape(x.shape)

    def apply_batch(self, xb: torch.Tensor) -> torch.Tensor:
        """Permute every sample of a batch (first dimension) at once."""
        self._check(xb[0].numel() if xb.shape[0] else self.permutation.numel())
        return xb.reshape(xb.shape[0], -1)[:, self.permutation].reshape(xb.shape)

    def __repr__(self) -> str:
        return f"PixelsPermutation(n={self.permutation.numel()})"
