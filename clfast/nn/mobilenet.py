"""MobileNetV1 with a latent split, as AR1 uses it (``docs/avalanche-semantics.md`` §4.2).

Avalanche builds its ``MobilenetV1`` from pytorchcv's ``mobilenet_w1`` (downloading ImageNet weights at
run time), flattens it into a list of 28 leaf blocks, and splits the list at ``latent_layer_num``:
entries ``0..latent_layer_num`` form ``lat_features``, the rest ``end_features``, followed by an
``output`` Linear without bias. clfast builds the same network itself, with the same entry layout and
parameter names (``lat_features.19.conv.weight``, ``lat_features.19.bn.weight`` → after the BN→BRN swap
``lat_features.19.bn.gamma``), and never downloads anything: weights come from a local file or a state
dict, in clfast's layout or in pytorchcv's ``mobilenet_w1`` layout.

Differences from Avalanche (``docs/avalanche-differences.md``, "MobileNetV1"):

- The last entry is a global average pool (``nn.AdaptiveAvgPool2d(1)``) where Avalanche has
  ``AvgPool2d(4)``. At 128 px (a 4×4 map) the two are identical; at 224 px Avalanche's pool averages
  only the top-left 4×4 of the 7×7 map, and below ~100 px (a map smaller than 4×4) it fails.
- ``num_classes``, ``width_mult`` and ``in_channels`` are arguments (Avalanche: 50 classes, width 1, RGB).
- ``forward`` with ``latent_input`` accepts an empty current batch (only replayed latents).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .._checks import check_int
from .latent_model import join_latents

__all__ = ["MOBILENET_V1_LAYERS", "LayerSpec", "MobileNetV1", "pytorchcv_to_clfast"]


class LayerSpec(NamedTuple):
    """One entry of the §4.2 layer table: ``kind`` is ``"conv"`` (the 3×3 init conv), ``"dw"`` (depthwise
    3×3), ``"pw"`` (pointwise 1×1) or ``"pool"``; channels at width 1; the stride; pytorchcv's block name."""

    kind: str
    in_channels: int
    out_channels: int
    stride: int
    pytorchcv_name: str


def _build_table() -> tuple[LayerSpec, ...]:
    # pytorchcv mobilenet_w1: channels per unit of each stage; the first unit of stages 2..5 has stride 2.
    stages = [[64], [128, 128], [256, 256], [512, 512, 512, 512, 512, 512], [1024, 1024]]
    table = [LayerSpec("conv", 3, 32, 2, "init_block")]
    c = 32
    for s, units in enumerate(stages, start=1):
        for u, out in enumerate(units, start=1):
            stride = 2 if (u == 1 and s > 1) else 1
            table.append(LayerSpec("dw", c, c, stride, f"stage{s}.unit{u}.dw_conv"))
            table.append(LayerSpec("pw", c, out, 1, f"stage{s}.unit{u}.pw_conv"))
            c = out
    table.append(LayerSpec("pool", c, c, 1, "final_pool"))
    return tuple(table)


#: The 28-entry layer table of §4.2 (entries 0..26 conv blocks, 27 the pool), at width 1.
MOBILENET_V1_LAYERS: tuple[LayerSpec, ...] = _build_table()
_NUM_BLOCKS = len(MOBILENET_V1_LAYERS) - 1  # 27 conv blocks
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class _ConvBlock(nn.Module):
    """conv (no bias) → BatchNorm2d → ReLU, with pytorchcv's ``ConvBlock`` child names (§4.2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activ = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activ(self.bn(self.conv(x)))


class MobileNetV1(nn.Module):
    """MobileNetV1 split into ``lat_features`` (entries ``0..latent_layer_num``) and ``end_features`` (§4.2).

    Args:
        num_classes: outputs of ``output = nn.Linear(channels, num_classes, bias=False)`` (Avalanche: 50).
        latent_layer_num: last entry of ``lat_features``, in [0, 26] (default 19: the s4u5 depthwise block).
        weights: a path (``torch.load(..., weights_only=True)``) or a state dict, in clfast's layout (this
            model's ``state_dict()`` before any BN→BRN swap) or pytorchcv's ``mobilenet_w1`` layout
            (``features.init_block.conv.weight``, ``features.stage1.unit1.dw_conv.bn.running_mean``, …;
            its ``output.*`` classifier is dropped and ``output`` keeps its fresh initialisation). Nothing
            is ever downloaded. ``None``: random initialisation (pytorchcv's scheme).
        width_mult: channel multiplier (pytorchcv's ``width_scale``: ``int(c · width_mult)`` channels).
        in_channels: input channels (3 for RGB).

    Entries 0..26 are conv blocks with children ``conv`` (``Conv2d``, no bias; depthwise 3×3 with
    ``groups=channels`` or pointwise 1×1), ``bn`` (``BatchNorm2d``) and ``activ`` (``ReLU``); entry 27 is a
    global average pool. Parameter names look like ``lat_features.19.conv.weight`` and
    ``end_features.0.bn.bias`` (``end_features`` is indexed from 0). Inputs from 32 to 224 px work.
    """

    LAYER_TABLE = MOBILENET_V1_LAYERS

    def __init__(
        self,
        num_classes: int = 50,
        latent_layer_num: int = 19,
        *,
        weights: str | os.PathLike | Mapping[str, Tensor] | None = None,
        width_mult: float = 1.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, low=1)
        self.latent_layer_num = check_int("latent_layer_num", latent_layer_num, low=0, high=_NUM_BLOCKS - 1)
        self.in_channels = check_int("in_channels", in_channels, low=1)
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
            raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
        self.width_mult = float(width_mult)

        blocks: list[nn.Module] = []
        self._channels: list[int] = []  # output channels of every entry
        c_in = in_channels
        for spec in MOBILENET_V1_LAYERS:
            if spec.kind == "pool":
                blocks.append(nn.AdaptiveAvgPool2d(1))
                self._channels.append(c_in)
                continue
            c_out = self._scale(spec.out_channels)
            if spec.kind == "conv":
                block = _ConvBlock(c_in, c_out, 3, spec.stride, 1)
            elif spec.kind == "dw":
                block = _ConvBlock(c_in, c_in, 3, spec.stride, c_in)
                c_out = c_in
            else:
                block = _ConvBlock(c_in, c_out, 1, 1, 1)
            blocks.append(block)
            self._channels.append(c_out)
            c_in = c_out
        split = self.latent_layer_num + 1
        self.lat_features = nn.Sequential(*blocks[:split])
        self.end_features = nn.Sequential(*blocks[split:])
        self.output = nn.Linear(c_in, num_classes, bias=False)
        self._init_params()
        if weights is not None:
            self.load_weights(weights)

    def _scale(self, channels: int) -> int:
        return channels if self.width_mult == 1.0 else max(1, int(channels * self.width_mult))

    def _init_params(self) -> None:
        """pytorchcv's initialisation of the conv blocks; ``output`` keeps ``nn.Linear``'s (as Avalanche)."""
        for i, block in enumerate(self.blocks()):
            if not isinstance(block, _ConvBlock):
                continue
            mode = "fan_in" if MOBILENET_V1_LAYERS[i].kind == "dw" else "fan_out"
            nn.init.kaiming_normal_(block.conv.weight, mode=mode)
            nn.init.ones_(block.bn.weight)
            nn.init.zeros_(block.bn.bias)

    # -- structure -------------------------------------------------------------------------------------
    def blocks(self) -> list[nn.Module]:
        """The 28 entries of the layer table, in order (``lat_features`` then ``end_features``)."""
        return [*self.lat_features, *self.end_features]

    def entry_name(self, index: int) -> str:
        """Module name of layer-table entry ``index``: ``lat_features.i`` or ``end_features.j``."""
        check_int("index", index, low=0, high=len(MOBILENET_V1_LAYERS) - 1)
        if index <= self.latent_layer_num:
            return f"lat_features.{index}"
        return f"end_features.{index - self.latent_layer_num - 1}"

    @property
    def latent_channels(self) -> int:
        """Channels of the latent activations (output of entry ``latent_layer_num``)."""
        return self._channels[self.latent_layer_num]

    def latent_shape(self, image_size: int | tuple[int, int]) -> tuple[int, int, int]:
        """``(C, H, W)`` of ``lat_features``' output for an ``image_size`` input (an int or ``(H, W)``).

        E.g. (512, 8, 8) at 128 px and (512, 14, 14) at 224 px for the default split (§4.2).
        """
        if isinstance(image_size, int) and not isinstance(image_size, bool):
            h, w = image_size, image_size
        elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
            h, w = (check_int("image_size", v, low=1) for v in image_size)
        else:
            raise TypeError(f"image_size must be an int or (H, W), got {image_size!r}")
        check_int("image_size", h, low=1)
        check_int("image_size", w, low=1)
        for spec in MOBILENET_V1_LAYERS[: self.latent_layer_num + 1]:
            if spec.stride == 2:  # 3×3, padding 1, stride 2: ceil(n / 2)
                h, w = (h + 1) // 2, (w + 1) // 2
        return (self.latent_channels, h, w)

    # -- forward -----------------------------------------------------------------------------------------
    def forward(
        self, x: Tensor, latent_input: Tensor | None = None, return_lat_acts: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits for ``x``, optionally followed by replayed latent activations (§4.2).

        With ``latent_input`` (replayed outputs of ``lat_features``, shape (R, C, H, W)), ``lat_features(x)``
        runs under ``torch.no_grad()`` and its output is concatenated *before* ``latent_input`` along the
        batch dimension; ``end_features``, flatten and ``output`` then run on the whole batch, so the
        logits are (N + R, num_classes). ``x`` may be empty (N = 0): then only the latents are used.
        Returns the logits, or ``(logits, lat_acts)`` with ``return_lat_acts``, where ``lat_acts`` are the
        latents of ``x`` only.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"MobileNetV1 expects a tensor input, got {type(x).__name__}")
        lat_acts, feats = join_latents(self.lat_features, x, latent_input, check_input=self._check_image,
                                       check_latent=self._check_latent)
        out = self.end_features(feats)
        logits = self.output(out.flatten(1))
        return (logits, lat_acts) if return_lat_acts else logits

    def _check_latent(self, latent_input: Tensor) -> None:
        if latent_input.dim() != 4 or latent_input.shape[1] != self.latent_channels:
            raise ValueError(f"latent_input must be (R, {self.latent_channels}, H, W), got {tuple(latent_input.shape)}")

    def _check_image(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"MobileNetV1 expects (N, {self.in_channels}, H, W) input, got {tuple(x.shape)}")

    # -- weights -----------------------------------------------------------------------------------------
    def load_weights(self, weights: str | os.PathLike | Mapping[str, Tensor]) -> None:
        """Load ``weights`` (path or state dict; clfast's or pytorchcv's ``mobilenet_w1`` layout), strictly.

        Raises ``ValueError`` naming missing or unexpected keys and shape mismatches; nothing is loaded then.
        """
        if isinstance(weights, (str, os.PathLike)):
            path = os.fspath(weights)
            if not os.path.isfile(path):
                raise ValueError(f"weights file {path!r} does not exist (clfast never downloads weights)")
            sd = torch.load(path, map_location="cpu", weights_only=True)
        else:
            sd = weights
        if isinstance(sd, Mapping) and set(sd) == {"state_dict"}:
            sd = sd["state_dict"]
        if not isinstance(sd, Mapping):
            raise TypeError(f"weights must be a path or a state dict (mapping of tensors), got {type(sd).__name__}")
        if any(isinstance(k, str) and k.startswith("features.") for k in sd):
            sd = pytorchcv_to_clfast(sd, self.latent_layer_num)
            own = {k: v for k, v in self.state_dict().items() if not k.startswith("output.")}
        else:
            own = self.state_dict()
        bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
        if bad:
            raise TypeError(f"weights must map names to tensors; bad entries: {bad[:5]}")
        missing = [k for k in own if k not in sd]
        extra = [k for k in sd if k not in own]
        if missing or extra:
            hint = ""
            if any(".bn.gamma" in k or ".bn.beta" in k for k in extra):
                hint = (" (these are Batch Renormalization names: load such a state dict with "
                        "model.load_state_dict after the BN→BRN swap)")
            raise ValueError(f"weights do not match MobileNetV1(num_classes={self.num_classes}, width_mult="
                             f"{self.width_mult}): missing keys {missing[:8]}{'…' if len(missing) > 8 else ''}, "
                             f"unexpected keys {extra[:8]}{'…' if len(extra) > 8 else ''}{hint}")
        for k, v in own.items():
            if sd[k].shape != v.shape:
                raise ValueError(f"weights: {k!r} has shape {tuple(sd[k].shape)}, the model expects {tuple(v.shape)}")
        result = self.load_state_dict(dict(sd), strict=False)  # keys were checked above against `own`
        assert not result.unexpected_keys and set(result.missing_keys) <= set(self.state_dict()) - set(own)


def pytorchcv_to_clfast(state_dict: Mapping[str, Tensor], latent_layer_num: int = 19) -> dict[str, Tensor]:
    """Rename a pytorchcv ``mobilenet_w1`` state dict to :class:`MobileNetV1`'s layout (§4.2).

    ``features.init_block.{conv,bn}.*`` → entry 0, ``features.stageS.unitU.{dw_conv,pw_conv}.{conv,bn}.*`` →
    the following entries (``lat_features.i`` up to ``latent_layer_num``, then ``end_features.j``);
    ``output.*`` (the ImageNet classifier) is dropped. Any other key raises ``ValueError``.
    """
    check_int("latent_layer_num", latent_layer_num, low=0, high=_NUM_BLOCKS - 1)
    prefix_to_entry = {f"features.{spec.pytorchcv_name}.": i for i, spec in enumerate(MOBILENET_V1_LAYERS[:-1])}
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if not isinstance(key, str):
            unknown.append(repr(key))
            continue
        if key.startswith("output."):
            continue
        entry = next((i for p, i in prefix_to_entry.items() if key.startswith(p)), None)
        if entry is None:
            unknown.append(key)
            continue
        rest = key[len(f"features.{MOBILENET_V1_LAYERS[entry].pytorchcv_name}."):]
        if rest.startswith("conv.conv."):
            rest = rest[len("conv."):]  # tolerate a doubly nested conv name
        layer, _, leaf = rest.partition(".")
        if not ((layer == "conv" and leaf == "weight") or (layer == "bn" and leaf in _BN_KEYS)):
            unknown.append(key)
            continue
        name = (f"lat_features.{entry}" if entry <= latent_layer_num
                else f"end_features.{entry - latent_layer_num - 1}")
        out[f"{name}.{layer}.{leaf}"] = value
    if unknown:
        raise ValueError(f"not a pytorchcv mobilenet_w1 state dict: unexpected keys {unknown[:8]}")
    return out
