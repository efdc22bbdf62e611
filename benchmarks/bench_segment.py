"""Segmentation and measurement vs cc3d, scipy.ndimage and scikit-image."""

from __future__ import annotations

import cc3d
import numpy as np
import scipy.ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import regionprops

import medkern as mk
from medkern.segment import ball
from _harness import Case


def _blob_mask(shape, seed=0):
    """A realistic binary mask: thresholded smoothed noise (many components, holes, tunnels)."""
    noise = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return ndi.gaussian_filter(noise, 2.0) > 0.5


def cases(quick: bool) -> list[Case]:
    n = 128 if quick else 256
    shape = (n, n, n)
    mask = _blob_mask(shape)
    mask_u8 = mask.view(np.uint8)
    spacing = (2.5, 0.8, 0.8)
    multi = (np.random.default_rng(1).integers(0, 3, size=(64, 256, 256)) *
             _blob_mask((64, 256, 256), 2)).astype(np.uint8)
    st = ball(3.0, spacing)
    st_large = ball(8.0, spacing)
    img = mk.Image(mask, spacing=spacing)
    labels, _ = mk.label(mask)
    small = labels[: n // 4]
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
        Case("label (64, 256, 256) 26-conn, 3-value label image",
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
        Case(f"regions of {int(small.max())} components, {small.shape}",
             lambda: mk.regions(small),
             {"skimage regionprops (area, centroid, bbox, axes; no mesh)": lambda: [
                 (r.area, r.centroid, r.bbox, r.axis_major_length)
                 for r in regionprops(small)]},
             repeats=3),
    ]
