"""Series: frames grouped into DicomSeries, the folder scan and reading functions of the package."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medkern._docstrings import fill_doc
from medkern._progress import Progress
from medkern._typing import ProgressArg
from medkern.errors import DicomError
from medkern.image import Image
from medkern.io.dicom._geometry import _Layout, _layout
from medkern.io.dicom._header import _read_header
from medkern.io.dicom._pixels import _output_dtype, _read_layout
from medkern.io.dicom._records import _Frame, _Identity, _Unreadable
from medkern.io.dicom._scanning import _describe_key, _iter_files, _part_key, _Scan, _scan


@dataclass(eq=False)
class DicomSeries(_Identity):
    """One image series (or one part of a series split by orientation or frame size).

    Made by :func:`list_dicom_series` from the headers alone; :meth:`read` reads the pixels.

    Parameters
    ----------
    series_uid : str
        SeriesInstanceUID.
    modality : str
        Modality (CT, MR, PT...).
    description : str
        SeriesDescription.
    series_number : int or None
        SeriesNumber.
    patient_id : str
        PatientID.
    study_uid : str
        StudyInstanceUID.
    frame_of_reference_uid : str
        FrameOfReferenceUID.
    sop_class : str
        SOP Class UID of the images.
    transfer_syntax : str
        Transfer Syntax UID of the first file.
    part : int or None
        The part number when the series is split into parts whose frames differ in
        orientation, size or pixel format; None otherwise.
    files : tuple of pathlib.Path
        The files, in slice order.
    n_frames : int
        Number of frames.
    shape : tuple of int
        Shape of the Image :meth:`read` returns (for an irregular series: the recovered grid
        ``allow_irregular=True`` gives).
    spacing : tuple of float
        Its spacing in mm, array-axis order.
    origin : numpy.ndarray
        Its origin, LPS mm.
    direction : numpy.ndarray
        Its direction matrix.
    dtype : str
        Its dtype.
    spacing_source : str
        The attribute the in-plane spacing came from (PixelSpacing, ImagerPixelSpacing...).
    problems : tuple of str
        What makes the series irregular; empty for a regular one.
    unreadable : tuple of tuple
        ``(path, reason)`` pairs of files of the scan that could not be read (their series is
        unknown).

    See Also
    --------
    list_dicom_series : Lists them.
    read_dicom_series : Reads one series of a folder.

    Examples
    --------
    >>> import os
    >>> os.mkdir("study")
    >>> ct = mk.Image(np.full((3, 4, 4), 40, np.int16), spacing=(2.0, 0.8, 0.8), origin=(-100, -120, 50))
    >>> files = mk.write_dicom_series(ct, "study/ct", modality="CT", series_description="head")
    >>> mr = mk.Image(np.ones((2, 4, 4), np.float32), spacing=(3.0, 1.0, 1.0))
    >>> _ = mk.write_dicom_series(mr, "study/mr", modality="MR", source="study/ct", series_number=2)
    >>> ct_series, mr_series = mk.list_dicom_series("study")
    >>> ct_series.modality, ct_series.description, ct_series.shape, ct_series.regular
    ('CT', 'head', (3, 4, 4), True)
    >>> ct_series.read()
    Image(shape=(3, 4, 4), dtype=int16, spacing=(2, 0.8, 0.8), origin=(-100, -120, 50), numpy)
    """

    part: int | None
    files: tuple[Path, ...]
    n_frames: int
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: np.ndarray
    direction: np.ndarray
    dtype: str
    spacing_source: str
    problems: tuple[str, ...]
    unreadable: tuple[tuple[Path, str], ...]
    _layout: _Layout = field(repr=False)

    @property
    def key(self) -> str:
        """The ``series_uid`` argument that selects this series: ``uid``, or ``uid#part`` when split."""
        return self.series_uid if self.part is None else f"{self.series_uid}#{self.part}"

    @property
    def regular(self) -> bool:
        """Whether the series reads without recovery: no problems and no unreadable files."""
        return not self.problems and not self.unreadable and self._layout.fatal is None

    @fill_doc
    def read(self, allow_irregular: bool = False, *, progress: ProgressArg | Progress = None) -> Image:
        """Read the series as an Image.

        Parameters
        ----------
        allow_irregular : bool, optional
            Recover an irregular series onto a regular grid instead of raising (see
            :func:`read_dicom_series`).
        %(progress)s
            Stages ``"read"`` and ``"values"``.

        Returns
        -------
        Image
            The volume in array order ``[k, j, i]`` with LPS geometry; dtype as described in
            :func:`read_dicom_series`.

        Raises
        ------
        medkern.DicomError
            The series is irregular (without ``allow_irregular``) or a file cannot be read.
        medkern.Cancelled
            ``progress`` returned False.

        See Also
        --------
        read_dicom_series : Scan a folder and read one series.

        Examples
        --------
        >>> import os
        >>> os.mkdir("study")
        >>> ct = mk.Image(np.full((3, 4, 4), 40, np.int16), spacing=(2.0, 0.8, 0.8), origin=(-100, -120, 50))
        >>> files = mk.write_dicom_series(ct, "study/ct", modality="CT", series_description="head")
        >>> mr = mk.Image(np.ones((2, 4, 4), np.float32), spacing=(3.0, 1.0, 1.0))
        >>> _ = mk.write_dicom_series(mr, "study/mr", modality="MR", source="study/ct", series_number=2)
        >>> (ct_series, _) = mk.list_dicom_series("study")
        >>> ct_series.read().same_geometry(ct)
        True
        """
        with Progress(progress, "DicomSeries.read") as prog:
            return _read_layout(self, allow_irregular, prog)

    def summary(self) -> dict[str, Any]:
        """Describe the series as a JSON-able dict (what ``medkern info`` prints).

        Returns
        -------
        dict
            UIDs, modality, description, numbers of files and frames, shape, dtype, spacing,
            origin, direction, directory, and ``problems`` when there are any.

        See Also
        --------
        list_dicom_series

        Examples
        --------
        >>> import os
        >>> os.mkdir("study")
        >>> ct = mk.Image(np.full((3, 4, 4), 40, np.int16), spacing=(2.0, 0.8, 0.8), origin=(-100, -120, 50))
        >>> files = mk.write_dicom_series(ct, "study/ct", modality="CT", series_description="head")
        >>> mr = mk.Image(np.ones((2, 4, 4), np.float32), spacing=(3.0, 1.0, 1.0))
        >>> _ = mk.write_dicom_series(mr, "study/mr", modality="MR", source="study/ct", series_number=2)
        >>> info = mk.list_dicom_series("study")[0].summary()
        >>> info["modality"], info["shape"], info["spacing"]
        ('CT', [3, 4, 4], [2.0, 0.8, 0.8])
        """
        out: dict[str, Any] = {
            "series_uid": self.key,
            "modality": self.modality,
            "description": self.description,
            "series_number": self.series_number,
            "patient_id": self.patient_id,
            "study_uid": self.study_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "sop_class": self.sop_class,
            "transfer_syntax": self.transfer_syntax,
            "n_files": len(self.files),
            "n_frames": self.n_frames,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "spacing": [round(float(s), 6) for s in self.spacing],
            "spacing_source": self.spacing_source,
            "origin": [round(float(o), 6) for o in self.origin],
            "direction": np.round(self.direction, 6).tolist(),
            "directory": str(os.path.commonpath([str(p.parent) for p in self.files])),
        }
        if self.problems or self.unreadable or self._layout.fatal:
            out["problems"] = list(self.problems) + [f"unreadable {p.name}: {why}" for p, why in self.unreadable]
            if self._layout.fatal:
                out["problems"].append(self._layout.fatal)
        return out


def _make_series(uid: str, part: int | None, frames: list[_Frame],
                 unreadable: Sequence[tuple[Path, str]]) -> DicomSeries:
    layout = _layout(frames)
    f = layout.frames[0].file
    interpolated = layout.interpolation is not None or layout.shifts is not None
    dtype = np.dtype(np.float32) if interpolated else _output_dtype(layout.frames)
    # Slice order first; files whose frames were dropped as duplicates still belong to the series.
    files = tuple(dict.fromkeys([fr.file.path for fr in layout.frames] + [fr.file.path for fr in frames]))
    identity = {field.name: getattr(f, field.name) for field in dataclasses.fields(_Identity)}
    return DicomSeries(
        **identity, part=part, files=files, n_frames=len(frames), shape=layout.shape,
        spacing=tuple(float(s) for s in layout.spacing), origin=layout.origin, direction=layout.direction,
        dtype=dtype.name, spacing_source=layout.frames[0].spacing_source, problems=tuple(layout.problems),
        unreadable=tuple(unreadable), _layout=layout,
    )


def _group(scan: _Scan) -> list[DicomSeries]:
    by_uid: dict[str, list[_Frame]] = {}
    for fr in scan.frames:
        by_uid.setdefault(fr.file.series_uid, []).append(fr)
    series = []
    for uid, frames in by_uid.items():
        parts: dict[tuple, list[_Frame]] = {}
        for fr in frames:
            parts.setdefault(_part_key(fr), []).append(fr)
        ordered = sorted(parts.values(), key=lambda fs: (-len(fs), str(fs[0].file.path)))
        for n, part_frames in enumerate(ordered, start=1):
            series.append(_make_series(uid, n if len(ordered) > 1 else None, part_frames, ()))
    series.sort(key=lambda s: (s.patient_id, s.study_uid, s.series_number if s.series_number is not None
                               else 1 << 30, s.series_uid, s.part or 0))
    return series


def _check_directory(directory: str | os.PathLike) -> Path:
    d = Path(directory)
    if not d.exists():
        raise FileNotFoundError(f"{d}: no such directory")
    if not d.is_dir():
        raise ValueError(f"directory must be a directory of DICOM files, got the file {d}; "
                         "use read_dicom_file for one file")
    return d


@fill_doc
def list_dicom_series(directory: str | os.PathLike, recursive: bool = True, *,
                      progress: ProgressArg = None) -> list[DicomSeries]:
    """List the image series under a folder, one entry per SeriesInstanceUID and part.

    Only headers are parsed, of regular files only (named pipes, sockets and devices are
    skipped). Non-DICOM files and DICOM objects without pixel data (DICOMDIR, RTSTRUCT, SR, RT
    plans) are skipped; unreadable DICOM files, and sub-folders that cannot be listed (each with
    a ``medkern.errors.DicomWarning``), are attached to every series of the scan as
    ``unreadable`` (path, reason) pairs: their series is unknown. A series whose frames differ
    in orientation, size or pixel format is split into parts, addressed as ``"<uid>#<part>"``.

    Parameters
    ----------
    directory : str or os.PathLike
        The folder to scan.
    recursive : bool, optional
        Scan sub-folders too (default); links to folders are not followed.
    %(progress)s
        Called with stage ``"scan"`` before each file is parsed.

    Returns
    -------
    list of DicomSeries
        Ordered by patient, study and SeriesNumber.

    Raises
    ------
    FileNotFoundError
        ``directory`` does not exist.
    ValueError
        ``directory`` is a file.
    medkern.Cancelled
        ``progress`` returned False.

    See Also
    --------
    read_dicom_series : Read one series.
    DicomSeries : What each entry holds.

    Examples
    --------
    >>> import os
    >>> os.mkdir("study")
    >>> ct = mk.Image(np.full((3, 4, 4), 40, np.int16), spacing=(2.0, 0.8, 0.8), origin=(-100, -120, 50))
    >>> files = mk.write_dicom_series(ct, "study/ct", modality="CT", series_description="head")
    >>> mr = mk.Image(np.ones((2, 4, 4), np.float32), spacing=(3.0, 1.0, 1.0))
    >>> _ = mk.write_dicom_series(mr, "study/mr", modality="MR", source="study/ct", series_number=2)
    >>> [(s.modality, s.series_number, s.shape) for s in mk.list_dicom_series("study")]
    [('CT', 1, (3, 4, 4)), ('MR', 2, (2, 4, 4))]
    """
    d = _check_directory(directory)
    prog = Progress(progress, "list_dicom_series")
    with prog:
        scan = _scan(_iter_files(d, recursive), prog)
        series = _group(scan)
    if scan.unreadable:
        for s in series:
            s.unreadable = tuple(scan.unreadable)
    return series


@dataclass(frozen=True)
class DicomScan:
    """What :func:`scan_dicom_folder` found under a folder.

    ``series``: the image series, ordered and split as :func:`list_dicom_series` gives them.
    ``unreadable``: (path, reason) pairs of the files that are (or claim to be) DICOM images but
    cannot be read, and of the sub-folders that cannot be listed; their series is unknown, so
    they are kept here even when no series was found. ``skipped``: how many files are not DICOM
    images (not DICOM, or DICOM objects without pixel data).
    """

    series: tuple[DicomSeries, ...]
    unreadable: tuple[tuple[Path, str], ...]
    skipped: int


def scan_dicom_folder(directory: str | os.PathLike, recursive: bool = True, *,
                      progress: ProgressArg = None) -> DicomScan:
    """The header scan behind :func:`list_dicom_series`, with what it could not read.

    For callers that must account for every file of a folder (a study whose every file is
    damaged still exists): the series each carry the scan's ``unreadable`` entries, as from
    :func:`list_dicom_series`, and the scan keeps them even when it found no series. A
    ``directory`` that exists but is not a folder that can be listed is one ``unreadable`` entry
    (with a :class:`medkern.errors.DicomWarning`), not an error. ``progress`` as for
    :func:`list_dicom_series`.
    """
    d = Path(directory)
    if not d.exists():
        raise FileNotFoundError(f"{d}: no such directory")
    with Progress(progress, "scan_dicom_folder") as prog:
        scan = _scan(_iter_files(d, recursive), prog)
        series = _group(scan)
    if scan.unreadable:
        for s in series:
            s.unreadable = tuple(scan.unreadable)
    return DicomScan(tuple(series), tuple(scan.unreadable), scan.skipped)


@fill_doc
def read_dicom_series(directory: str | os.PathLike, series_uid: str | None = None,
                      allow_irregular: bool = False, recursive: bool = True, *,
                      progress: ProgressArg = None) -> Image:
    """Read one DICOM series from a folder as an Image, with its LPS geometry.

    Slices are ordered by ImagePositionPatient projected on the slice normal (never by
    InstanceNumber or file name) and the slice spacing comes from those positions, as ITK does
    (SliceThickness is not a spacing; a single slice takes SpacingBetweenSlices, else 1 mm).
    ``direction[:, 2]`` is the row cosine (along i), ``direction[:, 1]`` the column cosine (along
    j), ``direction[:, 0]`` the slice normal; ``origin`` is the position of the first slice.

    Parameters
    ----------
    directory : str or os.PathLike
        The folder holding the series' files.
    series_uid : str, optional
        Picks the series when the folder holds several (``"<uid>#<part>"`` for a part of a
        split series; :func:`list_dicom_series` gives the keys).
    allow_irregular : bool, optional
        Recover an irregular series instead of raising (see Notes).
    recursive : bool, optional
        Scan sub-folders too (default).
    %(progress)s
        Called with stage ``"scan"`` before each file's header is parsed (the first half),
        ``"read"`` before each file's pixel data is read and ``"values"`` before the modality
        LUT.

    Returns
    -------
    Image
        The volume in array order ``[k, j, i]``. Dtype: stored values are inverted for
        MONOCHROME1, then RescaleSlope/RescaleIntercept are applied per frame: no rescale in
        any frame keeps the stored dtype; integral slopes and intercepts give int16 when the
        full stored range maps into int16, else int32 (as SimpleITK/GDCM); otherwise float32. A
        recovered volume is float32 whenever it was interpolated.

    Raises
    ------
    medkern.DicomError
        No image in the folder; several series without ``series_uid`` (the message lists the
        keys); an unknown ``series_uid``; an irregular series without ``allow_irregular``; an
        unreadable or malformed file (the message names the file and the attribute at fault).
    FileNotFoundError
        ``directory`` does not exist.
    ValueError
        ``directory`` is a file.
    TypeError
        ``series_uid`` is not a str.
    medkern.Cancelled
        ``progress`` returned False.

    See Also
    --------
    list_dicom_series : The series of a folder and their keys.
    read_dicom_file : Read one file.
    medkern.read : Read any format.

    Notes
    -----
    Irregular series: duplicate slice positions, missing slices or varying spacing, in-plane
    drift of the slice positions (gantry tilt), unreadable or truncated files. With
    ``allow_irregular=True`` of slices at the same position the one with the lowest
    InstanceNumber is kept, unreadable files are left out, and the slices are resampled onto a
    regular grid spanning the first to the last slice (linear interpolation along the normal);
    tilted slices are shifted in-plane onto the grid of the first slice, and voxels no slice
    covers get the series minimum. Reading never hangs, never allocates what a file merely
    claims and never returns pixels the header does not account for: sizes and header
    attributes are checked before anything is allocated (``medkern.io.dicom`` lists the
    checks).

    Examples
    --------
    >>> import os
    >>> os.mkdir("study")
    >>> ct = mk.Image(np.full((3, 4, 4), 40, np.int16), spacing=(2.0, 0.8, 0.8), origin=(-100, -120, 50))
    >>> files = mk.write_dicom_series(ct, "study/ct", modality="CT", series_description="head")
    >>> mr = mk.Image(np.ones((2, 4, 4), np.float32), spacing=(3.0, 1.0, 1.0))
    >>> _ = mk.write_dicom_series(mr, "study/mr", modality="MR", source="study/ct", series_number=2)
    >>> try:
    ...     mk.read_dicom_series("study")
    ... except mk.DicomError as exc:
    ...     print(str(exc).splitlines()[0])
    study holds 2 image series; pass series_uid= one of:
    >>> mr_key = mk.list_dicom_series("study")[1].key
    >>> mk.read_dicom_series("study", series_uid=mr_key)
    Image(shape=(2, 4, 4), dtype=int16, spacing=(3, 1, 1), origin=(0, 0, 0), numpy)
    """
    d = _check_directory(directory)
    prog = Progress(progress, "read_dicom_series")
    with prog:
        scan_span, read_span = prog.split((1.0, 1.0))
        scan = _scan(_iter_files(d, recursive), scan_span)
        series = _group(scan)
        if not series:
            raise DicomError(_no_images_message(d, scan))
        chosen = _choose(series, series_uid, d)
        chosen.unreadable = tuple(scan.unreadable)
        return chosen.read(allow_irregular=allow_irregular, progress=read_span)


def _no_images_message(where: Path, scan: _Scan) -> str:
    text = f"{where}: no DICOM image files found ({scan.skipped} files skipped: not DICOM or without pixel data"
    if scan.unreadable:
        text += f"; unreadable: {', '.join(f'{p.name} ({why})' for p, why in scan.unreadable[:4])}"
    return text + ")"


def _series_line(s: DicomSeries) -> str:
    return (f"  {s.key}: {s.modality} {s.description!r}, {s.n_frames} frames {'x'.join(map(str, s.shape))}"
            f" in {s.files[0].parent}")


def _choose(series: list[DicomSeries], series_uid: str | None, where: Path) -> DicomSeries:
    if series_uid is None:
        if len(series) == 1:
            return series[0]
        uids = {s.series_uid for s in series}
        what = (f"{len(series)} parts of one series that differ in orientation or frame size"
                if len(uids) == 1 else f"{len(series)} image series")
        raise DicomError(f"{where} holds {what}; pass series_uid= one of:\n"
                         + "\n".join(_series_line(s) for s in series))
    if not isinstance(series_uid, str):
        raise TypeError(f"series_uid must be a str (a key from list_dicom_series), got {type(series_uid).__name__}")
    matches = [s for s in series if s.key == series_uid]
    if matches:
        return matches[0]
    parts = [s for s in series if s.series_uid == series_uid]
    if parts:
        raise DicomError(f"series {series_uid} in {where} is split into {len(parts)} parts whose frames differ "
                         "(" + "; ".join(_describe_key(_part_key(p._layout.frames[0]),
                                                       [_part_key(q._layout.frames[0]) for q in parts]) for p in parts)
                         + "); there is no single grid for them. Pass series_uid= one of:\n"
                         + "\n".join(_series_line(s) for s in parts))
    raise DicomError(f"series_uid {series_uid!r} not found in {where}; available:\n"
                     + "\n".join(_series_line(s) for s in series))


def read_dicom_file(path: str | os.PathLike, series: bool = False, allow_irregular: bool = False) -> Image:
    """Read one DICOM file: a 2D image, a slice, or a multi-frame volume (enhanced CT/MR, RT dose).

    A 2D image is a radiograph or secondary capture; a slice of a series reads as a one-slice
    volume with its full geometry. Radiographs take PixelSpacing, else ImagerPixelSpacing
    (spacing at the detector, not corrected for magnification); without either the spacing is
    1 mm, as in ITK. Dtype rules as in :func:`read_dicom_series`.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    series : bool, optional
        Read the whole series the file belongs to from the files in its directory.
    allow_irregular : bool, optional
        Recover an irregular series or frame set (see :func:`read_dicom_series`).

    Returns
    -------
    Image
        The image with its LPS geometry.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        ``path`` is a directory.
    medkern.DicomError
        An unreadable or malformed file (chained to the foreign exception behind it), a DICOM
        object without pixel data, or frames that differ in orientation or size.

    See Also
    --------
    read_dicom_series : Read a series from a folder.
    medkern.read : Read any format.

    Examples
    --------
    >>> import os
    >>> os.mkdir("study")
    >>> ct = mk.Image(np.full((3, 4, 4), 40, np.int16), spacing=(2.0, 0.8, 0.8), origin=(-100, -120, 50))
    >>> files = mk.write_dicom_series(ct, "study/ct", modality="CT", series_description="head")
    >>> mr = mk.Image(np.ones((2, 4, 4), np.float32), spacing=(3.0, 1.0, 1.0))
    >>> _ = mk.write_dicom_series(mr, "study/mr", modality="MR", source="study/ct", series_number=2)
    >>> mk.read_dicom_file(files[0])                  # one slice, full geometry
    Image(shape=(1, 4, 4), dtype=int16, spacing=(2, 0.8, 0.8), origin=(-100, -120, 50), numpy)
    >>> mk.read_dicom_file(files[0], series=True).shape
    (3, 4, 4)
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if p.is_dir():
        raise ValueError(f"path must be a DICOM file, got the directory {p}; use read_dicom_series")
    try:
        header = _read_header(p)
    except _Unreadable as exc:
        # Chained to the foreign exception behind it (zlib.error, struct.error, ...) when there is one.
        raise DicomError(f"{p}: unreadable DICOM file ({exc})") from (exc.__cause__ or exc)
    if header is None:
        raise DicomError(f"{p}: not a DICOM image (not DICOM, or a DICOM object without pixel data)")
    f, frames = header
    if series:
        scan = _scan(_iter_files(p.parent, recursive=False))
        # The file parsed above, so the scan of its directory puts it in exactly one part (unless
        # it changed in between).
        chosen = next((s for s in _group(scan) if p in s.files), None)
        if chosen is None:
            raise DicomError(f"{p}: not found again when its directory {p.parent} was scanned (did it change?)")
        chosen.unreadable = tuple(scan.unreadable)
        return chosen.read(allow_irregular=allow_irregular)
    parts: dict[tuple, list[_Frame]] = {}
    for fr in frames:
        parts.setdefault(_part_key(fr), []).append(fr)
    if len(parts) > 1:
        raise DicomError(f"{p}: its {len(frames)} frames differ in orientation or size ("
                         + "; ".join(_describe_key(k, list(parts)) for k in parts) + "); no single grid holds them")
    return _make_series(f.series_uid, None, frames, ()).read(allow_irregular=allow_irregular)
