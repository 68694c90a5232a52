"""``AvalancheMAS``: the Avalanche-style reference transcription (see the package docstring)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from ._common import (
    TensorDict,
    _copy_params,
    _expand_entry,
    _Hooks,
    _zeros_like_params,
    avalanche_forward,
)


class AvalancheMAS(_Hooks):
    """Avalanche's ``MASPlugin`` (spec §2).

    State: ``params`` (θ*, every parameter cloned at the end of an experience, *before* the importance pass)
    and ``importance`` (Ω), both ``dict[name -> Tensor]`` or ``None`` before the first experience ends.

    - ``after_training_exp``: θ* ← θ; Ω_cur = (1/N_batches) Σ_batches |∇θ mean_i ‖f(x_i)‖²| over the raw
      ``experience.dataset``, unshuffled, at ``train_mb_size``, the model put in **train** mode (and left there);
      ``optimizer.zero_grad()`` before each batch; a 2-element batch uses its labels as task labels. First
      experience: Ω = Ω_cur; later: Ω = α·Ω_old(zero-padded) + (1−α)·Ω_cur, new names take Ω_cur, names only in
      Ω_old are kept (so unused heads decay by α per experience).
    - ``before_backward`` (experience > 0): ``ValueError`` if Ω or θ* is empty or the loss is exactly 0, then
      ``strategy.loss += λ Σ Ω(θ − θ*)²`` (no ½), Ω and θ* zero-padded to θ's shape in place.

    ``verbose`` is accepted and ignored (Avalanche shows a tqdm bar).
    """

    def __init__(self, lambda_reg: float = 1.0, alpha: float = 0.5, verbose: bool = False) -> None:
        self.lambda_reg = lambda_reg
        self.alpha = alpha
        self.verbose = verbose
        self.params: TensorDict | None = None
        self.importance: TensorDict | None = None
        self.last_penalty = None

    def compute_importance(self, strategy: Any) -> TensorDict:
        """Ω_cur of the experience just trained (§2.1 step 2)."""
        model = strategy.model
        importance = _zeros_like_params(model)
        dataset = strategy.experience.dataset
        loader = DataLoader(dataset, batch_size=strategy.train_mb_size, shuffle=False,
                            collate_fn=getattr(dataset, "collate_fn", None))
        model.train()
        n_batches = 0
        for batch in loader:
            if len(batch) == 2:
                x, t = batch[0], batch[1]
            elif len(batch) == 3:
                x, t = batch[0], batch[-1]
            else:
                raise ValueError(f"MAS expects batches of 2 or 3 elements, got {len(batch)}")
            x = x.to(strategy.device)  # t stays where the loader put it
            strategy.optimizer.zero_grad()
            out = avalanche_forward(model, x, t)
            loss = torch.linalg.vector_norm(out, dim=1).pow(2).mean()
            loss.backward()
            for k, p in model.named_parameters():
                if p.requires_grad and p.grad is not None:
                    importance[k] += p.grad.abs()
            n_batches += 1
        for v in importance.values():
            v /= n_batches
        return importance

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.params = _copy_params(strategy.model)
        current = self.compute_importance(strategy)
        if strategy.clock.train_exp_counter == 0 or self.importance is None:
            self.importance = current
            return
        for k, cur in current.items():
            if k not in self.importance:
                self.importance[k] = cur.clone()
            else:
                old = _expand_entry(self.importance, k, cur.shape)
                self.importance[k] = self.alpha * old + (1 - self.alpha) * cur

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        if strategy.clock.train_exp_counter == 0:
            return
        if not self.importance:
            raise ValueError("MAS: importance is not available")
        if not self.params:
            raise ValueError("MAS: parameters are not available")
        if not strategy.loss:
            raise ValueError("MAS: loss is not available (it is exactly 0)")
        penalty: Any = 0.0
        for k, p in strategy.model.named_parameters():
            if k not in self.importance or k not in self.params:
                continue  # parameters created after θ* was taken
            omega = _expand_entry(self.importance, k, p.shape)
            anchor = _expand_entry(self.params, k, p.shape)
            penalty = penalty + (omega * (p - anchor).pow(2)).sum()
        strategy.loss += self.lambda_reg * penalty
        self._record(self.lambda_reg * penalty)
