"""CLAHE / equalize_hist / N4 vs scikit-image, OpenCV and SimpleITK, on real images.

CLAHE 3D and equalize_hist run on the MNI152 T1 (nilearn) placed in a 128x256x256 volume, CLAHE
2D on the pydicom-data chest radiograph RG1_UNCR.dcm resampled to 512x512 uint16, N4 on the
1 mm MNI152 T1 times a known smooth multiplicative field (the case name reports the recovered
field's correlation with the truth and the white-matter coefficient of variation after
correction, for medkern and SimpleITK, both shrinking by 4 with 4 x 50 iterations).
"""

from __future__ import annotations

import cv2
import numpy as np
import SimpleITK as sitk
from skimage import exposure

import medkern as mk

from _harness import Case


def _mni() -> np.ndarray:
    from nilearn.datasets import load_mni152_template

    t = np.asarray(load_mni152_template(resolution=1).dataobj, dtype=np.float32)
    return np.ascontiguousarray(t.transpose(2, 1, 0))  # [k, j, i] = (z, y, x), 189 x 233 x 197


def _radiograph_512() -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    a = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm")).pixel_array
    return cv2.resize(a, (512, 512), interpolation=cv2.INTER_AREA).astype(np.uint16)


def _n4_case(mni: np.ndarray, quick: bool) -> Case:
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in mni.shape], indexing="ij")
    k, j, i = grids
    log_true = 0.25 * k + 0.2 * j * j - 0.15 * i + 0.1 * k * i
    img = (mni * 100 * np.exp(log_true)).astype(np.float32)
    mask = mni > 0.2
    white = mni > 0.75
    iterations = (50, 50, 50, 50)
    s_img = sitk.GetImageFromArray(img)
    s_mask = sitk.GetImageFromArray(mask.astype(np.uint8))

    def medkern_n4():
        return mk.n4_bias_correction(img, mask, shrink_factor=4, iterations=iterations,
                                     return_bias_field=True)

    def sitk_n4():
        small, small_mask = sitk.Shrink(s_img, [4] * 3), sitk.Shrink(s_mask, [4] * 3)
        n4 = sitk.N4BiasFieldCorrectionImageFilter()
        n4.SetMaximumNumberOfIterations(list(iterations))
        n4.Execute(small, small_mask)
        log_bias = n4.GetLogBiasFieldAsImage(s_img)
        return s_img / sitk.Exp(log_bias), log_bias

    def quality(corrected, log_bias):
        corr = np.corrcoef(log_bias[mask], log_true[mask])[0, 1]
        cv = corrected[white].std() / corrected[white].mean()
        return f"field r={corr:.3f}, WM CV={cv:.3f}"

    name = "N4 MNI152 1 mm x known field, shrink 4, 4x50 it"
    if not quick:
        corrected, bias = medkern_n4()
        s_corr, s_log = sitk_n4()
        cv_in = img[white].std() / img[white].mean()
        name += (f" (WM CV before {cv_in:.3f}; medkern {quality(corrected, np.log(bias))}; "
                 f"SimpleITK {quality(sitk.GetArrayFromImage(s_corr), sitk.GetArrayFromImage(s_log))})")
    return Case(name, medkern_n4, {"SimpleITK N4 (Shrink 4)": sitk_n4}, target=">= 5x",
                repeats=2)


def cases(quick: bool) -> list[Case]:
    mni = _mni()
    vol = np.zeros((128, 256, 256), np.float32)
    vol[:, 11:244, 29:226] = mni[30:158]
    xray = _radiograph_512()
    xray_cv = cv2.createCLAHE(clipLimit=40.0, tileGridSize=(8, 8))
    return [
        Case("CLAHE 3D 128x256x256 float32 (MNI152), skimage definition",
             lambda: mk.clahe(vol),
             {"scikit-image equalize_adapthist": lambda: exposure.equalize_adapthist(vol)},
             bytes_moved=vol.nbytes * 2, target=">= 10x", repeats=3),
        Case("CLAHE 2D 512x512 uint16 (chest radiograph), OpenCV definition, 8x8 tiles",
             lambda: mk.clahe(xray, method="opencv", clip_limit=40.0, tile_grid=(8, 8)),
             {"OpenCV createCLAHE": lambda: xray_cv.apply(xray)},
             bytes_moved=xray.nbytes * 2, target=">= 1x", repeats=20),
        Case("CLAHE 2D 512x512 uint16 (chest radiograph), skimage definition",
             lambda: mk.clahe(xray),
             {"scikit-image equalize_adapthist": lambda: exposure.equalize_adapthist(xray)},
             bytes_moved=xray.nbytes * 3, repeats=10),
        Case("equalize_hist 128x256x256 float32 (MNI152), mask",
             lambda: mk.equalize_hist(vol, mask=vol > 0.1),
             {"scikit-image equalize_hist": lambda: exposure.equalize_hist(vol, mask=vol > 0.1)},
             bytes_moved=vol.nbytes * 3),
        _n4_case(mni, quick),
    ]
