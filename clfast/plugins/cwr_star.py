"""CWR* (Lomonaco & Maltoni; Avalanche's ``CWRStarPlugin``), ``docs/avalanche-semantics.md`` §4.8.

Copy-Weights-with-Re-init on one Linear layer (the "CWR layer", usually the classifier): before each
experience the rows of the classes in it are reset to their consolidated values (zero for new classes),
all other rows to zero; after it, the trained rows are consolidated into the saved ones with a weighted
average, and the saved rows are written back.

The math is Avalanche's; the implementation differs (``docs/avalanche-differences.md``, "CWR*"):
the state lives in tensors owned by the plugin, on the layer's device, with no numpy round trip, and
is saved by ``state_dict()`` (Avalanche attaches ``saved_weights``/``past_j``/``cur_j`` dicts to the
model object, outside its state dict). As in Avalanche, the layer's bias is ignored: it is neither
reset nor consolidated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_bool, is_int
from ..nn.latent_model import get_last_fc_layer  # re-exported: it also picks LatentModel's output
from ..training.plugins import SupervisedPlugin
from .base import STATE_VERSION, check_header

__all__ = ["CWRStarPlugin", "get_last_fc_layer"]


def _state_dtype(weight: Tensor) -> torch.dtype:
    return weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32


#: The per-class state tensors, state_dict key -> attribute (one row or entry per class of the layer).
_STATE = {"saved_weights": "_saved", "saved_mask": "_mask", "past_j": "_past_j", "cur_j": "_cur_j"}


def _copy_of(attr: str, doc: str) -> property:
    """A read-only property that returns a copy of the state tensor ``attr`` (callers cannot alias the state)."""
    return property(lambda self: getattr(self, attr).clone(), doc=doc)


class CWRStarPlugin(SupervisedPlugin, supports_distributed=True):
    """CWR* on the Linear layer ``cwr_layer_name`` of ``model`` (§4.8).

    Per class c the plugin keeps a saved row ``saved_weights[c]`` (valid where ``saved_mask[c]``), the
    number of training patterns consolidated so far ``past_j[c]``, and the current experience's count
    ``cur_j[c]``; ``cur_class`` lists the classes with ``cur_j > 0``.

    * ``before_training_exp``: from the second experience on, with ``freeze_remaining_model``, every
      parameter except the CWR layer's is frozen (``requires_grad=False``) and every module except the
      CWR layer put in eval mode. Then ``cur_j`` = class counts of ``strategy.experience.dataset.targets``,
      ``cur_class`` = the classes present, and :meth:`reset_weights` on them.
    * ``after_training_exp``: :meth:`consolidate_weights` then :meth:`set_consolidate_weights`.

    Under ``torch.distributed`` every rank holds the same state: the counts come from the whole experience's
    targets (not the rank's shard) and the layer's weights are the same on every rank (DDP, or AR1's gradient
    averaging). With ``freeze_remaining_model`` and a DDP-wrapped model, wrap it with
    ``find_unused_parameters=True`` (parameters are frozen after DDP registered them), or freeze before wrapping.

    AR1 adds the replay memory's labels with :meth:`add_counts` after ``before_training_exp`` and then
    calls ``reset_weights(plugin.cur_class)`` again (§4.5 step 4).

    A layer that grows (more outputs, e.g. an incremental classifier) gets its state zero-padded; a
    layer that shrinks or changes ``in_features`` is an error. The state follows the layer's device.

    Args:
        model: the model holding the CWR layer.
        cwr_layer_name: module name of the layer (an ``nn.Linear``, or any module with a 2-D ``weight``
            of shape (classes, features)). ``None``: the last ``nn.Linear`` in ``named_modules()`` order.
        freeze_remaining_model: freeze everything but the CWR layer from the second experience on.
    """

    def __init__(self, model: nn.Module, cwr_layer_name: str | None = None,
                 freeze_remaining_model: bool = True) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if cwr_layer_name is None:
            cwr_layer_name = get_last_fc_layer(model)[0]
        elif not isinstance(cwr_layer_name, str):
            raise TypeError(f"cwr_layer_name must be a str or None, got {type(cwr_layer_name).__name__}")
        self.model = model
        self.cwr_layer_name = cwr_layer_name
        self.freeze_remaining_model = check_bool("freeze_remaining_model", freeze_remaining_model)
        weight = self._weight()
        n, d = weight.shape
        dev, dtype = weight.device, _state_dtype(weight)
        self._saved = torch.zeros(n, d, dtype=dtype, device=dev)
        self._mask = torch.zeros(n, dtype=torch.bool, device=dev)
        self._past_j = torch.zeros(n, dtype=torch.long, device=dev)
        self._cur_j = torch.zeros(n, dtype=torch.long, device=dev)
        self._cur_class: list[int] = []

    # -- the layer -----------------------------------------------------------------------------------
    @property
    def cwr_layer(self) -> nn.Module:
        """The CWR layer, looked up by name (so a replaced, e.g. grown, layer is found)."""
        try:
            layer = self.model.get_submodule(self.cwr_layer_name)
        except AttributeError:
            raise ValueError(f"the model has no layer named {self.cwr_layer_name!r} (cwr_layer_name)") from None
        return layer

    def _weight(self) -> Tensor:
        layer = self.cwr_layer
        w = getattr(layer, "weight", None)
        if not isinstance(w, Tensor) or w.dim() != 2 or not w.is_floating_point():
            raise ValueError(f"CWR layer {self.cwr_layer_name!r} ({type(layer).__name__}) must have a 2-D "
                             f"floating-point weight (classes, features), like nn.Linear")
        return w

    def _sync(self) -> Tensor:
        """The layer's weight, after moving/padding the state to follow it."""
        w = self._weight()
        n, d = w.shape
        n_old, d_old = self._saved.shape
        if d != d_old:
            raise ValueError(f"CWR layer {self.cwr_layer_name!r} now has {d} input features, the CWR* state "
                             f"{d_old}")
        if n < n_old:
            raise ValueError(f"CWR layer {self.cwr_layer_name!r} shrank from {n_old} to {n} classes")
        for attr in _STATE.values():
            t = getattr(self, attr).to(w.device)
            if n > n_old:  # a grown layer: new classes start with no saved row and no counts
                t = torch.cat((t, t.new_zeros(n - n_old, *t.shape[1:])))
            setattr(self, attr, t)
        return w

    # -- read-only state -------------------------------------------------------------------------------
    saved_weights = _copy_of("_saved", "Consolidated rows, (classes, in_features); meaningful where "
                                       ":attr:`saved_mask` is True (a copy).")
    saved_mask = _copy_of("_mask", "Per class: True if it has a consolidated row (a copy).")
    past_j = _copy_of("_past_j", "Per class: training patterns consolidated so far (long, a copy).")
    cur_j = _copy_of("_cur_j", "Per class: patterns of the current experience (plus :meth:`add_counts`) (long, "
                               "a copy).")

    @property
    def cur_class(self) -> list[int]:
        """The classes with ``cur_j > 0``, ascending."""
        return list(self._cur_class)

    # -- counts --------------------------------------------------------------------------------------
    def _counts(self, labels: Any, n: int) -> Tensor:
        t = torch.as_tensor(labels)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"class labels must be integers, got {t.dtype}")
        t = t.reshape(-1).long()
        if t.numel() == 0:
            return torch.zeros(n, dtype=torch.long, device=self._saved.device)
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            raise ValueError(f"class label {bad} is outside the CWR layer {self.cwr_layer_name!r} "
                             f"({n} classes)")
        return torch.bincount(t, minlength=n).to(self._saved.device)

    def _set_cur_j(self, cur_j: Tensor) -> None:
        self._cur_j = cur_j
        self._cur_class = torch.nonzero(cur_j > 0).reshape(-1).tolist()

    def add_counts(self, labels: Tensor) -> None:
        """Add the per-class counts of ``labels`` to ``cur_j`` and recompute ``cur_class`` (AR1: the replay
        memory's labels, §4.5 step 4). Call :meth:`reset_weights` (``plugin.cur_class``) afterwards."""
        self._sync()
        self._set_cur_j(self._cur_j + self._counts(labels, self._saved.shape[0]))

    # -- CWR* ----------------------------------------------------------------------------------------
    def _class_mask(self, classes: Iterable[int], n: int, device: torch.device) -> Tensor:
        if isinstance(classes, Tensor):
            ids = classes.reshape(-1).tolist()
        elif isinstance(classes, Iterable) and not isinstance(classes, (str, bytes)):
            ids = list(classes)
        else:
            raise TypeError(f"classes must be an iterable of ints, got {type(classes).__name__}")
        for c in ids:
            if not is_int(c):
                raise TypeError(f"class ids must be ints, got {c!r}")
            if not 0 <= c < n:
                raise ValueError(f"class {c} is outside the CWR layer {self.cwr_layer_name!r} ({n} classes)")
        mask = torch.zeros(n, dtype=torch.bool, device=device)
        if ids:
            mask[torch.tensor(ids, dtype=torch.long, device=device)] = True
        return mask

    @torch.no_grad()
    def reset_weights(self, cur_classes: Iterable[int]) -> None:
        """W ← 0, then W[c] ← saved[c] for every c in ``cur_classes`` that has a saved row (§4.8)."""
        w = self._sync()
        keep = self._class_mask(cur_classes, w.shape[0], w.device) & self._mask
        w.copy_(torch.where(keep[:, None], self._saved.to(w.dtype), torch.zeros((), dtype=w.dtype,
                                                                                 device=w.device)))

    @torch.no_grad()
    def consolidate_weights(self) -> None:
        """Fold the trained rows of ``cur_class`` into the saved ones (§4.8).

        ā = the mean over *all* entries of W[cur_class, :] (one scalar); w̃_c = W[c] − ā. A class with a
        saved row: k = sqrt(past_j[c] / cur_j[c]), saved[c] ← (k·saved[c] + w̃_c)/(k + 1),
        past_j[c] += cur_j[c]. Otherwise saved[c] ← w̃_c and past_j[c] = cur_j[c].
        """
        w = self._sync()
        if not self._cur_class:
            return
        idx = torch.tensor(self._cur_class, dtype=torch.long, device=w.device)
        rows = w.detach().index_select(0, idx).to(self._saved.dtype)
        centred = rows - rows.mean()
        seen = self._mask.index_select(0, idx)
        past = self._past_j.index_select(0, idx)
        cur = self._cur_j.index_select(0, idx)
        k = torch.sqrt(past.to(rows.dtype) / cur.to(rows.dtype))[:, None]
        blended = (k * self._saved.index_select(0, idx) + centred) / (k + 1)
        self._saved.index_copy_(0, idx, torch.where(seen[:, None], blended, centred))
        self._past_j.index_copy_(0, idx, torch.where(seen, past + cur, cur))
        self._mask.index_fill_(0, idx, True)

    @torch.no_grad()
    def set_consolidate_weights(self) -> None:
        """W[c] ← saved[c] for every class with a saved row; other rows keep their trained values (§4.8)."""
        w = self._sync()
        w.copy_(torch.where(self._mask[:, None], self._saved.to(w.dtype), w))

    def freeze_other_layers(self) -> None:
        """Every module in eval mode with ``requires_grad=False``, except the CWR layer (train mode,
        trainable): Avalanche's ``freeze_everything(model)`` then ``unfreeze_everything(cwr_layer)``."""
        layer = self.cwr_layer
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        layer.train()
        for p in layer.parameters():
            p.requires_grad_(True)

    # -- hooks -----------------------------------------------------------------------------------------
    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self.freeze_remaining_model and strategy.clock.train_exp_counter > 0:
            self.freeze_other_layers()
        self._sync()
        self._set_cur_j(self._counts(strategy.experience.dataset.targets, self._saved.shape[0]))
        self.reset_weights(self._cur_class)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.consolidate_weights()
        self.set_consolidate_weights()

    # -- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The CWR* state (copies, on the state's device) and the constructor settings."""
        return {"plugin": "CWRStarPlugin", "version": STATE_VERSION, "cwr_layer_name": self.cwr_layer_name,
                "freeze_remaining_model": self.freeze_remaining_model,
                **{key: getattr(self, attr).clone() for key, attr in _STATE.items()},
                "cur_class": list(self._cur_class)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output, validated completely first (``ValueError``/``TypeError``;
        nothing changes on error). The state may have fewer classes than the layer now has (it is padded),
        not more; ``in_features`` and ``cwr_layer_name`` must match."""
        sd = check_header(state_dict, "CWRStarPlugin")
        if sd.get("cwr_layer_name") != self.cwr_layer_name:
            raise ValueError(f"the state is for CWR layer {sd.get('cwr_layer_name')!r}, this plugin's is "
                             f"{self.cwr_layer_name!r}")
        for key in _STATE:
            if not isinstance(sd.get(key), Tensor):
                raise TypeError(f"state {key!r} must be a tensor, got {type(sd.get(key)).__name__}")
        saved, mask, past, cur = (sd[key] for key in _STATE)
        if saved.dim() != 2 or not saved.is_floating_point():
            raise ValueError(f"state 'saved_weights' must be a 2-D float tensor, got {saved.dtype} "
                             f"{tuple(saved.shape)}")
        n = saved.shape[0]
        if mask.dtype != torch.bool or mask.shape != (n,):
            raise ValueError(f"state 'saved_mask' must be a bool tensor of shape ({n},)")
        for key, t in (("past_j", past), ("cur_j", cur)):
            if t.dtype != torch.long or t.shape != (n,):
                raise ValueError(f"state {key!r} must be a long tensor of shape ({n},)")
            if bool((t < 0).any()):
                raise ValueError(f"state {key!r} has negative counts")
        if not bool(torch.isfinite(saved).all()):
            raise ValueError("state 'saved_weights' has non-finite values")
        cur_class = sd.get("cur_class")
        if not isinstance(cur_class, (list, tuple)) or not all(is_int(c) for c in cur_class):
            raise TypeError("state 'cur_class' must be a list of ints")
        if sorted(cur_class) != torch.nonzero(cur > 0).reshape(-1).tolist():
            raise ValueError("state 'cur_class' does not match the classes with cur_j > 0")
        w = self._weight()
        if saved.shape[1] != w.shape[1]:
            raise ValueError(f"the state has {saved.shape[1]} input features, CWR layer {self.cwr_layer_name!r} "
                             f"has {w.shape[1]}")
        if n > w.shape[0]:
            raise ValueError(f"the state has {n} classes, CWR layer {self.cwr_layer_name!r} only {w.shape[0]}")
        freeze = check_bool("freeze_remaining_model", sd.get("freeze_remaining_model"))
        dev = w.device
        self._saved = saved.detach().to(device=dev, dtype=_state_dtype(w)).clone()
        self._mask = mask.to(dev).clone()
        self._past_j = past.to(dev).clone()
        self._cur_j = cur.to(dev).clone()
        self._cur_class = sorted(cur_class)
        self.freeze_remaining_model = freeze
        self._sync()
