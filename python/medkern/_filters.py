"""Denoising and smoothing filters with physical parameters.

Linear filters (``gaussian``, ``mean_filter``, ``log_filter``, ``unsharp_mask``) are separable
correlations computed in float32. Sigmas are in mm (``sigma_mm``, per array axis or one value),
converted with the image's spacing; bare arrays have unit spacing, and ``sigma_vox`` gives voxel
units explicitly. Boundary ``mode`` names follow scipy.ndimage: ``"reflect"`` (d c b a | a b c d,
scipy's default), ``"nearest"`` (ITK's zero-flux Neumann), ``"mirror"`` (d c b | a b c d),
``"wrap"`` and ``"constant"`` (``cval``).

Every function takes an :class:`medkern.Image` (and returns one with the same geometry) or a bare
2D/3D array (and returns an array), on the CPU (numpy) or the GPU (CuPy) where the kernel has a GPU
implementation.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from medkern._backend_shared import MODES
from medkern._dispatch import Kernel, array_module
from medkern._util import check_finite, per_axis, unwrap

__all__ = ["gaussian", "mean_filter", "log_filter", "unsharp_mask", "median", "bilateral",
           "anisotropic_diffusion"]


# ------------------------------------------------------------------ kernels
# An axis a filter leaves untouched gets an empty kernel in separable_correlate (every backend).
_CUPY = "medkern._cupy.filters:"
_NUMBA = "medkern._numba.filters:"
separable_correlate = Kernel("separable_correlate", cpp="separable_correlate",
                             numba=_NUMBA + "separable_correlate",
                             cuda=_CUPY + "separable_correlate_cuda", cupy=_CUPY + "separable_correlate")
recursive_gaussian = Kernel("recursive_gaussian", cpp="recursive_gaussian",
                            numba=_NUMBA + "recursive_gaussian")
median_filter = Kernel("median_filter", cpp="median_filter", numba=_NUMBA + "median_filter",
                       cuda=_CUPY + "median_filter_cuda", cupy=_CUPY + "median_filter")
bilateral_filter = Kernel("bilateral_filter", cpp="bilateral_filter", numba=_NUMBA + "bilateral_filter",
                          cuda=_CUPY + "bilateral_filter_cuda", cupy=_CUPY + "bilateral_filter")
diffusion = Kernel("anisotropic_diffusion", cpp="anisotropic_diffusion",
                   numba=_NUMBA + "anisotropic_diffusion")


# ------------------------------------------------------------------ argument handling
def _spacing(image, x) -> tuple[float, ...]:
    return tuple(image.spacing) if image is not None else (1.0,) * x.ndim


def _check_nonempty(x, fn: str) -> None:
    if x.size == 0:
        raise ValueError(f"{fn}: the image is empty (shape {tuple(x.shape)})")


def _mode_code(mode: str, fn: str) -> int:
    if mode not in MODES:
        raise ValueError(f"{fn}: mode must be one of {MODES}, got {mode!r}")
    return MODES.index(mode)


def _sigma_vox(sigma_mm, sigma_vox, spacing, fn: str) -> tuple[float, ...]:
    """Per-axis sigma in voxels from exactly one of sigma_mm / sigma_vox (0 = axis untouched)."""
    ndim = len(spacing)
    if (sigma_mm is None) == (sigma_vox is None):
        raise ValueError(f"{fn}: give exactly one of sigma_mm (physical) or sigma_vox (voxels)")
    name = "sigma_mm" if sigma_mm is not None else "sigma_vox"
    s = per_axis(sigma_mm if sigma_mm is not None else sigma_vox, ndim, f"{fn}: {name}")
    if any(v < 0 for v in s):
        raise ValueError(f"{fn}: {name} must be >= 0, got {s}")
    if sigma_mm is not None:
        s = tuple(v / sp for v, sp in zip(s, spacing))
    return s


# Bounds on window sizes, so that the work stays proportional to the image: a box or kernel
# radius beyond these (per axis of n voxels) only adds copies of the boundary and raises
# ValueError. FIR kernels: radius <= 16 n + 64 (e.g. sigma up to 4 n at truncate=4); recursive
# Gaussian: sigma <= 4 n voxels; median and bilateral boxes: radius <= n; diffusion iterations.
MAX_DIFFUSION_ITERATIONS = 100_000


def _check_fir_radius(shape, radii, fn: str, what: str = "kernel radius") -> None:
    for axis, (n, r) in enumerate(zip(shape, radii)):
        if r > 16 * n + 64:
            raise ValueError(f"{fn}: {what} of {r} voxels along axis {axis} is far beyond the image ({n} voxels "
                             f"there; at most 16 x {n} + 64): a wider kernel only repeats the boundary")


def _check_box_radius(shape, radii, fn: str) -> None:
    for axis, (n, r) in enumerate(zip(shape, radii)):
        if r > n:
            raise ValueError(f"{fn}: radius {r} along axis {axis} exceeds the image extent ({n} voxels there); "
                             "a larger box only adds copies of the boundary. Use a radius <= the axis length")


def _check_recursive_sigma(shape, sv, fn: str) -> None:
    for axis, (n, s) in enumerate(zip(shape, sv)):
        if s > 4 * n:
            raise ValueError(f"{fn}: sigma of {s:g} voxels along axis {axis} exceeds 4 x the axis length ({n} "
                             "voxels); the recursive filter's coefficients lose their precision there. Use a "
                             "smaller sigma or method='fir'")


def _check_truncate(truncate: float, fn: str) -> float:
    truncate = float(truncate)
    if not (np.isfinite(truncate) and truncate > 0):
        raise ValueError(f"{fn}: truncate must be positive (kernel half-width in sigmas), got {truncate}")
    return truncate


def gaussian_kernel(sigma_vox: float, truncate: float = 4.0, order: int = 0) -> np.ndarray:
    """The 1D kernel scipy.ndimage.gaussian_filter1d correlates with (radius
    ``int(truncate * sigma + 0.5)``, weights normalised to sum 1 before differentiation); order 2
    gives the second derivative. Empty for sigma 0 (no filtering along that axis)."""
    if sigma_vox == 0:
        return np.zeros(0, np.float32)
    radius = int(truncate * sigma_vox + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / sigma_vox**2 * x * x)
    phi /= phi.sum()
    if order == 2:
        phi = phi * (x * x / sigma_vox**4 - 1.0 / sigma_vox**2)
    return phi.astype(np.float32)


# ------------------------------------------------------------------ public API
def gaussian(img: Any, sigma_mm: Any = None, *, sigma_vox: Any = None, truncate: float = 4.0,
             method: str = "fir", mode: str | None = None, cval: float = 0.0,
             backend: str = "auto") -> Any:
    """Gaussian smoothing with per-axis sigma in mm (``sigma_vox`` for voxel units).

    - ``method="fir"`` (default): exact separable correlation with the sampled Gaussian of radius
      ``int(truncate * sigma_vox + 0.5)`` normalised to sum 1, boundary ``mode`` (default
      ``"reflect"``): the definition of ``scipy.ndimage.gaussian_filter`` with the same
      ``truncate``.
    - ``method="recursive"``: Deriche's 4th-order recursive Gaussian as SimpleITK's
      ``SmoothingRecursiveGaussian`` computes it (lines extended by their end values, i.e.
      ``mode="nearest"``; cost independent of sigma). Each smoothed axis needs >= 4 voxels;
      ``truncate`` does not apply. CPU backends only.

    A sigma of 0 leaves that axis untouched. Returns float32. Non-finite voxels propagate as in
    scipy.ndimage: NaN and +-inf spread over the kernel's support (+inf next to -inf gives NaN).
    A FIR kernel radius above ``16 n + 64`` voxels along an axis of n voxels, or a recursive
    sigma above ``4 n`` voxels, raises ValueError (no benefit, unbounded work or precision loss).
    """
    x, image, rewrap = unwrap(img)
    _check_nonempty(x, "gaussian")
    sv = _sigma_vox(sigma_mm, sigma_vox, _spacing(image, x), "gaussian")
    truncate = _check_truncate(truncate, "gaussian")
    if method == "fir":
        code = _mode_code("reflect" if mode is None else mode, "gaussian")
        _check_fir_radius(x.shape, [int(truncate * s + 0.5) for s in sv], "gaussian")
        kernels = [gaussian_kernel(s, truncate) for s in sv]
        return rewrap(separable_correlate(x, kernels, code, float(cval), backend=backend))
    if method == "recursive":
        if mode not in (None, "nearest"):
            raise ValueError("gaussian: method='recursive' extends lines by their end values "
                             f"(mode='nearest'); mode={mode!r} needs method='fir'")
        short = [n for n, s in zip(x.shape, sv) if s > 0 and n < 4]
        if short:
            raise ValueError(f"gaussian: method='recursive' needs >= 4 voxels along each smoothed "
                             f"axis, got shape {tuple(x.shape)}; use method='fir'")
        _check_recursive_sigma(x.shape, sv, "gaussian")
        return rewrap(recursive_gaussian(x, sv, backend=backend))
    raise ValueError(f"gaussian: method must be 'fir' or 'recursive', got {method!r}")


def mean_filter(img: Any, radius: Any = 1, *, mode: str = "reflect", cval: float = 0.0,
                backend: str = "auto") -> Any:
    """Mean (box) filter over ``2 * radius + 1`` voxels per axis (radius per array axis, voxels).

    The IBSI 2 mean filter (IBSI 2 reference manual, "Mean filter") with its padding choices:
    ``mode="constant"`` (zero), ``"nearest"``, ``"wrap"`` (periodic), ``"reflect"`` (symmetric).
    Equals ``scipy.ndimage.uniform_filter(size=2r+1)``. Returns float32 (NaN and +-inf spread over
    the box, as in scipy). A radius above ``16 n + 64`` along an axis of n voxels raises ValueError.
    """
    x, _, rewrap = unwrap(img)
    _check_nonempty(x, "mean_filter")
    r = _radius(radius, x.ndim, "mean_filter")
    _check_fir_radius(x.shape, r, "mean_filter", "radius")
    code = _mode_code(mode, "mean_filter")
    kernels = [np.full(2 * v + 1, 1.0 / (2 * v + 1), np.float32) if v else np.zeros(0, np.float32)
               for v in r]
    return rewrap(separable_correlate(x, kernels, code, float(cval), backend=backend))


def log_filter(img: Any, sigma_mm: Any = None, *, sigma_vox: Any = None, truncate: float = 4.0,
               mode: str = "reflect", cval: float = 0.0, backend: str = "auto") -> Any:
    """Laplacian of Gaussian, sum over axes of the second Gaussian derivative along that axis.

    Derivatives are physical (per mm^2: the voxel-unit response along axis a is divided by
    spacing_a^2); for a bare array (unit spacing) this is exactly
    ``scipy.ndimage.gaussian_laplace(sigma, mode, truncate)``. The IBSI 2 LoG filter (IBSI 2
    reference manual, "Laplacian of Gaussian") with its 4-sigma truncation. Returns float32 (NaN
    and +-inf spread over the kernel's support, as in scipy); kernel radius bounded as in
    :func:`gaussian`.
    """
    x, image, rewrap = unwrap(img)
    _check_nonempty(x, "log_filter")
    spacing = _spacing(image, x)
    sv = _sigma_vox(sigma_mm, sigma_vox, spacing, "log_filter")
    if any(s == 0 for s in sv):
        raise ValueError(f"log_filter: sigma must be > 0 on every axis, got {sv} voxels")
    truncate = _check_truncate(truncate, "log_filter")
    code = _mode_code(mode, "log_filter")
    _check_fir_radius(x.shape, [int(truncate * s + 0.5) for s in sv], "log_filter")
    smooth = [gaussian_kernel(s, truncate) for s in sv]
    out = None
    for a in range(x.ndim):
        kernels = list(smooth)
        kernels[a] = gaussian_kernel(sv[a], truncate, order=2) / np.float32(spacing[a] ** 2)
        term = separable_correlate(x, kernels, code, float(cval), backend=backend)
        with np.errstate(invalid="ignore"):  # +inf meeting -inf gives NaN, as in scipy
            out = term if out is None else out + term
    return rewrap(out)


def unsharp_mask(img: Any, sigma_mm: Any = None, amount: float = 1.0, *, sigma_vox: Any = None,
                 method: str = "fir", mode: str | None = None, truncate: float = 4.0,
                 backend: str = "auto") -> Any:
    """Unsharp masking ``x + amount * (x - gaussian(x))``.

    The blur is :func:`gaussian` with the same ``method`` / ``mode`` / ``truncate``:
    ``method="recursive"`` reproduces SimpleITK ``UnsharpMask`` (threshold 0); ``method="fir"``
    uses the scipy ``gaussian_filter`` definition.
    Returns float32; non-finite voxels propagate (NaN, and NaN where the blur meets +-inf), sigma
    bounded as in :func:`gaussian`.
    """
    amount = float(amount)
    if not np.isfinite(amount):
        raise ValueError(f"unsharp_mask: amount must be finite, got {amount}")
    x, image, rewrap = unwrap(img)
    blurred = gaussian(x if image is None else image, sigma_mm, sigma_vox=sigma_vox,
                       truncate=truncate, method=method, mode=mode, backend=backend)
    blurred = blurred.array if image is not None else blurred
    xp = array_module(blurred)
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite voxels propagate (docstring)
        xf = x.astype(xp.float32, copy=False)
        return rewrap((xf + xp.float32(amount) * (xf - blurred)).astype(xp.float32, copy=False))


def _radius(radius: Any, ndim: int, fn: str) -> tuple[int, ...]:
    r = per_axis(radius, ndim, f"{fn}: radius")
    if any(v < 0 or v != int(v) for v in r):
        raise ValueError(f"{fn}: radius must be non-negative integers (voxels), got {r}")
    return tuple(int(v) for v in r)


def _reject_nan(x, fn: str) -> None:
    """NaN and +-inf alike (the package-wide policy, _util.check_finite)."""
    check_finite(x, fn)


def median(img: Any, radius: Any = 1, *, mode: str = "nearest", backend: str = "auto") -> Any:
    """Median over the ``(2 r + 1)`` box per array axis (radius in voxels, any size, 2D and 3D).

    Default ``mode="nearest"`` equals SimpleITK ``Median`` (zero-flux Neumann boundary);
    ``mode="reflect"`` equals scipy ``median_filter(size=2r+1)`` with its default mode; every
    scipy mode is accepted (``"constant"`` pads with 0). Values are selected, never averaged, so
    the result has the input's dtype and is exact. Non-finite voxels (NaN, +-inf) raise ValueError
    with their count; a radius beyond the axis length raises ValueError.
    """
    x, _, rewrap = unwrap(img)
    _check_nonempty(x, "median")
    r = _radius(radius, x.ndim, "median")
    _check_box_radius(x.shape, r, "median")
    code = _mode_code(mode, "median")
    _reject_nan(x, "median")
    return rewrap(median_filter(x, r, code, backend=backend))


# ITK BilateralImageFilter constants: kernel radius ceil(2.5 sigma / spacing), range Gaussian
# tabulated at 100 samples up to 4 sigma_range.
BILATERAL_DOMAIN_MU = 2.5
BILATERAL_RANGE_MU = 4.0
BILATERAL_RANGE_SAMPLES = 100


def bilateral(img: Any, sigma_spatial_mm: Any, sigma_range: float, *, radius: Any = None,
              backend: str = "auto") -> Any:
    """Edge-preserving bilateral filter (Tomasi & Manduchi 1998), 2D and 3D.

    Weight of neighbour q for voxel p: the Gaussian of the physical offset (``sigma_spatial_mm``
    per array axis) times the Gaussian of the intensity difference (``sigma_range``, intensity
    units). Defined as SimpleITK ``Bilateral``: box of radius ``ceil(2.5 sigma / spacing)`` voxels
    per axis (override with ``radius``), range Gaussian tabulated at 100 steps up to
    ``4 sigma_range`` and zero beyond, nearest-sample boundary. Returns float32. Non-finite
    voxels (NaN, +-inf) raise ValueError with their count; a box radius (given, or from
    ``sigma_spatial_mm``) beyond the axis length raises ValueError.
    """
    x, image, rewrap = unwrap(img)
    _check_nonempty(x, "bilateral")
    spacing = _spacing(image, x)
    sig = per_axis(sigma_spatial_mm, x.ndim, "bilateral: sigma_spatial_mm")
    if any(s <= 0 for s in sig):
        raise ValueError(f"bilateral: sigma_spatial_mm must be > 0, got {sig}")
    sigma_range = float(sigma_range)
    if not (np.isfinite(sigma_range) and sigma_range > 0):
        raise ValueError(f"bilateral: sigma_range must be positive and finite, got {sigma_range}")
    if radius is None:
        r = tuple(int(math.ceil(BILATERAL_DOMAIN_MU * s / sp)) for s, sp in zip(sig, spacing))
    else:
        r = _radius(radius, x.ndim, "bilateral")
    _check_box_radius(x.shape, r, "bilateral")
    _reject_nan(x, "bilateral")
    return rewrap(bilateral_filter(x, spacing, sig, r, sigma_range, BILATERAL_RANGE_MU,
                                   BILATERAL_RANGE_SAMPLES, backend=backend))


def anisotropic_diffusion(img: Any, iterations: int = 5, time_step: float | None = None,
                          conductance: float = 1.0, *, method: str = "gradient",
                          backend: str = "auto") -> Any:
    """Edge-preserving anisotropic diffusion, as ITK discretises it.

    - ``method="gradient"``: Perona-Malik conductance exp(-|grad|^2 / (2 c^2 <|grad|^2>)), the
      ``GradientAnisotropicDiffusion`` of SimpleITK.
    - ``method="curvature"``: the modified curvature diffusion of Whitaker & Xue, SimpleITK's
      ``CurvatureAnisotropicDiffusion``.

    ``conductance`` is c, relative to the image's mean gradient magnitude (recomputed every
    iteration). Derivatives use the spacing (mm). ``time_step=None`` takes the stable step
    ``min(spacing) / 2^(ndim + 1)``; a larger step warns, as ITK does. Computed and returned in
    float32 (integer input is converted). Non-finite voxels (NaN, +-inf) raise ValueError with
    their count; more than 100000 iterations raise ValueError.
    """
    x, image, rewrap = unwrap(img)
    _check_nonempty(x, "anisotropic_diffusion")
    kinds = {"gradient": 0, "curvature": 1}
    if method not in kinds:
        raise ValueError(f"anisotropic_diffusion: method must be 'gradient' or 'curvature', got {method!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise ValueError(f"anisotropic_diffusion: iterations must be a non-negative integer, got {iterations!r}")
    if iterations > MAX_DIFFUSION_ITERATIONS:
        raise ValueError(f"anisotropic_diffusion: iterations must be <= {MAX_DIFFUSION_ITERATIONS}, got {iterations}")
    conductance = float(conductance)
    if not (np.isfinite(conductance) and conductance > 0):
        raise ValueError(f"anisotropic_diffusion: conductance must be positive, got {conductance}")
    spacing = _spacing(image, x)
    stable = min(spacing) / 2.0 ** (x.ndim + 1)
    if time_step is None:
        time_step = stable
    time_step = float(time_step)
    if not (np.isfinite(time_step) and time_step > 0):
        raise ValueError(f"anisotropic_diffusion: time_step must be positive, got {time_step}")
    if time_step > stable * (1 + 1e-12):
        warnings.warn(f"anisotropic_diffusion: time_step {time_step} exceeds the stable step "
                      f"{stable:g} (min spacing / 2^(ndim+1)); the result may oscillate",
                      RuntimeWarning, stacklevel=2)
    _reject_nan(x, "anisotropic_diffusion")
    return rewrap(diffusion(x, spacing, int(iterations), time_step, conductance, kinds[method],
                            backend=backend))
