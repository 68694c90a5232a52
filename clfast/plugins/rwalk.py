"""Riemannian Walk (Chaudhry et al. 2018) as Avalanche's ``RWalkPlugin`` computes it
(``docs/avalanche-semantics.md`` §3), without its extra forward/backward per iteration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .. import distributed as dist
from .. import ops
from .._checks import check_bool, check_float, check_int
from ..distributed import unwrap
from ..optim.flat import FlatStepOptimizer
from ..sharding import grad_of
from ..state import FlatState
from ..training.precision import step_is_due, step_was_taken
from ..training.utils import module_modes
from .base import RegularizerPlugin, names_as_set
from .passes import batch_gradient

__all__ = ["RWalkPlugin"]

_KINDS = {
    "fisher": "zeros",        # EWC++ Fisher F (iter_importance)
    "grad": "zeros",          # task gradient g_t of the current iteration (iter_grad; unused when fused)
    "prev": "copy",           # θ_t, the parameters before the step (iter_params)
    "loss": "zeros",          # Σ −g⊙Δθ over the current Δt window (checkpoint_loss)
    "ckpt_params": "copy",    # θ at the last score checkpoint (checkpoint_params)
    "ckpt_scores": "zeros",   # this experience's window scores (checkpoint_scores)
    "exp_scores": "zeros",    # ½-averaged scores over experiences (exp_scores)
    "exp_fisher": "zeros",    # F at the end of the last experience (exp_importance)
    "anchor": "copy",         # θ* at the end of the last experience (exp_params)
    "penalty": "zeros",       # P = F / max F + relu(s) / max s (exp_penalties)
}


class RWalkPlugin(RegularizerPlugin, supports_distributed=True):
    """RWalk: EWC++ Fisher plus path-integral scores, max-normalised, as a quadratic penalty (§3).

    Per iteration (all fused ops): the EWC++ Fisher F ← α·g² + (1−α)·F (§3.2; a parameter without a
    gradient drops out of F until it has one again, then restarts at g², as in Avalanche) and the
    window's loss change L −= g⊙(θ_{t+1} − θ_t); every Δt global iterations the window score
    s += L / (½·F⊙(θ − θ_ckpt)² + ε) (ε = machine epsilon). At the end of an experience the scores are
    ½-averaged with the previous ones, and the penalty weights P = F/max F + relu(s)/max s (global
    maxima) give the loss λ·Σ P⊙(θ−θ*)² in later experiences (value added in ``before_backward``,
    gradient accumulated into ``.grad`` in ``after_backward``).

    The task gradient g (the criterion's gradient, without the penalty) is read from ``.grad`` in
    ``after_backward`` *before* this plugin adds its penalty gradient there: no extra forward/backward
    pass, and the model stays in the mode it is in. It therefore includes anything other plugins added
    to ``strategy.loss`` and is taken in train mode. ``separate_grad_pass=True`` instead computes g as
    Avalanche does, with an extra forward/backward of ``strategy._criterion`` on ``strategy.mbatch`` in
    eval mode at ``before_training_iteration`` (each module's mode is restored afterwards), for exact
    parity with Avalanche's numbers on models that behave the same in train and eval mode.

    A global maximum that is ≤ 0 makes its term 0 (Avalanche gives NaN or inf).

    Args:
        ewc_lambda: penalty strength λ (>= 0).
        ewc_alpha: weight α of the new squared gradient in the EWC++ average, in [0, 1].
        delta_t: optimizer steps between score checkpoints (>= 1), on the global step count (the iteration count
            without gradient accumulation).
        separate_grad_pass: reproduce Avalanche's extra eval-mode gradient pass (2-3× slower).
    """

    STATE_NAME = "RWalkPlugin"
    KINDS: ClassVar[Mapping[str, str]] = _KINDS
    WEIGHTS = "penalty"

    def __init__(self, ewc_lambda: float = 0.1, ewc_alpha: float = 0.9, delta_t: int = 10, *,
                 separate_grad_pass: bool = False) -> None:
        super().__init__()
        self.ewc_lambda = check_float("ewc_lambda", ewc_lambda, low=0.0)
        self.ewc_alpha = check_float("ewc_alpha", ewc_alpha, low=0.0, high=1.0)
        self.delta_t = check_int("delta_t", delta_t, low=1)
        self.separate_grad_pass = check_bool("separate_grad_pass", separate_grad_pass)
        # Name-level bookkeeping of Avalanche's dict keys (§3.2):
        self._in_fisher: set[str] = set()      # keys of iter_importance (had a gradient at the last update)
        self._iter_grad: list[bool] = []       # per table entry: has a gradient in this iteration
        self._ckpt_keys: set[str] = set()      # keys of checkpoint_scores
        self._scored: set[str] | None = None   # keys of exp_scores (None before the first experience ends)
        self._exp_fisher_keys: set[str] = set()
        self._penalised: list[bool] | None = None  # per table entry: has a penalty weight P
        # This step's path integral: waiting for before_update to go into the clfast.optim step (the task gradient
        # was not copied), and taken by the step.
        self._path_pending = False
        self._path_in_step = False

    # -- views ----------------------------------------------------------------------------------------
    def _views(self, kind: str, keys: set[str] | None = None) -> dict[str, Tensor] | None:
        """``kind`` per parameter name, only the names in ``keys`` (Avalanche's dict keys) if given."""
        views = super()._views(kind)
        return views if views is None or keys is None else {n: v for n, v in views.items() if n in keys}

    @property
    def iter_importance(self) -> dict[str, Tensor] | None:
        """The EWC++ Fisher per parameter name (the names that currently have one)."""
        return self._views("fisher", self._in_fisher)

    @property
    def checkpoint_scores(self) -> dict[str, Tensor] | None:
        return self._views("ckpt_scores", self._ckpt_keys)

    @property
    def exp_scores(self) -> dict[str, Tensor] | None:
        return None if self._scored is None else self._views("exp_scores", self._scored)

    @property
    def exp_importance(self) -> dict[str, Tensor] | None:
        return None if self._scored is None else self._views("exp_fisher", self._exp_fisher_keys)

    @property
    def exp_params(self) -> dict[str, Tensor] | None:
        return None if self._scored is None else self._views("anchor")

    @property
    def exp_penalties(self) -> dict[str, Tensor] | None:
        """P per penalised parameter name."""
        if self._penalised is None or self._table.state is None:
            return None
        views = self._table.state.views("penalty")
        return {e.name: views[e.name] for e, p in zip(self._table.state.entries, self._penalised, strict=True) if p}

    # -- structure ------------------------------------------------------------------------------------
    def _follow_model(self, model: nn.Module) -> None:
        """Unlike MAS/EWC/SI, parameters new to the model join at once (Avalanche's dicts get the key)."""
        table = self._table
        changed = table.sync(model, add_new=True)
        if changed:
            n = len(table.state.entries)
            self._iter_grad = (self._iter_grad + [False] * n)[:n]
            if self._penalised is not None:
                self._penalised = (self._penalised + [False] * n)[:n]
            table.copy_from_model("prev", model)  # grown parameters: the snapshot must be whole

    # -- hooks ----------------------------------------------------------------------------------------
    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        self._follow_model(strategy.model)
        table, model = self._table, strategy.model
        table["loss"].zero_()
        table["ckpt_scores"].zero_()
        table.copy_from_model("ckpt_params", model)
        table.copy_from_model("prev", model)
        self._ckpt_keys = {n for n, _ in unwrap(model).named_parameters()}

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._follow_model(strategy.model)
        self._table.copy_from_model("prev", strategy.model)

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        # The extra pass reads this minibatch only, once per optimizer step (on a window's last minibatch).
        if not self.separate_grad_pass or not step_is_due(strategy):
            return
        model = strategy.model
        params = self._table.tensors(model)
        with module_modes(model, training=False):  # distributed: the global batch's gradient, as DDP's
            batch_gradient(model, strategy.mbatch, strategy.device, strategy._criterion, params, set_to_none=True,
                           strategy=strategy)
        self._read_task_grad(params)
        model.zero_grad(set_to_none=True)

    def _penalty_active(self, strategy: Any) -> bool:
        return strategy.clock.train_exp_counter > 0 and self._penalised is not None

    def _penalty_strength(self, strategy: Any) -> float:
        return self.ewc_lambda

    def _penalty_mask(self) -> list[bool] | None:
        return self._penalised

    def _path_fusable(self, strategy: Any) -> bool:
        """Whether this step's path integral may go into the optimizer's step, reading the task gradient there: a
        clfast.optim optimizer, g read from ``.grad`` (no separate pass), and no other regulariser, whose penalty
        gradient could then be in ``.grad`` at the step but not when g was read (or the other way round)."""
        return (isinstance(getattr(strategy, "optimizer", None), FlatStepOptimizer) and not self.separate_grad_pass
                and sum(isinstance(p, RegularizerPlugin) for p in strategy.plugins) == 1)

    def after_backward(self, strategy: Any, **kwargs: Any) -> None:
        params = self._table.tensors(strategy.model)
        self._path_pending = self._path_in_step = False
        # .grad holds the task gradient (the penalty's is not in yet), accumulated over the window and unscaled
        # on the step's last minibatch: read it then, unless the GradScaler skips the step (it may be inf).
        if not self.separate_grad_pass and step_was_taken(strategy):
            self._path_pending = self._path_fusable(strategy)
            self._read_task_grad(params, keep_copy=not self._path_pending)
        super().after_backward(strategy, **kwargs)

    def before_update(self, strategy: Any, **kwargs: Any) -> None:
        """With a fusable path integral: L −= g⊙(θ_{t+1} − θ_t) and θ_t ← θ_{t+1} inside the step, with g the task
        gradient the step reads from ``.grad``. Where the step cannot take it (the parameters are not one group's,
        a gradient is missing), g is copied now, before the penalty's gradient can go into ``.grad``."""
        if self._path_pending:
            self._path_pending = False
            params = self._table.tensors(strategy.model)
            if strategy.optimizer.group_taking(params, self._table["loss"]) is None:
                self._table.copy_in(self._table["grad"], [grad_of(p) for p in params])
            else:
                self._path_in_step = True
        super().before_update(strategy, **kwargs)  # the penalty: taken by the step on the same conditions
        if self._path_in_step:
            self._path_in_step = strategy.optimizer.take_path_integral(
                self._table.tensors(strategy.model), self._table["loss"], self._table["prev"], penalised=False)

    def _read_task_grad(self, params: list[Tensor], keep_copy: bool = True) -> None:
        """g_t ← ``.grad``: update the EWC++ Fisher and (``keep_copy``) keep a copy of g for the path integral."""
        table = self._table
        grads = [grad_of(p) for p in params]
        now = [g is not None for g in grads]
        names = table.state.names
        fresh = [i for i, has in enumerate(now) if has and names[i] not in self._in_fisher]
        if not fresh:
            ops.ema_sq_update_(table["fisher"], params, self.ewc_alpha, grads=grads, check_finite=self._finite)
        else:  # parameters (re)appearing in the Fisher start at g² (Avalanche rebuilds the dict, §3.2)
            fresh_set = set(fresh)
            ops.check_finite("RWalkPlugin", guard=self._finite, grads=grads)
            ops.ema_sq_update_(table["fisher"], params, self.ewc_alpha, check_finite=False,
                               grads=[None if i in fresh_set else g for i, g in enumerate(grads)])
            ops.ema_sq_update_(table["fisher"], params, 1.0, check_finite=False,
                               grads=[g if i in fresh_set else None for i, g in enumerate(grads)])
        self._in_fisher = {n for n, has in zip(names, now, strict=True) if has}
        self._iter_grad = now
        if keep_copy:
            table.copy_in(table["grad"], grads)

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        fused = self._path_in_step and strategy.optimizer.pop_path_integral()  # a pending one is dropped
        self._path_in_step = False
        if not step_was_taken(strategy):  # once per optimizer step that moved θ
            return
        table = self._table
        params = table.tensors(strategy.model)
        if not fused:  # L −= g⊙(θ_{t+1} − θ_t) with the stored task gradient
            views = table.state.views("grad")
            # The stored task gradient is float32 (the state's dtype); for a parameter held in bfloat16/float16 it
            # goes back to that dtype, which is exact: it was copied from that parameter's .grad.
            grads = [(views[n] if views[n].dtype == p.dtype else views[n].to(p.dtype)) if has else None
                     for n, has, p in zip(table.state.names, self._iter_grad, params, strict=True)]
            ops.path_integral_update_(table["loss"], table["prev"], params, grads=grads, check_finite=self._finite)
        # Δt counts optimizer steps (the clock has counted this one); a strategy without the step counter (no
        # accumulation) counts iterations, this one included.
        if getattr(strategy.clock, "train_steps", strategy.clock.train_iterations + 1) % self.delta_t == 0:
            loss = table["loss"]
            for e in table.state.entries:  # only names in the Fisher are scored; the others' L is reset
                if e.name not in self._in_fisher:
                    loss[e.offset:e.offset + e.numel].zero_()
            # With a fused path integral, nothing checked L per step: this reads it (and F, θ) before scoring.
            ops.rwalk_score_update_(table["ckpt_scores"], loss, table["ckpt_params"], table["fisher"], params,
                                    check_finite=self._finite)
        self._finite.tick()

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        # Deferred NaN/inf in this experience's updates: refuse before anything is consolidated. The running
        # Fisher outlives the experience, so the guard stays tripped until a state is loaded.
        self._finite.check()
        table, model = self._table, strategy.model
        self._follow_model(model)
        st = table.state
        names = st.names
        with torch.no_grad():
            table["exp_fisher"].copy_(table["fisher"])
            self._exp_fisher_keys = set(self._in_fisher)
            table.copy_from_model("anchor", model)
            exp_scores, ckpt = table["exp_scores"], table["ckpt_scores"]
            if self._scored is None:
                exp_scores.copy_(ckpt)
                self._scored = set(self._ckpt_keys)
            else:  # ½-averaging; names not already scored are dropped for good (§3.2)
                exp_scores.add_(ckpt).mul_(0.5)
                self._scored &= self._ckpt_keys
            fisher_m = table["exp_fisher"].clone()
            scores_m = exp_scores.clone()
            for e in st.entries:  # the maxima run over Avalanche's dict keys only
                if e.name not in self._exp_fisher_keys:
                    fisher_m[e.offset:e.offset + e.numel] = 0.0
                if e.name not in self._scored:
                    scores_m[e.offset:e.offset + e.numel] = 0.0
            if table.sharded:  # FSDP2: the maxima run over every rank's shard
                penalty = _penalty_weights_over_ranks(fisher_m, scores_m)
            else:
                penalty = ops.rwalk_penalty_weights(fisher_m, scores_m)
            penalised = [n in self._scored and n in self._exp_fisher_keys for n in names]
            for e, p in zip(st.entries, penalised, strict=True):
                if not p:
                    penalty[e.offset:e.offset + e.numel] = 0.0
            table["penalty"].copy_(penalty)
            self._penalised = penalised
            ckpt.zero_()
            self._ckpt_keys = {n for n, _ in unwrap(model).named_parameters()}

    # -- state ----------------------------------------------------------------------------------------
    def _hparams(self) -> dict[str, Any]:
        return {"ewc_lambda": self.ewc_lambda, "ewc_alpha": self.ewc_alpha, "delta_t": self.delta_t}

    def _extra_state(self) -> dict[str, Any]:
        """The name bookkeeping (sorted name lists)."""
        names = [] if self._table.state is None else self._table.state.names
        return {"in_fisher": sorted(self._in_fisher), "ckpt_keys": sorted(self._ckpt_keys),
                "scored": None if self._scored is None else sorted(self._scored),
                "exp_fisher_keys": sorted(self._exp_fisher_keys),
                "penalised": None if self._penalised is None else
                [n for n, p in zip(names, self._penalised, strict=True) if p],
                "iter_grad": [n for n, p in zip(names, self._iter_grad, strict=False) if p]}

    def _check_state(self, sd: Mapping[str, Any], model: nn.Module | None) -> tuple[FlatState | None, dict[str, Any]]:
        """The table, then name lists that name only its entries."""
        state, _ = super()._check_state(sd, model)
        names = [] if state is None else state.names
        in_fisher = names_as_set(sd.get("in_fisher"), "in_fisher")
        ckpt_keys = names_as_set(sd.get("ckpt_keys"), "ckpt_keys")
        scored = None if sd.get("scored") is None else names_as_set(sd.get("scored"), "scored")
        exp_keys = names_as_set(sd.get("exp_fisher_keys"), "exp_fisher_keys")
        penalised = None if sd.get("penalised") is None else names_as_set(sd.get("penalised"), "penalised")
        iter_grad = names_as_set(sd.get("iter_grad"), "iter_grad")
        unknown = (in_fisher | (scored or set()) | exp_keys | (penalised or set()) | iter_grad) - set(names)
        if unknown:
            raise ValueError(f"the state names parameters it has no entry for: {sorted(unknown)[:5]}")
        return state, {"_in_fisher": in_fisher, "_ckpt_keys": ckpt_keys, "_scored": scored,
                       "_exp_fisher_keys": exp_keys,
                       "_penalised": None if penalised is None else [n in penalised for n in names],
                       "_iter_grad": [n in iter_grad for n in names]}


def _penalty_weights_over_ranks(fisher: Tensor, scores: Tensor) -> Tensor:
    """:func:`clfast.ops.rwalk_penalty_weights` of this rank's shards with the maxima over all ranks' shards: the
    global maximum of each, appended as one more element, is the maximum the op sees."""
    maxima = torch.stack([ops.state_max(fisher) if fisher.numel() else fisher.new_tensor(-torch.inf),
                          ops.state_max(scores) if scores.numel() else scores.new_tensor(-torch.inf)])
    dist.all_reduce_max_(maxima)
    return ops.rwalk_penalty_weights(torch.cat([fisher, maxima[:1]]), torch.cat([scores, maxima[1:]]))[:-1]
