"""Validate ``mk.analyze`` on the real soft-tissue-sarcoma patients of the IBSI data.

For every patient with a CT and a ``GTV_Mass`` mask (45 as NIfTI; the 4 DICOM studies with their
RTSTRUCT as well), ``mk.analyze`` runs with the ``sarcoma-extremity`` guideline and the fold model
of the shipped sarcoma model that never saw the patient (the 5-fold cross-validation of
``models/sarcoma.py``; the shipped model itself is trained on all 45, so no patient is held out
from it). Its maximum 3D tumour diameter and AJCC T category are compared with those of the
ground-truth mask, the T category of the mask coming from the same guideline rules.

    python models/train_sarcoma_petct.py --fold 0 ... --fold 4     # the fold models, once
    python docs/validate_sts.py [--model sarcoma-petct] [--data ../shared/data] [--out docs/validation_sts.md]

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
sys.path.insert(0, str(HERE.parent / "models"))


def fold_model(name: str, patient: str) -> Path:
    """The fold model of ``name`` that never saw ``patient``."""
    from sarcoma import folds

    fold = next(k for k, ids in enumerate(folds()) if patient in ids)
    path = HERE.parent / "build" / name / f"{name}-fold{fold}.onnx"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: train it with python models/train_{name.replace('-', '_')}.py "
                         f"--fold {fold}")
    return path


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
    ap.add_argument("--model", default="sarcoma-petct", choices=["sarcoma-petct", "sarcoma-ct"])
    ap.add_argument("--out", default=str(HERE / "validation_sts.md"))
    args = ap.parse_args()
    root = Path(args.data) / "ibsi" / "ibsi_validation"
    rules = load_guideline("sarcoma-extremity")
    with_pet = args.model == "sarcoma-petct"
    rows = []
    for patient in sorted(p.name for p in (root / "nifti").iterdir()):
        folder = root / "nifti" / patient
        study = {"CT": mk.read(folder / "CT_image.nii.gz")}
        if with_pet:
            study["PT"] = mk.read(folder / "PET_image.nii.gz")   # on its own grid, same frame (IBSI)
        d_true, t_true = truth_t(rules, mk.read(folder / "CT_mask.nii.gz"))
        start = time.perf_counter()
        report = mk.analyze(study, model=fold_model(args.model, patient), guideline="sarcoma-extremity",
                            location=False, radiomics=False, same_frame=with_pet).to_dict()
        seconds = time.perf_counter() - start
        d = report["findings"]["max_diameter_mm"]
        rows.append({"patient": patient, "source": "NIfTI", "found": d is not None, "d_true": d_true, "d": d,
                     "t_true": t_true, "t": derived(report["guideline"], "t_category"), "seconds": seconds})
        print(json.dumps(rows[-1]), flush=True)
    for patient in sorted(p.name for p in (root / "dicom").iterdir()):
        ct_dir = root / "dicom" / patient / "CT"
        rs = next((ct_dir / "mask").glob("*.dcm"))
        rois = mk.read_rtstruct(rs, ct_dir / "image")
        mask = next(m for name, m in rois.items() if name.startswith("GTV_Mass"))   # "GTV_Mass_CT"
        d_true, t_true = truth_t(rules, mask)
        # the whole study: CT and PET series (FrameOfReferenceUIDs compared), PET in SUVbw
        report = mk.analyze(root / "dicom" / patient if with_pet else ct_dir / "image",
                            model=fold_model(args.model, patient), guideline="sarcoma-extremity",
                            radiomics=False).to_dict()
        d = report["findings"]["max_diameter_mm"]
        rows.append({"patient": patient, "source": "DICOM+RTSTRUCT", "found": d is not None, "d_true": d_true,
                     "d": d, "t_true": t_true, "t": derived(report["guideline"], "t_category"), "seconds": None})
        print(json.dumps(rows[-1]), flush=True)
    write_table(rows, Path(args.out), args.model)


def summary(rows: list[dict]) -> str:
    if not rows:
        return "| – | – | – | – | – |"
    err = [abs(r["d"] - r["d_true"]) for r in rows if r["found"]]
    found = sum(r["found"] for r in rows)
    agree = sum(r["t"] == r["t_true"] for r in rows)
    return (f"| {len(rows)} | {found}/{len(rows)} | {np.median(err):.1f} mm (IQR {np.percentile(err, 25):.1f}–"
            f"{np.percentile(err, 75):.1f}) | {agree}/{len(rows)} ({100 * agree / len(rows):.0f} %) |")


def write_table(rows: list[dict], out: Path, model: str) -> None:
    nifti = [r for r in rows if r["source"] == "NIfTI"]
    inputs = "CT + PET" if model == "sarcoma-petct" else "CT"
    lines = ["# `mk.analyze` on the IBSI soft-tissue-sarcoma patients", "",
             f"Written by `python docs/validate_sts.py --model {model}`: `mk.analyze` ({inputs}) with the "
             f"`{model}` fold model that never saw the patient (5-fold cross-validation by patient, "
             "`models/sarcoma.py`), `sarcoma-extremity` guideline, maximum 3D tumour diameter and AJCC 8th T "
             "category (T from the maximum tumour dimension) of the analysis against those of the `GTV_Mass` "
             "ground-truth mask, the mask's T from the same guideline rules. Targets: median absolute diameter "
             "error ≤ 5 mm, T agreement ≥ 90 %.", "",
             "| patients | n | tumour found | median abs. diameter error | T category agrees |",
             "|---|---|---|---|---|",
             "| all 45, NIfTI, each by the fold model that never saw it " + summary(nifti),
             "| DICOM + RTSTRUCT (STS_001–004) " + summary([r for r in rows if r["source"] != "NIfTI"]), "",
             f"Median analysis time per NIfTI study: {np.median([r['seconds'] for r in nifti]):.1f} s (2 cores, "
             "location and radiomics off).", "",
             "| patient | source | GT diameter mm | found mm | GT T | found T |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        found = f"{r['d']:.1f}" if r["found"] else "not found"
        lines.append(f"| {r['patient']} | {r['source']} | {r['d_true']:.1f} | {found} | {r['t_true']} | "
                     f"{r['t'] or '–'} |")
    from medkern.io._atomic import atomic_path

    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
