"""Validate ``mk.analyze`` on the real soft-tissue-sarcoma patients of the IBSI data.

For every patient with a CT and a ``GTV_Mass`` mask (45 as NIfTI; the 4 DICOM studies with their
RTSTRUCT as well), ``mk.analyze`` runs with the shipped ``sarcoma-ct`` model and the
``sarcoma-extremity`` guideline; its maximum 3D tumour diameter and AJCC T category are compared
with those of the ground-truth mask, the T category of the mask coming from the same guideline
rules. Patients the shipped model was trained on are reported apart from held-out ones.

    python docs/validate_sts.py [--data ../shared/data] [--out docs/validation_sts.md]

Data: Vallieres et al., Phys. Med. Biol. 60 (2015) 5471 (TCIA, CC BY 3.0), as published by the
IBSI (Zwanenburg et al., Radiology 295 (2020) 328).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import medkern as mk
from medkern.analysis.guideline import load_guideline

HERE = Path(__file__).resolve().parent
# The shipped model's training patients: every patient with a CT in the first data release that
# is not among its 8 validation patients (models/train_sarcoma_ct.py).
sys.path.insert(0, str(HERE.parent / "models"))


def training_patients(nifti: Path) -> set[str]:
    from train_sarcoma_ct import VALIDATION

    added = {"STS_007", "STS_009", "STS_011", "STS_013", "STS_016", "STS_017", "STS_020", "STS_021",
             "STS_027", "STS_030", "STS_037", "STS_039", "STS_045"}   # CTs added later (data README)
    return {p.name for p in nifti.iterdir() if p.name not in added and p.name not in VALIDATION}


def derived(result: dict, name: str) -> str | None:
    for item in result["derived"]:
        if item["id"] == name:
            return str(item["value"])
    return None


def truth_t(rules, mask: mk.Image) -> tuple[float, str | None]:
    r = mk.regions(mask.with_array((np.asarray(mask.array) > 0).astype(np.uint8)))[0]
    facts = {"patient": {}, "findings": {"lesion_count": 1, "total_volume_cm3": r.volume_mm3 / 1000,
                                         "max_diameter_mm": r.max_diameter_mm,
                                         "lesions": [{"id": 1, "max_diameter_mm": r.max_diameter_mm,
                                                      "axial_diameter_mm": r.axial_diameter_mm,
                                                      "volume_cm3": r.volume_mm3 / 1000, "location": None}]}}
    return r.max_diameter_mm, derived(rules.evaluate(facts).to_dict(), "t_category")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = os.environ.get("MEDKERN_SHARED_DATA", str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--data", default=shared)
    ap.add_argument("--out", default=str(HERE / "validation_sts.md"))
    args = ap.parse_args()
    root = Path(args.data) / "ibsi" / "ibsi_validation"
    rules = load_guideline("sarcoma-extremity")
    trained = training_patients(root / "nifti")
    rows = []
    for patient in sorted(p.name for p in (root / "nifti").iterdir()):
        study = mk.read(root / "nifti" / patient / "CT_image.nii.gz")
        d_true, t_true = truth_t(rules, mk.read(root / "nifti" / patient / "CT_mask.nii.gz"))
        start = time.perf_counter()
        report = mk.analyze({"CT": study}, model="sarcoma-ct", guideline="sarcoma-extremity", location=False,
                            radiomics=False).to_dict()
        seconds = time.perf_counter() - start
        d = report["findings"]["max_diameter_mm"]
        t = derived(report["guideline"], "t_category")
        rows.append({"patient": patient, "source": "NIfTI", "trained": patient in trained, "found": d is not None,
                     "d_true": d_true, "d": d, "t_true": t_true, "t": t, "seconds": seconds})
        print(json.dumps(rows[-1]), flush=True)
    for patient in sorted(p.name for p in (root / "dicom").iterdir()):
        ct_dir = root / "dicom" / patient / "CT"
        rs = next((ct_dir / "mask").glob("*.dcm"))
        rois = mk.read_rtstruct(rs, ct_dir / "image")
        mask = next(m for name, m in rois.items() if name.startswith("GTV_Mass"))   # "GTV_Mass_CT"
        d_true, t_true = truth_t(rules, mask)
        report = mk.analyze(ct_dir / "image", model="sarcoma-ct", guideline="sarcoma-extremity",
                            radiomics=False).to_dict()
        d = report["findings"]["max_diameter_mm"]
        rows.append({"patient": patient, "source": "DICOM+RTSTRUCT", "trained": patient in trained,
                     "found": d is not None, "d_true": d_true, "d": d, "t_true": t_true,
                     "t": derived(report["guideline"], "t_category"), "seconds": None})
        print(json.dumps(rows[-1]), flush=True)
    write_table(rows, Path(args.out))


def summary(rows: list[dict]) -> str:
    if not rows:
        return "| – | – | – | – | – |"
    err = [abs(r["d"] - r["d_true"]) for r in rows if r["found"]]
    found = sum(r["found"] for r in rows)
    agree = sum(r["t"] == r["t_true"] for r in rows)
    return (f"| {len(rows)} | {found}/{len(rows)} | {np.median(err):.1f} mm (IQR {np.percentile(err, 25):.1f}–"
            f"{np.percentile(err, 75):.1f}) | {agree}/{len(rows)} ({100 * agree / len(rows):.0f} %) |")


def write_table(rows: list[dict], out: Path) -> None:
    nifti = [r for r in rows if r["source"] == "NIfTI"]
    lines = ["# `mk.analyze` on the IBSI soft-tissue-sarcoma patients", "",
             "Written by `python docs/validate_sts.py`: shipped `sarcoma-ct` model, `sarcoma-extremity` "
             "guideline, maximum 3D tumour diameter and AJCC 8th T category (T from the maximum tumour "
             "dimension) of the analysis against those of the `GTV_Mass` ground-truth mask, the mask's T "
             "from the same guideline rules. Targets: median absolute diameter error ≤ 5 mm, T agreement "
             "≥ 90 %.", "",
             "| patients | n | tumour found | median abs. diameter error | T category agrees |",
             "|---|---|---|---|---|",
             "| held out (never seen in training), NIfTI " + summary([r for r in nifti if not r["trained"]]),
             "| training patients, NIfTI " + summary([r for r in nifti if r["trained"]]),
             "| all 45, NIfTI " + summary(nifti),
             "| DICOM + RTSTRUCT (STS_001–004) " + summary([r for r in rows if r["source"] != "NIfTI"]), "",
             f"Median analysis time per NIfTI study: {np.median([r['seconds'] for r in nifti]):.1f} s (2 cores, "
             "location and radiomics off).", "",
             "| patient | source | training patient | GT diameter mm | found mm | GT T | found T |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        found = f"{r['d']:.1f}" if r["found"] else "not found"
        lines.append(f"| {r['patient']} | {r['source']} | {'yes' if r['trained'] else 'no'} | {r['d_true']:.1f} | "
                     f"{found} | {r['t_true']} | {r['t'] or '–'} |")
    from medkern.io._atomic import atomic_path

    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
