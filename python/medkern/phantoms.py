"""Simulated patients: enhancing brain metastases on a skull-stripped T1 template.

medkern ships no patient data. :func:`simulate_brain_metastases` turns a skull-stripped T1 brain
(normally the MNI152 2009a template shipped with nilearn, ``medkern.analysis.location.mni_template``)
into a contrast-enhanced T1 study with lesions of known position, size and shape. The
``brain-lesion`` model is trained and validated on it and ``medkern demo`` shows it, so the three
see the same patients.

What a simulated study holds, in the order it is built:

* **Confounders** the template lacks and a post-contrast T1 has: enhancing blood in the superior
  sagittal and transverse sinuses, cortical veins running along the brain surface, and the
  choroid plexus in the atria of the lateral ventricles. They are as bright as enhancing lesions.
* **Registration-level deformation**: a random affine (rotation, anisotropic scale, shift) and a
  smooth elastic field, so no two brains share a shape.
* **Lesions** (solid spheres, ellipsoids, ring-enhancing lesions around a necrotic core, lesions
  touching the cortex), with partial volume at their edge, heterogeneous enhancement and, around
  the larger ones, T1-hypointense vasogenic oedema. Lesions never overlap.
* **Acquisition**: a 3D 1 mm isotropic or a 2D 1 x 1 x 3 mm (axial slices) grid, the 2D slices
  averaging the 1 mm simulation over their thickness; a smooth multiplicative bias field, a tissue
  contrast change and Rician noise whose levels differ between 1.5 T and 3 T (SNR grows about
  linearly with field strength; B1 inhomogeneity is larger at 3 T). The two grids follow the
  minimum-standard protocol of "Consensus recommendations for a standardized brain tumor imaging
  protocol for clinical trials in brain metastases" (BTIP-BM; Kaufmann et al., Neuro-Oncology
  22(6):757-772, 2020, recommended sequences and their 1.5 T / 3 T parameter tables): an
  isotropic 3D T1 gradient echo and a post-contrast axial 2D T1 spin echo with thick slices.
  1 mm and 3 mm, and all intensity ranges, are simulation choices, not measurements.

Everything is on the template's grid reoriented to ``"SPL"`` and resampled to 1 mm first. One seed
gives one patient, bit for bit. Needs scipy (``scipy.ndimage``), imported inside the functions:
it is a dependency of the ``demo`` and ``test`` extras, not of medkern itself.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Sequence, cast

import numpy as np

from medkern.image import Image

__all__ = ["ACQUISITIONS", "LESION_KINDS", "BrainCase", "Lesion", "simulate_brain_metastases"]

# name -> (field strength T, spacing mm in array order S/P/L, Rician noise sigma and bias-field
# amplitude as ranges, both as fractions of the white-matter intensity).
ACQUISITIONS: dict[str, dict[str, Any]] = {
    "3T-3D-1mm": {"field_strength_T": 3.0, "spacing_mm": (1.0, 1.0, 1.0), "noise": (0.015, 0.035),
                  "bias": (0.10, 0.25)},
    "1.5T-3D-1mm": {"field_strength_T": 1.5, "spacing_mm": (1.0, 1.0, 1.0), "noise": (0.03, 0.06),
                    "bias": (0.04, 0.12)},
    "3T-2D-3mm": {"field_strength_T": 3.0, "spacing_mm": (3.0, 1.0, 1.0), "noise": (0.01, 0.025),
                  "bias": (0.10, 0.25)},
    "1.5T-2D-3mm": {"field_strength_T": 1.5, "spacing_mm": (3.0, 1.0, 1.0), "noise": (0.02, 0.045),
                    "bias": (0.04, 0.12)},
}
LESION_KINDS = ("sphere", "ellipsoid", "ring", "cortical")
MIN_DIAMETER_MM, MAX_DIAMETER_MM = 2.0, 40.0
# Lesions keep this much parenchyma between their surfaces.
GAP_MM = 3.0
# Atria of the lateral ventricles (glomus of the choroid plexus), MNI RAS mm; the simulation
# snaps them to the nearest ventricular CSF of the template actually given.
ATRIUM_MNI_RAS = ((-28.0, -40.0, 14.0), (28.0, -40.0, 14.0))


@dataclass(frozen=True)
class Lesion:
    """One inserted lesion, as :func:`simulate_brain_metastases` lists it in ``BrainCase.truth``.

    Lengths are in mm, positions in LPS world mm.

    Parameters
    ----------
    label : int
        The lesion's value in ``BrainCase.lesions``.
    centre_lps : tuple of float
        The centre of the ellipsoid, LPS mm.
    diameter_mm : float
        The longest axis of the ellipsoid.
    volume_mm3 : float
        ``4/3 pi a b c``, necrotic core included.
    kind : str
        One of ``LESION_KINDS``: ``"sphere"``, ``"ellipsoid"``, ``"ring"`` (ring-enhancing around
        a necrotic core) or ``"cortical"`` (touching the cortex).
    semi_axes_mm : tuple of float
        The three semi-axes ``a, b, c``.

    See Also
    --------
    BrainCase : The simulated study that lists its lesions.

    Examples
    --------
    >>> from medkern.phantoms import Lesion
    >>> lesion = Lesion(label=1, centre_lps=(10.0, -20.0, 30.0), diameter_mm=8.0,
    ...                 volume_mm3=4 / 3 * np.pi * 4**3, kind="sphere", semi_axes_mm=(4.0, 4.0, 4.0))
    >>> round(lesion.volume_mm3, 1)
    268.1
    """

    label: int
    centre_lps: tuple[float, float, float]
    diameter_mm: float                   # longest axis of the ellipsoid
    volume_mm3: float                    # 4/3 pi a b c, necrotic core included
    kind: str                            # one of LESION_KINDS
    semi_axes_mm: tuple[float, float, float]


@dataclass(frozen=True)
class BrainCase:
    """A simulated contrast-enhanced T1 study and its truth, all on the acquisition grid.

    Parameters
    ----------
    image : Image
        The T1 image, float32, skull-stripped: background exactly 0.
    lesions : Image
        int32 label map, ``Lesion.label`` per voxel (0: none).
    brain : Image
        uint8 brain mask.
    truth : list of Lesion
        The inserted lesions with their analytic size.
    acquisition : dict, optional
        How the case was made: the acquisition preset, seed, noise, bias field, contrast change,
        confounders and deformation.

    See Also
    --------
    simulate_brain_metastases : Makes one.
    Lesion : One entry of ``truth``.

    Examples
    --------
    >>> from medkern.phantoms import BrainCase
    >>> grid = mk.Image(np.zeros((4, 4, 4), np.float32))
    >>> case = BrainCase(image=grid, lesions=grid.astype(np.int32), brain=grid.astype(np.uint8), truth=[])
    >>> case.acquisition
    {}
    """

    image: Image                         # float32, skull-stripped: background exactly 0
    lesions: Image                       # int32, Lesion.label per voxel (0: none)
    brain: Image                         # uint8 brain mask
    truth: list[Lesion]
    acquisition: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Template:
    image: Image                         # 1 mm, SPL
    t1: np.ndarray
    brain: np.ndarray
    depth_mm: np.ndarray                 # distance to the brain surface
    wm: float                            # white-matter intensity
    box: tuple[slice, ...]               # brain bounding box plus the largest deformation
    sinus_path: np.ndarray               # superior sagittal then transverse sinuses, index points
    transverse_paths: list[np.ndarray]
    atria: list[np.ndarray]              # index points
    ventricles: np.ndarray


_CACHE: dict[str, _Template] = {}


def _fingerprint(img: Image) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in (img.shape, img.spacing, img.origin, img.direction):
        h.update(np.asarray(part, np.float64).tobytes())
    h.update(np.ascontiguousarray(img.array).tobytes())
    return h.hexdigest()


def _prepare(template: Any) -> _Template:
    from scipy import ndimage

    from medkern._reorient import reorient
    from medkern._resample import resample

    if not isinstance(template, Image):
        raise TypeError(f"template must be an mk.Image (a skull-stripped T1 brain, e.g. "
                        f"medkern.analysis.location.mni_template()), got {type(template).__name__}")
    if template.ndim != 3 or template.is_vector:
        raise ValueError(f"template must be a 3D scalar T1 image, got a {template.ndim}D "
                         f"{'vector ' if template.is_vector else ''}image")
    key = _fingerprint(template)
    if key in _CACHE:
        return _CACHE[key]
    img = reorient(template, "SPL")
    if not np.allclose(img.spacing, 1.0, atol=1e-3):
        img = cast(Image, resample(img, (1.0, 1.0, 1.0), interpolation="linear", antialias=True))
    t1 = np.clip(np.asarray(img.array, np.float32), 0, None)
    brain = t1 > 0
    if not brain.any() or brain.all() or brain.sum() < 100_000:
        raise ValueError("template must be a skull-stripped brain: background exactly 0 around at least "
                         f"100 000 mm3 of brain, got {int(brain.sum())} non-zero voxels of {brain.size}")
    wm = float(np.percentile(t1[brain], 90))
    depth = ndimage.distance_transform_edt(brain).astype(np.float32)
    # Deep CSF: the lateral and third ventricles, not the sulci.
    ventricles = brain & (t1 < 0.5 * wm) & (depth > 12)
    lo = np.argwhere(brain).min(axis=0)
    hi = np.argwhere(brain).max(axis=0) + 1
    margin = 24
    box = tuple(slice(max(a - margin, 0), min(b + margin, n)) for a, b, n in zip(lo, hi, t1.shape))
    sss, transverse = _sinus_paths(img, brain)
    atria = []
    vent_idx = np.argwhere(ventricles)
    for ras in ATRIUM_MNI_RAS:
        target = img.world_to_index(np.array([[-ras[0], -ras[1], ras[2]]]))[0]
        if len(vent_idx):
            atria.append(vent_idx[np.argmin(((vent_idx - target) ** 2).sum(axis=1))].astype(np.float64))
    prepared = _Template(img, t1, brain, depth, wm, box, sss, transverse, atria, ventricles)
    _CACHE.clear()
    _CACHE[key] = prepared
    return prepared


def _sinus_paths(img: Image, brain: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The superior sagittal sinus along the top of the interhemispheric fissure (front to back)
    and the two transverse sinuses from the back of the midline along the occipital surface."""
    from scipy import ndimage

    mid = int(round(img.world_to_index(np.array([[0.0, 0.0, 0.0]]))[0][2]))
    mid = int(np.clip(mid, 0, brain.shape[2] - 1))
    # SPL: axis 0 increases toward S, so the top of the brain is the largest k.
    column = brain[:, :, max(mid - 3, 0):mid + 4].any(axis=2)
    js = np.flatnonzero(column.any(axis=0))
    tops = np.array([np.flatnonzero(column[:, j]).max() for j in js], np.float64)
    tops = ndimage.uniform_filter1d(tops, 9, mode="nearest")
    keep = tops > np.percentile(tops, 30)
    sss = np.stack([tops[keep] - 1.5, js[keep].astype(np.float64), np.full(keep.sum(), float(mid))], axis=1)
    back_k = sss[-1, 0]
    # The sinus confluence (at the internal occipital protuberance), placed about a third of the
    # way up the brain: an approximation, good enough for a confounder.
    ks = np.flatnonzero(brain.any(axis=(1, 2)))
    k_conf = int(ks.min() + 0.35 * (ks.max() - ks.min()))
    transverse = []
    for sign in (-1, 1):
        pts = []
        for i in range(mid, mid + sign * 60, sign):
            if not 0 <= i < brain.shape[2]:
                break
            row = np.flatnonzero(brain[k_conf, :, i])
            if not len(row):
                break
            pts.append((float(k_conf), float(row.max()) - 1.5, float(i)))
        if len(pts) > 5:
            pts_arr = np.asarray(pts)
            pts_arr[:, 1] = ndimage.uniform_filter1d(pts_arr[:, 1], 7, mode="nearest")
            transverse.append(pts_arr)
    # Descending limb of the superior sagittal sinus to the confluence, along the back surface.
    descent = []
    for k in np.arange(back_k, k_conf, -1.0):
        row = np.flatnonzero(brain[int(k), :, mid])
        if len(row):
            descent.append((k, float(row.max()) - 1.5, float(mid)))
    path = np.concatenate([sss, np.asarray(descent).reshape(-1, 3)]) if descent else sss
    return path, transverse


def _rotation(rng: np.random.Generator, max_angle: float | None = None) -> np.ndarray:
    """A uniformly random rotation, or one of at most ``max_angle`` radians about each axis."""
    if max_angle is None:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.diag(r))
        return q if np.linalg.det(q) > 0 else -q
    rot = np.eye(3)
    for angle, (i, j) in zip(rng.uniform(-max_angle, max_angle, 3), [(0, 1), (0, 2), (1, 2)]):
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(angle)
        r[i, j], r[j, i] = -np.sin(angle), np.sin(angle)
        rot = rot @ r
    return rot


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], step_mm: float,
                  spacing: Sequence[float]) -> np.ndarray:
    """Unit-variance Gaussian noise correlated over about ``step_mm`` (cubic upsampling)."""
    coarse = [max(int(math.ceil(n * s / step_mm)) + 1, 2) for n, s in zip(shape, spacing)]
    return _cubic_upsample(rng.normal(size=coarse), shape).astype(np.float32)


# scipy.ndimage's margin for the spline boundary modes that have no closed form ("nearest" among them).
_SPLINE_PAD = 12


def _cubic_upsample(coarse: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A 3D ``scipy.ndimage.zoom(coarse, shape / coarse.shape, order=3, grid_mode=True, mode="nearest")``
    on medkern's separable cubic B-spline kernel (float64, equal up to rounding; a tenth of the
    time on a brain): scipy's own way to that boundary, the input padded by repeating its edges,
    then a mirror-boundary spline."""
    from ._resample import _axis_aligned

    padded = np.pad(np.asarray(coarse, np.float64), _SPLINE_PAD, mode="edge")
    scale = [n / m for n, m in zip(coarse.shape, shape)]
    return _axis_aligned(padded, tuple(shape), scale, [s / 2 - 0.5 + _SPLINE_PAD for s in scale], "cubic",
                         (0.0,) * 3, 0.0, "auto")


def _tube(out: np.ndarray, points: np.ndarray, radius: float) -> None:
    """Partial-volume fraction of a tube of ``radius`` voxels along a polyline, maxed into ``out``."""
    for p0, p1 in zip(points[:-1], points[1:]):
        lo = np.maximum(np.floor(np.minimum(p0, p1) - radius - 1), 0).astype(int)
        hi = np.minimum(np.ceil(np.maximum(p0, p1) + radius + 2), out.shape).astype(int)
        if np.any(hi <= lo):
            continue
        grid = np.stack(np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)],
                                    indexing="ij"), axis=-1)
        seg = (p1 - p0).astype(np.float32)
        t = np.clip(((grid - p0) @ seg) / max(float(seg @ seg), 1e-9), 0, 1)
        dist = np.linalg.norm(grid - p0 - t[..., None] * seg, axis=-1)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        np.maximum(out[box], np.clip(radius + 0.5 - dist, 0, 1), out=out[box])


def _cortical_vein(rng: np.random.Generator, tpl: _Template, surface: np.ndarray) -> np.ndarray:
    """A vein wandering along the cortex, kept within a few mm of the brain surface."""
    p = surface[rng.integers(len(surface))].astype(np.float64)
    heading = rng.normal(size=3)
    heading /= np.linalg.norm(heading)
    points = [p.copy()]
    for _ in range(int(rng.integers(15, 45))):
        heading += rng.normal(scale=0.35, size=3)
        idx = tuple(np.clip(np.round(p).astype(int), 0, np.asarray(tpl.depth_mm.shape) - 2))
        depth = tpl.depth_mm[idx]
        inward = np.array([tpl.depth_mm[tuple(np.add(idx, np.eye(3, dtype=int)[a]))] - depth for a in range(3)])
        # Steer back toward a shell 1-3 mm under the surface.
        if depth > 3:
            heading -= 0.8 * inward
        elif depth < 1:
            heading += 0.8 * inward
        heading /= max(np.linalg.norm(heading), 1e-9)
        p = p + 1.5 * heading
        if np.any(p < 0) or np.any(p > np.asarray(tpl.depth_mm.shape) - 1):
            break
        points.append(p.copy())
    return np.asarray(points)


def _confounders(rng: np.random.Generator, tpl: _Template) -> tuple[np.ndarray, dict[str, Any]]:
    """Fraction of each voxel filled with enhancing blood or choroid plexus, in template space."""
    vessels = np.zeros(tpl.t1.shape, np.float32)
    present: dict[str, Any] = {}
    # Skull stripping keeps the sinuses in some studies and removes them in others.
    if rng.random() < 0.8 and len(tpl.sinus_path) > 1:
        _tube(vessels, tpl.sinus_path, float(rng.uniform(2.0, 3.5)))
        present["superior_sagittal_sinus"] = True
    if rng.random() < 0.7:
        for path in tpl.transverse_paths:
            _tube(vessels, path, float(rng.uniform(1.8, 3.0)))
        present["transverse_sinuses"] = len(tpl.transverse_paths)
    surface = np.argwhere((tpl.depth_mm > 0.5) & (tpl.depth_mm < 2.5))
    n_veins = int(rng.integers(4, 13))
    for _ in range(n_veins):
        _tube(vessels, _cortical_vein(rng, tpl, surface), float(rng.uniform(0.6, 1.3)))
    present["cortical_veins"] = n_veins
    plexus = 0
    for atrium in tpl.atria:
        if rng.random() < 0.9:
            centre = atrium + rng.normal(scale=1.5, size=3)
            radii = rng.uniform(2.5, 5.0, 3)
            lo = np.maximum(np.floor(centre - radii.max() - 2), 0).astype(int)
            hi = np.minimum(np.ceil(centre + radii.max() + 3), vessels.shape).astype(int)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            grid = np.indices(hi - lo, dtype=np.float32) + lo[:, None, None, None]
            rho = np.sqrt(sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3)))
            frac = np.clip(0.5 - (rho - 1) * radii.min(), 0, 1).astype(np.float32)
            # The plexus floats in the ventricle: it fills CSF, not the parenchyma around it.
            frac *= tpl.ventricles[box] | (rho < 0.6)
            np.maximum(vessels[box], frac, out=vessels[box])
            plexus += 1
    present["choroid_plexus"] = plexus
    return vessels, present


def _deformation(rng: np.random.Generator, tpl: _Template) -> tuple[np.ndarray, dict[str, Any]]:
    """Sampling points in the template (index space) for every voxel of the patient box."""
    shape = tuple(s.stop - s.start for s in tpl.box)
    centre = np.array([(s.start + s.stop - 1) / 2 for s in tpl.box], np.float32)
    rotation = _rotation(rng, max_angle=np.deg2rad(10.0))
    scale = rng.uniform(0.92, 1.08, 3)
    shift = rng.uniform(-4.0, 4.0, 3)
    linear = (rotation * scale[None, :]).astype(np.float32)
    elastic_mm = float(rng.uniform(1.0, 3.0))
    grid = np.indices(shape, dtype=np.float32)
    grid += np.array([s.start for s in tpl.box], np.float32)[:, None, None, None] - centre[:, None, None, None]
    coords = np.einsum("ab,b...->a...", linear, grid)
    del grid
    coords += (centre + shift.astype(np.float32))[:, None, None, None]
    for a in range(3):
        coords[a] += elastic_mm * _smooth_field(rng, shape, 32.0, (1.0, 1.0, 1.0))
    info = {"rotation_matrix": np.round(rotation, 4).tolist(), "scale": np.round(scale, 4).tolist(),
            "shift_mm": np.round(shift, 2).tolist(), "elastic_mm": round(elastic_mm, 2)}
    return coords, info


def _ellipsoid(grid: np.ndarray, centre: np.ndarray, rotation: np.ndarray,
               axes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius and (first-order) signed distance to the surface, mm, on 1 mm voxels."""
    u = np.einsum("ba,b...->a...", rotation, grid - centre[:, None, None, None])
    rho = np.sqrt(sum((u[a] / axes[a]) ** 2 for a in range(3)))
    gradient = np.sqrt(sum((u[a] / axes[a] ** 2) ** 2 for a in range(3)))
    signed = np.where(gradient > 0, (rho - 1) * rho / np.maximum(gradient, 1e-12), -axes.min())
    return rho, signed


def _draw_diameters(rng: np.random.Generator) -> list[float]:
    # A simulation choice weighted toward the small lesions that are hard to find: about half of
    # them 3-6 mm, the rest log-uniform up to 25 mm.
    out = []
    for _ in range(int(rng.integers(1, 7))):
        small = rng.random() < 0.45
        out.append(float(rng.uniform(3.0, 6.0)) if small else float(np.exp(rng.uniform(np.log(6.0), np.log(25.0)))))
    return out


def _check_diameters(diameters_mm: Any) -> list[float]:
    if isinstance(diameters_mm, (str, bytes)) or not hasattr(diameters_mm, "__len__"):
        raise TypeError(f"diameters_mm must be a sequence of lesion diameters in mm, got {type(diameters_mm).__name__}")
    out = []
    for d in diameters_mm:
        if isinstance(d, bool) or not isinstance(d, (int, float, np.integer, np.floating)) or not math.isfinite(d):
            raise TypeError(f"diameters_mm must hold finite numbers (mm), got {d!r}")
        if not MIN_DIAMETER_MM <= d <= MAX_DIAMETER_MM:
            raise ValueError(f"diameters_mm values must lie in [{MIN_DIAMETER_MM:g}, {MAX_DIAMETER_MM:g}] mm, got {d}")
        out.append(float(d))
    if len(out) > 20:
        raise ValueError(f"diameters_mm holds {len(out)} lesions; at most 20 fit one simulated brain")
    return out


def _insert_lesions(rng: np.random.Generator, t1: np.ndarray, brain: np.ndarray, depth: np.ndarray,
                    vessels: np.ndarray, wm: float, diameters: list[float], acquisition: dict[str, Any]
                    ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Lesions written into ``t1`` (in place); returns their partial-volume fraction, ids, geometry."""
    fraction = np.zeros(t1.shape, np.float32)
    ids = np.zeros(t1.shape, np.int32)
    parenchyma = brain & (t1 > 0.55 * wm) & (vessels < 0.05)
    placed: list[dict[str, Any]] = []
    enhancement = acquisition["enhancement_ratio_range"]
    # Largest first: they are the hardest to fit.
    for n in sorted(range(len(diameters)), key=lambda n: -diameters[n]):
        d = diameters[n]
        r = d / 2
        kind = str(rng.choice(["sphere", "ellipsoid", "ring", "cortical"] if d >= 10 else
                              ["sphere", "ellipsoid", "cortical"]))
        if kind == "sphere":
            axes = np.full(3, r)
        elif kind == "ring":
            axes = np.array([r, r * rng.uniform(0.8, 1.0), r * rng.uniform(0.8, 1.0)])
        else:
            axes = np.array([r, r * rng.uniform(0.55, 0.95), r * rng.uniform(0.55, 0.95)])
        depth_ok = (depth >= r - 0.5) & (depth <= r + 1.0) if kind == "cortical" else depth >= r + 2.0
        candidates = np.flatnonzero(parenchyma & depth_ok)
        centre = None
        for _ in range(200):
            if not len(candidates):
                break
            c = np.array(np.unravel_index(candidates[rng.integers(len(candidates))], t1.shape), np.float64)
            c += rng.uniform(-0.5, 0.5, 3)
            if all(np.linalg.norm(c - p["centre"]) >= r + p["radius"] + GAP_MM for p in placed):
                centre = c
                break
        if centre is None:
            raise ValueError(f"could not place a {d:g} mm lesion apart from the others inside the brain; "
                             "pass fewer or smaller diameters_mm")
        rotation = _rotation(rng)
        reach = r + 3.0
        lo = np.maximum(np.floor(centre - reach), 0).astype(int)
        hi = np.minimum(np.ceil(centre + reach + 1), t1.shape).astype(int)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.indices(hi - lo, dtype=np.float32) + lo[:, None, None, None]
        rho, signed = _ellipsoid(grid, centre, rotation, axes)
        # Partial volume: a linear ramp one voxel wide across the surface.
        frac = np.clip(0.5 - signed, 0, 1).astype(np.float32)
        gain = float(rng.uniform(*enhancement))
        texture = 1 + 0.08 * rng.normal(size=frac.shape).astype(np.float32)
        value = wm * gain * texture
        if kind == "ring":
            core = float(rng.uniform(0.45, 0.75))
            core_frac = np.clip(0.5 - (rho - core) * axes.min(), 0, 1)
            value = value * (1 - core_frac) + core_frac * wm * rng.uniform(0.25, 0.5)
        region = t1[box]
        if d >= 8 and rng.random() < 0.6:
            # Vasogenic oedema: T1-hypointense white matter around the lesion.
            extent = d * rng.uniform(0.3, 1.0)
            weight = np.clip(1 - signed / extent, 0, 1) * (signed > 0) * (region > 0.7 * wm)
            region *= (1 - rng.uniform(0.08, 0.2) * weight).astype(np.float32)
        region[...] = region * (1 - frac) + frac * value
        fraction[box] = np.maximum(fraction[box], frac)
        ids[box][(frac > 0) & (ids[box] == 0)] = n + 1
        placed.append({"index": n, "centre": centre, "radius": r, "axes": axes, "rotation": rotation,
                       "kind": kind, "gain": gain})
    return fraction, ids, sorted(placed, key=lambda p: p["index"])


def _slabs(x: np.ndarray, thickness: int) -> np.ndarray:
    """Mean over ``thickness`` consecutive slices of axis 0 (a box slice profile)."""
    if thickness == 1:
        return x
    n = x.shape[0] // thickness
    return x[:n * thickness].reshape(n, thickness, *x.shape[1:]).mean(axis=1, dtype=np.float32)


def simulate_brain_metastases(template: Image, seed: int, *, diameters_mm: Sequence[float] | None = None,
                              acquisition: str | None = None) -> BrainCase:
    """Simulate one patient with enhancing brain metastases on a skull-stripped T1 template.

    medkern ships no patient data: this turns a skull-stripped T1 brain (normally the MNI152
    2009a template shipped with nilearn) into a contrast-enhanced T1 study with lesions of
    known position, size and shape. The ``brain-lesion`` model is trained and validated on it
    and ``medkern demo`` shows it. In the order it is built:

    * confounders a post-contrast T1 has and the template lacks, as bright as lesions:
      enhancing venous sinuses, cortical veins and the choroid plexus;
    * a registration-level deformation: a random affine and a smooth elastic field;
    * lesions (spheres, ellipsoids, ring-enhancing lesions around a necrotic core, lesions
      touching the cortex) with partial volume at their edge, heterogeneous enhancement and,
      around the larger ones, vasogenic oedema; lesions never overlap;
    * an acquisition: a 3D 1 mm isotropic or a 2D 1 x 1 x 3 mm axial grid, a bias field, a
      contrast change and Rician noise whose levels differ between 1.5 T and 3 T, following the
      minimum-standard protocol of BTIP-BM (Kaufmann et al., Neuro-Oncology 22(6):757-772,
      2020). 1 mm and 3 mm, and all intensity ranges, are simulation choices, not measurements.

    Needs scipy (a dependency of the ``demo`` and ``test`` extras).

    Parameters
    ----------
    template : Image
        A skull-stripped 3D T1 image (background exactly 0, at least 100 000 mm3 of brain), e.g.
        ``medkern.analysis.location.mni_template()``. It is reoriented to ``"SPL"`` and resampled
        to 1 mm first.
    seed : int
        A non-negative seed that fixes everything: the same seed, template and arguments give
        the same case bit for bit.
    diameters_mm : sequence of float, optional
        The lesions' longest diameters, each in [2, 40] mm, at most 20 lesions. ``None`` draws
        1-6 lesions, about half of them 3-6 mm.
    acquisition : str, optional
        A key of ``ACQUISITIONS`` (``"3T-3D-1mm"``, ``"1.5T-3D-1mm"``, ``"3T-2D-3mm"``,
        ``"1.5T-2D-3mm"``); ``None`` draws one from the seed.

    Returns
    -------
    BrainCase
        The study on the acquisition grid, oriented ``"SPL"`` (axis 0 toward superior: 3 mm
        slices are axial). ``truth`` lists the lesions in ``diameters_mm`` order with their
        analytic size; the label map holds the voxels at least half inside each lesion (and at
        least the one it fills most).

    Raises
    ------
    TypeError
        ``template`` is not an Image, or ``seed`` is not a non-negative int.
    ValueError
        An unknown acquisition, diameters out of range, a template that is not a skull-stripped
        3D brain, or lesions that cannot be placed apart from each other in the brain.

    See Also
    --------
    BrainCase : What it returns.
    medkern.analyze : Analyse the simulated study.

    Examples
    --------
    A synthetic ellipsoid "brain" (white matter inside grey matter, ventricles in the middle)
    stands in for the MNI152 template:

    >>> from medkern.phantoms import simulate_brain_metastases
    >>> grid = np.mgrid[-36:36, -44:44, -36:36] / np.array([32.0, 40.0, 32.0])[:, None, None, None]
    >>> r = np.linalg.norm(grid, axis=0)
    >>> t1 = np.where(r < 1, 100, 0).astype(np.float32)
    >>> t1[r < 0.8] = 140
    >>> t1[r < 0.25] = 30
    >>> template = mk.Image(t1, origin=(-35.5, -43.5, -35.5))
    >>> case = simulate_brain_metastases(template, seed=0, diameters_mm=[8.0],
    ...                                  acquisition="3T-3D-1mm")
    >>> case.image
    Image(shape=(72, 88, 72), dtype=float32, spacing=(1, 1, 1), origin=(-35.5, -43.5, -35.5), numpy)
    >>> [(lesion.label, lesion.diameter_mm) for lesion in case.truth]
    [(1, 8.0)]
    >>> int(case.lesions.array.max()), case.acquisition["name"]
    (1, '3T-3D-1mm')
    """
    from scipy import ndimage

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"seed must be a non-negative int, got {seed!r}")
    if acquisition is not None and acquisition not in ACQUISITIONS:
        raise ValueError(f"acquisition must be one of {', '.join(ACQUISITIONS)} or None, got {acquisition!r}")
    diameters = None if diameters_mm is None else _check_diameters(diameters_mm)
    tpl = _prepare(template)
    rng = np.random.default_rng(int(seed))
    name = acquisition or str(rng.choice(list(ACQUISITIONS)))
    preset = ACQUISITIONS[name]
    acq: dict[str, Any] = {"name": name, "field_strength_T": preset["field_strength_T"],
                           "spacing_mm": list(preset["spacing_mm"]), "enhancement_ratio_range": (1.3, 1.9)}
    if diameters is None:
        diameters = _draw_diameters(rng)

    vessels, present = _confounders(rng, tpl)
    enhanced = tpl.t1 * (1 - vessels) + vessels * tpl.wm * np.float32(rng.uniform(1.15, 1.7))
    coords, deformation = _deformation(rng, tpl)
    box_shape = coords.shape[1:]
    warped = ndimage.map_coordinates(enhanced, coords, order=1, mode="constant").astype(np.float32)
    brain_box = ndimage.map_coordinates((tpl.brain | (vessels > 0.5)).astype(np.float32), coords,
                                        order=1, mode="constant") > 0.5
    depth = ndimage.map_coordinates(tpl.depth_mm, coords, order=1, mode="constant")
    vessels_box = ndimage.map_coordinates(vessels, coords, order=1, mode="constant")
    del coords
    warped *= brain_box

    fraction, ids, placed = _insert_lesions(rng, warped, brain_box, depth, vessels_box, tpl.wm, diameters, acq)
    del depth, vessels_box

    full = tpl.t1.shape
    image = np.zeros(full, np.float32)
    image[tpl.box] = warped
    lesion_fraction = np.zeros(full, np.float32)
    lesion_fraction[tpl.box] = fraction
    lesion_ids = np.zeros(full, np.int32)
    lesion_ids[tpl.box] = ids
    brain = np.zeros(full, np.float32)
    brain[tpl.box] = brain_box
    del warped, fraction, ids, brain_box

    thickness = int(round(preset["spacing_mm"][0]))
    image, lesion_fraction, brain = (_slabs(a, thickness) for a in (image, lesion_fraction, brain))
    if thickness > 1:
        n = lesion_ids.shape[0] // thickness
        lesion_ids = lesion_ids[:n * thickness].reshape(n, thickness, *full[1:]).max(axis=1)
    brain_mask = brain >= 0.5
    labels = np.where((lesion_fraction >= 0.5) & brain_mask, lesion_ids, 0).astype(np.int32)
    for p in placed:
        # A small lesion between two thick slices fills no voxel half-way: it still exists, in the
        # voxel it fills most.
        own = lesion_ids == p["index"] + 1
        if not (labels[own] != 0).any():
            labels[np.unravel_index(np.argmax(np.where(own, lesion_fraction, -1)), labels.shape)] = p["index"] + 1

    wm = tpl.wm
    bias_amplitude = float(rng.uniform(*preset["bias"]))
    image *= np.exp(bias_amplitude * _smooth_field(rng, image.shape, 80.0, preset["spacing_mm"]))
    gamma = float(rng.uniform(0.8, 1.25))
    image = (wm * np.power(np.clip(image / wm, 0, None), gamma)).astype(np.float32)
    sigma = float(rng.uniform(*preset["noise"])) * wm
    noisy = np.hypot(image + rng.normal(0, sigma, image.shape).astype(np.float32),
                     rng.normal(0, sigma, image.shape).astype(np.float32))
    image = np.where(brain_mask, noisy, 0).astype(np.float32)

    grid = tpl.image
    # The slab centre is the middle of its first `thickness` 1 mm slices.
    origin = grid.index_to_world(np.array([[(thickness - 1) / 2, 0.0, 0.0]]))[0]
    spacing = [grid.spacing[0] * thickness, grid.spacing[1], grid.spacing[2]]

    def on_grid(a: np.ndarray) -> Image:
        return Image(a, spacing, origin, grid.direction)

    truth = []
    offset = np.array([s.start for s in tpl.box], np.float64)
    for p in placed:
        a, b, c = p["axes"]
        truth.append(Lesion(label=p["index"] + 1,
                            centre_lps=tuple(float(v) for v in grid.index_to_world((p["centre"] + offset)[None])[0]),
                            diameter_mm=2 * float(max(p["axes"])), volume_mm3=4 / 3 * math.pi * a * b * c,
                            kind=p["kind"], semi_axes_mm=(float(a), float(b), float(c))))
    acq.update(seed=int(seed), noise_sigma_wm_fraction=round(sigma / wm, 4), bias_amplitude=round(bias_amplitude, 4),
               gamma=round(gamma, 4), enhancement_ratio_range=list(acq["enhancement_ratio_range"]),
               confounders=present, deformation=deformation, box_shape=list(box_shape))
    return BrainCase(on_grid(image), on_grid(labels), on_grid(brain_mask.astype(np.uint8)), truth, acq)
