"""Reference transcriptions of Avalanche's MAS, RWalk, Synaptic Intelligence and EWC plugins (the test oracle).

Plain PyTorch, written the way Avalanche writes them: Python loops over ``model.named_parameters()``, one
state tensor per parameter name, a handful of eager ops per parameter. They are our own code, written from
the semantics in ``shared/reference/avalanche-semantics.md``:

- §1 (hook API, hook order, clock: ``train_exp_counter == 0`` in ``after_training_exp`` means "first
  experience"; ``(train_iterations + 1) % k == 0`` in ``after_training_iteration``);
- §2 (MAS: §2.1 importance pass, §2.2 penalty, §2.3 shape changes / missing gradients / multi-head);
- §3 (RWalk: §3.1 hooks, §3.2 math, §3.3 quirks);
- §4.9 (Synaptic Intelligence) and §4.10 (``ParamData.expand``, ``get_layers_and_params``);
- EWC has no section in the spec; ``AvalancheEWC`` follows Avalanche's ``training/plugins/ewc.py`` at HEAD
  ``eb075be3`` (its behaviour is summarised in the class docstring).

They use only the strategy attributes of ``docs/plugin-api.md`` §4, so they run in ``clfast.strategies.Naive``
(and would run in an Avalanche strategy). Every hook is ``hook(self, strategy, **kwargs)``.

State is kept as ``dict[name -> torch.Tensor]`` (Avalanche wraps each tensor in a ``ParamData``; here the
tensor itself is stored). ``ParamData.expand`` (zero-pad one grown dimension, in place in the dict) is
``_expand_entry``. State tensors take the parameter's dtype (Avalanche's zero-initialised ``ParamData`` is
always float32; identical for float32 models, and it lets the tests run in float64).

Quirks reproduced, and the switches that turn them off (defaults = Avalanche's behaviour, except SI's aliasing):

=========================  =====================================================  ==========================
plugin                     Avalanche quirk                                        switch (default)
=========================  =====================================================  ==========================
MAS                        importance pass in *train* mode (BN statistics move),   always reproduced
                           abs of the *batch-mean* gradient of the squared output
                           norm, ÷ number of batches; α-decay of unused heads;
                           ``not strategy.loss`` raises on a zero loss
RWalk                      extra eval-mode forward/backward per iteration         ``grad_source="extra_pass"``
                           (the task gradient)                                    (or ``"training_backward"``)
RWalk                      the extra pass leaves the model in eval mode           ``eval_mode_leak=True``
RWalk                      0/0 = NaN penalties when a global max is 0             ``guard_zero_max=False``
SI                         on CPU ``.cpu().flatten()`` aliases the parameter, so  ``si_alias_defect=False``
                           θ_old = θ_new = θ* = θ and Ω stays 0                    (True reproduces it)
EWC                        the importance pass sets eval mode and never restores  ``eval_mode_leak=True``
=========================  =====================================================  ==========================

Every plugin also records ``last_penalty`` (a detached 0-d tensor: the value it last added to
``strategy.loss``, ``None`` before any) so tests can compare penalties.

Where Avalanche would crash on an edge case, these go on instead: RWalk builds penalties for names in both
``exp_scores`` and ``exp_importance`` (the spec's ∩; Avalanche raises ``KeyError`` for a scored name without a
Fisher) and gives a parameter created after ``before_training`` a zero ``checkpoint_loss``; online EWC drops
names present only in the previous importances (Avalanche's ``zip_longest`` asserts).
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from fnmatch import fnmatch
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.data import DataLoader

__all__ = ["AvalancheEWC", "AvalancheMAS", "AvalancheRWalk", "AvalancheSI", "avalanche_forward",
           "layers_and_params", "pad_to"]

TensorDict = dict[str, Tensor]


# ---------------------------------------------------------------------------------------------------- helpers


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def _is_task_aware(model: nn.Module) -> bool:
    cls = type(_unwrap(model))
    if any(base.__name__ == "MultiTaskModule" for base in cls.__mro__):
        return True
    try:
        return "task_labels" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


def avalanche_forward(model: nn.Module, x: Tensor, task_labels: Tensor) -> Tensor:
    """``model(x, t)`` for a multi-task model (a ``MultiTaskModule`` or a ``forward(..., task_labels)``),
    ``model(x)`` otherwise (spec §1.9, with the task-awareness rule of docs/plugin-api.md §4)."""
    return model(x, task_labels) if _is_task_aware(model) else model(x)


def pad_to(t: Tensor, shape: Sequence[int]) -> Tensor:
    """``ParamData.expand`` (spec §4.10): the same tensor when the shape is unchanged; a new zero tensor with
    ``t`` in its leading block when exactly one dimension grew. A shrink, a different number of dimensions
    or growth along two dimensions raise ``AssertionError``."""
    shape = torch.Size(shape)
    assert len(shape) == t.dim(), "expansion cannot add dimensions"
    grown = [i for i, (new, old) in enumerate(zip(shape, t.shape, strict=True)) if new != old]
    assert all(shape[i] > t.shape[i] for i in grown), "shape cannot decrease"
    assert len(grown) <= 1, "expansion along more than one dimension"
    if not grown:
        return t
    out = torch.zeros(shape, dtype=t.dtype, device=t.device)
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


def _expand_entry(d: TensorDict, name: str, shape: Sequence[int]) -> Tensor:
    """Pads ``d[name]`` to ``shape`` and stores the result back (``ParamData.expand`` mutates its holder)."""
    d[name] = pad_to(d[name], shape)
    return d[name]


def _zeros_like_params(model: nn.Module) -> TensorDict:
    """``zerolike_params_dict``: zeros for every named parameter, on its device."""
    return {k: torch.zeros(p.shape, dtype=p.dtype, device=p.device) for k, p in model.named_parameters()}


def _copy_params(model: nn.Module) -> TensorDict:
    """``copy_params_dict(model)``: a clone of every named parameter."""
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def _copy_grads(model: nn.Module) -> TensorDict:
    """``copy_params_dict(model, copy_grad=True)``: a clone of every ``.grad``; parameters without one are
    left out."""
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def layers_and_params(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module, str, Tensor]]:
    """Avalanche's ``get_layers_and_params`` scan (spec §4.10, §8.12): ``(layer name, layer, full parameter
    name, parameter)`` for the module's own parameters, then the same, recursively, for *every* descendant
    (``named_modules``, not children), so a parameter at depth d is listed about 2^(d-1) times. SI calls it
    three times per iteration; the duplication is kept because its cost is part of what the benchmark
    measures."""
    out = [(prefix[:-1], model, prefix + n, p) for n, p in model.named_parameters(recurse=False)]
    for name, layer in model.named_modules():
        if layer is model:
            continue
        out += layers_and_params(layer, prefix + name + ".")
    return out


def _save_modes(model: nn.Module) -> dict[nn.Module, bool]:
    return {m: m.training for m in model.modules()}


def _restore_modes(model: nn.Module, modes: dict[nn.Module, bool]) -> None:
    for m in model.modules():
        m.training = modes.get(m, True)


class _Hooks:
    """Marks the object as a plugin for the strategy's distributed check (Avalanche: False for all four)."""

    supports_distributed = False
    last_penalty: Tensor | None = None

    def _record(self, penalty: Any) -> None:
        self.last_penalty = penalty.detach().reshape(()).clone() if isinstance(penalty, Tensor) \
            else torch.tensor(float(penalty))


# ---------------------------------------------------------------------------------------------------- MAS


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


# ---------------------------------------------------------------------------------------------------- RWalk


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


# ---------------------------------------------------------------------------------------------------- SI


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


# ---------------------------------------------------------------------------------------------------- EWC


class AvalancheEWC(_Hooks):
    """Avalanche's ``EWCPlugin`` (``training/plugins/ewc.py``; not covered by the spec).

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
