"""What the sarcoma models are measured by (models/sarcoma.py): maximum 3D tumour diameter
(`mk.regions`, IBSI "maximum 3D diameter"), the AJCC 8th T category read from it by the shipped
sarcoma-extremity guideline, and the cross-validation summary and table."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from _common import REPO

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
