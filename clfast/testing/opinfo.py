"""The op-spec registry of the ``torch.ops.clfast`` ops, in the spirit of PyTorch's OpInfo.

One :class:`OpInfo` per schema in ``csrc/ops.cpp``: its typed wrapper in :mod:`clfast.ops`, its plain-PyTorch
twin in :mod:`clfast._reference`, sample inputs per device and dtype (built on :func:`clfast.testing.cases.make_case`
and :func:`~clfast.testing.cases.make_brn_case`), how the twin's result lines up with the op's outputs, the
tolerance, and whether the op is differentiable or in place. ``tests/test_ops_registry.py`` checks that the
schemas, the wrappers, the twins and this registry name the same ops; ``tests/test_ops_contract.py`` runs opcheck
on every sample and ``tests/test_ops_reference.py`` holds every op with a twin to it.

Samples are argument tuples of the raw op (``torch.ops.clfast.<name>(*args)``, schema order); the twins take the
same arguments, which is why :attr:`OpInfo.expected` is usually just the twin itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clfast import _reference as ref
from clfast import ops
from clfast.testing.cases import brn_tol, low_precision_tol, make_brn_case, make_case, tol

__all__ = ["OPS", "OpInfo", "by_name", "clone_args", "observed_outputs"]

Args = tuple[Any, ...]
Sampler = Callable[[str, torch.dtype, torch.dtype], list[Args]]

#: Model tensors of the state-op samples: two matrices, a vector, an empty tensor and a 3-d block.
SAMPLE_SHAPES = [(4, 3), (5,), (0,), (2, 2, 2)]


@dataclass(frozen=True)
class OpInfo:
    """What the tests need to know about one op."""

    #: The schema name (``csrc/ops.cpp``), also the name of the wrapper in :mod:`clfast.ops`.
    name: str
    #: ``csrc/<family>/`` holds its kernels.
    family: str
    #: The Python module that registers its fake (and autograd): ``set_python_module`` in ``csrc/ops.cpp``.
    module: str
    #: ``(device, model_dtype, state_dtype) -> [args, ...]``: raw op arguments (BRN: activation, statistics dtype).
    samples: Sampler
    #: The twin in :mod:`clfast._reference` (its name is the op's without a trailing ``_``), or None.
    reference: Callable[..., Any] | None
    #: ``args -> outputs`` the twin predicts, in :func:`observed_outputs` order; default ``reference(*args)``.
    expected: Callable[[Args], Any] | None = None
    #: Has an autograd formula (``torch.library.register_autograd``).
    differentiable: bool = False
    #: Writes into some of its arguments (``Tensor(a!)`` in the schema) instead of returning new tensors.
    inplace: bool = False
    #: ``(model_dtype, state_dtype) -> assert_close kwargs`` against the twin.
    tol: Callable[[torch.dtype, torch.dtype], dict[str, float]] = tol
    #: Why there is no public wrapper (it is reached through another op's autograd), or "".
    no_wrapper: str = ""
    #: Why there is no twin in :mod:`clfast._reference`, or "".
    no_twin: str = ""
    #: (model_dtype, state_dtype) pairs the reference comparison runs over.
    dtypes: Sequence[tuple[torch.dtype, torch.dtype]] = (
        (torch.float32, torch.float32), (torch.float64, torch.float64), (torch.bfloat16, torch.float32),
        (torch.float16, torch.float64))

    @property
    def op(self) -> torch._ops.OpOverload:
        return getattr(torch.ops.clfast, self.name).default

    @property
    def wrapper(self) -> Callable[..., Any] | None:
        return None if self.no_wrapper else getattr(ops, self.name)

    def twin(self, args: Args) -> list[Any]:
        """The twin's prediction of :func:`observed_outputs` for ``args`` (which it does not modify).

        A tuple is several outputs; anything else (a tensor, a list of tensors) is one."""
        out = self.expected(args) if self.expected is not None else self.reference(*args)
        return list(out) if isinstance(out, tuple) else [out]


def observed_outputs(info: OpInfo, args: Args, result: Any) -> list[Any]:
    """What an op produced: the arguments it writes (schema order), then what it returns."""
    written = [a for a, s in zip(args, info.op._schema.arguments, strict=True)
               if s.alias_info is not None and s.alias_info.is_write]
    if result is None:
        returned: list[Any] = []
    elif isinstance(result, tuple):
        returned = list(result)
    else:
        returned = [result]
    return written + returned


def clone_args(args: Args) -> Args:
    """A detached copy of every tensor in ``args`` (lists of tensors included), for an op that writes them."""
    def one(a: Any) -> Any:
        if isinstance(a, Tensor):
            return a.detach().clone()
        if isinstance(a, list) and all(isinstance(t, Tensor | None) for t in a):
            return [None if t is None else t.detach().clone() for t in a]
        return a
    return tuple(one(a) for a in args)


# ---- samples ------------------------------------------------------------------------------------------------


def _state_case(device: str, model_dtype: torch.dtype, state_dtype: torch.dtype):
    c = make_case(SAMPLE_SHAPES, model_dtype, state_dtype, seed=0, device=device)
    imp, anchor, x, y = (c.state[k] for k in "abcd")
    grads_opt = [g if i != 1 else None for i, g in enumerate(c.grads)]
    return c, imp.abs(), anchor, x, y, grads_opt


def _sampler(build: Callable[..., list[Args]]) -> Sampler:
    def samples(device: str = "cpu", model_dtype: torch.dtype = torch.float32,
                state_dtype: torch.dtype = torch.float32) -> list[Args]:
        return build(*_state_case(device, model_dtype, state_dtype))
    return samples


def _brn_tensors(device: str, act_dtype: torch.dtype, stat_dtype: torch.dtype):
    """Planar and 2-d activations with an upstream gradient, the per-channel tensors, r_max and d_max, the
    activation's batch statistics and some r and d: the BRN samples' ingredients."""
    x, p = make_brn_case((4, 3, 5, 6), torch.float32, torch.float32, seed=7)
    x2d, _ = make_brn_case((6, 3), torch.float32, torch.float32, seed=8)
    g = torch.Generator().manual_seed(9)
    grad_y = torch.randn(x.shape, generator=g)
    mean, std = x.mean((0, 2, 3)), (x.var((0, 2, 3), unbiased=False) + 1e-5).sqrt()
    r, d = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g) * 0.1
    stats = (p["w"], p["b"], p["rm"], p["rs"], torch.tensor(1.5), torch.tensor(0.3), mean, std, r, d)
    acts = [t.to(act_dtype).to(device) for t in (x, x2d, grad_y)]
    return *acts, *(t.to(stat_dtype).to(device) for t in stats)


def _grad(ts: Sequence[Tensor]) -> list[Tensor]:
    return [t.clone().requires_grad_() for t in ts]


@_sampler
def _quad_penalty_samples(c, imp, anchor, x, y, grads_opt):
    return [(c.params, imp, anchor, 0.5), (_grad(c.params), imp, anchor, 0.5)]


@_sampler
def _quad_penalty_backward_samples(c, imp, anchor, x, y, grads_opt):
    return [(torch.tensor(2.0, dtype=imp.dtype, device=imp.device), c.params, imp, anchor, 0.5)]


@_sampler
def _quad_penalty_grad_samples(c, imp, anchor, x, y, grads_opt):
    modes = [int(ops.GradMode.ACCUMULATE), int(ops.GradMode.WRITE), int(ops.GradMode.ACCUMULATE),
             int(ops.GradMode.SKIP)]
    return [([g.clone() for g in c.grads], c.params, imp, anchor, 0.5, [0, 1, 0, 0]),
            ([g.clone() for g in c.grads], c.params, imp, anchor, 0.5, modes)]


@_sampler
def _mas_samples(c, imp, anchor, x, y, grads_opt):
    return [(imp.clone(), c.params, grads_opt, 0.5)]


@_sampler
def _ema_samples(c, imp, anchor, x, y, grads_opt):
    return [(imp.clone(), c.params, grads_opt, 0.9)]


@_sampler
def _path_samples(c, imp, anchor, x, y, grads_opt):
    return [(x.clone(), y.clone(), c.params, grads_opt)]


@_sampler
def _rwalk_score_samples(c, imp, anchor, x, y, grads_opt):
    return [(x.clone(), y.clone(), anchor.clone(), imp.clone(), c.params, 1e-7)]


@_sampler
def _si_samples(c, imp, anchor, x, y, grads_opt):
    return [(x.clone(), y.clone(), imp.clone(), anchor.clone(), c.params, 1.0, 1e-7, 1e-3)]


def _fresh(params: Sequence[Tensor]) -> list[Tensor]:
    """Detached copies of the model tensors, for an op that writes them."""
    return [p.detach().clone() for p in params]


@_sampler
def _sgd_samples(c, imp, anchor, x, y, grads_opt):
    """With momentum (first step, Nesterov), a penalty, maximize; plain SGD (no state at all); and the path integral
    with the penalised gradient (SI), with the task gradient (RWalk), and as the only state."""
    no_path = (None, None, False)
    return [(_fresh(c.params), grads_opt, x.clone(), imp, anchor, 0.1, 0.9, 0.0, 0.01, True, False, True, 0.5,
             *no_path),
            (_fresh(c.params), grads_opt, x.clone(), None, None, 0.1, 0.9, 0.2, 0.0, False, True, False, 0.0,
             *no_path),
            (_fresh(c.params), c.grads, None, imp, anchor, 0.05, 0.0, 0.0, 0.1, False, False, False, 2.0, *no_path),
            (_fresh(c.params), c.grads, None, None, None, 0.05, 0.0, 0.0, 0.0, False, False, False, 0.0, *no_path),
            (_fresh(c.params), grads_opt, x.clone(), imp, anchor, 0.1, 0.9, 0.0, 0.01, False, False, False, 0.5,
             y.clone(), anchor.clone(), True),
            (_fresh(c.params), grads_opt, x.clone(), imp, anchor, 0.1, 0.9, 0.1, 0.0, False, True, False, 0.5,
             y.clone(), anchor.clone(), False),
            (_fresh(c.params), c.grads, None, None, None, 0.05, 0.0, 0.0, 0.0, False, False, False, 0.0, y.clone(),
             anchor.clone(), True)]


@_sampler
def _adam_samples(c, imp, anchor, x, y, grads_opt):
    """Adam with L2 and a penalty at step 1; AdamW, maximize, low betas (torch's other lerp form) at step 7."""
    m, v = x.clone() * 0.1, y.abs() * 0.01
    no_path = (None, None, False)
    return [(_fresh(c.params), grads_opt, torch.zeros_like(m), torch.zeros_like(v), imp, anchor, 1e-2, 0.9, 0.999,
             1e-8, 0.01, False, False, 1, 0.5, *no_path),
            (_fresh(c.params), c.grads, m.clone(), v.clone(), None, None, 1e-3, 0.3, 0.9, 1e-6, 0.1, True, True, 7,
             0.0, *no_path),
            (_fresh(c.params), grads_opt, m.clone(), v.clone(), imp, anchor, 1e-2, 0.9, 0.999, 1e-8, 0.01, True,
             False, 3, 0.5, y.clone(), anchor.clone(), True),
            (_fresh(c.params), c.grads, m.clone(), v.clone(), None, None, 1e-3, 0.3, 0.9, 1e-6, 0.0, False, True, 2,
             0.0, y.clone(), anchor.clone(), False)]


@_sampler
def _state_max_samples(c, imp, anchor, x, y, grads_opt):
    return [(x,)]


@_sampler
def _rwalk_weights_samples(c, imp, anchor, x, y, grads_opt):
    return [(imp, x)]


@_sampler
def _nonfinite_samples(c, imp, anchor, x, y, grads_opt):
    poisoned = [p.clone() for p in c.params]
    poisoned[0].view(-1)[3] = float("nan")
    poisoned[3].view(-1)[0] = float("inf")
    return [(c.params,), (poisoned,)]


def _brn_forward_samples(device="cpu", act_dtype=torch.float32, stat_dtype=torch.float32):
    x, x2d, _, w, b, rm, rs, r_max, d_max, *_ = _brn_tensors(device, act_dtype, stat_dtype)
    wg, bg = _grad((w, b))
    xcl = x.contiguous(memory_format=torch.channels_last)
    return [(x, w, b, rm, rs, r_max, d_max, 1e-5),
            (*_grad((x,)), wg, bg, rm, rs, r_max, d_max, 1e-5),
            (*_grad((xcl,)), wg, bg, rm, rs, r_max, d_max, 1e-5),
            (*_grad((x2d,)), wg, bg, rm, rs, r_max, d_max, 1e-5)]


def _brn_eval_samples(device="cpu", act_dtype=torch.float32, stat_dtype=torch.float32):
    x, _, _, w, b, rm, rs, *_ = _brn_tensors(device, act_dtype, stat_dtype)
    return [(*_grad((x, w, b)), rm, rs), (x.contiguous(memory_format=torch.channels_last), w, b, rm, rs)]


def _brn_backward_samples(device="cpu", act_dtype=torch.float32, stat_dtype=torch.float32):
    x, _, gy, w, _, rm, rs, _, _, mean, std, r, d = _brn_tensors(device, act_dtype, stat_dtype)
    xcl = x.contiguous(memory_format=torch.channels_last)
    return [(gy, x, w, mean, std, r, d, True),
            (gy, xcl, w, rm, rs, torch.ones_like(r), torch.zeros_like(d), False)]


def _brn_update_samples(device="cpu", act_dtype=torch.float32, stat_dtype=torch.float32):
    *_, rm, rs, r_max, d_max, mean, std, _, _ = _brn_tensors(device, act_dtype, stat_dtype)
    return [(rm.clone(), rs.clone(), r_max.clone(), d_max.clone(), mean, std, 0.01, 0.1, 0.1, 3.0, 5.0),
            (rm.clone(), rs.clone(), r_max.clone() * 3, d_max.clone() * 20, mean, std, 0.5, 0.1, 0.1, 3.0, 5.0)]


# ---- how a twin's result lines up with the op's outputs ----------------------------------------------------------


def _quad_penalty_grad_expected(args: Args) -> list[Any]:
    """``quad_penalty_grad_`` writes .grad per mode and returns the value: both halves of the twin."""
    grads, params, importance, anchor, lam, modes = args
    g = ref.quad_penalty_grad(params, importance, anchor, lam)
    written = [old.double() + new if m == ops.GradMode.ACCUMULATE else new if m == ops.GradMode.WRITE else old
               for old, new, m in zip(grads, g, modes, strict=True)]
    return written, ref.quad_penalty(params, importance, anchor, lam)


def _double(args: Args) -> list[Any]:
    return [a.detach().double() if isinstance(a, Tensor) else a for a in args]


def _brn_forward_expected(args: Args) -> tuple[Tensor, ...]:
    x, w, b, rm, rs, r_max, d_max, eps = _double(args)
    return ref.batch_renorm_forward(x, w, b, rm, rs, r_max.item(), d_max.item(), eps)


def _brn_update_expected(args: Args) -> tuple[Tensor, ...]:
    rm, rs, r_max, d_max, *rest = _double(args)
    mean, std, r, d = ref.batch_renorm_update(rm, rs, r_max.item(), d_max.item(), *rest)
    return mean, std, torch.tensor(r, dtype=torch.float64), torch.tensor(d, dtype=torch.float64)


def _state_tol(model_dtype: torch.dtype, state_dtype: torch.dtype) -> dict[str, float]:
    """Results in a low-precision model dtype (gradients) get that dtype's tolerance; state results ``tol``'s."""
    if model_dtype in (torch.bfloat16, torch.float16):
        return low_precision_tol(model_dtype)
    return tol(model_dtype, state_dtype)


_STATE = {"family": "state_ops", "module": "clfast.ops.state_ops", "tol": _state_tol}
_OPTIM = {"family": "state_ops", "module": "clfast.ops.optim", "tol": _state_tol}
_BRN = {"family": "batch_renorm", "module": "clfast.ops.batch_renorm", "tol": brn_tol}

OPS: list[OpInfo] = [
    OpInfo("quad_penalty", samples=_quad_penalty_samples, reference=ref.quad_penalty, differentiable=True, **_STATE),
    OpInfo("quad_penalty_backward", samples=_quad_penalty_backward_samples, reference=ref.quad_penalty_backward,
           no_wrapper="the backward of quad_penalty, called by its autograd formula", **_STATE),
    OpInfo("quad_penalty_grad_", samples=_quad_penalty_grad_samples, reference=ref.quad_penalty_grad,
           expected=_quad_penalty_grad_expected, inplace=True, **_STATE),
    OpInfo("mas_importance_update_", samples=_mas_samples, reference=ref.mas_importance_update, inplace=True,
           **_STATE),
    OpInfo("ema_sq_update_", samples=_ema_samples, reference=ref.ema_sq_update, inplace=True, **_STATE),
    OpInfo("path_integral_update_", samples=_path_samples, reference=ref.path_integral_update, inplace=True,
           **_STATE),
    OpInfo("rwalk_score_update_", samples=_rwalk_score_samples, reference=ref.rwalk_score_update, inplace=True,
           **_STATE),
    OpInfo("si_consolidate_", samples=_si_samples, reference=ref.si_consolidate, inplace=True, **_STATE),
    OpInfo("state_max", samples=_state_max_samples, reference=ref.state_max, **_STATE),
    OpInfo("rwalk_penalty_weights", samples=_rwalk_weights_samples, reference=ref.rwalk_penalty_weights, **_STATE),
    OpInfo("sgd_step_", samples=_sgd_samples, reference=ref.sgd_step, inplace=True, **_OPTIM),
    OpInfo("adam_step_", samples=_adam_samples, reference=ref.adam_step, inplace=True, **_OPTIM),
    OpInfo("nonfinite_flags", family="state_ops", module="clfast.ops.finite", samples=_nonfinite_samples,
           reference=ref.nonfinite_flags),
    OpInfo("batch_renorm_forward", samples=_brn_forward_samples, reference=ref.batch_renorm_forward,
           expected=_brn_forward_expected, differentiable=True, **_BRN),
    OpInfo("batch_renorm_eval", samples=_brn_eval_samples, reference=ref.batch_renorm_eval,
           expected=lambda args: ref.batch_renorm_eval(*_double(args)), differentiable=True, **_BRN),
    OpInfo("batch_renorm_backward", samples=_brn_backward_samples, reference=None,
           no_wrapper="the backward of batch_renorm_forward and batch_renorm_eval, called by their autograd",
           no_twin="its twin is autograd through the twins of batch_renorm_forward / batch_renorm_eval "
                   "(tests/test_batch_renorm.py compares the gradients)", **_BRN),
    OpInfo("batch_renorm_update_", samples=_brn_update_samples, reference=ref.batch_renorm_update,
           expected=_brn_update_expected, inplace=True, **_BRN),
]


def by_name(name: str) -> OpInfo:
    """The registry entry of op ``name``."""
    for info in OPS:
        if info.name == name:
            return info
    raise KeyError(f"no OpInfo for {name!r}")
