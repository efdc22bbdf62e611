"""RT Structure Sets: closed planar contours (LPS mm) rasterised to binary masks on an image grid.

Each contour's points are mapped into the reference image's continuous index space
``(k, j, i)``. A contour belongs to the slice whose index is nearest to its points; every point
must lie within half a slice of it (the contour is in that image plane). The polygons of one slice
are filled together with the even-odd rule at voxel centres, so a contour nested in another cuts a
hole (PS3.3 C.8.8.6.3), by the C++ kernel ``fill_polygons`` (Numba fallback).
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medkern._dispatch import Kernel
from medkern.errors import DicomError, RTStructWarning
from medkern.image import Image
from medkern.io.dicom import DicomSeries

__all__ = ["fill_polygons", "read_rtstruct", "reference_series"]

# Points may lie this far (in voxels) outside the grid in-plane: a contour drawn around the edge
# voxels passes through their outer halves, or along their outer edges (0.5), which DS rounding of
# the coordinates can move by a few 1e-6 mm.
_IN_PLANE_MARGIN = 0.5 + 1e-3
# All points of a contour lie within this many slices of its slice (half a slice either way).
_SLICE_TOLERANCE = 0.5
_CLOSED = {"CLOSED_PLANAR", "CLOSED_PLANAR_XOR"}
# Valid contour types that enclose no area: skipped with an RTStructWarning.
_NOT_AREAS = ("POINT", "OPEN_PLANAR", "OPEN_NONPLANAR")


_fill_kernel = Kernel("fill_polygons", cpp="fill_polygons", numba="medkern._numba.polygon:fill_polygons")
# Vertex indices beyond this convert to integers inexactly (and far beyond any grid).
_MAX_VERTEX_INDEX = 1e15


def fill_polygons(xy: Any, start: Any, slice_of: Any, shape: Sequence[int], backend: str = "auto") -> np.ndarray:
    """Even-odd fill of closed polygons into a ``shape`` uint8 mask (see the module docstring).

    ``xy``: (n_vertices, 2) continuous (i, j) voxel indices; polygon ``p`` is ``xy[start[p]:start[p + 1]]``
    on slice ``slice_of[p]`` (slices off the grid are ignored). Vertices must be finite with
    magnitude <= 1e15 and ``start`` non-decreasing offsets into ``xy`` (ValueError otherwise): every
    backend then stays within the mask.
    """
    pts = np.asarray(xy, dtype=np.float64)
    offsets = np.asarray(start, dtype=np.int64).ravel()
    slices = np.asarray(slice_of, dtype=np.int64).ravel()
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"fill_polygons: xy must have shape (n_vertices, 2), got {pts.shape}")
    if pts.size and not np.all(np.abs(pts) <= _MAX_VERTEX_INDEX):
        raise ValueError(f"fill_polygons: xy must hold finite vertex indices of magnitude <= {_MAX_VERTEX_INDEX:g}")
    if offsets.size != slices.size + 1 or (offsets.size and (offsets[0] < 0 or offsets[-1] > len(pts)
                                                             or np.any(np.diff(offsets) < 0))):
        raise ValueError("fill_polygons: start must be non-decreasing offsets into xy, one more than slice_of")
    if len(shape) != 3 or any(int(n) < 0 for n in shape):
        raise ValueError(f"fill_polygons: shape must be 3 non-negative sizes, got {tuple(shape)}")
    return _fill_kernel(pts, offsets, slices, *(int(n) for n in shape), backend=backend)


def reference_series(reference: Any) -> Any:
    """The image series ``reference`` names: a DicomSeries, the directory of one DICOM series, or
    the list of its files (what both the RTSTRUCT reader and writer accept as the referenced series)."""
    from medkern.io.dicom import DicomSeries, list_dicom_series
    from medkern.io.dicom._series import _choose

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


def read_rtstruct(path: str | os.PathLike,
                  reference: Image | DicomSeries | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                  rois: Sequence[str] | None = None) -> dict[str, Image]:
    """Rasterise the ROIs of an RT Structure Set (RTSTRUCT) onto the grid of its reference image.

    Voxel centres are sampled with the even-odd rule, so nested contours are holes. Contours
    without a ContourGeometricType are read as CLOSED_PLANAR, with a
    ``medkern.errors.RTStructWarning``. Contours that enclose no area are skipped with that
    warning, naming the file and the ROI: POINT, OPEN_PLANAR and OPEN_NONPLANAR contours, closed
    contours of fewer than three points. An ROI left without any area (no contours at all, or
    only skipped ones) gives an empty mask, with that warning.

    Parameters
    ----------
    path : str or os.PathLike
        The RTSTRUCT file.
    reference : Image, DicomSeries, str, os.PathLike or list of path
        The image the contours were drawn on: a 3D :class:`~medkern.Image`, a
        :class:`~medkern.DicomSeries`, the DICOM series directory or the list of its files.
        With a series, a directory or files the RTSTRUCT's frame of reference is checked against
        the image's.
    rois : sequence of str, optional
        ROI names to rasterise (default: all).

    Returns
    -------
    dict of str to Image
        ``{ROI name: mask}``, uint8 masks (1 inside) with the reference geometry, in the order
        of the Structure Set ROI Sequence. A name used by several ROIs gets ``#<ROINumber>``
        appended.

    Raises
    ------
    medkern.DicomError
        Naming the file, and the ROI and contour where there is one: the file is not an
        RTSTRUCT, is cut short, lacks its ROI Contour Sequence, refers to another frame of
        reference, or a contour lies off the reference grid or across its slices; and for a
        corrupt structure set, where reading on would give a silently wrong mask: two ROIs
        sharing a ROINumber, contours whose ReferencedROINumber is absent or names no ROI, two
        contour sets for one ROI, ContourData whose length is not a multiple of 3 or does not
        match NumberOfContourPoints, non-finite coordinates, an unknown ContourGeometricType.
    FileNotFoundError
        No such file.
    ValueError
        The reference is not a 3D scalar image.

    See Also
    --------
    write_rtstruct : Write a structure set from label maps.

    Examples
    --------
    >>> ct = mk.Image(np.zeros((3, 6, 6), np.int16), spacing=(2.0, 1.0, 1.0))
    >>> _ = mk.write_dicom_series(ct, "ct", modality="CT")
    >>> labels = np.zeros((3, 6, 6), np.uint8)
    >>> labels[1, 1:5, 1:5] = 1
    >>> labels[1, 2:4, 2:4] = 0                     # a hole
    >>> _ = mk.write_rtstruct(ct.with_array(labels), "ct", "RS.dcm", names=["GTV"])
    >>> masks = mk.read_rtstruct("RS.dcm", "ct")
    >>> masks["GTV"].array[1]
    array([[0, 0, 0, 0, 0, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 1, 0, 0, 1, 0],
           [0, 1, 0, 0, 1, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 0, 0, 0, 0, 0]], dtype=uint8)
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
            # pydicom decodes elements when they are first read; decode them all here so that an
            # unknown VR or an undecodable value anywhere is this error, not a foreign one later.
            for _ in ds.iterall():
                pass
    except Exception as exc:  # pydicom raises many types for files that are not DICOM
        raise DicomError(f"{p}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if str(ds.get("Modality", "")) != "RTSTRUCT":
        raise DicomError(f"{p}: not an RT Structure Set (Modality {ds.get('Modality', 'absent')!r})")
    cut = _truncation(p.read_bytes(), p.name)
    if cut is not None:
        raise DicomError(cut)
    if "StructureSetROISequence" not in ds:
        raise DicomError(f"{p}: an RT Structure Set without a StructureSetROISequence (corrupt file)")
    if "ROIContourSequence" not in ds and len(ds.StructureSetROISequence):
        raise DicomError(f"{p}: {len(ds.StructureSetROISequence)} ROI(s) but no ROIContourSequence (required by "
                         "the RT ROI Contour module): the file is truncated or corrupt")

    notes: list[str] = []
    masks: dict[str, Image] = {}
    # pydicom warns about non-conformant values as they are accessed: every value used is checked
    # here, so its warnings are noise; medkern's own notes are issued after the block.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rois_by_number = _structure_set_rois(ds, p.name)
        if rois is not None:
            wanted = [str(r) for r in ([rois] if isinstance(rois, str) else rois)]
            unknown = sorted(set(wanted) - {k for k, _ in rois_by_number.values()})
            if unknown:
                raise ValueError(f"rois {unknown} are not in {p.name}; it has "
                                 f"{[k for k, _ in rois_by_number.values()]}")
        contours_of = _roi_contours(ds, rois_by_number, p.name)
        for number, (key, roi_frame) in rois_by_number.items():
            if rois is not None and key not in wanted:
                continue
            if frame_uid is not None and roi_frame and roi_frame != frame_uid:
                raise DicomError(f"{p.name}: ROI {key!r} is defined in frame of reference {roi_frame}, the "
                                 f"reference image in {frame_uid}; the contours cannot be placed on it")
            masks[key] = grid.with_array(_rasterise(contours_of.get(number, []), grid, key, p.name, notes))
    for note in notes:
        warnings.warn(note, RTStructWarning, stacklevel=2)
    return masks


# Explicit VRs whose length field is 4 bytes (after 2 reserved bytes), PS3.5 7.1.2
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


def _truncation(data: bytes, source: str) -> str | None:
    """Where a DICOM Part 10 file (explicit or implicit VR little endian) is cut short, or None.

    pydicom stops quietly at the end of a truncated file, keeping what it read: a structure set
    cut inside its ROI Contour Sequence would lose ROIs' contours without a word. This walks the
    element structure: every defined length must fit in the file and every undefined-length
    sequence or item must be closed by its delimiter. Other transfer syntaxes are not checked."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    walk = _ElementWalk(data)
    try:
        # File meta group (explicit VR little endian), then the data set in its transfer syntax.
        pos, syntax = 132, b""
        while pos + 8 <= walk.size and data[pos:pos + 2] == b"\x02\x00":
            tag, vr, length, value = walk.header(pos, True)
            if value + length > walk.size:
                raise _Cut(pos, "the file meta information")
            if tag == 0x00020010:
                syntax = data[value:value + length].rstrip(b"\x00 ")
            pos = value + length
        if syntax not in (b"1.2.840.10008.1.2", b"1.2.840.10008.1.2.1"):
            return None
        walk.elements(pos, walk.size, syntax == b"1.2.840.10008.1.2.1", 0, None)
    except _Cut as cut:
        return f"{source}: the file ends inside {cut.what} at byte {cut.pos} (of {walk.size}): truncated or corrupt"
    return None


class _ElementWalk:
    """The element structure of a little-endian data set, walked without reading values."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    def header(self, pos: int, explicit: bool) -> tuple[int, bytes | None, int, int]:
        """(tag, VR, length, position of the value) of the element at ``pos``."""
        data, size = self.data, self.size
        if pos + 8 > size:
            raise _Cut(pos, "an element header")
        group, element = struct.unpack_from("<HH", data, pos)
        tag = (group << 16) | element
        if tag in (_ITEM, _ITEM_END, _SEQ_END) or not explicit:
            return tag, None, struct.unpack_from("<I", data, pos + 4)[0], pos + 8
        vr = data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > size:
                raise _Cut(pos, "an element header")
            return tag, vr, struct.unpack_from("<I", data, pos + 8)[0], pos + 12
        return tag, vr, struct.unpack_from("<H", data, pos + 6)[0], pos + 8

    def elements(self, pos: int, end: int | None, explicit: bool, depth: int, closer: int | None) -> int:
        """Walk elements from ``pos`` to ``end`` (None: to ``closer``'s delimiter or the file end)."""
        if depth > 64:
            raise _Cut(pos, "nesting deeper than 64 levels")
        while pos < end if end is not None else True:
            tag, vr, length, value = self.header(pos, explicit)
            if closer is not None and tag == closer:
                return value
            if length == _UNDEFINED:
                pos = self.items(value, explicit, depth + 1)
                continue
            if value + length > self.size:
                raise _Cut(pos, f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) of {length} bytes")
            pos = value + length
        return pos

    def items(self, pos: int, explicit: bool, depth: int) -> int:
        """An undefined-length sequence: items until the sequence delimiter."""
        while True:
            tag, _, length, value = self.header(pos, explicit)
            if tag == _SEQ_END:
                return value
            if tag != _ITEM:
                raise _Cut(pos, "a sequence item (found another tag: corrupt)")
            if length == _UNDEFINED:
                pos = self.elements(value, None, explicit, depth + 1, _ITEM_END)
            elif value + length > self.size:
                raise _Cut(pos, f"a sequence item of {length} bytes")
            else:
                pos = value + length


class _Cut(Exception):
    def __init__(self, pos: int, what: str) -> None:
        super().__init__(what)
        self.pos, self.what = pos, what


def _value(item: Any, keyword: str) -> Any:
    """``item.get(keyword)``, or the element's raw text when pydicom cannot convert it."""
    try:
        return item.get(keyword)
    except (ValueError, TypeError, OverflowError):
        from pydicom.datadict import tag_for_keyword

        raw = item.get_item(tag_for_keyword(keyword))
        value = getattr(raw, "value", None)
        return value.decode("ascii", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def _roi_number(value: Any, where: str) -> int:
    """An ROI number (IS) as int; DicomError naming ``where`` when absent or not an integer."""
    try:
        number = int(str(value).strip()) if value is not None else None
    except ValueError:
        number = None
    if number is None:
        raise DicomError(f"{where} is {'absent' if value is None else repr(str(value))}: not an integer ROI number")
    return number


def _structure_set_rois(ds: Any, source: str) -> dict[int, tuple[str, str]]:
    """ROINumber -> (name key, ReferencedFrameOfReferenceUID), in file order. Two ROIs sharing a
    number cannot be told apart by their contours: DicomError."""
    items = list(ds.StructureSetROISequence)
    names = [str(_value(r, "ROIName") or "") for r in items]
    numbers = [_roi_number(_value(r, "ROINumber"), f"{source}: StructureSetROISequence item {n + 1} ({names[n]!r}) "
                                               "ROINumber") for n, r in enumerate(items)]
    out: dict[int, tuple[str, str]] = {}
    for r, name, number in zip(items, names, numbers):
        if number in out:
            first = names[numbers.index(number)]
            raise DicomError(f"{source}: ROIs {first!r} and {name!r} share ROINumber {number}; their contours "
                             "cannot be told apart (the structure set is corrupt)")
        key = name if names.count(name) == 1 else f"{name}#{number}"
        out[number] = (key, str(_value(r, "ReferencedFrameOfReferenceUID") or ""))
    keys = [k for k, _ in out.values()]
    clash = sorted({k for k in keys if keys.count(k) > 1})
    if clash:
        raise DicomError(f"{source}: ROI names {clash} are ambiguous (a name equals another ROI's "
                         "'<name>#<ROINumber>' key)")
    return out


def _roi_contours(ds: Any, rois_by_number: dict[int, tuple[str, str]], source: str) -> dict[int, list]:
    """ReferencedROINumber -> its ContourSequence items. Contours that belong to no ROI of the
    Structure Set ROI Sequence, or two contour sets for one ROI, are DicomErrors: either would
    make an ROI's mask silently wrong."""
    out: dict[int, list] = {}
    for n, rc in enumerate(ds.get("ROIContourSequence") or []):
        where = f"{source}: ROIContourSequence item {n + 1}"
        number = _roi_number(_value(rc, "ReferencedROINumber"), f"{where} ReferencedROINumber")
        if number not in rois_by_number:
            raise DicomError(f"{where} holds the contours of ROI number {number}, which the "
                             f"StructureSetROISequence does not define (it has ROI numbers "
                             f"{sorted(rois_by_number)}); the structure set is inconsistent")
        if number in out:
            raise DicomError(f"{where}: ROI {rois_by_number[number][0]!r} (ROI number {number}) has a second "
                             "set of contours; the structure set is inconsistent")
        out[number] = list(rc.get("ContourSequence") or [])
    return out


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


def _rasterise(contours: Any, grid: Image, roi: str, source: str, notes: list[str]) -> np.ndarray:
    nk, nj, ni = grid.shape
    polygons: list[np.ndarray] = []
    slices: list[int] = []
    skipped: dict[str, int] = {}  # why -> how many contours
    assumed: dict[str, int] = {}  # read with a default -> how many contours
    for n, c in enumerate(contours):
        name = f"{source}: ROI {roi!r} contour {n + 1}"
        kind = str(_value(c, "ContourGeometricType") or "").strip()
        if not kind:  # Type 1, but absent in some exports: such contours are closed outlines
            key = "contours without ContourGeometricType (read as CLOSED_PLANAR)"
            assumed[key] = assumed.get(key, 0) + 1
            kind = "CLOSED_PLANAR"
        if kind not in _CLOSED:
            if kind not in _NOT_AREAS:
                raise DicomError(f"{name}: ContourGeometricType {kind!r} is not a DICOM contour type "
                                 f"(CLOSED_PLANAR, CLOSED_PLANAR_XOR, {', '.join(_NOT_AREAS)})")
            skipped[f"{kind} contours (not areas)"] = skipped.get(f"{kind} contours (not areas)", 0) + 1
            continue
        try:
            pts = _contour_data(c)
        except ValueError as exc:
            raise DicomError(f"{name}: ContourData holds a value that is not a "
                             f"number ({exc})") from exc
        if pts.size % 3:
            raise DicomError(f"{name}: ContourData holds {pts.size} values, not a multiple of 3 (x, y, z per "
                             "point): the contour is truncated or corrupt")
        declared = _value(c, "NumberOfContourPoints")
        if declared is not None and str(declared).strip() != "":
            try:
                declared_n = int(str(declared).strip())
            except ValueError:
                declared_n = -1
            if declared_n != pts.size // 3:
                raise DicomError(f"{name}: NumberOfContourPoints is {str(declared).strip()!r} but ContourData "
                                 f"holds {pts.size // 3} points: the contour is truncated or corrupt")
        if not np.all(np.isfinite(pts)):
            bad = int(np.count_nonzero(~np.isfinite(pts)))
            raise DicomError(f"{name}: ContourData holds {bad} non-finite value(s) (NaN or infinity)")
        if pts.size < 9:
            key = "closed contours with fewer than 3 points (they enclose nothing)"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            kji = grid.world_to_index(pts.reshape(-1, 3))
        if not np.all(np.isfinite(kji)):
            raise DicomError(f"{name}: points lie astronomically far from the reference grid "
                             "(wrong reference image, or corrupt coordinates)")
        k = int(np.round(np.mean(kji[:, 0])))
        where = f"{name} (z = {pts[2]:.2f} mm)"
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
    if assumed:
        notes.append(f"{source}: ROI {roi!r}: " + "; ".join(f"{v} {k}" for k, v in assumed.items()))
    if skipped or not polygons:
        what = "; ".join(f"{v} {k}" for k, v in skipped.items())
        if not polygons:
            why = "it has no contours" if not contours else f"of its {len(contours)} contour(s) none is an area"
            message = f"{source}: ROI {roi!r} gives an empty mask: {why}" + (f" ({what} skipped)" if what else "")
        else:
            message = f"{source}: ROI {roi!r}: skipped {what}"
        notes.append(message)
    if not polygons:
        return np.zeros(grid.shape, dtype=np.uint8)
    start = np.concatenate([[0], np.cumsum([len(q) for q in polygons])]).astype(np.int64)
    xy = np.ascontiguousarray(np.concatenate(polygons), dtype=np.float64)
    return fill_polygons(xy, start, np.asarray(slices, dtype=np.int64), grid.shape)
