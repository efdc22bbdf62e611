"""GPU glue of each kernel family: CuPy peers of the CUDA kernels, and the calls that hand CuPy
arrays to ``medkern._cuda`` as device pointers on the current stream."""

from __future__ import annotations


def current_stream() -> int:
    """The current CuPy stream as the ``stream`` argument every ``medkern._cuda`` launcher takes."""
    import cupy

    return cupy.cuda.get_current_stream().ptr
