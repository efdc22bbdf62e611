"""Sliding-window inference with MONAI-exact patch scan, Gaussian blending and padding.

The patch grid (``_scan_starts``) is MONAI's ``_get_scan_interval`` + ``dense_patch_slices``;
the weight map is MONAI's ``compute_importance_map``; accumulation and normalisation follow
``sliding_window_inference`` operation by operation in float32, so both agree to float32 rounding
of the network outputs. Gathering, accumulation and normalisation run in C++ (``_core``); the
weight sum is rebuilt per voxel instead of being stored, so memory stays near input + output.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from medkern._dispatch import get_num_threads, is_cupy_array
from medkern._docstrings import fill_doc
from medkern._progress import Progress
from medkern._typing import Array, ProgressArg
from medkern._util import per_axis

__all__ = ["sliding_window"]

# torch.nn.functional.pad modes (MONAI PytorchPadMode) and their numpy.pad equivalents.
_PADDING = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@runtime_checkable
class _RunsInParts(Protocol):
    """An ``fn`` that may run the patches of a batch concurrently (a :class:`medkern.Model`).

    ``_run_parts(batch)`` yields the predictions of consecutive pieces of ``batch``, each with the
    number of cores still busy with later pieces; each piece is accumulated as it arrives (no
    joining copy) on the cores not busy. Any other ``fn`` is called once per batch.
    """

    def _run_parts(self, batch: Any) -> Iterable[tuple[Any, int]]: ...


def _scan_starts(size: int, roi: int, overlap: float) -> np.ndarray:
    """Patch starts along one axis (MONAI ``_get_scan_interval`` and ``dense_patch_slices``)."""
    interval = roi if roi == size else max(int(roi * (1 - overlap)), 1)
    n = int(math.ceil(float(size) / interval))
    count = next((d + 1 for d in range(n) if d * interval + roi >= size), 1)
    starts = [i * interval - max(i * interval + roi - size, 0) for i in range(count)]
    return np.asarray(starts, dtype=np.int64)


@functools.lru_cache(maxsize=16)
def _weight_map(roi: tuple[int, int, int], blend: str, sigma_scale: tuple[float, float, float]
                ) -> np.ndarray:
    """The blending weights of one patch shape, computed once and shared (read-only)."""
    from medkern import _core

    w = _core.importance_map(roi, sigma_scale, blend == "gaussian")
    w.setflags(write=False)
    return w


@fill_doc
def sliding_window(array: Array, fn: Callable[[Array], Array], roi_size: Sequence[int] | int,
                   overlap: float | Sequence[float] = 0.5, blend: str = "gaussian",
                   sigma_scale: float | Sequence[float] = 0.125, batch_size: int = 4,
                   padding: str = "constant", cval: float = 0.0, *,
                   spatial_dims: int | None = None, progress: ProgressArg | Progress = None) -> Array:
    """Run ``fn`` over overlapping patches of an array and blend the outputs (MONAI semantics).

    Equals ``monai.inferers.sliding_window_inference`` with the same settings to float32
    rounding. A CuPy ``array`` is blended on the GPU (same order of operations) and gives CuPy
    back. Memory: the input, the output and one batch of patches. When ``fn`` is a
    :class:`Model`, the patches of a batch run concurrently (:meth:`Model.run_independent`).

    Parameters
    ----------
    array : numpy.ndarray or cupy.ndarray
        ``(*spatial)``, ``(C, *spatial)`` or ``(N, C, *spatial)``, 2 or 3 spatial axes (the
        trailing ``spatial_dims`` axes; by default as many as ``roi_size`` has entries).
    fn : callable
        Called with float32 batches ``(b, C, *roi_size)``, ``b <= batch_size``; returns an array
        ``(b, C_out, *roi_size)`` (e.g. a :class:`Model`).
    roi_size : int or sequence of int
        Patch size per spatial axis (array order); an int means the same on every axis.
    overlap : float or sequence of float, optional
        Fraction of a patch shared with its neighbour, in ``[0, 1)``, per axis or one value.
        Patch starts are MONAI's: step ``int(roi * (1 - overlap))``, last patch flush with the
        end.
    blend : {"gaussian", "constant"}, optional
        ``"gaussian"``: MONAI's importance map, sigma = ``sigma_scale * roi``, clamped below at
        ``max(min, 1e-3)``; ``"constant"``: plain average.
    sigma_scale : float or sequence of float, optional
        Of the Gaussian importance map; default 0.125.
    batch_size : int, optional
        Patches per call of ``fn``; patches of several images share batches.
    padding : {"constant", "reflect", "replicate", "circular"}, optional
        When the volume is smaller than ``roi_size`` it is padded symmetrically (extra voxel at
        the end) with torch's mode names; the output is cropped back.
    cval : float, optional
        The padding value for ``"constant"``.
    spatial_dims : int, optional
        2 or 3; by default from ``roi_size``.
    %(progress)s
        Called before each batch with stage ``"patches"`` and the share of patches done.

    Returns
    -------
    numpy.ndarray or cupy.ndarray
        float32 ``(C_out, *spatial)``, or ``(N, C_out, *spatial)`` when ``array`` had a batch
        axis.

    Raises
    ------
    TypeError
        A non-numeric array.
    ValueError
        A shape that does not fit ``spatial_dims``, a bad ``roi_size``, ``overlap``, ``blend``
        or ``padding``, or ``fn`` returning the wrong shape.
    medkern.Cancelled
        ``progress`` returned False.

    See Also
    --------
    Model.predict : Sliding-window inference with a model's own settings.

    Examples
    --------
    >>> volume = np.random.default_rng(0).random((1, 10, 12, 12), dtype=np.float32)
    >>> def two_class(batch):                  # stands in for a network
    ...     return np.concatenate([batch, 1 - batch], axis=1)
    >>> out = mk.sliding_window(volume, two_class, roi_size=8, overlap=0.5, batch_size=2)
    >>> out.shape, out.dtype
    ((2, 10, 12, 12), dtype('float32'))
    >>> bool(np.allclose(out[0], volume[0]))
    True
    """
    on_gpu = is_cupy_array(array)
    x = array if on_gpu else np.asarray(array)
    if x.dtype == np.bool_ or x.dtype.kind not in "iuf":
        raise TypeError(f"sliding_window: array must be numeric, got dtype {x.dtype}")
    if x.dtype.name not in ("uint8", "int16", "uint16", "int32", "float32", "float64"):
        x = x.astype(np.float32)
    roi_values = (roi_size,) if np.isscalar(roi_size) else tuple(roi_size)
    nsp = spatial_dims if spatial_dims is not None else (len(roi_values) if len(roi_values) > 1 else min(x.ndim, 3))
    if nsp not in (2, 3):
        raise ValueError(f"sliding_window: spatial_dims must be 2 or 3, got {nsp}")
    lead = x.ndim - nsp
    if lead not in (0, 1, 2):
        raise ValueError(f"sliding_window: array must be (*spatial), (C, *spatial) or (N, C, *spatial) "
                         f"with {nsp} spatial axes, got shape {x.shape}")
    roi_float = per_axis(roi_size, nsp, "roi_size")
    roi = tuple(int(r) for r in roi_float)
    if any(r < 1 or r != f for r, f in zip(roi, roi_float)):
        raise ValueError(f"sliding_window: roi_size must be positive integers, got {roi_size}")
    ov = per_axis(overlap, nsp, "overlap")
    if not all(0.0 <= o < 1.0 for o in ov):
        raise ValueError(f"sliding_window: overlap must be in [0, 1), got {overlap}")
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"sliding_window: blend must be 'gaussian' or 'constant', got {blend!r}")
    sig = per_axis(sigma_scale, nsp, "sigma_scale")
    if blend == "gaussian" and not all(s > 0 for s in sig):
        raise ValueError(f"sliding_window: sigma_scale must be positive, got {sigma_scale}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"sliding_window: batch_size must be a positive integer, got {batch_size!r}")
    if padding not in _PADDING:
        raise ValueError(f"sliding_window: padding must be one of {tuple(_PADDING)}, got {padding!r}")
    if not callable(fn):
        raise TypeError("sliding_window: fn must be callable (batch -> predictions)")
    prog = Progress(progress, "sliding_window")
    if x.size == 0:
        raise ValueError(f"sliding_window: array is empty (shape {x.shape})")

    batched = lead == 2
    x = x.reshape((1,) * (2 - lead) + x.shape)
    in_size = x.shape[2:]
    diff = [max(r - s, 0) for r, s in zip(roi, in_size)]
    pad = [(d // 2, d - d // 2) for d in diff]
    if any(diff):
        extra = {"constant_values": cval} if padding == "constant" else {}
        xp = np
        if on_gpu:
            import cupy as xp
        x = xp.pad(x, [(0, 0), (0, 0)] + pad, mode=_PADDING[padding], **extra)
    with prog:
        size = x.shape[2:]
        starts = [_scan_starts(s, r, o) for s, r, o in zip(size, roi, ov)]
        if on_gpu:
            from medkern._cupy.sliding_window import run_windows

            grid = np.stack(np.meshgrid(*starts, indexing="ij"), axis=-1).reshape(-1, nsp)
            out = run_windows(x, fn, grid, roi, _weight_map((1,) * (3 - nsp) + roi, blend,
                                                            (1.0,) * (3 - nsp) + sig), batch_size,
                              prog)
            return _crop(out, pad, in_size, diff, batched)
        # 2D runs through the 3D kernels with a leading spatial axis of length 1.
        if nsp == 2:
            x = x[:, :, None]
            roi3, sig3 = (1, *roi), (1.0, *sig)
            starts3 = [np.zeros(1, np.int64), *starts]
        else:
            roi3, sig3, starts3 = roi, sig, starts
        weight = _weight_map(roi3, blend, sig3)
        grid = np.stack(np.meshgrid(*starts3, indexing="ij"), axis=-1).reshape(-1, 3)
        out = _run_windows(x, fn, grid, roi3, weight, batch_size, roi, prog)
        from medkern import _core

        _core.normalize_by_weight_sum(out, starts3, weight, get_num_threads())
        if nsp == 2:
            out = out[:, :, 0]
        return _crop(out, pad, in_size, diff, batched)


def _crop(out: Any, pad: list, in_size: tuple[int, ...], diff: list[int], batched: bool) -> Any:
    """Remove the padding added for volumes smaller than the patch; drop an implicit batch axis."""
    if any(diff):
        out = out[(slice(None), slice(None)) + tuple(slice(b, b + s) for (b, _), s in zip(pad, in_size))].copy()
    return out if batched else out[0]


def _run_windows(x: np.ndarray, fn: Callable, grid: np.ndarray, roi3: tuple[int, int, int],
                 weight: np.ndarray, batch_size: int, roi: tuple[int, ...], progress: Progress
                 ) -> np.ndarray:
    """Accumulate weighted predictions of every window, batch after batch, image-major order."""
    from medkern import _core

    # Patches never interact, so an fn that can run the patches of a batch concurrently does.
    infer = fn._run_parts if isinstance(fn, _RunsInParts) else (lambda b: [(fn(b), 0)])
    n_threads = get_num_threads()
    n_win = len(grid)
    total = x.shape[0] * n_win
    out = None
    for first in range(0, total, batch_size):
        progress.update("patches", first / total)
        idx = np.arange(first, min(first + batch_size, total), dtype=np.int64)
        batch, start = idx // n_win, np.ascontiguousarray(grid[idx % n_win])
        patches = _core.gather_patches(x, batch, start, roi3, n_threads)
        done = 0
        shape = (len(idx), x.shape[1]) + roi
        for pred, busy in infer(patches.reshape(shape)):
            pred = np.asarray(pred.get() if hasattr(pred, "get") and not isinstance(pred, np.ndarray) else pred)
            if pred.ndim != 2 + len(roi) or not 0 < len(pred) <= len(idx) - done or pred.shape[2:] != roi:
                raise ValueError(f"sliding_window: fn returned shape {pred.shape} for a batch of shape "
                                 f"{shape}; expected (batch, channels, *roi_size)")
            if out is None:
                out = np.zeros((x.shape[0], pred.shape[1]) + x.shape[2:], dtype=np.float32)
            elif pred.shape[1] != out.shape[1]:
                raise ValueError(f"sliding_window: fn returned {pred.shape[1]} channels, earlier {out.shape[1]}")
            n = len(pred)
            pred = np.ascontiguousarray(pred, dtype=np.float32).reshape((n, out.shape[1]) + roi3)
            _core.accumulate_patches(out, pred, weight, batch[done:done + n], start[done:done + n],
                                     max(1, n_threads - busy))
            done += n
        if done != len(idx):
            raise ValueError(f"sliding_window: fn returned {done} patch predictions for a batch of shape "
                             f"{shape}; expected (batch, channels, *roi_size)")
    return out
