"""The op catalogue is one list: the schemas in csrc/ops.cpp, the registered ops, the wrappers in clfast.ops, the
twins in clfast._reference and the registry clfast.testing.opinfo name the same ops, and agree on what each is."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

from clfast import _reference as ref
from clfast import ops
from clfast.testing.opinfo import OPS

ROOT = Path(__file__).resolve().parents[1]
NAMES = {info.name for info in OPS}
# Public names of clfast.ops that are not op wrappers.
NOT_OPS = {"GradMode", "check_finite", "FiniteGuard", "FINITE_CHECK_MODES"}


def _schemas() -> set[str]:
    return set(re.findall(r'm\.def\(\s*"(\w+)\(', (ROOT / "csrc" / "ops.cpp").read_text()))


def test_registry_schemas_and_registered_ops_name_the_same_ops():
    registered = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("clfast::")}
    assert len(OPS) == len(NAMES), "an op is listed twice"
    assert _schemas() == registered == NAMES


def test_every_op_has_a_twin_or_says_why_not():
    twins = {name for name, fn in inspect.getmembers(ref, inspect.isfunction)
             if fn.__module__ == ref.__name__ and not name.startswith("_")}
    used = set()
    for info in OPS:
        if info.reference is None:
            assert info.no_twin, f"{info.name}: no twin and no reason"
            assert not hasattr(ref, info.name.rstrip("_")), f"{info.name}: a twin exists but is not listed"
            continue
        assert not info.no_twin
        assert info.reference is getattr(ref, info.name.rstrip("_")), f"{info.name}: the twin is named after the op"
        used.add(info.reference.__name__)
    assert twins == used, f"twins without an op: {twins - used}"


def test_every_op_has_a_wrapper_or_says_why_not():
    for info in OPS:
        if info.no_wrapper:
            assert info.name not in ops.__all__ and not hasattr(ops, info.name), info.name
            continue
        assert info.name in ops.__all__, info.name
        assert info.wrapper.__module__ == info.module, f"{info.name}'s block lives in {info.module}"
    assert set(ops.__all__) - NOT_OPS <= NAMES, "a public clfast.ops name without an OpInfo"


@pytest.mark.parametrize("info", OPS, ids=lambda i: i.name)
def test_op_facts_match_the_schema_and_the_dispatcher(info):
    qualname = f"clfast::{info.name}"
    writes = any(a.alias_info is not None and a.alias_info.is_write for a in info.op._schema.arguments)
    assert info.inplace == writes == info.name.endswith("_")
    assert info.differentiable == torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Autograd")
    # set_python_module in csrc/ops.cpp points at the module that registers the op's fake.
    assert torch._C._dispatch_pystub(qualname, "")[0] == info.module
    assert info.samples(), f"{info.name} has no sample"


@pytest.mark.parametrize("info", OPS, ids=lambda i: i.name)
def test_kernels_are_registered_in_the_op_family_folder(info):
    folder = ROOT / "csrc" / info.family
    sources = "".join(p.read_text() for p in sorted(folder.iterdir()) if p.suffix in (".h", ".cpp", ".cu"))
    assert re.search(rf'\.impl\("{info.name}"', sources), f"csrc/{info.family}/ does not register {info.name}"
