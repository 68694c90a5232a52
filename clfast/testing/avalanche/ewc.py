"""``AvalancheEWC``: the Avalanche-style reference transcription (see the package docstring)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch.utils.data import DataLoader

from ._common import (
    TensorDict,
    _copy_params,
    _expand_entry,
    _Hooks,
    _restore_modes,
    _save_modes,
    _zeros_like_params,
    avalanche_forward,
    pad_to,
)


class AvalancheEWC(_Hooks):
    """Avalanche's ``EWCPlugin`` (``training/plugins/ewc.py``; spec §9).

    State: ``importances`` and ``saved_params``, each ``defaultdict(dict)``: experience id → name → tensor.

    - ``after_training_exp`` (experience e = ``train_exp_counter``): the empirical Fisher of the experience,
      F = (1/N_batches) Σ_batches (∇θ criterion(f(x), y))² (square of the *batch-mean* gradient, every batch
      weighted equally) over the raw ``experience.dataset`` unshuffled at ``train_mb_size``, ``num_workers`` from
      the train kwargs (0 if absent), the model in **eval** mode, ``optimizer.zero_grad()`` before each batch,
      parameters without a gradient keep 0. Then ``separate`` (or e = 0): ``importances[e] = F``; ``online``:
      ``importances[e][k] = decay·importances[e−1][k](zero-padded) + F[k]`` (new names take F[k]; names only in
      the old dict are dropped, where Avalanche's ``zip_longest`` would assert), then ``importances[e−1]`` is
      deleted unless ``keep_importance_data``. Finally ``saved_params[e] = θ`` and, unless
      ``keep_importance_data`` (forced True in ``separate`` mode), ``saved_params[e−1]`` is deleted.
    - ``before_backward`` (e > 0): ``separate``: penalty = Σ_{j<e} Σ_k F_j (θ − θ*_j)²; ``online``: only j = e−1;
      parameters absent from ``saved_params[j]`` are skipped; ``loss += λ·penalty`` (no ½).

    ``eval_mode_leak=True`` (Avalanche) leaves the model in eval mode after the Fisher pass, so when one
    ``train()`` call covers several experiences the later ones train with BN in eval mode and dropout off;
    ``False`` restores every module's mode.
    """

    def __init__(self, ewc_lambda: float, mode: str = "separate", decay_factor: float | None = None,
                 keep_importance_data: bool = False, *, eval_mode_leak: bool = True) -> None:
        assert decay_factor is None or mode == "online", "decay_factor needs mode='online'"
        assert decay_factor is not None or mode != "online", "mode='online' needs a decay_factor"
        assert mode in ("separate", "online"), "mode must be 'separate' or 'online'"
        self.ewc_lambda = ewc_lambda
        self.mode = mode
        self.decay_factor = decay_factor
        self.keep_importance_data = True if mode == "separate" else keep_importance_data
        self.eval_mode_leak = eval_mode_leak
        self.saved_params: defaultdict[int, TensorDict] = defaultdict(dict)
        self.importances: defaultdict[int, TensorDict] = defaultdict(dict)
        self.last_penalty = None

    def compute_importances(self, strategy: Any, num_workers: int = 0) -> TensorDict:
        """The Fisher of the experience just trained."""
        model = strategy.model
        modes = None if self.eval_mode_leak else _save_modes(model)
        model.eval()
        importances = _zeros_like_params(model)
        dataset = strategy.experience.dataset
        loader = DataLoader(dataset, batch_size=strategy.train_mb_size, shuffle=False, num_workers=num_workers,
                            collate_fn=getattr(dataset, "collate_fn", None))
        n_batches = 0
        for batch in loader:
            x, y, t = batch[0], batch[1], batch[-1]
            x, y = x.to(strategy.device), y.to(strategy.device)
            strategy.optimizer.zero_grad()
            out = avalanche_forward(model, x, t)
            strategy._criterion(out, y).backward()
            for k, p in model.named_parameters():
                if p.grad is not None:
                    importances[k] += p.grad.detach().clone().pow(2)
            n_batches += 1
        for v in importances.values():
            v /= float(n_batches)
        if modes is not None:
            _restore_modes(model, modes)
        return importances

    @torch.no_grad()
    def _update_importances(self, current: TensorDict, e: int) -> None:
        if self.mode == "separate" or e == 0:
            self.importances[e] = current
            return
        old = self.importances[e - 1]
        self.importances[e] = {k: (self.decay_factor * pad_to(old[k], f.shape) + f) if k in old else f
                               for k, f in current.items()}
        if not self.keep_importance_data:
            del self.importances[e - 1]

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        e = strategy.clock.train_exp_counter
        current = self.compute_importances(strategy, kwargs.get("num_workers", 0))
        self._update_importances(current, e)
        self.saved_params[e] = _copy_params(strategy.model)
        if e > 0 and not self.keep_importance_data:
            del self.saved_params[e - 1]

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        e = strategy.clock.train_exp_counter
        if e == 0:
            return
        penalty = torch.tensor(0.0, device=strategy.device)
        for j in (range(e) if self.mode == "separate" else [e - 1]):
            for k, p in strategy.model.named_parameters():
                if k not in self.saved_params[j]:
                    continue  # new parameters do not count
                imp = _expand_entry(self.importances[j], k, p.shape)
                anchor = _expand_entry(self.saved_params[j], k, p.shape)
                penalty = penalty + (imp * (p - anchor).pow(2)).sum()
        strategy.loss += self.ewc_lambda * penalty
        self._record(self.ewc_lambda * penalty)
