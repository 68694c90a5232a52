"""Memory Aware Synapses (Aljundi et al. 2018) as Avalanche's ``MASPlugin`` computes it
(``docs/avalanche-semantics.md`` §2), on flat state and fused ops."""

from __future__ import annotations

from typing import Any

import torch

from .. import ops
from .._checks import check_bool, check_float
from .base import RegularizerPlugin
from .passes import gradient_pass
from .table import kept

__all__ = ["MASPlugin"]


class MASPlugin(RegularizerPlugin, supports_distributed=True):
    """MAS: penalise changes of the parameters that the output's squared norm is sensitive to.

    After each experience (``after_training_exp``), with the model in train mode, the experience's own
    data (``strategy.experience.dataset``, unshuffled, ``train_mb_size`` batches) is passed through
    the model; per batch, the gradient of ``mean_b ‖f(x_b)‖²`` is taken and its absolute value added
    up; the sum is divided by the number of batches (§2.1):
    Ω_cur = (1/N_batches) Σ_batches |∇θ (1/B) Σ_b ‖f(x_b)‖²|. The importance is Ω_cur after the first
    experience and α·Ω + (1−α)·Ω_cur after later ones (grown parameters zero-padded, parameters new
    to the model start at Ω_cur). The anchor θ* is the parameters at the end of the experience.

    From the second experience on, the loss gets λ·Σ Ω⊙(θ−θ*)² (§2.2, no ½): its value is added to
    ``strategy.loss`` in ``before_backward`` and its gradient 2λΩ⊙(θ−θ*) accumulated into ``.grad`` in
    ``after_backward`` by one fused op each. Put this plugin before any plugin that reads or changes
    ``.grad`` in ``after_backward`` (e.g. gradient projection) so that plugin sees the full gradient.

    Args:
        lambda_reg: penalty strength λ (>= 0).
        alpha: weight of the old importance when blending, in [0, 1].
        verbose: show a progress bar during the importance pass.
    """

    STATE_NAME = "MASPlugin"

    def __init__(self, lambda_reg: float = 1.0, alpha: float = 0.5, verbose: bool = False) -> None:
        super().__init__()
        self.lambda_reg = check_float("lambda_reg", lambda_reg, low=0.0)
        self.alpha = check_float("alpha", alpha, low=0.0, high=1.0)
        self.verbose = check_bool("verbose", verbose)

    # -- views for inspection ---------------------------------------------------------------------------
    @property
    def importance(self) -> dict[str, torch.Tensor] | None:
        """Ω per parameter name (views of the flat state), or None before the first experience ends."""
        return self._views("importance")

    @property
    def params(self) -> dict[str, torch.Tensor] | None:
        """θ* per parameter name (views), or None before the first experience ends."""
        return self._views("anchor")

    # -- hooks ----------------------------------------------------------------------------------------
    def _penalty_strength(self, strategy: Any) -> float:
        return self.lambda_reg

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        if strategy.clock.train_exp_counter > 0 and self._table.state is None:
            raise ValueError("MASPlugin: importance is not available (the plugin did not see an earlier experience)")
        super().before_backward(strategy, **kwargs)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        table, model = self._table, strategy.model
        first = strategy.clock.train_exp_counter == 0 or table.state is None
        n_known, params = table.pending(model)  # grown parameters zero-padded (same values, new shapes)
        current = self._importance_pass(strategy, params)
        # The pass succeeded: commit. New parameters join the table at its end, in this order.
        table.sync(model, add_new=True)
        imp = table["importance"]
        with torch.no_grad():
            if first:
                imp.copy_(current)
            else:
                with kept(imp, table.entry_slices(active=False)):  # only in the old state: unchanged (§2.1)
                    imp.mul_(self.alpha).add_(current, alpha=1.0 - self.alpha)
                imp[n_known:].copy_(current[n_known:])  # new parameters start at Ω_cur
        table.copy_from_model("anchor", model)

    def _importance_pass(self, strategy: Any, params: list[torch.Tensor]) -> torch.Tensor:
        """Ω_cur (§2.1) as one flat tensor laid out like ``params``."""
        device = params[0].device if params else strategy.device
        current = torch.zeros(sum(p.numel() for p in params), dtype=torch.float32, device=device)
        # Per batch: loss (1/B) Σ_b ‖f(x_b)‖², then Ω_cur += |g|; NaN/inf raises before writing, or (deferred
        # checks) once after the pass: either way before Ω_cur is committed.
        guard = self._pass_guard()
        n_batches = gradient_pass(strategy, params, lambda out, _: out.pow(2).sum(dim=1).mean(),
                                  lambda _: ops.mas_importance_update_(current, params, check_finite=guard),
                                  training=True, set_to_none=True, verbose=self.verbose, desc="MAS importance")
        guard.check()
        if n_batches:
            current /= n_batches
        return current

    # -- state ----------------------------------------------------------------------------------------
    def _hparams(self) -> dict[str, Any]:
        return {"lambda_reg": self.lambda_reg, "alpha": self.alpha}
