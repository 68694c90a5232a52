"""Freezing utilities of Avalanche's ``training/utils.py`` as AR1 uses them (``avalanche-semantics.md`` §4.4).

``get_layers_and_params`` and the walk of ``freeze_up_to`` are Avalanche's, repetitions included. One
deliberate difference (``docs/avalanche-differences.md``, "freeze_up_to"): ``freeze_until_layer`` may be a
layer (module) name or a parameter name (meaning the layer that owns it), and a name that matches
neither raises ``ValueError``. Avalanche compares it with layer names only, so a parameter name (AR1's
old default ``"lat_features.19.bn.beta"``) silently froze the whole model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .batch_renorm import _BatchRenorm

__all__ = ["LayerAndParameter", "filter_bn_and_brn", "freeze_up_to", "get_layers_and_params"]


class LayerAndParameter(NamedTuple):
    """One entry of :func:`get_layers_and_params` (Avalanche's namedtuple, same field order)."""

    layer_name: str
    layer: nn.Module
    parameter_name: str
    parameter: nn.Parameter


def get_layers_and_params(model: nn.Module, prefix: str = "") -> list[LayerAndParameter]:
    """Avalanche's ``get_layers_and_params`` (§4.4): ``model``'s own parameters, then the same call on
    *every* descendant in ``named_modules()`` order.

    Each parameter therefore appears once per chain of strict ancestors between the model and its
    owner (2^(depth−1) times for an owner at depth ≥ 1): 325 entries for the 82 parameters of
    :class:`~clfast.nn.MobileNetV1`. Names are always full (``prefix`` + path). First occurrences follow
    ``named_parameters()`` order.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    result = [LayerAndParameter(prefix[:-1], model, prefix + name, p)
              for name, p in model.named_parameters(recurse=False)]
    for name, layer in model.named_modules():
        if layer is model:
            continue
        result += get_layers_and_params(layer, prefix=prefix + name + ".")
    return result


def filter_bn_and_brn(entry: LayerAndParameter) -> bool:
    """AR1's ``filter_bn_and_brn`` (§4.4): True unless the entry's layer is a normalisation layer
    (a torch ``_NormBase``, i.e. BatchNorm/InstanceNorm, or a clfast Batch Renormalization layer)."""
    return not isinstance(entry.layer, (_NormBase, _BatchRenorm))


def _resolve_target(model: nn.Module, name: str) -> str:
    """The module name meant by ``name``: itself if a module has that name, else the owner of the
    parameter of that name; ``ValueError`` if neither exists."""
    if not isinstance(name, str):
        raise TypeError(f"freeze_until_layer must be a str or None, got {type(name).__name__}")
    if name == "":
        raise ValueError("freeze_until_layer must be a non-empty layer or parameter name (None freezes everything)")
    modules = dict(model.named_modules())
    if name in modules:
        return name
    owner, _, leaf = name.rpartition(".")
    if owner in modules and leaf in dict(modules[owner].named_parameters(recurse=False)):
        return owner
    close = sorted(n for n in modules if n and (n.startswith(name.split(".")[0]) or name.startswith(n)))[:5]
    raise ValueError(f"freeze_until_layer={name!r} matches no layer and no parameter of the model"
                     + (f" (layers with a similar name: {close})" if close else ""))


def freeze_up_to(
    model: nn.Module,
    freeze_until_layer: str | None = None,
    set_eval_mode: bool = True,
    set_requires_grad_false: bool = True,
    layer_filter: Callable[[LayerAndParameter], bool] | None = None,
) -> tuple[set[str], set[str]]:
    """Freeze the parameters of every layer before ``freeze_until_layer`` (Avalanche's ``freeze_up_to``, §4.4).

    The walk is Avalanche's: over :func:`get_layers_and_params` (with its repetitions), stopping at the
    first entry of the target layer (the target itself is not frozen). For each entry the filter lets
    through (``layer_filter(entry)`` True, or no filter), ``requires_grad`` is set to False (when
    ``set_requires_grad_false``) and the layer is marked as frozen unless already marked; an entry the
    filter rejects marks its layer as *not* frozen, overriding. Marked layers get ``.eval()`` (when
    ``set_eval_mode``).

    Args:
        model: the model.
        freeze_until_layer: a layer (module) name or a parameter name; a parameter name means the layer
            that owns it (``"lat_features.19.bn.beta"`` means ``"lat_features.19.bn"``). A layer without
            parameters of its own (a block, a pool) stops the walk at the first parameter inside or after
            it in ``named_modules()`` order. ``None`` freezes everything the filter lets through. A name
            that matches neither a layer nor a parameter raises ``ValueError`` (Avalanche: freezes everything).
        set_eval_mode: put the frozen layers in eval mode.
        set_requires_grad_false: set ``requires_grad=False`` on the frozen parameters.
        layer_filter: ``entry -> bool``; e.g. :func:`filter_bn_and_brn` to leave normalisation layers alone.

    Returns:
        ``(frozen_layer_names, frozen_parameter_names)``. As in Avalanche, the layer names are collected
        only with ``set_eval_mode`` and the parameter names only with ``set_requires_grad_false``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if layer_filter is not None and not callable(layer_filter):
        raise TypeError(f"layer_filter must be callable or None, got {type(layer_filter).__name__}")
    stop_at: set[str] | None = None
    if freeze_until_layer is not None:
        target = _resolve_target(model, freeze_until_layer)
        # Module names at or after the target in named_modules() order: the walk stops at the first entry
        # whose layer is one of them. For a target with parameters of its own this is exactly Avalanche's
        # stop (the first entry whose layer_name equals the target): first occurrences follow
        # named_parameters() order, so no entry of a later module comes before the target's own.
        names = [n for n, _ in model.named_modules()]
        stop_at = set(names[names.index(target):])

    # Avalanche marks a layer frozen at its first accepted entry and unfrozen at any rejected one, the latter
    # overriding: so a layer ends up frozen iff the walk met it accepted and never rejected.
    accepted: dict[str, nn.Module] = {}
    rejected: set[str] = set()
    frozen_params: set[str] = set()
    for entry in get_layers_and_params(model):
        if stop_at is not None and entry.layer_name in stop_at:
            break
        if layer_filter is not None and not layer_filter(entry):
            rejected.add(entry.layer_name)
            continue
        accepted.setdefault(entry.layer_name, entry.layer)
        if set_requires_grad_false:
            entry.parameter.requires_grad_(False)
            frozen_params.add(entry.parameter_name)
    frozen_layers: set[str] = set()
    if set_eval_mode:
        frozen_layers = set(accepted) - rejected
        for name in frozen_layers:
            accepted[name].eval()
    return frozen_layers, frozen_params
