"""Shared driver of the atheris harnesses: seed corpus, documented errors, libFuzzer options.

A harness module defines ``seeds() -> dict[name, bytes]`` and ``one_input(data: bytes)`` and calls
:func:`main`. Positional arguments that name an empty (or missing) directory are filled with the
seeds first, so ``python fuzz_x.py CORPUS -max_total_time=60`` needs no committed corpus.
"""

from __future__ import annotations

import dis
import os
import sys
import tempfile
import types
import warnings
from pathlib import Path

# One thread per kernel call: the fuzzer runs many small inputs, and results do not depend on it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import atheris  # noqa: E402

with atheris.instrument_imports(include=["medkern"]):
    import medkern as mk  # noqa: F401

mk.set_num_threads(1)


def _instrumented(fn) -> bool:
    return any(i.opname == "LOAD_ATTR" and i.argval == "_trace_branch" for i in dis.get_instructions(fn))


def instrument_package(prefix: str) -> int:
    """Instrument every function and method of the loaded modules ``prefix``/``prefix.*``.

    ``atheris.instrument_imports`` skips modules that come through a custom import loader, which
    is how an editable install (scikit-build-core) serves medkern; this walks the modules instead.
    Returns the number of functions instrumented."""
    done: set[int] = set()

    def one(fn) -> None:
        if id(fn) in done or not (getattr(fn, "__module__", None) or "").startswith(prefix):
            return
        done.add(id(fn))
        atheris.instrument_func(fn)

    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == prefix or name.startswith(prefix + ".")):
            continue
        for obj in list(vars(mod).values()):
            if isinstance(obj, types.FunctionType):
                one(obj)
            elif isinstance(obj, type) and obj.__module__ == name:
                for attr in list(vars(obj).values()):
                    attr = getattr(attr, "__func__", attr)
                    if isinstance(attr, property):
                        for g in (attr.fget, attr.fset):
                            if g is not None:
                                one(g)
                    elif isinstance(attr, types.FunctionType):
                        one(attr)
    return len(done)


if not _instrumented(mk.read):
    instrument_package("medkern")


def instrument_parsers(*packages: str) -> None:
    """Coverage feedback from the third-party parsers a harness drives (pydicom, nibabel): their
    modules are imported and instrumented like medkern's."""
    import importlib

    for name in packages:
        for module in PARSER_MODULES.get(name, (name,)):
            importlib.import_module(module)
        instrument_package(name)


PARSER_MODULES = {
    "pydicom": ("pydicom", "pydicom.filereader", "pydicom.dataset", "pydicom.dataelem", "pydicom.values",
                "pydicom.valuerep", "pydicom.hooks", "pydicom.sequence", "pydicom.fileutil"),
    "nibabel": ("nibabel", "nibabel.nifti1", "nibabel.nifti2", "nibabel.analyze", "nibabel.spatialimages",
                "nibabel.volumeutils", "nibabel.arrayproxy", "nibabel.openers", "nibabel.quaternions"),
}

# What a bad file may raise: medkern's own errors, and the builtin ValueError / TypeError / OSError.
DOCUMENTED = (mk.MedkernError, ValueError, TypeError, OSError)


class SilentWrong(AssertionError):
    """Raised by a harness when a call returned a result that breaks a stated invariant."""


def scratch() -> Path:
    """A per-process scratch directory, emptied by the harness for each input."""
    d = Path(tempfile.mkdtemp(prefix="mkfuzz-"))
    return d


def clear(directory: Path) -> None:
    for p in sorted(directory.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            p.rmdir()
        else:
            p.unlink()


def _fill_corpus(argv: list[str], seeds: dict[str, bytes]) -> None:
    for arg in argv[1:]:
        if arg.startswith("-"):
            continue
        d = Path(arg)
        if d.exists() and not d.is_dir():
            continue
        d.mkdir(parents=True, exist_ok=True)
        if not any(d.iterdir()):
            for name, data in seeds.items():
                (d / name).write_bytes(data)


def _tolerating_known(one_input, harness: str):
    """``one_input`` that lets the exception types listed as open for ``harness`` in
    known_open.py pass (they have a regression test each), so a short run looks for new findings."""
    from known_open import KNOWN_OPEN

    names = {k.exception for k in KNOWN_OPEN if k.harness == harness}
    if not names or os.environ.get("MEDKERN_FUZZ_STRICT") == "1":
        return one_input

    def run(data: bytes) -> None:
        try:
            one_input(data)
        except Exception as exc:
            if type(exc).__name__ not in names:
                raise

    return run


def main(seeds, one_input) -> None:
    # Warnings about odd files are not findings; pydicom and nibabel emit many.
    warnings.simplefilter("ignore")
    argv = list(sys.argv)
    one_input = _tolerating_known(one_input, Path(argv[0]).stem.removeprefix("fuzz_"))
    if "--write-seeds" in argv:
        _fill_corpus([argv[0], argv[argv.index("--write-seeds") + 1]], seeds())
        return
    _fill_corpus(argv, seeds())
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
