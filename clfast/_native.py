"""Which compiled library ``clfast._C`` is.

Normally the one installed with the package. For running the CUDA kernel code on the CPU
(docs/cuda-emulation.md), ``CLFAST_EMULATED_C=/path/to/_C.so`` names the emulated build instead
(``scripts/cuda_emulate.sh`` sets it); it is loaded under the name ``clfast._C`` before the package
imports ``_C``, so every import of ``clfast._C`` (and subprocesses, through the environment) gets it.
"""

from __future__ import annotations

import importlib.util
import os
import sys

ENV = "CLFAST_EMULATED_C"


def preload_emulated_c() -> None:
    """Load the library named by ``CLFAST_EMULATED_C`` as ``clfast._C``; no-op when the variable is unset."""
    path = os.environ.get(ENV, "")
    if not path or "clfast._C" in sys.modules:
        return
    if not os.path.isfile(path):
        raise ImportError(f"clfast: {ENV}={path!r} is not a file (build it with scripts/cuda_emulate.sh)")
    spec = importlib.util.spec_from_file_location("clfast._C", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"clfast: {ENV}={path!r} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    sys.modules["clfast._C"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["clfast._C"]
        raise
