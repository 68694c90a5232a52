"""Layers and model surgery: Batch Renormalization and the BN→BRN conversion."""

from .batch_renorm import BatchRenorm1d, BatchRenorm2d
from .convert import change_brn_pars, replace_bn_with_brn

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "change_brn_pars", "replace_bn_with_brn"]
