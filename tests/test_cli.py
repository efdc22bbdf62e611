"""The command line: ``medkern info`` and ``medkern convert`` in-process and as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import medkern as mk
from medkern.cli import main

from _helpers import write_dicom_slices, write_dicom_volume

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def series_dir(tmp_path, rng) -> Path:
    array = rng.integers(-1000, 2000, size=(5, 9, 7)).astype(np.int16)
    write_dicom_volume(tmp_path / "ct", array, (2.5, 0.8, 0.7), (-30.0, 12.5, 100.0), np.eye(3)[:, ::-1],
                               series_uid="1.2.3.4", intercept=-24, bits_stored=12)
    return tmp_path / "ct"


def test_info_json_lists_series_with_geometry(series_dir, capsys):
    assert main(["info", str(series_dir), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry == mk.list_dicom_series(series_dir)[0].summary()
    assert entry["series_uid"] == "1.2.3.4" and entry["shape"] == [5, 9, 7] and entry["dtype"] == "int16"
    assert entry["spacing"] == [2.5, 0.8, 0.7] and entry["origin"] == [-30.0, 12.5, 100.0]


def test_info_text_and_nifti_file(series_dir, tmp_path, capsys):
    assert main(["info", str(series_dir)]) == 0
    out = capsys.readouterr().out
    assert "series_uid: 1.2.3.4" in out and "spacing: [2.5, 0.8, 0.7]" in out
    mk.write(mk.read(series_dir), tmp_path / "v.nii.gz")
    assert main(["info", str(tmp_path / "v.nii.gz"), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["shape"] == [5, 9, 7] and entry["spacing"] == pytest.approx([2.5, 0.8, 0.7])


def test_info_on_ibsi_patient(shared_data, capsys):
    patient = shared_data / "ibsi" / "ibsi_validation" / "dicom" / "STS_001"
    assert main(["info", str(patient), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert sorted(e["modality"] for e in entries) == ["CT", "MR", "PT"]
    ct = next(e for e in entries if e["modality"] == "CT")
    assert ct["shape"] == [59, 202, 198] and ct["spacing"] == pytest.approx([3.27, 0.976562, 0.976562], abs=1e-5)


def test_convert_round_trip(series_dir, tmp_path, capsys):
    out = tmp_path / "ct.nii.gz"
    assert main(["convert", str(series_dir), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    img, back = mk.read(series_dir), mk.read(out)
    np.testing.assert_array_equal(back.array, img.array)
    # NIfTI-1 keeps the affine in float32.
    np.testing.assert_allclose(back.affine, img.affine, rtol=0, atol=1e-4)


def test_convert_errors_leave_no_file(series_dir, tmp_path, rng, capsys):
    other = rng.integers(0, 10, size=(2, 4, 4)).astype(np.int16)
    write_dicom_slices(series_dir, list(other), [(0, 0, 0), (0, 0, 1)], series_uid="1.2.3.5")
    out = tmp_path / "x.nii.gz"
    assert main(["convert", str(series_dir), str(out)]) == 1
    assert "holds 2 image series; pass series_uid" in capsys.readouterr().err and not out.exists()
    assert main(["convert", str(series_dir), str(out), "--series-uid", "1.2.3.5"]) == 0
    np.testing.assert_array_equal(mk.read(out).array, other)
    assert main(["convert", str(series_dir), str(tmp_path / "x.vtk"), "--series-uid", "1.2.3.5"]) == 1
    assert "unsupported output format '.vtk'" in capsys.readouterr().err


def test_convert_irregular_needs_the_flag(tmp_path, rng, capsys):
    stored = rng.integers(0, 100, size=(4, 5, 5)).astype(np.int16)
    write_dicom_slices(tmp_path / "gap", list(stored), [(0, 0, z) for z in (0, 1, 2, 4)])
    out = tmp_path / "gap.nii"
    assert main(["convert", str(tmp_path / "gap"), str(out)]) == 1
    assert "missing slice" in capsys.readouterr().err and not out.exists()
    assert main(["convert", str(tmp_path / "gap"), str(out), "--allow-irregular"]) == 0
    assert mk.read(out).shape == (5, 5, 5)


def test_module_runs_as_a_subprocess(series_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO / "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "medkern.cli", "info", "--json", str(series_dir)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["series_uid"] == "1.2.3.4"
    done = subprocess.run([sys.executable, "-m", "medkern.cli", "info", str(series_dir / "absent")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and "no such file or directory" in done.stderr


def test_analyze_writes_the_report(shared_data, tmp_path, capsys):
    study = shared_data / "ibsi" / "ibsi_validation" / "dicom" / "STS_003" / "CT" / "image"
    patient = tmp_path / "patient.json"
    patient.write_text(json.dumps({"schema_version": 1, "grade": "G2", "n_status": "N0", "m_status": "M0"}))
    out = tmp_path / "out"
    assert main(["analyze", str(study), "--patient", str(patient), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "report.json").read_text())
    assert printed["model"]["name"] == "sarcoma-ct" and printed["guideline"]["name"] == "sarcoma-extremity"
    stage = next(item for item in printed["guideline"]["derived"] if item["id"] == "stage")
    assert stage["inputs"]["patient.grade"] == "G2"
    assert main(["analyze", str(study), "--guideline", "none", "--out", str(tmp_path / "plain")]) == 0
    text = capsys.readouterr().out
    assert "sarcoma-ct" in text and "not a medical device" in text and "report.html" in text


def test_analyze_errors_are_clear_and_leave_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["analyze", str(empty), "--out", str(tmp_path / "out")]) == 1
    assert "no DICOM image series" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_guidelines_lists_the_shipped_ones(capsys):
    assert main(["guidelines", "--json"]) == 0
    names = {g["name"] for g in json.loads(capsys.readouterr().out)}
    assert {"sarcoma-extremity", "brain-metastases"} <= names
    assert main(["guidelines"]) == 0
    assert "brain-metastases" in capsys.readouterr().out
