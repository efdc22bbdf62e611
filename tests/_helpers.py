"""Helpers the tests import by name (``from _helpers import on_backend``; ``tests`` is on the
path through pytest's ``pythonpath`` setting): array movement between devices, geometry, and
generated DICOM files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import medkern as mk


def serial_and_threaded(fn):
    """``(fn() on 1 thread, fn() on 3 threads)``, the caller's thread setting restored."""
    previous = mk.get_num_threads()
    try:
        mk.set_num_threads(1)
        serial = fn()
        mk.set_num_threads(3)
        return serial, fn()
    finally:
        mk.set_num_threads(previous)


def on_backend(array, backend: str):
    """Put a numpy array where ``backend`` computes (CuPy for GPU backends)."""
    if backend in ("cuda", "cupy"):
        import cupy

        return cupy.asarray(array)
    return array


def to_numpy(x):
    if isinstance(x, mk.Image):
        x = x.array
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


def random_direction(rng: np.random.Generator, ndim: int = 3, flip: bool = True) -> np.ndarray:
    """A random rotation, optionally with one axis flipped (oblique and flipped geometries)."""
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))[None, :]
    if flip:
        q[:, 0] = -q[:, 0]
    return q


def dicom_test_file(name: str) -> Path:
    """A file of pydicom's own test set or of the pydicom-data package, found locally (no
    download: pydicom's get_testdata_file would fetch a missing pydicom-data file)."""
    import importlib.util

    import pydicom

    own = Path(pydicom.__file__).parent / "data" / "test_files" / name
    if own.exists():
        return own
    spec = importlib.util.find_spec("data_store")
    if spec is not None and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "data" / name
        if p.exists():
            return p
    pytest.skip(f"DICOM test file {name} not installed (pip install pydicom-data)")


def part10_dataset(sop_class: str, modality: str):
    """An empty DICOM data set with file meta information (explicit VR little endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    return ds


def write_dicom_slices(directory: Path, slices, positions, orientation=(1, 0, 0, 0, 1, 0),
                       pixel_spacing=(0.8, 0.7), *, series_uid=None, frame_uid=None, modality="CT",
                       slope=None, intercept=None, bits_stored=None, photometric="MONOCHROME2",
                       transfer_syntax=None, orientations=None, pixel_spacings=None, rng=None,
                       extra=None, study_uid="1.2.826.0.1.3680043.10.543.1") -> list[Path]:
    """Write one single-frame DICOM file per 2D array in ``slices`` (stored values, uint16/int16);
    returns the paths in slice order.

    File names and InstanceNumbers are shuffled (a reader must sort by position). ``slope`` and
    ``intercept`` may be scalars or per-slice sequences; ``orientations`` / ``pixel_spacings``
    override the shared ones per slice; ``extra`` is a dict of attributes set on every file.
    """
    from pydicom.uid import CTImageStorage, RLELossless, generate_uid

    directory.mkdir(parents=True, exist_ok=True)
    rng = rng or np.random.default_rng(7)
    series_uid = series_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    n = len(slices)
    order = rng.permutation(n)
    paths = []
    for k, arr in enumerate(slices):
        arr = np.asarray(arr)
        ds = part10_dataset(CTImageStorage, modality)
        ds.PatientID = "MK-TEST"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber = 3
        ds.SeriesDescription = "generated"
        ds.InstanceNumber = int(order[k]) + 1
        ds.ImagePositionPatient = [float(v) for v in positions[k]]
        ori = orientations[k] if orientations is not None else orientation
        ds.ImageOrientationPatient = [float(v) for v in ori]
        ps = pixel_spacings[k] if pixel_spacings is not None else pixel_spacing
        ds.PixelSpacing = [float(v) for v in ps]
        ds.SliceThickness = 9.99  # deliberately not the spacing: readers must use positions
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored or 16
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if arr.dtype == np.int16 else 0
        if slope is not None:
            ds.RescaleSlope = float(np.broadcast_to(slope, (n,))[k])
        if intercept is not None:
            ds.RescaleIntercept = float(np.broadcast_to(intercept, (n,))[k])
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        if transfer_syntax == "implicit":
            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
        elif transfer_syntax == "rle":
            ds.compress(RLELossless, arr)
        # Names sort in the shuffled order; the UID tail keeps them unique across calls.
        p = directory / f"im{int(order[k]):04d}_{ds.SOPInstanceUID[-6:]}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def write_dicom_volume(directory: Path, array, spacing, origin, direction, **kw) -> list[Path]:
    """A volume (medkern geometry: array [k, j, i], direction columns = axis unit vectors) as a
    DICOM series: IOP = (direction[:, 2], direction[:, 1]), slice k at origin + k * s_k * d_k."""
    direction = np.asarray(direction, dtype=np.float64)
    positions = [np.asarray(origin) + k * spacing[0] * direction[:, 0] for k in range(array.shape[0])]
    orientation = tuple(direction[:, 2]) + tuple(direction[:, 1])
    return write_dicom_slices(directory, list(array), positions, orientation, (spacing[1], spacing[2]), **kw)


def write_rtstruct(path: Path, rois: dict, frame_uid: str, *, modality="RTSTRUCT") -> Path:
    """An RT Structure Set: ``rois`` maps a name to a list of (n, 3) LPS point arrays (closed planar)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import RTStructureSetStorage, generate_uid

    ds = part10_dataset(RTStructureSetStorage, modality)
    ds.SeriesInstanceUID = generate_uid()
    ref = Dataset()
    ref.FrameOfReferenceUID = frame_uid
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ROIName = name
        roi.ReferencedFrameOfReferenceUID = frame_uid
        ds.StructureSetROISequence.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ContourSequence = Sequence()
        for pts in contours:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            pts = np.asarray(pts, dtype=np.float64)
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [f"{v:.6f}" for v in pts.ravel()]
            rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
    ds.save_as(path, enforce_file_format=True)
    return path


def same_world_grid(a: "mk.Image", b: "mk.Image", atol: float = 1e-4) -> tuple[np.ndarray, "mk.Image"]:
    """``b`` re-expressed with ``a``'s axis senses: flips the arrays' axes whose direction columns
    are opposite (a reversed slice order describes the same voxels in the world)."""
    arr = np.asarray(b.array)
    origin, direction = b.origin.copy(), b.direction.copy()
    for axis in range(b.ndim):
        if np.allclose(a.direction[:, axis], -direction[:, axis], atol=atol):
            origin = origin + direction[:, axis] * b.spacing[axis] * (b.shape[axis] - 1)
            direction[:, axis] = -direction[:, axis]
            arr = np.flip(arr, axis=axis)
    return arr, mk.Image(np.ascontiguousarray(arr), spacing=b.spacing, origin=origin, direction=direction,
                         vector=b.is_vector)
