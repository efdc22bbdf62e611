"""Image registration: rigid, affine and diffeomorphic alignment of a moving image onto a fixed one.

``register(fixed, moving)`` returns the transform that maps FIXED world points to MOVING world
points (ITK convention), i.e. exactly what ``warp(moving, res.transform, reference=fixed)`` needs.

Metrics (all minimised; the value reported in ``RegistrationResult.metric`` uses this sign):

- ``"mse"``: mean of ``(m - f)^2`` over the samples that land inside the moving image
  (ITK ``MeanSquaresImageToImageMetricv4``).
- ``"ncc"``: ``-sfm^2 / (sff * smm)`` with intensities centred on their means, i.e. minus the
  squared correlation coefficient, -1 at a perfect linear relation (ITK
  ``CorrelationImageToImageMetricv4``).
- ``"mi"``: minus the Mattes et al. 2003 mutual information with ITK's binning (50 bins, box
  window on the fixed intensity, cubic B-spline on the moving one), ITK
  ``MattesMutualInformationImageToImageMetricv4``.

Values agree with SimpleITK's ``ImageRegistrationMethod.MetricEvaluate`` (tests). Gradients are
analytic, exact derivatives of the trilinearly interpolated metric, computed in the same C++ pass.

Optimisation: a regular-step gradient descent in physical units. Rotation and linear parameters
are scaled by the radius of the sampled region, so one unit of every parameter moves points by
about 1 mm; each step moves points by ``step`` mm along the normalised gradient, the step halves
whenever the gradient turns by more than 90 degrees, and a level stops when the step falls below
``0.005 x`` the level spacing or after ``max_iterations`` steps. Updates are composed on the
right of the current transform (compositional parameterisation), so rotation parameters stay
small and there is no gimbal lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

from medkern._dispatch import Kernel, is_cupy_array
from medkern._docstrings import fill_doc
from medkern._progress import Progress
from medkern._transforms import Affine, DisplacementField, Transform
from medkern._typing import ImageLike, ProgressArg
from medkern._util import as_image, check_finite, check_mask
from medkern.image import Image

__all__ = ["register", "RegistrationResult", "metric_value"]

TRANSFORMS = ("rigid", "affine", "deformable")
MI_BINS = 50
AUTO_SAMPLES = 1 << 16
# Rough costs (ns, 2-core CPU) that size the progress span of each stage: one metric sample with
# its gradient, one voxel of a level's smooth-and-shrink, one voxel of a field iteration (force,
# two smoothings, exponential), one voxel of the final exponentials; and the optimiser steps a
# level is expected to take (most stop well before max_iterations).
_SAMPLE_NS, _SHRINK_NS, _FIELD_NS, _EXP_NS = 35.0, 3.0, 250.0, 80.0
_EXPECTED_STEPS = 25


# ---------------------------------------------------------------------------- compiled kernels
metric_kernel = Kernel("registration_metric", cpp="registration_metric",
                       cuda="medkern._cupy.registration:registration_metric_cuda")
smooth_shrink = Kernel("smooth_shrink", cpp="smooth_shrink",
                       cuda="medkern._cupy.registration:smooth_shrink",
                       cupy="medkern._cupy.registration:smooth_shrink")
force_kernel = Kernel("lncc_force", cpp="lncc_force")
exp_kernel = Kernel("field_exponential", cpp="field_exponential")
max_norm_kernel = Kernel("field_max_norm", cpp="field_max_norm")
update_kernel = Kernel("velocity_update", cpp="velocity_update")
warp_field_kernel = Kernel("warp_field_gradient", cpp="warp_field_gradient")
resample_field_kernel = Kernel("resample_field", cpp="resample_field")


# ---------------------------------------------------------------------------- result
@dataclass
class RegistrationResult:
    """What :func:`register` found.

    Parameters
    ----------
    transform : Affine or composite
        Maps fixed world points to moving world points (use it with ``warp``): an
        :class:`~medkern.Affine` for rigid/affine registrations, ``Affine @ DisplacementField``
        (the field applied first) for deformable ones.
    matrix : numpy.ndarray
        The affine part as a 4x4 LPS matrix.
    metric : float
        The final value of the metric on the finest level (minimised: see :func:`register`).
    metric_name : str
        ``"mi"``, ``"ncc"``, ``"mse"`` or ``"lncc"``.
    iterations : tuple of int
        Optimiser steps per pyramid level, coarse to fine (affine levels, then field levels for
        deformable registrations).
    levels : tuple of int
        The shrink factors used.
    history : list of list of float, optional
        The metric value at each step, per level.
    field : DisplacementField, optional
        Deformable registrations: the diffeomorphic part exp(v) on the fixed grid.
    inverse_field : DisplacementField, optional
        Deformable registrations: its inverse exp(-v).

    See Also
    --------
    register : Makes one.
    warp : Apply ``transform``.

    Examples
    --------
    >>> k, j, i = np.mgrid[:32, :32, :32]
    >>> blob = ((k - 16) ** 2 + 2 * (j - 15) ** 2 + 0.7 * (i - 16) ** 2 < 100) * np.float32(100)
    >>> fixed = mk.Image(blob, spacing=2.0)
    >>> moving = mk.Image(np.roll(blob, 2, axis=2), spacing=2.0)     # 4 mm along +x
    >>> res = mk.register(fixed, moving, transform="rigid", metric="mse", levels=(2, 1))
    >>> len(res.iterations) == len(res.levels), res.field is None
    (True, True)
    """

    transform: Transform
    matrix: np.ndarray
    metric: float
    metric_name: str
    iterations: tuple[int, ...]
    levels: tuple[int, ...]
    history: list[list[float]] = dc_field(default_factory=list, repr=False)
    field: DisplacementField | None = None
    inverse_field: DisplacementField | None = None

    @property
    def inverse_transform(self) -> Transform:
        """The moving -> fixed world transform: ``warp(fixed, res.inverse_transform, reference=moving)``."""
        inv = Affine(np.linalg.inv(self.matrix))
        return inv if self.inverse_field is None else self.inverse_field @ inv


# ---------------------------------------------------------------------------- pyramid
@dataclass
class _Level:
    array: Any  # float32, numpy or cupy
    affine: np.ndarray  # index -> world
    mask: Any = None  # uint8 or None

    @property
    def world_to_index(self) -> np.ndarray:
        return np.linalg.inv(self.affine)


def _level_image(img: Image, array: Any, mask: Any, target_mm: float, smooth: bool,
                 backend: str) -> _Level:
    """The image shrunk to about ``target_mm`` spacing, smoothed with sigma = target / 2 mm."""
    spacing = np.asarray(img.spacing)
    shrink = np.maximum(1, np.round(target_mm / spacing)).astype(int)
    sigma_vox = (0.5 * target_mm / spacing) if smooth else np.zeros(3)
    affine = img.affine.copy()
    offset = (shrink - 1) / 2.0
    affine[:3, 3] = img.index_to_world(offset)
    affine[:3, :3] = affine[:3, :3] * shrink[None, :]
    if np.all(shrink == 1) and not smooth:
        out = array
        lmask = mask
    else:
        out = smooth_shrink(array, shrink, sigma_vox, backend=backend)
        lmask = None
        if mask is not None:
            m = smooth_shrink(mask, shrink, np.zeros(3), backend=backend)
            xp = np if not is_cupy_array(m) else __import__("cupy")
            lmask = xp.ascontiguousarray(m >= 0.5, dtype=xp.uint8)
    return _Level(out, affine, lmask)


# ---------------------------------------------------------------------------- transforms
def _skew(i: int) -> np.ndarray:
    k = np.zeros((3, 3))
    a, b = [(1, 2), (2, 0), (0, 1)][i]
    k[a, b], k[b, a] = -1.0, 1.0
    return k


def _rotation(omega: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: the rotation by |omega| radians about omega."""
    theta = float(np.linalg.norm(omega))
    k = sum(w * _skew(i) for i, w in enumerate(omega))
    if theta < 1e-12:
        return np.eye(3) + k
    return np.eye(3) + np.sin(theta) / theta * k + (1 - np.cos(theta)) / theta**2 * (k @ k)


class _Model:
    """A compositional parameterisation T(delta) = T0 o S(delta) about a centre c.

    ``generators`` are (3x3 linear part, 3-vector translation part) of dS/d delta_p at 0; rotation
    and linear generators carry the physical scale ``radius`` (mm per unit).
    """

    def __init__(self, kind: str, centre: np.ndarray, radius: float):
        self.kind = kind
        self.centre = centre
        gens = []
        if kind == "rigid":
            gens += [(_skew(i), None) for i in range(3)]
        else:
            for r in range(3):
                for c in range(3):
                    e = np.zeros((3, 3))
                    e[r, c] = 1.0
                    gens.append((e, None))
        n_lin = len(gens)
        gens += [(np.zeros((3, 3)), np.eye(3)[i]) for i in range(3)]
        self.generators = gens
        self.scales = np.array([radius] * n_lin + [1.0] * 3)

    def gradient(self, T0: np.ndarray, G: np.ndarray) -> np.ndarray:
        """dV/d delta at delta = 0 from G = dV/d(A | b) of the world transform p -> A p + b."""
        A0 = T0[:3, :3]
        out = np.empty(len(self.generators))
        for p, (gm, gv) in enumerate(self.generators):
            dA = A0 @ gm
            db = A0 @ ((gv if gv is not None else 0.0) - gm @ self.centre)
            out[p] = np.sum(G[:, :3] * dA) + G[:, 3] @ db
        return out

    def update(self, T0: np.ndarray, delta: np.ndarray) -> np.ndarray:
        n_lin = len(delta) - 3
        if self.kind == "rigid":
            lin = _rotation(delta[:3])
        else:
            lin = np.eye(3) + delta[:n_lin].reshape(3, 3)
        S = np.eye(4)
        S[:3, :3] = lin
        S[:3, 3] = self.centre - lin @ self.centre + delta[n_lin:]
        return T0 @ S


# ---------------------------------------------------------------------------- metric
class _LevelMetric:
    """The metric of one pyramid level as a function of the 4x4 fixed -> moving world transform."""

    def __init__(self, fixed: _Level, moving: _Level, indices: Any, kind: str, backend: str):
        self.fixed, self.moving, self.indices, self.kind = fixed, moving, indices, kind
        self.backend = backend
        self.ranges = (0.0, 1.0, 0.0, 1.0)
        if kind == "mi":
            fr = _masked_range(fixed.array, fixed.mask)
            mr = _masked_range(moving.array, moving.mask)
            self.ranges = fr + mr
        self._w2i = moving.world_to_index
        # Gathered once: the optimiser then never touches the (large) fixed image again.
        self.values = None if indices is None else fixed.array.ravel()[indices]

    def __call__(self, T: np.ndarray) -> tuple[float, np.ndarray, float]:
        to_moving = np.ascontiguousarray((self._w2i @ T @ self.fixed.affine)[:3])
        value, H, count = metric_kernel(self.fixed.array, self.moving.array, self.indices,
                                        self.values, self.moving.mask, to_moving, self.kind, MI_BINS,
                                        self.ranges, backend=self.backend)
        G = self._w2i[:3, :3].T @ np.asarray(H) @ self.fixed.affine.T
        return float(value), G, float(count)


def _masked_range(a: Any, mask: Any) -> tuple[float, float]:
    v = a[mask.astype(bool)] if mask is not None else a
    if v.size == 0:
        raise ValueError("a mask selects no voxel; give a mask that overlaps the image")
    return float(v.min()), float(v.max())


def _sample_indices(n_vox: int, mask: Any, sampling: Any, strategy: str, rng: np.random.Generator,
                    xp: Any) -> Any:
    """Linear indices of the fixed samples of one level (None: every voxel)."""
    if mask is not None:
        candidates = xp.flatnonzero(mask.ravel())
    else:
        candidates = None
    n_cand = n_vox if candidates is None else int(candidates.size)
    if n_cand == 0:
        raise ValueError("mask selects no voxel of the fixed image at this pyramid level; "
                         "give a larger mask or fewer levels")
    if sampling == "full":
        want = n_cand
    elif sampling is None:
        want = min(n_cand, AUTO_SAMPLES)
    elif isinstance(sampling, float):
        want = max(1, int(round(sampling * n_cand)))
    else:
        want = min(n_cand, int(sampling))
    if want >= n_cand:
        return candidates
    if strategy == "regular":
        pick = np.linspace(0, n_cand - 1, want).round().astype(np.int64)
    else:
        pick = np.sort(rng.choice(n_cand, size=want, replace=False))
    pick = xp.asarray(pick)
    out = pick if candidates is None else candidates[pick]
    return xp.ascontiguousarray(out, dtype=xp.int64)


def _optimise(metric: _LevelMetric, model: _Model, T: np.ndarray, step_mm: float,
              min_step_mm: float, max_iterations: int, progress: Progress, stage: str
              ) -> tuple[np.ndarray, float, int, list[float]]:
    """Regular-step gradient descent in physical units (see the module docstring).

    Progress is the larger of the share of ``max_iterations`` run and the share of the step
    halvings (from ``step_mm`` down to ``min_step_mm``) made: whichever ends the level first."""
    best_T, best_v = T, np.inf
    prev = None
    step = step_mm
    history = []
    it = 0
    halvings = math.log2(step_mm / min_step_mm)
    for it in range(1, max_iterations + 1):
        progress.update(stage, max((it - 1) / max_iterations, math.log2(step_mm / step) / halvings))
        value, G, count = metric(T)
        if count == 0:
            raise RuntimeError("registration lost all overlap between the images; try "
                               "initial='moments' or a closer initial transform")
        history.append(value)
        if value < best_v:
            best_T, best_v = T, value
        g = model.gradient(T, G) / model.scales
        norm = float(np.linalg.norm(g))
        if norm == 0.0 or not np.isfinite(norm):
            break
        g = g / norm
        if prev is not None and float(g @ prev) < 0:
            step *= 0.5
        if step < min_step_mm:
            break
        prev = g
        T = model.update(T, -step * g / model.scales)
    return best_T, best_v, it, history


# ---------------------------------------------------------------------------- initialisation
def _centre(img: Image) -> np.ndarray:
    return img.index_to_world((np.asarray(img.shape) - 1) / 2.0)


def _moments(img: Image, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre of mass and principal axes (columns, largest first) of the intensities >= 0."""
    w = np.clip(np.asarray(array, dtype=np.float64), 0, None)
    total = w.sum()
    if not total > 0:
        raise ValueError("initial='moments' needs an image with positive intensities")
    grids = np.indices(img.shape, dtype=np.float64).reshape(3, -1)
    wf = w.ravel()
    mean_idx = grids @ wf / total
    d = grids - mean_idx[:, None]
    cov_idx = (d * wf) @ d.T / total
    m = img.affine[:3, :3]
    cov = m @ cov_idx @ m.T
    _, vecs = np.linalg.eigh(cov)
    return img.index_to_world(mean_idx), vecs[:, ::-1]


def _initial_transform(initial: Any, fixed: Image, moving: Image) -> np.ndarray:
    if isinstance(initial, str):
        T = np.eye(4)
        if initial == "identity":
            return T
        if initial == "geometry":
            T[:3, 3] = _centre(moving) - _centre(fixed)
            return T
        if initial == "moments":
            cf, ef = _moments(fixed, np.asarray(fixed))
            cm, em = _moments(moving, np.asarray(moving))
            # Eigenvectors have arbitrary signs: of the proper rotations mapping the fixed axes
            # onto the moving ones, take the one closest to the identity.
            best = None
            for signs in np.array(np.meshgrid([1, -1], [1, -1], [1, -1])).T.reshape(-1, 3):
                R = (em * signs) @ ef.T
                if np.linalg.det(R) > 0 and (best is None or np.trace(R) > np.trace(best)):
                    best = R
            T[:3, :3] = best
            T[:3, 3] = cm - best @ cf
            return T
        raise ValueError(f"initial must be 'geometry', 'moments', 'identity', an Affine or a 4x4 "
                         f"matrix, got {initial!r}")
    if isinstance(initial, Transform) and not isinstance(initial, Affine):
        raise ValueError("initial must be an Affine (a displacement field cannot start a "
                         "rigid/affine optimisation)")
    matrix = initial.matrix if isinstance(initial, Affine) else initial
    T = np.asarray(matrix, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)) or abs(np.linalg.det(T[:3, :3])) < 1e-12:
        raise ValueError("initial must be 'geometry', 'moments', an Affine or an invertible "
                         f"finite 4x4 matrix, got shape {T.shape}")
    return T


# ---------------------------------------------------------------------------- public API
def _check_image(img: Any, name: str) -> Image:
    image = as_image(img, name)
    if image.is_vector:
        raise ValueError(f"{name} is a vector image; register takes scalar images")
    if image.ndim != 3:
        raise ValueError(f"{name} must be a 3D image, got {image.ndim}D; register 2D images as "
                         "3D images with one slice")
    if image.size == 0:
        raise ValueError(f"{name} is empty (shape {image.shape})")
    a = image.array
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} has dtype {a.dtype}; expected a numeric image")
    return image


def _as_float32(img: Image, name: str) -> Any:
    a = img.array
    xp = np if not is_cupy_array(a) else __import__("cupy")
    check_finite(a, "registration", name, hint="replace them before registering")
    with np.errstate(over="ignore"):
        a = xp.ascontiguousarray(a, dtype=xp.float32)
    if not bool(xp.isfinite(a).all()):
        raise ValueError(f"registration: {name} has values beyond the float32 range registration computes in; "
                         "rescale the image first")
    return a


# Scaling and squaring halves the velocity until its largest vector is under this many voxels.
EXP_HALVING_VOX = 0.5

# Iteration caps (per level): optimisers converge or stall long before; beyond is a mistake.
MAX_ITERATIONS = 100_000


@fill_doc
def register(fixed: ImageLike, moving: ImageLike, transform: str = "rigid", metric: str | None = None,
             levels: Sequence[int] = (4, 2, 1), initial: str | Affine | ArrayLike = "geometry",
             mask: ImageLike | None = None, moving_mask: ImageLike | None = None,
             sampling: float | str | None = None, sampling_strategy: str = "random",
             seed: int = 0, max_iterations: int = 200, *,
             field_iterations: Sequence[int] | None = None, lncc_radius_vox: int = 2,
             field_sigmas_vox: tuple[float, float] = (1.5, 0.5), field_step_vox: float = 0.5,
             field_spacing_mm: float = 2.0, backend: str = "auto",
             progress: ProgressArg = None) -> RegistrationResult:
    """Align a moving image onto a fixed one: rigid, affine or diffeomorphic registration.

    Returns the transform that maps fixed world points to moving world points (ITK convention),
    i.e. exactly what ``warp(moving, res.transform, reference=fixed)`` needs. Optimisation is a
    regular-step gradient descent in physical units (rotation and linear parameters scaled by the
    radius of the sampled region, so one unit of every parameter moves points by about 1 mm;
    updates composed on the right, so there is no gimbal lock); a level stops when the step
    falls below ``0.005 x`` the level spacing or after ``max_iterations`` steps. Metric values
    agree with SimpleITK's ``ImageRegistrationMethod.MetricEvaluate``; gradients are analytic.

    Parameters
    ----------
    fixed : Image or array_like
        3D image (an array is taken at unit spacing), any numeric dtype. The reference grid.
    moving : Image or array_like
        3D image to align onto ``fixed``.
    transform : {"rigid", "affine", "deformable"}, optional
        6 parameters, 12, or an affine stage followed by a diffeomorphic field (see Notes).
    metric : {"mi", "ncc", "mse", "lncc"}, optional
        All minimised, and reported with that sign. ``"mi"``: minus the Mattes et al. 2003
        mutual information with ITK's binning (50 bins), default for rigid/affine, works across
        modalities; ``"ncc"``: minus the squared correlation coefficient (-1 at a perfect linear
        relation); ``"mse"``: mean squared difference over the samples inside the moving image;
        ``"lncc"``: local NCC, the deformable stage's metric (and its only one), reported as
        minus the mean local squared correlation.
    levels : sequence of int, optional
        Pyramid shrink factors, coarse to fine. Level ``s`` resamples both images to about
        ``s x`` the finest fixed spacing (mm) after a Gaussian of sigma ``s x spacing / 2`` mm
        (no smoothing at ``s = 1``).
    initial : {"geometry", "moments", "identity"} or Affine, optional
        ``"geometry"`` aligns the image centres; ``"moments"`` the centres of mass and principal
        axes; ``"identity"`` for images already roughly aligned in world space (e.g. PET and CT
        of one scanner); or an Affine / 4x4 matrix (fixed -> moving).
    mask : Image or array_like of bool, optional
        Only fixed voxels in ``mask`` are samples.
    moving_mask : Image or array_like of bool, optional
        Samples landing outside ``moving_mask`` (nearest voxel) are ignored.
    sampling : None, "full", float or int, optional
        ``None``: at most 65536 samples per level; ``"full"``: every voxel; a fraction in
        (0, 1]; or a number of samples. The sample set is fixed per level, so results are
        deterministic.
    sampling_strategy : {"random", "regular"}, optional
        How samples are drawn (``"random"`` with ``seed``).
    seed : int, optional
        Seed of the random sampling.
    max_iterations : int, optional
        Optimiser steps per level at most (at most 100000).
    field_iterations : sequence of int, optional
        Deformable stage: iterations per level at most (default 30, 20, 10, 10, ... coarse to
        fine, and 0 on levels at least twice as fine as ``field_spacing_mm``); a level also
        stops when 10 iterations gained less than 0.05 %.
    lncc_radius_vox : int, optional
        Deformable stage: the local NCC window is ``2 r + 1`` voxels wide.
    field_sigmas_vox : tuple of float, optional
        Deformable stage: Gaussian sigmas (voxels) of the force and of the velocity field.
    field_step_vox : float, optional
        Deformable stage: the largest update of the velocity, in voxels.
    field_spacing_mm : float, optional
        Deformable stage: the finest grid of the velocity field (mm). A level at least twice as
        fine runs no field iterations by default, nor affine steps; given some
        (``field_iterations``), it computes its force on its own grid and updates the velocity
        on a grid about this coarse (the force smoothed and shrunk onto it, exp(v) read back
        trilinearly). The final field is read (trilinearly) at the fixed voxels. ``0``: the
        velocity on every level's grid and every level iterated, as before this parameter
        existed.
    %(backend)s
        Deformable registration runs on numpy arrays only.
    %(progress)s
        Called once per optimiser step (stages ``"level 1/3"``..., then ``"field level 1/3"``...
        and ``"field"`` for a deformable registration), the levels weighted by their cost.

    Returns
    -------
    RegistrationResult
        The transform (fixed -> moving), its inverse, the final metric value and the iterations
        per level.

    Raises
    ------
    ValueError
        An unknown transform or metric, non-finite voxels (with their count) or values beyond
        float32 range, shrink factors beyond the largest image extent, more than 100000
        iterations per level, an empty mask, or arrays on different devices.
    medkern.Cancelled
        ``progress`` returned False.

    See Also
    --------
    warp : Apply the transform.
    RegistrationResult : What it returns.

    Notes
    -----
    Deformable stage (``transform="deformable"``): an affine registration with ``"mi"`` first,
    then a stationary velocity field on the fixed grid (log-domain diffeomorphic registration):
    each iteration adds the metric force, smoothed by a Gaussian of ``field_sigmas_vox[0]``
    voxels and scaled to ``field_step_vox`` voxels at most, to the velocity, which is then
    smoothed by ``field_sigmas_vox[1]`` voxels. The displacement is the exponential of the
    velocity (scaling and squaring), so it is invertible with a positive Jacobian determinant;
    ``res.inverse_field`` is exp(-v). The field's kernels run in float32.

    With the defaults a 1 mm image gets field levels at 4 and 2 mm (30 and 20 iterations) and
    the 2 mm field read at 1 mm, like ANTs ``SyNOnly``'s defaults, which also stop at half
    resolution (``benchmarks/DEFORMABLE.md``: the MNI152 1 mm T1 under a smooth 12 mm warp).
    ``field_iterations=(30, 20, 3)`` adds 3 iterations of 1 mm forces on the 2 mm velocity;
    ``field_spacing_mm=0`` runs the velocity at 1 mm too (the highest Dice, several times
    slower).

    Examples
    --------
    >>> k, j, i = np.mgrid[:32, :32, :32]
    >>> blob = ((k - 16) ** 2 + 2 * (j - 15) ** 2 + 0.7 * (i - 16) ** 2 < 100) * np.float32(100)
    >>> fixed = mk.Image(blob, spacing=2.0)
    >>> moving = mk.Image(np.roll(blob, 2, axis=2), spacing=2.0)     # 4 mm along +x
    >>> res = mk.register(fixed, moving, transform="rigid", metric="mse", levels=(2, 1))
    >>> res.metric_name, res.levels
    ('mse', (2, 1))
    >>> bool(np.abs(res.transform.translation - [4, 0, 0]).max() < 0.05)
    True
    >>> aligned = mk.warp(moving, res.transform, reference=fixed)
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if transform == "deformable":
        metric = "lncc" if metric is None else metric
        if metric != "lncc":
            raise ValueError(f"metric must be 'lncc' for a deformable registration, got {metric!r}")
    else:
        metric = "mi" if metric is None else metric
        if metric not in ("mse", "ncc", "mi"):
            raise ValueError(f"metric must be 'mi', 'ncc' or 'mse' for a {transform} registration, "
                             f"got {metric!r}")
    fixed_img = _check_image(fixed, "fixed")
    moving_img = _check_image(moving, "moving")
    if is_cupy_array(fixed_img.array) != is_cupy_array(moving_img.array):
        raise ValueError("fixed and moving must both be NumPy or both CuPy arrays")
    levels = tuple(levels)
    if not levels or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in levels):
        raise ValueError(f"levels must be a non-empty sequence of positive integers (shrink "
                         f"factors, coarse to fine), got {levels!r}")
    extent = max(max(fixed_img.shape), max(moving_img.shape))
    if max(levels) > extent:
        # The pyramid's smoothing grows with the factor: beyond the image it only costs time.
        raise ValueError(f"levels: shrink factor {max(levels)} exceeds the largest image extent ({extent} voxels); "
                         "use factors no larger than the image")
    if sampling_strategy not in ("random", "regular"):
        raise ValueError(f"sampling_strategy must be 'random' or 'regular', got {sampling_strategy!r}")
    _check_sampling(sampling)
    if not isinstance(max_iterations, (int, np.integer)) or not 1 <= max_iterations <= MAX_ITERATIONS:
        raise ValueError(f"max_iterations must be a positive integer <= {MAX_ITERATIONS}, got {max_iterations!r}")
    cfg = None
    if transform == "deformable":
        if is_cupy_array(fixed_img.array):
            raise ValueError("deformable registration runs on NumPy arrays; pass fixed.get() and "
                             "moving.get() (rigid and affine registration run on CuPy arrays)")
        cfg = _deformable_settings(levels, field_iterations, lncc_radius_vox, field_sigmas_vox,
                                   field_step_vox, field_spacing_mm, fixed_img.spacing)
    fmask = check_mask(mask, fixed_img.shape, "mask")
    mmask = check_mask(moving_mask, moving_img.shape, "moving_mask")
    if fmask is not None and not bool(fmask.any()):
        raise ValueError("mask selects no voxel of the fixed image")
    if mmask is not None and not bool(mmask.any()):
        raise ValueError("moving_mask selects no voxel of the moving image")
    prog = Progress(progress, "register")
    T = _initial_transform(initial, fixed_img, moving_img)
    fa = _as_float32(fixed_img, "fixed")
    ma = _as_float32(moving_img, "moving")
    xp = np if not is_cupy_array(fa) else __import__("cupy")
    rng = np.random.default_rng(seed)
    base = float(min(fixed_img.spacing))
    linear_model = "affine" if transform == "deformable" else transform
    linear_metric = "mi" if transform == "deformable" else metric
    iterations, history = [], []
    value = np.nan
    n_levels = len(levels)
    with prog:
        spans = prog.split(_stage_costs(fixed_img, moving_img, levels, sampling, int(max_iterations),
                                        cfg))
        for n, s in enumerate(levels):
            target = s * base
            smooth = s > 1
            stage = f"level {n + 1}/{n_levels}"
            spans[n].update(stage, 0.0)
            if cfg is not None and n > 0 and cfg.iterations[n] == 0 \
                    and _finer_than_field(target, cfg.velocity_spacing_mm):
                # The field stage skips this level; its affine steps would only polish what the
                # field corrects anyway.
                iterations.append(0)
                history.append([])
                continue
            flev = _level_image(fixed_img, fa, fmask, target, smooth, backend)
            mlev = _level_image(moving_img, ma, mmask, target, smooth, backend)
            idx = _sample_indices(int(np.prod(flev.array.shape)), flev.mask, sampling,
                                  sampling_strategy, rng, xp)
            lm = _LevelMetric(flev, mlev, idx, linear_metric, backend)
            centre, radius = _sample_centre_radius(flev, idx)
            model = _Model(linear_model, centre, radius)
            T, value, n_it, hist = _optimise(lm, model, T, step_mm=target, min_step_mm=0.005 * target,
                                             max_iterations=int(max_iterations), progress=spans[n],
                                             stage=stage)
            iterations.append(n_it)
            history.append(hist)
        if cfg is None:
            return RegistrationResult(transform=Affine(T), matrix=T, metric=float(value),
                                      metric_name=metric, iterations=tuple(iterations),
                                      levels=levels, history=history)
        v, vlevel, value, f_its, f_hist = _deformable_stage(fixed_img, moving_img, fa, ma, fmask, T,
                                                            levels, cfg, backend,
                                                            spans[n_levels:2 * n_levels])
        spans[-1].update("field", 0.0)
        full = _Level(fa, fixed_img.affine)
        d = _field_exp(v, vlevel, backend)
        spans[-1].update("field", 0.5)
        d_inv = _field_exp(-v, vlevel, backend)
        if vlevel.array.shape != fa.shape or not np.allclose(vlevel.affine, full.affine):
            d = _resample_field(d, vlevel, full, backend)
            d_inv = _resample_field(d_inv, vlevel, full, backend)
        field = DisplacementField(_vector_image(fixed_img, d))
        inverse_field = DisplacementField(_vector_image(fixed_img, d_inv))
        return RegistrationResult(transform=Affine(T) @ field, matrix=T, metric=float(value),
                                  metric_name=metric, iterations=tuple(iterations) + tuple(f_its),
                                  levels=levels, history=history + f_hist, field=field,
                                  inverse_field=inverse_field)


def _stage_costs(fixed: Image, moving: Image, levels: tuple[int, ...], sampling: Any,
                 max_iterations: int, cfg: _DeformableSettings | None) -> list[float]:
    """Expected cost of each pyramid level (smooth-and-shrink of both images, then the metric
    samples x expected optimiser steps), then for a deformable registration of each field level
    (voxels x field iterations) and of the final exponentials: the widths of their progress
    spans."""
    base = float(min(fixed.spacing))
    full = float(np.prod(fixed.shape))
    costs, field_costs = [], []
    for s in levels:
        # The fixed level's voxels (smooth_shrink keeps shape // shrink).
        shrink = np.maximum(1, np.round(s * base / np.asarray(fixed.spacing)))
        n_vox = float(np.prod(np.maximum(1, np.asarray(fixed.shape) // shrink)))
        if sampling == "full":
            samples = n_vox
        elif sampling is None:
            samples = min(n_vox, AUTO_SAMPLES)
        elif isinstance(sampling, float):
            samples = sampling * n_vox
        else:
            samples = min(n_vox, float(sampling))
        setup = _SHRINK_NS * (full + float(np.prod(moving.shape))) if s > 1 else 0.0
        costs.append(setup + _SAMPLE_NS * samples * min(max_iterations, _EXPECTED_STEPS))
        field_costs.append(_FIELD_NS * n_vox)
    if cfg is None:
        return costs
    return costs + [c * n for c, n in zip(field_costs, cfg.iterations)] + [_EXP_NS * full]


# ---------------------------------------------------------------------------- diffeomorphic stage
def _field_exp(v: np.ndarray, level: _Level, backend: str) -> np.ndarray:
    """exp(v) by scaling and squaring (Arsigny et al. 2006): halve v until every vector is under
    half a voxel (ITK's ExponentialDisplacementFieldImageFilter), then compose the small
    displacement with itself as many times."""
    spacing = float(np.min(np.linalg.norm(level.affine[:3, :3], axis=0)))
    vmax = float(max_norm_kernel(v, backend=backend))
    n = max(0, int(np.ceil(np.log2(max(vmax, 1e-12) / (EXP_HALVING_VOX * spacing)))))
    to_index = np.ascontiguousarray(level.world_to_index[:3, :3])
    return exp_kernel(v, to_index, n, backend=backend)


def _resample_field(v: np.ndarray, src: _Level, dst: _Level, backend: str) -> np.ndarray:
    """A field on one level's grid read (trilinear) at the voxel centres of another level."""
    to_source = np.ascontiguousarray((src.world_to_index @ dst.affine)[:3])
    return resample_field_kernel(v, to_source, tuple(dst.array.shape), backend=backend)


@dataclass
class _DeformableSettings:
    iterations: tuple[int, ...]
    radius_vox: int
    sigma_update_vox: float
    sigma_velocity_vox: float
    step_vox: float
    velocity_spacing_mm: float


def _velocity_grid(flev: _Level, spacing_mm: float) -> tuple[tuple[int, ...], _Level]:
    """The grid of the velocity for a level: the level's grid shrunk along each axis by the
    integer factor that brings its spacing closest to ``spacing_mm`` (1 where the level is
    already that coarse), with the level's centring convention (``_level_image``)."""
    level_spacing = np.linalg.norm(flev.affine[:3, :3], axis=0)
    ratio = np.maximum(1, np.round(spacing_mm / level_spacing)).astype(int) if spacing_mm > 0 \
        else np.ones(3, int)
    if np.all(ratio == 1):
        return (1, 1, 1), flev
    shape = tuple(int(x) for x in np.maximum(1, np.asarray(flev.array.shape) // ratio))
    affine = flev.affine.copy()
    affine[:3, 3] = (flev.affine @ np.r_[(ratio - 1) / 2.0, 1.0])[:3]
    affine[:3, :3] = affine[:3, :3] * ratio[None, :]
    return tuple(int(r) for r in ratio), _Level(np.empty(shape, np.float32), affine)


def _shrink_field(u: np.ndarray, ratio: tuple[int, ...], sigma_vox: float, backend: str
                  ) -> np.ndarray:
    """Each component smoothed by ``sigma_vox`` and shrunk by ``ratio`` (onto _velocity_grid)."""
    return np.stack([smooth_shrink(np.ascontiguousarray(c), ratio, (sigma_vox,) * 3,
                                   backend=backend) for c in u])


def _deformable_stage(fixed_img: Image, moving_img: Image, fa: Any, ma: Any, fmask: Any,
                      T: np.ndarray, levels: tuple[int, ...], cfg: _DeformableSettings,
                      backend: str, spans: Sequence[Progress]):
    """Stationary velocity field v (log-domain diffeomorphic registration, Vercauteren et al.
    2008): at each iteration the metric force is smoothed (fluid-like regularisation), scaled to
    ``step_vox`` voxels at its largest, added to v, and v is smoothed (diffusion-like
    regularisation). The force is computed on each level's grid; v lives on that grid, or on a
    coarser one where the level is finer than ``cfg.velocity_spacing_mm`` (the force is then
    smoothed and shrunk onto it, and exp(v) read back at the level's voxels). The displacement
    is exp(v); its inverse exp(-v). ``spans``: the progress span of each level."""
    base = float(min(fixed_img.spacing))
    v = prev_grid = None
    value = np.nan
    iterations, history = [], []
    for n, (s, n_iter, span) in enumerate(zip(levels, cfg.iterations, spans)):
        target = s * base
        smooth = s > 1
        stage = f"field level {n + 1}/{len(levels)}"
        span.update(stage, 0.0)
        if n_iter == 0 and v is not None:
            iterations.append(0)
            history.append([])
            continue
        flev = _level_image(fixed_img, fa, fmask, target, smooth, backend)
        mlev = _level_image(moving_img, ma, None, target, smooth, backend)
        ratio, vgrid = _velocity_grid(flev, cfg.velocity_spacing_mm)
        coarse = vgrid is not flev
        if v is None:
            v = np.zeros((3,) + vgrid.array.shape, np.float32)
        elif prev_grid.array.shape != vgrid.array.shape or not np.allclose(prev_grid.affine,
                                                                            vgrid.affine):
            v = _resample_field(v, prev_grid, vgrid, backend)
        to_moving = mlev.world_to_index @ T
        to_moving_index = np.ascontiguousarray((to_moving @ flev.affine)[:3])
        disp_to_moving = np.ascontiguousarray(to_moving[:3, :3])
        to_field = np.ascontiguousarray((vgrid.world_to_index @ flev.affine)[:3]) if coarse \
            else None
        spacing = float(np.min(np.linalg.norm(flev.affine[:3, :3], axis=0)))
        step_mm = cfg.step_vox * spacing
        hist: list[float] = []
        it = 0
        for it in range(1, n_iter + 1):
            span.update(stage, (it - 1) / n_iter)
            d = _field_exp(v, vgrid, backend)
            warped, grad = warp_field_kernel(mlev.array, to_moving_index, disp_to_moving, d,
                                             to_field, flev.array.shape, backend=backend)
            value, u = force_kernel(flev.array, warped, grad, flev.mask, (cfg.radius_vox,) * 3,
                                    backend=backend)
            value = -value
            hist.append(float(value))
            # A second check point: one full-resolution iteration of a large image takes seconds.
            span.update(stage, (it - 0.5) / n_iter)
            sigma_u = cfg.sigma_update_vox
            if coarse:
                u, sigma_u = _shrink_field(u, ratio, sigma_u, backend), 0.0
            v_new, umax = update_kernel(v, u, sigma_u, cfg.sigma_velocity_vox, step_mm,
                                        backend=backend)
            if umax == 0.0:
                break
            v = v_new
            # Converged when the last 10 values improved by less than 0.05 % of the metric.
            if len(hist) > 10 and hist[-11] - min(hist[-10:]) < 5e-4 * abs(hist[-11]):
                break
        iterations.append(it)
        history.append(hist)
        prev_grid = vgrid
    return v, prev_grid, value, iterations, history


def _check_sampling(sampling: Any) -> None:
    if sampling is None or sampling == "full":
        return
    if isinstance(sampling, float) and 0 < sampling <= 1:
        return
    if isinstance(sampling, (int, np.integer)) and not isinstance(sampling, bool) and sampling >= 1:
        return
    raise ValueError("sampling must be None (auto), 'full', a fraction in (0, 1] or a positive "
                     f"number of samples, got {sampling!r}")


def _sample_centre_radius(level: _Level, idx: Any) -> tuple[np.ndarray, float]:
    """Centre of the sampled region (the rotation centre) and its RMS radius (the mm scale)."""
    shape = level.array.shape
    if idx is None:
        lo, hi = np.zeros(3), np.asarray(shape, dtype=np.float64) - 1
        centre_idx = (lo + hi) / 2
        corners = np.array(np.meshgrid(*[[a, b] for a, b in zip(lo, hi)])).T.reshape(-1, 3)
        pts = corners
    else:
        lin = np.asarray(idx.get() if is_cupy_array(idx) else idx)
        pts = np.stack(np.unravel_index(lin, shape), axis=1).astype(np.float64)
        centre_idx = pts.mean(axis=0)
    world = pts @ level.affine[:3, :3].T + level.affine[:3, 3]
    centre = centre_idx @ level.affine[:3, :3].T + level.affine[:3, 3]
    radius = float(np.sqrt(np.mean(np.sum((world - centre) ** 2, axis=1))))
    if idx is None:
        radius /= np.sqrt(3.0)  # corners sit sqrt(3) x further out than the RMS of a box
    return centre, max(radius, 1.0)


def _vector_image(ref: Image, d: np.ndarray) -> Image:
    """(3, nk, nj, ni) components (x, y, z) -> a vector Image (nk, nj, ni, 3) on ref's grid."""
    return Image(np.ascontiguousarray(np.moveaxis(d, 0, -1)), vector=True, **ref.geometry)


# Default iterations of a field level whose velocity lives on a coarser grid: none. Each costs
# about (level voxels / velocity voxels) coarse iterations and only refines details (MNI152 1 mm,
# smooth 12 mm warp: 3 iterations of 1 mm forces raise GM Dice from 0.973 to 0.975 and add half
# the time; benchmarks/DEFORMABLE.md).
_FINE_FIELD_ITERATIONS = 0


def _finer_than_field(level_mm: float, field_spacing_mm: float) -> bool:
    """A level at least twice as fine as the velocity grid (``field_spacing_mm``, 0: none)."""
    return field_spacing_mm > 0 and round(field_spacing_mm / level_mm) >= 2


def _deformable_settings(levels, field_iterations, lncc_radius_vox, field_sigmas_vox,
                         field_step_vox, field_spacing_mm, spacing) -> _DeformableSettings:
    grid = float(field_spacing_mm)
    if not (np.isfinite(grid) and grid >= 0):
        raise ValueError(f"field_spacing_mm must be a non-negative number of mm (0: the velocity "
                         f"on every level's grid), got {field_spacing_mm!r}")
    if field_iterations is None:
        base = float(min(spacing))
        field_iterations = tuple(
            _FINE_FIELD_ITERATIONS if _finer_than_field(s * base, grid)
            else max(10, 30 - 10 * i) for i, s in enumerate(levels))
    field_iterations = tuple(field_iterations)
    if len(field_iterations) != len(levels) or not all(
            isinstance(n, (int, np.integer)) and 0 <= n <= MAX_ITERATIONS for n in field_iterations):
        raise ValueError(f"field_iterations needs one integer in [0, {MAX_ITERATIONS}] per level "
                         f"({len(levels)}), got {field_iterations!r}")
    if not isinstance(lncc_radius_vox, (int, np.integer)) or lncc_radius_vox < 1:
        raise ValueError(f"lncc_radius_vox must be a positive integer, got {lncc_radius_vox!r}")
    sig = tuple(float(x) for x in field_sigmas_vox)
    if len(sig) != 2 or not all(np.isfinite(x) and x >= 0 for x in sig):
        raise ValueError(f"field_sigmas_vox must be two non-negative numbers (update, velocity), "
                         f"got {field_sigmas_vox!r}")
    step = float(field_step_vox)
    if not (np.isfinite(step) and 0 < step <= 2):
        raise ValueError(f"field_step_vox must be in (0, 2] voxels, got {field_step_vox!r}")
    return _DeformableSettings(field_iterations, int(lncc_radius_vox), sig[0], sig[1], step, grid)


def metric_value(fixed: Any, moving: Any, transform: Any = None, metric: str = "mi", *,
                 mask: Any = None, moving_mask: Any = None, backend: str = "auto"
                 ) -> tuple[float, np.ndarray]:
    """The metric between ``fixed`` and ``moving`` under ``transform`` (fixed -> moving world,
    identity when None) over every fixed voxel, and its gradient with respect to the 3x4 affine
    ``[A | b]`` of that transform (``p -> A p + b``). Same values as SimpleITK's
    ``ImageRegistrationMethod.MetricEvaluate`` with sampling strategy NONE and linear
    interpolation."""
    if metric not in ("mse", "ncc", "mi"):
        raise ValueError(f"metric must be 'mi', 'ncc' or 'mse', got {metric!r}")
    fixed_img = _check_image(fixed, "fixed")
    moving_img = _check_image(moving, "moving")
    T = np.eye(4) if transform is None else _initial_transform(transform, fixed_img, moving_img)
    fmask = check_mask(mask, fixed_img.shape, "mask")
    mmask = check_mask(moving_mask, moving_img.shape, "moving_mask")
    flev = _Level(_as_float32(fixed_img, "fixed"), fixed_img.affine, fmask)
    mlev = _Level(_as_float32(moving_img, "moving"), moving_img.affine, mmask)
    xp = np if not is_cupy_array(flev.array) else __import__("cupy")
    idx = None if fmask is None else xp.ascontiguousarray(xp.flatnonzero(fmask.ravel()), dtype=xp.int64)
    value, G, _ = _LevelMetric(flev, mlev, idx, metric, backend)(T)
    return value, G
