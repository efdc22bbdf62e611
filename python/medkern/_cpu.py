"""The instruction-set level of the compiled kernels, chosen at run time.

The hot kernel families (resampling and filters) are compiled three times: for baseline x86-64
into ``medkern._core``, and for AVX2+FMA and AVX-512 into ``medkern._core_avx2`` and
``medkern._core_avx512``, which register the same binding names. Every level computes the same
bits (no FMA contraction, the same operation order), so the choice changes speed only.

The best level the CPU supports is used; ``MEDKERN_ISA=baseline|avx2|avx512`` in the environment
asks for a level (a level the CPU lacks falls back to the best it has, with a warning), and
:func:`use_level` changes it within a process (tests, benchmarks). A module is imported only on a
CPU that supports its level: its code, import included, may use the level's instructions.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import threading
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

__all__ = ["LEVELS", "active_level", "available_levels", "binding", "cpu_levels", "use_level"]

LEVELS = ("baseline", "avx2", "avx512")
_MODULES = {"baseline": "medkern._core", "avx2": "medkern._core_avx2", "avx512": "medkern._core_avx512"}
# /proc/cpuinfo flags each level's compiler flags (CMakeLists.txt) rely on; -mavx512f also enables
# F16C code generation, so it is required too.
_REQUIRED = {
    "avx2": frozenset({"avx", "avx2", "fma"}),
    "avx512": frozenset({"avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl"}),
}
ENV = "MEDKERN_ISA"

_lock = threading.Lock()
_level: str | None = None
_modules: dict[str, ModuleType | None] = {}
_bindings: dict[tuple[str, str], Any] = {}


def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (Linux); empty where they cannot be read.

    Linux lists a feature only when the OS also saves its registers, which is what a level needs.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return frozenset()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_levels() -> tuple[str, ...]:
    """The levels this CPU can run, lowest first (``baseline`` always)."""
    flags = _cpu_flags()
    return ("baseline",) + tuple(level for level in LEVELS[1:] if _REQUIRED[level] <= flags)


def _module(level: str) -> ModuleType | None:
    """The compiled module of ``level``, or None when it was not built (or the CPU lacks it)."""
    if level not in _modules:
        mod = None
        if level in cpu_levels():
            try:
                mod = importlib.import_module(_MODULES[level])
            except ImportError:
                mod = None
        _modules[level] = mod
    return _modules[level]


def available_levels() -> tuple[str, ...]:
    """The levels both built and supported by this CPU, lowest first."""
    with _lock:
        return tuple(level for level in LEVELS if _module(level) is not None)


def _choose(requested: str | None) -> str:
    levels = [level for level in LEVELS if _module(level) is not None]
    if not levels:
        raise ImportError("medkern._core is not importable")
    if requested is None or requested == "":
        return levels[-1]
    if requested not in LEVELS:
        raise ValueError(f"{ENV} must be one of {LEVELS}, got {requested!r}")
    if requested not in levels:
        best = levels[-1]
        warnings.warn(
            f"{ENV}={requested}: that level is not available here (this CPU and build offer "
            f"{', '.join(levels)}); using {best}",
            RuntimeWarning,
            stacklevel=3,
        )
        return best
    return requested


def active_level() -> str:
    """The level the compiled kernels run at: ``"baseline"``, ``"avx2"`` or ``"avx512"``."""
    global _level
    with _lock:
        if _level is None:
            _level = _choose(os.environ.get(ENV))
        return _level


def _set_level(level: str | None) -> None:
    global _level
    with _lock:
        _level = _choose(level)
    from medkern._dispatch import _forget_status

    _forget_status("cpp")


@contextlib.contextmanager
def use_level(level: str) -> Iterator[str]:
    """Run the compiled kernels at ``level`` inside the block, then restore the previous one.

    Yields the level in use (the best available one, with a warning, when ``level`` is not).
    The setting is process-wide, like the thread count.
    """
    before = active_level()
    _set_level(level)
    try:
        yield active_level()
    finally:
        _set_level(before)


def binding(name: str) -> Any:
    """``_core.<name>`` at the active level: that level's module when it has the binding."""
    level = active_level()
    key = (level, name)
    fn = _bindings.get(key)
    if fn is None:
        with _lock:
            mod = _module(level)
            fn = getattr(mod, name, None)
            if fn is None:
                fn = getattr(_module("baseline"), name)
            _bindings[key] = fn
    return fn
