"""AR1's re-estimation of the BRN running statistics at the end of an experience (``AR1(recompute_brn_stats=True)``,
not in Avalanche; ``docs/avalanche-differences.md``, "AR1" row 13).

Why: from a random initialisation the running statistics start at mean 0 / std 1 and move by ``init_update_rate``
(0.01) per iteration; a first experience of a few dozen iterations leaves them far from the data's, and from the
second experience ``inc_update_rate`` (5e-5) all but freezes them. In eval mode (``lat_features`` from the second
experience on, and every evaluation) such a network answers one class whatever the input. Re-estimating the
statistics from the experience's data (:func:`clfast.nn.recompute_brn_statistics`) removes that mismatch.

What is re-estimated:

* after the first experience, every BRN layer of the model, over the experience's inputs;
* after a later one, the layers of ``end_features`` only, over the current inputs' latents (``lat_features`` in
  eval mode) and the replay memory's latents, shuffled together. ``lat_features`` keeps its statistics: the stored
  latents were computed with them.

The batches have about ``train_mb_size`` rows (no small remainder): the network learnt with statistics of batches of
that size, and a batch's std shrinks with its size (on Split-Digits batches of 256 left the first experience's test
accuracy at 65%, batches of 32 gave 90-93%), in an order drawn from the strategy's own generator (so a run stays
reproducible and a resumed one draws the same). Under ``torch.distributed`` each rank re-estimates over its shard of
the current patterns (plus the replicated memory); AR1 then averages every floating-point buffer over the ranks, so
the ranks agree, and with equal shards the result is the average over the ranks' batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from ..nn import recompute_brn_statistics
from ..training.utils import module_modes

__all__ = ["recompute_ar1_brn_statistics"]


def _current_inputs(strategy: Any, drop_small_last: bool) -> Iterator[Tensor]:
    """The experience's inputs (this rank's shard), ``train_mb_size`` at a time, shuffled with AR1's generator. With
    ``drop_small_last`` a last batch under half that size is left out unless it is the only one: every batch weighs
    the same in the average, and a few rows give noisy statistics (one row at a 1×1 map: std = sqrt(eps))."""
    loader = strategy._make_loader("training", strategy.train_mb_size, shuffle=True, num_workers=0, pin_memory=None,
                                   persistent_workers=False, drop_last=False,
                                   seed=strategy.sampler_seed + strategy.clock.train_exp_counter,
                                   generator=strategy._generator)
    for k, batch in enumerate(loader):
        x = batch[0]
        if drop_small_last and k > 0 and k == len(loader) - 1 and 2 * x.shape[0] < strategy.train_mb_size:
            return
        yield x.to(strategy.device, non_blocking=True)


@torch.no_grad()
def recompute_ar1_brn_statistics(strategy: Any) -> int:
    """Re-estimates the BRN running statistics of ``strategy.model`` (an :class:`clfast.strategies.AR1`) at the end
    of its current experience, as the module docstring says; every module's mode is kept. Returns the number of
    batches used."""
    model = strategy.model
    if strategy.clock.train_exp_counter == 0:
        return recompute_brn_statistics(model, _current_inputs(strategy, drop_small_last=True))
    with module_modes(model.lat_features, training=False):
        latents = [model.lat_features(x) for x in _current_inputs(strategy, drop_small_last=False)]
    memory = strategy.memory.latents
    if memory is not None and memory.shape[0] > 0:
        latents.append(memory.to(strategy.device, latents[0].dtype if latents else memory.dtype))
    if not latents:
        return 0
    rows = torch.cat(latents)
    # Shuffled together, so that no batch holds only current or only replayed patterns (their statistics differ).
    rows = rows[torch.randperm(rows.shape[0], generator=strategy._generator).to(rows.device)]
    # Batches of train_mb_size to 2·train_mb_size - 1 rows (no small remainder; see _current_inputs).
    batches = torch.tensor_split(rows, max(1, rows.shape[0] // strategy.train_mb_size))
    return recompute_brn_statistics(model.end_features, batches)
