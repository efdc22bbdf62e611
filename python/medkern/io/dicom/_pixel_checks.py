"""Pixel Data checked against the header before anything is decoded or allocated: the byte count
of uncompressed data, the items, offset tables and frame headers of encapsulated data."""

from __future__ import annotations

import struct
from typing import Any

from medkern.io.dicom._records import _Unreadable


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


def _is_compressed(ts: str) -> bool:
    from pydicom.uid import UID

    uid = UID(ts)
    return uid.is_transfer_syntax and uid.is_compressed
