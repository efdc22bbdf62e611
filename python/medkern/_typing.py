"""Type aliases of the public signatures (annotations only; nothing here runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence, Union

import numpy as np

if TYPE_CHECKING:
    import cupy

    from medkern.image import Image

#: An array on the CPU (numpy) or on the GPU (CuPy); the output lives where the input lived.
Array = Union[np.ndarray, "cupy.ndarray"]
#: An Image (geometry kept) or a bare array (unit spacing); results come back in the input's form.
ImageLike = Union["Image", np.ndarray, "cupy.ndarray"]
#: One value for every axis, or one per axis in array order.
PerAxis = Union[float, Sequence[float]]
#: A progress argument: None/False (silent), True (a bar on stderr) or ``progress(stage, fraction)``,
#: which may return False to cancel.
ProgressArg = Union[bool, None, Callable[[str, float], object]]
