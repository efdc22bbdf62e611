"""``medkern demo``: the whole pipeline on data that ships with medkern's dependencies.

A simulated brain-metastasis follow-up: the MNI152 2009a T1 template (shipped inside nilearn)
becomes a "patient" with enhancing lesions of known size and position, a smooth multiplicative
bias field and noise, stored as NIfTI. medkern then reads it back, corrects the bias field (N4),
runs the shipped ``brain-lesion`` ONNX model, cleans and labels its output, measures every lesion
(volume, diameters, LPS centroid, intensity) and scores the findings against the known truth.

Simulated data, a model trained on simulated lesions: a demonstration, not a diagnosis.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

import medkern as mk

__all__ = ["mni152_t1", "simulate_patient", "run_demo"]

# (radius mm, contrast) of the inserted lesions: one below the RECIST 10 mm measurability limit.
LESIONS = ((3.0, 1.9), (5.0, 1.8), (8.0, 1.7))


def mni152_t1() -> mk.Image:
    """The 1 mm MNI152 2009a symmetric T1 template, skull-stripped, read offline by nilearn."""
    try:
        from nilearn.datasets import load_mni152_template
    except ImportError as exc:
        raise RuntimeError("medkern demo needs the MNI152 template shipped with nilearn: "
                           "pip install 'medkern[demo]'") from exc
    return mk.Image.from_nibabel(load_mni152_template(resolution=1))


@dataclass
class TrueLesion:
    centre_index: tuple[float, ...]
    centre_lps: tuple[float, ...]
    radius_mm: float


def simulate_patient(template: mk.Image, seed: int = 0) -> tuple[mk.Image, mk.Image, list[TrueLesion]]:
    """Template -> (patient T1, brain mask, inserted lesions), reproducible by ``seed``.

    Lesion centres are drawn among brain voxels at least 12 mm from the brain surface (exact
    distance transform in mm) and 25 mm apart; each lesion is a soft-edged ball whose intensity is
    raised by its contrast factor, as the ``brain-lesion`` model's training cases are.
    """
    rng = np.random.default_rng(seed)
    t1 = np.asarray(template.array, dtype=np.float32)
    brain = t1 > 0.1 * float(t1.max())
    brain_img = template.with_array(brain.astype(np.uint8))
    depth = np.asarray(mk.distance_transform(brain_img).array)
    candidates = np.argwhere(depth >= 12.0)
    spacing = np.asarray(template.spacing)
    grid = np.indices(t1.shape, dtype=np.float32)
    lesions: list[TrueLesion] = []
    out = t1.copy()
    while len(lesions) < len(LESIONS):
        centre = candidates[rng.integers(len(candidates))].astype(np.float64)
        if any(np.linalg.norm((centre - np.asarray(les.centre_index)) * spacing) < 25 for les in lesions):
            continue
        radius, contrast = LESIONS[len(lesions)]
        dist = np.sqrt(sum(((grid[a] - centre[a]) * spacing[a]) ** 2 for a in range(t1.ndim)))
        weight = np.clip(radius + 0.5 - dist, 0.0, 1.0)  # one-voxel soft edge: partial volume
        out *= 1.0 + (contrast - 1.0) * weight
        lesions.append(TrueLesion(tuple(centre), tuple(template.index_to_world(centre)), radius))
    # Skull-stripped T1 with a smooth multiplicative bias (+-15 % across the head) and Rician-like noise, as in MR.
    span = np.asarray(t1.shape, dtype=np.float32)
    bias = np.exp(0.15 * (2 * grid[0] / span[0] - 1) - 0.1 * (2 * grid[2] / span[2] - 1))
    out = out * bias
    noise = 0.02 * float(t1[brain].mean())
    out = np.hypot(out + rng.normal(0, noise, t1.shape), rng.normal(0, noise, t1.shape))
    out[~brain] = 0.0  # skull-stripped input, as the model expects: background exactly 0
    return template.with_array(out.astype(np.float32)), brain_img, lesions


def _steps(progress: bool) -> Callable[[str], Any]:
    """A context-free step timer that drives a progress bar when asked."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=7, desc="medkern demo", unit="step")
    times: dict[str, float] = {}
    last = [time.perf_counter()]

    def step(name: str) -> dict[str, float]:
        now = time.perf_counter()
        times[name] = round(now - last[0], 3)
        last[0] = now
        if bar is not None:
            bar.set_postfix_str(name)
            bar.update(1)
            if bar.n >= bar.total:
                bar.close()
        return times

    return step


def run_demo(out_dir: str | Path, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Run the demo pipeline, write its outputs to ``out_dir`` and return the report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    step = _steps(progress)
    patient, brain, truth = simulate_patient(mni152_t1(), seed=seed)
    mk.write(patient, out / "patient_t1.nii.gz")
    step("simulate patient")
    t1 = mk.read(out / "patient_t1.nii.gz")
    step("read NIfTI")
    corrected = mk.n4_bias_correction(t1, mask=brain, shrink_factor=4, iterations=(25, 25, 25))
    step("N4 bias correction")
    model = mk.models.load("brain-lesion")
    prediction = model.predict(corrected)
    step("brain-lesion model")
    lesion_mask = mk.remove_small_components(prediction.labels, min_volume_mm3=20.0)
    labels, n = mk.label(lesion_mask)
    step("clean and label")
    found = mk.regions(labels, corrected)
    step("measure")
    findings = []
    detected: dict[int, int] = {}
    for r in found:
        centre = np.asarray(r.centroid)
        nearest = min(truth, key=lambda t: np.linalg.norm(centre - t.centre_lps))
        hit = np.linalg.norm(centre - nearest.centre_lps) <= nearest.radius_mm + 2.0
        if hit:
            detected[truth.index(nearest)] = r.label
        findings.append({
            "label": r.label,
            "volume_mm3": round(float(r.volume_mm3), 1),
            "max_diameter_mm": round(float(r.max_diameter_mm), 1),
            "axial_diameter_mm": round(float(r.axial_diameter_mm), 1),
            "centroid_lps_mm": [round(float(c), 1) for c in r.centroid],
            "mean_intensity": round(float(r.intensity_mean), 2),
            "matches_inserted_lesion": bool(hit),
        })
    mk.write(labels, out / "lesions.nii.gz")
    report = {
        "input": str(out / "patient_t1.nii.gz"),
        "model": model.metadata.get("name", "brain-lesion"),
        "inserted_lesions": [
            {"radius_mm": t.radius_mm, "volume_mm3": round(4 / 3 * np.pi * t.radius_mm ** 3, 1),
             "centre_lps_mm": [round(float(c), 1) for c in t.centre_lps],
             "detected": i in detected, "found_label": detected.get(i)} for i, t in enumerate(truth)],
        "findings": findings,
        "sensitivity": round(len(detected) / len(truth), 3),
        "false_positive_components": sum(not f["matches_inserted_lesion"] for f in findings),
        "outputs": [str(out / "lesions.nii.gz"), str(out / "report.json")],
        "note": "simulated patient and a model trained on simulated lesions: research demonstration only",
    }
    report["seconds"] = step("write outputs")
    tmp = out / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out / "report.json")
    return report
