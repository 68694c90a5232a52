"""The benchmark builders under their first module path (``clfast.scenarios.generators``).

Each now lives in the module of its job: :mod:`.new_classes` (``nc_benchmark``), :mod:`.new_instances`
(``ni_benchmark``), :mod:`.tensors` (``tensors_benchmark``) and :mod:`.permuted` (``permuted_benchmark``,
``draw_permutations``); what they share is in :mod:`._inputs`.
"""

from .new_classes import nc_benchmark
from .new_instances import ni_benchmark
from .permuted import draw_permutations, permuted_benchmark
from .tensors import tensors_benchmark

__all__ = ["draw_permutations", "nc_benchmark", "ni_benchmark", "permuted_benchmark", "tensors_benchmark"]
