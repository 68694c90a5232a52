"""Build and runtime facts: which torch clfast was built against, which devices it can run on."""

from __future__ import annotations

from typing import Any

import torch

from . import _C


def parse_build_info(text: str) -> dict[str, str]:
    """The ``key=value`` lines of ``_C.build_info()`` as a dict (other lines are ignored)."""
    return dict(line.split("=", 1) for line in text.strip().splitlines() if "=" in line)


def parse_archs(value: str) -> list[str]:
    """The compiled CUDA architectures from the build fact ``cuda_archs``: ``"8.0,9.0"`` -> ``["8.0", "9.0"]``.

    CMake joins its list with commas (a ``;`` inside a compile definition would split it, see CMakeLists.txt);
    an empty value means no CUDA.
    """
    return [arch.strip() for arch in value.split(",") if arch.strip()]


def info() -> dict[str, Any]:
    """Report how clfast was built and what it can run on here.

    Returns a dict with ``version``, ``torch`` (the runtime torch), ``built_with_torch``,
    ``devices`` (``["cpu"]`` or ``["cpu", "cuda"]``: the kernels compiled in), ``cuda_archs``
    (the compiled CUDA architectures, empty without CUDA), ``cuda_available`` (a CUDA device is
    usable right now) and ``num_threads``.
    """
    build = parse_build_info(_C.build_info())
    with_cuda = build.get("cuda", "0") == "1"
    archs = parse_archs(build.get("cuda_archs", ""))
    return {
        "version": build.get("version", "unknown"),
        "torch": torch.__version__,
        "built_with_torch": build.get("torch", "unknown"),
        "devices": ["cpu", "cuda"] if with_cuda else ["cpu"],
        "cuda_archs": archs,
        "cuda_available": bool(with_cuda and torch.cuda.is_available()),
        "num_threads": torch.get_num_threads(),
    }


def format_info(data: dict[str, Any] | None = None) -> str:
    """``info()`` as aligned ``key: value`` lines, for the command line."""
    data = info() if data is None else data
    width = max(len(k) for k in data)
    out = []
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        out.append(f"{key:<{width}} : {value}")
    return "\n".join(out)
