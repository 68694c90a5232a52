"""Memory Aware Synapses (Aljundi et al. 2018) as Avalanche's ``MASPlugin`` computes it
(``docs/avalanche-semantics.md`` §2), on flat state and fused ops."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .. import ops
from .._checks import check_bool, check_float
from ..training.plugins import SupervisedPlugin
from ._flat import (
    STATE_VERSION,
    ParamTable,
    add_penalty_grad_,
    add_to_loss,
    check_header,
    experience_loader,
    forward_batch,
    module_modes,
    penalty_value,
    progress,
    sync_grads,
)

__all__ = ["MASPlugin"]


class MASPlugin(SupervisedPlugin, supports_distributed=True):
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

    def __init__(self, lambda_reg: float = 1.0, alpha: float = 0.5, verbose: bool = False) -> None:
        super().__init__()
        self.lambda_reg = check_float("lambda_reg", lambda_reg, low=0.0)
        self.alpha = check_float("alpha", alpha, low=0.0, high=1.0)
        self.verbose = check_bool("verbose", verbose)
        self._table = ParamTable({"importance": "zeros", "anchor": "copy"}, stand_in="anchor")

    # -- views for inspection ---------------------------------------------------------------------------
    @property
    def importance(self) -> dict[str, torch.Tensor] | None:
        """Ω per parameter name (views of the flat state), or None before the first experience ends."""
        st = self._table.state
        return None if st is None else st.views("importance")

    @property
    def params(self) -> dict[str, torch.Tensor] | None:
        """θ* per parameter name (views), or None before the first experience ends."""
        st = self._table.state
        return None if st is None else st.views("anchor")

    # -- hooks ----------------------------------------------------------------------------------------
    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self._table.state is not None:
            self._table.sync(strategy.model, add_new=False)

    def after_eval(self, strategy: Any, **kwargs: Any) -> None:
        if self._table.state is not None:  # eval may have adapted (grown) the model
            self._table.sync(strategy.model, add_new=False)

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        if strategy.clock.train_exp_counter == 0:
            return
        if self._table.state is None:
            raise ValueError("MASPlugin: importance is not available (the plugin did not see an earlier experience)")
        params = self._table.tensors(strategy.model)
        add_to_loss(strategy, penalty_value(params, self._table["importance"], self._table["anchor"],
                                            self.lambda_reg))

    def after_backward(self, strategy: Any, **kwargs: Any) -> None:
        if strategy.clock.train_exp_counter == 0 or self._table.state is None:
            return
        params = self._table.tensors(strategy.model)
        add_penalty_grad_(params, self._table["importance"], self._table["anchor"], self.lambda_reg)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        table, model = self._table, strategy.model
        first = strategy.clock.train_exp_counter == 0 or table.state is None
        if table.state is not None:
            table.sync(model, add_new=False)  # zero-pad grown parameters (same values, new shapes)
        n_known = 0 if table.state is None else table.state.numel
        known_params = [] if table.state is None else table.tensors(model)
        new_params = table.new_params(model)
        current = self._importance_pass(strategy, known_params + [p for _, p in new_params])
        # The pass succeeded: commit. New parameters join the table at its end, in this order.
        table.sync(model, add_new=True)
        imp = table["importance"]
        with torch.no_grad():
            if first:
                imp.copy_(current)
            else:
                kept = table.entry_slices(active=False)  # only in the old state: unchanged (§2.1)
                saved = [imp[s].clone() for s in kept]
                imp.mul_(self.alpha).add_(current, alpha=1.0 - self.alpha)
                for s, old in zip(kept, saved, strict=True):
                    imp[s].copy_(old)
                imp[n_known:].copy_(current[n_known:])  # new parameters start at Ω_cur
        table.copy_from_model("anchor", model)

    def _importance_pass(self, strategy: Any, params: list[torch.Tensor]) -> torch.Tensor:
        """Ω_cur (§2.1) as one flat tensor laid out like ``params``."""
        model = strategy.model
        device = params[0].device if params else strategy.device
        current = torch.zeros(sum(p.numel() for p in params), dtype=torch.float32, device=device)
        loader = experience_loader(strategy)
        n_batches = 0
        with module_modes(model, training=True):
            for batch in progress(loader, self.verbose, "MAS importance", total=len(loader)):
                model.zero_grad(set_to_none=True)
                out, _ = forward_batch(model, batch, strategy.device)
                loss = out.pow(2).sum(dim=1).mean()
                loss.backward()
                sync_grads(params)  # distributed: the global batch's gradient (docs/distributed.md)
                ops.mas_importance_update_(current, params)  # raises on NaN/inf before writing
                n_batches += 1
        if n_batches:
            current /= n_batches
        return current

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The importance and anchor (flat state with its table) and the hyper-parameters."""
        return {"plugin": "MASPlugin", "version": STATE_VERSION, "state": self._table.state_dict(),
                "hparams": {"lambda_reg": self.lambda_reg, "alpha": self.alpha}}

    def load_state_dict(self, state_dict: Mapping[str, Any], model: nn.Module | None = None) -> None:
        """Restore :meth:`state_dict`'s output. With ``model``, the state must match its parameters.

        The input is validated completely first; on error (``ValueError``/``TypeError``) nothing changes.
        """
        sd = check_header(state_dict, "MASPlugin")
        state = self._table.check_loadable(sd.get("state"), model)
        self._table.install(state)

