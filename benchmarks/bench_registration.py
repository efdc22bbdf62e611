"""register vs SimpleITK: rigid Mattes MI (1 mm MNI152 fixed, 1.2 x 1.2 x 3 mm moving) and the
diffeomorphic stage vs DiffeomorphicDemonsRegistrationFilter (2 mm MNI152, known random warp).
Accuracy of the very runs that are timed is printed in the target column."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from _registration_data import (
    brain_mask,
    dice,
    load_mni,
    make_moving,
    mean_error,
    random_diffeomorphism,
    random_transform,
    sitk_rigid_mi,
)

import medkern as mk

from _harness import Case


def _rigid_case(quick: bool) -> Case:
    t1 = load_mni(2.0 if quick else 1.0)[0]
    rng = np.random.default_rng(0)
    T = random_transform(rng, "rigid", t1.index_to_world((np.array(t1.shape) - 1) / 2.0))
    moving = make_moving(t1, T, (3.0, 1.2, 1.2), rng)
    brain = brain_mask(t1)
    err_mk = mean_error(mk.register(t1, moving, "rigid", "mi").matrix, T, t1, brain)
    err_sitk = mean_error(sitk_rigid_mi(t1, moving), T, t1, brain)
    return Case(
        f"rigid MI, MNI152 {t1.spacing[0]:g} mm fixed {t1.shape} vs 3 x 1.2 x 1.2 mm moving",
        lambda: mk.register(t1, moving, "rigid", "mi"),
        {"SimpleITK ImageRegistrationMethod (Mattes MI, 3 levels)": lambda: sitk_rigid_mi(t1, moving)},
        target=f">= 5x at <= error; mean target error medkern {err_mk:.3f} mm, SimpleITK {err_sitk:.3f} mm",
        repeats=3,
    )


def _demons(fixed_s, moving_s):
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfIterations(50)
    demons.SetSmoothDisplacementField(True)
    demons.SetStandardDeviations(1.5)
    return demons.Execute(fixed_s, moving_s)


def _deformable_case(quick: bool) -> Case:
    t1, gm, wm = load_mni(3.0 if quick else 2.0)
    u = random_diffeomorphism(t1, np.random.default_rng(1), amplitude_mm=8.0, length_mm=10.0)
    moving, gm_m, wm_m = (mk.warp(x, u, reference=t1) for x in (t1, gm, wm))
    fixed_s, moving_s = t1.to_sitk(), moving.to_sitk()

    def dices(transform):
        return (dice(gm.array, mk.warp(gm_m, transform, reference=t1).array),
                dice(wm.array, mk.warp(wm_m, transform, reference=t1).array))

    res = mk.register(t1, moving, "deformable")
    field = _demons(fixed_s, moving_s)
    d_field = mk.DisplacementField(mk.Image.from_sitk(field).astype(np.float32))
    before = (dice(gm.array, gm_m.array), dice(wm.array, wm_m.array))
    d_mk, d_sitk = dices(res.transform), dices(d_field)
    return Case(
        f"deformable, MNI152 {t1.spacing[0]:g} mm {t1.shape}, random warp up to 8 mm",
        lambda: mk.register(t1, moving, "deformable"),
        {"SimpleITK DiffeomorphicDemons (50 it.)": lambda: _demons(fixed_s, moving_s)},
        target=(f"faster at >= Dice; GM/WM Dice before {before[0]:.3f}/{before[1]:.3f}, medkern "
                f"{d_mk[0]:.3f}/{d_mk[1]:.3f}, SimpleITK {d_sitk[0]:.3f}/{d_sitk[1]:.3f}"),
        repeats=1,
    )


def cases(quick: bool) -> list[Case]:
    return [_rigid_case(quick), _deformable_case(quick)]
