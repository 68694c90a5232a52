"""Synaptic Intelligence (Zenke et al. 2017) as Avalanche's ``SynapticIntelligencePlugin`` computes it
(``docs/avalanche-semantics.md`` §4.9), with its state on the training device."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from .. import ops
from .._checks import check_float
from ..training.precision import step_was_taken
from .base import RegularizerPlugin

__all__ = ["SynapticIntelligencePlugin", "si_allowed_parameters"]

#: Avalanche's fixed constants of the consolidation (§4.9): c = 1, importance clipped above at 0.001.
SI_C = 1.0
SI_CLIP = 0.001


def si_allowed_parameters(model: nn.Module, excluded_parameters: Sequence[str] = ()) -> list[tuple[str, Tensor]]:
    """The parameters SI regularises (§4.9): ``requires_grad``, not matched by an exclusion pattern
    (each pattern p also excludes ``p.*``, fnmatch syntax), and not owned by a ``_NormBase`` module
    (BatchNorm / InstanceNorm; clfast's BatchRenorm is not one, as in Avalanche)."""
    patterns = set()
    for p in excluded_parameters:
        patterns.add(p)
        patterns.add(p + ".*")
    norm_owned = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, _NormBase):
            for p_name, _ in module.named_parameters(recurse=False):
                norm_owned.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return [(n, p) for n, p in model.named_parameters()
            if p.requires_grad and n not in norm_owned and not any(fnmatch.fnmatch(n, pat) for pat in patterns)]


class SynapticIntelligencePlugin(RegularizerPlugin, supports_distributed=True):
    """SI: penalise changes of the parameters that contributed most to the loss decrease.

    Per iteration the path integral ω −= g⊙(θ_new − θ_old) is accumulated by one fused op, with g the
    ``.grad`` the optimizer used (total loss, penalty included); with a clfast.optim optimizer the penalty and this
    update both go into the optimizer's fused step (``docs/optim.md``). At the end of an experience:
    cum += c·(−ω)/((θ − θ*)² + eps), Ω ← min(−cum, clip) (c = 1; clipped above only, at 0.001 as in Avalanche,
    or not at all with ``clip=None``), then Ω ← max(Ω, min_importance) when that is given, θ* ← θ. The loss
    gets (λ_e/2)·Σ Ω⊙(θ−θ*)² in every experience (λ_e = ``si_lambda[e]``, the last one reused): value added in
    ``before_backward``, gradient λ_eΩ⊙(θ−θ*)
    accumulated into ``.grad`` in ``after_backward``.

    Zenke et al.'s and van de Ven & Tolias's SI, c·Σ Ω⊙(θ−θ*)² with Ω unclipped and ξ = 0.1 in the
    denominator, is ``si_lambda=2c, eps=0.1, clip=None``.

    State (θ*, Ω, ω, cum and the θ_old snapshot) lives in flat buffers on the training device: no
    host copies per iteration, and the snapshot is a copy (Avalanche's CPU run aliases θ_old to θ,
    which zeroes the importance).

    Args:
        si_lambda: λ, or one λ per experience (the last is reused), each >= 0.
        eps: damping of the consolidation's denominator (> 0); Avalanche's 1e-7 (van de Ven & Tolias: 0.1).
        clip: the upper bound of Ω (> 0), or None for none.
        min_importance: the lower bound of Ω, or None for none (Avalanche's). Ω = −cum can be negative (a
            parameter whose path integral ω came out negative, e.g. under momentum), and then the penalty
            rewards moving away from θ*; ``0.0`` keeps it a true penalty (the command line's default).
        excluded_parameters: parameter-name patterns to leave out (``"output"`` also excludes
            ``"output.*"``); AR1 passes ``["output"]``.
        device: ``"as_strategy"`` (the training device) or that same device; the state must live
            where the parameters are.
    """

    STATE_NAME = "SynapticIntelligencePlugin"
    #: θ*, Ω, the path integral ω, its running sum over experiences and the θ_old snapshot.
    KINDS: ClassVar[Mapping[str, str]] = {"anchor": "copy", "importance": "zeros", "omega": "zeros",
                                          "cum": "zeros", "prev": "copy"}

    def __init__(self, si_lambda: float | Sequence[float], eps: float = 1e-7,
                 excluded_parameters: Sequence[str] | None = None, device: Any = "as_strategy", *,
                 clip: float | None = SI_CLIP, min_importance: float | None = None) -> None:
        super().__init__(select=lambda m: si_allowed_parameters(m, self.excluded_parameters))
        if isinstance(si_lambda, (list, tuple)):
            if not si_lambda:
                raise ValueError("si_lambda must not be an empty sequence")
            self.si_lambda = [check_float(f"si_lambda[{i}]", v, low=0.0) for i, v in enumerate(si_lambda)]
        else:
            self.si_lambda = [check_float("si_lambda", si_lambda, low=0.0)]
        self.eps = check_float("eps", eps, low=0.0, low_open=True)
        self.clip = None if clip is None else check_float("clip", clip, low=0.0, low_open=True)
        self.min_importance = None if min_importance is None else check_float("min_importance", min_importance)
        if self.min_importance is not None and self.clip is not None and self.min_importance > self.clip:
            raise ValueError(f"min_importance={self.min_importance} exceeds clip={self.clip}")
        if excluded_parameters is None:
            excluded_parameters = []
        if isinstance(excluded_parameters, str) or not all(isinstance(p, str) for p in excluded_parameters):
            raise TypeError("excluded_parameters must be a sequence of name patterns (strings), "
                            f"got {excluded_parameters!r}")
        self.excluded_parameters = list(excluded_parameters)
        if device != "as_strategy":
            try:
                device = torch.device(device)
            except (TypeError, RuntimeError) as err:
                raise ValueError(f"device must be 'as_strategy' or a torch device, got {device!r}") from err
        self._device = device
        # Whether this iteration's path integral went into the optimizer's step (_take_step_extras), and whether any
        # did in this experience (their NaN/inf is then checked on ω at its end).
        self._path_in_step = False
        self._fused_this_exp = False

    # -- views ----------------------------------------------------------------------------------------
    @property
    def ewc_data(self) -> tuple[dict[str, Tensor], dict[str, Tensor]] | None:
        """(θ*, Ω) per parameter name, flattened as in Avalanche (views of the flat state)."""
        st = self._table.state
        if st is None:
            return None
        return ({n: v.reshape(-1) for n, v in st.views("anchor").items()},
                {n: v.reshape(-1) for n, v in st.views("importance").items()})

    def lambda_for(self, experience_index: int) -> float:
        """λ of an experience (the last one for experiences beyond the list)."""
        return self.si_lambda[min(experience_index, len(self.si_lambda) - 1)]

    def device(self, strategy: Any) -> torch.device:
        """Where the state lives: the strategy's device unless given."""
        return strategy.device if self._device == "as_strategy" else self._device

    # -- hooks ----------------------------------------------------------------------------------------
    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        device = torch.device(self.device(strategy))
        params = si_allowed_parameters(strategy.model, self.excluded_parameters)
        if params and params[0][1].device != device:
            raise ValueError(f"SynapticIntelligencePlugin keeps its state with the parameters; device={device} "
                             f"differs from the parameters' device {params[0][1].device}")
        table = self._table
        table.sync(strategy.model, add_new=True, device=device)  # new parameters: zeros, θ* = θ
        if table.state is None:
            return
        table.copy_from_model("anchor", strategy.model)  # θ* ← θ (§4.9 before_training_exp)
        table.copy_from_model("prev", strategy.model)
        table["omega"].zero_()
        self._finite.reset()  # ω and θ_old, all that the per-iteration checks guard, start afresh
        self._fused_this_exp = False

    def _tracking(self) -> bool:
        """Some parameter is tracked (all hooks below are no-ops until then)."""
        return self._table.state is not None and self._table.state.numel != 0

    def _penalty_active(self, strategy: Any) -> bool:
        return self._tracking()  # in every experience (§4.9)

    def _penalty_strength(self, strategy: Any) -> float:
        return self.lambda_for(strategy.clock.train_exp_counter) / 2  # (λ_e/2)·Σ Ω⊙(θ−θ*)²

    def _take_step_extras(self, strategy: Any, params: list[Tensor]) -> bool:
        """ω −= g⊙(θ_new − θ_old) and θ_old ← θ_new inside the step, with the penalised gradient (the ``.grad``
        the unfused step would have read)."""
        self._path_in_step = strategy.optimizer.take_path_integral(params, self._table["omega"], self._table["prev"],
                                                                   penalised=True)
        return self._path_in_step

    def before_update(self, strategy: Any, **kwargs: Any) -> None:
        """The penalty and the path integral into the step (the base's ``before_update``); when another
        regulariser's penalty took the step's slot, ours went into ``.grad`` there, and the path integral goes into
        the step on the gradient with that one's penalty, the whole gradient the unfused update would read."""
        fusing = self._into_step is not None
        super().before_update(strategy, **kwargs)
        if fusing and not self._path_in_step:
            self._take_step_extras(strategy, self._table.tensors(strategy.model))

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        # The step did the update (a pending one is dropped when no step ran).
        fused = self._path_in_step and strategy.optimizer.pop_path_integral()
        self._path_in_step = False
        # Once per optimizer step: not on the first minibatches of an accumulation window, nor on a step the
        # GradScaler skipped (θ did not move; the gradients may be inf).
        if not self._tracking() or not step_was_taken(strategy):
            return
        if fused:
            self._fused_this_exp = True
            self._finite.tick()
            return
        params = self._table.tensors(strategy.model)
        # ω −= g⊙(θ_new − θ_old), θ_old ← θ_new; NaN/inf raises before writing, or (deferred checks) at the
        # experience's end. A parameter without a gradient adds nothing (Avalanche would crash).
        ops.path_integral_update_(self._table["omega"], self._table["prev"], params, check_finite=self._finite)
        self._finite.tick()

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if not self._tracking():
            return
        if self._fused_this_exp:  # the fused steps checked nothing: a NaN/inf g⊙Δθ stays in ω (inf − inf is NaN)
            ops.check_finite("SynapticIntelligencePlugin", guard=self._finite, omega=self._table["omega"])
        self._finite.check()  # deferred NaN/inf in this experience's ω: refuse before consolidating
        params = self._table.tensors(strategy.model)
        ops.si_consolidate_(self._table["cum"], self._table["importance"], self._table["omega"],
                            self._table["anchor"], params, c=SI_C, eps=self.eps,
                            clip=math.inf if self.clip is None else self.clip)
        if self.min_importance is not None:
            # A negative Ω makes the penalty a downward parabola: the loss falls without bound as θ leaves θ*.
            self._table["importance"].clamp_(min=self.min_importance)

    # -- state ----------------------------------------------------------------------------------------
    def _hparams(self) -> dict[str, Any]:
        return {"si_lambda": list(self.si_lambda), "eps": self.eps, "clip": self.clip,
                "min_importance": self.min_importance,
                "excluded_parameters": list(self.excluded_parameters)}
