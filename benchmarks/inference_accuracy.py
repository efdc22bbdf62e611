"""Accuracy guard of INT8: Dice of the shipped models' FP32 and INT8 (mk.inference.quantize)
predictions against the truth on their validation cases, and the time of each ``predict``.

    python benchmarks/inference_accuracy.py [--cases 4]

* ``sarcoma-ct`` and ``sarcoma-petct``: IBSI soft-tissue-sarcoma patients held out by
  ``models/train_sarcoma_ct.py`` (CT, PET resampled onto the CT as
  ``models/train_sarcoma_petct.py`` reads them; truth ``CT_mask``), calibrated on patients
  training used.
* ``brain-lesion``: simulated patients of ``models/evaluate_brain_lesion.py`` (its evaluation
  seeds; truth the simulator's lesion map), calibrated on its tuning seeds.

Times: FP32 and INT8 ``predict`` alternating on the same case, median of 3.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import medkern as mk

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("MEDKERN_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
STS = SHARED / "ibsi" / "ibsi_validation" / "nifti"
HELD_OUT = ["STS_004", "STS_007", "STS_009", "STS_011", "STS_016", "STS_017", "STS_020", "STS_029"]
CALIBRATION = ["STS_001", "STS_002", "STS_003", "STS_005"]


def sts_case(patient: str, channels: int) -> tuple[tuple[mk.Image, ...], np.ndarray]:
    ct = mk.read(STS / patient / "CT_image.nii.gz")
    truth = np.asarray(mk.read(STS / patient / "CT_mask.nii.gz").array) > 0
    if channels == 1:
        return (ct,), truth
    return (ct, mk.resample_to(mk.read(STS / patient / "PET_image.nii.gz"), ct)), truth


def brain_cases(seeds: list[int]) -> list[tuple[tuple[mk.Image, ...], np.ndarray]]:
    from medkern.analysis.location import mni_template
    from medkern.phantoms import ACQUISITIONS, simulate_brain_metastases

    template = mni_template()
    out = []
    for n, seed in enumerate(seeds):
        case = simulate_brain_metastases(template, seed, acquisition=list(ACQUISITIONS)[n % len(ACQUISITIONS)])
        out.append(((case.image,), np.asarray(case.lesions.array) > 0))
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total


def evaluate(name: str, calibration: list, cases: list, folder: Path) -> None:
    fp32 = mk.models.load(name)
    t0 = time.perf_counter()
    path = mk.inference.quantize(mk.models.path(name), [c[0] if len(c) == 1 else c for c, _ in calibration],
                                 folder / f"{name}-int8.onnx", patches_per_image=8)
    t_quant = time.perf_counter() - t0
    int8 = mk.Model(path)
    changes, t32, t8 = [], [], []
    for n, (images, truth) in enumerate(cases):
        d = {}
        for tag, model in (("fp32", fp32), ("int8", int8)):
            d[tag] = dice(np.asarray(model.predict(*images).labels.array) > 0, truth)
        for _ in range(3):
            for model, times in ((fp32, t32), (int8, t8)):
                t0 = time.perf_counter()
                model.predict(*images)
                times.append(time.perf_counter() - t0)
        changes.append(d["int8"] - d["fp32"])
        print(f"| {name} | case {n} | {d['fp32']:.4f} | {d['int8']:.4f} | {changes[-1]:+.4f} |", flush=True)
    print(f"| {name} | **all {len(cases)}** | mean change {np.mean(changes):+.4f} | max abs change "
          f"{np.max(np.abs(changes)):.4f} | predict FP32 {np.median(t32):.2f} s, INT8 {np.median(t8):.2f} s "
          f"(quantize {t_quant:.0f} s) |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("models", nargs="*", default=["sarcoma-ct", "sarcoma-petct", "brain-lesion"])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="medkern_int8_"))
    print("| model | case | Dice FP32 | Dice INT8 | change |\n|---|---|---|---|---|")
    for name in args.models:
        if name.startswith("sarcoma"):
            if not STS.is_dir():
                print(f"{name}: no IBSI data at {STS}", file=sys.stderr)
                continue
            channels = 1 if name == "sarcoma-ct" else 2
            calibration = [sts_case(p, channels) for p in CALIBRATION]
            cases = [sts_case(p, channels) for p in HELD_OUT[:args.cases]]
        else:
            calibration = brain_cases([4_000_000 + n for n in range(4)])
            cases = brain_cases([5_000_000 + n for n in range(args.cases)])
        evaluate(name, calibration, cases, folder)


if __name__ == "__main__":
    main()
