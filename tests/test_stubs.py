"""The .pyi stubs of the compiled modules list exactly what the modules export."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import medkern


def _stub_names(module: str) -> set[str]:
    tree = ast.parse((Path(medkern.__file__).parent / f"{module}.pyi").read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("module", ["_core", "_cuda"])
def test_stub_matches_module(module):
    compiled = pytest.importorskip(f"medkern.{module}", reason=f"medkern.{module} was not built")
    exported = {name for name in dir(compiled) if not name.startswith("_") and callable(getattr(compiled, name))}
    # Regenerate with: pybind11-stubgen medkern._core medkern._cuda -o python
    assert _stub_names(module) == exported
