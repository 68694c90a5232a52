"""AR1's latent interface (``docs/avalanche-semantics.md`` §4.2) and an adapter that gives it to any network.

AR1 trains a model split at a latent layer through three sub-modules and one forward: ``lat_features`` (input →
latents), ``end_features`` and ``output`` (latents → logits; ``output`` is the ``nn.Linear`` CWR* consolidates),
and ``forward(x, latent_input=None, return_lat_acts=False)``, which appends replayed latents after the current
ones. :class:`clfast.nn.MobileNetV1` is built that way. :class:`LatentModel` gives the same interface to any
model that :func:`clfast.nn.split_at` can split: ``lat_features`` is the lower part, ``end_features`` the upper
part (which ends with ``output``, the model's last ``nn.Linear`` unless another is named), and the model's own
parameter, buffer and child names are kept, so that CWR*, SI, freezing and ``state_dict`` see the model's names
(``layer1.0.conv1.weight``, ``fc.weight``), not names prefixed by the adapter.

:func:`join_latents` is the one implementation of the latent batch both use: current latents first (computed
without gradients when replayed ones come along), then the replayed ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from .split import split_at

__all__ = ["LatentModel", "adopt_names", "check_latent_model", "get_last_fc_layer", "join_latents",
           "output_layer_name"]


def get_last_fc_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` of ``model`` in ``named_modules()`` order, as ``(name, module)`` (§4.10).

    Raises ``ValueError`` when the model has none.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    found: tuple[str, nn.Linear] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer for CWR*; pass cwr_layer_name")
    return found


def check_latent_model(model: Any) -> nn.Module:
    """Check that ``model`` has AR1's latent split (§4.2); returns it, or raises a TypeError saying what is missing.

    Needed: sub-modules ``lat_features`` (input → latent), ``end_features`` (latent → features, ending with a
    pooling/flatten to ``output``'s input size) and ``output`` (an ``nn.Linear``, CWR*'s layer), and a
    ``forward(x, latent_input=None, return_lat_acts=False)`` that runs ``lat_features`` without gradients when
    ``latent_input`` is given, puts the current patterns first, and returns ``(logits, current latents)`` with
    ``return_lat_acts``; :class:`clfast.nn.MobileNetV1` and :class:`LatentModel` are such models.
    """
    need = "lat_features, end_features, output and forward(x, latent_input=None, return_lat_acts=False)"
    if not isinstance(model, nn.Module):
        raise TypeError(f"AR1's model must be a torch.nn.Module with {need}; got {type(model).__name__}")
    missing = [n for n in ("lat_features", "end_features", "output") if not isinstance(getattr(model, n, None),
                                                                                          nn.Module)]
    if missing:
        raise TypeError(f"AR1's model needs {need} (see clfast.nn.MobileNetV1, or pass latent_layer to split any "
                        f"model); {type(model).__name__} lacks the sub-module(s) {missing}")
    if not isinstance(model.output, nn.Linear):
        raise TypeError(f"AR1's model.output must be an nn.Linear (CWR* consolidates its rows), got "
                        f"{type(model.output).__name__}")
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    has_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    lacking = [n for n in ("latent_input", "return_lat_acts") if n not in params and not has_kwargs]
    if lacking:
        raise TypeError(f"AR1's model needs {need}; {type(model).__name__}.forward has no parameter(s) {lacking}")
    return model


def output_layer_name(model: nn.Module) -> str:
    """The name under which ``model.output`` is registered (``"output"`` for MobileNetV1, ``"fc"`` for a
    :class:`LatentModel` of a ResNet): what CWR* and SI's exclusion look up. ``TypeError`` if it is not a
    sub-module of ``model``."""
    for name, module in model.named_modules():
        if name and module is model.output:
            return name
    raise TypeError(f"{type(model).__name__}.output is not one of its registered sub-modules")


def join_latents(lower: Callable[[Tensor], Tensor], x: Tensor, latent_input: Tensor | None, *,
                 check_input: Callable[[Tensor], None] | None = None,
                 check_latent: Callable[[Tensor], None] | None = None) -> tuple[Tensor, Tensor]:
    """``(lat_acts, feats)`` of AR1's latent forward (§4.2): the current latents ``lower(x)`` and the batch that
    continues through the upper part, ``cat(lat_acts, latent_input)``.

    With ``latent_input`` the lower part runs under ``torch.no_grad()`` (the replayed latents came from a frozen
    one) and an empty ``x`` skips it (only replayed latents). ``check_input(x)`` runs before ``lower``,
    ``check_latent(latent_input)`` before anything else; the latents' per-sample shapes and devices must agree.
    """
    if latent_input is None:
        if check_input is not None:
            check_input(x)
        lat_acts = lower(x)
        return lat_acts, lat_acts
    if not isinstance(latent_input, Tensor):
        raise TypeError(f"latent_input must be a tensor, got {type(latent_input).__name__}")
    if check_latent is not None:
        check_latent(latent_input)
    if x.dim() >= 1 and x.shape[0] == 0:
        return latent_input.new_empty((0, *latent_input.shape[1:])), latent_input
    if check_input is not None:
        check_input(x)
    with torch.no_grad():
        lat_acts = lower(x)
    if lat_acts.shape[1:] != latent_input.shape[1:]:
        raise ValueError(f"latent_input has per-sample shape {tuple(latent_input.shape[1:])}, but the current "
                         f"inputs give latents of shape {tuple(lat_acts.shape[1:])}")
    if latent_input.device != lat_acts.device:
        raise ValueError(f"latent_input is on {latent_input.device}, the inputs on {lat_acts.device}")
    return lat_acts, torch.cat((lat_acts, latent_input.to(lat_acts.dtype)), dim=0)


def adopt_names(holder: nn.Module, model: nn.Module) -> None:
    """Register ``model``'s own parameters, buffers (persistent or not, as in ``model``) and children on
    ``holder`` under the same names, so that ``holder.named_parameters()`` and ``holder.state_dict()`` are the
    model's. Written into the registries directly: a name may coincide with an attribute of ``holder``'s class
    (a model whose classifier is called ``output``), which ``register_*`` and ``add_module`` refuse."""
    for name, p in model.named_parameters(recurse=False):
        holder._parameters[name] = p
    for name, b in model.named_buffers(recurse=False):
        holder._buffers[name] = b
        if name in model._non_persistent_buffers_set:
            holder._non_persistent_buffers_set.add(name)
    for name, m in model.named_children():
        holder._modules[name] = m


def _own_state(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))


class LatentModel(nn.Module):
    """``model`` split at ``latent_layer`` with AR1's latent interface (§4.2), under the model's own names.

    ``lat_features`` is ``split_at(model, latent_layer)``'s lower part (the latents are ``latent_layer``'s input),
    ``end_features`` the upper part, which runs ``latent_layer`` and everything after it, ``output`` included.
    All three are attributes, not registered sub-modules: ``named_parameters()``, ``named_modules()`` and
    ``state_dict()`` are the model's (``layer3.0.conv1.weight``, ``fc.weight``), in the model's order, and the
    parts share the model's modules, so training the adapter trains ``model``. ``forward(x)`` is ``model(x)``
    bit for bit; with ``latent_input`` see :meth:`forward`.

    Args:
        model: any network :func:`clfast.nn.split_at` can split at ``latent_layer``, called as ``model(x)``.
        latent_layer: the dotted name of the module that starts the upper part (``"layer3"``).
        output_layer: the name of the ``nn.Linear`` that is ``output`` (CWR*'s layer); ``None``: the model's last
            ``nn.Linear`` in ``named_modules()`` order (``"fc"`` for a ResNet). It must be in the upper part.

    Do module surgery (AR1's BN→BRN swap) *before* wrapping: the parts are graphs over the modules found here,
    and a module replaced later on the model or the adapter is not seen by them. A module with parameters or
    buffers that the forward calls on both sides of the split is refused (AR1 freezes one side and trains the
    other, and sets their modes apart). As for ``split_at``: a plain tensor attribute that the model's own
    ``forward`` reads is held by reference, so move the model to its device first.

    Raises:
        ValueError: ``split_at``'s (the model is not a chain at ``latent_layer``), no or a wrong ``output_layer``,
            or a module with state on both sides of the split.
    """

    def __init__(self, model: nn.Module, latent_layer: str, output_layer: str | None = None) -> None:
        super().__init__()
        lower, upper = split_at(model, latent_layer)
        if output_layer is None:
            output_layer, output = get_last_fc_layer(model)
        else:
            output = dict(model.named_modules()).get(output_layer) if isinstance(output_layer, str) else None
            if not isinstance(output, nn.Linear):
                raise ValueError(f"LatentModel: output_layer={output_layer!r} is not an nn.Linear of "
                                 f"{type(model).__name__}")
        upper_ids = {id(m) for m in upper.modules()}
        if id(output) not in upper_ids:
            raise ValueError(f"LatentModel: the output layer {output_layer!r} is not after latent_layer="
                             f"{latent_layer!r} (it must be in the part that AR1 trains)")
        names = {id(m): n for n, m in model.named_modules()}
        shared = [names[id(m)] for m in lower.modules() if id(m) in upper_ids and id(m) in names and _own_state(m)]
        if shared:
            raise ValueError(f"LatentModel: the forward of {type(model).__name__} calls {shared} on both sides of "
                             f"latent_layer={latent_layer!r}; a module with parameters or buffers must be on one")
        adopt_names(self, model)
        # Plain attributes, not sub-modules: registered, the parts would add a second name for every parameter.
        self._parts = SimpleNamespace(model=model, lower=lower, upper=upper, output=output)
        #: The module that starts ``end_features``; the latents are its input.
        self.latent_layer = latent_layer
        #: The name of ``output`` in the model (CWR*'s ``cwr_layer_name``).
        self.output_name = output_layer

    @property
    def source(self) -> nn.Module:
        """The wrapped model (which shares every module with this adapter)."""
        return self._parts.model

    @property
    def lat_features(self) -> nn.Module:
        """Input → latents: the lower part (an ``fx.GraphModule`` over the model's modules)."""
        return self._parts.lower

    @property
    def end_features(self) -> nn.Module:
        """Latents → logits: the upper part, ``latent_layer`` to the model's output (``output`` included)."""
        return self._parts.upper

    @property
    def output(self) -> nn.Linear:
        """The classifier CWR* consolidates (inside ``end_features``)."""
        return self._parts.output

    def train(self, mode: bool = True) -> LatentModel:
        """Set the mode of the model's modules and of the parts (whose own flags nothing else would set)."""
        super().train(mode)
        self._parts.lower.train(mode)
        self._parts.upper.train(mode)
        return self

    def forward(self, x: Tensor, latent_input: Tensor | None = None,
                return_lat_acts: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits for ``x``, optionally followed by replayed latents: the latents ``lat_features(x)`` (under
        ``no_grad`` when ``latent_input`` is given; skipped for an empty ``x``) then ``latent_input`` along the
        batch dimension go through ``end_features``, so the logits are (N + R, classes). Returns the logits, or
        ``(logits, lat_acts)`` with ``return_lat_acts``, ``lat_acts`` being the latents of ``x`` only."""
        lat_acts, feats = join_latents(self._parts.lower, x, latent_input)
        version = lat_acts._version if return_lat_acts else 0  # (inference tensors have no version counter)
        logits = self._parts.upper(feats)
        if return_lat_acts and lat_acts._version != version:
            # Without replay the upper part's input *is* lat_acts: an in-place module there would corrupt them.
            raise ValueError(f"LatentModel: the part after latent_layer={self.latent_layer!r} changes its input in "
                             f"place (an in-place module at the split point), so the latents cannot be returned")
        return (logits, lat_acts) if return_lat_acts else logits
