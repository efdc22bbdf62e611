"""DICOM reading: parity with SimpleITK's GDCM-based readers, the IBSI NIfTI conversions, and
every irregular-series / error path.

Tolerances: geometry 1e-4 mm (the issue's parity bound); integer images exactly; float images
(non-integral rescale) 1e-6 relative, because medkern rounds the float64 rescale to float32 once
where SimpleITK keeps float64.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import medkern as mk
from medkern.io import dicom
from medkern.io.dicom import _header

from _helpers import (
    dicom_test_file,
    part10_dataset,
    same_world_grid,
    write_dicom_slices,
    write_dicom_volume,
    write_rtstruct,
)

sitk = pytest.importorskip("SimpleITK")

GEOMETRY_ATOL = 1e-4


def assert_same_image(ours: mk.Image, ref: mk.Image, rtol: float = 1e-6) -> None:
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.spacing, ref.spacing, rtol=0, atol=GEOMETRY_ATOL)
    np.testing.assert_allclose(ours.origin, ref.origin, rtol=0, atol=GEOMETRY_ATOL)
    np.testing.assert_allclose(ours.direction, ref.direction, rtol=0, atol=GEOMETRY_ATOL)
    a, b = np.asarray(ours.array), np.asarray(ref.array)
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.abs(b).max() or 1))


def sitk_series(directory: Path, files: list[Path] | None = None) -> mk.Image:
    """SimpleITK's ImageSeriesReader on the GDCM-sorted files of the directory (or of ``files``)."""
    reader = sitk.ImageSeriesReader()
    uids = reader.GetGDCMSeriesIDs(str(directory))
    names = [n for u in uids for n in reader.GetGDCMSeriesFileNames(str(directory), u)]
    if files is not None:
        keep = {str(p) for p in files}
        names = [n for n in names if n in keep]
    reader.SetFileNames(names)
    return mk.Image.from_sitk(reader.Execute())


# ---------------------------------------------------------------------------------- real series
IBSI_SERIES = [f"STS_00{p}/{m}" for p in (1, 2, 3, 4) for m in ("CT", "PET", "MR_T1")]


@pytest.mark.parametrize("series", IBSI_SERIES)
def test_ibsi_series_match_simpleitk_and_ibsi_nifti(shared_data, series):
    patient, modality = series.split("/")
    directory = shared_data / "ibsi" / "ibsi_validation" / "dicom" / patient / modality / "image"
    img = mk.read_dicom_series(directory)
    assert_same_image(img, sitk_series(directory))
    # The IBSI NIfTI conversion of the same series (MIRP): float32 voxels, float32 affine.
    ref = mk.read(shared_data / "ibsi" / "ibsi_validation" / "nifti" / patient / f"{modality}_image.nii.gz")
    assert img.same_geometry(ref, atol=1e-4)
    np.testing.assert_allclose(img.array, ref.array, rtol=0, atol=2e-6 if modality == "PET" else 0)
    assert img.dtype == (np.float32 if modality == "PET" else np.int16)


def test_ibsi_ct_phantom_matches_simpleitk_and_nifti(shared_data):
    directory = shared_data / "ibsi" / "ibsi_1_ct_radiomics_phantom" / "dicom" / "image"
    img = mk.read(directory)
    assert_same_image(img, sitk_series(directory))
    ref = mk.read(shared_data / "ibsi" / "ibsi_1_ct_radiomics_phantom" / "nifti" / "image" / "phantom.nii.gz")
    assert img.same_geometry(ref, atol=1e-4)
    np.testing.assert_array_equal(img.array, ref.array)


def dicomdir_leaf_directories() -> list[str]:
    import pydicom

    root = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
    leaves = sorted({p.parent for p in root.rglob("*") if p.is_file() and p.parent != root})
    return [str(p.relative_to(root)) for p in leaves if "TINY_ALPHA" not in p.parts]


def as_2d(ref: mk.Image) -> mk.Image:
    """SimpleITK reads a file without patient geometry as a one-slice volume; medkern as 2D."""
    assert ref.shape[0] == 1
    return mk.Image(ref.array[0], spacing=ref.spacing[1:], origin=ref.origin[:2],
                    direction=ref.direction[:2, 1:], vector=ref.is_vector)


@pytest.mark.parametrize("leaf", dicomdir_leaf_directories())
def test_pydicom_dicomdirtests_match_simpleitk(leaf):
    import pydicom

    directory = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / leaf
    series = mk.list_dicom_series(directory, recursive=False)
    assert series, f"no series found in {leaf}"
    for s in series:
        # SimpleITK stacks files of different orientation into one volume (it does not split a
        # series); compare each of medkern's parts with SimpleITK reading only that part's files.
        ref = sitk_series(directory, list(s.files))
        if s.problems:
            # SimpleITK reads an irregular stack silently with the mean spacing (it only prints
            # "Non uniform sampling or missing slices detected"): a SimpleITK limitation.
            with pytest.raises(mk.DicomError, match="is irregular"):
                s.read()
            rec = s.read(allow_irregular=True)
            np.testing.assert_array_equal(rec.array[0], ref.array[0])
            np.testing.assert_allclose(rec.origin, ref.origin, atol=GEOMETRY_ATOL)
            np.testing.assert_allclose(rec.direction, ref.direction, atol=GEOMETRY_ATOL)
            np.testing.assert_allclose(rec.spacing[1:], ref.spacing[1:], atol=GEOMETRY_ATOL)
            continue
        img = s.read()
        assert_same_image(img, as_2d(ref) if img.ndim == 2 else ref)


def test_header_only_files_are_not_images():
    # The TINY_ALPHA media hold CT headers without pixel data (a DICOMDIR test set).
    import pydicom

    directory = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "TINY_ALPHA"
    assert mk.list_dicom_series(directory) == []
    with pytest.raises(mk.DicomError, match=r"no DICOM image files found \(\d+ files skipped"):
        mk.read(directory)


def dicom_test_files() -> list[str]:
    """Every .dcm file of pydicom's test set and of pydicom-data, except large images other than the
    named ones (decoding them all would take minutes; their variants are covered by smaller files)."""
    import importlib.util

    import pydicom

    dirs = [Path(pydicom.__file__).parent / "data" / "test_files"]
    spec = importlib.util.find_spec("data_store")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(list(spec.submodule_search_locations)[0]) / "data")
    named = {"RG1_UNCR.dcm", "MR2_UNCR.dcm", "693_UNCR.dcm", "eCT_Supplemental.dcm"}
    names = set()
    for d in dirs:
        for p in d.glob("*.dcm"):
            if p.name in named or p.stat().st_size <= 600_000:
                names.add(p.name)
    return sorted(names)


# Files where SimpleITK (GDCM) differs from medkern, and why. Each is checked against what the
# difference says, not skipped.
SITK_DIFFERENCES = {
    # GDCM ignores DoseGridScaling (returns raw uint32 dose); medkern applies it (float32 Gy).
    **{f"rtdose{v}.dcm": "dose" for v in ("", "_rle")},
    # GDCM misreads big-endian 32-bit dose values; medkern equals the little-endian file.
    "rtdose_expb.dcm": "same_as:rtdose.dcm",
    # GDCM returns 16-bit palette entries scaled to 8 bits for some encodings; medkern keeps 16.
    **{n: "palette" for n in ("OBXXXX1A.dcm", "OBXXXX1A_2frame.dcm", "OBXXXX1A_rle.dcm", "OBXXXX1A_expb.dcm",
                             "OBXXXX1A_rle_2frame.dcm", "OBXXXX1A_expb_2frame.dcm", "OT-PAL-8-face.dcm",
                             "examples_palette.dcm")},
    # 1-bit SEG frames: GDCM gives 0/255, medkern 0/1.
    **{n: "seg" for n in ("liver.dcm", "liver_expb.dcm", "liver_1frame.dcm", "liver_expb_1frame.dcm")},
    # GDCM decodes 16/32-bit RGB RLE with the wrong byte segments; medkern (pydicom) equals the
    # uncompressed version of the same image.
    **{f"SC_rgb_rle_{b}{f}.dcm": f"same_as:SC_rgb_{b}{f}.dcm" for b in ("16bit", "32bit") for f in ("", "_2frame")},
    # A single dose frame: GDCM takes a 5 mm slice spacing from the slab, medkern 1 mm (no
    # SpacingBetweenSlices), and GDCM ignores DoseGridScaling.
    "badVR.dcm": "dose_single_frame",
    # SimpleITK cannot read single-frame RT dose files: compared with frame 0 of the 15-frame file.
    **{f"rtdose{v}_1frame.dcm": "frame0_of:rtdose.dcm" for v in ("", "_expb", "_rle")},
    # GDCM takes over ten seconds on this JPEG: compared with pydicom's decoding instead.
    "SC_rgb_jpeg.dcm": "pydicom_reference",
}


@pytest.mark.parametrize("name", dicom_test_files())
def test_pydicom_files_match_simpleitk(name):
    import pydicom

    path = dicom_test_file(name)
    difference = SITK_DIFFERENCES.get(name, "")
    try:
        ours = mk.read(path)
    except mk.DicomError as exc:
        # Every refusal must be one of the documented reasons, and consistent with pydicom.
        message = str(exc)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the broken files it still parses
            ds = pydicom.dcmread(path, force=True)
        if "not a DICOM image" in message:
            assert "Rows" not in ds or not any(t in ds for t in (0x7FE00010, 0x7FE00008, 0x7FE00009))
        elif "no decoder is installed" in message:
            assert "medkern[jpeg]" in message
        else:
            # Pixel Data whose size disagrees with the header (short, too long, truncated file or
            # fragments, a compressed frame of another size) is refused before anything is decoded.
            assert re.search(r"pixel data cannot be decoded|unreadable DICOM file \((pixel data (truncated|too long)|"
                             r"truncated|Rows \d+ x Columns \d+ disagree with the compressed frame)", message)
        return
    if difference.startswith("frame0_of:"):
        whole = mk.read(dicom_test_file(difference.split(":")[1]))
        np.testing.assert_array_equal(ours.array[0], whole.array[0])
        np.testing.assert_allclose(ours.origin, whole.origin, atol=GEOMETRY_ATOL)
        np.testing.assert_allclose(ours.direction, whole.direction, atol=GEOMETRY_ATOL)
        return
    if difference == "pydicom_reference":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the file mislabels its VR encoding; pydicom says so
            np.testing.assert_array_equal(ours.array, pydicom.dcmread(path).pixel_array)
        return
    try:
        ref = mk.Image.from_sitk(sitk.ReadImage(str(path)))
    except RuntimeError:
        pytest.skip(f"SimpleITK cannot read {name} (medkern can)")
    if ours.ndim == 2:
        ref = as_2d(ref)  # no patient geometry: SimpleITK makes a one-slice volume
    _, ref = same_world_grid(ours, ref)  # SimpleITK keeps enhanced frames in stored order
    if difference.startswith("dose"):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        ref = ref.with_array(ref.array * float(header.DoseGridScaling))
        if difference == "dose_single_frame":
            ref = mk.Image(ref.array, spacing=(1.0,) + ref.spacing[1:], origin=ref.origin, direction=ref.direction)
    elif difference == "palette" and not np.array_equal(ours.array, ref.array):
        ours = ours.with_array((ours.array >> 8).astype(np.uint8))
    elif difference == "seg":
        ours = ours.with_array(ours.array * 255)
    elif difference.startswith("same_as:"):
        ref = mk.read(dicom_test_file(difference.split(":")[1]))
    assert_same_image(ours, ref)


def test_monochrome1_is_inverted_within_bits_stored():
    import pydicom

    path = dicom_test_file("RG1_UNCR.dcm")
    stored = pydicom.dcmread(path).pixel_array
    img = mk.read(path)
    np.testing.assert_array_equal(img.array, (1 << 15) - 1 - stored)
    assert img.spacing == (1.0, 1.0)


# ---------------------------------------------------------------------------------- generated series
def rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    return q if np.linalg.det(q) > 0 else -q


def axes(k, j, i) -> np.ndarray:
    """A direction matrix from the LPS unit vectors of array axes k, j, i."""
    return np.stack([k, j, i], axis=1).astype(np.float64)


# The slice axis k either follows the DICOM normal (row x column cosine) or opposes it; readers
# sort along the normal, so an opposed k comes back flipped (same voxels in the world).
GEOMETRIES = {
    "axial": (axes((0, 0, 1), (0, 1, 0), (1, 0, 0)), (2.5, 0.7, 0.8)),
    "axial_descending": (axes((0, 0, -1), (0, 1, 0), (1, 0, 0)), (1.25, 0.5, 0.5)),
    "sagittal": (axes((1, 0, 0), (0, 0, -1), (0, 1, 0)), (3.0, 1.1, 0.9)),
    "coronal": (axes((0, 1, 0), (0, 0, -1), (1, 0, 0)), (2.0, 0.6, 0.6)),
    "flipped": (axes((0, 0, -1), (0, -1, 0), (-1, 0, 0)), (1.5, 0.9, 0.7)),
}


def direction_for(name: str, rng) -> tuple[np.ndarray, tuple[float, float, float]]:
    if name == "oblique":
        return rotation(rng), (1.7, 0.65, 0.85)
    return GEOMETRIES[name]


@pytest.mark.parametrize("name", [*GEOMETRIES, "oblique"])
@pytest.mark.parametrize("syntax", [None, "implicit", "rle"])
def test_generated_series_match_simpleitk(tmp_path, rng, name, syntax):
    direction, spacing = direction_for(name, rng)
    array = rng.integers(-1024, 3000, size=(7, 12, 10)).astype(np.int16)
    origin = rng.uniform(-200, 200, size=3)
    write_dicom_volume(tmp_path, array, spacing, origin, direction, transfer_syntax=syntax)
    img = mk.read_dicom_series(tmp_path)
    ref = sitk_series(tmp_path)
    assert_same_image(img, ref)
    # And the truth: the written volume, up to the slice order along the normal.
    truth = mk.Image(array, spacing=spacing, origin=origin, direction=direction)
    arr, truth = same_world_grid(img, truth)
    assert img.same_geometry(truth, atol=1e-5)
    np.testing.assert_array_equal(img.array, arr)


@pytest.mark.parametrize("bits_stored,signed,slope,intercept,dtype", [
    (12, False, 1, -1024, np.int16),  # 0..4095 - 1024 fits int16
    (16, False, 1, -1024, np.int32),  # 0..65535 - 1024 does not
    (16, True, 1, 0, np.int16),       # no rescale: the stored dtype
    (16, False, 1, 0, np.uint16),
    (16, True, 2, -10, np.int32),
    (12, True, 0.5, 3.25, np.float32),
])
def test_rescale_output_dtype_and_values(tmp_path, rng, bits_stored, signed, slope, intercept, dtype):
    lo, hi = (-(1 << (bits_stored - 1)), 1 << (bits_stored - 1)) if signed else (0, 1 << bits_stored)
    stored = rng.integers(lo, hi, size=(4, 6, 5)).astype(np.int16 if signed else np.uint16)
    positions = [(0.0, 0.0, 2.0 * k) for k in range(4)]
    write_dicom_slices(tmp_path, list(stored), positions, slope=slope, intercept=intercept,
                               bits_stored=bits_stored)
    img = mk.read_dicom_series(tmp_path)
    assert img.dtype == dtype
    np.testing.assert_array_equal(img.array, (stored.astype(np.float64) * slope + intercept).astype(dtype))
    assert_same_image(img, sitk_series(tmp_path), rtol=1e-7)


def test_bits_above_bits_stored_are_ignored(tmp_path, rng):
    # 12-bit signed values stored with garbage in the top 4 bits: mask to 12 bits, sign-extend.
    values = rng.integers(-2048, 2048, size=(3, 4, 4))
    stored = ((values & 0xFFF) | (rng.integers(0, 16, size=values.shape) << 12)).astype(np.uint16)
    write_dicom_slices(tmp_path, list(stored.view(np.int16)), [(0, 0, k) for k in range(3)],
                               bits_stored=12)
    np.testing.assert_array_equal(mk.read(tmp_path).array, values)


def test_per_slice_rescale_and_monochrome1(tmp_path, rng):
    stored = rng.integers(0, 4096, size=(3, 5, 4)).astype(np.uint16)
    slopes, intercepts = [0.25, 0.5, 2.0], [0.0, -1.5, 10.0]
    write_dicom_slices(tmp_path, list(stored), [(0, 0, 3 * k) for k in range(3)], slope=slopes,
                               intercept=intercepts, bits_stored=12, photometric="MONOCHROME1")
    img = mk.read(tmp_path)
    expect = ((4095 - stored.astype(np.float64)) * np.asarray(slopes)[:, None, None]
              + np.asarray(intercepts)[:, None, None])
    assert img.dtype == np.float32
    np.testing.assert_array_equal(img.array, expect.astype(np.float32))


def test_modality_lut_backends_agree_and_threads_do_not_matter(rng, cpu_backend):
    stored = rng.integers(-2048, 2048, size=(5, 33, 17)).astype(np.int16)
    slope, intercept = rng.uniform(0.1, 3, 5), rng.uniform(-100, 100, 5)
    outs, old = [], mk.get_num_threads()
    for threads in (1, 3):
        mk.set_num_threads(threads)
        try:
            out = np.empty(stored.shape, np.float32)
            dicom.modality_lut(stored, out, slope, intercept, 12, True, True, backend=cpu_backend)
            outs.append(out)
        finally:
            mk.set_num_threads(old)
    expect = (-1 - ((stored.astype(np.int64) << 52) >> 52)) * slope[:, None, None] + intercept[:, None, None]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], expect.astype(np.float32))


# ---------------------------------------------------------------------------------- listing
def test_list_dicom_series_groups_splits_and_skips_non_images(tmp_path, rng):
    a = rng.integers(0, 100, size=(4, 6, 5)).astype(np.int16)
    write_dicom_slices(tmp_path / "ct", list(a), [(0, 0, 2 * k) for k in range(4)], series_uid="1.2.3")
    # The same SeriesInstanceUID with another orientation (a localizer) and another frame size.
    write_dicom_slices(tmp_path / "ct", [a[0]], [(0, 0, 0)], (1, 0, 0, 0, 0, -1), series_uid="1.2.3")
    write_dicom_slices(tmp_path / "ct", [np.zeros((3, 3), np.int16)] * 2, [(0, 0, 0), (0, 0, 1)],
                               series_uid="1.2.3")
    write_dicom_slices(tmp_path / "mr", list(a[:2]), [(0, 0, 0), (0, 0, 1)], series_uid="1.2.4",
                               modality="MR")
    (tmp_path / "ct" / "notes.txt").write_text("not DICOM")
    write_rtstruct(tmp_path / "ct" / "rs.dcm", {}, "1.2.9")
    series = mk.list_dicom_series(tmp_path)
    assert [s.key for s in series] == ["1.2.3#1", "1.2.3#2", "1.2.3#3", "1.2.4"]
    assert [s.n_frames for s in series] == [4, 2, 1, 2]
    assert series[0].shape == (4, 6, 5) and series[0].spacing == (2.0, 0.8, 0.7)
    summary = series[0].summary()
    assert summary["series_uid"] == "1.2.3#1" and summary["n_files"] == 4 and summary["modality"] == "CT"
    assert summary["spacing_source"] == "PixelSpacing" and "problems" not in summary
    np.testing.assert_array_equal(mk.read_dicom_series(tmp_path, series_uid="1.2.3#1").array, a)
    np.testing.assert_array_equal(series[3].read().array, a[:2])
    with pytest.raises(mk.DicomError, match=r"(?s)split into 3 parts whose frames differ \(6x5 pixels 0\.8x0\.7 mm, "
                       r"orientation \[1, 0, 0, 0, 1, 0\];.*1\.2\.3#2: CT 'generated', 2 frames"):
        mk.read_dicom_series(tmp_path, series_uid="1.2.3")
    with pytest.raises(mk.DicomError, match=r"(?s)holds 4 image series; pass series_uid= one of:.*1\.2\.4: MR"):
        mk.read_dicom_series(tmp_path)
    with pytest.raises(mk.DicomError, match=r"(?s)series_uid '9.9' not found.*1\.2\.4"):
        mk.read_dicom_series(tmp_path, series_uid="9.9")
    with pytest.raises(TypeError, match="series_uid must be a str"):
        mk.read_dicom_series(tmp_path, series_uid=3)


def test_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        mk.list_dicom_series(tmp_path / "absent")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="use read_dicom_file"):
        mk.read_dicom_series(tmp_path / "a.txt")
    with pytest.raises(mk.DicomError, match=r"no DICOM image files found \(1 files skipped"):
        mk.read_dicom_series(tmp_path)
    assert mk.list_dicom_series(tmp_path) == []


# ---------------------------------------------------------------------------------- irregular series
def linear_volume(positions_z, rng) -> tuple[np.ndarray, np.ndarray]:
    """Slices whose values are linear in z, so linear interpolation along z is exact."""
    base = rng.integers(0, 50, size=(6, 5)).astype(np.float64)
    return base, linear_slices(base, positions_z)


def linear_slices(base: np.ndarray, positions_z) -> np.ndarray:
    return np.stack([base + 8 * float(z) for z in positions_z])


def test_duplicate_positions(tmp_path, rng):
    stored = rng.integers(0, 1000, size=(5, 6, 5)).astype(np.int16)
    z = [0, 2, 2, 4, 6]
    paths = write_dicom_slices(tmp_path, list(stored), [(0, 0, v) for v in z])
    with pytest.raises(mk.DicomError, match=r"1 duplicate slice positions .* at 2\.000 mm") as err:
        mk.read(tmp_path)
    assert paths[1].name in str(err.value) and paths[2].name in str(err.value)
    img = mk.read_dicom_series(tmp_path, allow_irregular=True)
    assert img.shape == (4, 6, 5) and img.spacing[0] == 2.0 and img.dtype == np.int16
    import pydicom

    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in paths[1:3]]
    kept = 1 if numbers[0] < numbers[1] else 2  # the lowest InstanceNumber stays
    np.testing.assert_array_equal(img.array, stored[[0, kept, 3, 4]])


def test_missing_slice(tmp_path, rng):
    z = [0, 2, 4, 8, 10]
    base, values = linear_volume(z, rng)
    paths = write_dicom_slices(tmp_path, list(values.astype(np.int16)), [(0, 0, v) for v in z])
    with pytest.raises(mk.DicomError, match=rf"1 missing slice\(s\).*4\.000 mm between {paths[2].name} and "
                       rf"{paths[3].name}"):
        mk.read(tmp_path)
    img = mk.read_dicom_series(tmp_path, allow_irregular=True)
    expect = linear_slices(base, [0, 2, 4, 6, 8, 10])
    assert img.shape == (6, 6, 5) and img.spacing[0] == pytest.approx(2.0) and img.dtype == np.float32
    np.testing.assert_allclose(img.array, expect, rtol=0, atol=1e-4)
    assert mk.list_dicom_series(tmp_path)[0].problems


def test_varying_spacing(tmp_path, rng):
    z = [0, 1, 2, 3.5, 5, 6]
    base, values = linear_volume(z, rng)
    write_dicom_slices(tmp_path, list(values.astype(np.int16)), [(0, 0, v) for v in z])
    with pytest.raises(mk.DicomError, match="varying slice spacing"):
        mk.read(tmp_path)
    img = mk.read_dicom_series(tmp_path, allow_irregular=True)
    grid = np.linspace(0, 6, img.shape[0])
    assert img.spacing[0] == pytest.approx(grid[1] - grid[0])
    expect = linear_slices(base, grid)
    np.testing.assert_allclose(img.array, expect, rtol=0, atol=1e-3)


def test_gantry_tilt(tmp_path, rng):
    # Each slice shifted one column (0.7 mm along x) further: a tilted stack.
    stored = rng.integers(0, 1000, size=(4, 6, 8)).astype(np.int16)
    positions = [(0.7 * k, 0.0, 2.0 * k) for k in range(4)]
    write_dicom_slices(tmp_path, list(stored), positions)
    with pytest.raises(mk.DicomError, match=r"gantry tilt: slice positions drift 2\.100 mm in-plane"):
        mk.read(tmp_path)
    img = mk.read_dicom_series(tmp_path, allow_irregular=True)
    assert img.shape == (4, 6, 8) and img.spacing[0] == pytest.approx(2.0)
    np.testing.assert_allclose(img.origin, positions[0])
    fill = stored.min()
    for k in range(4):
        # Output column i sees input column i - k of slice k; columns left of the data get the fill.
        np.testing.assert_array_equal(img.array[k, :, k:], stored[k, :, : 8 - k])
        np.testing.assert_array_equal(img.array[k, :, :k], fill)


def test_truncated_and_corrupt_files(tmp_path, rng):
    z = [0, 2, 4, 6]
    _, values = linear_volume(z, rng)
    paths = write_dicom_slices(tmp_path, list(values.astype(np.int16)), [(0, 0, v) for v in z])
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-20])
    with pytest.raises(mk.DicomError, match=rf"unreadable files: .*{paths[2].name} \(pixel data truncated"):
        mk.read(tmp_path)
    with pytest.raises(mk.DicomError, match=rf"{paths[2].name}: unreadable DICOM file \(pixel data truncated"):
        mk.read(paths[2])
    # Recovery: the truncated slice is left out and interpolated like a missing one.
    img = mk.read_dicom_series(tmp_path, allow_irregular=True)
    np.testing.assert_allclose(img.array, values, atol=1e-4)
    # A file that claims to be DICOM but breaks off inside its header.
    paths[2].write_bytes(data[:200])
    with pytest.raises(mk.DicomError, match=rf"unreadable.*{paths[2].name}"):
        mk.read(tmp_path)


def test_slices_without_positions_cannot_be_stacked(tmp_path, rng):
    stored = rng.integers(0, 100, size=(2, 4, 4)).astype(np.int16)
    paths = write_dicom_slices(tmp_path, list(stored), [(0, 0, 0), (0, 0, 1)])
    import pydicom

    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient
        ds.save_as(p)
    with pytest.raises(mk.DicomError, match="2 of 2 slices have no ImagePositionPatient.*read_dicom_file"):
        mk.read(tmp_path)
    assert mk.read_dicom_file(paths[0]).shape == (4, 4)


# ---------------------------------------------------------------------------------- single files
def test_radiograph_spacing_from_imager_pixel_spacing(tmp_path, rng):
    import pydicom

    stored = rng.integers(0, 4000, size=(1, 9, 7)).astype(np.uint16)
    (path,) = write_dicom_slices(tmp_path, list(stored), [(0, 0, 0)], modality="DX")
    ds = pydicom.dcmread(path)
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, key)
    ds.ImagerPixelSpacing = [0.143, 0.139]
    ds.save_as(path)
    img = mk.read(path)
    assert img.ndim == 2 and img.spacing == (0.143, 0.139)
    np.testing.assert_array_equal(img.array, stored[0])
    ds.PixelSpacing = [0.1, 0.12]  # calibrated at the patient: preferred
    ds.save_as(path)
    assert mk.read(path).spacing == (0.1, 0.12)


def test_read_dicom_file_series_option(tmp_path, rng):
    stored = rng.integers(0, 100, size=(3, 4, 5)).astype(np.int16)
    paths = write_dicom_slices(tmp_path, list(stored), [(0, 0, 5 * k) for k in range(3)])
    one = mk.read(paths[1])
    assert one.shape == (1, 4, 5) and np.allclose(one.origin, (0, 0, 5))
    whole = mk.read(paths[1], series=True)
    np.testing.assert_array_equal(whole.array, stored)


def test_single_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        mk.read_dicom_file(tmp_path / "absent.dcm")
    with pytest.raises(ValueError, match="use read_dicom_series"):
        mk.read_dicom_file(tmp_path)
    (tmp_path / "a.dcm").write_text("plain text")
    with pytest.raises(mk.DicomError, match="not a DICOM image"):
        mk.read(tmp_path / "a.dcm")
    rs = write_rtstruct(tmp_path / "rs.dcm", {}, "1.2")
    with pytest.raises(mk.DicomError, match="not a DICOM image .* without pixel data"):
        mk.read(rs)


def test_missing_decoder_names_the_package(tmp_path, rng, monkeypatch):
    stored = rng.integers(0, 100, size=(2, 4, 4)).astype(np.int16)
    write_dicom_slices(tmp_path, list(stored), [(0, 0, 0), (0, 0, 1)], transfer_syntax="rle")
    np.testing.assert_array_equal(mk.read(tmp_path).array, stored)

    class NoDecoder:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-rle>=2.0"]

    import pydicom.pixels

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: NoDecoder())
    with pytest.raises(mk.DicomError, match=r"compressed as RLE Lossless and no decoder is installed.*"
                       r"medkern\[jpeg\].*pylibjpeg-rle"):
        mk.read(tmp_path)


def test_real_jpeg_lossless_without_decoder():
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    path = dicom_test_file("JPEG-LL.dcm")
    if get_decoder(JPEGLosslessSV1).is_available:
        assert mk.read(path).shape == (1024, 256)
    else:
        with pytest.raises(mk.DicomError, match=r"JPEG Lossless.*pip install 'medkern\[jpeg\]'"):
            mk.read(path)


def test_split_frames_in_one_file(monkeypatch):
    import dataclasses

    path = dicom_test_file("eCT_Supplemental.dcm")
    real = _header._frames_of

    def second_frame_turned(attrs, f):
        # The second frame in another orientation: no single grid holds both frames.
        first, second = real(attrs, f)
        return [first, dataclasses.replace(second, orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0))]

    monkeypatch.setattr(_header, "_frames_of", second_frame_turned)  # where the header pass looks it up
    with pytest.raises(mk.DicomError, match="its 2 frames differ in orientation or size"):
        mk.read(path)


def test_dicom_to_nifti_round_trip(tmp_path, rng):
    direction = rotation(rng)
    array = rng.integers(-1000, 2000, size=(5, 8, 6)).astype(np.int16)
    write_dicom_volume(tmp_path / "s", array, (1.3, 0.6, 0.9), (10.5, -20.25, 30.0), direction,
                               slope=0.5, intercept=-3)
    img = mk.read(tmp_path / "s")
    mk.write(img, tmp_path / "out.nii.gz")
    back = mk.read(tmp_path / "out.nii.gz")
    np.testing.assert_array_equal(back.array, img.array)
    assert back.dtype == np.float32
    # NIfTI-1 stores the affine in float32: exact to float32 precision.
    np.testing.assert_allclose(back.affine, img.affine, rtol=0, atol=5e-5)
    shutil.rmtree(tmp_path / "s")


def test_series_text_in_a_specific_character_set(tmp_path, rng):
    stored = rng.integers(0, 100, size=(2, 4, 4)).astype(np.int16)
    write_dicom_slices(tmp_path, list(stored), [(0, 0, 0), (0, 0, 1)],
                               extra={"SpecificCharacterSet": "ISO_IR 100", "SeriesDescription": "Kopf Müller"})
    (series,) = mk.list_dicom_series(tmp_path)
    assert series.description == "Kopf Müller" and series.summary()["description"] == "Kopf Müller"


def test_float_pixel_data(tmp_path):
    # Parametric maps store float32 values in Float Pixel Data (7FE0,0008): no rescale, no trimming.
    ds = part10_dataset("1.2.840.10008.5.1.4.1.1.30", "MR")
    values = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5) / 3
    ds.update({"Rows": 3, "Columns": 4, "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2",
               "BitsAllocated": 32, "NumberOfFrames": 1, "ImagePositionPatient": [1, 2, 3],
               "ImageOrientationPatient": [1, 0, 0, 0, 1, 0], "PixelSpacing": [0.5, 0.25]})
    ds.FloatPixelData = values.tobytes()
    ds.save_as(tmp_path / "map.dcm", enforce_file_format=True)
    img = mk.read(tmp_path / "map.dcm")
    assert img.dtype == np.float32 and img.spacing == (1.0, 0.5, 0.25)
    np.testing.assert_array_equal(img.array[0], values)


def test_more_decoding_errors(tmp_path, rng, monkeypatch):
    stored = rng.integers(0, 100, size=(2, 4, 4)).astype(np.int16)
    paths = write_dicom_slices(tmp_path / "a", list(stored), [(0, 0, 0), (0, 0, 1)])
    # A file cut short between listing and reading.
    (series,) = mk.list_dicom_series(tmp_path / "a")
    paths[1].write_bytes(paths[1].read_bytes()[:-8])
    with pytest.raises(mk.DicomError, match=rf"{paths[1].name}: pixel data truncated while reading"):
        series.read()
    # BitsAllocated 12 (packed pixels, retired): refused when the header is read.
    import pydicom

    ds = pydicom.dcmread(paths[0])
    ds.BitsAllocated = 12
    ds.save_as(paths[0])
    with pytest.raises(mk.DicomError, match="unreadable DICOM file .*BitsAllocated 12 is not supported"):
        mk.read(paths[0])
    # A transfer syntax pydicom has no decoder for at all.
    write_dicom_slices(tmp_path / "b", list(stored), [(0, 0, 0), (0, 0, 1)], transfer_syntax="rle")
    import pydicom.pixels

    def unknown(uid):
        raise NotImplementedError(uid)

    monkeypatch.setattr(pydicom.pixels, "get_decoder", unknown)
    with pytest.raises(mk.DicomError, match="transfer syntax 1.2.840.10008.1.2.5 has no pixel data decoder"):
        mk.read(tmp_path / "b")
