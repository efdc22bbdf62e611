"""File access that never blocks, never allocates what a length field claims, and finds the
Part 10 structure (meta information, deflated data sets, the Pixel Data element) from raw bytes."""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import Any

from medkern.io.dicom._records import _NotRegular, _Unreadable

# The data set of a Deflated Explicit VR Little Endian file is inflated up to this many bytes to
# find its header; the pixel data beyond is only counted.
_MAX_INFLATED_HEADER = 64 << 20

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}  # uid -> implicit VR
_DEFLATED = "1.2.840.10008.1.2.1.99"
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"}


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
