"""The CUDA build without a GPU: how the archs reach ``clfast.info()``, what CMake's CUDA configuration compiles
and links (configure only, against the installed torch told to claim a CUDA version), and that
``scripts/gpu_check.sh`` refuses to start without a GPU. ``scripts/build_cuda_wheel.sh`` builds, links and checks
the real wheel against the registry's CUDA torch."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clfast._info import parse_archs, parse_build_info

ROOT = Path(__file__).resolve().parents[1]


def _nvcc() -> str | None:
    for candidate in (os.environ.get("CUDACXX"), "/usr/local/cuda/bin/nvcc", shutil.which("nvcc")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


NVCC = _nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="needs nvcc")


def test_build_info_lists_each_arch():
    text = "version=0.1.0\ntorch=2.11.0+cu130\ncuda=1\ncuda_archs=8.0,9.0\n"
    build = parse_build_info(text)
    assert build == {"version": "0.1.0", "torch": "2.11.0+cu130", "cuda": "1", "cuda_archs": "8.0,9.0"}
    assert parse_archs(build["cuda_archs"]) == ["8.0", "9.0"]
    assert parse_archs("9.0") == ["9.0"]
    assert parse_archs("8.0, 9.0+PTX") == ["8.0", "9.0+PTX"]
    assert parse_archs("") == []


def _nvcc_major() -> int:
    out = subprocess.run([NVCC, "--version"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"release (\d+)\.", out).group(1))


def _configure(tmp_path: Path, torch_cuda: str) -> subprocess.CompletedProcess:
    """CMake's configure of a CUDA build, with the installed torch claiming ``torch.version.cuda == torch_cuda``
    (a sitecustomize sets it before CMake asks), so that no CUDA torch is needed."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import torch\ntorch.version.cuda = {torch_cuda!r}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLFAST_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    cmd = ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), "-G", "Ninja", "-DCLFAST_CUDA=ON",
           f"-DCMAKE_CUDA_COMPILER={NVCC}", f"-DPython_EXECUTABLE={sys.executable}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


@pytest.mark.slow
@needs_nvcc
def test_cuda_configure_passes_the_archs_as_one_definition_and_links_the_shared_runtime_once(tmp_path):
    proc = _configure(tmp_path, f"{_nvcc_major()}.0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ninja = (tmp_path / "build" / "build.ninja").read_text()
    # The default archs 8.0;9.0 arrive as one definition (a CMake list would split it into two arguments).
    defines = set(re.findall(r"-DCLFAST_CUDA_ARCHS=(\S+)", ninja))
    assert defines == {r'\"8.0,9.0\"'}
    assert not re.search(r"\s-D9\.0", ninja)
    assert parse_archs(defines.pop().strip('\\"')) == ["8.0", "9.0"]
    # The extension's link line: the shared runtime, once, and never the static one.
    link = re.search(r"^build _C\S*\.so:.*?\n\s+LINK_LIBRARIES = ([^\n]*)", ninja, re.M | re.S).group(1)
    assert "cudart_static" not in link
    assert len(re.findall(r"(?:-l|/lib)cudart\b(?!_)", link)) == 1, link


@pytest.mark.slow
@needs_nvcc
def test_cuda_configure_stops_when_nvcc_and_torch_disagree_on_the_cuda_major(tmp_path):
    other = f"{_nvcc_major() - 1}.8"
    proc = _configure(tmp_path, other)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "the CUDA major versions must match" in out
    assert f"built with CUDA {other}" in out
    assert not (tmp_path / "build" / "build.ninja").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal given without a GPU")
@pytest.mark.parametrize("nvidia_smi", ["missing", "lists a device"])
def test_gpu_check_without_a_gpu_says_so_and_builds_nothing(tmp_path, nvidia_smi):
    env = dict(os.environ)
    if nvidia_smi == "missing":
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                      if not (Path(p) / "nvidia-smi").exists())
        said = "nvidia-smi is missing"
    else:
        # A driver tool that answers, but torch sees no device: the second gate must still refuse.
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Fake'\n")
        (fake / "nvidia-smi").chmod(0o755)
        env["PATH"] = os.pathsep.join([str(fake), env["PATH"]])
        said = "torch.cuda.is_available() is False"
    env["PYTHON"] = sys.executable
    out_dir = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out_dir)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "gpu_check: needs a GPU" in proc.stderr and said in proc.stderr
    assert not out_dir.exists()
