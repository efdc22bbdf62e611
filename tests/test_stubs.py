"""The .pyi stubs of the compiled modules list exactly what the modules export, each function
with the parameters of its binding (names, order and count, as pybind11 reports them)."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

import medkern

MODULES = ["_core", "_cuda"]


def _stub_functions(module: str) -> dict[str, list[str]]:
    tree = ast.parse((Path(medkern.__file__).parent / f"{module}.pyi").read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            a = node.args
            names = [p.arg for p in a.posonlyargs + a.args]
            names += [f"*{a.vararg.arg}"] if a.vararg else []
            names += [p.arg for p in a.kwonlyargs]
            names += [f"**{a.kwarg.arg}"] if a.kwarg else []
            out[node.name] = names
    return out


def _split_top_level(text: str) -> list[str]:
    """Split at the commas outside brackets and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if text[start:].strip():
        parts.append(text[start:])
    return [p.strip() for p in parts]


def _binding_parameters(func) -> list[str]:
    """Parameter names from the first line of a pybind11 docstring, 'name(a: T, b: U = 1) -> R'."""
    first = (func.__doc__ or "").splitlines()[0]
    assert first.startswith(f"{func.__name__}("), f"{func.__name__}: no pybind11 signature in {first!r}"
    body, depth = first[len(func.__name__) + 1:], 1
    for end, ch in enumerate(body):  # noqa: B007 (end is the closing parenthesis, used below)
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            break
    names = []
    for param in _split_top_level(body[:end]):
        if param in ("/", "*"):
            continue
        names.append(param.split(":")[0].split("=")[0].strip())
    return names


def _compiled(module: str):
    return pytest.importorskip(f"medkern.{module}", reason=f"medkern.{module} was not built")


def _exported(compiled) -> dict[str, object]:
    return {name: getattr(compiled, name) for name in dir(compiled)
            if not name.startswith("_") and callable(getattr(compiled, name))}


@pytest.mark.parametrize("module", MODULES)
def test_stub_matches_module(module):
    compiled = _compiled(module)
    # Regenerate with: pybind11-stubgen medkern._core medkern._cuda -o python
    assert set(_stub_functions(module)) == set(_exported(compiled))


@pytest.mark.parametrize("module", MODULES)
def test_stub_parameters_match_bindings(module):
    compiled = _compiled(module)
    stubs = _stub_functions(module)
    mismatched = {name: (stubs.get(name), _binding_parameters(func))
                  for name, func in sorted(_exported(compiled).items())
                  if stubs.get(name) != _binding_parameters(func)}
    assert not mismatched, "stub parameters (stub, binding): " + repr(mismatched)


def test_signature_parser():
    f = SimpleNamespace(
        __name__="f",
        __doc__='f(x: numpy.ndarray, kernel: typing.Annotated[list[int], "FixedSize(3)"], '
                "fill: object = None, t: tuple[int, int] = (1, 2)) -> tuple[int, str]\n\ndoc")
    assert _binding_parameters(f) == ["x", "kernel", "fill", "t"]
