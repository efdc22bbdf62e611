"""Voxel data behind a text header (NRRD, MetaImage): where it may live, how much of it there must
be, how it is decoded, and how a header and its data file are written together.

Reading is checked against the bytes that are really there before anything the size of the image
is allocated: a header claiming 10^12 voxels in front of a 1 kB file fails at once with a message,
it never asks numpy for terabytes. Raw data is measured on disk; compressed data is inflated with
the output capped at the size the header promises (plus one byte, to notice a surplus), so a
decompression bomb cannot grow past the image it claims to be.

A data file named by a header is read only from inside the header's folder (after resolving
``..`` and symbolic links); a name such as ``../../etc/passwd`` or an absolute path elsewhere is
refused, because a header is data and may come from anyone.
"""

from __future__ import annotations

import bz2
import contextlib
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

# Deflate cannot expand one input byte into more than about 1032 output bytes (RFC 1951 maximum
# run length 258 per 2-bit code): a larger claim cannot be honest, whatever the stream holds.
_DEFLATE_MAX_RATIO = 1032
_ZLIB_OR_GZIP = 32 + zlib.MAX_WBITS  # accept either a zlib or a gzip wrapper (RFC 1950 / 1952)


def data_file_beside(header: Path, name: str) -> Path:
    """The data file ``name`` written in ``header``, resolved only inside the header's folder."""
    if not name or "\x00" in name:
        raise ValueError(f"{header}: the header names an empty or invalid data file {name!r}")
    folder = Path(header).resolve().parent
    path = (folder / name).resolve()
    if not path.is_relative_to(folder):
        raise ValueError(
            f"{header}: data file {name!r} resolves to {path}, outside the header's folder {folder}; "
            "data files are read only beside their header (move the file there and name it relatively)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{header}: data file {name!r} not found at {path}")
    return path


def voxel_bytes(shape: Sequence[int], itemsize: int, source: object) -> int:
    """Bytes the voxels take (Python ints: no overflow for absurd headers); sizes must be >= 1."""
    total = int(itemsize)
    for n in shape:
        if int(n) < 1:
            raise ValueError(f"{source}: every image size must be at least 1, got {list(shape)}")
        total *= int(n)
    return total


def read_span(path: Path, offset: int, nbytes: int | None, source: object) -> bytearray:
    """``nbytes`` bytes of ``path`` from ``offset`` (``None``: to the end), after checking they exist.

    A negative ``offset`` counts back from the end of the file (the data is the last ``-offset``
    bytes, as MetaImage ``HeaderSize = -1`` and NRRD ``byte skip: -1`` ask).
    """
    size = path.stat().st_size
    if offset < 0:
        offset = size + offset
        if offset < 0:
            raise ValueError(f"{source}: the header describes {-offset + size} bytes of voxel data but "
                             f"{path.name} holds only {size}")
    present = size - offset
    if present < 0 or (nbytes is not None and present < nbytes):
        want = "data" if nbytes is None else f"{nbytes} bytes of voxel data"
        raise ValueError(f"{source}: the header describes {want} from byte {offset} of {path.name}, but the "
                         f"file has only {max(present, 0)} bytes there (truncated file or wrong header)")
    count = present if nbytes is None else nbytes
    buf = bytearray(count)
    with open(path, "rb") as fh:
        fh.seek(offset)
        if fh.readinto(buf) != count:
            raise ValueError(f"{source}: {path.name} changed while it was read")
    return buf


def inflate(data: bytes | bytearray, nbytes: int, codec: str, source: object) -> bytearray:
    """Decompress ``data`` (``"zlib"``: zlib or gzip streams; ``"bzip2"``) into exactly ``nbytes``.

    Concatenated streams (multi-member gzip) are joined. Fewer or more bytes than ``nbytes``, or a
    corrupt stream, raise ValueError naming ``source``.
    """
    if codec == "zlib" and nbytes > _DEFLATE_MAX_RATIO * len(data) + 1024:
        raise ValueError(f"{source}: the header describes {nbytes} bytes of voxel data, more than "
                         f"{len(data)} bytes of deflate data can hold (truncated file or wrong header)")
    out = bytearray()
    rest = bytes(data)
    try:
        while rest:
            dec = zlib.decompressobj(_ZLIB_OR_GZIP) if codec == "zlib" else bz2.BZ2Decompressor()
            out += dec.decompress(rest, nbytes + 1 - len(out))
            if len(out) > nbytes:
                raise ValueError(f"{source}: the compressed data holds more than the {nbytes} bytes the "
                                 "header describes (wrong sizes or type in the header)")
            if not dec.eof:
                break
            rest = dec.unused_data
    except (zlib.error, OSError, EOFError) as exc:
        raise ValueError(f"{source}: corrupt {codec} voxel data ({exc})") from exc
    if len(out) != nbytes:
        raise ValueError(f"{source}: the compressed data holds {len(out)} bytes, the header describes "
                         f"{nbytes} (truncated file or wrong header)")
    return out


def parse_text_values(text: bytes | bytearray, count: int, dtype: np.dtype, source: object) -> np.ndarray:
    """``count`` whitespace-separated numbers of ``dtype`` (ASCII-encoded voxel data)."""
    tokens = bytes(text).split()
    if len(tokens) != count:
        raise ValueError(f"{source}: the text data holds {len(tokens)} values, the header describes {count}")
    try:
        return np.array([t.decode("ascii") for t in tokens], dtype=dtype)
    except (ValueError, OverflowError, UnicodeDecodeError) as exc:
        raise ValueError(f"{source}: text voxel data is not a list of {dtype} numbers ({exc})") from exc


def number_text(value: float | int) -> str:
    """The shortest text that reads back as exactly ``value`` ('1', '0.7', '-2.5e-07')."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def native(array: np.ndarray) -> np.ndarray:
    """The array in native byte order, C-contiguous and writable (what the kernels expect)."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array)


@contextlib.contextmanager
def atomic_files(targets: Sequence[Path]) -> Iterator[list[Path]]:
    """Yield temporary paths, one per target (same names, in a private folder beside them).

    When the block succeeds the files are renamed onto the targets in the order given (put the
    header last: a reader that finds the new header finds its new data). If the block fails nothing
    is moved; if a rename fails, the targets already replaced get their previous version back (kept
    as a hard link while the renames run), so either every file lands or none does.
    """
    targets = [Path(t) for t in targets]
    parent = targets[0].parent
    if not parent.exists():
        raise FileNotFoundError(f"output directory {parent} does not exist")
    if any(t.parent != parent for t in targets) or len({t.name for t in targets}) != len(targets):
        raise ValueError(f"the files {[str(t) for t in targets]} must be distinct names in one folder")
    stage = Path(tempfile.mkdtemp(prefix=f".{targets[-1].name}.", suffix=".tmp", dir=parent))
    try:
        staged = [stage / t.name for t in targets]
        yield staged
        backups: list[Path | None] = []
        for n, target in enumerate(targets):
            backup = None
            if target.exists():
                backup = stage / f".previous-{n}"
                with contextlib.suppress(OSError):
                    os.link(target, backup)
            backups.append(backup if backup is not None and backup.exists() else None)
        done = 0
        try:
            for src, target in zip(staged, targets):
                os.replace(src, target)
                done += 1
        except BaseException:
            for target, backup in list(zip(targets, backups))[:done]:
                with contextlib.suppress(OSError):
                    if backup is not None:
                        os.replace(backup, target)
                    else:
                        target.unlink()
            raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
