"""Backend discovery, thread count and the one dispatch mechanism every kernel family uses.

A kernel is declared once per family as a :class:`Kernel` with one implementation per backend.
``backend="auto"`` picks by where the input lives: numpy -> ``"cpp"`` (``"numba"`` when the
compiled extension is missing), cupy -> ``"cuda"`` (``"cupy"`` when ``medkern._cuda`` is missing
or sees no device). Implementations given as ``"module:function"`` strings are imported on first
use, so numba and cupy cost nothing until they are needed.
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, TypeGuard

import numpy as np

if TYPE_CHECKING:
    import cupy

__all__ = [
    "BackendStatus",
    "Kernel",
    "array_module",
    "backends",
    "get_num_threads",
    "is_cupy_array",
    "set_num_threads",
]

BACKENDS = ("cpp", "numba", "cuda", "cupy")
CPU_BACKENDS = ("cpp", "numba")
GPU_BACKENDS = ("cuda", "cupy")


class BackendStatus(NamedTuple):
    """Whether a backend can run here, and what it is or why not.

    A named tuple that is true when the backend is available, so ``if mk.backends()["cuda"]:``
    reads naturally.

    Parameters
    ----------
    available : bool
        Whether the backend can run in this process.
    detail : str
        The version or device when available, the reason (and the fix) when not.

    See Also
    --------
    medkern.backends : The status of every backend.

    Examples
    --------
    >>> status = mk.backends()["cpp"]
    >>> status.available, bool(status)
    (True, True)
    >>> status.detail
    'medkern._core (...OpenMP, SIMD level ...)'
    """

    available: bool
    detail: str  # version / device when available, the reason when not

    def __bool__(self) -> bool:  # so `if mk.backends()["cuda"]:` reads naturally
        return self.available


_lock = threading.Lock()
_num_threads = os.cpu_count() or 1
_status_cache: dict[str, BackendStatus] = {}


def set_num_threads(n: int) -> None:
    """Set the number of threads the CPU kernels use.

    The default is every core (``os.cpu_count()``). The setting is process-wide and read at each
    call; 1 and N threads give identical results.

    Parameters
    ----------
    n : int
        The number of threads, at least 1.

    Raises
    ------
    ValueError
        ``n`` is not a positive integer.

    See Also
    --------
    get_num_threads : The current setting.

    Examples
    --------
    >>> before = mk.get_num_threads()
    >>> mk.set_num_threads(2)
    >>> mk.get_num_threads()
    2
    >>> mk.set_num_threads(before)
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive integer, got {n!r}")
    _num_threads = int(n)


def get_num_threads() -> int:
    """Return the number of threads the CPU kernels use.

    Returns
    -------
    int
        The thread count (every core unless :func:`set_num_threads` changed it).

    See Also
    --------
    set_num_threads : Change it.

    Examples
    --------
    >>> mk.get_num_threads() >= 1
    True
    """
    return _num_threads


def _probe(name: str) -> BackendStatus:
    if name == "cpp":
        try:
            from medkern import _core, _cpu

            omp = "OpenMP" if _core.openmp else "no OpenMP"
            return BackendStatus(True, f"medkern._core ({omp}, SIMD level {_cpu.active_level()})")
        except ImportError as exc:
            return BackendStatus(False, f"compiled extension medkern._core not importable: {exc}")
    if name == "numba":
        try:
            import numba

            return BackendStatus(True, f"numba {numba.__version__}")
        except ImportError:
            return BackendStatus(False, "numba is not installed (pip install medkern[numba])")
    if name == "cupy":
        try:
            import cupy

            n = cupy.cuda.runtime.getDeviceCount()
        except ImportError:
            return BackendStatus(False, "cupy is not installed (pip install medkern[gpu])")
        except Exception as exc:  # cupy raises its own CUDARuntimeError without a driver
            return BackendStatus(False, f"cupy is installed but no CUDA device is usable: {exc}")
        if n == 0:
            return BackendStatus(False, "cupy is installed but no CUDA device was found")
        return BackendStatus(True, f"cupy {cupy.__version__}, {n} device(s)")
    if name == "cuda":
        try:
            from medkern import _cuda
        except ImportError:
            return BackendStatus(
                False, "medkern._cuda was not built (no CUDA compiler when medkern was installed)"
            )
        n = _cuda.device_count()
        if n == 0:
            return BackendStatus(False, "medkern._cuda is built but no CUDA device was found")
        if not _probe("cupy").available:
            return BackendStatus(False, "medkern._cuda needs CuPy for its arrays: " + _probe("cupy").detail)
        return BackendStatus(True, f"medkern._cuda (CUDA runtime {_cuda.runtime_version()}), {n} device(s)")
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")


def backend_status(name: str) -> BackendStatus:
    with _lock:
        if name not in _status_cache:
            _status_cache[name] = _probe(name)
        return _status_cache[name]


def _forget_status(name: str) -> None:
    """Probe ``name`` again on next use (its detail changed, e.g. the SIMD level)."""
    with _lock:
        _status_cache.pop(name, None)


def backends() -> dict[str, BackendStatus]:
    """Report which backends can run here, and why not.

    ``"cpp"`` is the compiled C++/OpenMP extension, ``"numba"`` its pure-Python fallback,
    ``"cuda"`` the compiled CUDA extension (it needs CuPy for its arrays and a device) and
    ``"cupy"`` the CuPy fallback. ``backend="auto"`` runs numpy input on ``"cpp"`` (``"numba"``
    when the extension is missing) and cupy input on ``"cuda"`` (``"cupy"`` when
    ``medkern._cuda`` is missing or sees no device). Each backend is probed once, on first use.
    The ``"cpp"`` detail names the SIMD level the hot kernels run at (``baseline``, ``avx2`` or
    ``avx512``: the best this CPU supports, or ``MEDKERN_ISA`` when set; see ``medkern._cpu``).

    Returns
    -------
    dict of str to BackendStatus
        ``{name: BackendStatus(available, detail)}`` for ``"cpp"``, ``"numba"``, ``"cuda"`` and
        ``"cupy"``, in that order.

    See Also
    --------
    medkern._dispatch.BackendStatus : The status of one backend.
    set_num_threads : The thread count of the CPU kernels.

    Examples
    --------
    >>> status = mk.backends()
    >>> list(status)
    ['cpp', 'numba', 'cuda', 'cupy']
    >>> status["cpp"]
    BackendStatus(available=True, detail='medkern._core (...OpenMP, SIMD level ...)')
    """
    return {name: backend_status(name) for name in BACKENDS}


def is_cupy_array(x: Any) -> TypeGuard[cupy.ndarray]:
    return type(x).__module__.split(".")[0] == "cupy"


def array_module(x: Any):
    """numpy or cupy, whichever owns ``x``."""
    if is_cupy_array(x):
        import cupy

        return cupy
    return np


class Kernel:
    """One computational kernel with an implementation per backend.

    ``impls`` maps a backend name to a callable, to a lazy ``"module:function"`` path, or (for
    ``cpp``) to the bare name of a ``medkern._core`` binding. A binding is called with the
    kernel's arguments followed by :func:`get_num_threads`, which every ``_core`` kernel takes
    last; callables and ``"module:function"`` implementations read the thread count themselves.
    All implementations take the same arguments.
    """

    def __init__(self, name: str, **impls: Callable[..., Any] | str):
        unknown = set(impls) - set(BACKENDS)
        if unknown:
            raise ValueError(f"Kernel {name}: unknown backends {sorted(unknown)}")
        for backend, fn in impls.items():
            if isinstance(fn, str) and ":" not in fn and backend != "cpp":
                raise ValueError(f"Kernel {name}: {backend} implementation {fn!r} is not 'module:function'")
        self.name = name
        self._impls = dict(impls)

    @property
    def supported(self) -> tuple[str, ...]:
        return tuple(b for b in BACKENDS if b in self._impls)

    def resolve(self, x: Any, backend: str = "auto") -> str:
        """The backend that will run for input ``x``; raises when ``backend`` cannot run it."""
        on_gpu = is_cupy_array(x)
        if backend == "auto":
            candidates = GPU_BACKENDS if on_gpu else CPU_BACKENDS
            reasons = []
            for b in candidates:
                if b in self._impls:
                    status = backend_status(b)
                    if status.available:
                        return b
                    reasons.append(f"{b}: {status.detail}")
                else:
                    reasons.append(f"{b}: {self.name} has no {b} implementation")
            raise RuntimeError(f"{self.name}: no backend available for this input ({'; '.join(reasons)})")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
        if backend not in self._impls:
            raise ValueError(f"{self.name} has no {backend!r} implementation; available: {self.supported}")
        if on_gpu != (backend in GPU_BACKENDS):
            where = "a CuPy (GPU)" if on_gpu else "a NumPy (CPU)"
            raise ValueError(
                f"backend={backend!r} cannot run on {where} array; the output lives where the "
                "input lives, so move the array or choose another backend"
            )
        status = backend_status(backend)
        if not status.available:
            raise RuntimeError(f"backend {backend!r} is not available: {status.detail}")
        return backend

    def impl(self, backend: str) -> Callable[..., Any]:
        fn = self._impls[backend]
        if isinstance(fn, str):
            if ":" in fn:
                module, _, attr = fn.partition(":")
                fn = getattr(importlib.import_module(module), attr)
            else:
                fn = _core_binding(fn)
            self._impls[backend] = fn
        return fn

    def __call__(self, x: Any, *args: Any, backend: str = "auto", **kwargs: Any) -> Any:
        return self.impl(self.resolve(x, backend))(x, *args, **kwargs)


def _core_binding(name: str) -> Callable[..., Any]:
    """``medkern._core.<name>`` with the thread count appended, read at each call.

    The binding is taken at each call from the module of the active SIMD level
    (``medkern._cpu``), which registers the same names for the hot families.
    """
    from medkern import _core, _cpu

    getattr(_core, name)  # a missing binding fails here, at first use, as before

    def call(*args: Any) -> Any:
        return _cpu.binding(name)(*args, get_num_threads())

    call.__name__ = call.__qualname__ = name
    return call
