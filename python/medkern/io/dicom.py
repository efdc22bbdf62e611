"""DICOM images: series discovery, geometry and pixel decoding on top of pydicom.

How a directory becomes volumes
-------------------------------
* Every file is parsed once with ``stop_before_pixels``. Files that are not DICOM, and DICOM
  objects without pixel data (DICOMDIR, RTSTRUCT, SR, RT plans), are not images and are skipped.
  Files that look like DICOM but cannot be parsed or fail the checks of "Malformed and hostile
  input" below are reported as unreadable.
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

Malformed and hostile input
---------------------------
Reading never hangs, never allocates what a file merely claims, and never returns pixels the
header does not account for. A file that fails a check below is *unreadable*: reading it alone
raises :class:`medkern.DicomError` naming the file and the attribute at fault (chained to the
foreign exception, if any: zlib.error, struct.error, MemoryError, pydicom's InvalidDicomError...);
in a folder scan it is listed among the ``unreadable`` entries with that reason and the scan goes
on (a series is then irregular, see above).

* Only regular files are opened (symbolic links to them included), without blocking and checked
  on the open descriptor: named pipes, sockets and devices in a folder are skipped, and reading
  one directly is refused. Links to folders are not followed (no loops). A sub-folder that cannot
  be listed gives a :class:`medkern.errors.DicomWarning` and an ``unreadable`` entry.
* Sizes are checked against the bytes present before anything is allocated. Uncompressed Pixel
  Data (implicit/explicit little endian, big endian, deflated) must hold exactly Rows x Columns x
  NumberOfFrames x SamplesPerPixel x BitsAllocated bits (1-bit data packed, YBR_FULL_422 at two
  samples per pixel), plus at most the one padding byte of an odd length; shorter, longer and
  truncated data are refused. Encapsulated Pixel Data must be complete items up to its delimiter,
  with a Basic (or Extended) Offset Table of one entry per frame when present, one fragment per
  frame at least (exactly one for RLE, whose fragment bounds its frame at 64x its size), and
  JPEG / JPEG-LS / JPEG 2000 frames with a header (SOF / SIZ) that says Rows x Columns; an RLE
  segment that decodes to more than Rows x Columns bytes is refused too. A deflated data set is
  inflated only as far as its header (at most 64 MiB) and, when decoding, the end of Pixel Data;
  the rest is counted, not kept. A file of more than ``MAX_FRAMES`` frames is refused.
* Header attributes: BitsAllocated 1, 8, 16 or 32 (32/64 for Float/Double Float Pixel Data);
  1 <= BitsStored <= BitsAllocated; HighBit = BitsStored - 1; PixelRepresentation 0 or 1;
  SamplesPerPixel 1 or 3 matching PhotometricInterpretation (MONOCHROME1/2, PALETTE COLOR with a
  valid descriptor, RGB, YBR_*); Rows and Columns not zero; PixelSpacing / ImagerPixelSpacing two
  positive numbers; ImagePositionPatient three finite numbers; ImageOrientationPatient two
  orthogonal unit vectors; RescaleSlope finite and not 0, RescaleIntercept finite;
  DoseGridScaling positive; GridFrameOffsetVector one finite value per frame, strictly monotonic,
  relative (first 0) or absolute (first = ImagePositionPatient z, axial grids only), required for
  multi-frame RT Dose; an enhanced multi-frame file needs a Per-frame Functional Groups item for
  every frame (extra items are ignored), and all frames or none with plane position and pixel
  value transformation. A value that is present but malformed, the wrong count or not finite is
  refused; an absent (or empty) one keeps its default.
* Documented leniencies: SliceThickness is never read (it is not a spacing). PixelSpacing 0\\0,
  written by some CR/DX devices for "unknown", counts as absent on an image without patient
  position (1 mm, or ImagerPixelSpacing). A NumberOfFrames that is not a positive integer is read
  as 1, and the file only when its Pixel Data holds exactly one frame. A missing
  PhotometricInterpretation is MONOCHROME2 (one sample) or RGB (three). A SpacingBetweenSlices that
  is not positive is ignored. A ``.dcm`` file that is not DICOM at all (or cut inside its
  preamble) is unreadable, not skipped; a Part 10 file cut before its Pixel Data likewise.
* Series: frames of one SeriesInstanceUID that differ in Rows/Columns, orientation, pixel
  spacing, modality, bits, sign, MONOCHROME1 or float pixels are split into parts (above).
  Files sharing a SOPInstanceUID make the series irregular (``allow_irregular=True`` treats them
  as any other slices). The recovery grid of an irregular series is bounded (16 x its slices +
  1024): a stray slice far from the others makes the series unrecoverable instead of a huge grid.
* Not checked: Rows and Columns exchanged in an uncompressed image (the byte count is the same; the
  image comes out transposed and sheared); the pixel values themselves.

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

import dataclasses
import io
import math
import os
import re
import stat
import struct
import sys
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from medkern._dispatch import Kernel, get_num_threads
from medkern._progress import NO_PROGRESS, Progress
from medkern.errors import DicomError, DicomWarning
from medkern.image import Image

__all__ = [
    "DicomSeries",
    "MAX_FRAMES",
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
# A file claiming more frames than this is refused (each frame becomes a Python object when listing).
MAX_FRAMES = 1 << 17
# The regular grid that recovers an irregular series may hold at most this many times its slices
# (plus _RECOVERY_SLACK): a stray slice far away from the others is not interpolated over.
_RECOVERY_FACTOR = 16
_RECOVERY_SLACK = 1024
# A slice position further than this (mm) from the origin of the patient coordinates is corrupt.
_MAX_EXTENT_MM = 1e6
# The data set of a Deflated Explicit VR Little Endian file is inflated up to this many bytes to
# find its header; the pixel data beyond is only counted.
_MAX_INFLATED_HEADER = 64 << 20

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
    sop_uid: str = ""
    # Deflated files: the inflated data set is read up to this many bytes (the end of Pixel Data).
    inflated_end: int | None = None


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
    """A file that is (or claims to be) a DICOM image but cannot be read; the message says why and
    names the attribute at fault (the caller adds the file)."""


class _NotRegular(OSError):
    """A path that is not a regular file (named pipe, socket, device): never read from."""


def _shown(value: Any, limit: int = 60) -> str:
    """A header value as text for a message, cut to ``limit`` characters."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", "replace").strip(" \x00")
    elif not isinstance(value, str) and isinstance(value, Iterable):
        value = "\\".join(str(v) for v in value)
    text = repr(str(value))
    return text if len(text) <= limit else text[: limit - 4] + "...'"


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

    def checked(self, tag: int, n: int, name: str) -> tuple[float, ...] | None:
        """n finite numbers of a DS/IS attribute; None when it is absent or empty. A value that is
        there but malformed, not n numbers or not finite raises _Unreadable naming ``name``."""
        value = self._raw(tag)
        if isinstance(value, (bytes, bytearray)):
            text = bytes(value).strip(b" \x00")
            if not text:
                return None
            items: list[Any] = text.split(b"\\")
        elif value is None or (isinstance(value, str) and not value.strip()):
            return None
        else:
            items = [value] if isinstance(value, (str, int, float)) else list(value)
        try:
            out = tuple(float(v) for v in items)
        except (TypeError, ValueError):
            raise _Unreadable(f"{name} {_shown(value)} is not {'a number' if n == 1 else f'{n} numbers'}") from None
        if len(out) != n:
            raise _Unreadable(f"{name} {_shown(value)} has {len(out)} values, {n} expected")
        if not all(math.isfinite(v) for v in out):
            raise _Unreadable(f"{name} {_shown(value)} is not finite")
        return out

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


def _pixel_spacing(a: _Attrs, where: str = "", placed: bool = False) -> tuple[tuple[float, float] | None, str]:
    """PixelSpacing, else ImagerPixelSpacing (radiographs: at the detector plane), as (row, col).

    0\\0 (written by some CR/DX devices for "unknown") counts as absent in an image without
    patient position (``placed`` False); any other value that is not two positive numbers, and
    0\\0 in a slice placed in the patient, raises _Unreadable."""
    for tag, keyword in ((0x00280030, "PixelSpacing"), (0x00181164, "ImagerPixelSpacing")):
        sp = a.checked(tag, 2, keyword + where)
        if sp is None or (sp == (0.0, 0.0) and not placed):
            continue
        if not (sp[0] > 0 and sp[1] > 0):
            raise _Unreadable(f"{keyword}{where} {sp[0]:g}\\{sp[1]:g} is not two positive spacings (mm)")
        return (sp[0], sp[1]), keyword
    return None, "absent (1 mm assumed)"


class _BoundedReader(io.BufferedReader):
    """A regular file whose ``read(n)`` never asks for more than the bytes left, so that a length
    field claiming gigabytes allocates nothing (pydicom reads a value with ``fp.read(length)``)."""

    def __init__(self, raw: io.FileIO, size: int) -> None:
        super().__init__(raw, buffer_size=1 << 16)
        self.size = size

    def read(self, n: int | None = -1) -> bytes:
        if n is not None and n > 1 << 16:  # small reads allocate little: spare them the tell()
            left = self.size - self.tell()
            if n > left:
                n = max(left, 0)
                if n == 0:
                    return b""
        return super().read(n)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "special file"


def _open_regular(path: Path) -> _BoundedReader:
    """``path`` opened for reading when it is a regular file (a symbolic link to one included).

    Opened without blocking and checked on the open descriptor: a named pipe would block the
    open or the read forever, a device would never end. Raises _NotRegular, or OSError."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _NotRegular(f"not a regular file but a {_file_kind(st.st_mode)}")
        raw = io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise
    return _BoundedReader(raw, st.st_size)


def _meta_end(fp: Any) -> tuple[int, str]:
    """(offset of the data set, TransferSyntaxUID) of a Part 10 file, walking its explicit VR
    little endian group 0002 (PS3.10 7.1); (0, "") without the preamble."""
    fp.seek(0)
    buf, base = fp.read(4096), 0  # holds the meta information of nearly every file
    if buf[128:132] != b"DICM":
        return 0, ""
    pos, ts = 132, ""
    while True:
        if pos + 12 > base + len(buf):
            fp.seek(pos)
            buf, base = fp.read(4096), pos
        head = buf[pos - base:pos - base + 12]
        if len(head) < 8 or head[:2] != b"\x02\x00":
            return pos, ts
        if head[4:6] in _LONG_VRS:
            if len(head) < 12:
                return pos, ts
            length, value_at = struct.unpack("<I", head[8:12])[0], pos + 12
        else:
            length, value_at = struct.unpack("<H", head[6:8])[0], pos + 8
        if head[2:4] == b"\x10\x00" and length < 256:
            if value_at + length <= base + len(buf):
                value = buf[value_at - base:value_at - base + length]
            else:
                fp.seek(value_at)
                value = fp.read(length)
            ts = value.decode("ascii", "replace").strip(" \x00")
        pos = value_at + length


class _Inflater:
    """The inflated data set of a Deflated Explicit VR Little Endian file (PS3.5 A.5), inflated
    only as far as asked: a small file can inflate to a thousand times its size."""

    def __init__(self, fp: Any, start: int) -> None:
        self.fp = fp
        self.fp.seek(start)
        self.z = zlib.decompressobj(-zlib.MAX_WBITS)
        self.data = bytearray()
        self.done = False
        self.stopped_at = -1  # where the header parse stopped

    def _more(self, room: int) -> bytes:
        """Up to ``room`` more inflated bytes (b"" at the end of the stream)."""
        while not self.done:
            src = self.z.unconsumed_tail or self.fp.read(1 << 20)
            if not src:
                if not self.z.eof:
                    raise _Unreadable("truncated: the deflated data set ends before its deflate stream does")
                self.done = True
                break
            try:
                out = self.z.decompress(src, room)
            except zlib.error as exc:
                raise _Unreadable(f"the deflated data set is corrupt (zlib: {exc})") from exc
            if self.z.eof:
                self.done = True
            if out:
                return out
        return b""

    def read_upto(self, limit: int) -> bytes:
        """The first ``limit`` inflated bytes (fewer when the data set is shorter)."""
        while len(self.data) < limit:
            out = self._more(limit - len(self.data))
            if not out:
                break
            self.data += out
        return bytes(self.data[:limit])

    def total(self, stop: int) -> int:
        """The inflated size, counted without keeping the bytes; stops counting past ``stop``."""
        n = len(self.data)
        while n <= stop:
            out = self._more(1 << 22)
            if not out:
                break
            n += len(out)
        return n


def _read_deflated(fp: Any, start: int, stop_before_pixels: bool, limit: int) -> tuple[Any, int, _Inflater]:
    """(data set, offset of its Pixel Data element in the inflated stream or -1, the inflater).

    Without ``stop_before_pixels`` the first ``limit`` inflated bytes are parsed. Else the stream
    is inflated in growing steps until the header has been read, up to ``limit`` bytes."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    inflater = _Inflater(fp, start)
    step = limit if not stop_before_pixels else min(1 << 20, limit)
    while True:
        data = inflater.read_upto(step)
        ended = len(data) < step
        buf = DicomBytesIO(data)
        buf.is_little_endian, buf.is_implicit_VR = True, False
        try:
            ds = read_dataset(buf, False, True,
                              stop_when=_stop_at_pixels if stop_before_pixels else None)
        except Exception:
            if ended or step >= limit:
                raise
            ds = None  # cut inside an element: inflate more
        if not stop_before_pixels:
            return ds, -1, inflater
        if ds is not None:
            at = inflater.stopped_at = buf.tell()
            if at + 12 <= len(data) and _peek_pixel_tag(buf, at) is not None:
                return ds, at, inflater
            if ended:
                return ds, -1, inflater
        if step >= limit:
            raise _Unreadable(f"the inflated header is larger than {limit >> 20} MiB")
        step = min(step * 4, limit)


def _pixel_element(fp: Any, at: int, implicit: bool, little: bool) -> tuple[int, int, int]:
    """(tag, value length, value offset) of the Pixel Data element that starts at ``at``; the
    length is 0xFFFFFFFF for encapsulated (compressed) pixel data."""
    fp.seek(at)
    head = fp.read(12)
    if len(head) < 8:
        raise _Unreadable("truncated inside the Pixel Data element header")
    e = "<" if little else ">"
    group, elem = struct.unpack(e + "HH", head[:4])
    tag = (group << 16) | elem
    # The element's own bytes say whether it has a VR: a transfer syntax may misstate it (pydicom
    # reads such files, and so does this).
    vr = head[4:6]
    if vr in _LONG_VRS and (not implicit or head[6:8] == b"\x00\x00"):
        if len(head) < 12:
            raise _Unreadable("truncated inside the Pixel Data element header")
        return tag, struct.unpack(e + "I", head[8:12])[0], at + 12
    if not implicit and vr.isalpha() and vr.isupper():
        return tag, struct.unpack(e + "H", head[6:8])[0], at + 8  # a short VR (non-conformant)
    return tag, struct.unpack(e + "I", head[4:8])[0], at + 8


def _native_bytes(rows: int, cols: int, frames: int, samples: int, bits: int, photometric: str) -> int:
    """Bytes of uncompressed pixel data the header describes (1-bit data packed, PS3.5 8.1.1)."""
    if photometric == "YBR_FULL_422":
        return rows * cols * frames * 2 * (bits // 8)  # two samples per pixel on average (PS3.3 C.7.6.3.1.2)
    return (rows * cols * frames * samples * bits + 7) // 8


def _sizes(rows: int, cols: int, frames: int, samples: int, bits: int, frames_text: str) -> str:
    return (f"Rows {rows} x Columns {cols} x NumberOfFrames {frames_text or frames} x SamplesPerPixel {samples} "
            f"x BitsAllocated {bits}")


def _check_native_length(length: int, value_at: int, size: int, expected: int, sizes: str) -> None:
    """Pixel Data of ``length`` bytes at ``value_at`` must hold exactly ``expected`` bytes (one
    more when ``expected`` is odd: the padding byte of PS3.5 7.1.1) and lie inside the file."""
    if length == 0xFFFFFFFF:
        raise _Unreadable("Pixel Data is encapsulated (undefined length) but the transfer syntax is uncompressed")
    if length < expected:
        raise _Unreadable(f"pixel data truncated: Pixel Data holds {length} bytes, {sizes} needs {expected}")
    if length > expected + (expected & 1):
        raise _Unreadable(f"pixel data too long: Pixel Data holds {length} bytes, {sizes} needs {expected} "
                          "(a wrong BitsAllocated, Rows, Columns, SamplesPerPixel or NumberOfFrames)")
    available = size - value_at
    if available < expected:
        raise _Unreadable(f"pixel data truncated: the file ends after {max(available, 0)} of the {expected} bytes "
                          f"that {sizes} needs")


_JPEG_FAMILY = ("1.2.840.10008.1.2.4.5", "1.2.840.10008.1.2.4.6", "1.2.840.10008.1.2.4.7",
                "1.2.840.10008.1.2.4.8")
_J2K_FAMILY = ("1.2.840.10008.1.2.4.9", "1.2.840.10008.1.2.4.20")
_RLE = "1.2.840.10008.1.2.5"


def _codestream_size(ts: str, head: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG, JPEG-LS or JPEG 2000 frame declares in its header, else None."""
    if ts.startswith(_JPEG_FAMILY):
        from pydicom.pixels.utils import _get_jpg_parameters

        info = _get_jpg_parameters(head)
        return (info["height"], info["width"]) if "height" in info and "width" in info else None
    if ts.startswith(_J2K_FAMILY):
        # SOC then SIZ (ISO 15444-1 A.5.1): Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz; inside a JP2 box
        # wrapper (non-conformant, but decoded) further on.
        at = head.find(b"\xff\x4f\xff\x51")
        if at < 0 or len(head) < at + 24:
            return None
        x, y, x0, y0 = struct.unpack(">IIII", head[at + 8:at + 24])
        return (y - y0, x - x0) if x > x0 and y > y0 else (0, 0)
    return None


def _check_fragments(fp: Any, value_at: int, size: int, ts: str, rows: int, cols: int, n_frames: int,
                     frame_bytes: int, frames_text: str, extended_offsets: int | None) -> None:
    """Encapsulated Pixel Data (PS3.5 A.4): complete items up to the sequence delimiter, a Basic
    (or Extended) Offset Table with one entry per frame, at least one fragment per frame (exactly
    one for RLE, PS3.5 A.4.2), fragments that can hold their frame, and JPEG / JPEG 2000 frame
    sizes that agree with Rows x Columns. Reads 8 bytes per fragment; decodes nothing."""
    nf = frames_text or str(n_frames)
    pos, items = value_at, []
    while True:
        fp.seek(pos)
        head = fp.read(8)
        if len(head) < 8:
            raise _Unreadable(f"truncated: encapsulated Pixel Data ends after {len(items)} items, without its "
                              "sequence delimiter")
        group, elem, length = struct.unpack("<HHI", head)
        if (group, elem) == (0xFFFE, 0xE0DD):
            break
        if (group, elem) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            raise _Unreadable(f"encapsulated Pixel Data is corrupt: ({group:04X},{elem:04X}) of length {length} "
                              f"where item {len(items)} should be")
        if pos + 8 + length > size:
            raise _Unreadable(f"truncated: fragment {len(items)} of encapsulated Pixel Data needs {length} bytes, "
                              f"the file ends after {size - pos - 8}")
        items.append((pos + 8, length))
        pos += 8 + length
    if not items:
        raise _Unreadable("encapsulated Pixel Data has no Basic Offset Table item")
    bot, fragments = items[0], items[1:]
    if not fragments:
        raise _Unreadable("encapsulated Pixel Data holds no fragments")
    if bot[1] % 4:
        raise _Unreadable(f"the Basic Offset Table of encapsulated Pixel Data is {bot[1]} bytes, not a multiple of 4")
    if bot[1] and bot[1] // 4 != n_frames:
        raise _Unreadable(f"the Basic Offset Table lists {bot[1] // 4} frames, NumberOfFrames says {nf}")
    if extended_offsets is not None and extended_offsets != n_frames:
        raise _Unreadable(f"the Extended Offset Table lists {extended_offsets} frames, NumberOfFrames says {nf}")
    if len(fragments) < n_frames:
        raise _Unreadable(f"encapsulated Pixel Data holds {len(fragments)} fragments, NumberOfFrames says {nf} "
                          "(each frame needs one at least)")
    if ts == _RLE:
        if len(fragments) != n_frames:
            raise _Unreadable(f"RLE Pixel Data holds {len(fragments)} fragments, NumberOfFrames says {nf} "
                              "(one fragment per frame, PS3.5 A.4.2)")
        # An RLE run of 2 bytes gives at most 128: a fragment holds at most 64x its size.
        small = min(fragments, key=lambda f: f[1])
        if frame_bytes > 64 * small[1] + 128:
            raise _Unreadable(f"an RLE fragment of {small[1]} bytes cannot hold a frame of Rows {rows} x Columns "
                              f"{cols} ({frame_bytes} bytes)")
    fp.seek(fragments[0][0])
    declared = _codestream_size(ts, fp.read(min(fragments[0][1], 1 << 16)))
    if declared is None and ts.startswith(_JPEG_FAMILY + _J2K_FAMILY):
        # No decoder reads a frame without its header; the decoders would first allocate every
        # frame at the size Rows x Columns claims.
        marker = "JPEG 2000 SIZ" if ts.startswith(_J2K_FAMILY) else "JPEG SOF"
        raise _Unreadable(f"the first compressed frame has no {marker} header (corrupt, or not the codestream "
                          "its transfer syntax says)")
    if declared is not None and declared != (rows, cols):
        raise _Unreadable(f"Rows {rows} x Columns {cols} disagree with the compressed frame, which is "
                          f"{declared[0]} x {declared[1]}")


_MONOCHROME = ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_PARTIAL_422", "YBR_ICT", "YBR_RCT")


def _last_element_end(ds: Any) -> int | None:
    """Where the last top-level element read ends (None when unknown or of undefined length)."""
    tags = list(ds.keys())
    if not tags:
        return None
    raw = ds.get_item(max(tags))
    tell, length = getattr(raw, "value_tell", None), getattr(raw, "length", None)
    if tell is None or length is None or length == 0xFFFFFFFF:
        return None
    return tell + length


def _stop_at_pixels(tag: int, vr: Any, length: int) -> bool:
    """Where the header pass stops reading a data set: at its pixel data, or at an element of
    tag (0000,0000), which is never in a stored data set and is what a run of zero bytes reads
    as (pydicom would walk a zero-filled gigabyte 8 bytes at a time)."""
    return tag in _PIXEL_TAGS or tag == 0


def _zero_run(src: Any, at: int) -> int | None:
    """``at`` when the data at offset ``at`` of ``src`` (a file or bytes) starts with 8 zero
    bytes, else None."""
    if at < 0:
        return None
    if isinstance(src, (bytes, bytearray)):
        head = bytes(src[at:at + 8])
    else:
        src.seek(at)
        head = src.read(8)
    return at if len(head) == 8 and head == b"\x00" * 8 else None


def _read_header(path: Path) -> tuple[_File, list[_Frame]] | None:
    """Header of one file: None when it is not a DICOM image; raises _Unreadable when it is (or
    claims to be) one that cannot be read. No other exception leaves it: a scan goes on."""
    try:
        return _parse_header(path)
    except _Unreadable:
        raise
    except _NotRegular as exc:
        raise _Unreadable(str(exc)) from exc
    except OSError as exc:
        raise _Unreadable(f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})") from exc
    except MemoryError as exc:
        raise _Unreadable("MemoryError: the header claims more memory than there is") from exc
    except Exception as exc:
        from pydicom.errors import InvalidDicomError

        if isinstance(exc, InvalidDicomError) and not has_preamble(path):
            if path.suffix.lower() == ".dcm":
                # Named as DICOM but not readable as DICOM: a file cut inside its preamble (or not
                # DICOM at all) is reported, not skipped, so that a lost slice never goes unnoticed.
                raise _Unreadable("not a DICOM image: no Part 10 preamble ('DICM' at byte 128) and no data set "
                                  "(cut short, or not DICOM)") from exc
            return None
        if _looks_like_dicom(path):
            raise _Unreadable(f"{type(exc).__name__}: {exc}") from exc
        return None


def _parse_header(path: Path) -> tuple[_File, list[_Frame]] | None:
    from pydicom.errors import InvalidDicomError

    with _open_regular(path) as fp, warnings.catch_warnings():
        # pydicom warns about non-conformant values (e.g. malformed DS strings); a reader
        # must take files as they come, and bad geometry values are checked below.
        warnings.simplefilter("ignore")
        size = fp.size
        start, meta_ts = _meta_end(fp)
        fp.seek(0)
        inflater = None
        if meta_ts == _DEFLATED:
            ds, at, inflater = _read_deflated(fp, start, True, _MAX_INFLATED_HEADER)
            implicit, little, ts = False, True, _DEFLATED
        else:
            from pydicom.filereader import read_partial

            try:
                ds = read_partial(fp, stop_when=_stop_at_pixels)
            except InvalidDicomError:
                # No Part 10 preamble: still a DICOM data set when it starts with a group 0008
                # element (files written without meta information, as GDCM and DCMTK accept).
                fp.seek(0)
                if fp.read(2) != b"\x08\x00":
                    raise
                fp.seek(0)
                ds = read_partial(fp, stop_when=_stop_at_pixels, force=True)
            at = stopped_at = fp.tell()
            meta = getattr(ds, "file_meta", None)
            ts = _Attrs(meta).text(0x00020010) if meta is not None else ""
            # The encoding pydicom found when it read the data set (it detects a transfer syntax
            # that misstates implicit / explicit VR).
            implicit, little = getattr(ds, "original_encoding", (None, None))
            if implicit is None:
                implicit, little = ts == "1.2.840.10008.1.2", ts != "1.2.840.10008.1.2.2"
            if not ts:
                ts = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
            if ts == _DEFLATED:
                # pydicom found a deflated data set that the meta walk above did not (a meta header
                # not in explicit VR little endian): offsets would not be file offsets.
                raise _Unreadable("deflated data set after a non-conformant file meta information")
            at = at if at < size and _peek_pixel_tag(fp, at) is not None else -1
        pixel_tag = None
        if at >= 0:
            src = io.BytesIO(inflater.read_upto(at + 12)) if inflater is not None else fp
            pixel_tag, length, value_at = _pixel_element(src, at, implicit, little)
        a = _Attrs(ds, little_endian=little)
        rows, cols = a.us(0x00280010), a.us(0x00280011)
        if pixel_tag is None:
            zeros = _zero_run(inflater.data, inflater.stopped_at) if inflater is not None else _zero_run(fp, stopped_at)
            if zeros is not None:
                # A zero-filled tail (a copy that was never completed, preallocated space): the
                # parser stopped at the first all-zero element instead of walking 8 bytes at a time.
                if not (inflater is not None or _looks_like_dicom(path)):
                    return None
                raise _Unreadable(f"zero bytes in place of the data set from byte {zeros} on, before any Pixel Data "
                                  "(a file not completely written?)")
            if len(ds) == 0 and has_preamble(path):
                # A Part 10 file whose data set is missing: cut off after the meta header.
                raise _Unreadable("truncated: no data set after the file meta information")
            end = _last_element_end(ds)
            data_end = len(inflater.data) if inflater is not None else size
            if end is not None and end != data_end and (inflater is not None or _looks_like_dicom(path)):
                last = max(ds.keys())
                raise _Unreadable(f"truncated: the data set ends inside element {last}, {end - data_end} bytes short"
                                  if end > data_end else f"truncated: the data set ends {data_end - end} bytes "
                                  f"after element {last}, inside the header of the next element")
            return None
        if rows is None and cols is None:
            return None  # no Image Pixel module: not an image (test objects, private data)
        if rows is None or cols is None:
            raise _Unreadable(f"Pixel Data without {'Rows' if rows is None else 'Columns'}")
        if rows == 0 or cols == 0:
            raise _Unreadable(f"Rows {rows} x Columns {cols}: an image has no zero size")
        # NumberOfFrames that is not a positive integer is read as 1; the Pixel Data must then
        # hold exactly one frame (checked below).
        frames_raw = a._raw(0x00280008)
        nf = a.numbers(0x00280008, 1)
        n_frames = int(nf[0]) if nf is not None and nf[0] >= 1 and nf[0].is_integer() else 1
        frames_text = "" if frames_raw is None or (nf is not None and nf[0] >= 1 and nf[0].is_integer()) \
            else f"{_shown(frames_raw)} (read as 1)"
        samples = a.us(0x00280002)
        samples = 1 if samples is None else samples
        if samples not in (1, 3):
            raise _Unreadable(f"SamplesPerPixel {samples} is not supported (1 or 3)")
        photometric = a.text(0x00280004) or ("MONOCHROME2" if samples == 1 else "RGB")
        if photometric not in _MONOCHROME + _COLOUR:
            raise _Unreadable(f"PhotometricInterpretation {photometric!r} is not supported "
                              "(MONOCHROME1, MONOCHROME2, PALETTE COLOR, RGB or YBR_*)")
        if samples != (1 if photometric in _MONOCHROME else 3):
            raise _Unreadable(f"PhotometricInterpretation {photometric} needs SamplesPerPixel "
                              f"{1 if photometric in _MONOCHROME else 3}, the file says {samples}")
        if samples == 3 and a.us(0x00280006) not in (None, 0, 1):
            raise _Unreadable(f"PlanarConfiguration {a.us(0x00280006)} is not 0 or 1")
        bits_allocated = a.us(0x00280100)
        bits_allocated = 16 if bits_allocated is None else bits_allocated
        float_pixels = pixel_tag != 0x7FE00010
        if pixel_tag not in _PIXEL_TAGS:
            raise _Unreadable(f"the Pixel Data element header is corrupt (tag {pixel_tag:08X})")
        if float_pixels:
            need = 32 if pixel_tag == 0x7FE00008 else 64
            if bits_allocated != need:
                raise _Unreadable(f"BitsAllocated {bits_allocated} with {'Float' if need == 32 else 'Double Float'} "
                                  f"Pixel Data (needs {need})")
        elif bits_allocated not in (1, 8, 16, 32):
            raise _Unreadable(f"BitsAllocated {bits_allocated} is not supported (1, 8, 16 or 32; 32 or 64 for float "
                              "pixel data)")
        bits_stored = a.us(0x00280101)
        bits_stored = bits_allocated if bits_stored is None else bits_stored
        if not 1 <= bits_stored <= bits_allocated:
            raise _Unreadable(f"BitsStored {bits_stored} is not between 1 and BitsAllocated {bits_allocated}")
        high_bit = a.us(0x00280102)
        if high_bit is not None and not float_pixels and high_bit != bits_stored - 1:
            raise _Unreadable(f"HighBit {high_bit} is not BitsStored - 1 = {bits_stored - 1} (PS3.5 8.1.1)")
        representation = a.us(0x00280103)
        if representation not in (None, 0, 1):
            raise _Unreadable(f"PixelRepresentation {representation} is not 0 (unsigned) or 1 (signed)")
        stored_samples, stored_bits = samples, bits_allocated
        if photometric == "PALETTE COLOR":
            # Indices into a colour table: the image is the RGB the table gives (PS3.3 C.7.6.3.1.5).
            descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
            descriptor = list(descriptor) if descriptor is not None and not isinstance(descriptor, (int, bytes)) \
                else None
            if descriptor is None or len(descriptor) != 3 or not 1 <= int(descriptor[2]) <= 16:
                raise _Unreadable(f"PALETTE COLOR with RedPaletteColorLookupTableDescriptor {descriptor} (three "
                                  "values, the last 8 or 16 bits)")
            lut_bits = 8 if descriptor[2] <= 8 else 16
            samples, bits_allocated, bits_stored = 3, lut_bits, lut_bits
        sizes = _sizes(rows, cols, n_frames, stored_samples, stored_bits, frames_text)
        frame_bytes = _native_bytes(rows, cols, 1, stored_samples, stored_bits, photometric)
        data_size = inflater.total(value_at + length) if inflater is not None else size
        native = ts in _NATIVE_LITTLE_ENDIAN or ts in (_DEFLATED, "1.2.840.10008.1.2.2")
        if native or (length != 0xFFFFFFFF and not _is_compressed(ts)):
            _check_native_length(length, value_at, data_size,
                                 _native_bytes(rows, cols, n_frames, stored_samples, stored_bits, photometric), sizes)
        elif length == 0xFFFFFFFF:
            extended = a._raw(0x7FE00001)
            _check_fragments(fp, value_at, size, ts, rows, cols, n_frames, frame_bytes, frames_text,
                             None if extended is None else len(extended) // 8)
        else:
            raise _Unreadable(f"transfer syntax {ts} is compressed but Pixel Data is not encapsulated")
        if n_frames > MAX_FRAMES:
            raise _Unreadable(f"NumberOfFrames {n_frames} is more than medkern reads ({MAX_FRAMES})")
        pixel_offset = None
        if (ts in _NATIVE_LITTLE_ENDIAN and little and pixel_tag == 0x7FE00010 and stored_bits in (8, 16, 32)
                and stored_samples == 1 and photometric != "PALETTE COLOR" and sys.byteorder == "little"):
            pixel_offset = value_at
        spacing_hint = a.numbers(0x00180088, 1)
        sop_class = a.text(0x00080016)
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
        signed=representation == 1 and photometric != "PALETTE COLOR",
        float_pixels=float_pixels,
        monochrome1=photometric == "MONOCHROME1",
        palette=photometric == "PALETTE COLOR",
        instance_number=a.integer(0x00200013),
        slice_spacing_hint=spacing_hint[0] if spacing_hint and spacing_hint[0] > 0 else None,
        pixel_offset=pixel_offset,
        sop_uid=a.text(0x00080018),
        inflated_end=value_at + length if inflater is not None else None,
    )
    return f, _frames_of(a, f)


def _is_compressed(ts: str) -> bool:
    from pydicom.uid import UID

    uid = UID(ts)
    return uid.is_transfer_syntax and uid.is_compressed


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
    """A Part 10 file: 128 bytes of preamble, then 'DICM' (PS3.10 7.1). False for anything that
    is not a regular file (a named pipe is never opened for reading)."""
    try:
        with _open_regular(path) as fp:
            head = fp.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _looks_like_dicom(path: Path) -> bool:
    return has_preamble(path) or path.suffix.lower() == ".dcm"


def _rescale_of(a: _Attrs, where: str = "") -> tuple[float, float]:
    slope = a.checked(0x00281053, 1, "RescaleSlope" + where)
    intercept = a.checked(0x00281052, 1, "RescaleIntercept" + where)
    if slope is not None and slope[0] == 0:
        raise _Unreadable(f"RescaleSlope{where} 0 maps every pixel to RescaleIntercept")
    return (slope[0] if slope else 1.0), (intercept[0] if intercept else 0.0)


def _frames_of(a: _Attrs, f: _File) -> list[_Frame]:
    """One _Frame per frame, with geometry from the functional groups when the file has them."""
    ds = a.ds
    if 0x52009230 in ds:
        per_frame = ds[0x52009230].value
        if len(per_frame) < f.n_frames:
            raise _Unreadable(f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for NumberOfFrames "
                              f"{f.n_frames}: the frames without one would lose their position and rescale")
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        # Enhanced CT/MR/PET (PS3.3 C.7.6.16): each attribute sits in the per-frame item or, when
        # it holds for every frame, in the shared item.
        frames = []
        rescaled = []
        for i, item in enumerate(per_frame[: f.n_frames]):
            def group(keyword: str, item: Any = item) -> _Attrs:
                return _Attrs(_first_item(item, keyword) or _first_item(shared, keyword), a.endian == "<")

            where = f" (frame {i + 1})" if f.n_frames > 1 else ""
            spacing, source = _pixel_spacing(group("PixelMeasuresSequence"), where,
                                             group("PlanePositionSequence").ds is not None)
            transformation = group("PixelValueTransformationSequence")
            rescaled.append(transformation.ds is not None)
            slope, intercept = _rescale_of(transformation, where)
            orientation = group("PlaneOrientationSequence").checked(0x00200037, 6, "ImageOrientationPatient" + where)
            frames.append(_Frame(
                f, i, group("PlanePositionSequence").checked(0x00200032, 3, "ImagePositionPatient" + where),
                _orientation(orientation, "ImageOrientationPatient" + where), spacing, source, slope, intercept,
            ))
        placed = [fr.position is not None and fr.orientation is not None for fr in frames]
        if f.modality in ("CT", "MR", "PT") and not any(placed):
            # Enhanced CT/MR/PET require the Plane Position and Orientation groups (PS3.3 A.38.1,
            # A.36.2, A.56): without them the frames would be stacked at a made-up origin and 1 mm.
            raise _Unreadable("no frame has a PlanePositionSequence / PlaneOrientationSequence in its functional "
                              f"groups (required for an enhanced {f.modality} image)")
        if any(placed) and not all(placed):
            k = placed.index(False)
            raise _Unreadable(f"frame {k + 1} has no PlanePositionSequence / PlaneOrientationSequence in its "
                              "functional groups while other frames have them")
        if any(rescaled) and not all(rescaled):
            k = rescaled.index(False)
            raise _Unreadable(f"frame {k + 1} has no PixelValueTransformationSequence in its functional groups "
                              "while other frames have one")
        return frames
    position = a.checked(0x00200032, 3, "ImagePositionPatient")
    orientation = _orientation(a.checked(0x00200037, 6, "ImageOrientationPatient"))
    spacing, source = _pixel_spacing(a, placed=position is not None or orientation is not None)
    slope, intercept = _rescale_of(a)
    dose_scaling = a.checked(0x3004000E, 1, "DoseGridScaling")
    if dose_scaling is not None and f.modality == "RTDOSE":
        if not dose_scaling[0] > 0:
            raise _Unreadable(f"DoseGridScaling {dose_scaling[0]:g} is not positive")
        slope = dose_scaling[0]
    if f.n_frames > 1 and (f.modality == "RTDOSE" or a._raw(0x3004000C) is not None):
        return _dose_frames(a, f, position, orientation, spacing, source, slope, intercept)
    if f.n_frames > 1:
        # A multi-frame file without per-frame positions: frames stack in stored order.
        return [_Frame(f, i, None, None, spacing, source, slope, intercept) for i in range(f.n_frames)]
    return [_Frame(f, 0, position, orientation, spacing, source, slope, intercept)]


def _dose_frames(a: _Attrs, f: _File, position: Any, orientation: Any, spacing: Any, source: str, slope: float,
                 intercept: float) -> list[_Frame]:
    """RT Dose (PS3.3 C.8.8.3.2): frame k lies at ImagePositionPatient + offset[k] * normal, the
    offsets relative (first 0) or, for an axial grid only, absolute (first = ImagePositionPatient z)."""
    offsets = a.checked(0x3004000C, f.n_frames, "GridFrameOffsetVector")
    if offsets is None:
        raise _Unreadable(f"RT Dose of {f.n_frames} frames without GridFrameOffsetVector: the frames have no position")
    if position is None or orientation is None:
        raise _Unreadable("GridFrameOffsetVector without ImagePositionPatient / ImageOrientationPatient")
    steps = np.diff(offsets)
    direction = 1.0 if steps[0] > 0 else -1.0
    wrong = np.flatnonzero(steps * direction <= 0)
    if wrong.size:
        k = int(wrong[0])
        raise _Unreadable(f"GridFrameOffsetVector is not strictly monotonic: {offsets[k]:g} then {offsets[k + 1]:g} "
                          f"(frames {k + 1} and {k + 2})")
    if max(abs(o) for o in offsets) > _MAX_EXTENT_MM:
        raise _Unreadable(f"GridFrameOffsetVector reaches {max(offsets, key=abs):g} mm, more than {_MAX_EXTENT_MM:g}")
    if offsets[0] != 0:
        axial = np.allclose(orientation, (1, 0, 0, 0, 1, 0), atol=1e-6)
        if not (axial and abs(offsets[0] - position[2]) <= 1e-3):
            raise _Unreadable(f"GridFrameOffsetVector starts at {offsets[0]:g}: neither 0 (offsets relative to "
                              f"ImagePositionPatient) nor its z {position[2]:g} (absolute offsets, axial grids only)")
        offsets = tuple(o - offsets[0] for o in offsets)
    normal = np.cross(orientation[:3], orientation[3:])
    return [_Frame(f, i, tuple(np.asarray(position) + o * normal), orientation, spacing, source, slope,
                   intercept) for i, o in enumerate(offsets)]


def _orientation(o: tuple[float, ...] | None, name: str = "ImageOrientationPatient") -> tuple[float, ...] | None:
    """The six direction cosines when they are two orthogonal unit vectors; raises _Unreadable
    for any other value (None stays None: absent)."""
    if o is None:
        return None
    # Plain arithmetic: this runs once per frame, where numpy's per-call overhead shows.
    rr = o[0] * o[0] + o[1] * o[1] + o[2] * o[2]
    cc = o[3] * o[3] + o[4] * o[4] + o[5] * o[5]
    rc = o[0] * o[3] + o[1] * o[4] + o[2] * o[5]
    if abs(rr - 1) < 2e-2 and abs(cc - 1) < 2e-2 and abs(rc) < 1e-2:
        return o
    raise _Unreadable(f"{name} {chr(92).join(f'{v:g}' for v in o)} is not two orthogonal unit vectors "
                      f"(|row|^2 {rr:.4g}, |column|^2 {cc:.4g}, row.column {rc:.4g})")


# ---------------------------------------------------------------------------------- scanning
@dataclass(frozen=True)
class _Unlisted:
    """A folder of the scan that cannot be listed (what _iter_files yields in place of its files)."""

    path: Path
    reason: str


def _iter_files(directory: Path, recursive: bool) -> Iterable[Path | _Unlisted]:
    """The regular files under ``directory`` (symbolic links to regular files included), folder
    by folder in name order, as os.walk gives them. Named pipes, sockets, devices and broken
    links are never yielded; links to folders are not followed (no loops). A folder that cannot
    be listed yields an _Unlisted entry."""
    stack = [Path(directory)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield _Unlisted(folder, f"folder cannot be listed ({type(exc).__name__}: {exc.strerror or exc})")
            continue
        folders = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    folders.append(Path(e.path))
                elif e.is_file():
                    yield Path(e.path)
            except OSError:
                continue  # vanished, or a link loop
        if recursive:
            stack.extend(reversed(folders))


@dataclass
class _Scan:
    frames: list[_Frame] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    skipped: int = 0


def _scan(paths: Iterable[Path | _Unlisted], progress: Progress = NO_PROGRESS) -> _Scan:
    scan = _Scan()
    paths = list(paths)
    for n, p in enumerate(paths):
        progress.update("scan", n / len(paths))
        if isinstance(p, _Unlisted):
            warnings.warn(f"{p.path}: {p.reason}; its files are left out of the scan", DicomWarning, stacklevel=3)
            scan.unreadable.append((p.path, p.reason))
            continue
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
    # Frames whose stored values mean different things (modality, bits, sign, inversion, float)
    # are never stacked: one modality LUT serves a whole volume.
    return (ori, f.rows, f.cols, sp, f.samples, f.bits_allocated, f.signed, f.modality, f.bits_stored,
            f.monochrome1, f.float_pixels)


def _describe_key(key: tuple, keys: Sequence[tuple] = ()) -> str:
    """A part of a series in words; modality and bit layout only where they vary among ``keys``."""
    ori, rows, cols, sp, samples, bits, signed = key[:7]
    text = f"{rows}x{cols}"
    if sp is not None:
        text += f" pixels {sp[0]:g}x{sp[1]:g} mm"
    if ori is not None:
        text += f", orientation [{', '.join(f'{v:g}' for v in ori)}]"
    if samples != 1:
        text += f", {samples} samples/pixel"
    modality, bits_stored, monochrome1, float_pixels = key[7:]
    varies = {i for i in range(5, 11) if len({k[i] for k in keys}) > 1}
    if 7 in varies:
        text += f", modality {modality or '(none)'}"
    if varies & {5, 6, 8, 10}:
        text += f", {'float ' if float_pixels else ''}{bits_stored}/{bits} bits {'signed' if signed else 'unsigned'}"
    if 9 in varies:
        text += ", MONOCHROME1" if monochrome1 else ", MONOCHROME2"
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


def _repeated_instances(frames: Sequence[_Frame]) -> list[str]:
    """A problem line when files of the series share a SOPInstanceUID (copies of one instance, or
    a broken export): with allow_irregular=True they count as any other slices (duplicates of a
    position keep the lowest InstanceNumber)."""
    owners: dict[str, list[Path]] = {}
    for fr in frames:
        if fr.file.sop_uid:
            paths = owners.setdefault(fr.file.sop_uid, [])
            if fr.file.path not in paths:
                paths.append(fr.file.path)
    repeated = {uid: paths for uid, paths in owners.items() if len(paths) > 1}
    if not repeated:
        return []
    shown = "; ".join(f"{uid}: {', '.join(p.name for p in paths[:3])}" for uid, paths in list(repeated.items())[:3])
    return [f"{sum(len(p) for p in repeated.values())} files share {len(repeated)} SOPInstanceUID(s) ({shown}"
            f"{' ...' if len(repeated) > 3 else ''}): one instance stored more than once"]


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
    problems: list[str] = _repeated_instances(frames)
    far = int(np.argmax(np.abs(positions).max(axis=1)))
    if np.abs(positions[far]).max() > _MAX_EXTENT_MM:
        # A position kilometres away is a typo or corruption, not a scan: no arithmetic on it (it
        # would overflow to inf / nan) and no grid.
        return _Layout(frames, (len(frames), f.rows, f.cols), (1.0,) + in_plane, positions[0].copy(),
                       np.stack([normal, col, row], axis=1), problems, vector=vector,
                       fatal=(f"ImagePositionPatient {chr(92).join(f'{v:g}' for v in positions[far])} of "
                              f"{frames[far].name} is more than {_MAX_EXTENT_MM:g} mm from the origin; no scanner "
                              "places a slice there"))

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
        grid = (t[-1] - t[0]) / step + 1
        widest = int(np.argmax(gaps))
        limit = _RECOVERY_FACTOR * n + _RECOVERY_SLACK
        if not grid <= limit:
            # A stray slice far from the others (or a position typo): interpolating would build a
            # grid of mostly empty slices, of any size the positions ask for.
            return _Layout(frames, (n, f.rows, f.cols), (float(spacing_k),) + in_plane, origin, direction, problems,
                           vector=vector, fatal=(
                               f"the slices span {t[-1] - t[0]:.6g} mm along the normal with gaps down to "
                               f"{step:.4g} mm and up to {gaps[widest]:.6g} mm (between {frames[widest].name} and "
                               f"{frames[widest + 1].name}): a regular grid would need {grid:.6g} slices for {n}, "
                               f"more than {limit}; no recovery (check the ImagePositionPatient of those slices)"))
        n_out = int(round(grid - 1)) + 1
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
    expected = (f.n_frames, f.rows, f.cols) + ((f.samples,) if f.samples > 1 else ())
    if f.pixel_offset is not None:
        count = f.rows * f.cols * f.n_frames
        try:
            with _open_regular(f.path) as fp:
                fp.seek(f.pixel_offset)
                data = np.frombuffer(fp.read(count * _stored_dtype(f).itemsize), dtype=_stored_dtype(f))
        except OSError as exc:
            raise DicomError(f"{f.path}: cannot be read ({type(exc).__name__}: {exc.strerror or exc})") from exc
        if data.size != count:
            raise DicomError(f"{f.path}: pixel data truncated while reading ({data.size} of {count} values; did the "
                             "file change since its header was read?)")
        return data.reshape(expected)
    message = _missing_decoder_message(f)
    if message:
        raise DicomError(message)
    import pydicom

    try:
        with warnings.catch_warnings(record=True) as caught, _open_regular(f.path) as fp:
            warnings.simplefilter("always")
            if f.inflated_end is not None:
                # Deflated: inflate only up to the end of Pixel Data (the header pass measured it).
                start, _ = _meta_end(fp)
                ds, _, _ = _read_deflated(fp, start, False, f.inflated_end)
                ds.file_meta = pydicom.dataset.FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"  # what the inflated bytes are
            else:
                # force: the header pass has already accepted files without a Part 10 preamble.
                ds = pydicom.dcmread(fp, force=True)
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
    for w in caught:
        # pydicom keeps the start of an RLE segment that decodes to more than Rows x Columns
        # bytes (a wrong Rows/Columns: a sheared image); the one padding byte of PS3.5 G.3.1 aside.
        m = re.search(r"RLE segment contains non-conformant padding - (\d+) vs\. (\d+)", str(w.message))
        if m and int(m.group(1)) - int(m.group(2)) > 1:
            raise DicomError(f"{f.path}: an RLE segment decodes to {m.group(1)} bytes, Rows {f.rows} x Columns "
                             f"{f.cols} needs {m.group(2)}")
    if arr.size != math.prod(expected):
        raise DicomError(f"{f.path}: the decoded pixel data has {arr.size} values, Rows {f.rows} x Columns {f.cols} x "
                         f"NumberOfFrames {f.n_frames} x SamplesPerPixel {f.samples} needs {math.prod(expected)}")
    return arr.reshape(expected)


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
            try:
                with _open_regular(f.path) as fp:
                    fp.seek(f.pixel_offset)
                    view = memoryview(out[entries[0][0]]).cast("B")
                    got = fp.readinto(view)
            except OSError as exc:
                raise DicomError(f"{f.path}: cannot be read ({type(exc).__name__}: {exc.strerror or exc})") from exc
            if got != view.nbytes:
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
        if dtype == np.uint32:
            return s.astype(np.uint32)  # no rescale (else the output is not uint32): done
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
    try:
        stored = np.empty((len(frames), f.rows, f.cols) + tail, dtype=stored_dtype)
    except MemoryError as exc:
        raise DicomError(f"series {series.key} in {series.files[0].parent}: {len(frames)} x {f.rows} x {f.cols} "
                         f"{stored_dtype} voxels do not fit in memory") from exc
    # Reading the files dominates; the modality LUT (and any recovery) is one pass in memory.
    files_span, values_span = progress.split((9.0, 1.0))
    _fill_stored(frames, stored, files_span)
    values_span.update("values", 0.0)
    interpolated = layout.interpolation is not None or layout.shifts is not None
    values_dtype = np.dtype(np.float32) if interpolated else _output_dtype(frames)
    needs_values = (values_dtype != stored_dtype or f.monochrome1 or f.bits_stored < f.bits_allocated
                    or any(fr.slope != 1 or fr.intercept != 0 for fr in frames))
    try:
        if needs_values and values_dtype == np.int8:
            # Signed 8-bit values trimmed to BitsStored or inverted (MONOCHROME1) still fit int8;
            # the compiled kernels write int16 at the narrowest.
            values = _modality_values(f, stored, frames, np.dtype(np.int16)).astype(np.int8)
        else:
            values = _modality_values(f, stored, frames, values_dtype) if needs_values else stored
        if interpolated:
            values = _recover(values, layout)
    except MemoryError as exc:
        raise DicomError(f"series {series.key} in {series.files[0].parent}: the {values_dtype} values of "
                         f"{len(frames)} x {f.rows} x {f.cols} voxels do not fit in memory") from exc
    if needs_values and values.dtype.kind == "f" and not np.isfinite(values).all():
        # Stored pixels are integers, so only an absurd RescaleSlope/Intercept makes them overflow.
        slopes = sorted({fr.slope for fr in frames})
        raise DicomError(f"series {series.key} ({len(series.files)} file(s), first {series.files[0]}): "
                         f"RescaleSlope {slopes[-1]:g} / "
                         f"RescaleIntercept {max(abs(fr.intercept) for fr in frames):g} map stored values beyond "
                         f"the {values.dtype} range (non-finite voxels): the header is corrupt")
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
