"""Layers, models and model surgery: Batch Renormalization, the BN→BRN conversion, MobileNetV1 with a
latent split, the latent interface for any splittable model (LatentModel), and Avalanche's freezing utilities."""

from .batch_renorm import BatchRenorm1d, BatchRenorm2d, recompute_brn_statistics
from .convert import change_brn_pars, replace_bn_with_brn
from .freeze import LayerAndParameter, filter_bn_and_brn, freeze_up_to, get_layers_and_params
from .latent_model import LatentModel, check_latent_model, get_last_fc_layer
from .mobilenet import MOBILENET_V1_LAYERS, MobileNetV1, pytorchcv_to_clfast
from .multitask import DEFAULT_PAD_VALUE, MultiHeadClassifier, MultiHeadMLP, MultiTaskModule
from .split import split_at

__all__ = ["DEFAULT_PAD_VALUE", "MOBILENET_V1_LAYERS", "BatchRenorm1d", "BatchRenorm2d", "LatentModel",
           "LayerAndParameter", "MobileNetV1", "MultiHeadClassifier", "MultiHeadMLP", "MultiTaskModule",
           "change_brn_pars", "check_latent_model", "filter_bn_and_brn", "freeze_up_to", "get_last_fc_layer",
           "get_layers_and_params", "pytorchcv_to_clfast", "recompute_brn_statistics", "replace_bn_with_brn",
           "split_at"]
