"""Shared fixtures: backends, array movement between devices, and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import medkern as mk

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDKERN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _restore_num_threads():
    """Every test leaves the thread count as it found it, whatever it set and however it ended."""
    before = mk.get_num_threads()
    yield
    mk.set_num_threads(before)


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


def _shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (set MEDKERN_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (real patient and IBSI data); tests skip when it is absent."""
    return _shared_data()


@pytest.fixture(scope="module")
def shared_data_module() -> Path:
    """The same, for module-scoped fixtures that analyse a real study once."""
    return _shared_data()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
