"""Enhancement filters vs SimpleITK and scipy.ndimage (issue targets in each Case)."""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk

import medkern as mk

from _harness import Case


def _brain_bilateral(quick: bool) -> list[Case]:
    """Bilateral grid on the 1 mm MNI152 T1 (nilearn's template; a central 96^3 crop with --quick),
    sigma 2 mm and 10% of the intensity range, against SimpleITK and the exact filter."""
    try:
        from nilearn.datasets import load_mni152_template
    except ImportError:
        return []
    t1 = np.asarray(load_mni152_template(resolution=1).get_fdata(), dtype=np.float32)
    if quick:
        t1 = np.ascontiguousarray(t1[50:146, 60:156, 40:136])
    brain = mk.Image(t1, spacing=(1.0, 1.0, 1.0))
    s_brain = brain.to_sitk()
    sigma_r = 0.1 * float(t1.max() - t1.min())
    return [Case(f"bilateral grid MNI152 T1 1 mm {t1.shape} sigma_s=2 mm sigma_r=10% of range",
                 lambda: mk.bilateral(brain, 2.0, sigma_r, method="grid"),
                 {"SimpleITK Bilateral": lambda: sitk.Bilateral(s_brain, 2.0, sigma_r),
                  "medkern bilateral exact": lambda: mk.bilateral(brain, 2.0, sigma_r)},
                 target=">= 100x SimpleITK", repeats=1)]


def cases(quick: bool) -> list[Case]:
    rng = np.random.default_rng(0)
    cube = (128, 128, 128) if quick else (256, 256, 256)
    slab = (64, 128, 128) if quick else (128, 256, 256)
    # Smooth-ish random volume in [0, 1]: noise on a blurred field, like a normalised MR.
    vol = rng.random(cube, dtype=np.float32)
    s_vol = sitk.GetImageFromArray(vol)
    mr = np.clip(ndi.zoom(rng.random(tuple(n // 16 for n in slab)), 16, order=1)
                 + 0.05 * rng.standard_normal(slab), 0, 1).astype(np.float32)
    s_mr = sitk.GetImageFromArray(mr)
    ct = rng.integers(-1000, 2000, size=cube, dtype=np.int16)
    s_ct = sitk.GetImageFromArray(ct)
    nbytes = vol.nbytes * 2
    return [
        Case(f"gaussian sigma=2 vox {cube} float32 (fir)",
             lambda: mk.gaussian(vol, sigma_vox=2.0),
             {"SimpleITK SmoothingRecursiveGaussian": lambda: sitk.SmoothingRecursiveGaussian(s_vol, 2.0),
              "scipy gaussian_filter": lambda: ndi.gaussian_filter(vol, 2.0)},
             bytes_moved=nbytes, target=">= 4x both"),
        Case(f"gaussian sigma=2 vox {cube} float32 (recursive)",
             lambda: mk.gaussian(vol, sigma_vox=2.0, method="recursive"),
             {"SimpleITK SmoothingRecursiveGaussian": lambda: sitk.SmoothingRecursiveGaussian(s_vol, 2.0)},
             bytes_moved=nbytes),
        Case(f"median radius 1 {cube} int16",
             lambda: mk.median(ct, 1),
             {"SimpleITK Median": lambda: sitk.Median(s_ct, [1, 1, 1])},
             bytes_moved=ct.nbytes * 2, target=">= 10x SimpleITK", repeats=3),
        Case(f"median radius 1 {cube} float32",
             lambda: mk.median(vol, 1),
             {"SimpleITK Median": lambda: sitk.Median(s_vol, [1, 1, 1])},
             bytes_moved=nbytes, target=">= 10x SimpleITK", repeats=3),
        Case(f"bilateral {slab} sigma_s=1.5 vox sigma_r=0.1",
             lambda: mk.bilateral(mr, 1.5, 0.1),
             {"SimpleITK Bilateral": lambda: sitk.Bilateral(s_mr, 1.5, 0.1)},
             target=">= 50x", repeats=1),
        Case(f"bilateral grid {slab} sigma_s=1.5 vox sigma_r=0.1",
             lambda: mk.bilateral(mr, 1.5, 0.1, method="grid"),
             {"SimpleITK Bilateral": lambda: sitk.Bilateral(s_mr, 1.5, 0.1),
              "medkern bilateral exact": lambda: mk.bilateral(mr, 1.5, 0.1)},
             target=">= 100x SimpleITK", repeats=3),
        *_brain_bilateral(quick),
        Case(f"curvature diffusion 5 it {slab}",
             lambda: mk.anisotropic_diffusion(mr, 5, method="curvature"),
             {"SimpleITK CurvatureAnisotropicDiffusion": lambda: sitk.CurvatureAnisotropicDiffusion(
                 s_mr, timeStep=0.0625, conductanceParameter=1.0, numberOfIterations=5)},
             target=">= 10x", repeats=3),
        Case(f"gradient diffusion 5 it {slab}",
             lambda: mk.anisotropic_diffusion(mr, 5, method="gradient"),
             {"SimpleITK GradientAnisotropicDiffusion": lambda: sitk.GradientAnisotropicDiffusion(
                 s_mr, timeStep=0.0625, conductanceParameter=1.0, numberOfIterations=5)},
             repeats=3),
        Case(f"LoG sigma=2 vox {cube} float32",
             lambda: mk.log_filter(vol, sigma_vox=2.0),
             {"scipy gaussian_laplace": lambda: ndi.gaussian_laplace(vol, 2.0),
              "SimpleITK LaplacianRecursiveGaussian": lambda: sitk.LaplacianRecursiveGaussian(s_vol, 2.0)},
             repeats=3),
        Case(f"mean 5^3 {cube} float32",
             lambda: mk.mean_filter(vol, 2),
             {"scipy uniform_filter": lambda: ndi.uniform_filter(vol, 5),
              "SimpleITK Mean": lambda: sitk.Mean(s_vol, [2, 2, 2])},
             bytes_moved=nbytes, repeats=3),
    ]
