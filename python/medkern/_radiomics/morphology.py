"""Morphological features (IBSI §3.1) of the ROI morphological mask and its surface mesh.

The mesh is the marching-cubes surface of the mask (``medkern._measure.surface_mesh``, vertices on
the half-voxel lattice); volume and area come from it, approximate volume from voxel counting.
Intensity-weighted features (centre of mass shift, integrated intensity, Moran's I, Geary's C)
use the ROI intensity mask.
"""

from __future__ import annotations

import numpy as np

from medkern._measure import _max_diameter, surface_mesh
from medkern._radiomics import _kernels

TITLE = "Morphological features"
FEATURES = (
    ("Volume (mesh)", "RNU0"), ("Volume (voxel counting)", "YEKZ"), ("Surface area (mesh)", "C0JK"),
    ("Surface to volume ratio", "2PR5"), ("Compactness 1", "SKGS"), ("Compactness 2", "BQWJ"),
    ("Spherical disproportion", "KRCK"), ("Sphericity", "QCFX"), ("Asphericity", "25C7"),
    ("Centre of mass shift", "KLMA"), ("Maximum 3D diameter", "L0JK"),
    ("Major axis length", "TDIC"), ("Minor axis length", "P9VJ"), ("Least axis length", "7J51"),
    ("Elongation", "Q3CK"), ("Flatness", "N17B"),
    ("Volume density (axis-aligned bounding box)", "PBX1"),
    ("Area density (axis-aligned bounding box)", "R59B"),
    ("Volume density (approximate enclosing ellipsoid)", "6BDE"),
    ("Area density (approximate enclosing ellipsoid)", "RDD2"),
    ("Volume density (convex hull)", "R3ER"), ("Area density (convex hull)", "7T7F"),
    ("Integrated intensity", "99N0"), ("Moran’s I index", "N365"), ("Geary’s C measure", "NPT7"),
)


def _area_volume(verts: np.ndarray, faces: np.ndarray) -> tuple[np.float64, np.float64]:
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum()
    # Divergence theorem over outward-wound triangles (signed tetrahedra from the origin).
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0
    return np.float64(area), np.float64(volume)  # numpy scalars: x / 0 is inf, not an exception


def _hull_candidates(points: np.ndarray) -> np.ndarray:
    """Points that can be convex hull vertices, in a fixed pseudo-random order.

    A point strictly between two others on a lattice line is not a vertex: per axis, only the two
    ends of every line parallel to it are kept. Random insertion order keeps the incremental hull
    near its expected O(n log n) behaviour; the fixed seed keeps the result reproducible.
    """
    p = np.unique(points, axis=0)
    for axis in range(3):
        u, v = (axis + 1) % 3, (axis + 2) % 3
        p = p[np.lexsort((p[:, axis], p[:, v], p[:, u]))]
        first = np.ones(len(p), bool)
        first[1:] = (p[1:, u] != p[:-1, u]) | (p[1:, v] != p[:-1, v])
        p = p[first | np.roll(first, -1)]
    return p[np.random.default_rng(0).permutation(len(p))]


def ellipsoid_area(a: float, b: float, c: float, terms: int = 20) -> np.float64:
    """Surface area of an ellipsoid with semi-axes a >= b >= c as IBSI §3.1.20 approximates it:
    4 pi a b sum_nu (alpha beta)^nu / (1 - 4 nu^2) P_nu((alpha^2 + beta^2) / (2 alpha beta)),
    alpha = sqrt(1 - b^2/a^2), beta = sqrt(1 - c^2/a^2), summed to ``terms`` (20, as MIRP).
    Spheres and spheroids, where the series is undefined or inexact, use the exact areas."""
    if a == b == c:
        return np.float64(4.0 * np.pi * a * a)
    if b == c:  # prolate spheroid
        e = np.sqrt(1.0 - c * c / (a * a))
        return np.float64(2.0 * np.pi * c * c * (1.0 + a * np.arcsin(e) / (c * e)))
    if a == b:  # oblate spheroid
        e = np.sqrt(1.0 - c * c / (a * a))
        return np.float64(2.0 * np.pi * a * a * (1.0 + (1.0 - e * e) / e * np.arctanh(e)))
    alpha = np.sqrt(1.0 - b * b / (a * a))
    beta = np.sqrt(1.0 - c * c / (a * a))
    x = (alpha ** 2 + beta ** 2) / (2.0 * alpha * beta)
    total, p_prev, p_cur = 0.0, 0.0, 1.0  # Legendre P_{nu-1}, P_nu (Bonnet's recurrence)
    for nu in range(terms + 1):
        total += (alpha * beta) ** nu / (1.0 - 4.0 * nu * nu) * p_cur
        p_prev, p_cur = p_cur, ((2 * nu + 1) * x * p_cur - nu * p_prev) / (nu + 1)
    return np.float64(4.0 * np.pi * a * b * total)


def _fast_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (sizes the FFT handles fastest)."""
    best = 1 << int(np.ceil(np.log2(max(n, 1))))
    f5 = 1
    while f5 < best:
        f35 = f5
        while f35 < best:
            f = f35
            while f < n:
                f *= 2
            best = min(best, f)
            f35 *= 3
        f5 *= 5
    return best


def spatial_autocorrelation(image: np.ndarray, mask: np.ndarray, spacing) -> tuple[float, float]:
    """Moran's I and Geary's C (IBSI §3.1.24-25) with weights 1/distance (mm) over all pairs of
    ROI voxels. The weights depend only on the offset between two voxels, so the pair sums are
    correlations over offsets, computed exactly (to rounding) by FFT instead of over N² pairs."""
    m = mask.astype(np.float64)
    x = np.where(mask, image, 0.0)
    n = m.sum()
    mu = x.sum() / n
    y = (x - mu) * m
    shape = [_fast_size(2 * s - 1) for s in mask.shape]
    axes = tuple(range(mask.ndim))
    # Weight per offset: offsets wrap around; those beyond the ROI extent stay 0 (no pairs).
    grids = []
    for s, size in zip(mask.shape, shape):
        t = np.arange(size)
        d = np.where(t <= size // 2, t, t - size)
        grids.append(np.where(np.abs(d) <= s - 1, d, np.nan))
    dist2 = sum((g * sp).reshape([-1 if a == k else 1 for a in axes]) ** 2
                for k, (g, sp) in enumerate(zip(grids, spacing)))
    with np.errstate(divide="ignore"):
        w = np.where(np.isfinite(dist2) & (dist2 > 0), 1.0 / np.sqrt(dist2), 0.0)

    # Sum over offsets of w(offset) times a correlation, by Parseval: one spectrum of w serves
    # all four sums, so no inverse transform is needed. The half spectrum of rfftn stands for its
    # mirror image too, except at the zero and Nyquist frequencies of the last axis.
    f_w = np.fft.rfftn(w, shape, axes=axes)
    twice = np.full(f_w.shape[-1], 2.0)
    twice[0] = 1.0
    if shape[-1] % 2 == 0:
        twice[-1] = 1.0
    size = float(np.prod(shape))

    def weighted(spectrum):
        return float(np.sum((np.conj(f_w) * spectrum).real * twice)) / size

    f_m, f_y, f_x, f_x2 = (np.fft.rfftn(a, shape, axes=axes) for a in (m, y, x, x * x))
    sum_w = weighted(np.conj(f_m) * f_m)
    moran_num = weighted(np.conj(f_y) * f_y)
    geary_num = 2.0 * weighted(np.conj(f_x2) * f_m - np.conj(f_x) * f_x)
    ss = float((y * y).sum())
    if ss == 0 or sum_w == 0:
        return float("nan"), float("nan")
    return n / sum_w * moran_num / ss, (n - 1.0) / (2.0 * sum_w) * geary_num / ss


def compute(roi, settings) -> dict[str, float]:
    spacing = np.asarray(roi.spacing, np.float64)
    morph = roi.morph_mask.astype(bool)
    verts, faces = surface_mesh(morph, tuple(spacing), backend=settings.backend)
    area, volume = _area_volume(verts, faces)
    v_approx = float(morph.sum() * np.prod(spacing))
    pos = np.argwhere(morph) * spacing
    ipos = np.argwhere(roi.intensity_mask) * spacing
    weights = roi.image[roi.intensity_mask]
    com_shift = np.linalg.norm(pos.mean(axis=0) - (ipos * weights[:, None]).sum(axis=0) / weights.sum())
    # PCA of the voxel positions (IBSI §3.1.12): sample covariance, eigenvalues descending.
    lam = (np.sort(np.clip(np.linalg.eigvalsh(np.cov(pos.T)), 0.0, None))[::-1] if len(pos) > 1
           else np.zeros(3))
    major, minor, least = 4.0 * np.sqrt(lam)
    # Mesh vertices on the half-voxel lattice, as exact integers for the diameter and the hull.
    lattice = np.rint(2.0 * verts / spacing).astype(np.int64)
    diameter = _max_diameter(lattice.astype(np.int32), tuple(spacing), backend=settings.backend)[0]
    hull_pts = _hull_candidates(lattice)
    hull = _kernels.convex_hull(hull_pts, backend=settings.backend)
    hull_area, hull_volume = _area_volume(hull_pts * (spacing / 2.0), hull)
    extent = verts.max(axis=0) - verts.min(axis=0)
    aabb_volume = np.prod(extent)
    aabb_area = 2.0 * (extent[0] * extent[1] + extent[1] * extent[2] + extent[0] * extent[2])
    a, b, c = 2.0 * np.sqrt(lam)
    moran, geary = spatial_autocorrelation(roi.image, roi.intensity_mask, spacing)
    sphere = 36.0 * np.pi * volume ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (
            volume, v_approx, area, area / volume, volume / (np.sqrt(np.pi) * area ** 1.5),
            sphere / area ** 3, area / np.cbrt(sphere), np.cbrt(sphere) / area,
            np.cbrt(area ** 3 / sphere) - 1.0, com_shift, diameter, major, minor, least,
            np.sqrt(lam[1] / lam[0]), np.sqrt(lam[2] / lam[0]),
            volume / aabb_volume, area / aabb_area,
            volume / (4.0 * np.pi * a * b * c / 3.0), area / ellipsoid_area(a, b, c),
            volume / hull_volume, area / hull_area,
            volume * roi.values.mean(), moran, geary,
        )
    return {name: float(v) for (name, _), v in zip(FEATURES, values)}
