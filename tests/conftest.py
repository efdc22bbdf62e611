"""Shared fixtures: backends, array movement between devices, and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import medkern as mk

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDKERN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(params=["cpp", "numba", "cuda", "cupy"])
def backend(request) -> str:
    """Every test using this runs once per backend; unavailable backends skip with the reason."""
    status = mk.backends()[request.param]
    if not status.available:
        pytest.skip(f"backend {request.param} unavailable: {status.detail}")
    return request.param


@pytest.fixture(params=["cpp", "numba"])
def cpu_backend(request) -> str:
    status = mk.backends()[request.param]
    if not status.available:
        pytest.skip(f"backend {request.param} unavailable: {status.detail}")
    return request.param


def on_backend(array, backend: str):
    """Put a numpy array where ``backend`` computes (CuPy for GPU backends)."""
    if backend in ("cuda", "cupy"):
        import cupy

        return cupy.asarray(array)
    return array


def to_numpy(x):
    if isinstance(x, mk.Image):
        x = x.array
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (real patient and IBSI data); tests skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (set MEDKERN_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def random_direction(rng: np.random.Generator, ndim: int = 3, flip: bool = True) -> np.ndarray:
    """A random rotation, optionally with one axis flipped (oblique and flipped geometries)."""
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))[None, :]
    if flip:
        q[:, 0] = -q[:, 0]
    return q


def serial_and_threaded(fn):
    """``(fn() on 1 thread, fn() on 3 threads)``, the caller's thread setting restored."""
    previous = mk.get_num_threads()
    try:
        mk.set_num_threads(1)
        serial = fn()
        mk.set_num_threads(3)
        return serial, fn()
    finally:
        mk.set_num_threads(previous)


# Import helpers by name from tests with --import-mode=importlib: expose them as fixtures.
@pytest.fixture
def helpers():
    class H:
        serial_and_threaded = staticmethod(serial_and_threaded)
        on_backend = staticmethod(on_backend)
        to_numpy = staticmethod(to_numpy)
        random_direction = staticmethod(random_direction)

    return H
