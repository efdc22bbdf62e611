"""``medkern demo``: the main job, end to end, on data that ships with medkern's dependencies.

A simulated brain-metastasis patient: the MNI152 2009a T1 template (shipped inside nilearn)
becomes a contrast-enhanced T1 study with lesions of known size and position
(:mod:`medkern.phantoms`, the simulator the shipped ``brain-lesion`` model was validated on, with a
seed it never saw in training). It is written as a real DICOM series together with the patient's
clinical context (symptoms, ECOG), then ``mk.analyze`` reads the DICOM folder, runs
``brain-lesion`` and the ``brain-metastases`` guideline and writes the report, the segmentation
(NIfTI and DICOM SEG) and the DICOM SR measurement report. Last, the findings are scored against
the inserted truth.

Simulated data, a model trained on simulated lesions: a demonstration, not a diagnosis.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEMO_ACQUISITION", "DEMO_DIAMETERS_MM", "DEMO_PATIENT", "run_demo"]

# One lesion at the 10 mm RECIST measurability limit, one below it, one in the SRS 24 Gy class.
DEMO_DIAMETERS_MM = (6.0, 10.0, 16.0)
# A 3 T 3D T1 with 1 mm voxels: the sequence brain-metastasis protocols ask for (consensus
# recommendations, Kaufmann et al., Neuro-Oncology 22 (2020) 757).
DEMO_ACQUISITION = "3T-3D-1mm"
DEMO_PATIENT = {
    "schema_version": 1,
    "age": 63,
    "sex": "female",
    "ecog": 1,
    "symptoms": ["headache"],
    "symptoms_free_text": "two weeks of morning headaches, no focal deficit (simulated patient)",
    "histology": "adenocarcinoma",
    "primary_site": "nsclc",
    "extracranial_disease": "stable",
}


def _match(findings: list[dict[str, Any]], truth: list[Any]) -> dict[str, Any]:
    """Pair each inserted lesion with the finding whose centroid lies within its radius + 2 mm."""
    rows, used = [], set()
    for n, t in enumerate(truth):
        centre = np.asarray(t.centre_lps, float)
        best = None
        for les in findings:
            d = float(np.linalg.norm(np.asarray(les["centroid_lps_mm"]) - centre))
            if les["id"] not in used and d <= t.diameter_mm / 2 + 2.0 and (best is None or d < best[1]):
                best = (les, d)
        row = {"inserted": n + 1, "diameter_mm": round(float(t.diameter_mm), 1),
               "volume_mm3": round(float(t.volume_mm3), 1),
               "centre_lps_mm": [round(float(c), 1) for c in centre], "found_lesion": None}
        if best is not None:
            les, d = best
            used.add(les["id"])
            row.update(found_lesion=les["id"], found_max_diameter_mm=les["max_diameter_mm"],
                       found_volume_mm3=les["volume_mm3"], centroid_distance_mm=round(d, 2),
                       diameter_error_mm=round(les["max_diameter_mm"] - float(t.diameter_mm), 2))
        rows.append(row)
    return {"inserted": rows,
            "sensitivity": round(sum(r["found_lesion"] is not None for r in rows) / max(len(rows), 1), 3),
            "false_lesions": [les["id"] for les in findings if les["id"] not in used]}


def run_demo(out_dir: str | Path = "medkern-demo", seed: int = 0, progress: bool = False) -> Any:
    """Simulate the study, analyse it, write everything to ``out_dir``; returns the Report.

    ``out_dir`` receives ``study/`` (the DICOM series), ``patient.json``, ``report/`` (what
    ``Report.write`` writes) and ``truth.json`` (the inserted lesions and how they were found).
    """
    import medkern as mk
    from medkern.analysis.location import mni_template
    from medkern.io._atomic import atomic_path
    from medkern.io.dicom_write import write_dicom_series
    from medkern.phantoms import simulate_brain_metastases

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    case = simulate_brain_metastases(mni_template(), seed, diameters_mm=DEMO_DIAMETERS_MM,
                                     acquisition=DEMO_ACQUISITION)
    study = out / "study"
    write_dicom_series(case.image, study, modality="MR", overwrite=True,
                       series_description="T1 post-contrast, simulated (medkern demo)",
                       patient={"PatientName": "Demo^Simulated", "PatientID": f"MEDKERN-DEMO-{seed}"})
    with atomic_path(out / "patient.json") as tmp:
        tmp.write_text(json.dumps(DEMO_PATIENT, indent=2))
    report = mk.analyze(study, patient=out / "patient.json", model="brain-lesion",
                        guideline="brain-metastases", out_dir=out / "report", progress=progress)
    score = _match(report.findings["lesions"], case.truth)
    score["note"] = "simulated patient (medkern.phantoms, seed %d): research demonstration only" % seed
    with atomic_path(out / "truth.json") as tmp:
        tmp.write_text(json.dumps(score, indent=2))
    return report
