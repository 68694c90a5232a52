"""``AvalancheRWalk``: the Avalanche-style reference transcription (see the package docstring)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._common import (
    TensorDict,
    _copy_grads,
    _copy_params,
    _expand_entry,
    _Hooks,
    _restore_modes,
    _save_modes,
    _zeros_like_params,
    avalanche_forward,
    pad_to,
)


class AvalancheRWalk(_Hooks):
    """Avalanche's ``RWalkPlugin`` (spec §3), with switches for its quirks.

    State (``dict[name -> Tensor]``, the spec's names): ``iter_grad`` (g_t, the task gradient of the current
    iteration), ``iter_importance`` (EWC++ Fisher F), ``iter_params`` (θ_t), ``checkpoint_params`` (θ at the
    last score checkpoint), ``checkpoint_loss`` (Σ −g·Δθ over the current Δt window), ``checkpoint_scores``
    (Σ of window scores in this experience), ``exp_importance`` (F at the end of the last experience),
    ``exp_params`` (θ* at the end of the last experience), ``exp_scores`` (½-averaged scores),
    ``exp_penalties`` (P = F/max F + relu(s)/max s).

    Args:
        ewc_lambda, ewc_alpha, delta_t: as Avalanche (``AssertionError`` unless 0 ≤ α ≤ 1 and Δt ≥ 1).
        grad_source: ``"extra_pass"`` (Avalanche): g_t from an extra forward/backward of the raw criterion on
            ``mbatch`` at ``before_training_iteration``, in eval mode. ``"training_backward"`` (clfast's
            default semantics): g_t is the gradient of ``strategy._criterion(mb_output, mb_y)`` of the training
            forward itself, taken with ``torch.autograd.grad(..., retain_graph=True)`` in ``before_backward``
            (before the penalty is added), so no extra pass; F is updated from it there.
        eval_mode_leak: with the extra pass, ``True`` leaves the model in eval mode (Avalanche, §3.3.1);
            ``False`` restores every module's mode after the pass.
        guard_zero_max: ``False`` (Avalanche) divides by the global maxima as they are (0/0 = NaN);
            ``True`` makes a term 0 when its maximum is 0.
    """

    def __init__(self, ewc_lambda: float = 0.1, ewc_alpha: float = 0.9, delta_t: int = 10, *,
                 grad_source: str = "extra_pass", eval_mode_leak: bool = True, guard_zero_max: bool = False) -> None:
        assert 0 <= ewc_alpha <= 1, "ewc_alpha must be in [0, 1]"
        assert delta_t >= 1, "delta_t must be at least 1"
        if grad_source not in ("extra_pass", "training_backward"):
            raise ValueError(f"grad_source must be 'extra_pass' or 'training_backward', got {grad_source!r}")
        self.ewc_lambda = ewc_lambda
        self.ewc_alpha = ewc_alpha
        self.delta_t = delta_t
        self.grad_source = grad_source
        self.eval_mode_leak = eval_mode_leak
        self.guard_zero_max = guard_zero_max
        self.checkpoint_params: TensorDict | None = None
        self.checkpoint_loss: TensorDict | None = None
        self.checkpoint_scores: TensorDict | None = None
        self.iter_grad: TensorDict | None = None
        self.iter_importance: TensorDict | None = None
        self.iter_params: TensorDict | None = None
        self.exp_scores: TensorDict | None = None
        self.exp_params: TensorDict | None = None
        self.exp_importance: TensorDict | None = None
        self.exp_penalties: TensorDict | None = None
        self.last_penalty = None

    # -- per-iteration pieces (§3.2)
    def _extra_pass_grad(self, strategy: Any) -> TensorDict:
        model = strategy.model
        modes = None if self.eval_mode_leak else _save_modes(model)
        model.eval()  # the RNN workaround compares a torch.device with "cuda": dead code (§3.3.2)
        x, y, t = strategy.mbatch[0], strategy.mbatch[1], strategy.mbatch[-1]
        strategy.optimizer.zero_grad()
        out = avalanche_forward(model, x, t)
        strategy._criterion(out, y).backward()
        if modes is not None:
            _restore_modes(model, modes)
        return _copy_grads(model)

    def _update_importance(self, grads: TensorDict) -> None:
        """EWC++: F = α g² + (1−α) F_old(padded); the dict is rebuilt from ``grads``' keys."""
        new = {k: g.clone() ** 2 for k, g in grads.items()}
        if self.iter_importance is None:
            self.iter_importance = new
            return
        old = self.iter_importance
        self.iter_importance = {}
        for k, f_new in new.items():
            if k not in old:
                self.iter_importance[k] = f_new
            else:
                self.iter_importance[k] = self.ewc_alpha * f_new + (1 - self.ewc_alpha) * pad_to(old[k], f_new.shape)

    @torch.no_grad()
    def _update_loss(self, strategy: Any) -> None:
        """checkpoint_loss −= g_t ⊙ (θ_{t+1} − θ_t)."""
        for k, p in strategy.model.named_parameters():
            if k not in self.iter_grad:
                continue
            if k not in self.checkpoint_loss:  # a parameter created after before_training
                self.checkpoint_loss[k] = torch.zeros_like(p)
            acc = _expand_entry(self.checkpoint_loss, k, p.shape)
            acc -= pad_to(self.iter_grad[k], p.shape) * (p - pad_to(self.iter_params[k], p.shape))

    @torch.no_grad()
    def _update_score(self, strategy: Any) -> None:
        """checkpoint_scores += checkpoint_loss / (½ F (θ − θ_ckpt)² + eps)."""
        for k, p in strategy.model.named_parameters():
            if k not in self.iter_importance:
                continue
            loss = self.checkpoint_loss[k]
            eps = torch.finfo(loss.dtype).eps
            imp = _expand_entry(self.iter_importance, k, p.shape)
            old = pad_to(self.checkpoint_params[k], p.shape)
            score = _expand_entry(self.checkpoint_scores, k, p.shape)
            score += loss / (0.5 * imp * (p - old).pow(2) + eps)

    # -- hooks (§3.1)
    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        self.checkpoint_loss = _zeros_like_params(strategy.model)
        self.checkpoint_scores = _zeros_like_params(strategy.model)
        self.checkpoint_params = _copy_params(strategy.model)

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        if self.grad_source == "extra_pass":
            self.iter_grad = self._extra_pass_grad(strategy)
            self._update_importance(self.iter_grad)
        self.iter_params = _copy_params(strategy.model)

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        if self.grad_source == "training_backward":
            named = [(k, p) for k, p in strategy.model.named_parameters() if p.requires_grad]
            task_loss = strategy._criterion(strategy.mb_output, strategy.mb_y)
            grads = torch.autograd.grad(task_loss, [p for _, p in named], retain_graph=True, allow_unused=True)
            self.iter_grad = {k: g.detach().clone() for (k, _), g in zip(named, grads, strict=True) if g is not None}
            self._update_importance(self.iter_grad)
        if strategy.clock.train_exp_counter == 0:
            return
        penalty: Any = 0
        for k, p in strategy.model.named_parameters():
            if k not in self.exp_penalties:
                continue  # parameters whose score key was dropped, or created later
            weight = _expand_entry(self.exp_penalties, k, p.shape)
            anchor = _expand_entry(self.exp_params, k, p.shape)
            penalty = penalty + (weight * (p - anchor).pow(2)).sum()
        strategy.loss += self.ewc_lambda * penalty
        self._record(self.ewc_lambda * penalty)

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self._update_loss(strategy)
        if (strategy.clock.train_iterations + 1) % self.delta_t == 0:
            self._update_score(strategy)
            self.checkpoint_loss = _zeros_like_params(strategy.model)
            self.checkpoint_params = _copy_params(strategy.model)

    def _normalised(self, t: Tensor, m: Tensor) -> Tensor:
        if self.guard_zero_max and m == 0:
            return torch.zeros_like(t)
        return t / m

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.exp_importance = self.iter_importance
        self.exp_params = _copy_params(strategy.model)
        if self.exp_scores is None:
            self.exp_scores = self.checkpoint_scores
        else:  # ½-averaging; names not already scored are dropped for good (§3.3.5)
            self.exp_scores = {k: 0.5 * (pad_to(self.exp_scores[k], s.shape) + s)
                               for k, s in self.checkpoint_scores.items() if k in self.exp_scores}
        max_score = max(s.max() for s in self.exp_scores.values())
        max_imp = max(f.max() for f in self.exp_importance.values())
        self.exp_penalties = {}
        for k in self.exp_scores:
            if k not in self.exp_importance:
                continue
            imp = self.exp_importance[k]
            score = _expand_entry(self.exp_scores, k, imp.shape)
            self.exp_penalties[k] = self._normalised(imp, max_imp) + self._normalised(torch.relu(score), max_score)
        self.checkpoint_scores = _zeros_like_params(strategy.model)
