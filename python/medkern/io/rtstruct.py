"""RT Structure Sets: closed planar contours (LPS mm) rasterised to binary masks on an image grid.

Each contour's points are mapped into the reference image's continuous index space
``(k, j, i)``. A contour belongs to the slice whose index is nearest to its points; every point
must lie within half a slice of it (the contour is in that image plane). The polygons of one slice
are filled together with the even-odd rule at voxel centres, so a contour nested in another cuts a
hole (PS3.3 C.8.8.6.3), by the C++ kernel ``fill_polygons`` (Numba fallback).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medkern._dispatch import Kernel, get_num_threads
from medkern.errors import DicomError
from medkern.image import Image

__all__ = ["fill_polygons", "read_rtstruct", "reference_series"]

# Points may lie this far (in voxels) outside the grid in-plane: a contour drawn around the edge
# voxels passes through their outer halves, or along their outer edges (0.5), which DS rounding of
# the coordinates can move by a few 1e-6 mm.
_IN_PLANE_MARGIN = 0.5 + 1e-3
# All points of a contour lie within this many slices of its slice (half a slice either way).
_SLICE_TOLERANCE = 0.5
_CLOSED = {"CLOSED_PLANAR", "CLOSED_PLANAR_XOR"}


def _cpp_fill(xy, start, slice_of, shape):
    from medkern import _core

    return _core.fill_polygons(xy, start, slice_of, *shape, get_num_threads())


fill_polygons = Kernel("fill_polygons", cpp=_cpp_fill, numba="medkern._numba.polygon:fill_polygons")


def reference_series(reference: Any) -> Any:
    """The image series ``reference`` names: a DicomSeries, the directory of one DICOM series, or
    the list of its files (what both the RTSTRUCT reader and writer accept as the referenced series)."""
    from medkern.io.dicom import DicomSeries, _choose, list_dicom_series

    if isinstance(reference, DicomSeries):
        return reference
    if isinstance(reference, (str, os.PathLike)):
        d = Path(reference)
        if not d.is_dir():
            raise ValueError(f"reference must be an Image, a DicomSeries or a DICOM series directory (or the "
                             f"series' files); {d} is not a directory")
        return _choose(list_dicom_series(d), None, d)
    if isinstance(reference, Sequence) and not isinstance(reference, (str, bytes)):
        from medkern.analysis.dicom_objects import _source_series

        return _source_series(reference)[0]
    raise TypeError(f"reference must be an Image, a DicomSeries or a DICOM series directory (or the series' "
                    f"files), got {type(reference).__name__}")


def _reference(reference: Any) -> tuple[Image, str | None]:
    """The grid and its FrameOfReferenceUID (None when only an Image is given)."""
    if isinstance(reference, Image):
        return reference, None
    series = reference_series(reference)
    return series.read(), series.frame_of_reference_uid


def read_rtstruct(path: str | os.PathLike, reference: Any, rois: Sequence[str] | None = None
                  ) -> dict[str, Image]:
    """Masks of the ROIs of an RTSTRUCT file on the grid of ``reference``.

    Parameters
    ----------
    path : the RTSTRUCT file.
    reference : the image the contours were drawn on: an :class:`Image` (3D), a
        :class:`~medkern.io.dicom.DicomSeries`, the DICOM series directory or the list of its
        files. With a series, a directory or files the RTSTRUCT's frame of reference is checked
        against the image's.
    rois : ROI names to rasterise (default: all).

    Returns
    -------
    ``{ROI name: Image}``, uint8 masks (1 inside) with the reference geometry, in the order of
    the Structure Set ROI Sequence. A name used by several ROIs gets ``#<ROINumber>`` appended.
    ROIs without closed planar contours (points, open polylines) give an empty mask.

    Raises DicomError when the file is not an RTSTRUCT, refers to another frame of reference, or a
    contour lies off the reference grid or across its slices.
    """
    import pydicom

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    grid, frame_uid = _reference(reference)
    if grid.ndim != 3 or grid.is_vector:
        raise ValueError(f"reference must be a 3D scalar image, got a {grid.ndim}D "
                         f"{'vector ' if grid.is_vector else ''}image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-conformant values in real files: checked below
            ds = pydicom.dcmread(p)
    except Exception as exc:  # pydicom raises many types for files that are not DICOM
        raise DicomError(f"{p}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if str(ds.get("Modality", "")) != "RTSTRUCT" or "StructureSetROISequence" not in ds:
        raise DicomError(f"{p}: not an RT Structure Set (Modality {ds.get('Modality', 'absent')!r})")

    rois_by_number: dict[int, tuple[str, str]] = {}
    names = [str(r.get("ROIName", "")) for r in ds.StructureSetROISequence]
    for r, name in zip(ds.StructureSetROISequence, names):
        number = int(r.ROINumber)
        key = name if names.count(name) == 1 else f"{name}#{number}"
        rois_by_number[number] = (key, str(r.get("ReferencedFrameOfReferenceUID", "")))
    if rois is not None:
        wanted = [str(r) for r in ([rois] if isinstance(rois, str) else rois)]
        unknown = sorted(set(wanted) - {k for k, _ in rois_by_number.values()})
        if unknown:
            raise ValueError(f"rois {unknown} are not in {p.name}; it has "
                             f"{[k for k, _ in rois_by_number.values()]}")
    contours_of = {int(rc.ReferencedROINumber): rc.get("ContourSequence") or []
                   for rc in ds.get("ROIContourSequence", [])}

    masks: dict[str, Image] = {}
    for number, (key, roi_frame) in rois_by_number.items():
        if rois is not None and key not in wanted:
            continue
        if frame_uid is not None and roi_frame and roi_frame != frame_uid:
            raise DicomError(f"{p.name}: ROI {key!r} is defined in frame of reference {roi_frame}, the "
                             f"reference image in {frame_uid}; the contours cannot be placed on it")
        masks[key] = grid.with_array(_rasterise(contours_of.get(number, []), grid, key, p.name))
    return masks


def _contour_data(contour: Any) -> np.ndarray:
    """ContourData as float64. The raw DS text is parsed by numpy: pydicom's per-value DS
    objects take ~20 ms per thousand points, which dominates a large structure set."""
    raw = contour.get_item(0x30060050)
    if raw is None:
        return np.zeros(0)
    value = raw.value
    if isinstance(value, (bytes, bytearray)):
        return np.array(bytes(value).replace(b"\\", b" ").split(), dtype=np.float64)
    return np.asarray([float(v) for v in (value or [])], dtype=np.float64)


def _rasterise(contours: Any, grid: Image, roi: str, source: str) -> np.ndarray:
    nk, nj, ni = grid.shape
    polygons: list[np.ndarray] = []
    slices: list[int] = []
    for n, c in enumerate(contours):
        if str(c.get("ContourGeometricType", "CLOSED_PLANAR")) not in _CLOSED:
            continue
        try:
            pts = _contour_data(c)
        except ValueError as exc:
            raise DicomError(f"{source}: ROI {roi!r} contour {n + 1}: ContourData holds a value that is not a "
                             f"number ({exc})") from exc
        if pts.size < 9 or pts.size % 3:
            continue  # fewer than 3 points enclose nothing
        kji = grid.world_to_index(pts.reshape(-1, 3))
        k = int(np.round(np.mean(kji[:, 0])))
        where = f"{source}: ROI {roi!r} contour {n + 1} (z = {pts[2]:.2f} mm)"
        if np.max(np.abs(kji[:, 0] - k)) > _SLICE_TOLERANCE:
            raise DicomError(f"{where} crosses slices {kji[:, 0].min():.2f}..{kji[:, 0].max():.2f} of the reference "
                             "image: it is not in one of its image planes (wrong reference image?)")
        if not 0 <= k < nk:
            raise DicomError(f"{where} lies on slice index {k}, outside the reference grid's 0..{nk - 1} "
                             "(wrong reference image, or the image does not cover the structure)")
        lo, hi = kji[:, 1:].min(axis=0), kji[:, 1:].max(axis=0)
        if np.any(lo < -_IN_PLANE_MARGIN) or hi[0] > nj - 1 + _IN_PLANE_MARGIN or hi[1] > ni - 1 + _IN_PLANE_MARGIN:
            raise DicomError(f"{where} extends to rows {lo[0]:.1f}..{hi[0]:.1f}, columns {lo[1]:.1f}..{hi[1]:.1f}, "
                             f"beyond the reference grid of {nj} x {ni} voxels")
        polygons.append(kji[:, :0:-1])  # (i, j) per vertex
        slices.append(k)
    if not polygons:
        return np.zeros(grid.shape, dtype=np.uint8)
    start = np.concatenate([[0], np.cumsum([len(q) for q in polygons])]).astype(np.int64)
    xy = np.ascontiguousarray(np.concatenate(polygons), dtype=np.float64)
    return fill_polygons(xy, start, np.asarray(slices, dtype=np.int64), grid.shape)
