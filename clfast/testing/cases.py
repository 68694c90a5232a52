"""Random inputs for the op tests (model tensors and flat state buffers; Batch Renormalization activations and
per-channel tensors), the shape sets, tolerances against the float64 reference, and the devices the tests run on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import clfast

MODEL_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
STATE_DTYPES = [torch.float32, torch.float64]

# Shape sets: empty model, one element, odd sizes with an empty tensor, a chunk-boundary
# crossing size (the CPU kernels cut work in 65536-element chunks), and many small tensors.
SHAPE_SETS = {
    "empty": [],
    "one": [()],
    "odd": [(7,), (3, 5), (0,), (1,), (2, 3, 3)],
    "large": [(70001,), (300, 257)],
    "many_small": [(i % 5 + 1, i % 3 + 1) for i in range(300)],
}

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and "cuda" in clfast.info()["devices"] else [])


def tol(model_dtype: torch.dtype, state_dtype: torch.dtype) -> dict[str, float]:
    """Comparison tolerance against the float64 reference."""
    if model_dtype == torch.float64 and state_dtype == torch.float64:
        return {"rtol": 1e-10, "atol": 1e-12}
    return {"rtol": 2e-5, "atol": 1e-6}


def low_precision_tol(model_dtype: torch.dtype) -> dict[str, float]:
    """Tolerance for results written back in the model dtype (e.g. gradients)."""
    if model_dtype == torch.bfloat16:
        return {"rtol": 1e-2, "atol": 1e-3}
    if model_dtype == torch.float16:
        return {"rtol": 2e-3, "atol": 1e-4}
    return {"rtol": 2e-5, "atol": 1e-6}


@dataclass
class Case:
    params: list[torch.Tensor]
    grads: list[torch.Tensor | None]
    state: dict[str, torch.Tensor]
    model_dtype: torch.dtype
    state_dtype: torch.dtype


def make_case(shapes, model_dtype, state_dtype, seed=0, device="cpu", none_grads=False,
              kinds=("a", "b", "c", "d")) -> Case:
    """Model tensors of ``shapes`` with gradients (every third one None with ``none_grads``) and one random flat
    state buffer per name in ``kinds``, all from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g).to(model_dtype).to(device) for s in shapes]
    grads: list[torch.Tensor | None] = [torch.randn(s, generator=g).to(model_dtype).to(device) for s in shapes]
    if none_grads:
        grads = [None if i % 3 == 1 else gr for i, gr in enumerate(grads)]
    total = sum(p.numel() for p in params)
    state = {k: torch.randn(total, generator=g, dtype=torch.float64).to(state_dtype).to(device) for k in kinds}
    return Case(params, grads, state, model_dtype, state_dtype)


def make_brn_case(shape, act_dtype, stat_dtype, seed, device="cpu") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A Batch Renormalization input of ``shape`` (N, C, *) and its per-channel tensors ``w``, ``b`` (affine),
    ``rm``, ``rs`` (running mean and std). Channel 0's r clamps at r_max and the last channel's d at -d_max."""
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    x = (torch.randn(shape, generator=g) * 2 + torch.randn(C, generator=g).reshape(1, C, *([1] * (len(shape) - 2))))
    p = {
        "w": torch.rand(C, generator=g) + 0.5,
        "b": torch.randn(C, generator=g),
        "rm": torch.randn(C, generator=g),
        "rs": torch.rand(C, generator=g) * 2 + 0.2,  # some r clamp at r_max, some not
    }
    p["rs"][0] = 1e-3  # channel 0: σ_B/σ_run far above r_max, so r clamps at r_max
    p["rm"][-1] = 100.0  # last channel: d clamps at -d_max
    p = {k: v.to(stat_dtype).to(device) for k, v in p.items()}
    return x.to(act_dtype).to(device), p


def brn_tol(act_dtype: torch.dtype, stat_dtype: torch.dtype) -> dict[str, float]:
    """Tolerance of a Batch Renormalization result against the float64 reference."""
    if act_dtype == torch.bfloat16:
        return {"rtol": 2e-2, "atol": 2e-2}
    if act_dtype == torch.float16:
        return {"rtol": 2e-3, "atol": 2e-3}
    if act_dtype == torch.float64 and stat_dtype == torch.float64:
        return {"rtol": 1e-10, "atol": 1e-10}
    return {"rtol": 1e-4, "atol": 1e-4}


def max_relative_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """max over parameters of max|a − b| / max|a|: how far two trainings of one architecture ended apart."""
    return max(((p - q).abs().max() / p.abs().max()).item()
               for p, q in zip(a.parameters(), b.parameters(), strict=True))
