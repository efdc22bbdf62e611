"""DICOM images: series discovery, geometry and pixel decoding on top of pydicom.

How a directory becomes volumes
-------------------------------
* Every file is parsed once with ``stop_before_pixels``. Files that are not DICOM, and DICOM
  objects without pixel data (DICOMDIR, RTSTRUCT, SR, RT plans), are not images and are skipped.
  Files that look like DICOM but cannot be parsed, and uncompressed files whose pixel data is
  shorter than Rows x Columns x frames says, are reported as unreadable.
* Frames (a single-frame file is one frame; enhanced CT/MR multi-frame files carry one per item of
  the Per-frame Functional Groups) are grouped by SeriesInstanceUID, and a series is split into
  parts when its frames differ in ImageOrientationPatient, Rows/Columns, PixelSpacing or pixel
  format: there is no single grid for them. A split series is addressed as ``"<uid>#<part>"``.
* Slices are ordered by ImagePositionPatient projected on the slice normal
  ``n = row_cosine x column_cosine`` (never by InstanceNumber or file name), and the slice spacing
  is ``(t_last - t_first) / (n_slices - 1)`` from those projections, as ITK does; SliceThickness
  is not a spacing. A single slice takes SpacingBetweenSlices, else 1 mm (as ITK).
* The geometry follows the medkern convention: array axes ``[k, j, i]`` = (slice, row, column);
  ``direction[:, 2]`` is the row cosine (along i), ``direction[:, 1]`` the column cosine (along j),
  ``direction[:, 0]`` the slice normal; ``origin`` is the position of the first slice.

Pixel values (output dtype)
---------------------------
Stored values are inverted first for MONOCHROME1 (``(2**BitsStored - 1) - v`` unsigned,
``-1 - v`` signed, as GDCM does), then RescaleSlope/RescaleIntercept are applied per frame:

* no rescale in any frame: the stored dtype (uint8/int8/uint16/int16/uint32/int32);
* integral slopes and intercepts: int16 when the full stored range (from BitsStored) maps into
  int16, else int32 (SimpleITK/GDCM choose the same way);
* otherwise float32 (computed in float64, rounded once).

Irregular series
----------------
Duplicate slice positions, missing slices or varying spacing (a gap more than
``SPACING_TOLERANCE`` away from the mean spacing), in-plane drift of the slice positions (gantry
tilt), unreadable or truncated files raise :class:`medkern.DicomError` naming the files. With
``allow_irregular=True`` the series is recovered instead:

* of slices at the same position the one with the lowest InstanceNumber is kept;
* unreadable or truncated files are left out, their slices count as missing;
* the slices are resampled onto a regular grid spanning the first to the last slice, with the
  smallest gap at least half the median gap as spacing (adjusted to fit the span exactly), by
  linear interpolation along the slice normal between the two nearest slices;
* gantry tilt: each slice is shifted in-plane onto the grid of the first slice (bilinear); voxels
  no slice covers get the series minimum (air in CT).

A recovered volume is float32 whenever it was interpolated.

Where SimpleITK (GDCM) reads differently
----------------------------------------
Checked in tests/test_dicom.py against every pydicom / pydicom-data test file, the IBSI series
and generated oblique, flipped and shuffled series; geometry otherwise agrees to 1e-4 mm.

* It stacks files of one SeriesInstanceUID even when their orientations differ (localizers), and
  reads missing slices or uneven spacing silently with the mean spacing; medkern splits or raises.
* It keeps enhanced multi-frame frames in stored order; medkern sorts them along the normal
  (the same voxels in the world, the slice axis reversed).
* It returns float64 for non-integral rescales (medkern float32), ignores RT Dose
  DoseGridScaling, misreads big-endian 32-bit dose and 16/32-bit RGB RLE, scales 16-bit palette
  colours to 8 bits for some encodings, and gives 1-bit SEG frames as 0/255 (medkern 0/1).
"""

from __future__ import annotations

import os
import struct
import sys
import warnings
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from medkern._dispatch import Kernel, get_num_threads
from medkern._progress import NO_PROGRESS, Progress
from medkern.errors import DicomError
from medkern.image import Image

__all__ = [
    "DicomSeries",
    "SPACING_TOLERANCE",
    "list_dicom_series",
    "read_dicom_file",
    "read_dicom_series",
]

# A slice gap may differ from the mean spacing by this fraction before the series counts as
# irregular: DS values are often rounded to 0.01 mm, which is 2% of a 0.5 mm spacing.
SPACING_TOLERANCE = 0.05
# Slices closer than this along the normal are at the same position (a repeat, not a slice).
DUPLICATE_TOLERANCE_MM = 0.01
# In-plane drift of the slice positions larger than this fraction of a pixel is gantry tilt.
TILT_TOLERANCE = 0.05
# Orientation cosines equal to this many decimals belong to the same part of a series.
_ORIENTATION_DECIMALS = 4

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}  # uid -> implicit VR
_DEFLATED = "1.2.840.10008.1.2.1.99"
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"}


# ---------------------------------------------------------------------------------- headers
@dataclass
class _Identity:
    """Which series, study and patient an image belongs to (shared by files and series)."""

    series_uid: str
    modality: str
    description: str
    series_number: int | None
    patient_id: str
    study_uid: str
    frame_of_reference_uid: str
    sop_class: str
    transfer_syntax: str


@dataclass(eq=False)
class _File(_Identity):
    """What the header of one image file says (parsed once, without the pixel data)."""

    path: Path
    rows: int
    cols: int
    n_frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    float_pixels: bool  # Float / Double Float Pixel Data (parametric maps)
    monochrome1: bool
    palette: bool
    instance_number: int | None
    slice_spacing_hint: float | None  # SpacingBetweenSlices (a single slice has no other spacing)
    pixel_offset: int | None  # byte offset of native little-endian pixel data, else None


@dataclass(eq=False)
class _Frame:
    file: _File
    index: int  # frame number inside the file
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None  # row cosine, column cosine
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) in mm
    spacing_source: str
    slope: float
    intercept: float

    @property
    def name(self) -> str:
        return self.file.path.name + (f"[frame {self.index}]" if self.file.n_frames > 1 else "")


class _Unreadable(Exception):
    pass


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    """n finite floats from a DS/FD value or multi-value, else None (absent or malformed)."""
    if value is None:
        return None
    items = [value] if isinstance(value, (str, bytes, int, float)) else list(value)
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _first_item(ds: Any, keyword: str) -> Any:
    seq = ds.get(keyword) if ds is not None else None
    return seq[0] if seq else None


class _Attrs:
    """Attribute values read from the raw element bytes of a header.

    pydicom converts a raw element into a value object on first access (VR classes, validation,
    character sets), ~80 us per element, which was most of the time spent on a series' headers.
    The numeric and UID attributes needed here are parsed from their bytes directly; text that
    may use a character set goes through pydicom.
    """

    __slots__ = ("ds", "endian")

    def __init__(self, ds: Any, little_endian: bool = True) -> None:
        self.ds = ds
        self.endian = "<" if little_endian else ">"

    def _raw(self, tag: int) -> Any:
        if self.ds is None:
            return None
        elem = self.ds.get_item(tag)
        return None if elem is None else elem.value

    def numbers(self, tag: int, n: int) -> tuple[float, ...] | None:
        """n finite numbers of a DS/IS attribute, else None (absent or malformed)."""
        value = self._raw(tag)
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).strip(b" \x00").split(b"\\") if value.strip(b" \x00") else None
        return _floats(value, n)

    def integer(self, tag: int) -> int | None:
        v = self.numbers(tag, 1)
        return int(v[0]) if v is not None else None

    def us(self, tag: int) -> int | None:
        """An unsigned short (US) attribute."""
        value = self._raw(tag)
        if isinstance(value, (bytes, bytearray)):
            return struct.unpack(self.endian + "H", value[:2])[0] if len(value) >= 2 else None
        return None if value is None else int(value if not isinstance(value, (list, tuple)) else value[0])

    def text(self, tag: int) -> str:
        """A UI/CS attribute (ASCII by definition, PS3.5 6.2)."""
        value = self._raw(tag)
        if isinstance(value, (bytes, bytearray)):
            return bytes(value).decode("ascii", "replace").strip(" \x00")
        return "" if value is None else str(value).strip()

    def string(self, tag: int) -> str:
        """Text that may be in the dataset's character set (LO, SH): decoded by pydicom unless
        the data set uses the default repertoire (no SpecificCharacterSet, or ISO_IR 6)."""
        if self.ds is None:
            return ""
        if self.text(0x00080005) in ("", "ISO_IR 6"):
            return self.text(tag)
        elem = self.ds.get(tag)
        return "" if elem is None else str(elem.value).strip()


def _pixel_spacing(a: _Attrs) -> tuple[tuple[float, float] | None, str]:
    """PixelSpacing, else ImagerPixelSpacing (radiographs: at the detector plane), as (row, col)."""
    for tag, keyword in ((0x00280030, "PixelSpacing"), (0x00181164, "ImagerPixelSpacing")):
        sp = a.numbers(tag, 2)
        if sp is not None and sp[0] > 0 and sp[1] > 0:
            return (sp[0], sp[1]), keyword
    return None, "absent (1 mm assumed)"


def _native_pixel_offset(fp: Any, implicit: bool, expected: int, path: Path) -> int | None:
    """Offset of the pixel bytes when fp stands at a native Pixel Data element (else None).

    Raises _Unreadable when the element is shorter than the image needs (a truncated file).
    """
    start = fp.tell()
    head = fp.read(8 if implicit else 12)
    if len(head) < 8:
        return None
    group, elem = struct.unpack("<HH", head[:4])
    if (group, elem) != (0x7FE0, 0x0010):
        return None
    if implicit:
        length = struct.unpack("<I", head[4:8])[0]
        offset = start + 8
    else:
        if head[4:6] not in _LONG_VRS or len(head) < 12:
            return None
        length = struct.unpack("<I", head[8:12])[0]
        offset = start + 12
    if length == 0xFFFFFFFF:
        return None
    available = os.path.getsize(path) - offset
    if min(length, available) < expected:
        raise _Unreadable(f"pixel data truncated: {min(length, available)} bytes, "
                          f"Rows x Columns x frames needs {expected}")
    return offset


def _read_header(path: Path) -> tuple[_File, list[_Frame]] | None:
    """Header of one file: None when it is not a DICOM image; raises _Unreadable when corrupt."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with open(path, "rb") as fp, warnings.catch_warnings():
            # pydicom warns about non-conformant values (e.g. malformed DS strings); a reader
            # must take files as they come, and bad geometry values are checked below.
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True)
            except InvalidDicomError:
                # No Part 10 preamble: still a DICOM data set when it starts with a group 0008
                # element (files written without meta information, as GDCM and DCMTK accept).
                fp.seek(0)
                if fp.read(2) != b"\x08\x00":
                    raise
                fp.seek(0)
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
            at = fp.tell()
            fp.seek(0, os.SEEK_END)
            meta = getattr(ds, "file_meta", None)
            ts = _Attrs(meta).text(0x00020010) if meta is not None else ""
            if not ts:
                # No meta header: the encoding pydicom found when it read the data set.
                implicit, little = getattr(ds, "original_encoding", (True, True))
                ts = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else
                                                           "1.2.840.10008.1.2.2")
            if ts == _DEFLATED:
                # The file position is in the inflated stream: look for the pixel tags by reading.
                full = pydicom.dcmread(path)
                pixel_tag = next((t for t in _PIXEL_TAGS if t in full), None)
            else:
                pixel_tag = _peek_pixel_tag(fp, at) if at < fp.tell() else None
            has_pixels = pixel_tag is not None
            a = _Attrs(ds, little_endian=ts != "1.2.840.10008.1.2.2")
            rows, cols = a.us(0x00280010), a.us(0x00280011)
            if not has_pixels or not rows or not cols:
                if len(ds) == 0 and has_preamble(path):
                    # A Part 10 file whose data set is missing: cut off after the meta header.
                    raise _Unreadable("truncated: no data set after the file meta information")
                return None
            n_frames = a.integer(0x00280008) or 1
            samples = a.us(0x00280002) or 1
            bits_allocated = a.us(0x00280100) or 16
            if bits_allocated not in (1, 8, 16, 32, 64):
                raise _Unreadable(f"BitsAllocated {bits_allocated} is not supported (1, 8, 16, 32 or 64)")
            bits_stored = a.us(0x00280101) or bits_allocated
            photometric = a.text(0x00280004)
            pixel_offset = None
            if photometric == "PALETTE COLOR":
                # Indices into a colour table: the image is the RGB the table gives (PS3.3 C.7.6.3.1.5).
                lut_bits = 8 if int(ds.RedPaletteColorLookupTableDescriptor[2]) <= 8 else 16
                samples, bits_allocated, bits_stored = 3, lut_bits, lut_bits
            if (ts in _NATIVE_LITTLE_ENDIAN and bits_allocated in (8, 16, 32) and samples == 1
                    and sys.byteorder == "little"):
                fp.seek(at)
                expected = rows * cols * n_frames * bits_allocated // 8
                pixel_offset = _native_pixel_offset(fp, _NATIVE_LITTLE_ENDIAN[ts], expected, path)
            spacing_hint = a.numbers(0x00180088, 1)
            sop_class = a.text(0x00080016)
    except InvalidDicomError as exc:
        if has_preamble(path):
            raise _Unreadable(f"{type(exc).__name__}: {exc}") from exc
        return None
    except _Unreadable:
        raise
    except (EOFError, OSError, ValueError, KeyError, AttributeError, TypeError, IndexError, struct.error) as exc:
        if _looks_like_dicom(path):
            raise _Unreadable(f"{type(exc).__name__}: {exc}") from exc
        return None
    from pydicom.uid import UID

    f = _File(
        path=path,
        series_uid=a.text(0x0020000E),
        modality=a.text(0x00080060),
        description=a.string(0x0008103E),
        series_number=a.integer(0x00200011),
        patient_id=a.string(0x00100020),
        study_uid=a.text(0x0020000D),
        frame_of_reference_uid=a.text(0x00200052),
        sop_class=UID(sop_class).name if sop_class else "",
        transfer_syntax=ts,
        rows=rows,
        cols=cols,
        n_frames=n_frames,
        samples=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=a.us(0x00280103) == 1 and photometric != "PALETTE COLOR",
        float_pixels=pixel_tag != 0x7FE00010,
        monochrome1=photometric == "MONOCHROME1",
        palette=photometric == "PALETTE COLOR",
        instance_number=a.integer(0x00200013),
        slice_spacing_hint=spacing_hint[0] if spacing_hint and spacing_hint[0] > 0 else None,
        pixel_offset=pixel_offset,
    )
    return f, _frames_of(a, f)


def _peek_pixel_tag(fp: Any, at: int) -> int | None:
    """The pixel data tag at offset ``at`` (Pixel Data, Float or Double Float Pixel Data), else None."""
    fp.seek(at)
    head = fp.read(4)
    if len(head) < 4:
        return None
    # Explicit VR Big Endian files store the tag big-endian; every other syntax little-endian.
    for order in ("<HH", ">HH"):
        group, elem = struct.unpack(order, head)
        if (group << 16) | elem in _PIXEL_TAGS:
            return (group << 16) | elem
    return None


def has_preamble(path: Path) -> bool:
    """A Part 10 file: 128 bytes of preamble, then 'DICM' (PS3.10 7.1)."""
    try:
        with open(path, "rb") as fp:
            head = fp.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _looks_like_dicom(path: Path) -> bool:
    return has_preamble(path) or path.suffix.lower() == ".dcm"


def _rescale_of(a: _Attrs) -> tuple[float, float]:
    slope, intercept = a.numbers(0x00281053, 1), a.numbers(0x00281052, 1)
    return (slope[0] if slope and slope[0] != 0 else 1.0), (intercept[0] if intercept else 0.0)


def _frames_of(a: _Attrs, f: _File) -> list[_Frame]:
    """One _Frame per frame, with geometry from the functional groups when the file has them."""
    ds = a.ds
    per_frame = ds[0x52009230].value if 0x52009230 in ds else None
    if per_frame is not None and len(per_frame) >= f.n_frames:
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        # Enhanced CT/MR/PET (PS3.3 C.7.6.16): each attribute sits in the per-frame item or, when
        # it holds for every frame, in the shared item.
        frames = []
        for i, item in enumerate(per_frame[: f.n_frames]):
            def group(keyword: str) -> _Attrs:
                return _Attrs(_first_item(item, keyword) or _first_item(shared, keyword), a.endian == "<")

            spacing, source = _pixel_spacing(group("PixelMeasuresSequence"))
            slope, intercept = _rescale_of(group("PixelValueTransformationSequence"))
            frames.append(_Frame(
                f, i, group("PlanePositionSequence").numbers(0x00200032, 3),
                _orientation(group("PlaneOrientationSequence").numbers(0x00200037, 6)),
                spacing, source, slope, intercept,
            ))
        return frames
    spacing, source = _pixel_spacing(a)
    slope, intercept = _rescale_of(a)
    dose_scaling = a.numbers(0x3004000E, 1)
    if dose_scaling is not None and f.modality == "RTDOSE":
        slope = dose_scaling[0]
    position = a.numbers(0x00200032, 3)
    orientation = _orientation(a.numbers(0x00200037, 6))
    offsets = a.numbers(0x3004000C, f.n_frames) if f.n_frames > 1 else None
    if offsets is not None and position is not None and orientation is not None:
        # RT Dose (PS3.3 C.8.8.3.2): frame k lies at ImagePositionPatient + offset[k] * normal.
        normal = np.cross(orientation[:3], orientation[3:])
        return [_Frame(f, i, tuple(np.asarray(position) + o * normal), orientation, spacing, source, slope,
                       intercept) for i, o in enumerate(offsets)]
    if f.n_frames > 1:
        # A multi-frame file without per-frame positions: frames stack in stored order.
        return [_Frame(f, i, None, None, spacing, source, slope, intercept) for i in range(f.n_frames)]
    return [_Frame(f, 0, position, orientation, spacing, source, slope, intercept)]


def _orientation(o: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """The six direction cosines when they are two orthogonal unit vectors, else None."""
    if o is None:
        return None
    # Plain arithmetic: this runs once per frame, where numpy's per-call overhead shows.
    rr = o[0] * o[0] + o[1] * o[1] + o[2] * o[2]
    cc = o[3] * o[3] + o[4] * o[4] + o[5] * o[5]
    rc = o[0] * o[3] + o[1] * o[4] + o[2] * o[5]
    return o if abs(rr - 1) < 2e-2 and abs(cc - 1) < 2e-2 and abs(rc) < 1e-2 else None


# ---------------------------------------------------------------------------------- scanning
def _iter_files(directory: Path, recursive: bool) -> Iterable[Path]:
    if recursive:
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for name in sorted(files):
                yield Path(root) / name
    else:
        for p in sorted(directory.iterdir()):
            if p.is_file():
                yield p


@dataclass
class _Scan:
    frames: list[_Frame] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    skipped: int = 0


def _scan(paths: Iterable[Path], progress: Progress = NO_PROGRESS) -> _Scan:
    scan = _Scan()
    paths = list(paths)
    for n, p in enumerate(paths):
        progress.update("scan", n / len(paths))
        try:
            header = _read_header(p)
        except _Unreadable as exc:
            scan.unreadable.append((p, str(exc)))
            continue
        if header is None:
            scan.skipped += 1
        else:
            scan.frames.extend(header[1])
    return scan


def _part_key(fr: _Frame) -> tuple:
    # + 0.0 turns -0.0 into 0.0 so that both land in the same part.
    ori = None if fr.orientation is None else tuple(round(v, _ORIENTATION_DECIMALS) + 0.0 for v in fr.orientation)
    sp = None if fr.pixel_spacing is None else tuple(round(v, 4) for v in fr.pixel_spacing)
    f = fr.file
    return (ori, f.rows, f.cols, sp, f.samples, f.bits_allocated, f.signed)


def _describe_key(key: tuple) -> str:
    ori, rows, cols, sp, samples, bits, signed = key
    text = f"{rows}x{cols}"
    if sp is not None:
        text += f" pixels {sp[0]:g}x{sp[1]:g} mm"
    if ori is not None:
        text += f", orientation [{', '.join(f'{v:g}' for v in ori)}]"
    if samples != 1:
        text += f", {samples} samples/pixel"
    return text


# ---------------------------------------------------------------------------------- geometry
@dataclass
class _Layout:
    """How frames map onto a grid: the regular reading, or the recovery of an irregular one."""

    frames: list[_Frame]  # in slice order, duplicates removed when recovering
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: np.ndarray
    direction: np.ndarray
    problems: list[str]
    fatal: str | None = None  # a problem allow_irregular cannot recover
    # recovery: for each output slice, (input slice a, input slice b, weight of b)
    interpolation: list[tuple[int, int, float]] | None = None
    shifts: np.ndarray | None = None  # per input slice (dj, di) in pixels, gantry tilt
    vector: bool = False


def _names(frames: Sequence[_Frame], limit: int = 6) -> str:
    names = [fr.name for fr in frames]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _layout(frames: list[_Frame]) -> _Layout:
    first = frames[0]
    f = first.file
    vector = f.samples > 1
    in_plane = first.pixel_spacing or (1.0, 1.0)
    positioned = all(fr.position is not None and fr.orientation is not None for fr in frames)
    if not positioned:
        if len(frames) == 1:
            # A projection radiograph, secondary capture, ...: a 2D image in its own plane.
            return _Layout(frames, (f.rows, f.cols), in_plane, np.zeros(2), np.eye(2)[:, ::-1], [],
                           vector=vector)
        files = {fr.file.path for fr in frames}
        if len(files) > 1:
            missing = [fr for fr in frames if fr.position is None or fr.orientation is None]
            return _Layout(frames, (len(frames), f.rows, f.cols), (1.0,) + in_plane, np.zeros(3),
                           np.eye(3)[:, ::-1], [], vector=vector,
                           fatal=(f"{len(missing)} of {len(frames)} slices have no ImagePositionPatient/"
                                  f"ImageOrientationPatient ({_names(missing)}), so the files cannot be "
                                  "stacked into a volume; read them one by one with read_dicom_file"))
        # Frames of one file without plane positions (cine, un-enhanced multi-frame): stored order.
        return _Layout(frames, (len(frames), f.rows, f.cols), (1.0,) + in_plane, np.zeros(3),
                       np.eye(3)[:, ::-1], [], vector=vector)

    row = np.asarray(first.orientation[:3], dtype=np.float64)
    col = np.asarray(first.orientation[3:], dtype=np.float64)
    normal = np.cross(row, col)
    positions = np.asarray([fr.position for fr in frames], dtype=np.float64)
    t = positions @ normal
    numbers = [fr.file.instance_number if fr.file.instance_number is not None else 1 << 62 for fr in frames]
    order = sorted(range(len(frames)), key=lambda a: (t[a], numbers[a], str(frames[a].file.path), frames[a].index))
    frames = [frames[a] for a in order]
    positions, t = positions[order], t[order]
    problems: list[str] = []

    # Duplicates: repeats of a position (several acquisitions, echoes or phases in one series).
    keep = [0]
    dropped: list[tuple[_Frame, _Frame]] = []
    for a in range(1, len(frames)):
        if t[a] - t[keep[-1]] < DUPLICATE_TOLERANCE_MM:
            kept = keep[-1]
            if numbers[order[a]] < numbers[order[kept]]:
                keep[-1] = a
                dropped.append((frames[kept], frames[a]))
            else:
                dropped.append((frames[a], frames[kept]))
        else:
            keep.append(a)
    if dropped:
        pairs = "; ".join(f"{d.name} = {k.name} at {t[frames.index(k)]:.3f} mm" for d, k in dropped[:4])
        problems.append(f"{len(dropped)} duplicate slice positions ({pairs}"
                        f"{' ...' if len(dropped) > 4 else ''}); with allow_irregular=True the slice "
                        "with the lowest InstanceNumber is kept")
    frames = [frames[a] for a in keep]
    positions, t = positions[keep], t[keep]

    origin = positions[0].copy()
    direction = np.stack([normal, col, row], axis=1)
    n = len(frames)
    if n == 1:
        spacing = ((f.slice_spacing_hint or 1.0),) + in_plane
        return _Layout(frames, (1, f.rows, f.cols), spacing, origin, direction, problems, vector=vector)

    # Gantry tilt (or any in-plane drift): the positions do not move along the normal only.
    drift = positions - positions[0] - np.outer(t - t[0], normal)
    shifts = np.stack([drift @ col / in_plane[0], drift @ row / in_plane[1]], axis=1)  # (dj, di) px
    worst = int(np.argmax(np.abs(shifts).max(axis=1)))
    tilted = np.abs(shifts[worst]).max() > TILT_TOLERANCE
    if tilted:
        extent = np.linalg.norm(drift[worst])
        problems.append(
            f"gantry tilt: slice positions drift {extent:.3f} mm in-plane ({abs(shifts[worst]).max():.2f} "
            f"pixels) between {frames[0].name} and {frames[worst].name}, so the slices are not stacked "
            "along their normal; with allow_irregular=True each slice is shifted onto the first one's grid")

    gaps = np.diff(t)
    spacing_k = (t[-1] - t[0]) / (n - 1)
    bad = np.flatnonzero(np.abs(gaps - spacing_k) > SPACING_TOLERANCE * spacing_k)
    interpolation = None
    if bad.size:
        # The grid spacing: the smallest gap that is not a near-duplicate (at least half the
        # median gap), so a missing slice or a finer stretch is never undersampled.
        median = float(np.median(gaps))
        step = float(gaps[gaps >= 0.5 * median].min())
        missing = np.flatnonzero(gaps > 1.5 * step)
        where = "; ".join(f"{gaps[b]:.3f} mm between {frames[b].name} and {frames[b + 1].name}"
                          for b in bad[:4])
        kind = (f"{int(np.sum(np.round(gaps[missing] / step) - 1))} missing slice(s)" if missing.size
                else "varying slice spacing")
        problems.append(f"{kind}: gaps differ from the mean spacing {spacing_k:.4f} mm by more than "
                        f"{SPACING_TOLERANCE:.0%} ({where}{' ...' if bad.size > 4 else ''}); with "
                        f"allow_irregular=True the slices are interpolated onto a {step:.4f} mm grid")
        n_out = int(round((t[-1] - t[0]) / step)) + 1
        spacing_k = (t[-1] - t[0]) / (n_out - 1)
        interpolation = []
        for k in range(n_out):
            tk = t[0] + k * spacing_k
            b = int(np.clip(np.searchsorted(t, tk, side="right"), 1, n - 1))
            w = float(np.clip((tk - t[b - 1]) / (t[b] - t[b - 1]), 0.0, 1.0))
            interpolation.append((b - 1, b, w))
        n = n_out
    return _Layout(frames, (n, f.rows, f.cols), (float(spacing_k),) + in_plane, origin, direction, problems,
                   interpolation=interpolation, shifts=shifts if tilted else None, vector=vector)


# ---------------------------------------------------------------------------------- series
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


def _output_dtype(frames: Sequence[_Frame]) -> np.dtype:
    f = frames[0].file
    stored = _stored_dtype(f)
    if all(fr.slope == 1 and fr.intercept == 0 for fr in frames):
        return stored
    if not f.float_pixels and all(float(fr.slope).is_integer() and float(fr.intercept).is_integer()
                                  for fr in frames):
        lo_s, hi_s = (-(1 << (f.bits_stored - 1)), (1 << (f.bits_stored - 1)) - 1) if f.signed \
            else (0, (1 << f.bits_stored) - 1)
        ends = [v * fr.slope + fr.intercept for fr in frames for v in (lo_s, hi_s)]
        for candidate in (np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= min(ends) and max(ends) <= info.max:
                return np.dtype(candidate)
    return np.dtype(np.float32)


def _stored_dtype(f: _File) -> np.dtype:
    """The dtype of the stored values (BitsAllocated is 1, 8, 16, 32 or 64: checked on reading)."""
    if f.float_pixels:
        return np.dtype(np.float64 if f.bits_allocated == 64 else np.float32)
    bits = max(8, f.bits_allocated)
    return np.dtype(f"{'i' if f.signed else 'u'}{bits // 8}")


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

    Only headers are parsed. Non-DICOM files and DICOM objects without pixel data are skipped;
    unreadable DICOM files are attached to every series of the scan as ``unreadable`` (their
    series is unknown). Series are ordered by patient, study and SeriesNumber.

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
                         "(" + "; ".join(_describe_key(_part_key(p._layout.frames[0])) for p in parts)
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
        raise DicomError(f"{p}: unreadable DICOM file ({exc})") from exc
    if header is None:
        raise DicomError(f"{p}: not a DICOM image (not DICOM, or a DICOM object without pixel data)")
    f, frames = header
    if series:
        scan = _scan(_iter_files(p.parent, recursive=False))
        # The file parsed above, so the scan of its directory puts it in exactly one part.
        chosen = next(s for s in _group(scan) if p in s.files)
        chosen.unreadable = tuple(scan.unreadable)
        return chosen.read(allow_irregular=allow_irregular)
    parts: dict[tuple, list[_Frame]] = {}
    for fr in frames:
        parts.setdefault(_part_key(fr), []).append(fr)
    if len(parts) > 1:
        raise DicomError(f"{p}: its {len(frames)} frames differ in orientation or size ("
                         + "; ".join(_describe_key(k) for k in parts) + "); no single grid holds them")
    return _make_series(f.series_uid, None, frames, ()).read(allow_irregular=allow_irregular)


# ---------------------------------------------------------------------------------- pixels
def _missing_decoder_message(f: _File) -> str | None:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(f.transfer_syntax)
    except NotImplementedError:
        return f"{f.path}: transfer syntax {f.transfer_syntax} has no pixel data decoder in pydicom"
    if decoder.is_available:
        return None
    from pydicom.uid import UID

    needs = "; ".join(decoder.missing_dependencies)
    return (f"{f.path}: pixel data is compressed as {UID(f.transfer_syntax).name} and no decoder is "
            f"installed. Install one: pip install 'medkern[jpeg]' (pylibjpeg, pylibjpeg-libjpeg, "
            f"pylibjpeg-openjpeg), or any of: {needs}")


def _decode_file(f: _File) -> np.ndarray:
    """All frames of one file as stored values, shape (frames, rows, cols[, samples])."""
    if f.pixel_offset is not None:
        count = f.rows * f.cols * f.n_frames
        with open(f.path, "rb") as fp:
            fp.seek(f.pixel_offset)
            data = np.fromfile(fp, dtype=_stored_dtype(f), count=count)
        return data.reshape(f.n_frames, f.rows, f.cols)
    message = _missing_decoder_message(f)
    if message:
        raise DicomError(message)
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # force: the header pass has already accepted files without a Part 10 preamble.
            ds = pydicom.dcmread(f.path, force=True)
            if "TransferSyntaxUID" not in ds.file_meta:
                ds.file_meta.TransferSyntaxUID = f.transfer_syntax  # as the header pass found it
            # Stored values as they are: the modality LUT and photometric inversion are ours.
            arr = ds.pixel_array
            if f.palette:
                from pydicom.pixels import apply_color_lut

                arr = apply_color_lut(arr, ds)
    except DicomError:
        raise
    except Exception as exc:  # pydicom's decoders raise many types for corrupt data
        raise DicomError(f"{f.path}: pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    expected = (f.rows, f.cols) + ((f.samples,) if f.samples > 1 else ())
    return arr.reshape((f.n_frames,) + expected)


def _fill_stored(frames: Sequence[_Frame], out: np.ndarray, progress: Progress) -> None:
    """Decode each file once and copy its frames into ``out`` (a preallocated slice stack)."""
    by_file: dict[Path, list[tuple[int, _Frame]]] = {}
    for k, fr in enumerate(frames):
        by_file.setdefault(fr.file.path, []).append((k, fr))
    for n, entries in enumerate(by_file.values()):
        progress.update("read", n / len(by_file))
        f = entries[0][1].file
        if f.pixel_offset is not None and f.n_frames == 1 and out.dtype == _stored_dtype(f):
            # The common case, a native single-frame slice: read the bytes straight into place.
            with open(f.path, "rb") as fp:
                fp.seek(f.pixel_offset)
                view = memoryview(out[entries[0][0]]).cast("B")
                if fp.readinto(view) != view.nbytes:
                    raise DicomError(f"{f.path}: pixel data truncated while reading")
            continue
        data = _decode_file(f)
        for k, fr in entries:
            out[k] = data[fr.index]


def _cpp_modality_lut(stored, out, slope, intercept, bits_stored, is_signed, invert):
    from medkern import _core

    _core.modality_lut(stored, out, slope, intercept, bits_stored, is_signed, invert, get_num_threads())


modality_lut = Kernel("modality_lut", cpp=_cpp_modality_lut, numba="medkern._numba.modality:modality_lut")


def _modality_values(f: _File, stored: np.ndarray, frames: Sequence[_Frame], dtype: np.dtype) -> np.ndarray:
    """Stored values -> modality values (bit trimming, MONOCHROME1 inversion, per-frame rescale)."""
    bits, invert = f.bits_stored, f.monochrome1
    if stored.dtype == np.int8:
        stored = stored.astype(np.int16)
    elif stored.dtype == np.uint32:
        # The compiled kernels take integers up to int32: trim and invert in int64 here, then go
        # on exactly in float64 (values < 2**32).
        s = stored.astype(np.int64)
        if bits < 32:
            s &= (1 << bits) - 1
        if invert:
            s = ((1 << bits) - 1) - s
        stored, bits, invert = s.astype(np.float64), 0, False
    # Same item size (e.g. 12-bit uint16 -> int16 HU): the LUT runs in place, element by element,
    # which spares a second volume-sized buffer and its page faults.
    out = stored.view(dtype) if stored.dtype.itemsize == dtype.itemsize else np.empty(stored.shape, dtype=dtype)
    modality_lut(stored, out, np.asarray([fr.slope for fr in frames], dtype=np.float64),
                 np.asarray([fr.intercept for fr in frames], dtype=np.float64), bits, f.signed, invert)
    return out


def _read_layout(series: DicomSeries, allow_irregular: bool, progress: Progress) -> Image:
    layout = series._layout
    if layout.fatal:
        raise DicomError(f"series {series.key}: {layout.fatal}")
    problems = list(layout.problems)
    if series.unreadable and not allow_irregular:
        problems.append("unreadable files: " + "; ".join(f"{p} ({why})" for p, why in series.unreadable[:6]))
    if problems and not allow_irregular:
        raise DicomError(f"series {series.key} in {series.files[0].parent} is irregular:\n  - "
                         + "\n  - ".join(problems) + "\nPass allow_irregular=True to recover it (see "
                         "medkern.io.dicom for what the recovery does).")
    frames = layout.frames
    f = frames[0].file
    stored_dtype = _stored_dtype(f)
    tail = (f.samples,) if layout.vector else ()
    stored = np.empty((len(frames), f.rows, f.cols) + tail, dtype=stored_dtype)
    # Reading the files dominates; the modality LUT (and any recovery) is one pass in memory.
    files_span, values_span = progress.split((9.0, 1.0))
    _fill_stored(frames, stored, files_span)
    values_span.update("values", 0.0)
    interpolated = layout.interpolation is not None or layout.shifts is not None
    values_dtype = np.dtype(np.float32) if interpolated else _output_dtype(frames)
    needs_values = (values_dtype != stored_dtype or f.monochrome1 or f.bits_stored < f.bits_allocated
                    or any(fr.slope != 1 or fr.intercept != 0 for fr in frames))
    values = _modality_values(f, stored, frames, values_dtype) if needs_values else stored
    if interpolated:
        values = _recover(values, layout)
    if len(layout.shape) == 2:
        values = values[0]
    return Image(values, spacing=layout.spacing, origin=layout.origin, direction=layout.direction,
                 vector=layout.vector)


# ---------------------------------------------------------------------------------- recovery
def _shift_plane(plane: np.ndarray, dj: float, di: float, fill: float) -> np.ndarray:
    """plane sampled at (j - dj, i - di), bilinear; outside the plane -> fill."""
    out = plane
    for axis, d in ((0, dj), (1, di)):
        if d == 0:
            continue
        n = out.shape[axis]
        src = np.arange(n, dtype=np.float64) - d
        lo = np.floor(src).astype(np.intp)
        w = (src - lo).astype(np.float32)
        a = np.take(out, np.clip(lo, 0, n - 1), axis=axis)
        b = np.take(out, np.clip(lo + 1, 0, n - 1), axis=axis)
        shape = [1, 1]
        shape[axis] = n
        out = a * (1 - w.reshape(shape)) + b * w.reshape(shape)
        outside = ((src < 0) | (src > n - 1)).reshape(shape)
        out = np.where(outside, np.float32(fill), out).astype(np.float32)
    return out


def _recover(values: np.ndarray, layout: _Layout) -> np.ndarray:
    fill = float(values.min())
    if layout.shifts is not None:
        values = np.stack([_shift_plane(values[k], layout.shifts[k, 0], layout.shifts[k, 1], fill)
                           for k in range(values.shape[0])])
    if layout.interpolation is None:
        return values.astype(np.float32, copy=False)
    out = np.empty((len(layout.interpolation),) + values.shape[1:], dtype=np.float32)
    for k, (a, b, w) in enumerate(layout.interpolation):
        out[k] = values[a] * np.float32(1 - w) + values[b] * np.float32(w) if w > 0 else values[a]
    return out
