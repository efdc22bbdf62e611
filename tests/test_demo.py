"""The main job end to end: `medkern demo` on the simulated brain-metastasis study."""

from __future__ import annotations

import json

import numpy as np
import pytest

import medkern as mk
from medkern.cli import main

pytest.importorskip("nilearn", reason="the demo reads the MNI152 template shipped with nilearn")


def test_demo_finds_every_inserted_lesion(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # Seed 0 inserts lesions of 3, 5 and 8 mm radius; the shipped model finds all three.
    assert [les["detected"] for les in report["inserted_lesions"]] == [True, True, True]
    assert report["sensitivity"] == 1.0
    assert report["false_positive_components"] <= 6
    patient = mk.read(tmp_path / "patient_t1.nii.gz")
    lesions = mk.read(tmp_path / "lesions.nii.gz")
    assert lesions.same_geometry(patient, atol=1e-4)
    labels = np.unique(np.asarray(lesions.array))
    assert set(labels[labels > 0]) == {f["label"] for f in report["findings"]}
    for les in report["inserted_lesions"]:
        found = next(f for f in report["findings"] if f["label"] == les["found_label"])
        # The centroid of the finding lies within the inserted ball (LPS mm).
        assert np.linalg.norm(np.subtract(found["centroid_lps_mm"], les["centre_lps_mm"])) <= les["radius_mm"]
    assert json.loads((tmp_path / "report.json").read_text())["findings"] == report["findings"]


def test_demo_text_output(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "sensitivity" in out and "research demonstration only" in out
