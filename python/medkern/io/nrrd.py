"""NRRD (``.nrrd``, detached ``.nhdr``) and 3D Slicer segmentations (``.seg.nrrd``), via pynrrd.

Geometry (NRRD format, teem.sourceforge.net/nrrd/format.html §4)
---------------------------------------------------------------
NRRD lists its axes fastest first, (i, j, k) for a volume, as ITK does; medkern's array axes are
the reverse, ``[k, j, i]``. ``space directions`` gives one vector per axis: the world step from one
sample to the next, so its length is the spacing and its unit vector the axis direction (oblique
and left-handed frames included). ``space origin`` is the world position of sample 0 (its centre,
as ITK reads it). The ``space`` field names the world frame:

* ``left-posterior-superior`` (LPS), ``scanner-xyz``, ``3D-right-handed`` and ``3D-left-handed``
  are taken as LPS, as ITK and 3D Slicer take them;
* ``right-anterior-superior`` (RAS) negates x and y, ``left-anterior-superior`` (LAS) negates y,
  so every Image comes out in LPS, the world medkern works in;
* the 4D ``-time`` spaces are refused (an Image has no time axis).

Without ``space``/``space dimension`` a file has no orientation: the axes are taken axis-aligned
(ITK's identity direction), ``spacings`` give the spacing (1 where missing) and ``axis mins`` the
origin (the minimum is the edge of a cell-centred sample: origin = min + spacing / 2, or min for
``centers: node``), as ITK reads such files.

An axis whose direction is ``none`` (or, without orientation, whose kind is not ``domain`` or
``space``: ``vector``, ``list``, ``RGB-color``, ``time`` ...) is not spatial: it becomes the component
axis of a vector Image (the last array axis), wherever it sits in the file. At most one such axis
is allowed. Two sample axes in a 3D space (one slice of a volume) read as a 3D Image of one slice
whose slice axis is the unit normal of the plane (spacing 1), which keeps the slice's position;
ITK refuses such files. ``measurement frame`` (a DWI/tensor attribute) is not applied.

Data: ``raw``, ``gzip``, ``bzip2``, ``ascii`` and ``hex`` encodings, either endianness, ``line skip``
(lines of the data file, before decompression) and ``byte skip`` (bytes of the decoded stream, as
teem applies it; ``-1``, raw only, means the data is the end of the file). Multi-file data (``data
file: LIST`` or a filename pattern) is refused. Sizes are checked against the bytes present before
any voxel array is allocated (see :mod:`medkern.io._datafile`).

Writing puts LPS geometry in ``space directions``/``space origin`` (``space: left-posterior-superior``
in 3D, ``space dimension: 2`` in 2D, as SimpleITK writes), kinds ``domain`` (``vector`` for the
component axis of a vector Image, ``list`` for the layers of a ``.seg.nrrd``), little-endian data,
``encoding="gzip"`` by default. A ``.nhdr`` gets its data file beside it (``<stem>.raw``,
``.raw.gz``, ``.raw.bz2`` or ``.txt``); both land together or neither (temporary folder, renames).

Segmentations (``.seg.nrrd``)
-----------------------------
3D Slicer stores a segmentation as a label map plus ``key:=value`` fields ``Segment<N>_ID``,
``_Name``, ``_LabelValue``, ``_Layer``, ``_Color``, ``_Extent``, ``_Tags`` ... and
``Segmentation_*`` fields. An :class:`~medkern.Image` carries no metadata, so
``read_nrrd(path, return_header=True)`` returns ``(image, NrrdHeader)``: ``header.segments`` is a
tuple of :class:`SegmentInfo` (every ``Segment<N>_*`` field kept), ``header.key_values`` holds the
other ``key:=value`` fields as strings. ``write_nrrd(img, path, segments=..., key_values=...)``
(or ``mk.write``) writes them back unchanged. Overlapping segments are stored by Slicer in several
layers: a 4D file whose first axis is a ``list`` of layers; it reads as a vector Image, layer ``l``
being ``img.array[..., l]``, and a vector Image is written back the same way. A ``.seg.nrrd``
written without ``segments`` gets one segment per label value found (per layer), named
``Segment_<value>``, and the ``Segmentation_*`` fields Slicer needs to open it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

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

__all__ = ["NrrdHeader", "SegmentInfo", "read_nrrd", "write_nrrd"]

# teem's type names (format.html §5 "type") -> numpy type codes; "block" has no numpy meaning.
_TYPE_NAMES = {
    "i1": ("signed char", "int8", "int8_t"),
    "u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
    "i2": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "i4": ("int", "signed int", "int32", "int32_t"),
    "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
    "i8": ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
           "int64_t"),
    "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    "f4": ("float",),
    "f8": ("double",),
}
_NRRD_DTYPES = {name: np.dtype(code) for code, names in _TYPE_NAMES.items() for name in names}
_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2", "ascii": "ascii",
              "text": "ascii", "txt": "ascii", "hex": "hex"}
_WRITE_ENCODINGS = ("raw", "gzip", "bzip2", "ascii")
_DETACHED_SUFFIX = {"raw": ".raw", "gzip": ".raw.gz", "bzip2": ".raw.bz2", "ascii": ".txt"}
# Sign flips from the named 3D spaces to LPS (format.html §4 "space"; ITK NrrdImageIO does the same).
_LPS = (1.0, 1.0, 1.0)
_SPACES = {
    "left-posterior-superior": _LPS, "lps": _LPS, "scanner-xyz": _LPS, "3d-right-handed": _LPS,
    "3d-left-handed": _LPS, "right-anterior-superior": (-1.0, -1.0, 1.0), "ras": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (1.0, -1.0, 1.0), "las": (1.0, -1.0, 1.0),
}
_TIME_SPACES = ("right-anterior-superior-time", "rast", "left-anterior-superior-time", "last",
                "left-posterior-superior-time", "lpst", "scanner-xyz-time", "3d-right-handed-time",
                "3d-left-handed-time")
# Kinds of sample axes (format.html §6 "kinds"); any other kind is a non-spatial (component) axis.
_SPATIAL_KINDS = ("domain", "space", "???", "none")
# The fields the NRRD format defines; every other header line is a key:=value pair.
_STANDARD_FIELDS = frozenset((
    "dimension", "type", "block size", "blocksize", "encoding", "endian", "content", "min", "max", "old min",
    "oldmin", "old max", "oldmax", "data file", "datafile", "line skip", "lineskip", "byte skip", "byteskip",
    "number", "sample units", "sampleunits", "sizes", "spacings", "thicknesses", "axis mins", "axismins",
    "axis maxs", "axismaxs", "centers", "centerings", "labels", "units", "kinds", "space", "space dimension",
    "space units", "space origin", "space directions", "measurement frame",
))
_SEGMENT_FIELD = re.compile(r"^Segment(\d+)_(.+)$")
_SEGMENT_KEYS = ("Color", "Extent", "ID", "LabelValue", "Layer", "Name", "Tags")
# Fields 3D Slicer expects in a .seg.nrrd besides the segments themselves.
_SLICER_DEFAULTS = {
    "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
    "Segmentation_MasterRepresentation": "Binary labelmap",
    "Segmentation_ReferenceImageExtentOffset": "0 0 0",
}
# Colours of generated segments (Tableau 10): distinct, readable on grey anatomy.
_PALETTE = ((0.122, 0.467, 0.706), (1.0, 0.498, 0.055), (0.173, 0.627, 0.173), (0.839, 0.153, 0.157),
            (0.58, 0.404, 0.741), (0.549, 0.337, 0.294), (0.89, 0.467, 0.761), (0.498, 0.498, 0.498),
            (0.737, 0.741, 0.133), (0.09, 0.745, 0.812))


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a 3D Slicer segmentation (the ``Segment<N>_*`` fields of a ``.seg.nrrd``).

    Parameters
    ----------
    id : str
        Slicer's segment ID (``Segment<N>_ID``).
    name : str
        The segment's display name.
    label_value : int
        The voxel value of the segment in layer ``layer``.
    layer : int, optional
        The component index of a multi-layer (overlapping segments) image; 0 otherwise.
    color : tuple of float, optional
        RGB in 0..1.
    extent : tuple of int, optional
        Slicer's voxel bounding box ``(i0, i1, j0, j1, k0, k1)`` in file axis order.
    tags : str, optional
        Slicer's ``|``-separated tag string (terminology and status).
    extra : mapping of str to str, optional
        Every other ``Segment<N>_<key>`` value by key (e.g. ``NameAutoGenerated``), so nothing
        read from a file is lost when it is written back.

    See Also
    --------
    NrrdHeader : Holds the segments read from a file.
    write_nrrd : Writes segments into a ``.seg.nrrd``.

    Examples
    --------
    >>> labels = mk.Image(np.array([[[0, 1], [1, 1]]], np.uint8))
    >>> gtv = mk.io.SegmentInfo(id="Segment_1", name="GTV", label_value=1, color=(1.0, 0.0, 0.0))
    >>> mk.io.write_nrrd(labels, "gtv.seg.nrrd", segments=[gtv])
    >>> _, header = mk.io.read_nrrd("gtv.seg.nrrd", return_header=True)
    >>> header.segments[0].name, header.segments[0].color
    ('GTV', (1.0, 0.0, 0.0))
    """

    id: str
    name: str
    label_value: int
    layer: int = 0
    color: tuple[float, float, float] | None = None
    extent: tuple[int, ...] | None = None
    tags: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NrrdHeader:
    """What a NRRD file says besides its voxels and geometry, as :func:`read_nrrd` returns it.

    Parameters
    ----------
    fields : mapping of str to object
        Every standard field as pynrrd parsed it (``sizes``, ``space directions``, ``kinds``...).
    key_values : mapping of str to str
        The ``key:=value`` pairs other than the ``Segment<N>_*`` ones, in file order.
    segments : tuple of SegmentInfo, optional
        The 3D Slicer segments (empty for a plain image), ordered by ``N``.

    See Also
    --------
    read_nrrd : Returns it with ``return_header=True``.
    write_nrrd : Writes ``segments`` and ``key_values`` back.

    Examples
    --------
    >>> img = mk.Image(np.zeros((2, 3, 4), np.int16))
    >>> mk.io.write_nrrd(img, "ct.nrrd", key_values={"Operator": "QA"})
    >>> _, header = mk.io.read_nrrd("ct.nrrd", return_header=True)
    >>> header.key_values, header.fields["encoding"], header.segments
    ({'Operator': 'QA'}, 'gzip', ())
    """

    fields: Mapping[str, Any]
    key_values: Mapping[str, str]
    segments: tuple[SegmentInfo, ...] = ()


# ---------------------------------------------------------------------------------------- reading
def _numbers(text: str, kind: type, count: int | None, what: str, source: object) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split())
    except ValueError as exc:
        raise ValueError(f"{source}: {what} {text!r} is not a list of numbers") from exc
    if count is not None and len(values) != count:
        raise ValueError(f"{source}: {what} {text!r} needs {count} values")
    return values


def _segments(key_values: Mapping[str, str], source: object) -> tuple[tuple[SegmentInfo, ...], dict[str, str]]:
    """Split the Segment<N>_* fields into SegmentInfo records; return them and the other pairs."""
    by_index: dict[int, dict[str, str]] = {}
    rest: dict[str, str] = {}
    for key, value in key_values.items():
        m = _SEGMENT_FIELD.match(key)
        if m:
            by_index.setdefault(int(m.group(1)), {})[m.group(2)] = value
        else:
            rest[key] = value
    segments = []
    for n in sorted(by_index):
        f = by_index[n]
        what = f"Segment{n}"
        # Slicer files before layers existed (4.10) had no LabelValue/Layer: one segment per layer, value 1.
        label = _numbers(f.get("LabelValue", "1"), int, 1, f"{what}_LabelValue", source)[0]
        layer = _numbers(f.get("Layer", str(n) if "LabelValue" not in f else "0"), int, 1, f"{what}_Layer",
                         source)[0]
        color = _numbers(f["Color"], float, 3, f"{what}_Color", source) if "Color" in f else None
        extent = _numbers(f["Extent"], int, None, f"{what}_Extent", source) if "Extent" in f else None
        seg_id = f.get("ID", f"Segment_{n + 1}")
        segments.append(SegmentInfo(
            id=seg_id, name=f.get("Name", seg_id), label_value=label, layer=layer, color=color, extent=extent,
            tags=f.get("Tags"), extra={k: v for k, v in f.items() if k not in _SEGMENT_KEYS},
        ))
    return tuple(segments), rest


def _space_vectors(header: Mapping[str, Any], dim: int, sdim: int, source: object) -> list[np.ndarray | None]:
    raw = header.get("space directions")
    if raw is None:
        raise ValueError(f"{source}: the header names a space but has no 'space directions'")
    rows = list(raw)
    if len(rows) != dim:
        raise ValueError(f"{source}: 'space directions' has {len(rows)} entries for {dim} axes")
    vectors: list[np.ndarray | None] = []
    for row in rows:
        v = None if row is None else np.asarray(row, dtype=np.float64).ravel()
        if v is None or np.all(np.isnan(v)):
            vectors.append(None)
            continue
        if v.shape != (sdim,) or not np.all(np.isfinite(v)) or not np.any(v):
            raise ValueError(f"{source}: space direction {row!r} is not a non-zero vector of {sdim} finite numbers")
        vectors.append(v)
    return vectors


def _geometry(header: Mapping[str, Any], source: object):
    """(spatial file axes, component file axis or None, ITK spacing, origin, ITK direction columns)."""
    dim = int(header["dimension"])
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * dim)]
    if len(kinds) != dim:
        raise ValueError(f"{source}: 'kinds' has {len(kinds)} entries for {dim} axes")
    space = header.get("space")
    if space is not None:
        name = str(space).strip().lower()
        if name in _TIME_SPACES:
            raise ValueError(f"{source}: space {space!r} has a time coordinate; only 2D and 3D spaces are supported")
        if name not in _SPACES:
            raise ValueError(f"{source}: unknown NRRD space {space!r}")
        flip, sdim = np.asarray(_SPACES[name]), 3
    elif "space dimension" in header:
        sdim = int(header["space dimension"])
        if sdim not in (2, 3):
            raise ValueError(f"{source}: space dimension {sdim} is not supported (2 or 3)")
        flip = np.ones(sdim)
    else:
        sdim = 0
    if sdim:
        vectors = _space_vectors(header, dim, sdim, source)
        spatial = [a for a in range(dim) if vectors[a] is not None]
        columns = [vectors[a] * flip for a in spatial]
        origin = np.asarray(header.get("space origin", np.zeros(sdim)), dtype=np.float64).ravel()
        if origin.shape != (sdim,) or not np.all(np.isfinite(origin)):
            raise ValueError(f"{source}: 'space origin' must be {sdim} finite numbers, got {origin.tolist()}")
        origin = origin * flip
    else:
        spatial = [a for a in range(dim) if kinds[a] in _SPATIAL_KINDS]
        spacings = np.asarray(header.get("spacings", [np.nan] * dim), dtype=np.float64).ravel()
        mins = np.asarray(header.get("axis mins", [np.nan] * dim), dtype=np.float64).ravel()
        centers = [str(c).lower() for c in header.get("centers", header.get("centerings", ["cell"] * dim))]
        if spacings.shape != (dim,) or mins.shape != (dim,) or len(centers) != dim:
            raise ValueError(f"{source}: 'spacings', 'axis mins' and 'centers' need one entry per axis")
        sdim = len(spatial)
        columns, origin = [], np.zeros(sdim)
        for n, a in enumerate(spatial):
            s = spacings[a] if np.isfinite(spacings[a]) and spacings[a] > 0 else 1.0
            columns.append(np.eye(sdim)[:, n] * s)
            if np.isfinite(mins[a]):
                origin[n] = mins[a] + (0.0 if centers[a] == "node" else s / 2)
    others = [a for a in range(dim) if a not in spatial]
    if len(others) > 1:
        raise ValueError(f"{source}: {len(others)} non-spatial axes (kinds {kinds}); an Image has at most one "
                         "component axis")
    if not (len(spatial) == sdim or (len(spatial) == 2 and sdim == 3)) or sdim not in (2, 3):
        raise ValueError(f"{source}: {len(spatial)} spatial axes in a {sdim}D space; only 2D and 3D images are "
                         "supported")
    if len(spatial) == 2 and sdim == 3:
        normal = np.cross(columns[0], columns[1])
        if not np.any(normal):
            raise ValueError(f"{source}: the two space directions are parallel")
        columns.append(normal / np.linalg.norm(normal))
    m = np.stack(columns, axis=1)
    spacing = np.linalg.norm(m, axis=0)
    if abs(np.linalg.det(m / spacing)) < 1e-6:
        raise ValueError(f"{source}: the space directions are not independent")
    return spatial, (others[0] if others else None), spacing, origin, m / spacing


def _read_data(header: Mapping[str, Any], path: Path, data_start: int, source: object) -> np.ndarray:
    type_name = str(header["type"]).strip().lower()
    if type_name not in _NRRD_DTYPES:
        raise ValueError(f"{source}: unsupported NRRD type {header['type']!r}")
    dtype = _NRRD_DTYPES[type_name]
    encoding = _ENCODINGS.get(str(header["encoding"]).strip().lower())
    if encoding is None:
        raise ValueError(f"{source}: unsupported NRRD encoding {header['encoding']!r}")
    if dtype.itemsize > 1 and encoding not in ("ascii",):
        endian = str(header.get("endian", "")).strip().lower()
        if endian not in ("little", "big"):
            raise ValueError(f"{source}: a {type_name} image needs 'endian: little' or 'endian: big'")
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    sizes = [int(s) for s in header["sizes"]]
    nbytes = voxel_bytes(sizes, dtype.itemsize, source)
    line_skip = int(header.get("line skip", header.get("lineskip", 0)))
    byte_skip = int(header.get("byte skip", header.get("byteskip", 0)))
    if line_skip < 0 or byte_skip < -1:
        raise ValueError(f"{source}: invalid line skip {line_skip} or byte skip {byte_skip}")
    name = header.get("data file", header.get("datafile"))
    if name is not None:
        name = str(name).strip()
        if name.upper().startswith("LIST") or (len(name.split()) > 1 and "%" in name):
            raise ValueError(f"{source}: multi-file NRRD data ('data file: {name}') is not supported; "
                             "join the files into one")
        path, data_start = data_file_beside(path, name), 0
    if line_skip:
        with open(path, "rb") as fh:
            fh.seek(data_start)
            for _ in range(line_skip):
                if not fh.readline():
                    raise ValueError(f"{source}: 'line skip: {line_skip}' runs past the end of {path.name}")
            data_start = fh.tell()
    if byte_skip == -1:
        if encoding != "raw":
            raise ValueError(f"{source}: 'byte skip: -1' is only defined for raw encoding")
        if path.stat().st_size - nbytes < data_start:
            raise ValueError(f"{source}: the header describes {nbytes} bytes of voxel data, more than "
                             f"{path.name} holds after its header (truncated file or wrong header)")
        stored = read_span(path, -nbytes, nbytes, source)
    elif encoding == "raw":
        stored = read_span(path, data_start + byte_skip, nbytes, source)
        extra = path.stat().st_size - data_start - byte_skip - nbytes
        if extra:
            raise ValueError(f"{source}: {extra} bytes follow the {nbytes} bytes of voxel data the header "
                             "describes (wrong sizes or type in the header)")
    else:
        stored = read_span(path, data_start, None, source)
        if encoding in ("gzip", "bzip2"):
            stored = inflate(stored, nbytes + byte_skip, "zlib" if encoding == "gzip" else "bzip2", source)
            stored = stored[byte_skip:]
        elif encoding == "hex":
            try:
                stored = bytearray.fromhex(stored.decode("ascii"))[byte_skip:]
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"{source}: hex voxel data is not hexadecimal text ({exc})") from exc
            if len(stored) != nbytes:
                raise ValueError(f"{source}: the hex data holds {len(stored)} bytes, the header describes {nbytes}")
        else:
            values = parse_text_values(stored[byte_skip:], nbytes // dtype.itemsize, dtype, source)
            return values.reshape(sizes[::-1])
    return np.frombuffer(stored, dtype=dtype).reshape(sizes[::-1])


@fill_doc
def read_nrrd(path: str | os.PathLike, *, return_header: bool = False) -> Image | tuple[Image, NrrdHeader]:
    """Read a ``.nrrd`` or ``.nhdr`` file (``.seg.nrrd`` included) as an LPS Image.

    NRRD lists its axes fastest first, ``(i, j, k)``; the Image has them reversed, ``[k, j, i]``.
    ``space directions`` give spacing and direction (oblique and left-handed frames included),
    ``space origin`` the centre of sample 0. LPS, ``scanner-xyz`` and the ``3D-*-handed`` spaces
    are taken as LPS (as ITK and 3D Slicer take them); RAS and LAS are converted to LPS; the 4D
    ``-time`` spaces are refused. A file without orientation is taken axis-aligned, with
    ``spacings`` (1 where missing) and ``axis mins`` as ITK reads them. One non-spatial axis
    (``vector``, ``list``, ``RGB-color``...) becomes the component axis of a vector Image;
    overlapping Slicer segments (several layers) read as a vector Image, layer ``l`` being
    ``img.array[..., l]``. ``measurement frame`` is not applied. Encodings: raw, gzip, bzip2,
    ascii and hex, either endianness, ``line skip`` and ``byte skip``; multi-file data is
    refused. Sizes are checked against the bytes present before any array is allocated.

    Parameters
    ----------
    %(path_in)s
    return_header : bool, optional
        Also return the header: the standard fields, the ``key:=value`` pairs and the 3D Slicer
        segments.

    Returns
    -------
    image : Image
        The voxels in array order with LPS geometry.
    header : NrrdHeader
        Only with ``return_header=True``.

    Raises
    ------
    ValueError
        The file is unreadable or inconsistent; the message names the file and the problem.
    FileNotFoundError
        The file, or a ``.nhdr``'s data file, is missing.

    See Also
    --------
    write_nrrd : Write a NRRD file.
    medkern.read : Read any supported format by its suffix.

    Examples
    --------
    >>> labels = mk.Image(np.array([[[0, 1], [2, 2]]], np.uint8), spacing=(3.0, 0.5, 0.5))
    >>> mk.write(labels, "case.seg.nrrd")      # one segment per label value
    >>> img, header = mk.io.read_nrrd("case.seg.nrrd", return_header=True)
    >>> img
    Image(shape=(1, 2, 2), dtype=uint8, spacing=(3, 0.5, 0.5), origin=(0, 0, 0), numpy)
    >>> [(s.name, s.label_value) for s in header.segments]
    [('Segment_1', 1), ('Segment_2', 2)]
    """
    import nrrd

    p = Path(path)
    try:
        with open(p, "rb") as fh:
            header = nrrd.read_header(fh)
            data_start = fh.tell()
    except (nrrd.NRRDError, ValueError, TypeError, IndexError, KeyError, StopIteration) as exc:
        raise ValueError(f"{p}: not a readable NRRD header ({exc})") from exc
    for required in ("dimension", "type", "encoding", "sizes"):
        if required not in header:
            raise ValueError(f"{p}: the NRRD header has no '{required}' field")
    dim = int(header["dimension"])
    if not 2 <= dim <= 4 or len(header["sizes"]) != dim:
        raise ValueError(f"{p}: dimension {dim} with sizes {list(header['sizes'])}; medkern reads 2D and 3D "
                         "images, plus one component axis")
    spatial, component, spacing, origin, direction = _geometry(header, p)
    data = _read_data(header, p, data_start, p)
    array = np.moveaxis(data, dim - 1 - component, -1) if component is not None else data
    if len(spatial) < len(spacing):  # one slice in a 3D space: its normal is the slice axis
        array = array[np.newaxis]
    image = Image(native(array), spacing=spacing[::-1], origin=origin, direction=direction[:, ::-1],
                  vector=component is not None)
    if not return_header:
        return image
    standard = {k: v for k, v in header.items() if k in _STANDARD_FIELDS}
    segments, key_values = _segments({k: str(v) for k, v in header.items() if k not in _STANDARD_FIELDS}, p)
    return image, NrrdHeader(fields=standard, key_values=key_values, segments=segments)


# ---------------------------------------------------------------------------------------- writing
def _text(value: Any, what: str) -> str:
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ValueError(f"{what} {text!r} holds a line break, which a NRRD header line cannot")
    return text


def _segment_fields(segments: Sequence[SegmentInfo], layers: int) -> dict[str, str]:
    out: dict[str, str] = {}
    ids = [s.id for s in segments]
    if len(set(ids)) != len(ids):
        raise ValueError(f"segment IDs must be unique, got {ids}")
    for n, s in enumerate(segments):
        if not isinstance(s, SegmentInfo):
            raise TypeError(f"segments must be SegmentInfo records, got {type(s).__name__}")
        if not 0 <= int(s.layer) < layers:
            raise ValueError(f"segment {s.id!r} is in layer {s.layer}, but the image has {layers} layer(s)")
        values = {"ID": s.id, "Name": s.name, "LabelValue": str(int(s.label_value)), "Layer": str(int(s.layer))}
        if s.color is not None:
            values["Color"] = " ".join(number_text(float(c)) for c in s.color)
        if s.extent is not None:
            values["Extent"] = " ".join(number_text(int(e)) for e in s.extent)
        if s.tags is not None:
            values["Tags"] = s.tags
        values.update({k: v for k, v in s.extra.items() if k not in values})
        for key in sorted(values):
            out[f"Segment{n}_{key}"] = _text(values[key], f"segment {s.id!r} field {key}")
    return out


def _generated_segments(array: np.ndarray, layered: bool) -> list[SegmentInfo]:
    if array.dtype.kind not in "biu":
        raise ValueError(f"a .seg.nrrd holds an integer label map, got {array.dtype}; convert it (astype) first")
    layers = [array[..., n] for n in range(array.shape[-1])] if layered else [array]
    segments = []
    for n, layer in enumerate(layers):
        for value in np.unique(layer):
            if value == 0:
                continue
            seg_id = f"Segment_{int(value)}" if not layered else f"Segment_{n}_{int(value)}"
            segments.append(SegmentInfo(id=seg_id, name=seg_id, label_value=int(value), layer=n,
                                        color=_PALETTE[len(segments) % len(_PALETTE)]))
    return segments


def write_nrrd(
    img: Image,
    path: str | os.PathLike,
    *,
    encoding: str = "gzip",
    compression_level: int = 6,
    segments: Sequence[SegmentInfo] | None = None,
    key_values: Mapping[str, Any] | None = None,
) -> None:
    """Write an Image as NRRD: ``.nrrd``, ``.nhdr`` (data file beside it) or ``.seg.nrrd``.

    The LPS geometry goes in ``space directions``/``space origin`` (``space:
    left-posterior-superior`` in 3D, ``space dimension: 2`` in 2D, as SimpleITK writes), data
    little-endian, kinds ``domain``. A vector Image is written with its component axis first
    (kind ``vector``; ``list`` in a ``.seg.nrrd``, Slicer's layers). A ``.nhdr`` gets its data
    file beside it (``<stem>.raw``, ``.raw.gz``, ``.raw.bz2`` or ``.txt``). A ``.seg.nrrd``
    written without ``segments`` gets one segment per label value found (per layer), named
    ``Segment_<value>``, and the ``Segmentation_*`` fields 3D Slicer needs to open it.

    Parameters
    ----------
    img : Image
        The image (bool is stored as uint8).
    path : str or os.PathLike
        Ends with ``.nrrd``, ``.seg.nrrd`` or ``.nhdr``. Written atomically: the target (and a
        ``.nhdr``'s data file) appear complete or not at all.
    encoding : {"gzip", "bzip2", "raw", "ascii"}, optional
        How the voxels are stored; default ``"gzip"``.
    compression_level : int, optional
        1..9, for the compressed encodings; default 6.
    segments : sequence of SegmentInfo, optional
        3D Slicer segment records written into the header.
    key_values : mapping of str to object, optional
        Other ``key:=value`` header pairs, e.g. ``NrrdHeader.key_values`` from
        :func:`read_nrrd`; values are written as text.

    Raises
    ------
    TypeError
        ``img`` is not an Image.
    ValueError
        An unknown encoding, a compression level outside 1..9, a file name that is not NRRD, a
        key that is a standard field or is also written from ``segments``, or a line break in a
        key or value.

    See Also
    --------
    read_nrrd : Read a NRRD file.
    medkern.write : Write any supported format by its suffix.

    Examples
    --------
    >>> img = mk.Image(np.zeros((2, 3, 4), np.int16), spacing=(2.5, 1.0, 0.5))
    >>> mk.io.write_nrrd(img, "ct.nhdr", encoding="raw")
    >>> import os
    >>> sorted(os.listdir("."))
    ['ct.nhdr', 'ct.raw']
    >>> mk.read("ct.nhdr").same_geometry(img)
    True
    """
    import nrrd

    if not isinstance(img, Image):
        raise TypeError(f"write_nrrd expects a medkern.Image, got {type(img).__name__}")
    enc = _ENCODINGS.get(str(encoding).lower())
    if enc not in _WRITE_ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(_WRITE_ENCODINGS)}, got {encoding!r}")
    if not 1 <= int(compression_level) <= 9:
        raise ValueError(f"compression_level must be 1..9, got {compression_level}")
    target = Path(path)
    name = target.name.lower()
    detached = name.endswith(".nhdr")
    if not (detached or name.endswith(".nrrd")):
        raise ValueError(f"{target}: a NRRD file name ends with .nrrd, .seg.nrrd or .nhdr")
    seg_file = name.endswith(".seg.nrrd") or name.endswith(".seg.nhdr")
    array = np.asarray(img)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    n = img.ndim
    # One row per file axis, fastest first: (component,) i, j, k = medkern's axes reversed.
    steps = (img.direction * np.asarray(img.spacing)[None, :])[:, ::-1].T
    if img.is_vector:
        steps = np.vstack([np.full((1, n), np.nan), steps])
    header: dict[str, Any] = {}
    if n == 3:
        header["space"] = "left-posterior-superior"
    else:
        header["space dimension"] = 2
    header["space directions"] = steps if nrrd.SPACE_DIRECTIONS_TYPE == "double matrix" else [
        None if np.isnan(r[0]) else r for r in steps]
    header["kinds"] = (["list" if seg_file else "vector"] if img.is_vector else []) + ["domain"] * n
    header["encoding"] = enc
    header["space origin"] = np.asarray(img.origin, dtype=np.float64)
    pairs: dict[str, str] = {}
    if seg_file and segments is None:
        segments = _generated_segments(array, img.is_vector)
    if segments:
        pairs.update(_segment_fields(segments, array.shape[-1] if img.is_vector else 1))
    for key, value in (key_values or {}).items():
        key = _text(key, "key_values key")
        if key.lower() in _STANDARD_FIELDS or ":" in key or not key.strip():
            raise ValueError(f"key_values key {key!r} is a standard NRRD field or not a valid key")
        if key in pairs:
            raise ValueError(f"key_values key {key!r} is also written from segments; give it once")
        pairs[key] = _text(value, f"key_values[{key!r}]")
    if seg_file:
        pairs.update({k: v for k, v in _SLICER_DEFAULTS.items() if k not in pairs})
    header.update(pairs)
    if not detached:
        with atomic_path(target) as tmp:
            nrrd.write(os.fspath(tmp), array, header, compression_level=int(compression_level), index_order="C")
        return
    data_target = target.with_name(target.name[: -len(".nhdr")] + _DETACHED_SUFFIX[enc])
    with atomic_files([data_target, target]) as (tmp_data, tmp_header):
        # pynrrd detaches the data only for a name ending in lower-case ".nhdr"
        written = tmp_header.with_name("header.nhdr")
        nrrd.write(os.fspath(written), array, header, detached_header=os.fspath(tmp_data),
                   compression_level=int(compression_level), index_order="C")
        os.replace(written, tmp_header)
