"""Registration workloads with a known answer, shared by bench_registration.py,
registration_study.py and make_registration_figure.py.

* MNI152 2009a T1 (nilearn) moved by a random rigid/affine transform and resampled onto an
  anisotropic grid, with Gaussian noise and a smooth multiplicative bias field.
* A T2-like contrast built from the nilearn tissue maps (CSF bright, grey > white).
* A smooth random displacement (Jacobian > 0) for the deformable case.
"""

from __future__ import annotations

import numpy as np

import medkern as mk
from medkern._registration import _rotation


def load_mni(spacing_mm: float = 1.0) -> tuple[mk.Image, mk.Image, mk.Image]:
    """T1, grey- and white-matter maps, float32, resampled to ``spacing_mm`` when not 1."""
    from nilearn import datasets

    maps = [mk.Image.from_nibabel(f(resolution=1)).astype(np.float32)
            for f in (datasets.load_mni152_template, datasets.load_mni152_gm_template,
                      datasets.load_mni152_wm_template)]
    if spacing_mm != 1.0:
        maps = [mk.resample(m, spacing_mm) for m in maps]
    return tuple(maps)


def random_transform(rng: np.random.Generator, kind: str, centre: np.ndarray,
                     max_angle: float = 0.17, max_shift: float = 10.0, max_affine: float = 0.08) -> np.ndarray:
    """Rotation up to ~10 degrees per axis about ``centre``, shift up to 10 mm; ``"affine"``
    adds up to 8 % scaling/shear."""
    A = _rotation(rng.uniform(-max_angle, max_angle, 3))
    if kind == "affine":
        A = A @ (np.eye(3) + rng.uniform(-max_affine, max_affine, (3, 3)))
    T = np.eye(4)
    T[:3, :3] = A
    T[:3, 3] = centre - A @ centre + rng.uniform(-max_shift, max_shift, 3)
    return T


def make_moving(fixed: mk.Image, T: np.ndarray, spacing, rng: np.random.Generator,
                noise: float = 0.02, bias: float = 0.15) -> mk.Image:
    """What a scanner at pose ``T`` sees: moving(T x) = fixed(x), on a grid of ``spacing``
    (array order, antialiased), plus noise (fraction of the maximum) and a smooth multiplicative
    bias field (bias=0.15: about +-20 % non-uniformity, BrainWeb's 20 % INU level)."""
    moved = mk.warp(fixed, mk.Affine(np.linalg.inv(T)), reference=fixed)
    a = np.asarray(mk.resample(moved, spacing).array, dtype=np.float64)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in a.shape], indexing="ij")
    c = rng.normal(size=4)
    field = np.exp(bias * (c[0] * grids[0] + c[1] * grids[1] + c[2] * grids[2]
                           + c[3] * grids[0] * grids[1]) / 2)
    a = a * field + noise * a.max() * rng.normal(size=a.shape)
    return mk.resample(moved, spacing).with_array(a.astype(np.float32))


def t2_like(t1: mk.Image, gm: mk.Image, wm: mk.Image) -> mk.Image:
    """CSF bright, grey matter mid, white matter dark: the T1 contrast inverted per tissue."""
    head = t1.array > 0.05 * float(t1.array.max())
    csf = np.clip(head * 1.0 - gm.array - wm.array, 0, 1)
    return t1.with_array((100 * (1.0 * csf + 0.6 * gm.array + 0.3 * wm.array)).astype(np.float32))


def brain_mask(t1: mk.Image) -> np.ndarray:
    return t1.array > 0.2 * float(t1.array.max())


def mean_error(T_est: np.ndarray, T_true: np.ndarray, fixed: mk.Image, mask: np.ndarray) -> float:
    """Mean distance (mm) between the estimated and true images of the masked voxel centres."""
    pts = fixed.index_to_world(np.argwhere(mask).astype(np.float64))
    d = pts @ (T_est[:3, :3] - T_true[:3, :3]).T + (T_est[:3, 3] - T_true[:3, 3])
    return float(np.linalg.norm(d, axis=1).mean())


def random_diffeomorphism(fixed: mk.Image, rng: np.random.Generator, amplitude_mm: float = 8.0,
                          length_mm: float = 10.0) -> mk.DisplacementField:
    """Smooth random displacement u (largest |u| = amplitude) on the fixed grid; the moving image
    is warp(fixed, DisplacementField(u)), i.e. moving(x) = fixed(x + u(x))."""
    from scipy import ndimage as ndi

    sigma = length_mm / np.asarray(fixed.spacing)
    u = np.stack([ndi.gaussian_filter(rng.normal(size=fixed.shape), sigma) for _ in range(3)], -1)
    u *= amplitude_mm / np.sqrt((u**2).sum(-1)).max()
    return mk.DisplacementField(mk.Image(u.astype(np.float32), vector=True, **fixed.geometry))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def sitk_rigid_mi(fixed: mk.Image, moving: mk.Image, seed: int = 0) -> np.ndarray:
    """SimpleITK's usual rigid MI set-up: Euler3D from the geometric centres, Mattes MI (50 bins,
    10 % random samples), regular-step gradient descent with physical-shift scales, shrink
    4/2/1 with smoothing 2/1/0 mm. Returns the fixed -> moving 4x4 matrix."""
    import SimpleITK as sitk

    f = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    m = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    init = sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(50)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(0.1, seed)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                              numberOfIterations=200, relaxationFactor=0.5)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel([4, 2, 1])
    r.SetSmoothingSigmasPerLevel([2, 1, 0])
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    r.SetInitialTransform(init, inPlace=False)
    out = r.Execute(f, m)
    return mk.Affine.from_sitk(out).matrix
