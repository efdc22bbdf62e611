"""Accuracy study of mk.register on data with a known answer (prints Markdown tables).

    PYTHONPATH=python python benchmarks/registration_study.py [--seeds 10] [--shared ../shared/data]

* nibabel anatomical.nii vs reoriented_anat_moved.nii (known rigid, make_moved_anat.py).
* MNI152 1 mm fixed vs a 3 x 1.2 x 1.2 mm moving image (random rigid / affine pose, noise, bias
  field): mean target error over the brain, per seed; the same with a T2-like contrast (MI).
* IBSI STS CT/PET (same frame of reference): PET moved by a known rigid E, MI registration;
  error against the scanner frame and against E @ (optimum of the unmoved pair).
* IBSI STS MR -> CT (no ground truth): Dice of the GTV masks before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _registration_data import brain_mask, dice, load_mni, make_moving, mean_error, random_transform, t2_like  # noqa: E402

import medkern as mk  # noqa: E402


def nibabel_case() -> str:
    import nibabel
    from nibabel.affines import from_matvec
    from nibabel.eulerangles import euler2mat

    d = Path(nibabel.__file__).parent / "tests" / "data"
    fixed, moving = mk.read(d / "anatomical.nii"), mk.read(d / "reoriented_anat_moved.nii")
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS
    T = flip @ from_matvec(euler2mat(0.1, 0.2, 0.3), [3, 4, 5]) @ flip
    brain = np.asarray(fixed.array, np.float64) > 0.2 * float(fixed.array.max())
    rows = ["| metric | transform | mean error (mm) | time (s) |", "|---|---|---|---|"]
    for metric in ("mi", "ncc", "mse"):
        for kind in ("rigid", "affine"):
            t0 = time.perf_counter()
            res = mk.register(fixed, moving, kind, metric)
            rows.append(f"| {metric} | {kind} | {mean_error(res.matrix, T, fixed, brain):.3f} | "
                        f"{time.perf_counter() - t0:.2f} |")
    return "\n".join(rows)


def mni_cases(seeds: int) -> str:
    t1, gm, wm = load_mni(1.0)
    t2 = t2_like(t1, gm, wm)
    brain = brain_mask(t1)
    centre = t1.index_to_world((np.array(t1.shape) - 1) / 2.0)
    rows = ["| case | seed | mean error (mm) | time (s) | iterations |", "|---|---|---|---|---|"]
    summary = {}
    for label, kind, source, limit in (("rigid T1", "rigid", t1, 0.3), ("affine T1", "affine", t1, 0.5),
                                       ("rigid T2-like (MI)", "rigid", t2, 0.3)):
        errors = []
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            T = random_transform(rng, kind, centre)
            moving = make_moving(source, T, (3.0, 1.2, 1.2), rng)
            t0 = time.perf_counter()
            res = mk.register(t1, moving, kind, "mi", seed=seed)
            dt = time.perf_counter() - t0
            errors.append(mean_error(res.matrix, T, t1, brain))
            rows.append(f"| {label} | {seed} | {errors[-1]:.3f} | {dt:.2f} | {res.iterations} |")
        summary[label] = (np.mean(errors), np.max(errors), limit)
    rows += ["", "| case | mean of seeds (mm) | worst seed (mm) | target (mm) |", "|---|---|---|---|"]
    rows += [f"| {k} | {m:.3f} | {w:.3f} | <= {lim} |" for k, (m, w, lim) in summary.items()]
    return "\n".join(rows)


def sts_cases(root: Path) -> str:
    rows = ["| patient | CT/PET: moved by (mm) | error vs scanner frame (mm) | error vs E @ unmoved optimum (mm) "
            "| MR->CT GTV Dice before | after |", "|---|---|---|---|---|---|"]
    for p in ("STS_001", "STS_002", "STS_003", "STS_004"):
        d = root / "ibsi" / "ibsi_validation" / "nifti" / p
        ct, pet = mk.read(d / "CT_image.nii.gz"), mk.read(d / "PET_image.nii.gz")
        body = ct.array > -300
        rng = np.random.default_rng(int(p[-3:]))
        E = random_transform(rng, "rigid", ct.index_to_world((np.array(ct.shape) - 1) / 2.0), 0.1, 8.0)
        moved = mk.Image(pet.array, pet.spacing, (E @ np.r_[pet.origin, 1.0])[:3], E[:3, :3] @ pet.direction)
        base = mk.register(ct, pet, "rigid", "mi", initial="identity")
        res = mk.register(ct, moved, "rigid", "mi", initial="identity")
        shift = mean_error(np.eye(4), E, ct, body)
        err_abs = mean_error(res.matrix, E, ct, body)
        err_rel = mean_error(res.matrix, E @ base.matrix, ct, body)
        mr, mr_mask = mk.read(d / "MR_T1_image.nii.gz"), mk.read(d / "MR_T1_mask.nii.gz")
        ct_mask = np.asarray(mk.read(d / "CT_mask.nii.gz").array) > 0
        before = mk.resample_to(mr_mask.astype(np.float32), ct, mk.Affine.identity(), "nearest").array
        reg = mk.register(ct, mr, "rigid", "mi", initial="identity")
        after = mk.resample_to(mr_mask.astype(np.float32), ct, reg.transform, "nearest").array
        rows.append(f"| {p} | {shift:.2f} | {err_abs:.2f} | {err_rel:.2f} | {dice(ct_mask, before):.3f} | "
                    f"{dice(ct_mask, after):.3f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get(
        "MEDKERN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--only", choices=("nibabel", "mni", "sts"), default=None)
    args = ap.parse_args()
    if args.only in (None, "nibabel"):
        print("### nibabel anatomical.nii vs reoriented_anat_moved.nii\n\n" + nibabel_case() + "\n", flush=True)
    if args.only in (None, "mni"):
        print("### MNI152 1 mm vs 3 x 1.2 x 1.2 mm, noise + bias field\n\n" + mni_cases(args.seeds) + "\n", flush=True)
    if args.only in (None, "sts") and args.shared.is_dir():
        print("### IBSI STS (Vallieres et al. 2015, TCIA)\n\n" + sts_cases(args.shared) + "\n", flush=True)


if __name__ == "__main__":
    main()
