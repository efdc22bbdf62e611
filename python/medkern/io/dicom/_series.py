"""Series: frames grouped into DicomSeries, the folder scan and reading functions of the package."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medkern._progress import Progress
from medkern.errors import DicomError
from medkern.image import Image
from medkern.io.dicom._geometry import _Layout, _layout
from medkern.io.dicom._header import _read_header
from medkern.io.dicom._pixels import _output_dtype, _read_layout
from medkern.io.dicom._records import _Frame, _Identity, _Unreadable
from medkern.io.dicom._scanning import _describe_key, _iter_files, _part_key, _scan, _Scan


@dataclass(eq=False)
class DicomSeries(_Identity):
    """One image series (or one part of a series split by orientation or frame size).

    ``shape``/``spacing``/``origin``/``direction`` describe the Image that :meth:`read` returns
    (for an irregular series: the recovered grid ``allow_irregular=True`` gives). ``problems``
    lists what makes the series irregular; it is empty for a regular one.
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
        return not self.problems and not self.unreadable and self._layout.fatal is None

    def read(self, allow_irregular: bool = False, *, progress: Any = None) -> Image:
        """The series as an Image (see the module docstring for dtype and recovery rules).
        ``progress`` as for :func:`read_dicom_series` (stages ``"read"`` and ``"values"``)."""
        with Progress(progress, "DicomSeries.read") as prog:
            return _read_layout(self, allow_irregular, prog)

    def summary(self) -> dict[str, Any]:
        """A JSON-able description (what ``medkern info`` prints)."""
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


def list_dicom_series(directory: str | os.PathLike, recursive: bool = True, *,
                      progress: Any = None) -> list[DicomSeries]:
    """The image series under ``directory`` (one entry per SeriesInstanceUID and part).

    Only headers are parsed, of regular files only (named pipes, sockets and devices are
    skipped). Non-DICOM files and DICOM objects without pixel data are skipped; unreadable DICOM
    files, and sub-folders that cannot be listed (each with a
    :class:`medkern.errors.DicomWarning`), are attached to every series of the scan as
    ``unreadable`` (path, reason) pairs: their series is unknown. Series are ordered by patient,
    study and SeriesNumber.

    ``progress``: None, True (a tqdm bar on stderr) or a callable ``progress(stage, fraction)``
    (see :mod:`medkern._progress`), called with stage ``"scan"`` before each file is parsed;
    returning False raises :class:`medkern.Cancelled`.
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
                      progress: Any = None) -> DicomScan:
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


def read_dicom_series(directory: str | os.PathLike, series_uid: str | None = None,
                      allow_irregular: bool = False, recursive: bool = True, *,
                      progress: Any = None) -> Image:
    """Read one DICOM series from ``directory`` as an Image.

    ``series_uid`` picks the series when the directory holds several (``"<uid>#<part>"`` for a
    part of a split series; :func:`list_dicom_series` gives the keys). ``allow_irregular=True``
    recovers irregular series as the module docstring describes instead of raising DicomError.

    ``progress``: None, True (a tqdm bar on stderr) or a callable ``progress(stage, fraction)``
    (see :mod:`medkern._progress`), called with stage ``"scan"`` before each file's header is
    parsed (the first half), ``"read"`` before each file's pixel data is read and ``"values"``
    before the modality LUT; returning False raises :class:`medkern.Cancelled`.
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
    """Read one DICOM file: a 2D image (radiograph, secondary capture), a slice (as a one-slice
    volume with its full geometry), or a multi-frame volume (enhanced CT/MR, RT dose).

    ``series=True`` reads the whole series the file belongs to from the files in its directory.
    Radiographs take PixelSpacing, else ImagerPixelSpacing (spacing at the detector, not corrected
    for magnification); without either the spacing is 1 mm, as in ITK.
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
