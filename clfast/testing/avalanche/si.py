"""``AvalancheSI``: the Avalanche-style reference transcription (see the package docstring)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatch
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from ._common import (
    TensorDict,
    _Hooks,
    layers_and_params,
    pad_to,
)


class AvalancheSI(_Hooks):
    """Avalanche's ``SynapticIntelligencePlugin`` (spec §4.9).

    Allowed set A (recomputed at every use, with the ``layers_and_params`` scan): parameters with
    ``requires_grad``, not matching an exclusion pattern (each pattern p also as ``p + ".*"``, fnmatch), and
    not owned by a ``_NormBase`` module (BatchRenorm is not one, so it is regularised).

    State, all **flat CPU** tensors per name: ``ewc_data = (theta_star, omega)``, two dicts (θ* and Ω), and
    ``syn_data`` with ``old_theta``, ``new_theta``, ``grad``, ``trajectory``, ``cum_trajectory``.

    - ``before_training_exp``: zeros for new names; θ* ← θ; trajectory ← 0.
    - ``before_training_iteration``: old_theta ← θ.
    - ``before_backward`` (every experience, Ω = 0 in the first): ``loss += Σ_A (λ_e/2)·⟨Ω, (θ − θ*)²⟩``,
      λ_e = ``si_lambda[exp]`` (the last one reused), θ* and Ω moved to the device.
    - ``after_training_iteration``: new_theta ← θ; grad ← ``.grad`` (the total gradient, penalty included; a
      missing gradient raises); trajectory += grad ⊙ (new_theta − old_theta).
    - ``after_training_exp``: new_theta ← θ; cum += trajectory / ((new_theta − θ*)² + eps) (c = 1);
      Ω ← min(−cum, 0.001) (upper clip only); θ* ← copy of new_theta.

    ``si_alias_defect=True`` reproduces Avalanche exactly: the snapshots are ``p.detach().cpu().flatten()``,
    which on a CPU model is a *view of the parameter*, so θ*, old_theta and new_theta all follow θ, the
    trajectory and the penalty are 0 and Ω stays 0 (on CUDA ``.cpu()`` copies and the defect vanishes).
    The default ``False`` takes copies: what SI intends. ``device`` is where the penalty is computed
    (``"as_strategy"``: ``strategy.device``); the state stays on the CPU either way, as in Avalanche.
    """

    def __init__(self, si_lambda: float | Sequence[float], eps: float = 1e-7,
                 excluded_parameters: Iterable[str] | None = None, device: Any = "as_strategy", *,
                 si_alias_defect: bool = False) -> None:
        self._device = device
        self.si_lambda = list(si_lambda) if isinstance(si_lambda, (list, tuple)) else [si_lambda]
        self.eps = eps
        self.excluded_parameters: set[str] = set(excluded_parameters or [])
        self.si_alias_defect = si_alias_defect
        self.ewc_data: tuple[TensorDict, TensorDict] = ({}, {})
        self.syn_data: dict[str, TensorDict] = {"old_theta": {}, "new_theta": {}, "grad": {}, "trajectory": {},
                                                "cum_trajectory": {}}
        self.last_penalty = None

    @property
    def theta_star(self) -> TensorDict:
        """θ* per name (``ewc_data[0]``), flat."""
        return self.ewc_data[0]

    @property
    def omega(self) -> TensorDict:
        """Ω per name (``ewc_data[1]``), flat."""
        return self.ewc_data[1]

    def allowed_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The allowed set A, in ``named_parameters`` order."""
        patterns = set()
        for x in self.excluded_parameters:
            patterns.add(x)
            if not x.endswith("*"):
                patterns.add(x + ".*")
        for _, layer, pname, _ in layers_and_params(model):
            if isinstance(layer, _NormBase):
                patterns.add(pname)
        return [(n, p) for n, p in model.named_parameters()
                if p.requires_grad and not any(fnmatch(n, pat) for pat in patterns)]

    def _snapshot(self, t: Tensor) -> Tensor:
        flat = t.detach().cpu().flatten()
        if not self.si_alias_defect and flat.data_ptr() == t.data_ptr():
            flat = flat.clone()
        return flat

    def _extract_weights(self, model: nn.Module, target: TensorDict) -> None:
        for k, p in self.allowed_parameters(model):
            target[k] = self._snapshot(p)

    def _lambda(self, exp_id: int) -> float:
        return self.si_lambda[exp_id] if exp_id < len(self.si_lambda) else self.si_lambda[-1]

    @torch.no_grad()
    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        for k, p in self.allowed_parameters(strategy.model):
            n = p.numel()
            if k not in self.ewc_data[0]:
                for d in (*self.ewc_data, *self.syn_data.values()):
                    d[k] = torch.zeros(n, dtype=p.dtype)
            elif self.ewc_data[0][k].numel() != n:  # growth: zero-pad the flat vectors at the end
                for d in (*self.ewc_data, *self.syn_data.values()):
                    d[k] = pad_to(d[k], (n,))
        self._extract_weights(strategy.model, self.ewc_data[0])
        for traj in self.syn_data["trajectory"].values():
            traj.fill_(0.0)

    @torch.no_grad()
    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self._extract_weights(strategy.model, self.syn_data["old_theta"])

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        lam = self._lambda(strategy.clock.train_exp_counter)
        device = strategy.device if self._device == "as_strategy" else self._device
        loss: Tensor | None = None
        for k, p in self.allowed_parameters(strategy.model):
            w = p.to(device).flatten()
            anchor = self.ewc_data[0][k].to(device)
            omega = self.ewc_data[1][k].to(device)
            term = torch.dot(omega, (w - anchor) ** 2) * (lam / 2)
            loss = term if loss is None else loss + term
        if loss is not None:
            strategy.loss += loss.to(strategy.device)
            self._record(loss)

    @torch.no_grad()
    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self._extract_weights(strategy.model, self.syn_data["new_theta"])
        for k, p in self.allowed_parameters(strategy.model):
            if p.grad is None:
                raise AttributeError(f"SI: parameter {k!r} has no gradient")
            self.syn_data["grad"][k] = self._snapshot(p.grad)
        s = self.syn_data
        for k in s["trajectory"]:
            s["trajectory"][k] += s["grad"][k] * (s["new_theta"][k] - s["old_theta"][k])

    @torch.no_grad()
    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._extract_weights(strategy.model, self.syn_data["new_theta"])
        s, (theta_star, omega) = self.syn_data, self.ewc_data
        for k in s["cum_trajectory"]:
            s["cum_trajectory"][k] += 1 * s["trajectory"][k] / ((s["new_theta"][k] - theta_star[k]) ** 2 + self.eps)
        for k in s["cum_trajectory"]:
            omega[k] = torch.clamp(-s["cum_trajectory"][k], max=0.001)
            theta_star[k] = s["new_theta"][k].clone()
