"""Resampling vs SimpleITK (all cores), scipy.ndimage and volresample, on the same arrays.

volresample (pip install volresample) is optional: its rows are left out when it is missing.
The CT cases use ``antialias=False`` so that every library computes the same interpolation; the
``antialias=True`` row shows what the Gaussian prefilter costs on top.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk

import medkern as mk

from _harness import Case

try:
    import volresample
except ImportError:  # benchmark-only reference
    volresample = None


def _sitk_resampler(out: mk.Image, interpolator, transform=None):
    f = sitk.ResampleImageFilter()
    f.SetSize(tuple(int(n) for n in out.shape[::-1]))
    f.SetOutputSpacing(tuple(float(s) for s in out.spacing[::-1]))
    f.SetOutputOrigin(tuple(float(o) for o in out.origin))
    f.SetOutputDirection(tuple(float(v) for v in out.direction[:, ::-1].ravel()))
    f.SetInterpolator(interpolator)
    f.SetOutputPixelType(sitk.sitkFloat32 if interpolator != sitk.sitkNearestNeighbor else sitk.sitkUnknown)
    if transform is not None:
        f.SetTransform(transform)
    return f


def cases(quick: bool) -> list[Case]:
    shape = (64, 256, 256) if quick else (160, 512, 512)
    rng = np.random.default_rng(0)
    ct16 = ndi.uniform_filter(rng.integers(-1024, 2000, size=shape, dtype=np.int16), 3)
    ct = ct16.astype(np.float32)
    img = mk.Image(ct, spacing=(2.5, 0.7, 0.7))
    img16 = mk.Image(ct16, spacing=(2.5, 0.7, 0.7))
    s_img, s_img16 = img.to_sitk(), img16.to_sitk()
    out = mk.resample(img, 1.0, antialias=False)
    zoom = np.array(out.shape) / np.array(shape)
    lin, cub, nn = (_sitk_resampler(out, i) for i in (sitk.sitkLinear, sitk.sitkBSpline, sitk.sitkNearestNeighbor))
    tag = f"CT {'x'.join(map(str, shape))} (2.5, 0.7, 0.7) -> 1 mm"
    rows = []

    refs = {"SimpleITK Resample linear": lambda: lin.Execute(s_img),
            "scipy zoom order=1": lambda: ndi.zoom(ct, zoom, order=1, mode="nearest", grid_mode=True)}
    if volresample is not None:
        refs["volresample linear"] = lambda: volresample.resample(ct, out.shape, "linear")
    rows.append(Case(f"{tag} float32 linear", lambda: mk.resample(img, 1.0, antialias=False), refs,
                     bytes_moved=ct.nbytes + out.array.nbytes,
                     target="faster than volresample, >= 5x SimpleITK", repeats=3))
    rows.append(Case(f"{tag} float32 linear, antialias", lambda: mk.resample(img, 1.0),
                     {"SimpleITK Resample linear (no antialias)": lambda: lin.Execute(s_img)},
                     bytes_moved=ct.nbytes + out.array.nbytes, repeats=3))
    refs = {"SimpleITK Resample BSpline": lambda: cub.Execute(s_img)}
    if volresample is not None:
        refs["volresample cubic"] = lambda: volresample.resample(ct, out.shape, "cubic")
    rows.append(Case(f"{tag} float32 cubic B-spline", lambda: mk.resample(img, 1.0, "cubic", antialias=False),
                     refs, bytes_moved=ct.nbytes + out.array.nbytes,
                     target=">= 20x SimpleITK, faster than volresample cubic", repeats=1))
    refs = {"SimpleITK Resample nearest": lambda: nn.Execute(s_img16)}
    if volresample is not None:
        refs["volresample nearest"] = lambda: volresample.resample(ct16, out.shape, "nearest")
    rows.append(Case(f"{tag} int16 nearest", lambda: mk.resample(img16, 1.0, "nearest"), refs,
                     bytes_moved=ct16.nbytes + out.array.size * 2, target="at least volresample's speed",
                     repeats=3))

    n = 128 if quick else 256
    cube = ndi.uniform_filter(rng.normal(size=(n, n, n)).astype(np.float32), 3)
    vol = mk.Image(cube, spacing=(1.0, 1.0, 1.0))
    centre = vol.index_to_world(np.full(3, (n - 1) / 2))
    rot = mk.Affine.rotation((0, 0, 10), center=centre)
    s_vol = vol.to_sitk()
    rot_filter = _sitk_resampler(vol, sitk.sitkLinear, rot.to_sitk())
    inv = np.linalg.inv(vol.affine) @ rot.matrix @ vol.affine
    rows.append(Case(f"{n}^3 rotation 10 deg, linear (resample_to + Affine)",
                     lambda: mk.resample_to(vol, vol, rot),
                     {"SimpleITK Resample Euler": lambda: rot_filter.Execute(s_vol),
                      "scipy affine_transform order=1": lambda: ndi.affine_transform(
                          cube, inv[:3, :3], inv[:3, 3], order=1, mode="nearest")},
                     bytes_moved=2 * cube.nbytes, target=">= 2x SimpleITK", repeats=3))

    u = ndi.gaussian_filter(rng.normal(size=(n // 4,) * 3 + (3,)), (2, 2, 2, 0)) * 30
    u = np.stack([ndi.zoom(u[..., q], 4, order=1) for q in range(3)], axis=-1).astype(np.float32)
    field = mk.DisplacementField(vol.with_array(u, vector=True))
    s_field = field.to_sitk()
    disp_filter = _sitk_resampler(vol, sitk.sitkLinear, s_field)
    rows.append(Case(f"{n}^3 displacement-field warp, linear", lambda: mk.warp(vol, field),
                     {"SimpleITK DisplacementFieldTransform": lambda: disp_filter.Execute(s_vol)},
                     bytes_moved=2 * cube.nbytes + u.nbytes, target=">= 2x SimpleITK", repeats=3))
    return rows
