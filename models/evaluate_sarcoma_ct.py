"""Evaluate a `sarcoma-ct` model on the held-out patients the way users run it.

`mk.Model(path).predict(ct)` on the original CT grid, with the model's declared post-processing,
against the `GTV_Mass` mask: Dice, maximum 3D tumour diameter (`mk.regions`, IBSI "maximum 3D
diameter") and the AJCC 8th T category read from it by the shipped sarcoma-extremity guideline.

    python models/evaluate_sarcoma_ct.py                          # the shipped model
    python models/evaluate_sarcoma_ct.py --model candidate.onnx   # a candidate, before it ships
"""

from __future__ import annotations

import argparse
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from _common import REPO, SHIPPED, dice

GUIDELINE = REPO / "python" / "medkern" / "analysis" / "guidelines" / "sarcoma-extremity.yaml"


@lru_cache(maxsize=1)
def _t_cases() -> list[tuple[str, str, float]]:
    """(T category, comparison, limit in mm) in the guideline's order: the AJCC rule has one home,
    the guideline that `mk.analyze` applies."""
    import yaml

    document = yaml.safe_load(GUIDELINE.read_text())
    rule = next(d for d in document["derived"] if d["id"] == "t_category")
    cases = []
    for case in rule["cases"]:
        when = case["when"]
        if when.get("field") != "findings.max_diameter_mm":
            raise ValueError(f"{GUIDELINE}: t_category case {case['value']} is not on the maximum diameter")
        (op, limit), = ((k, v) for k, v in when.items() if k != "field")
        cases.append((case["value"], op, float(limit)))
    return cases


def t_category(max_diameter_mm: float | None) -> str | None:
    """AJCC 8th T category (trunk and extremities, chapter 41) of a maximum tumour dimension;
    None when there is no tumour to measure."""
    if max_diameter_mm is None:
        return None
    compare = {"le": np.less_equal, "lt": np.less, "gt": np.greater, "ge": np.greater_equal}
    for value, op, limit in _t_cases():
        if compare[op](max_diameter_mm, limit):
            return value
    raise ValueError(f"no T category in {GUIDELINE} covers {max_diameter_mm} mm")


def max_diameter_mm(labels: Any) -> float | None:
    import medkern as mk

    regions = mk.regions(labels)
    return float(regions[0].max_diameter_mm) if regions else None


def evaluate(model_path: Path, patients: list[str], data: Path) -> dict[str, Any]:
    """Per-patient and summary figures of the model at ``model_path`` on ``patients``."""
    import medkern as mk

    model = mk.Model(model_path)
    rows = {}
    for patient in patients:
        ct = mk.read(data / patient / "CT_image.nii.gz")
        truth = mk.read(data / patient / "CT_mask.nii.gz")
        mask = truth.array > 0
        pred = model.predict(ct).labels
        predicted = pred.array == 1
        true_d = max_diameter_mm(mk.Image(mask, spacing=truth.spacing, origin=truth.origin,
                                          direction=truth.direction))
        pred_d = max_diameter_mm(mk.Image(predicted, spacing=pred.spacing, origin=pred.origin,
                                          direction=pred.direction)) if predicted.any() else None
        rows[patient] = {
            "dice": round(dice(predicted, mask), 4),
            "max_diameter_mm": None if pred_d is None else round(pred_d, 1),
            "true_max_diameter_mm": round(true_d, 1),
            # A missed tumour has no diameter: it is undersized by the whole true diameter (+ 0.0: no -0.0).
            "diameter_error_mm": round(-true_d if pred_d is None else pred_d - true_d, 1) + 0.0,
            "t": t_category(pred_d), "true_t": t_category(true_d),
        }
        print(patient, rows[patient], flush=True)
    return {"per_patient": rows, **summary(rows)}


def summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    dices = [r["dice"] for r in rows.values()]
    errors = [r["diameter_error_mm"] for r in rows.values()]
    return {"patients": len(rows),
            "dice_median": round(float(np.median(dices)), 4),
            "dice_min": round(float(np.min(dices)), 4),
            "diameter_abs_error_median_mm": round(float(np.median(np.abs(errors))), 1),
            "diameter_error_median_mm": round(float(np.median(errors)), 1),
            "t_agreement": round(float(np.mean([r["t"] == r["true_t"] for r in rows.values()])), 4)}


def markdown_table(result: dict[str, Any]) -> str:
    lines = ["| patient | Dice | max diameter (mm) | GTV max diameter (mm) | error (mm) | T | GTV T |",
             "|---|---|---|---|---|---|---|"]
    for patient, r in result["per_patient"].items():
        predicted = "none" if r["max_diameter_mm"] is None else f"{r['max_diameter_mm']:.1f}"
        lines.append(f"| {patient} | {r['dice']:.3f} | {predicted} | {r['true_max_diameter_mm']:.1f} | "
                     f"{r['diameter_error_mm']:+.1f} | {r['t'] or 'none'} | {r['true_t']} |")
    return "\n".join(lines)


def main() -> None:
    from train_sarcoma_ct import DATA, HELD_OUT, NAME

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SHIPPED / f"{NAME}.onnx", help="ONNX file to evaluate")
    args = parser.parse_args()
    result = evaluate(args.model, HELD_OUT, DATA)
    print(markdown_table(result))
    print(json.dumps({k: v for k, v in result.items() if k != "per_patient"}, indent=1))


if __name__ == "__main__":
    main()
