"""Deformable registration: medkern vs ANTsPy SyNOnly (and SimpleITK demons) in one run.

    ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=2 python benchmarks/deformable_vs_ants.py [--sitk]

The case: the MNI152 2009a T1 at 1 mm (nilearn, shipped with the package) warped by a smooth
random displacement (largest 12 mm, correlation length 10 mm, Jacobian > 0; seed 0) is the moving
image; the unwarped T1 is the fixed one. The grey-matter probability map is warped the same way.
Each method registers moving onto fixed; its transform then warps the moving GM map back onto the
fixed grid (linear), and GM Dice is that map > 0.5 against the fixed GM map > 0.5. Times are the
registration calls alone, each run once, all in this process on the same arrays. ANTsPy
(``pip install antspyx``) is needed for this benchmark only, never by medkern.

Writes benchmarks/DEFORMABLE.md (the table, the machine, the medkern time per stage).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _registration_data import dice, load_mni, random_diffeomorphism  # noqa: E402

import medkern as mk  # noqa: E402

HERE = Path(__file__).resolve().parent


def make_case(spacing_mm: float, seed: int) -> tuple[mk.Image, mk.Image, mk.Image, mk.Image, float]:
    """Fixed T1 and GM map, moving T1 and GM map, and the largest displacement (mm)."""
    t1, gm, _ = load_mni(spacing_mm)
    u = random_diffeomorphism(t1, np.random.default_rng(seed), amplitude_mm=12.0, length_mm=10.0)
    moving, gm_m = (mk.warp(x, u, reference=t1) for x in (t1, gm))
    umax = float(np.sqrt((np.asarray(u.field.array) ** 2).sum(-1)).max())
    return t1, gm, moving, gm_m, umax


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ------------------------------------------------------------------------------------- medkern
def run_medkern(fixed: mk.Image, moving: mk.Image, **kwargs) -> tuple[mk.Transform, float, list]:
    """The registration, its time and the time of each progress stage (in order)."""
    marks: list[tuple[str, float]] = []

    def progress(stage: str, _fraction: float) -> bool:
        if not marks or marks[-1][0] != stage:
            marks.append((stage, time.perf_counter()))
        return True

    t0 = time.perf_counter()
    res = mk.register(fixed, moving, "deformable", progress=progress, **kwargs)
    t1 = time.perf_counter()
    stages = [(name, (marks[n + 1][1] if n + 1 < len(marks) else t1) - start)
              for n, (name, start) in enumerate(marks)]
    return res.transform, t1 - t0, stages


# ------------------------------------------------------------------------------------- ANTsPy
def _to_ants(img: mk.Image):
    import ants

    # ITK index order (i, j, k) is the reverse of numpy's (k, j, i); both are LPS.
    return ants.from_numpy(np.ascontiguousarray(np.asarray(img.array, np.float32).T),
                           origin=tuple(float(x) for x in img.origin),
                           spacing=tuple(float(x) for x in img.spacing[::-1]),
                           direction=np.asarray(img.direction)[:, ::-1].copy())


def run_ants(fixed: mk.Image, moving: mk.Image, gm_moving: mk.Image) -> tuple[np.ndarray, float]:
    """ANTsPy registration(type_of_transform="SyNOnly") with its defaults; the warped GM map."""
    import ants

    f, m = _to_ants(fixed), _to_ants(moving)
    t0 = time.perf_counter()
    out = ants.registration(f, m, type_of_transform="SyNOnly")
    dt = time.perf_counter() - t0
    warped = ants.apply_transforms(f, _to_ants(gm_moving), out["fwdtransforms"],
                                   interpolator="linear")
    return np.ascontiguousarray(warped.numpy().T), dt


# ------------------------------------------------------------------------------------- SimpleITK
def run_sitk_demons(fixed: mk.Image, moving: mk.Image, gm_moving: mk.Image
                    ) -> tuple[np.ndarray, float]:
    """DiffeomorphicDemonsRegistrationFilter over 3 levels (shrink 4, 2, 1; smoothing 2, 1, 0
    voxels; 50 iterations a level; field sigma 1.5 voxels), as in the SimpleITK notebooks."""
    import SimpleITK as sitk

    f, m = fixed.to_sitk(), moving.to_sitk()
    t0 = time.perf_counter()
    field = None
    for shrink, sigma in ((4, 2.0), (2, 1.0), (1, 0.0)):
        fs, ms = f, m
        if sigma > 0:
            fs = sitk.SmoothingRecursiveGaussian(fs, sigma * fixed.spacing[0])
            ms = sitk.SmoothingRecursiveGaussian(ms, sigma * moving.spacing[0])
        if shrink > 1:
            fs, ms = sitk.Shrink(fs, [shrink] * 3), sitk.Shrink(ms, [shrink] * 3)
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
        demons.SetNumberOfIterations(50)
        demons.SetSmoothDisplacementField(True)
        demons.SetStandardDeviations(1.5)
        if field is None:
            field = demons.Execute(fs, ms)
        else:
            init = sitk.Resample(field, fs, sitk.Transform(), sitk.sitkLinear, 0.0,
                                 field.GetPixelID())
            field = demons.Execute(fs, ms, init)
    dt = time.perf_counter() - t0
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    warped = sitk.Resample(gm_moving.to_sitk(), f, tx, sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(warped), dt


# ------------------------------------------------------------------------------------- report
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spacing", type=float, default=1.0, help="MNI152 spacing in mm (1.0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sitk", action="store_true", help="also SimpleITK diffeomorphic demons")
    ap.add_argument("--no-ants", action="store_true", help="medkern only (no table written)")
    ap.add_argument("--out", type=Path, default=HERE / "DEFORMABLE.md")
    args = ap.parse_args()

    t_start = time.perf_counter()
    fixed, gm, moving, gm_m, umax = make_case(args.spacing, args.seed)
    case = (f"MNI152 2009a T1 {args.spacing:g} mm {fixed.shape}, warped by a smooth random field "
            f"(largest {umax:.1f} mm, correlation length 10 mm, seed {args.seed})")
    print(case, flush=True)
    before = dice(gm.array, gm_m.array)
    rows = [("none (moving as is)", None, before)]

    transform, t_mk, stages = run_medkern(fixed, moving)
    d_mk = dice(gm.array, mk.warp(gm_m, transform, reference=fixed).array)
    rows.append(("medkern `register(transform=\"deformable\")`", t_mk, d_mk))
    print(f"medkern {t_mk:.1f} s, GM Dice {d_mk:.4f}", flush=True)
    for name, dt in stages:
        print(f"    {name:22s} {dt:6.2f} s", flush=True)
    if not args.no_ants:
        warped, t_ants = run_ants(fixed, moving, gm_m)
        rows.append(("ANTsPy `registration(type_of_transform=\"SyNOnly\")`", t_ants,
                     dice(gm.array, warped)))
        print(f"ANTs {t_ants:.1f} s, GM Dice {rows[-1][2]:.4f}", flush=True)
    if args.sitk:
        warped, t_sitk = run_sitk_demons(fixed, moving, gm_m)
        rows.append(("SimpleITK DiffeomorphicDemons, 3 levels x 50 it.", t_sitk,
                     dice(gm.array, warped)))
        print(f"SimpleITK {t_sitk:.1f} s, GM Dice {rows[-1][2]:.4f}", flush=True)
    if args.no_ants:
        return
    write_report(args, case, rows, t_mk, stages, time.perf_counter() - t_start)


def write_report(args, case: str, rows, t_mk: float, stages, total_s: float) -> None:
    import ants
    import SimpleITK as sitk

    lines = [
        "# Deformable registration: medkern vs ANTs SyNOnly",
        "",
        f"{case}. Each method registers moving onto fixed once; the moving grey-matter map warped "
        "back by its transform (linear) is compared with the fixed one (both > 0.5). Time: the "
        "registration call alone. Ratio: the method's time / medkern's time. Written by "
        "`python benchmarks/deformable_vs_ants.py" + (" --sitk" if args.sitk else "") + "`.",
        "",
        f"{_cpu_name()}, {os.cpu_count()} cores, medkern threads {mk.get_num_threads()}, "
        f"ITK threads {os.environ['ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS']}; medkern "
        f"{mk.__version__}, antspyx {ants.__version__}, SimpleITK {sitk.Version_VersionString()}; "
        f"{datetime.date.today().isoformat()}, {total_s:.0f} s for the whole run.",
        "",
        "| method | time (s) | GM Dice | time / medkern |",
        "|---|---|---|---|",
    ]
    for name, dt, d in rows:
        if dt is None:
            lines.append(f"| {name} | – | {d:.4f} | – |")
        else:
            lines.append(f"| {name} | {dt:.1f} | {d:.4f} | **{dt / t_mk:.1f}×** |")
    lines += ["", "medkern's time per stage (affine levels, then field levels, then the final "
              "exponentials):", "", "| stage | time (s) |", "|---|---|"]
    lines += [f"| {name} | {dt:.2f} |" for name, dt in stages]
    # The hand-written "## Notes" section of an earlier report (history, analysis) is kept.
    notes = ""
    if args.out.exists():
        old = args.out.read_text()
        if "\n## Notes" in old:
            notes = "\n" + old[old.index("\n## Notes") + 1:]
    args.out.write_text("\n".join(lines) + "\n" + notes)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
