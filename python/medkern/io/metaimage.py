"""MetaImage (``.mha``, or a ``.mhd`` header with its ``.raw``/``.zraw`` data file), ITK's own format.

The header is ``Key = Value`` text ending with ``ElementDataFile``; the voxels follow it (``LOCAL``)
or live in the file(s) it names. Keys are matched without regard to case, as MetaIO does.

Geometry (checked against SimpleITK by round trips)
---------------------------------------------------
Every per-axis list is in ITK order, (x, y, z) = (i, j, k), the reverse of medkern's array axes.

* ``DimSize``: the sizes; ``ElementNumberOfChannels`` > 1: that many interleaved components per
  voxel, read as a vector Image (components on the last array axis).
* ``ElementSpacing`` (``ElementSize`` when there is no spacing, as ITK reads it): the spacing.
* ``Offset`` (synonyms ``Position``, ``Origin``): the LPS position of voxel 0.
* ``TransformMatrix`` (synonyms ``Rotation``, ``Orientation``): the direction cosines, one *row*
  per axis: row ``a`` is the unit vector of axis ``a``. Written row-major that is ITK's direction
  matrix transposed (ITK's own files read back this way: rows ``0 1 0 -1 0 0 0 0 1`` give the
  direction whose columns are (0, 1, 0) and (-1, 0, 0)).
* ``AnatomicalOrientation`` (e.g. ``RAI`` for the identity: each letter is the side axis ``a``
  starts *from*) only summarises the direction; ITK does not read geometry from it and neither does
  medkern, so a file agrees with ITK. It is written, for 3D images, as ITK writes it.
* ``NDims = 4``: a series of 3D volumes; ``volume=t`` picks one (as for 4D NIfTI) and its geometry
  is the 3D part of the 4D one. ``NDims`` 2 and 3 are 2D and 3D Images.

Data
----
``ElementType`` ``MET_UCHAR``, ``MET_CHAR``, ``MET_USHORT``, ``MET_SHORT``, ``MET_UINT``, ``MET_INT``,
``MET_ULONG``, ``MET_LONG`` (MetaIO fixes both "long" types at 4 bytes), ``MET_ULONG_LONG``,
``MET_LONG_LONG``, ``MET_FLOAT``, ``MET_DOUBLE``; ``BinaryDataByteOrderMSB`` (or
``ElementByteOrderMSB``) ``True`` for big-endian; ``BinaryData = False`` for numbers written as text;
``CompressedData = True`` for a zlib stream (``CompressedDataSize`` bytes of it when given).
``ElementDataFile`` is ``LOCAL``, one file name, ``LIST [nD]`` followed by one file name per line
(each file an nD block, default ``NDims - 1``, compressed one by one when ``CompressedData``), or a
pattern ``name%03d.raw first last [step]``. ``HeaderSize`` bytes are skipped at the start of each
named data file (``-1``: the data is the end of the file); it does not apply to ``LOCAL`` data,
which starts after the header. Data files are read only from inside the header's folder; names
that lead elsewhere (``../../etc/passwd``, absolute paths) are refused (see
:mod:`medkern.io._datafile`), as is any size the bytes present cannot hold, before allocation.

Writing produces what ITK writes (key order, little-endian, ``MET_LONG_LONG`` for int64, bool as
``MET_UCHAR``), with numbers in their shortest exact decimal form, so geometry round-trips bit for
bit. ``.mhd`` data goes to ``<stem>.raw`` (``<stem>.zraw`` compressed) beside the header; the two
files land together or not at all.
"""

from __future__ import annotations

import itertools
import os
import re
import zlib
from pathlib import Path

import numpy as np

from medkern._docstrings import fill_doc
from medkern.image import Image
from medkern.io._atomic import atomic_path
from medkern.io._datafile import (
    atomic_files,
    data_file_beside,
    inflate,
    native,
    number_text,
    parse_text_values,
    read_span,
    voxel_bytes,
)

__all__ = ["read_metaimage", "write_metaimage"]

_ELEMENT_TYPES = {
    "MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_USHORT": "u2", "MET_SHORT": "i2", "MET_UINT": "u4",
    "MET_INT": "i4", "MET_ULONG": "u4", "MET_LONG": "i4", "MET_ULONG_LONG": "u8", "MET_LONG_LONG": "i8",
    "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
_WRITE_TYPES = {"uint8": "MET_UCHAR", "int8": "MET_CHAR", "uint16": "MET_USHORT", "int16": "MET_SHORT",
                "uint32": "MET_UINT", "int32": "MET_INT", "uint64": "MET_ULONG_LONG", "int64": "MET_LONG_LONG",
                "float32": "MET_FLOAT", "float64": "MET_DOUBLE"}
# MetaIO's names for one key (matched case-insensitively); messages use the first.
_SYNONYMS = {"Offset": ("Offset", "Position", "Origin"),
             "TransformMatrix": ("TransformMatrix", "Rotation", "Orientation"),
             "ElementSpacing": ("ElementSpacing", "ElementSize"),
             "BinaryDataByteOrderMSB": ("BinaryDataByteOrderMSB", "ElementByteOrderMSB")}
_MAX_LINE = 1 << 16
_PATTERN = re.compile(r"^[^%]*%0?\d*d[^%]*$")
# AnatomicalOrientation letters: the side each ITK axis starts from, by LPS coordinate and sign.
_FROM_SIDE = (("R", "L"), ("A", "P"), ("I", "S"))


def _read_header(path: Path) -> tuple[dict[str, str], list[str], int]:
    """The header's fields (keys lower-cased), the LIST file names, and where LOCAL data begins."""
    fields: dict[str, str] = {}
    with open(path, "rb") as fh:
        for number in itertools.count(1):
            line = fh.readline(_MAX_LINE + 1)
            if not line:
                raise ValueError(f"{path}: no ElementDataFile line; not a MetaImage header, or a truncated one")
            if len(line) > _MAX_LINE:
                raise ValueError(f"{path}: header line {number} is longer than {_MAX_LINE} bytes; not a MetaImage "
                                 "header")
            text = line.decode("latin-1").strip()
            if not text:
                continue
            key, sep, value = text.partition("=")
            key = key.strip().lower()
            if not sep or not re.fullmatch(r"\w+", key):
                raise ValueError(f"{path}: header line {number} ({text[:40]!r}) is not 'Key = Value'; not a "
                                 "MetaImage header")
            if key in fields:
                raise ValueError(f"{path}: header key {key!r} appears twice")
            fields[key] = value.strip()
            if key == "elementdatafile":
                break
        data_start = fh.tell()
        names: list[str] = []
        if fields["elementdatafile"].split()[:1] and fields["elementdatafile"].split()[0].upper() == "LIST":
            for line in iter(lambda: fh.readline(_MAX_LINE + 1), b""):
                if len(line) > _MAX_LINE:
                    raise ValueError(f"{path}: a LIST file name is longer than {_MAX_LINE} bytes")
                if line.strip():
                    names.append(line.decode("utf-8", "replace").strip())
    return fields, names, data_start


def _get(fields: dict[str, str], key: str) -> str | None:
    for name in _SYNONYMS.get(key, (key,)):
        if name.lower() in fields:
            return fields[name.lower()]
    return None


def _values(fields: dict[str, str], key: str, kind: type, count: int, default, source: Path) -> tuple:
    text = _get(fields, key)
    if text is None:
        return tuple(default)
    try:
        values = tuple(kind(v) for v in text.split())
    except ValueError as exc:
        raise ValueError(f"{source}: {key} = {text!r} is not a list of numbers") from exc
    if len(values) != count or not all(np.isfinite(v) for v in values):
        raise ValueError(f"{source}: {key} = {text!r} needs {count} finite values")
    return values


def _flag(fields: dict[str, str], key: str, default: bool, source: Path) -> bool:
    text = _get(fields, key)
    if text is None:
        return default
    if text.lower() in ("true", "t", "1"):
        return True
    if text.lower() in ("false", "f", "0"):
        return False
    raise ValueError(f"{source}: {key} = {text!r} is not True or False")


def _int(fields: dict[str, str], key: str, default: int | None, source: Path) -> int | None:
    text = _get(fields, key)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError as exc:
        raise ValueError(f"{source}: {key} = {text!r} is not an integer") from exc


def _data_files(spec: str, names: list[str], ndims: int, dims: tuple[int, ...], path: Path) -> list[Path]:
    """The data files an ElementDataFile value names, in order (one block each, equal sizes)."""
    tokens = spec.split()
    if tokens[0].upper() == "LIST":
        subdim = ndims - 1
        if len(tokens) > 1:
            m = re.fullmatch(r"(\d+)D?", tokens[1], flags=re.IGNORECASE)
            if not m or not 1 <= int(m.group(1)) <= ndims:
                raise ValueError(f"{path}: ElementDataFile = {spec!r}: the block dimension must be 1..{ndims}")
            subdim = int(m.group(1))
        expected = int(np.prod(dims[subdim:], dtype=object))
        if len(names) != expected:
            raise ValueError(f"{path}: ElementDataFile = {spec!r} lists {len(names)} files; {list(dims)} in "
                             f"{subdim}D blocks needs {expected}")
    elif len(tokens) >= 3 and "%" in tokens[0]:
        if not _PATTERN.match(tokens[0]) or len(tokens) > 4:
            raise ValueError(f"{path}: ElementDataFile = {spec!r} is not a 'name%0Nd.raw first last [step]' pattern")
        try:
            first, last, step = (int(t) for t in (tokens[1:] + ["1"])[:3])
        except ValueError as exc:
            raise ValueError(f"{path}: ElementDataFile = {spec!r}: first, last and step must be integers") from exc
        count = (last - first) // step + 1 if step and (last - first) * step >= 0 else 0
        if count != dims[-1]:
            raise ValueError(f"{path}: ElementDataFile = {spec!r} names {count} files for {dims[-1]} slices")
        names = [tokens[0] % i for i in range(first, first + step * count, step)]
    else:
        names = [spec]
    return [data_file_beside(path, n) for n in names]


def _voxel_bytes(chunks: list[tuple[Path, int, int]], compressed: bool, binary: bool,
                 compressed_size: int | None, p: Path) -> bytes | bytearray:
    """The voxel data of ``(file, offset, size)`` chunks (offset -1: the last ``size`` bytes),
    inflated or as text where the header says so."""
    parts = []
    for file, offset, size in chunks:
        if compressed:
            if offset < 0:
                raise ValueError(f"{p}: HeaderSize = -1 cannot locate compressed data")
            whole = compressed_size if len(chunks) == 1 else None
            parts.append(inflate(read_span(file, offset, whole, p), size, "zlib", p))
        elif not binary:
            if offset < 0:
                raise ValueError(f"{p}: HeaderSize = -1 cannot locate text data")
            parts.append(read_span(file, offset, None, p) + b" ")
        else:
            if offset >= 0 and file.stat().st_size - offset > size:
                raise ValueError(f"{p}: {file.stat().st_size - offset - size} bytes follow the {size} bytes of "
                                 f"voxel data the header describes in {file.name} (wrong sizes or type)")
            parts.append(read_span(file, -size if offset < 0 else offset, size, p))
    data = parts[0] if len(parts) == 1 else bytearray().join(parts)
    return data


@fill_doc
def read_metaimage(path: str | os.PathLike, volume: int | None = None) -> Image:
    """Read a ``.mha`` or ``.mhd`` MetaImage (ITK's own format) as an LPS Image.

    Every per-axis list in the header is in ITK order, ``(x, y, z) = (i, j, k)``, the reverse of
    the array axes. ``ElementSpacing`` (``ElementSize`` when there is no spacing) gives the
    spacing, ``Offset`` (``Position``, ``Origin``) the LPS position of voxel 0,
    ``TransformMatrix`` (``Rotation``, ``Orientation``) the direction, one row per axis (ITK's
    direction matrix transposed). ``AnatomicalOrientation`` is not read, as ITK does not.
    ``ElementNumberOfChannels`` > 1 gives a vector Image. All MetaIO element types, either byte
    order, text or zlib-compressed data, ``LOCAL`` data or named data files (one, ``LIST`` or a
    pattern) and ``HeaderSize`` are read. Data files are read only from inside the header's
    folder, and sizes are checked against the bytes present before allocation.

    Parameters
    ----------
    %(path_in)s
    %(volume)s

    Returns
    -------
    Image
        The voxels in array order with LPS geometry (a 4D file's volume: the 3D part of its
        geometry).

    Raises
    ------
    ValueError
        The file is unreadable or inconsistent, or a data file name leads outside the header's
        folder; the message names the file and the problem.
    FileNotFoundError
        The file or a data file is missing.

    See Also
    --------
    write_metaimage : Write a MetaImage.
    medkern.read : Read any supported format by its suffix.

    Examples
    --------
    >>> img = mk.Image(np.zeros((2, 3, 4), np.float32), spacing=(2.5, 1.0, 0.5), origin=(1, 2, 3))
    >>> mk.write(img, "t2.mhd")
    >>> mk.io.read_metaimage("t2.mhd")
    Image(shape=(2, 3, 4), dtype=float32, spacing=(2.5, 1, 0.5), origin=(1, 2, 3), numpy)
    """
    p = Path(path)
    fields, names, data_start = _read_header(p)
    object_type = fields.get("objecttype", "Image")
    if object_type.lower() != "image":
        raise ValueError(f"{p}: ObjectType = {object_type!r}; only images are read")
    ndims = _int(fields, "NDims", None, p)
    if ndims is None or not 2 <= ndims <= 4:
        raise ValueError(f"{p}: NDims = {fields.get('ndims')!r}; medkern reads 2D, 3D and 4D MetaImages")
    dims = _values(fields, "DimSize", int, ndims, (), p)
    channels = _int(fields, "ElementNumberOfChannels", 1, p)
    if not dims or channels < 1:
        raise ValueError(f"{p}: DimSize is missing, or ElementNumberOfChannels = {channels} is below 1")
    element_type = fields.get("elementtype", "").upper()
    if element_type not in _ELEMENT_TYPES:
        raise ValueError(f"{p}: unsupported ElementType {fields.get('elementtype')!r}; supported: "
                         f"{', '.join(_ELEMENT_TYPES)}")
    msb = _flag(fields, "BinaryDataByteOrderMSB", False, p)
    dtype = np.dtype(_ELEMENT_TYPES[element_type]).newbyteorder(">" if msb else "<")
    spacing = _values(fields, "ElementSpacing", float, ndims, (1.0,) * ndims, p)
    origin = _values(fields, "Offset", float, ndims, (0.0,) * ndims, p)
    matrix = _values(fields, "TransformMatrix", float, ndims * ndims, np.eye(ndims).ravel(), p)
    binary = _flag(fields, "BinaryData", True, p)
    compressed = _flag(fields, "CompressedData", False, p)
    compressed_size = _int(fields, "CompressedDataSize", None, p)
    header_size = _int(fields, "HeaderSize", 0, p)
    if header_size < -1 or (compressed_size is not None and compressed_size < 0):
        raise ValueError(f"{p}: HeaderSize {header_size} or CompressedDataSize {compressed_size} is invalid")
    if not all(s > 0 for s in spacing):
        raise ValueError(f"{p}: ElementSpacing {list(spacing)} must be positive")
    if volume is not None and ndims != 4:
        raise ValueError(f"{p}: volume={volume} given for a {ndims}D MetaImage; it picks a volume of a 4D one")
    if ndims == 4 and not 0 <= (volume if volume is not None else 0) < dims[3]:
        raise ValueError(f"{p}: volume={volume} is out of range for {dims[3]} volumes")
    if ndims == 4 and volume is None and dims[3] != 1:
        raise ValueError(f"{p}: MetaImage has {dims[3]} volumes (4D); pass volume=t to pick one")

    nbytes = voxel_bytes(dims + (channels,), dtype.itemsize, p)
    spec = fields["elementdatafile"]
    if not spec:
        raise ValueError(f"{p}: ElementDataFile is empty")
    if spec.upper() == "LOCAL":
        chunks = [(p, data_start, nbytes)]
    else:
        files = _data_files(spec, names, ndims, dims, p)
        chunks = [(f, header_size, nbytes // len(files)) for f in files]
    data = _voxel_bytes(chunks, compressed, binary, compressed_size, p)
    shape = dims[::-1] + ((channels,) if channels > 1 else ())
    if binary or compressed:
        array = np.frombuffer(data, dtype=dtype).reshape(shape)
    else:
        array = parse_text_values(data, nbytes // dtype.itemsize, dtype.newbyteorder("="), p).reshape(shape)
    n = min(ndims, 3)
    if ndims == 4:
        array = array[volume or 0]
    direction = np.asarray(matrix, dtype=np.float64).reshape(ndims, ndims).T[:n, :n]
    if abs(np.linalg.det(direction)) < 1e-6:
        raise ValueError(f"{p}: TransformMatrix {list(matrix)} is singular")
    if np.any(np.abs(np.linalg.norm(direction, axis=0) - 1.0) > 1e-3):
        raise ValueError(f"{p}: TransformMatrix {list(matrix)} has columns that are not unit vectors (the "
                         "scale belongs in ElementSpacing)")
    return Image(native(array), spacing=spacing[:n][::-1], origin=origin[:n], direction=direction[:, ::-1],
                 vector=channels > 1)


def _anatomical_orientation(direction_itk: np.ndarray) -> str:
    """ITK's three-letter summary: the closest axis permutation, each letter the side an axis starts from."""
    best = max(itertools.permutations(range(3)),
               key=lambda perm: sum(abs(direction_itk[c, a]) for a, c in enumerate(perm)))
    return "".join(_FROM_SIDE[c][0 if direction_itk[c, a] >= 0 else 1] for a, c in enumerate(best))


def write_metaimage(img: Image, path: str | os.PathLike, *, compress: bool = False,
                    compression_level: int = 6) -> None:
    """Write an Image as MetaImage: ``.mha`` (one file) or ``.mhd`` with ``.raw``/``.zraw`` beside it.

    The header is what ITK writes (key order, little-endian, ``MET_LONG_LONG`` for int64, bool
    as ``MET_UCHAR``, ``AnatomicalOrientation`` for 3D), numbers in their shortest exact
    decimal form, so geometry round-trips bit for bit. A vector Image is written with
    ``ElementNumberOfChannels``.

    Parameters
    ----------
    img : Image
        The image to write.
    path : str or os.PathLike
        Ends with ``.mha`` or ``.mhd``. Written atomically: a ``.mhd`` and its data file
        (``<stem>.raw``, ``<stem>.zraw`` compressed) land together or not at all.
    compress : bool, optional
        Store the voxels as a zlib stream (``CompressedData``).
    compression_level : int, optional
        1..9, when ``compress``; default 6.

    Raises
    ------
    TypeError
        ``img`` is not an Image.
    ValueError
        A compression level outside 1..9, or a file name that is not ``.mha``/``.mhd``.

    See Also
    --------
    read_metaimage : Read a MetaImage.
    medkern.write : Write any supported format by its suffix.

    Examples
    --------
    >>> img = mk.Image(np.zeros((2, 3, 4), np.int16), spacing=(2.5, 1.0, 0.5))
    >>> mk.io.write_metaimage(img, "ct.mhd", compress=True)
    >>> import os
    >>> sorted(os.listdir("."))
    ['ct.mhd', 'ct.zraw']
    >>> from pathlib import Path
    >>> print(Path("ct.mhd").read_text())
    ObjectType = Image
    NDims = 3
    ...
    DimSize = 4 3 2
    ...
    ElementDataFile = ct.zraw
    """
    if not isinstance(img, Image):
        raise TypeError(f"write_metaimage expects a medkern.Image, got {type(img).__name__}")
    if not 1 <= int(compression_level) <= 9:
        raise ValueError(f"compression_level must be 1..9, got {compression_level}")
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".mha", ".mhd"):
        raise ValueError(f"{target}: a MetaImage file name ends with .mha or .mhd")
    array = np.asarray(img)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    if compress:
        data = zlib.compress(data, int(compression_level))
    n = img.ndim
    direction_itk = img.direction[:, ::-1]

    def numbers(values) -> str:
        return " ".join(number_text(v) for v in values)

    lines = ["ObjectType = Image", f"NDims = {n}", "BinaryData = True", "BinaryDataByteOrderMSB = False",
             f"CompressedData = {compress}"]
    if compress:
        lines.append(f"CompressedDataSize = {len(data)}")
    lines += [f"TransformMatrix = {numbers(direction_itk.T.ravel())}",
              f"Offset = {numbers(img.origin)}", f"CenterOfRotation = {numbers([0] * n)}"]
    if n == 3:
        lines.append(f"AnatomicalOrientation = {_anatomical_orientation(direction_itk)}")
    lines += [f"ElementSpacing = {numbers(img.spacing[::-1])}", f"DimSize = {numbers(img.shape[::-1])}"]
    if img.is_vector:
        lines.append(f"ElementNumberOfChannels = {array.shape[-1]}")
    lines.append(f"ElementType = {_WRITE_TYPES[array.dtype.name]}")
    if suffix == ".mha":
        with atomic_path(target) as tmp:
            tmp.write_bytes(("\n".join(lines + ["ElementDataFile = LOCAL"]) + "\n").encode("ascii") + data)
        return
    data_target = target.with_suffix(".zraw" if compress else ".raw")
    with atomic_files([data_target, target]) as (tmp_data, tmp_header):
        tmp_data.write_bytes(data)
        tmp_header.write_text("\n".join(lines + [f"ElementDataFile = {data_target.name}"]) + "\n", encoding="utf-8")
