"""Kernel declarations: a _core binding named by a string gets the thread count appended; a
non-C++ implementation named by a string must be "module:function"."""

from __future__ import annotations

import numpy as np
import pytest

import medkern as mk
from medkern import _core
from medkern._dispatch import Kernel


def test_binding_name_gets_the_thread_count():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    kernel = Kernel("moments", cpp="moments")
    mk.set_num_threads(1)
    assert kernel(x, None) == _core.moments(x, None, 1)


def test_non_cpp_string_must_name_module_and_function():
    with pytest.raises(ValueError, match="numba implementation 'moments' is not 'module:function'"):
        Kernel("moments", cpp="moments", numba="moments")


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backends"):
        Kernel("moments", gpu="moments")
