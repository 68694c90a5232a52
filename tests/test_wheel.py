"""Building a wheel: it carries the compiled library and pins the torch it was built against."""

from __future__ import annotations

import email
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_wheel_carries_the_library_and_pins_torch(tmp_path):
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(tmp_path),
           str(ROOT)]
    subprocess.run(cmd, check=True, env={**__import__("os").environ, "CLFAST_CUDA": "OFF"})
    wheels = list(tmp_path.glob("clfast-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as zf:
        names = zf.namelist()
        assert any(n.startswith("clfast/_C") and n.endswith(".so") for n in names)
        assert {"clfast/__init__.py", "clfast/ops/__init__.py", "clfast/state.py", "clfast/_reference.py"} <= set(names)
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(zf.read(meta_name))
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    required = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    torch_reqs = [r for r in required if r.startswith("torch")]
    assert torch_reqs == [f"torch=={major}.{minor}.*"]  # torch is pinned to the build's minor version
    spec = importlib.util.spec_from_file_location("torch_pin", ROOT / "build_support" / "torch_pin.py")
    torch_pin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(torch_pin)
    assert sorted(r for r in required if not r.startswith("torch")) == sorted(torch_pin.RUNTIME_DEPS)
