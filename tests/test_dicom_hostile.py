"""DICOM reading on hostile input: no crash, no hang, no silent wrong answer.

Each case builds a malformed file or folder in tmp_path (from pydicom's test files or generated
data sets) and checks that reading it raises medkern.DicomError naming the file and the field at
fault, or gives exactly the right result where the handling is documented (medkern.io.dicom).
Cases that hung before run in a subprocess under a timeout.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

import medkern as mk
from medkern.errors import DicomWarning
from medkern.io.dicom._scanning import _iter_files, _scan

from _helpers import dicom_test_file, part10_dataset, write_dicom_slices

pydicom = pytest.importorskip("pydicom")


# ---------------------------------------------------------------------------------- helpers
def copy_test_file(name: str, tmp_path: Path, new_name: str | None = None) -> Path:
    dst = tmp_path / (new_name or name)
    shutil.copy(dicom_test_file(name), dst)
    return dst


def edited(name: str, tmp_path: Path, **values) -> Path:
    """A copy of a pydicom test file with the given attributes set (None deletes)."""
    from pydicom import config

    src = dicom_test_file(name)
    dst = tmp_path / name
    modes = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
    try:
        ds = pydicom.dcmread(src)
        for key, value in values.items():
            if value is None:
                delattr(ds, key)
                continue
            try:
                setattr(ds, key, value)
            except ValueError:  # text pydicom will not take as a number: stored as it is
                ds.add_new(pydicom.datadict.tag_for_keyword(key), "LO", value)
        ds.save_as(dst, enforce_file_format=False)
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = modes
    return dst


def raises_naming(path: Path, *fields: str, call=None):
    """mk.read(path) (or ``call``) raises DicomError whose message names the file and each field."""
    with pytest.raises(mk.DicomError) as info:
        (call or (lambda: mk.read(path)))()
    message = str(info.value)
    assert path.name in message, message
    for f in fields:
        assert f in message, message
    return info.value


def peak_bytes(fn) -> tuple[object, int]:
    """(fn's result or exception, peak traced allocation in bytes)."""
    tracemalloc.start()
    try:
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - returned to the caller to check
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run_child(code: str, timeout: float = 60) -> str:
    """Run ``code`` in a fresh interpreter; it must finish within ``timeout`` (a hang fails)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def ct_series(directory: Path, n: int = 4, rng=None, **kw) -> tuple[list[Path], np.ndarray]:
    rng = rng or np.random.default_rng(3)
    stored = rng.integers(-1000, 2000, size=(n, 6, 5)).astype(np.int16)
    paths = write_dicom_slices(directory, list(stored), [(0, 0, 2.5 * k) for k in range(n)], **kw)
    return paths, stored


def enhanced_ct(path: Path, n: int = 3, *, drop_position: int | str | None = None, drop_rescale: int | None = None,
                items: int | None = None) -> tuple[Path, np.ndarray]:
    """An Enhanced CT multi-frame file: per-frame positions and rescale, shared orientation/spacing."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    stored = np.arange(n * 4 * 5, dtype=np.int16).reshape(n, 4, 5)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", generate_uid(), generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = 4, 5, n
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing = [0.5, 0.6]
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in range(n if items is None else items):
        item = Dataset()
        if k != drop_position and drop_position != "all":
            pos = Dataset()
            pos.ImagePositionPatient = [0, 0, 3.0 * k]
            item.PlanePositionSequence = Sequence([pos])
        if k != drop_rescale:
            rescale = Dataset()
            rescale.RescaleSlope, rescale.RescaleIntercept = 1, -1024
            item.PixelValueTransformationSequence = Sequence([rescale])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path, stored


# ---------------------------------------------------------------------------------- allocation before validation
@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "MR_small_RLE.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "liver_1frame.dcm", "SC_rgb_rle.dcm"])
def test_a_billion_frames_is_refused_before_allocating(tmp_path, name):
    path = edited(name, tmp_path, NumberOfFrames="1000000000")
    result, peak = peak_bytes(lambda: mk.read(path))
    assert isinstance(result, mk.DicomError), result
    assert path.name in str(result) and "NumberOfFrames" in str(result) or "fragments" in str(result)
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB allocated before refusing"
    listing, peak = peak_bytes(lambda: mk.list_dicom_series(tmp_path))
    assert listing == [] and peak < 64 << 20


def test_a_billion_frames_in_a_child_process_finishes(tmp_path):
    # The case that hung (10**9 Python frame objects) before the size check.
    path = edited("liver_1frame.dcm", tmp_path, NumberOfFrames="1000000000")
    out = run_child(f"""
        import medkern as mk
        try:
            mk.read({str(path)!r})
        except mk.DicomError as exc:
            print("refused", exc)
    """, timeout=60)
    assert out.startswith("refused") and "NumberOfFrames" in out


def test_a_header_length_claiming_gigabytes_allocates_nothing(tmp_path):
    # A flipped byte in a length field: the value seems to run for 4 GB (pydicom reads values
    # with fp.read(length), which allocates the claimed size first).
    src = dicom_test_file("MR_small.dcm")
    data = bytearray(src.read_bytes())
    at = data.find(b"\x08\x00\x80\x00LO")  # InstitutionName
    assert at > 0
    data[at + 4:at + 8] = b"UN\x00\x00"
    data[at + 8:at + 12] = struct.pack("<I", 0xFFFFFFF0)
    path = tmp_path / "x.dcm"
    path.write_bytes(bytes(data))
    result, peak = peak_bytes(lambda: mk.read(path))
    assert isinstance(result, mk.DicomError) and path.name in str(result)
    assert peak < 64 << 20


@pytest.mark.parametrize("z", [5e5, 1e9, 1e308])
def test_a_slice_far_away_does_not_build_a_huge_grid(tmp_path, z):
    # 5e5: a 2e5-slice recovery grid (bounded: refused); beyond 1e6 mm: a corrupt position.
    paths, stored = ct_series(tmp_path, n=6)
    ds = pydicom.dcmread(paths[-1])
    ds.ImagePositionPatient = [0, 0, z]
    ds.save_as(paths[-1])
    series, peak = peak_bytes(lambda: mk.list_dicom_series(tmp_path))
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB to list 6 slices"
    (s,) = series
    assert not s.regular and s.shape == (6, 6, 5)
    for allow in (False, True):
        with pytest.raises(mk.DicomError, match=rf"(?s)(?=.*{paths[-1].name})(?=.*ImagePositionPatient)"):
            s.read(allow_irregular=allow)
    # The series without the stray slice reads exactly.
    paths[-1].unlink()
    np.testing.assert_array_equal(mk.read(tmp_path).array, stored[:-1])


# ---------------------------------------------------------------------------------- pixel data size
@pytest.mark.parametrize("values, fields", [
    ({"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7}, ["too long", "BitsAllocated 8"]),
    ({"BitsAllocated": 32, "BitsStored": 32, "HighBit": 31}, ["truncated", "BitsAllocated 32"]),
    ({"Rows": 63}, ["too long", "Rows 63"]),
    ({"Columns": 65}, ["truncated", "Columns 65"]),
    ({"NumberOfFrames": "2"}, ["truncated", "NumberOfFrames 2"]),
    ({"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0},
     ["truncated", "SamplesPerPixel 3"]),
])
@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_pixel_data_must_have_the_size_the_header_says(tmp_path, name, values, fields):
    path = edited(name, tmp_path, **values)
    raises_naming(path, "Pixel Data", *fields)
    assert mk.list_dicom_series(tmp_path) == []
    with pytest.raises(mk.DicomError, match=rf"unreadable: {path.name} \(pixel data"):
        mk.read_dicom_series(tmp_path)


@pytest.mark.parametrize("change, what", [(-2, "truncated"), (2, "too long"), (128, "too long")])
def test_pixel_data_length_off_by_a_few_bytes(tmp_path, change, what):
    ds = pydicom.dcmread(dicom_test_file("CT_small.dcm"))
    ds.PixelData = ds.PixelData[:change] if change < 0 else ds.PixelData + b"\0" * change
    path = tmp_path / "ct.dcm"
    ds.save_as(path)
    raises_naming(path, f"pixel data {what}", "Rows 128 x Columns 128")


def test_one_padding_byte_after_odd_pixel_data_is_allowed(tmp_path):
    ds = part10_dataset("1.2.840.10008.5.1.4.1.1.7", "OT")
    stored = np.arange(9, dtype=np.uint8).reshape(3, 3)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, 3, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = stored.tobytes()  # 9 bytes: pydicom writes the padding byte
    path = tmp_path / "odd.dcm"
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(mk.read(path).array, stored)
    ds.PixelData = stored.tobytes() + b"\0\0\0"  # 12 bytes: more than the one padding byte
    ds.save_as(path, enforce_file_format=True)
    raises_naming(path, "pixel data too long")


def test_1_bit_and_rgb_sizes(tmp_path):
    path = edited("liver_1frame.dcm", tmp_path, Rows=513)
    raises_naming(path, "Rows 513", "BitsAllocated 1")
    ds = pydicom.dcmread(dicom_test_file("SC_rgb_small_odd.dcm"))
    ds.PixelData = ds.PixelData * 2
    bad = tmp_path / "rgb.dcm"
    ds.save_as(bad)
    raises_naming(bad, "pixel data too long", "SamplesPerPixel 3")


def test_truncated_pixel_data_of_every_native_syntax(tmp_path):
    for name in ("MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "SC_rgb.dcm"):
        data = dicom_test_file(name).read_bytes()
        path = tmp_path / name
        path.write_bytes(data[:-300])  # the MR files end with 138 bytes after their Pixel Data
        raises_naming(path, "pixel data truncated")


# ---------------------------------------------------------------------------------- deflated
def test_deflated_truncated_or_corrupt(tmp_path):
    data = dicom_test_file("image_dfl.dcm").read_bytes()
    path = tmp_path / "dfl.dcm"
    for cut in (400, 1500, len(data) - 50):
        path.write_bytes(data[:cut])
        exc = raises_naming(path, "deflate")
        assert "truncated" in str(exc)
    flipped = bytearray(data)
    flipped[1000] ^= 0xFF
    flipped[1001] ^= 0xFF
    path.write_bytes(bytes(flipped))
    exc = raises_naming(path)
    assert isinstance(exc.__cause__, (zlib.error, type(None))) or "zlib" in str(exc) or "pixel data" in str(exc)


def deflated_file(path: Path, rows: int, cols: int, pixel_bytes: int) -> Path:
    """A Deflated Explicit VR Little Endian file whose Pixel Data holds ``pixel_bytes`` zeros
    (inflated), written piecewise: a small file that inflates to much more."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = pydicom.dataset.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.Modality, ds.SeriesInstanceUID = "OT", pydicom.uid.generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as fp:
        fp.write(head.getvalue())
        fp.write(z.compress(body.getvalue() + b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", pixel_bytes)))
        chunk = b"\0" * (1 << 20)
        for _ in range(pixel_bytes >> 20):
            fp.write(z.compress(chunk))
        fp.write(z.compress(b"\0" * (pixel_bytes & ((1 << 20) - 1))))
        fp.write(z.flush())
    return path


def test_deflate_bomb_is_counted_not_kept(tmp_path):
    path = deflated_file(tmp_path / "bomb.dcm", 16, 16, 200 << 20)
    assert path.stat().st_size < 1 << 20
    result, peak = peak_bytes(lambda: mk.read(path))
    assert isinstance(result, mk.DicomError) and "pixel data too long" in str(result) and "Rows 16" in str(result)
    assert peak < 48 << 20, f"{peak / 2**20:.0f} MiB inflated in memory"
    # The same construction with the right size reads.
    good = deflated_file(tmp_path / "good.dcm", 16, 16, 256)
    np.testing.assert_array_equal(mk.read(good).array, np.zeros((16, 16), np.uint8))


# ---------------------------------------------------------------------------------- encapsulated
def test_encapsulated_frames_are_counted_against_number_of_frames(tmp_path):
    path = edited("MR_small_RLE.dcm", tmp_path, NumberOfFrames="2")
    raises_naming(path, "Basic Offset Table lists 1 frames", "NumberOfFrames says 2")
    ds = pydicom.dcmread(path)
    ds.PixelData = pydicom.encaps.encapsulate(list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)),
                                              has_bot=False)
    ds.save_as(path)
    raises_naming(path, "1 fragments, NumberOfFrames says 2")
    path = edited("SC_rgb_rle_2frame.dcm", tmp_path, NumberOfFrames="3")
    raises_naming(path, "NumberOfFrames")


def test_encapsulated_basic_offset_table_must_list_every_frame(tmp_path):
    ds = pydicom.dcmread(dicom_test_file("SC_rgb_rle_2frame.dcm"))
    frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=2))
    ds.PixelData = pydicom.encaps.encapsulate(frames + [frames[0]], has_bot=True)
    path = tmp_path / "bot.dcm"
    ds.save_as(path)
    raises_naming(path, "Basic Offset Table lists 3 frames", "NumberOfFrames")


def test_truncated_encapsulated_pixel_data(tmp_path):
    for name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        data = dicom_test_file(name).read_bytes()
        path = tmp_path / name
        path.write_bytes(data[:-300])
        raises_naming(path, "truncated")


def test_compressed_frame_size_must_match_rows_and_columns(tmp_path):
    path = edited("MR_small_jpeg_ls_lossless.dcm", tmp_path, Rows=4096, Columns=4096)
    raises_naming(path, "Rows 4096 x Columns 4096", "compressed frame", "64 x 64")
    # RLE: a 2-byte run decodes to at most 128 bytes, so a fragment bounds its frame.
    path = edited("MR_small_RLE.dcm", tmp_path, Rows=30000, Columns=30000)
    raises_naming(path, "RLE fragment", "Rows 30000")


# ---------------------------------------------------------------------------------- header fields
@pytest.mark.parametrize("values, fields", [
    ({"BitsStored": 17}, ["BitsStored 17", "BitsAllocated 16"]),
    ({"BitsStored": 0}, ["BitsStored 0"]),
    ({"HighBit": 3}, ["HighBit 3"]),
    ({"BitsAllocated": 12}, ["BitsAllocated 12"]),
    ({"PixelRepresentation": 2}, ["PixelRepresentation 2"]),
    ({"PhotometricInterpretation": "HSV"}, ["PhotometricInterpretation 'HSV'"]),
    ({"PhotometricInterpretation": "RGB"}, ["PhotometricInterpretation RGB", "SamplesPerPixel"]),
    ({"PhotometricInterpretation": "PALETTE COLOR"}, ["PALETTE COLOR", "RedPaletteColorLookupTableDescriptor"]),
    ({"SamplesPerPixel": 2}, ["SamplesPerPixel 2"]),
    ({"Rows": 0}, ["Rows 0"]),
    ({"Columns": None}, ["Columns"]),
    ({"PixelSpacing": ["-0.5", "0.5"]}, ["PixelSpacing"]),
    ({"PixelSpacing": ["nan", "0.5"]}, ["PixelSpacing", "not finite"]),
    ({"PixelSpacing": ["0", "0"]}, ["PixelSpacing"]),  # a slice placed in the patient
    ({"PixelSpacing": ["0.5"]}, ["PixelSpacing", "1 values"]),
    ({"PixelSpacing": "abc"}, ["PixelSpacing 'abc'"]),
    ({"ImageOrientationPatient": ["1", "0", "0", "1", "0", "0"]}, ["ImageOrientationPatient", "orthogonal"]),
    ({"ImageOrientationPatient": ["2", "0", "0", "0", "1", "0"]}, ["ImageOrientationPatient", "unit"]),
    ({"ImageOrientationPatient": ["0"] * 6}, ["ImageOrientationPatient"]),
    ({"ImageOrientationPatient": ["nan", "0", "0", "0", "1", "0"]}, ["ImageOrientationPatient", "not finite"]),
    ({"ImageOrientationPatient": ["1", "0", "0"]}, ["ImageOrientationPatient", "3 values, 6 expected"]),
    ({"ImagePositionPatient": ["nan", "0", "0"]}, ["ImagePositionPatient", "not finite"]),
    ({"ImagePositionPatient": ["0", "0", "1e400"]}, ["ImagePositionPatient", "not finite"]),
    ({"RescaleSlope": "nan"}, ["RescaleSlope", "not finite"]),
    ({"RescaleSlope": "0"}, ["RescaleSlope"]),
    ({"RescaleSlope": "x"}, ["RescaleSlope 'x'"]),
    ({"RescaleIntercept": "inf"}, ["RescaleIntercept", "not finite"]),
])
def test_malformed_header_fields_are_named(tmp_path, values, fields):
    path = edited("CT_small.dcm", tmp_path, **values)
    raises_naming(path, *fields)
    # In a folder: the file is listed as unreadable, with the same reason.
    with pytest.raises(mk.DicomError, match=rf"unreadable: {path.name} \("):
        mk.read(tmp_path)


def test_documented_lenient_fields_read_exactly(tmp_path):
    ref = mk.read(dicom_test_file("CT_small.dcm"))
    # SliceThickness is not a spacing: not read at all.
    for value in ("-1", "nan", "0"):
        img = mk.read(edited("CT_small.dcm", tmp_path, SliceThickness=value))
        np.testing.assert_array_equal(img.array, ref.array)
        assert img.spacing == ref.spacing
    # NumberOfFrames that is not a positive integer is 1 frame when the pixel data holds one.
    for value in ("0", "-3", "1A"):
        img = mk.read(edited("CT_small.dcm", tmp_path, NumberOfFrames=value))
        np.testing.assert_array_equal(img.array, ref.array)
    # PixelSpacing 0\0 ("unknown", CR/DX) on a radiograph without patient position: 1 mm.
    xr = edited("CT_small.dcm", tmp_path, PixelSpacing=["0", "0"], ImagePositionPatient=None,
                ImageOrientationPatient=None)
    img = mk.read(xr)
    assert img.ndim == 2 and img.spacing == (1.0, 1.0)
    np.testing.assert_array_equal(img.array, ref.array[0])


def test_frame_count_that_the_pixel_data_does_not_hold(tmp_path):
    # '1A' read as 1 frame, but the Pixel Data holds 15: refused, not the first frame.
    path = copy_test_file("badVR.dcm", tmp_path)
    raises_naming(path, "NumberOfFrames '1A'", "pixel data too long")


# ---------------------------------------------------------------------------------- RT dose
@pytest.mark.parametrize("offsets, fields", [
    ("count", ["GridFrameOffsetVector", "14 values, 15 expected"]),
    ("swap", ["GridFrameOffsetVector", "not strictly monotonic"]),
    ("repeat", ["GridFrameOffsetVector", "not strictly monotonic"]),
    ("nan", ["GridFrameOffsetVector", "not finite"]),
    ("absent", ["GridFrameOffsetVector"]),
    ("start", ["GridFrameOffsetVector starts at 7"]),
])
def test_rt_dose_frame_offsets(tmp_path, offsets, fields):
    from pydicom import config

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.IGNORE)
    ds = pydicom.dcmread(dicom_test_file("rtdose.dcm"))
    v = [float(x) for x in ds.GridFrameOffsetVector]
    if offsets == "count":
        v = v[:-1]
    elif offsets == "swap":
        v[3], v[4] = v[4], v[3]
    elif offsets == "repeat":
        v[4] = v[3]
    elif offsets == "nan":
        v[5] = float("nan")
    elif offsets == "start":
        v = [o + 7 for o in v]
    if offsets == "absent":
        del ds.GridFrameOffsetVector
    else:
        ds.GridFrameOffsetVector = [f"{o:g}" for o in v]
    path = tmp_path / "dose.dcm"
    ds.save_as(path)
    monkeypatch.undo()
    raises_naming(path, *fields)


def test_rt_dose_absolute_offsets_and_scaling(tmp_path):
    ref = mk.read(dicom_test_file("rtdose.dcm"))
    ds = pydicom.dcmread(dicom_test_file("rtdose.dcm"))
    z = float(ds.ImagePositionPatient[2])
    # Absolute offsets (PS3.3 C.8.8.3.2, axial grids): the first equals ImagePositionPatient z.
    ds.GridFrameOffsetVector = [f"{z + float(o):.6f}" for o in ds.GridFrameOffsetVector]
    path = tmp_path / "dose.dcm"
    ds.save_as(path)
    img = mk.read(path)
    np.testing.assert_array_equal(img.array, ref.array)
    np.testing.assert_allclose(img.origin, ref.origin, atol=1e-4)
    np.testing.assert_allclose(img.spacing, ref.spacing, atol=1e-4)
    for value in ("nan", "-1", "0"):
        raises_naming(edited("rtdose.dcm", tmp_path, DoseGridScaling=value), "DoseGridScaling")


# ---------------------------------------------------------------------------------- enhanced multi-frame
def test_enhanced_multiframe_reads(tmp_path):
    path, stored = enhanced_ct(tmp_path / "e.dcm")
    img = mk.read(path)
    np.testing.assert_array_equal(img.array, stored.astype(np.int32) - 1024)
    assert img.spacing == (3.0, 0.5, 0.6)


@pytest.mark.parametrize("kw, fields", [
    ({"items": 2}, ["PerFrameFunctionalGroupsSequence has 2 items", "NumberOfFrames 3"]),
    ({"items": 0}, ["PerFrameFunctionalGroupsSequence has 0 items"]),
    ({"drop_position": 1}, ["frame 2", "PlanePositionSequence"]),
    ({"drop_rescale": 2}, ["frame 3", "PixelValueTransformationSequence"]),
    # no frame placed: stacked at a made-up origin and 1 mm before
    ({"drop_position": "all"}, ["no frame has a PlanePositionSequence", "enhanced CT"]),
])
def test_enhanced_multiframe_without_per_frame_groups(tmp_path, kw, fields):
    path, _ = enhanced_ct(tmp_path / "e.dcm", **kw)
    raises_naming(path, *fields)


# ---------------------------------------------------------------------------------- series
def test_same_series_uid_with_different_rows_modality_or_bits_is_split(tmp_path):
    paths, stored = ct_series(tmp_path, series_uid="1.2.3")
    write_dicom_slices(tmp_path, [np.zeros((3, 3), np.int16)] * 2, [(0, 0, 0), (0, 0, 2.5)],
                               series_uid="1.2.3")
    write_dicom_slices(tmp_path, list(stored[:2]), [(0, 0, 0), (0, 0, 2.5)], series_uid="1.2.3",
                               modality="PT")
    write_dicom_slices(tmp_path, list(stored[:2]), [(0, 0, 0), (0, 0, 2.5)], series_uid="1.2.3",
                               bits_stored=12)
    series = mk.list_dicom_series(tmp_path)
    assert len(series) == 4
    with pytest.raises(mk.DicomError, match=r"split into 4 parts(?=.*modality PT)(?=.*12/16 bits)(?=.*3x3)"):
        mk.read(tmp_path, series_uid="1.2.3")
    by_rows = {s.shape: s for s in series}
    np.testing.assert_array_equal(by_rows[(4, 6, 5)].read().array, stored)


def test_duplicate_sop_instance_uid(tmp_path):
    paths, stored = ct_series(tmp_path)
    shutil.copy(paths[1], tmp_path / "copy.dcm")
    (s,) = mk.list_dicom_series(tmp_path)
    assert any("SOPInstanceUID" in p for p in s.problems)
    with pytest.raises(mk.DicomError, match=r"(?s)is irregular.*2 files share 1 SOPInstanceUID.*copy\.dcm"):
        s.read()
    np.testing.assert_array_equal(s.read(allow_irregular=True).array, stored)


def test_truncated_slice_in_a_series(tmp_path):
    paths, stored = ct_series(tmp_path, n=5)
    data = paths[4].read_bytes()
    for cut in (100, 300, 600, len(data) - 30):  # preamble, meta header, data set, pixel data
        paths[4].write_bytes(data[:cut])
        with pytest.raises(mk.DicomError):
            mk.read(tmp_path)
        series = mk.list_dicom_series(tmp_path)
        if cut > 132:  # a Part 10 file: reported, not skipped
            assert [p.name for p, _ in series[0].unreadable] == [paths[4].name]
        np.testing.assert_array_equal(series[0].read(allow_irregular=True).array, stored[:4])


def test_truncation_at_every_offset_never_succeeds_nor_crashes(tmp_path):
    # Cut anywhere (preamble, meta header, mid-element, mid-pixel-data): a DicomError naming the
    # file, or, for a cut after the end of Pixel Data, exactly the image of the whole file.
    out = run_child(f"""
        import numpy as np, medkern as mk
        from pathlib import Path
        for name, src in {[(n, str(dicom_test_file(n))) for n in
                           ("MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm",
                            "MR_small_RLE.dcm", "rtdose.dcm")]!r}:
            data = Path(src).read_bytes()
            whole = mk.read(src)
            dst = Path({str(tmp_path)!r}) / name
            cuts = list(range(0, 300)) + list(range(300, len(data), 11))  # every byte of preamble and meta
            read = 0
            for cut in cuts:
                dst.write_bytes(data[:cut])
                try:
                    img = mk.read(dst)
                except mk.DicomError as exc:
                    assert name in str(exc), (cut, str(exc))
                else:
                    read += 1
                    assert np.array_equal(img.array, whole.array) and img.same_geometry(whole), (name, cut)
            print(name, len(cuts), read)
    """, timeout=300)
    lines = out.splitlines()
    assert len(lines) == 6
    # Only cuts in the 138 bytes after the MR files' Pixel Data read (the same image).
    assert all(int(line.split()[2]) <= 138 // 11 + 1 for line in lines), out


# ---------------------------------------------------------------------------------- folder scans
@pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(socket, "AF_UNIX"), reason="POSIX named pipes and sockets")
def test_named_pipe_socket_and_device_in_a_study_folder(tmp_path):
    paths, stored = ct_series(tmp_path / "study" / "ct")
    study = tmp_path / "study"
    os.mkfifo(study / "ct" / "pipe.dcm")
    os.mkfifo(study / "pipe_without_suffix")
    sock = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(study / "ct")  # a relative name: socket paths are limited to ~100 characters
    try:
        sock.bind("sock.dcm")
    finally:
        os.chdir(cwd)
    os.symlink("/dev/zero", study / "ct" / "zero.dcm")
    os.symlink(study, study / "ct" / "loop")  # a link to a parent folder: not followed
    os.symlink(study / "ct" / "missing", study / "ct" / "broken.dcm")
    try:
        out = run_child(f"""
            import numpy as np, medkern as mk
            img = mk.read({str(study)!r})
            print(int(np.asarray(img.array, np.int64).sum()), img.shape)
            print(len(mk.list_dicom_series({str(study)!r})[0].unreadable))
            for name in ("pipe.dcm", "sock.dcm", "zero.dcm"):
                try:
                    mk.read({str(study / "ct")!r} + "/" + name)
                except (mk.DicomError, ValueError, OSError) as exc:
                    print(type(exc).__name__, exc)
            try:
                mk.read({str(study / "pipe_without_suffix")!r})
            except ValueError as exc:
                print(type(exc).__name__, exc)
        """, timeout=60)
    finally:
        sock.close()
    lines = out.splitlines()
    assert lines[0] == f"{int(stored.astype(np.int64).sum())} {stored.shape}"
    assert lines[1] == "0"
    assert "pipe.dcm" in lines[2] and "sock.dcm" in lines[3] and "zero.dcm" in lines[4]
    assert lines[5].startswith("ValueError") and "pipe_without_suffix" in lines[5]


def test_unreadable_sub_folder_is_reported(tmp_path, monkeypatch):
    paths, stored = ct_series(tmp_path / "study" / "ct")
    blocked = tmp_path / "study" / "mr"
    blocked.mkdir()
    real = os.scandir

    def scandir(path="."):
        # Tests run as root, where chmod 000 blocks nothing: refuse the listing instead.
        if Path(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.warns(DicomWarning, match=r"mr: folder cannot be listed \(PermissionError"):
        (s,) = mk.list_dicom_series(tmp_path / "study")
    assert s.unreadable == ((blocked, "folder cannot be listed (PermissionError: Permission denied)"),)
    with pytest.warns(DicomWarning), pytest.raises(mk.DicomError, match=r"unreadable files: .*mr \(folder cannot"):
        mk.read(tmp_path / "study")
    with pytest.warns(DicomWarning):
        img = mk.read_dicom_series(tmp_path / "study", allow_irregular=True)
    np.testing.assert_array_equal(img.array, stored)


def test_a_corrupt_file_does_not_abort_the_scan(tmp_path):
    paths, stored = ct_series(tmp_path / "ct")
    data = bytearray(dicom_test_file("image_dfl.dcm").read_bytes())
    data[1000:1010] = b"\xff" * 10  # a broken deflate stream
    (tmp_path / "ct" / "broken_deflate.dcm").write_bytes(bytes(data))
    (tmp_path / "ct" / "short.dcm").write_bytes(dicom_test_file("MR_small.dcm").read_bytes()[:3000])
    billion = edited("MR_small_RLE.dcm", tmp_path, NumberOfFrames="1000000000")
    shutil.move(billion, tmp_path / "ct" / "billion.dcm")
    (s,) = mk.list_dicom_series(tmp_path)
    reasons = dict((p.name, why) for p, why in s.unreadable)
    assert set(reasons) == {"broken_deflate.dcm", "short.dcm", "billion.dcm"}
    assert any(w in reasons["broken_deflate.dcm"] for w in ("zlib", "deflate", "truncated"))
    assert "truncated" in reasons["short.dcm"] and "NumberOfFrames" in reasons["billion.dcm"]
    with pytest.raises(mk.DicomError, match="broken_deflate.dcm"):
        mk.read(tmp_path)
    np.testing.assert_array_equal(mk.read_dicom_series(tmp_path, allow_irregular=True).array, stored)


@pytest.mark.parametrize("error", [zlib.error("bad"), MemoryError(), struct.error("unpack"), KeyError("Rows"),
                                   AttributeError("no"), OverflowError("big"), ValueError("conversion"),
                                   RecursionError("deep")])
def test_foreign_exceptions_become_dicom_errors_naming_the_file(tmp_path, monkeypatch, error):
    path = copy_test_file("CT_small.dcm", tmp_path)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(pydicom.filereader, "read_partial", fail)  # what the header pass calls
    with pytest.raises(mk.DicomError) as info:
        mk.read(path)
    assert path.name in str(info.value) and info.value.__cause__ is error
    # In a scan: an unreadable entry naming the exception.
    (tmp_path / "sub").mkdir()
    shutil.copy(dicom_test_file("CT_small.dcm"), tmp_path / "sub" / "a.dcm")
    scan = _scan(_iter_files(tmp_path / "sub", recursive=True))
    assert [(p.name, type(error).__name__ in why) for p, why in scan.unreadable] == [("a.dcm", True)]


def test_pixel_decoder_exceptions_become_dicom_errors(tmp_path, monkeypatch):
    path = copy_test_file("MR_small_RLE.dcm", tmp_path)

    def fail(self):
        raise MemoryError()

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(fail))
    with pytest.raises(mk.DicomError, match=r"MR_small_RLE\.dcm: pixel data cannot be decoded \(MemoryError") as info:
        mk.read(path)
    assert isinstance(info.value.__cause__, MemoryError)


def test_file_changed_after_its_header_was_read(tmp_path):
    paths, stored = ct_series(tmp_path)
    (s,) = mk.list_dicom_series(tmp_path)
    paths[2].write_bytes(paths[2].read_bytes()[:-40])
    raises_naming(paths[2], "truncated", call=s.read)
    paths[2].unlink()
    raises_naming(paths[2], "cannot be read", call=s.read)


def test_zero_filled_tail_is_unreadable_and_fast(tmp_path):
    # A copy that was never completed: the header, then zero bytes (preallocated space). Parsed
    # 8 bytes at a time this took seconds per 20 MB and skipped the file as "not an image".
    paths, stored = ct_series(tmp_path, n=4)
    data = paths[3].read_bytes()
    with open(paths[3], "wb") as fp:
        fp.write(data[:600])
        fp.truncate(600 + (256 << 20))  # sparse: 256 MiB of zeros
    out = run_child(f"""
        import medkern as mk
        try:
            mk.read({str(paths[3])!r})
        except mk.DicomError as exc:
            print(exc)
        (s,) = mk.list_dicom_series({str(tmp_path)!r})
        print(s.unreadable[0][0].name, s.shape)
    """, timeout=30)
    first, second = out.splitlines()
    assert paths[3].name in first and "zero bytes in place of the data set" in first
    assert second == f"{paths[3].name} (3, 6, 5)"


def test_a_file_that_cannot_be_opened_is_reported(tmp_path, monkeypatch):
    paths, stored = ct_series(tmp_path, n=3)
    locked = tmp_path / "locked"  # no .dcm suffix: before, an unopenable file was skipped silently
    shutil.copy(paths[0], locked)
    real = os.open

    def open_(path, flags, *args, **kwargs):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    (s,) = mk.list_dicom_series(tmp_path)
    assert s.unreadable == ((locked, "cannot be read (PermissionError: Permission denied)"),)
    with pytest.raises(mk.DicomError, match=r"unreadable files: .*locked \(cannot be read"):
        s.read()


def test_rle_frame_of_other_columns_is_not_sheared(tmp_path):
    # pydicom keeps the start of a segment longer than Rows x Columns (with a warning): the
    # image would be sheared. The fragment count and size checks cannot see it; decoding does.
    path = edited("rtdose_rle.dcm", tmp_path, Columns=9)
    raises_naming(path, "RLE segment decodes to 100 bytes", "Columns 9")


@pytest.mark.parametrize("damage", ["vr", "length"])
def test_corrupt_value_representation_in_the_header(tmp_path, damage):
    # A flipped bit turns a VR into an unknown one (pydicom: NotImplementedError), or the meta
    # group length into 238 bytes that are not whole UL values (pydicom: BytesLengthException);
    # both escaped the reader.
    data = bytearray(dicom_test_file("CT_small.dcm").read_bytes())
    if damage == "vr":
        at = data.find(b"\x08\x00\x05\x00CS", 132)
        assert at > 0
        data[at + 4:at + 6] = b"GS"
    else:
        assert data[132:138] == b"\x02\x00\x00\x00UL"
        data[138:140] = struct.pack("<H", 238)
    path = tmp_path / "vr.dcm"
    path.write_bytes(bytes(data))
    with pytest.raises(mk.DicomError) as info:
        mk.read(path)
    assert path.name in str(info.value) and info.value.__cause__ is not None
    assert type(info.value.__cause__).__name__ in ("NotImplementedError", "BytesLengthException")
    # A folder scan goes on past it.
    shutil.copy(dicom_test_file("MR_small.dcm"), tmp_path / "mr.dcm")
    (s,) = mk.list_dicom_series(tmp_path)
    assert [p.name for p, _ in s.unreadable] == ["vr.dcm"]


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm"])
def test_compressed_frame_without_a_header_is_refused_before_decoding(tmp_path, name):
    # Decoders allocate every frame at Rows x Columns before they find the codestream unusable.
    ds = pydicom.dcmread(dicom_test_file(name))
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * len(frame)])
    ds.Rows = ds.Columns = 60000
    path = tmp_path / name
    ds.save_as(path)
    result, peak = peak_bytes(lambda: mk.read(path))
    assert isinstance(result, mk.DicomError) and path.name in str(result) and "header" in str(result)
    assert peak < 16 << 20


@pytest.mark.parametrize("photometric, samples", [("MONOCHROME2", 1), ("MONOCHROME1", 1), ("RGB", 3)])
def test_signed_8_bit_with_fewer_bits_stored(tmp_path, photometric, samples):
    # Legal, and a TypeError from the modality LUT kernel before (it writes int16 at the narrowest).
    rng = np.random.default_rng(5)
    raw = rng.integers(-128, 128, size=(6, 7, samples) if samples > 1 else (6, 7)).astype(np.int8)
    ds = part10_dataset("1.2.840.10008.5.1.4.1.1.7", "OT")
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 6, 7, samples, photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 7, 6, 1
    ds.PixelData = raw.tobytes()
    path = tmp_path / "s8.dcm"
    ds.save_as(path, enforce_file_format=True)
    expect = ((raw.astype(np.int16) << 9) >> 9)  # the low 7 bits, sign-extended
    if photometric == "MONOCHROME1":
        expect = -1 - expect
    img = mk.read(path)
    assert img.dtype == np.int8
    np.testing.assert_array_equal(img.array, expect.astype(np.int8))


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_unsigned_32_bit_with_fewer_bits_stored(tmp_path, photometric):
    # A TypeError from the modality LUT kernel before (it has no uint32 output).
    raw = np.random.default_rng(6).integers(0, 1 << 32, size=(5, 4), dtype=np.uint64).astype(np.uint32)
    ds = part10_dataset("1.2.840.10008.5.1.4.1.1.7", "OT")
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 5, 4, 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 29, 28, 0
    ds.PixelData = raw.tobytes()
    path = tmp_path / "u32.dcm"
    ds.save_as(path, enforce_file_format=True)
    expect = raw.astype(np.int64) & ((1 << 29) - 1)
    if photometric == "MONOCHROME1":
        expect = ((1 << 29) - 1) - expect
    img = mk.read(path)
    assert img.dtype == np.uint32
    np.testing.assert_array_equal(img.array, expect.astype(np.uint32))


def test_rescale_slope_that_overflows_the_values_is_refused(tmp_path):
    # every voxel was inf, with no error
    raises_naming(edited("CT_small.dcm", tmp_path, RescaleSlope="1e308"), "RescaleSlope 1e+308",
                  "non-finite voxels")
