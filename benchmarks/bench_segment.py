"""Segmentation and measurement vs cc3d, scipy.ndimage and scikit-image."""

from __future__ import annotations

import cc3d
import numpy as np
import scipy.ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import marching_cubes, mesh_surface_area, regionprops

import medkern as mk
from medkern._segment import ball

from _harness import Case


def _blob_mask(shape, seed=0):
    """A realistic binary mask: thresholded smoothed noise (many components, holes, tunnels)."""
    noise = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return ndi.gaussian_filter(noise, 2.0) > 0.5


def _lesions(shape, n_lesions=20, seed=4):
    """A label map of ellipsoidal lesions, 3-25 mm semi-axes, on a CT-like anisotropic grid."""
    rng = np.random.default_rng(seed)
    spacing = (2.5, 0.8, 0.8)
    labels = np.zeros(shape, np.int32)
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij", sparse=True)
    for value in range(1, n_lesions + 1):
        centre = rng.uniform(0.15, 0.85, 3) * np.array(shape) * spacing
        semi = rng.uniform(3, 25, 3)
        labels[sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, semi)) <= 1] = value
    return labels, spacing


def cases(quick: bool) -> list[Case]:
    n = 128 if quick else 256
    shape = (n, n, n)
    mask = _blob_mask(shape)
    mask_u8 = mask.view(np.uint8)
    spacing = (2.5, 0.8, 0.8)
    # A multi-label map with coherent regions (like an organ segmentation): smoothed noise cut
    # into four bands.
    smooth = ndi.gaussian_filter(np.random.default_rng(1).random((64, 256, 256), dtype=np.float32), 2.0)
    multi = np.digitize(smooth, [0.47, 0.5, 0.53]).astype(np.uint8)
    st = ball(3.0, spacing)
    st_large = ball(8.0, spacing)
    img = mk.Image(mask, spacing=spacing)
    lesions, spacing_ct = _lesions((n // 2, n, n))
    img_f = np.random.default_rng(3).normal(0, 1, (n // 2, n, n)).astype(np.float32)
    return [
        Case(f"label {shape} 26-conn, blob mask",
             lambda: mk.label(mask, 26),
             {"cc3d": lambda: cc3d.connected_components(mask_u8, connectivity=26),
              "scipy.ndimage.label": lambda: ndi.label(mask, np.ones((3, 3, 3)))},
             target="<= 1.2x cc3d's time, >= 2x scipy"),
        Case(f"label {shape} 6-conn, blob mask",
             lambda: mk.label(mask, 6),
             {"cc3d": lambda: cc3d.connected_components(mask_u8, connectivity=6),
              "scipy.ndimage.label": lambda: ndi.label(mask)}),
        Case("label (64, 256, 256) 26-conn, 4-value label map",
             lambda: mk.label(multi, 26),
             {"cc3d": lambda: cc3d.connected_components(multi, connectivity=26)}),
        Case(f"distance_transform {shape} spacing {spacing}",
             lambda: mk.distance_transform(mask, spacing),
             {"scipy distance_transform_edt": lambda: ndi.distance_transform_edt(mask, sampling=spacing)},
             target=">= 5x scipy", repeats=3),
        Case(f"binary_dilate {shape} 3 mm ball ({int(st.sum())} offsets)",
             lambda: mk.binary_dilate(img, 3.0),
             {"scipy binary_dilation": lambda: ndi.binary_dilation(mask, st)}, repeats=3),
        Case(f"binary_erode {shape} 8 mm ball ({int(st_large.sum())} offsets, via EDT)",
             lambda: mk.binary_erode(img, 8.0),
             {"scipy binary_erosion": lambda: ndi.binary_erosion(mask, st_large)}, repeats=2),
        Case(f"fill_holes {shape}",
             lambda: mk.fill_holes(mask),
             {"scipy binary_fill_holes": lambda: ndi.binary_fill_holes(mask)}, repeats=3),
        Case(f"threshold_otsu {shape} float32",
             lambda: mk.threshold_otsu(img_f),
             {"skimage threshold_otsu": lambda: threshold_otsu(img_f)}),
        Case(f"regions of {int(lesions.max())} lesions in {lesions.shape} (mesh, Feret, RECIST)",
             lambda: mk.regions(mk.Image(lesions, spacing=spacing_ct)),
             {"skimage regionprops + marching_cubes area per lesion": lambda: [
                 (r.area, r.centroid, r.bbox, r.axis_major_length, mesh_surface_area(
                     *marching_cubes(np.pad(r.image, 1).astype(np.float32), 0.5, spacing=spacing_ct)[:2]))
                 for r in regionprops(lesions, spacing=spacing_ct)]},
             repeats=3),
    ]
