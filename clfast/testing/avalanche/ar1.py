"""Avalanche's ``AR1`` as an eager composition in clfast's template: the peer of ``benchmarks/bench_ar1.py``.

Written from ``docs/avalanche-semantics.md`` §4 the way Avalanche writes it: eager ``BatchRenorm2D`` (with its eval
branch, which still computes the batch statistics), CWR* consolidating in numpy with its state on the model object,
SI from :class:`AvalancheSI` (state on the CPU), the memory on the CPU replayed in sequential unshuffled slices,
every first-epoch latent appended to a CPU buffer with ``torch.cat``, and the §4.7 update with its dataset-order
labels. :class:`EagerLatentNet` is the hand-written latent wrapper an Avalanche user writes to give AR1 another
backbone (Avalanche's ``MobilenetV1`` forward over given modules).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...nn import LayerAndParameter, filter_bn_and_brn, freeze_up_to
from ...training import SupervisedTemplate
from ...training.utils import make_loader
from .brn import AvalancheBatchRenorm2D
from .si import AvalancheSI

__all__ = ["EagerAR1", "EagerBRN", "EagerCWRStar", "EagerLatentNet", "eager_change_brn_pars", "eager_replace_bn",
           "examples_per_class", "filter_norm_layers"]


class EagerBRN(AvalancheBatchRenorm2D):
    """Avalanche's ``BatchRenorm2D`` (§5): the eager training forward of :class:`AvalancheBatchRenorm2D` plus the eval
    branch, which still computes (and discards) the batch statistics; built from a BatchNorm as
    ``replace_bn_with_brn``."""

    def __init__(self, bn: nn.BatchNorm2d, momentum: float, step: float, max_r_max: float, max_d_max: float):
        super().__init__(bn.num_features, eps=bn.eps, momentum=momentum, step=step)
        with torch.no_grad():
            self.gamma.copy_(bn.weight.reshape(1, -1, 1, 1))
            self.beta.copy_(bn.bias.reshape(1, -1, 1, 1))
        self.running_avg_mean = bn.running_mean.detach().clone().reshape(1, -1, 1, 1)
        self.running_avg_std = torch.sqrt(bn.running_var.detach().clone()).reshape(1, -1, 1, 1)
        self.max_r_max, self.max_d_max = max_r_max, max_d_max

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return super().forward(x)
        self.running_avg_mean = self.running_avg_mean.to(x.device)
        self.running_avg_std = self.running_avg_std.to(x.device)
        torch.mean(x, dim=(0, 2, 3), keepdim=True)  # Avalanche computes the batch statistics in eval mode too
        torch.sqrt(torch.var(x, dim=(0, 2, 3), keepdim=True, unbiased=False) + self.eps)
        x = (x - self.running_avg_mean) / self.running_avg_std
        return self.gamma * x + self.beta


def eager_replace_bn(m: nn.Module, **kw: float) -> None:
    for name, child in list(m.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(m, name, EagerBRN(child, **kw))
        else:
            eager_replace_bn(child, **kw)


def eager_change_brn_pars(m: nn.Module, momentum: float, r_max: float, d_max: float) -> None:
    for layer in m.modules():
        if isinstance(layer, EagerBRN):
            layer.momentum, layer.r_max, layer.d_max = momentum, r_max, d_max


def examples_per_class(targets: Any) -> dict[int, int]:
    classes, counts = torch.unique(torch.as_tensor(targets), return_counts=True)
    out: dict[int, int] = defaultdict(int)
    out.update({int(c): int(n) for c, n in zip(classes, counts, strict=True)})
    return out


def filter_norm_layers(entry: LayerAndParameter) -> bool:
    """Avalanche's ``filter_bn_and_brn`` (§4.4), which knows its own ``BatchRenorm2D``: here :class:`EagerBRN`."""
    return filter_bn_and_brn(entry) and not isinstance(entry.layer, AvalancheBatchRenorm2D)


class EagerCWRStar:
    """Avalanche's ``CWRStarPlugin`` (§4.8): state on the model object, consolidation in numpy on the CPU, the layer
    looked up by name every time."""

    def __init__(self, model: nn.Module, cwr_layer_name: str) -> None:
        self.model, self.cwr_layer_name = model, cwr_layer_name
        self.cur_class: list[int] = []
        model.saved_weights, model.past_j, model.cur_j = {}, defaultdict(int), defaultdict(int)

    def _layer(self) -> nn.Module:
        return dict(self.model.named_modules())[self.cwr_layer_name]

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.model.cur_j = examples_per_class(strategy.experience.dataset.targets)
        self.cur_class = [c for c in self.model.cur_j if self.model.cur_j[c] > 0]
        self.reset_weights(self.cur_class)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.consolidate_weights()
        self.set_consolidate_weights()

    @torch.no_grad()
    def consolidate_weights(self) -> None:
        w = self._layer().weight
        globavg = np.average(w.detach().cpu().numpy()[self.cur_class])
        for c in self.cur_class:
            new_w = w.detach().cpu().numpy()[c] - globavg
            if c in self.model.saved_weights:
                wpast_j = np.sqrt(self.model.past_j[c] / self.model.cur_j[c])
                self.model.saved_weights[c] = (self.model.saved_weights[c] * wpast_j + new_w) / (wpast_j + 1)
                self.model.past_j[c] += self.model.cur_j[c]
            else:
                self.model.saved_weights[c] = new_w
                self.model.past_j[c] = self.model.cur_j[c]

    @torch.no_grad()
    def set_consolidate_weights(self) -> None:
        w = self._layer().weight
        for c, saved in self.model.saved_weights.items():
            w[c].copy_(torch.from_numpy(saved))

    @torch.no_grad()
    def reset_weights(self, cur_clas: list[int]) -> None:
        w = self._layer().weight
        w.fill_(0.0)
        for c, saved in self.model.saved_weights.items():
            if c in cur_clas:
                w[c].copy_(torch.from_numpy(saved))


class EagerAR1(SupervisedTemplate):
    """Avalanche's ``AR1`` (§4.5-4.7) on clfast's template steps: its own modes, freezing, BRN switch and SGD per
    experience; the §4.6 composition with sequential unshuffled replay slices; first-epoch latents appended with
    ``torch.cat`` on the CPU; the §4.7 update (with its dataset-order labels)."""

    def __init__(self, model: nn.Module, *, hparams: dict[str, float], rm_sz: int, train_mb_size: int,
                 train_epochs: int, ewc_lambda: float, device: str, plugins: list[Any],
                 freeze_below_layer: str = "lat_features.19.bn") -> None:
        self.hparams = hp = dict(hparams)
        eager_replace_bn(model, momentum=hp["init_update_rate"], step=hp["inc_step"], max_r_max=hp["max_r_max"],
                         max_d_max=hp["max_d_max"])
        optimizer = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["l2"])
        own: list[Any] = []
        if ewc_lambda:
            own.append(AvalancheSI(ewc_lambda, excluded_parameters=["output"], si_alias_defect=False))
        self.cwr = EagerCWRStar(model, "output")
        own.append(self.cwr)
        super().__init__(model, optimizer, None, train_mb_size=train_mb_size, train_epochs=train_epochs,
                         eval_mb_size=train_mb_size, device=device, plugins=[*plugins, *own], evaluator=None)
        self.rm_sz, self.freeze_below_layer = rm_sz, freeze_below_layer
        self.rm: list[Tensor] | None = None
        self.cur_acts: Tensor | None = None
        self.replay_mb_size = 0
        self._it = 0
        self._lat_mb_x: Tensor | None = None
        self._lat_acts: Tensor | None = None

    def _before_training_exp(self, **kwargs: Any) -> None:
        hp = self.hparams
        self.model.eval()
        self.model.end_features.train()
        self.model.output.train()
        if self.clock.train_exp_counter > 0:
            freeze_up_to(self.model, self.freeze_below_layer, layer_filter=filter_norm_layers)
            eager_change_brn_pars(self.model, hp["inc_update_rate"], hp["max_r_max"], hp["max_d_max"])
            self.model.to(self.device)
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=hp["inc_lr"], momentum=hp["momentum"],
                                             weight_decay=hp["l2"])
        super()._before_training_exp(**kwargs)
        if self.clock.train_exp_counter > 0 and self.rm is not None:
            for class_id, count in examples_per_class(self.rm[1]).items():
                self.model.cur_j[class_id] += count
            self.cwr.cur_class = [c for c in self.model.cur_j if self.model.cur_j[c] > 0]
            self.cwr.reset_weights(self.cwr.cur_class)

    def make_train_dataloader(self, **kwargs: Any) -> None:
        current_batch_mb_size = self.train_mb_size
        if self.clock.train_exp_counter > 0:
            n = len(self.adapted_dataset)
            current_batch_mb_size = n // ((n + self.rm_sz) // self.train_mb_size)
        current_batch_mb_size = max(1, current_batch_mb_size)
        self.replay_mb_size = max(0, self.train_mb_size - current_batch_mb_size)
        self.dataloader = make_loader(self.adapted_dataset, current_batch_mb_size, shuffle=True)

    def training_epoch(self, **kwargs: Any) -> None:
        self._it = 0  # the iteration's index in the epoch: which sequential replay slice it takes
        super().training_epoch(**kwargs)

    def _before_forward_step(self) -> None:
        self._lat_mb_x = None
        if self.clock.train_exp_counter > 0 and self.rm is not None:
            start, end = self.replay_mb_size * self._it, self.replay_mb_size * (self._it + 1)
            self._lat_mb_x = self.rm[0][start:end].to(self.device)
            lat_mb_y = self.rm[1][start:end].to(self.device)
            self.mbatch[1] = torch.cat((self.mb_y, lat_mb_y), 0)
            self.mbatch[2] = torch.cat((self.mbatch[2], torch.zeros(len(lat_mb_y), device=self.device)), 0)

    def forward(self) -> Any:
        if not self.is_training:
            return super().forward()
        out, self._lat_acts = self.model(self.mb_x, latent_input=self._lat_mb_x, return_lat_acts=True)
        return out

    def _after_forward_step(self) -> None:
        if self.clock.train_exp_epochs == 0:  # every first-epoch latent, appended on the CPU
            lat_acts = self._lat_acts.detach().clone().cpu()
            self.cur_acts = lat_acts if self._it == 0 else torch.cat((self.cur_acts, lat_acts), 0)
        self._lat_acts = None
        self._it += 1

    def _after_training_exp(self, **kwargs: Any) -> None:
        assert self.cur_acts is not None
        h = min(self.rm_sz // (self.clock.train_exp_counter + 1), self.cur_acts.size(0))
        idxs_cur = torch.randperm(self.cur_acts.size(0))[:h]
        rm_add = [self.cur_acts[idxs_cur], torch.as_tensor(self.experience.dataset.targets)[idxs_cur]]
        if self.clock.train_exp_counter == 0 or self.rm is None:
            self.rm = rm_add
        else:
            idxs_2_replace = torch.randperm(self.rm[0].size(0))[:h]
            for j, idx in enumerate(idxs_2_replace):
                self.rm[0][idx] = rm_add[0][j]
                self.rm[1][idx] = rm_add[1][j]
        self.cur_acts = None
        super()._after_training_exp(**kwargs)


class EagerLatentNet(nn.Module):
    """Avalanche's ``MobilenetV1`` forward over given modules: ``lat_features`` and ``end_features`` are
    ``nn.Sequential`` s of them, ``output`` the classifier; ``forward(x, latent_input, return_lat_acts)`` runs
    ``lat_features`` under ``no_grad`` when latents are replayed, concatenates them after the current ones, and
    flattens ``end_features``' output into ``output``."""

    def __init__(self, lat_features: Sequence[nn.Module], end_features: Sequence[nn.Module], output: nn.Module):
        super().__init__()
        self.lat_features = nn.Sequential(*lat_features)
        self.end_features = nn.Sequential(*end_features)
        self.output = output

    def forward(self, x: Tensor, latent_input: Tensor | None = None, return_lat_acts: bool = False) -> Any:
        if latent_input is not None:
            with torch.no_grad():
                orig_acts = self.lat_features(x)
            lat_acts = torch.cat((orig_acts, latent_input), 0)
        else:
            orig_acts = self.lat_features(x)
            lat_acts = orig_acts
        logits = self.output(self.end_features(lat_acts).view(lat_acts.size(0), -1))
        return (logits, orig_acts) if return_lat_acts else logits
