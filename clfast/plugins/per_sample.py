"""Sums of squared per-sample gradients over an experience's data: the pass behind EWC's per-sample Fisher
(``EWCPlugin(fisher="sample")``, the estimate of van de Ven & Tolias 2019).

For each sample n the gradient g_n of the categorical negative log-likelihood −log softmax(f(x_n))[c_n] is
taken, with c_n the model's predicted class (``"pred"``) or the sample's target (``"true"``), in eval mode, and
Σ_n g_n⊙g_n is accumulated; ``"all"`` takes every class c, weighted by the model's probability p_n(c) (the
expectation over the model's own predictive distribution: the Fisher itself rather than an estimate from one
label; C backward passes per batch). Two ways give the same numbers (up to rounding):

* **nn.Linear identity**: when every tracked parameter is the weight or bias of an ``nn.Linear`` that a forward
  applies once, to a (batch, features) input, a whole batch costs one forward and one backward: the per-sample
  weight gradient is δ_n a_nᵀ (δ_n the gradient at the layer's output, a_n its input), so Σ_n (δ_n a_nᵀ)² =
  (δ²)ᵀ(a²), one matrix product, and the bias gets Σ_n δ_n². This assumes the model treats the samples of a
  batch independently in eval mode (as MLPs, and networks whose normalisation layers are in eval mode, do).
* **one sample at a time** otherwise (any other parameter, a layer applied twice, an input that is not (batch,
  features)): a forward and backward per sample, the authors' loop.

The pass runs without autocast (once per experience; the squares need float32's range) and sums in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Subset

from .. import distributed as dist
from .._checks import check_choice
from ..distributed import unwrap
from ..training.utils import make_loader, module_modes
from .passes import forward_batch

__all__ = ["SAMPLE_LABELS", "sample_sq_grad_pass"]

#: Which class a sample's log-likelihood is taken at: the model's prediction, the sample's target, or every class
#: weighted by its predicted probability.
SAMPLE_LABELS = ("pred", "true", "all")


def sample_sq_grad_pass(strategy: Any, params: Sequence[Tensor], *, labels: str, max_samples: int | None = None,
                        num_workers: int = 0) -> tuple[Tensor, int]:
    """(Σ_n g_n⊙g_n, N) over the first ``max_samples`` samples of ``strategy.experience.dataset`` (all of them
    when None), in dataset order: the sum flat in ``params``' order (float32, on their device), N the number of
    samples. Under ``torch.distributed`` each rank takes its shard and both are summed over the ranks.
    Parameters that do not require a gradient, or get none, add 0. Every module's mode is restored afterwards.
    """
    check_choice("labels", labels, SAMPLE_LABELS)
    params = list(params)
    model = unwrap(strategy.model)
    device = params[0].device if params else strategy.device
    total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float32, device=device)
    sums = [v.view(p.shape) for v, p in zip(total.split([p.numel() for p in params]), params, strict=True)]
    dataset = strategy.experience.dataset
    if max_samples is not None and max_samples < len(dataset):
        first = range(max_samples)
        dataset = dataset.subset(first) if hasattr(dataset, "subset") else Subset(dataset, first)
    loader = make_loader(dataset, strategy.train_mb_size, shuffle=False, num_workers=num_workers,
                         empty_name="the experience")
    owners = _linear_owners(model, params)
    count = 0
    with module_modes(model, training=False):
        for batch in loader:
            if owners is None or not _linear_batch(model, batch, strategy.device, owners, params, sums, labels):
                _one_at_a_time(model, batch, strategy.device, params, sums, labels)
            count += len(batch[0])
    if dist.world_size() > 1:
        dist.all_reduce_sum_(total)
        n = torch.tensor([float(count)], dtype=torch.float64, device=dist.comm_device())
        count = int(dist.all_reduce_sum_(n).item())
    return total, count


def _nlls(out: Tensor, y: Tensor, labels: str) -> list[Tensor]:
    """The losses to differentiate: Σ_n −log softmax(out_n)[c_n], a sum so that each sample's gradient is its own
    (a mean would scale it); for ``"all"`` one per class c, each sample's term weighted by √p_n(c), so that the
    squared gradients carry the weight p_n(c)."""
    if labels != "all":
        target = out.detach().argmax(dim=1) if labels == "pred" else y
        return [nn.functional.cross_entropy(out, target, reduction="sum")]
    log_p = nn.functional.log_softmax(out, dim=1)
    root_p = (0.5 * log_p.detach()).exp()
    return [-(root_p[:, c] * log_p[:, c]).sum() for c in range(out.shape[1])]


def _linear_owners(model: nn.Module, params: Sequence[Tensor]) -> dict[nn.Linear, dict[str, int]] | None:
    """``{linear: {"weight" | "bias": index into params}}`` when every parameter is one of an ``nn.Linear``'s,
    else None (the pass then goes one sample at a time)."""
    where: dict[int, tuple[nn.Linear, str]] = {}
    for module in model.modules():
        if type(module) is nn.Linear:  # a subclass may change forward; only the plain layer's gradient is known
            for name in ("weight", "bias"):
                p = getattr(module, name)
                if p is not None:
                    where[id(p)] = (module, name)
    owners: dict[nn.Linear, dict[str, int]] = {}
    for i, p in enumerate(params):
        if id(p) not in where:
            return None
        module, name = where[id(p)]
        owners.setdefault(module, {})[name] = i
    return owners


def _linear_batch(model: nn.Module, batch: Sequence[Any], device: torch.device, owners: dict[nn.Linear, dict[str, int]],
                  params: Sequence[Tensor], sums: list[Tensor], labels: str) -> bool:
    """Adds one batch by the nn.Linear identity; False (nothing added) when a layer ran twice or on an input that
    is not (batch, features)."""
    seen: dict[nn.Linear, list[Tensor]] = {}

    def keep(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> Tensor:
        # a² now (a later in-place op may change the input); the layer's own output is kept and the model goes on
        # with a copy, so that an in-place activation (ReLU(inplace=True)) cannot turn it into its own output.
        seen.setdefault(module, []).extend((inputs[0].detach().float().square(), output))
        return output.clone()

    handles = [m.register_forward_hook(keep) for m in owners]
    try:
        out, y = forward_batch(model, batch, device)
    finally:
        for h in handles:
            h.remove()
    if any(len(v) != 2 or v[0].dim() != 2 for v in seen.values()):
        return False
    used = [m for m, (_, o) in seen.items() if o.requires_grad]
    if not used:
        return True  # nothing on the path to the loss is trained: every gradient is 0
    losses = _nlls(out, y, labels)
    for k, loss in enumerate(losses):
        deltas = torch.autograd.grad(loss, [seen[m][1] for m in used], allow_unused=True,
                                     retain_graph=k + 1 < len(losses))
        with torch.no_grad():
            for m, d in zip(used, deltas, strict=True):
                if d is None:
                    continue
                d2 = d.float().square()
                for name, i in owners[m].items():
                    if params[i].requires_grad:
                        sums[i].add_(d2.t() @ seen[m][0] if name == "weight" else d2.sum(0))
    return True


def _one_at_a_time(model: nn.Module, batch: Sequence[Any], device: torch.device, params: Sequence[Tensor],
                   sums: list[Tensor], labels: str) -> None:
    """Adds one batch with a forward and backward per sample (any model)."""
    trained = [i for i, p in enumerate(params) if p.requires_grad]
    if not trained:
        return
    for n in range(len(batch[0])):
        out, y = forward_batch(model, [part[n:n + 1] for part in batch], device)
        losses = _nlls(out, y, labels)
        for k, loss in enumerate(losses):
            grads = torch.autograd.grad(loss, [params[i] for i in trained], allow_unused=True,
                                        retain_graph=k + 1 < len(losses))
            with torch.no_grad():
                for i, g in zip(trained, grads, strict=True):
                    if g is not None:
                        sums[i].add_(g.float().square())
