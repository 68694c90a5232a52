"""Elastic Weight Consolidation (Kirkpatrick et al. 2017) as Avalanche's ``EWCPlugin`` computes it,
separate and online modes, on flat state and fused ops; optionally with the per-sample Fisher of van de Ven &
Tolias (2019)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .. import ops
from .._checks import check_bool, check_choice, check_float, check_int
from ..distributed import unwrap
from ..sharding import is_sharded_model
from ..state import FlatState
from .base import RegularizerPlugin
from .passes import gradient_pass, strategy_num_workers
from .per_sample import SAMPLE_LABELS, sample_sq_grad_pass
from .table import kept

__all__ = ["FISHER_ESTIMATES", "EWCPlugin"]

_MODES = ("separate", "online")
#: How the Fisher is estimated: Avalanche's squared batch gradients, or the mean of squared per-sample gradients.
FISHER_ESTIMATES = ("batch", "sample")


class EWCPlugin(RegularizerPlugin, supports_distributed=True):
    """EWC: penalise changes of the parameters weighted by the (empirical, batch-level) Fisher.

    After each experience the model is run in eval mode over the experience's data
    (``strategy.experience.dataset``, unshuffled, ``train_mb_size`` batches); per batch the criterion's
    gradient g is taken, and the importance of that experience is F = (1/N_batches) Σ_batches g⊙g
    (Avalanche's ``compute_importances``, ``fisher="batch"``). With ``fisher="sample"`` it is the mean over
    samples of the squared gradient of each sample's own negative log-likelihood, at its predicted class
    (``fisher_labels="pred"``, van de Ven & Tolias 2019), its target (``"true"``) or every class weighted by its
    predicted probability (``"all"``, their later code's default), over the first ``fisher_samples`` samples
    (all by default; :mod:`clfast.plugins.per_sample`). A batch gradient
    squares a mean over samples, so it holds cross terms that the per-sample mean does not; near a minimum, where
    the per-sample gradients cancel out, it is about ``train_mb_size`` times smaller. The anchor is the
    parameters at the end of the experience.
    From the second experience on the loss gets

    * ``mode="separate"``: λ·Σ_k Σ F_k⊙(θ−θ*_k)² over every earlier experience k;
    * ``mode="online"``: λ·Σ F̃⊙(θ−θ*)² with F̃ ← γ·F̃ + F_k (γ = ``decay_factor``) and θ* the latest anchor.

    "separate" is stored *folded*: Σ_k F_k(θ−θ*_k)² = F(θ−θ̄)² + C with F = Σ_k F_k,
    θ̄ = Σ_k F_kθ*_k / F and the constant C = Σ_k Σ F_k(θ*_k−θ̄)² (kept per experience by the
    parallel-axis rule, in float64). The gradient is exact, C is added to the reported penalty value,
    and the cost per iteration does not grow with the number of experiences.

    The penalty's value is added to ``strategy.loss`` in ``before_backward``; its gradient
    2λF⊙(θ−θ̄) is accumulated into ``.grad`` in ``after_backward`` (one fused op each).

    Args:
        ewc_lambda: penalty strength λ (>= 0).
        mode: ``"separate"`` or ``"online"``.
        decay_factor: γ in [0, 1], required by (and only allowed with) ``mode="online"``.
        keep_importance_data: also keep every experience's importance and parameters (``importances``,
            ``saved_params``, as Avalanche's dicts) for inspection; the penalty does not need them.
        fisher: ``"batch"`` (Avalanche's) or ``"sample"`` (per-sample gradients).
        fisher_labels: with ``fisher="sample"``, ``"pred"``, ``"true"`` or ``"all"``; ``"batch"`` uses the
            criterion on the targets, i.e. ``"true"``.
        fisher_samples: with ``fisher="sample"``, at most this many samples per experience (>= 1); None: all.

    The authors' EWC loss is (λ/2)·Σ_k F_k⊙(θ−θ*_k)² and their online EWC's (λ/2)·γ·F̃⊙(θ−θ*)²: the same
    penalties as the two modes here with ``ewc_lambda`` = λ/2 and λγ/2 (``decay_factor`` = γ).
    """

    STATE_NAME = "EWCPlugin"

    def __init__(self, ewc_lambda: float, mode: str = "separate", decay_factor: float | None = None,
                 keep_importance_data: bool = False, *, fisher: str = "batch", fisher_labels: str = "true",
                 fisher_samples: int | None = None) -> None:
        super().__init__()
        self.ewc_lambda = check_float("ewc_lambda", ewc_lambda, low=0.0)
        if mode not in _MODES:
            raise ValueError(f"mode must be 'separate' or 'online', got {mode!r}")
        if mode == "online" and decay_factor is None:
            raise ValueError("mode='online' needs a decay_factor")
        if mode == "separate" and decay_factor is not None:
            raise ValueError("decay_factor is only used with mode='online'")
        self.mode = mode
        self.decay_factor = None if decay_factor is None else check_float("decay_factor", decay_factor,
                                                                          low=0.0, high=1.0)
        self.keep_importance_data = check_bool("keep_importance_data", keep_importance_data)
        self.fisher = check_choice("fisher", fisher, FISHER_ESTIMATES)
        self.fisher_labels = check_choice("fisher_labels", fisher_labels, SAMPLE_LABELS)
        self.fisher_samples = None if fisher_samples is None else check_int("fisher_samples", fisher_samples, low=1)
        if fisher == "batch" and (fisher_labels != "true" or fisher_samples is not None):
            raise ValueError("fisher_labels other than 'true' and fisher_samples need fisher='sample' (the batch "
                             "estimate differentiates the criterion on the targets over the whole experience)")
        self._const = 0.0  # C of the folded separate mode
        self.importances: dict[int, dict[str, Tensor]] = {}
        self.saved_params: dict[int, dict[str, Tensor]] = {}

    # -- views ----------------------------------------------------------------------------------------
    @property
    def importance(self) -> dict[str, Tensor] | None:
        """The penalty's F per parameter (separate: Σ_k F_k; online: F̃), views of the flat state."""
        return self._views("importance")

    @property
    def anchor(self) -> dict[str, Tensor] | None:
        """The penalty's anchor per parameter (separate: the F-weighted mean θ̄; online: θ*)."""
        return self._views("anchor")

    @property
    def penalty_constant(self) -> float:
        """C of the folded separate mode (0 in online mode)."""
        return self._const

    # -- hooks ----------------------------------------------------------------------------------------
    def _penalty_strength(self, strategy: Any) -> float:
        return self.ewc_lambda

    def _penalty_constant(self) -> float:
        return self._const

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        table, model = self._table, strategy.model
        t = strategy.clock.train_exp_counter
        n_known, params = table.pending(model)
        current = self._fisher_pass(strategy, params, kwargs)
        # Validated: commit. New parameters are appended at the table's end, in this order.
        old = None if table.state is None else (table["importance"].clone(), table["anchor"].clone())
        table.sync(model, add_new=True)
        imp, anchor = table["importance"], table["anchor"]
        theta = torch.zeros_like(anchor)
        table.gather(model, theta)
        inactive = table.entry_slices(active=False)
        with torch.no_grad():
            if old is None:
                imp.copy_(current)
                anchor.copy_(theta)
            elif self.mode == "online":
                imp[:n_known].mul_(self.decay_factor).add_(current[:n_known])
                imp[n_known:].copy_(current[n_known:])
                with kept(anchor, inactive):
                    anchor.copy_(theta)
            else:
                self._fold(old, current, theta, n_known, inactive)
        if self.keep_importance_data:
            stored = imp if self.mode == "online" else current
            self.importances[t] = {e.name: stored[e.offset:e.offset + e.numel].view(e.shape).clone()
                                   for e, a in zip(table.state.entries, table.active, strict=True) if a}
            self.saved_params[t] = {n: p.detach().clone() for n, p in unwrap(model).named_parameters()}

    def _fold(self, old: tuple[Tensor, Tensor], current: Tensor, theta: Tensor, n_known: int,
              inactive: list[slice]) -> None:
        """Separate mode: add (F_cur, θ) to the folded (F, θ̄, C), exactly, by the parallel-axis rule."""
        imp, anchor = self._table["importance"], self._table["anchor"]
        f_old = torch.zeros_like(imp, dtype=torch.float64)
        a_old = torch.zeros_like(imp, dtype=torch.float64)
        f_old[:n_known], a_old[:n_known] = old[0].double(), old[1].double()
        f_cur, th = current.double(), theta.double()
        for s in inactive:  # parameters the model no longer has: nothing new for them
            f_cur[s] = 0.0
            th[s] = a_old[s]
        f_new = f_old + f_cur
        safe = torch.where(f_new > 0, f_new, torch.ones_like(f_new))
        a_new = torch.where(f_new > 0, (f_old * a_old + f_cur * th) / safe, th)
        extra = (f_old * (a_old - a_new) ** 2 + f_cur * (th - a_new) ** 2).sum()
        self._const += float(extra)
        imp.copy_(f_new)
        anchor.copy_(a_new)

    def _fisher_pass(self, strategy: Any, params: list[Tensor], kwargs: Mapping[str, Any]) -> Tensor:
        """Mean over batches of the squared batch gradient of the criterion (``fisher="batch"``), or over samples
        of the squared per-sample gradient (``"sample"``), in eval mode, flat."""
        if self.fisher == "sample":
            if self._table.sharded or is_sharded_model(strategy.model):
                raise ValueError("EWCPlugin(fisher='sample') does not run under FSDP2 (its per-sample gradients "
                                 "bypass the sharded backward); use fisher='batch'")
            total, n = sample_sq_grad_pass(strategy, params, labels=self.fisher_labels,
                                           max_samples=self.fisher_samples, num_workers=strategy_num_workers(kwargs))
            total /= max(n, 1)
            # NaN/inf raises here, before anything is committed (a temporary until then, as in the batch pass).
            guard = self._pass_guard()
            ops.check_finite("EWCPlugin per-sample Fisher", guard=guard, fisher=total)
            guard.check()
            return total
        device = params[0].device if params else strategy.device
        fisher = torch.zeros(sum(p.numel() for p in params), dtype=torch.float32, device=device)
        # Running mean of g² over batches: F ← (1/k)·g² + (1 − 1/k)·F; NaN/inf raises before writing, or
        # (deferred checks) once after the pass, before F is used. Zero (not None) gradients: a parameter
        # without a gradient in a batch then counts as 0 in the mean.
        guard = self._pass_guard()
        gradient_pass(strategy, params, strategy._criterion,
                      lambda k: ops.ema_sq_update_(fisher, params, 1.0 / k, check_finite=guard),
                      training=False, set_to_none=False, num_workers=strategy_num_workers(kwargs))
        guard.check()
        return fisher

    # -- state ----------------------------------------------------------------------------------------
    def _hparams(self) -> dict[str, Any]:
        return {"ewc_lambda": self.ewc_lambda, "mode": self.mode, "decay_factor": self.decay_factor,
                "fisher": self.fisher, "fisher_labels": self.fisher_labels, "fisher_samples": self.fisher_samples}

    def _extra_state(self) -> dict[str, Any]:
        """The mode, the constant C and the kept per-experience data (copies)."""
        return {"mode": self.mode, "const": self._const,
                "importances": {t: {n: v.clone() for n, v in d.items()} for t, d in self.importances.items()},
                "saved_params": {t: {n: v.clone() for n, v in d.items()} for t, d in self.saved_params.items()}}

    def _check_state(self, sd: Mapping[str, Any], model: nn.Module | None) -> tuple[FlatState | None, dict[str, Any]]:
        """The same ``mode``, C >= 0, the kept data as ``{experience: {name: tensor}}``, then the table."""
        if sd.get("mode") != self.mode:
            raise ValueError(f"the state is for mode {sd.get('mode')!r}, this plugin uses {self.mode!r}")
        const = sd.get("const", 0.0)
        if isinstance(const, bool) or not isinstance(const, (int, float)) or not const >= 0.0:
            raise ValueError(f"const must be a number >= 0, got {const!r}")
        kept_data = {}
        for key in ("importances", "saved_params"):
            value = sd.get(key, {})
            if not isinstance(value, Mapping) or not all(
                    isinstance(t, int) and isinstance(d, Mapping) and all(
                        isinstance(n, str) and isinstance(v, Tensor) for n, v in d.items())
                    for t, d in value.items()):
                raise ValueError(f"{key} must map experience indices to {{name: tensor}} dicts")
            kept_data[key] = {t: {n: v.clone() for n, v in d.items()} for t, d in value.items()}
        state, _ = super()._check_state(sd, model)
        return state, {"_const": float(const), **kept_data}
