"""Checks an installed CUDA wheel of clfast without a GPU (run by scripts/build_cuda_wheel.sh in its venv).

No CUDA function is called: importing a CUDA torch and clfast works on a machine without a driver, and every
check reads the binary or the dispatcher. Exits 1 and names each failed check.

Usage: ``python scripts/check_cuda_wheel.py --wheel DIR/clfast-*.whl --archs 8.0,9.0``
(run it from outside the checkout, so that ``import clfast`` finds the installed package).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def find_tool(name: str) -> str | None:
    """``name`` from the environment variable NAME, PATH, the CUDA toolkit, or the copy Triton ships."""
    candidates = [os.environ.get(name.upper(), ""), shutil.which(name) or "", f"/usr/local/cuda/bin/{name}"]
    nvcc = os.environ.get("CUDACXX")
    if nvcc:
        candidates.append(str(Path(nvcc).parent / name))
    triton = importlib.util.find_spec("triton")
    if triton is not None and triton.origin:
        candidates.append(str(Path(triton.origin).parent / "backends" / "nvidia" / "bin" / name))
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def library_from_wheel(wheel: Path, into: Path) -> Path:
    """The wheel's ``clfast/_C*.so``, extracted into ``into``."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if re.fullmatch(r"clfast/_C[^/]*\.so", n)]
        if len(names) != 1:
            raise SystemExit(f"{wheel}: expected one clfast/_C*.so, found {names}")
        return Path(zf.extract(names[0], into))


def check_device_code(lib: Path, archs: list[str], failures: list[str]) -> None:
    """The library carries machine code (cubin) for exactly the requested archs."""
    tool = find_tool("cuobjdump")
    if tool is None:
        failures.append("no cuobjdump found (CUOBJDUMP, PATH, /usr/local/cuda/bin or Triton's copy)")
        return
    listing = run([tool, "--list-elf", str(lib)])
    found = sorted(set(re.findall(r"\bsm_(\d+)\b", listing)))
    wanted = sorted(a.replace(".", "") for a in archs)
    print(f"device code: {', '.join(f'sm_{a}' for a in found) or 'none'} ({tool})")
    if found != wanted:
        failures.append(f"cubins for sm_{found}, expected sm_{wanted}:\n{listing}")


def check_runtime_link(lib: Path, cuda_major: str, failures: list[str]) -> None:
    """Linked to the shared libcudart.so.<torch's major>, with no copy of the static runtime inside."""
    dynamic = run(["readelf", "-d", str(lib)])
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    print(f"NEEDED: {', '.join(needed)}")
    if f"libcudart.so.{cuda_major}" not in needed:
        failures.append(f"not linked to libcudart.so.{cuda_major}: NEEDED {needed}")
    # The static runtime would define the runtime API (cudaMalloc, __cudaRegisterFatBinary, ...) inside the
    # library itself; with the shared one the fatbin registration is an import. nm shows NAME@VERSION.
    api = re.compile(r"(?:__)?cuda[A-Z]\w*")
    defined = [s.split("@")[0] for s in run(["nm", "-D", "--defined-only", str(lib)]).split()]
    own_api = sorted(s for s in defined if api.fullmatch(s))
    if own_api:
        failures.append(f"defines the CUDA runtime API itself (static runtime linked?): {own_api[:5]}")
    undefined = [s.split("@")[0] for s in run(["nm", "-D", "--undefined-only", str(lib)]).split()]
    if "__cudaRegisterFatBinary" not in undefined:
        failures.append("does not import __cudaRegisterFatBinary from the shared runtime")


def check_installed(lib_in_wheel: Path, archs: list[str], failures: list[str]) -> None:
    """The installed package is the wheel's; every clfast op has CPU and CUDA kernels; info() tells the archs."""
    import torch

    import clfast
    from clfast.testing.opinfo import OPS

    package = Path(clfast.__file__).resolve().parent
    if ROOT in package.parents or package.parent == ROOT:
        failures.append(f"imported clfast from the checkout ({package}), not the installed wheel")
        return
    installed = list(package.glob("_C*.so"))
    digest = hashlib.sha256(lib_in_wheel.read_bytes()).hexdigest()
    if [hashlib.sha256(p.read_bytes()).hexdigest() for p in installed] != [digest]:
        failures.append(f"the installed {installed} is not the wheel's library")
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("clfast::"))
    expected = sorted(f"clfast::{o.name}" for o in OPS)
    print(f"ops registered: {len(names)} (the op registry lists {len(expected)})")
    if names != expected:
        failures.append(f"registered ops {names} differ from the op registry's {expected}")
    for key in ("CPU", "CUDA"):
        missing = [n for n in names if not torch._C._dispatch_has_kernel_for_dispatch_key(n, key)]
        if missing:
            failures.append(f"no {key} kernel for {missing}")
    data = clfast.info()
    print(f"clfast.info(): devices {data['devices']}, cuda_archs {data['cuda_archs']}, "
          f"built with torch {data['built_with_torch']}")
    if data["cuda_archs"] != archs:
        failures.append(f"clfast.info()['cuda_archs'] is {data['cuda_archs']}, expected {archs}")
    if data["devices"] != ["cpu", "cuda"]:
        failures.append(f"clfast.info()['devices'] is {data['devices']}")
    if data["built_with_torch"] != torch.__version__:
        failures.append(f"built with torch {data['built_with_torch']}, running {torch.__version__}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, required=True)
    ap.add_argument("--archs", default="8.0,9.0", help="comma list, torch's notation")
    args = ap.parse_args(argv)
    import torch

    archs = [a for a in args.archs.split(",") if a]
    if not torch.version.cuda:
        print(f"torch {torch.__version__} has no CUDA: run this in the CUDA venv", file=sys.stderr)
        return 1
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        lib = library_from_wheel(args.wheel, Path(tmp))
        print(f"{args.wheel.name}: {lib.name}, {lib.stat().st_size // 1024} KB")
        check_device_code(lib, archs, failures)
        check_runtime_link(lib, torch.version.cuda.split(".")[0], failures)
        check_installed(lib, archs, failures)
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    print("check_cuda_wheel: " + ("OK" if not failures else f"{len(failures)} check(s) failed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
