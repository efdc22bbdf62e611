"""DICOM series writing: what medkern writes, medkern, SimpleITK (GDCM) and plain pydicom read back.

Tolerances: geometry 1e-4 mm / cosine (the project's DICOM parity bound; DS strings keep 10 or
more significant digits). Integer images exactly. Float images within RescaleSlope / 2, the
documented quantisation bound, decoded in float64 by pydicom; medkern returns float32, so its
values may differ by one more float32 rounding (half a float32 spacing of the largest value).
"""

from __future__ import annotations

import datetime
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import medkern as mk
from medkern.io import dicom_write
from medkern.io.dicom_write import write_dicom_series

from _helpers import random_direction, same_world_grid

pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

GEOMETRY_ATOL = 1e-4


def read_with_simpleitk(directory: Path) -> mk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(directory)))
    return mk.Image.from_sitk(reader.Execute())


def read_with_pydicom(files: list[Path]) -> mk.Image:
    """A reference reader written from PS3.3 C.7.6.2 alone: slices sorted along the normal of
    ImageOrientationPatient, the modality LUT applied in float64."""
    from pydicom.pixels import apply_modality_lut

    slices = [pydicom.dcmread(p) for p in files]
    row = np.asarray(slices[0].ImageOrientationPatient[:3], dtype=np.float64)
    col = np.asarray(slices[0].ImageOrientationPatient[3:], dtype=np.float64)
    normal = np.cross(row, col)
    slices.sort(key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=np.float64) @ normal))
    positions = np.asarray([ds.ImagePositionPatient for ds in slices], dtype=np.float64)
    along = positions @ normal
    spacing_k = (along[-1] - along[0]) / (len(slices) - 1) if len(slices) > 1 else float(slices[0].SpacingBetweenSlices)
    values = np.stack([apply_modality_lut(ds.pixel_array, ds).astype(np.float64) for ds in slices])
    return mk.Image(values, spacing=(spacing_k, *map(float, slices[0].PixelSpacing)), origin=positions[0],
                    direction=np.stack([normal, col, row], axis=1))


def assert_same_grid(ours: mk.Image, ref: mk.Image) -> None:
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.spacing, ref.spacing, rtol=0, atol=GEOMETRY_ATOL)
    np.testing.assert_allclose(ours.origin, ref.origin, rtol=0, atol=GEOMETRY_ATOL)
    np.testing.assert_allclose(ours.direction, ref.direction, rtol=0, atol=GEOMETRY_ATOL)


def rotation(rng, along_normal: bool) -> np.ndarray:
    """A random orthonormal direction whose slice axis is (or is not) row x column, the normal
    DICOM readers stack along; in array order [k, j, i] that is a determinant of -1."""
    q = random_direction(rng, flip=False)
    q[:, 0] *= -np.sign(np.linalg.det(q)) * (1 if along_normal else -1)
    return q


def grid(name: str, rng) -> dict:
    if name == "oblique":
        return {"spacing": (2.0, 0.8, 0.6), "origin": (-40.5, 12.25, 97.0), "direction": rotation(rng, True)}
    if name == "flipped":
        # Rows run towards -x, columns towards -y: both in-plane axes point the negative way.
        return {"spacing": (1.5, 0.9, 0.9), "origin": (100.0, 80.0, -20.0),
                "direction": np.array([[0.0, 0, -1], [0, -1, 0], [1, 0, 0]])}
    if name == "left-handed":
        # Slice axis against row x column: readers stack the other way (same world points).
        return {"spacing": (3.0, 0.7, 0.7), "origin": (5.0, -5.0, 30.0), "direction": rotation(rng, False)}
    return {"spacing": (4.5, 0.5, 1.25), "origin": (0.0, 0.0, 0.0), "direction": np.eye(3)[:, ::-1]}


def volume(dtype, rng, shape=(5, 9, 11)) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return (rng.normal(size=shape) * 500 + 100).astype(dtype)
    return rng.integers(-1000, 3000, size=shape).astype(dtype)


def quantum(files: list[Path]) -> float:
    return float(pydicom.dcmread(files[0], stop_before_pixels=True).RescaleSlope) / 2


# ---------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("name", ["oblique", "flipped", "left-handed", "anisotropic"])
def test_round_trip_through_three_readers(tmp_path, rng, name, dtype):
    img = mk.Image(volume(dtype, rng), **grid(name, rng))
    files = write_dicom_series(img, tmp_path / "series")
    assert [p.parent for p in files] == [tmp_path / "series"] * img.shape[0]
    readers = {"medkern": mk.read(tmp_path / "series"), "simpleitk": read_with_simpleitk(tmp_path / "series"),
               "pydicom": read_with_pydicom(files)}
    bound = quantum(files) if np.dtype(dtype).kind == "f" else 0.0
    if bound:
        assert 0 < bound < 500 * 8 / 65535  # the slope spans the value range in 16 bits
    for reader, back in readers.items():
        values, aligned = same_world_grid(img, back)
        assert_same_grid(aligned, img)
        # Readers stack slices along row x column: a left-handed volume comes back reversed.
        assert np.allclose(back.direction[:, 0], img.direction[:, 0] * (-1 if name == "left-handed" else 1))
        if bound == 0:
            np.testing.assert_array_equal(values, img.array, err_msg=reader)
        else:
            extra = float(np.spacing(np.float32(np.abs(img.array).max()))) if values.dtype == np.float32 else 1e-9
            assert np.abs(values.astype(np.float64) - img.array).max() <= bound + extra, reader


@pytest.mark.parametrize("modality,sop_class", [("MR", "1.2.840.10008.5.1.4.1.1.4"),
                                                ("CT", "1.2.840.10008.5.1.4.1.1.2"),
                                                ("OT", "1.2.840.10008.5.1.4.1.1.7")])
def test_modalities(tmp_path, rng, modality, sop_class):
    img = mk.Image(volume(np.int16, rng), **grid("oblique", rng))
    files = write_dicom_series(img, tmp_path / "s", modality=modality)
    ds = pydicom.dcmread(files[0])
    assert (ds.SOPClassUID, ds.file_meta.MediaStorageSOPClassUID, ds.Modality) == (sop_class, sop_class, modality)
    back = mk.read(tmp_path / "s")
    assert back.dtype == np.int16
    assert_same_grid(back, img)
    np.testing.assert_array_equal(back.array, img.array)
    np.testing.assert_array_equal(read_with_simpleitk(tmp_path / "s").array, img.array)


def test_ct_keeps_hounsfield_units_with_the_scanner_intercept(tmp_path, rng):
    hu = rng.integers(-1024, 3072, size=(3, 6, 7)).astype(np.int16)
    hu[0, 0, :2] = (-1024, 3071)
    files = write_dicom_series(mk.Image(hu), tmp_path / "ct", modality="CT")
    ds = pydicom.dcmread(files[0])
    stored = (ds.BitsStored, ds.PixelRepresentation, float(ds.RescaleIntercept), float(ds.RescaleSlope))
    assert stored == (12, 0, -1024, 1)
    assert ds.pixel_array.min() >= 0 and ds.pixel_array.max() <= 4095
    back = mk.read(tmp_path / "ct")
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back.array, hu)
    # Below -1024 HU (padding values) the 12-bit unsigned range does not reach: stored as signed.
    hu[1, 1, 1] = -3024
    files = write_dicom_series(mk.Image(hu), tmp_path / "padded", modality="CT")
    ds = pydicom.dcmread(files[0])
    assert (ds.BitsStored, ds.PixelRepresentation, float(ds.RescaleIntercept)) == (16, 1, 0)
    np.testing.assert_array_equal(mk.read(tmp_path / "padded").array, hu)


@pytest.mark.parametrize("values,signed,read_dtype", [
    (np.array([0, 1, 60000], dtype=np.uint16), 0, np.uint16),
    (np.array([-7, 0, 32767], dtype=np.int32), 1, np.int16),
    (np.array([0, 40000, 65535], dtype=np.int64), 0, np.uint16),
    (np.array([False, True, True]), 0, np.uint16),
    (np.array([-3.0, 0.0, 250.0], dtype=np.float32), 1, np.int16),  # floats that hold integers
])
def test_integers_are_stored_exactly(tmp_path, values, signed, read_dtype):
    array = np.resize(values, (2, 3, 4))
    files = write_dicom_series(mk.Image(array), tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    assert (ds.PixelRepresentation, float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (signed, 1, 0)
    back = mk.read(tmp_path / "s")
    assert back.dtype == read_dtype
    np.testing.assert_array_equal(back.array, array.astype(np.float64))
    np.testing.assert_array_equal(read_with_simpleitk(tmp_path / "s").array, array.astype(np.float64))


@pytest.mark.parametrize("low,high", [(-1.0, 1.0), (1e6, 1e6 + 0.001), (-5e8, 7e9), (0.25, 0.25), (1e-9, 3e-9)])
def test_float_quantisation_stays_within_half_a_slope(tmp_path, rng, low, high):
    array = rng.uniform(low, high, size=(3, 8, 8))
    array[0, 0, :2] = (low, high)
    files = write_dicom_series(mk.Image(array), tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    assert len(str(ds["RescaleSlope"].value)) <= 16 and intercept <= low
    assert intercept + 65535 * slope >= high * (1 - 1e-15)
    if high > low:
        assert slope <= (high - low) / 65535 * (1 + 1e-6) + 1e-12 * abs(low)
    back = read_with_pydicom(files)
    assert np.abs(back.array - array).max() <= slope / 2 * (1 + 1e-9)


def test_window_spans_the_central_values(tmp_path, rng):
    array = rng.integers(0, 1000, size=(4, 10, 10)).astype(np.int16)
    files = write_dicom_series(mk.Image(array), tmp_path / "wide")
    ds = pydicom.dcmread(files[0])
    lo, hi = np.percentile(array, [0.5, 99.5])
    assert float(ds.WindowCenter) == pytest.approx((lo + hi) / 2, rel=1e-9)
    assert float(ds.WindowWidth) == pytest.approx(hi - lo, rel=1e-9)
    assert "VOILUTFunction" not in ds
    # A span below 1 is not allowed for LINEAR (PS3.3 C.11.2.1.2); LINEAR_EXACT takes any width > 0.
    files = write_dicom_series(mk.Image(rng.uniform(0, 0.2, size=(2, 5, 5))), tmp_path / "narrow")
    ds = pydicom.dcmread(files[0])
    assert ds.VOILUTFunction == "LINEAR_EXACT" and 0 < float(ds.WindowWidth) < 0.2


def test_two_dimensional_image_is_one_slice(tmp_path, rng):
    angle = 0.4
    direction = np.array([[np.sin(angle), np.cos(angle)], [np.cos(angle), -np.sin(angle)]])
    img = mk.Image(rng.integers(0, 500, size=(7, 9)).astype(np.int16), spacing=(0.6, 0.8),
                   origin=(12.0, -3.0), direction=direction)
    files = write_dicom_series(img, tmp_path / "plane")
    assert len(files) == 1
    ds = pydicom.dcmread(files[0])
    assert "SliceThickness" not in ds and [float(v) for v in ds.PixelSpacing] == [0.6, 0.8]
    back = mk.read(files[0])
    assert back.shape == (1, 7, 9)
    np.testing.assert_array_equal(back.array[0], img.array)
    np.testing.assert_allclose(back.origin, (12.0, -3.0, 0.0), atol=GEOMETRY_ATOL)
    np.testing.assert_allclose(back.direction[:2, 1:], direction, atol=GEOMETRY_ATOL)
    np.testing.assert_allclose(back.direction[2, 1:], 0.0, atol=GEOMETRY_ATOL)


# ---------------------------------------------------------------------------------- identity
def headers(files: list[Path]) -> list:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in files]


def test_new_study_with_placeholder_identity(tmp_path, rng):
    files = write_dicom_series(mk.Image(volume(np.int16, rng)), tmp_path / "s", series_number=7,
                               series_description="T1 simulated")
    found = headers(files)
    first = found[0]
    assert str(first.PatientName) == "ANONYMOUS^PLACEHOLDER" and first.PatientID.startswith("ANON-")
    assert first.PatientIdentityRemoved == "YES" and "placeholder" in first.PatientComments
    assert (first.PatientBirthDate, first.PatientSex) == ("", "")  # unknown, not guessed
    assert list(first.ImageType) == ["DERIVED", "SECONDARY"]
    assert (first.SeriesNumber, first.SeriesDescription, first.Manufacturer) == (7, "T1 simulated", "medkern")
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID"):
        assert len({ds.get(key) for ds in found}) == 1, key
    assert len({ds.SOPInstanceUID for ds in found}) == len(files)
    assert [ds.InstanceNumber for ds in found] == list(range(1, len(files) + 1))
    assert len({first.StudyInstanceUID, first.SeriesInstanceUID, first.FrameOfReferenceUID}) == 3
    again = headers(write_dicom_series(mk.Image(volume(np.int16, rng)), tmp_path / "t"))[0]
    assert again.StudyInstanceUID != first.StudyInstanceUID and again.PatientID != first.PatientID


def test_patient_and_study_are_written_as_given(tmp_path, rng):
    patient = {"PatientName": "Müller^Jürgen", "PatientID": "MK-0042", "PatientBirthDate": datetime.date(1961, 3, 9),
               "PatientSex": "M", "PatientAge": "063Y"}
    study = {"StudyInstanceUID": "1.2.826.0.1.3680043.10.543.77",
             "FrameOfReferenceUID": "1.2.826.0.1.3680043.10.543.78", "StudyDate": "20240131", "AccessionNumber": "A17"}
    files = write_dicom_series(mk.Image(volume(np.int16, rng)), tmp_path / "s", patient=patient, study=study)
    ds = headers(files)[0]
    assert str(ds.PatientName) == "Müller^Jürgen" and ds.PatientID == "MK-0042"
    assert (ds.PatientBirthDate, ds.PatientSex, ds.PatientAge) == ("19610309", "M", "063Y")
    assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (study["StudyInstanceUID"], study["FrameOfReferenceUID"])
    assert (ds.StudyDate, ds.StudyTime, ds.AccessionNumber) == ("20240131", "", "A17")  # no time given: unknown
    assert "PatientIdentityRemoved" not in ds
    assert mk.list_dicom_series(tmp_path / "s")[0].patient_id == "MK-0042"


@pytest.fixture
def source_series(tmp_path, rng):
    img = mk.Image(volume(np.int16, rng, (4, 6, 5)), **grid("oblique", rng))
    write_dicom_series(img, tmp_path / "source", patient={"PatientName": "Doe^Jane", "PatientID": "P7"},
                       study={"StudyDate": "20230505"})
    return mk.list_dicom_series(tmp_path / "source")[0]


def test_derived_series_of_a_source_series(tmp_path, source_series):
    src = headers(list(source_series.files))
    img = source_series.read()
    files = write_dicom_series(img.with_array(img.array // 2), tmp_path / "derived", source=source_series)
    derived = headers(files)
    for key in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "FrameOfReferenceUID"):
        assert derived[0].get(key) == src[0].get(key), key
    assert derived[0].SeriesInstanceUID != src[0].SeriesInstanceUID
    listed = derived[0].ReferencedSeriesSequence[0]
    assert listed.SeriesInstanceUID == src[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in listed.ReferencedInstanceSequence} == {ds.SOPInstanceUID for ds in src}
    by_position = {tuple(np.round(np.asarray(ds.ImagePositionPatient, float), 3)): ds.SOPInstanceUID for ds in src}
    for ds in derived:
        position = tuple(np.round(np.asarray(ds.ImagePositionPatient, float), 3))
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == by_position[position]
    back = mk.read(tmp_path / "derived")
    assert_same_grid(back, img)
    np.testing.assert_array_equal(back.array, img.array // 2)


@pytest.mark.parametrize("kind", ["file", "dataset", "folder", "other grid"])
def test_other_sources(tmp_path, source_series, kind):
    first = source_series.files[0]
    img = source_series.read()
    source = {"file": first, "dataset": pydicom.dcmread(first, stop_before_pixels=True),
              "folder": first.parent, "other grid": source_series}[kind]
    if kind == "other grid":
        img = img[:, 1:, :]
    derived = headers(write_dicom_series(img, tmp_path / "d", source=source))
    assert derived[0].StudyInstanceUID == source_series.study_uid
    if kind == "file" or kind == "dataset":
        wanted = pydicom.dcmread(first, stop_before_pixels=True).SOPInstanceUID
        assert all(ds.SourceImageSequence[0].ReferencedSOPInstanceUID == wanted for ds in derived)
    elif kind == "folder":
        assert len({ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in derived}) == len(derived)
    else:
        # Cropped: no slice of the source lies on this grid, so no slice names a source image.
        assert not any("SourceImageSequence" in ds for ds in derived)
        assert len(derived[0].ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(source_series.files)


# ---------------------------------------------------------------------------------- atomic output
def test_non_empty_directory_needs_overwrite(tmp_path, rng):
    target = tmp_path / "s"
    first = write_dicom_series(mk.Image(volume(np.int16, rng)), target)
    (target / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty; pass overwrite=True"):
        write_dicom_series(mk.Image(volume(np.int16, rng)), target)
    assert (target / "notes.txt").exists() and all(p.exists() for p in first)
    second = write_dicom_series(mk.Image(volume(np.int16, rng, (3, 4, 4))), target, overwrite=True)
    assert sorted(target.iterdir()) == sorted(second)
    (tmp_path / "empty").mkdir()
    assert len(write_dicom_series(mk.Image(volume(np.int16, rng)), tmp_path / "empty")) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "s"]


@pytest.mark.parametrize("existing", [False, True])
def test_failure_leaves_nothing_behind(tmp_path, rng, monkeypatch, existing):
    target = tmp_path / "s"
    before = write_dicom_series(mk.Image(volume(np.int16, rng)), target) if existing else []
    real = pydicom.dcmwrite
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmwrite", failing)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_series(mk.Image(volume(np.int16, rng, (6, 4, 4))), target, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == (["s"] if existing else [])
    if existing:
        assert sorted(target.iterdir()) == sorted(before)


# ---------------------------------------------------------------------------------- bad input
def test_bad_inputs(tmp_path, rng, source_series):
    good = mk.Image(volume(np.float32, rng))
    out = tmp_path / "out"
    cases = [
        (TypeError, "img must be a medkern.Image", dict(img=good.array)),
        (ValueError, "vector image", dict(img=mk.Image(np.zeros((2, 3, 4, 3)), vector=True))),
        (ValueError, "img has no voxels", dict(img=mk.Image(np.zeros((0, 3, 4))))),
        (ValueError, "NaN or infinite", dict(img=good.with_array(np.where(good.array > 500, np.nan, good.array)))),
        (ValueError, "NaN or infinite", dict(img=good.with_array(np.full(good.shape, np.inf, np.float32)))),
        (ValueError, "not orthonormal", dict(img=mk.Image(good.array, direction=[[1, .6, 0], [0, .8, 0], [0, 0, 1]]))),
        (ValueError, "not orthonormal", dict(img=mk.Image(good.array, direction=[[1, 0, .6], [0, 1, 0], [0, 0, .8]]))),
        (ValueError, "modality must be one of MR, CT, OT", dict(modality="US")),
        (ValueError, "series_number must be a non-negative int", dict(series_number=-1)),
        (ValueError, "series_number must be a non-negative int", dict(series_number="3")),
        (ValueError, "series_description is not a valid DICOM SeriesDescription", dict(series_description="x" * 65)),
        (TypeError, "patient must be a dict", dict(patient="Doe^Jane")),
        (ValueError, r"patient has unknown keys \['Name'\]", dict(patient={"Name": "Doe"})),
        (ValueError, "PatientSex", dict(patient={"PatientSex": "male"})),
        (ValueError, r"study\['StudyInstanceUID'\] is not a valid DICOM", dict(study={"StudyInstanceUID": "1.2.x"})),
        (ValueError, "either source", dict(source=source_series, patient={"PatientID": "P7"})),
        (FileNotFoundError, "no such file or folder", dict(source=tmp_path / "missing")),
        (TypeError, "source must be a DicomSeries", dict(source=42)),
        (TypeError, "directory must be a path", dict(directory=3)),
        (FileNotFoundError, "parent folder", dict(directory=tmp_path / "no" / "such")),
    ]
    for error, message, kwargs in cases:
        call = {"img": good, "directory": out, **kwargs}
        with pytest.raises(error, match=message):
            write_dicom_series(call.pop("img"), call.pop("directory"), **call)
    (tmp_path / "not-dicom.dcm").write_bytes(b"\x00" * 200)
    with pytest.raises(mk.DicomError, match="not a readable DICOM file"):
        write_dicom_series(good, out, source=tmp_path / "not-dicom.dcm")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        write_dicom_series(good, tmp_path / "a-file")
    assert not out.exists()


def test_identifying_values_stay_out_of_messages(tmp_path, rng, capsys, caplog):
    secret = "19610309"
    with pytest.raises(ValueError) as excinfo:
        write_dicom_series(mk.Image(volume(np.int16, rng)), tmp_path / "s", patient={"PatientBirthDate": "1961-03-09"})
    assert "PatientBirthDate" in str(excinfo.value) and "1961" not in str(excinfo.value)
    with caplog.at_level(logging.DEBUG):
        write_dicom_series(mk.Image(volume(np.int16, rng)), tmp_path / "s",
                           patient={"PatientName": "Roe^Richard", "PatientID": "ID-991", "PatientBirthDate": secret})
    printed = capsys.readouterr()
    text = printed.out + printed.err + caplog.text
    assert not any(value in text for value in ("Roe", "ID-991", secret))
    # Warnings and library log records that quote a value (pydicom and highdicom do) come out
    # with it replaced.
    caplog.clear()
    with pytest.warns(UserWarning, match="bad name <identifying value>") as record:
        with caplog.at_level(logging.WARNING), dicom_write.identity_redacted() as secrets:
            logging.getLogger("pydicom").warning("Invalid value for VR PN: %r", "Roe^Richard")
            warnings.warn("bad name Roe^Richard", UserWarning, stacklevel=1)
            secrets.append("Roe^Richard")
    assert "Roe" not in str(record[0].message)
    assert "Invalid value for VR PN: '<identifying value>'" in caplog.text and "Roe" not in caplog.text


def test_no_temporary_folders_are_left(tmp_path, rng):
    write_dicom_series(mk.Image(volume(np.int16, rng)), tmp_path / "s")
    assert os.listdir(tmp_path) == ["s"]
