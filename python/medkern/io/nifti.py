"""NIfTI via nibabel. NIfTI stores RAS with axes (i, j, k); medkern is LPS with axes (k, j, i).

Geometry precision: NIfTI-1 stores the affine as float32, so an Image round-trips through a
NIfTI-1 file exactly to float32 precision (~1e-5 mm at 100 mm). ``write(..., nifti_version=2)``
stores float64 and round-trips bit for bit.

Hostile files: a header is checked against the bytes present before anything of the size it
claims is allocated (``.nii``: the file size; ``.nii.gz``: what deflate can expand the compressed
bytes to, :data:`MAX_GZ_BYTES` at most, and for claims beyond :data:`_STREAM_CHECK_BYTES` a
decompressing pass that counts the bytes really there without keeping them). Every failure to
read a file, whatever nibabel, zlib or numpy raise, is a ValueError naming the file.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medkern._docstrings import fill_doc
from medkern.image import Image
from medkern.io._atomic import atomic_path

__all__ = ["image_from_nibabel", "image_to_nibabel", "read_nifti", "write_nifti"]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
# ITK/NIfTI intent for displacement/vector fields stored as (I, J, K, 1, C).
_INTENT_VECTOR = 1007


# Deflate expands one input byte into at most ~1032 (RFC 1951: a 258-byte run per 2-bit code).
_DEFLATE_MAX_RATIO = 1032
# Largest decompressed .nii.gz read (header, extensions and voxels): beyond it, decompress the
# file to .nii first (which is then checked against its size on disk, and memory-mapped).
MAX_GZ_BYTES = 1 << 36
# .nii.gz claims above this are verified by a counting decompression pass before allocating.
_STREAM_CHECK_BYTES = 1 << 28


def _geometry_from_affine(affine_ras: np.ndarray, ndim: int):
    affine = np.asarray(affine_ras, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise ValueError("the NIfTI affine (sform/qform/pixdim) holds non-finite values; the file's geometry "
                         "is invalid")
    with np.errstate(over="ignore", invalid="ignore"):
        m = _RAS_TO_LPS @ affine[:3, :3]
        t = _RAS_TO_LPS @ affine[:3, 3]
        m = m[:ndim, :ndim][:, ::-1]  # nibabel columns are (i, j, k); ours are (k, j, i)
        spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing == 0) or not np.all(np.isfinite(spacing)):
        raise ValueError("NIfTI affine has a zero-length or overflowing axis; the file's geometry is invalid")
    return tuple(spacing), t[:ndim], m / spacing


def image_from_nibabel(nifti: Any, volume: int | None = None) -> Image:
    """Make an Image from a nibabel spatial image, converting RAS ``(i, j, k)`` to LPS ``[k, j, i]``.

    Scaled data (``scl_slope``/``scl_inter``) is read as float32.

    Parameters
    ----------
    nifti : nibabel.Nifti1Image or nibabel.Nifti2Image
        A 2D or 3D image, a 4D series (pick a volume with ``volume``), or a vector field
        (NIfTI vector intent, or 5D with a length-1 fourth axis).
    volume : int, optional
        For a 4D series, the index of the volume to take. ``None`` (default) takes a series of
        one volume as 3D and refuses a longer one.

    Returns
    -------
    Image
        The voxels in array order with LPS geometry (a vector image for a vector field).

    Raises
    ------
    ValueError
        A 4D series without ``volume``, ``volume`` out of range, an unsupported data shape, an
        invalid affine, or scaling that overflows float32.

    See Also
    --------
    image_to_nibabel : The inverse conversion.
    medkern.Image.from_nibabel : The same conversion as a class method.

    Examples
    --------
    >>> import nibabel as nib
    >>> from medkern.io.nifti import image_from_nibabel
    >>> series = nib.Nifti1Image(np.zeros((4, 3, 2, 5), np.int16), np.eye(4))
    >>> image_from_nibabel(series, volume=2)
    Image(shape=(2, 3, 4), dtype=int16, spacing=(1, 1, 1), origin=(0, 0, 0), numpy)
    """
    proxy = nifti.dataobj
    slope = getattr(proxy, "slope", 1.0)
    inter = getattr(proxy, "inter", 0.0)
    scaled = not (slope in (None, 1.0) or np.isnan(slope)) or not (inter in (None, 0.0) or np.isnan(inter))
    if scaled:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by _check_scaling
            data = np.asanyarray(proxy, dtype=np.float32)
        _check_scaling(proxy, data, slope, inter)
    else:
        data = np.asanyarray(proxy)
    vector = False
    header = nifti.header
    intent = int(header.get("intent_code", 0)) if hasattr(header, "get") else 0
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
        vector = True
    elif data.ndim == 4 and intent == _INTENT_VECTOR:
        vector = True
    elif data.ndim == 4:
        if volume is None:
            if data.shape[3] == 1:
                data = data[..., 0]
            else:
                raise ValueError(f"NIfTI has {data.shape[3]} volumes (4D); pass volume=t to pick one")
        else:
            if not 0 <= volume < data.shape[3]:
                raise ValueError(f"volume={volume} is out of range for {data.shape[3]} volumes")
            data = data[..., volume]
    elif data.ndim not in (2, 3):
        raise ValueError(f"unsupported NIfTI data shape {data.shape}")
    spatial = data.ndim - (1 if vector else 0)
    # (i, j, k[, c]) -> (k, j, i[, c]); copy so the array is C-contiguous for the kernels.
    axes = tuple(range(spatial))[::-1] + ((spatial,) if vector else ())
    array = np.ascontiguousarray(np.transpose(data, axes))
    spacing, origin, direction = _geometry_from_affine(nifti.affine, spatial)
    return Image(array, spacing=spacing, origin=origin, direction=direction, vector=vector)


def _non_finite(values: np.ndarray) -> int:
    if values.dtype.kind != "f":
        return 0
    with np.errstate(all="ignore"):
        if np.isfinite(np.sum(values, dtype=np.float64)):
            return 0
    return int(np.count_nonzero(~np.isfinite(values)))


def _check_scaling(proxy: Any, scaled: np.ndarray, slope: Any, inter: Any) -> None:
    """scl_slope / scl_inter must not turn stored values into infinity or NaN (a slope of 1e38
    overflows float32): ValueError, rather than an image of non-finite voxels."""
    bad = _non_finite(scaled)
    if bad and bad > _non_finite(np.asanyarray(proxy.get_unscaled())):
        raise ValueError(f"scl_slope {slope} and scl_inter {inter} turn {bad} stored value(s) into infinity or NaN "
                         "in float32: the header's scaling is corrupt")


def _affine_ras(img: Image) -> np.ndarray:
    n = img.ndim
    m = np.eye(3)
    t = np.zeros(3)
    m[:n, :n] = (img.direction * np.asarray(img.spacing)[None, :])[:, ::-1]
    t[:n] = img.origin
    a = np.eye(4)
    a[:3, :3] = _RAS_TO_LPS @ m
    a[:3, 3] = _RAS_TO_LPS @ t
    return a


def image_to_nibabel(img: Image, nifti_version: int = 1):
    """Convert an Image to a nibabel NIfTI image (RAS affine, ``(i, j, k)`` axis order).

    The sform and qform both hold the affine (code 1, scanner); units are mm. bool is stored as
    uint8; int64 and uint64 as int32 and uint32 when every value fits. A vector image is stored
    with the NIfTI vector intent.

    Parameters
    ----------
    img : Image
        A scalar or vector image.
    nifti_version : {1, 2}, optional
        NIfTI-1 (default; the affine is stored as float32) or NIfTI-2 (float64).

    Returns
    -------
    nibabel.Nifti1Image or nibabel.Nifti2Image
        The image, not yet written.

    Raises
    ------
    ValueError
        ``nifti_version`` is neither 1 nor 2, or a 64-bit integer image has values beyond 32
        bits.

    See Also
    --------
    image_from_nibabel : The inverse conversion.
    write_nifti : Write the image to a file.

    Examples
    --------
    >>> from medkern.io.nifti import image_to_nibabel
    >>> nii = image_to_nibabel(mk.Image(np.zeros((2, 3, 4), bool)), nifti_version=2)
    >>> type(nii).__name__, nii.shape, nii.get_data_dtype()
    ('Nifti2Image', (4, 3, 2), dtype('uint8'))
    """
    import nibabel as nib

    array = np.asarray(img)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype in (np.int64, np.uint64):
        array = _narrow_64bit(array)
    spatial = img.ndim
    axes = tuple(range(spatial))[::-1] + ((spatial,) if img.is_vector else ())
    data = np.transpose(array, axes)
    if img.is_vector:
        data = data.reshape(data.shape[:spatial] + (1,) * (3 - spatial) + (1, data.shape[-1]))
    cls = {1: nib.Nifti1Image, 2: nib.Nifti2Image}.get(nifti_version)
    if cls is None:
        raise ValueError(f"nifti_version must be 1 or 2, got {nifti_version}")
    affine = _affine_ras(img)
    out = cls(data, affine)
    out.set_sform(affine, code=1)
    out.set_qform(affine, code=1)
    if img.is_vector:
        out.header.set_intent(_INTENT_VECTOR)
    out.header.set_xyzt_units("mm", "sec")
    return out


def _narrow_64bit(array: np.ndarray) -> np.ndarray:
    """int64 as int32, uint64 as uint32, when every value fits (exact); else ValueError. NIfTI can
    hold 64-bit integers, but few readers (ITK, FSL, SPM) do."""
    narrow = np.dtype(np.int32 if array.dtype == np.int64 else np.uint32)
    info = np.iinfo(narrow)
    lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if lo < info.min or hi > info.max:
        raise ValueError(f"write: the image is {array.dtype} with values {lo}..{hi}, outside {narrow}'s range, "
                         f"and 64-bit integer NIfTI files are not written (most readers cannot open them); "
                         f"rescale or relabel the values into {info.min}..{info.max}, or cast explicitly with "
                         "img.astype(np.float64) (exact up to 2**53)")
    return array.astype(narrow)


def _check_writable_geometry(img: Image, nifti_version: int) -> None:
    """The affine must be finite, and for NIfTI-1 stay finite in its float32 fields."""
    with np.errstate(over="ignore", invalid="ignore"):
        affine = _affine_ras(img)
        stored = affine.astype(np.float32) if nifti_version == 1 else affine
        # Readers take each axis' length as the root of its squared entries: that must not overflow.
        lengths = np.sum(np.square(stored.astype(np.float64)[:3, :3]), axis=0)
    if not (np.all(np.isfinite(stored)) and np.all(np.isfinite(lengths))):
        raise ValueError(f"write: the image geometry is not finite{' in float32' if nifti_version == 1 else ''} "
                         f"(spacing {img.spacing}, origin {tuple(img.origin)}, direction {img.direction.tolist()}); "
                         "a NIfTI file with it could not be read back"
                         + ("; use nifti_version=2 for float64 geometry" if nifti_version == 1 else ""))


def _data_offset(nifti: Any) -> int:
    """Where the voxels start (nibabel moves vox_offset from the header into the array proxy)."""
    offset = getattr(nifti.dataobj, "offset", None)
    return int(offset if offset is not None else nifti.header.get_data_offset())


def _claimed_bytes(nifti: Any) -> int:
    """Bytes the header says the file holds: voxel offset plus voxels (Python ints: no overflow)."""
    shape = nifti.header.get_data_shape()
    if any(int(n) < 1 for n in shape):
        raise ValueError(f"the header gives image sizes {tuple(shape)}; every size must be at least 1")
    return _data_offset(nifti) + math.prod(int(n) for n in shape) * nifti.header.get_data_dtype().itemsize


def _gzip_holds(path: Path, nbytes: int) -> int:
    """Decompressed bytes of ``path`` (all gzip members), counted up to ``nbytes``, nothing kept."""
    total = 0
    with gzip.open(path, "rb") as f:
        while total < nbytes:
            chunk = f.read(min(1 << 22, nbytes - total))
            if not chunk:
                break
            total += len(chunk)
    return total


def _check_claims(path: Path, nifti: Any) -> None:
    needed = _claimed_bytes(nifti)
    size = path.stat().st_size
    shape, dtype = tuple(nifti.header.get_data_shape()), nifti.header.get_data_dtype()
    what = f"the header describes {shape} voxels of {dtype} from byte {_data_offset(nifti)}"
    if path.name.lower().endswith(".gz"):
        if needed > MAX_GZ_BYTES:
            raise ValueError(f"{what}: {needed} bytes, more than the {MAX_GZ_BYTES} medkern decompresses from "
                             ".nii.gz (decompress it to .nii if the image is real)")
        if needed > _DEFLATE_MAX_RATIO * size + 1024:
            raise ValueError(f"{what}: {needed} bytes, more than {size} bytes of gzip data can hold "
                             "(truncated file or wrong header)")
        if needed > _STREAM_CHECK_BYTES:
            present = _gzip_holds(path, needed)
            if present < needed:
                raise ValueError(f"{what}: {needed} bytes, but the gzip stream holds only {present} "
                                 "(truncated file or wrong header)")
    elif needed > size:
        raise ValueError(f"{what}: {needed} bytes, but the file has {size} (truncated file or wrong header)")


@fill_doc
def read_nifti(path: str | os.PathLike, volume: int | None = None) -> Image:
    """Read a ``.nii`` or ``.nii.gz`` file as an Image in LPS, array order ``[k, j, i]``.

    NIfTI-1 stores the affine as float32, so geometry round-trips to float32 precision (about
    1e-5 mm at 100 mm); NIfTI-2 stores float64. A header is checked against the bytes present
    before anything of the size it claims is allocated.

    Parameters
    ----------
    %(path_in)s
    %(volume)s

    Returns
    -------
    Image
        The voxels (float32 when the file has a scaling slope or intercept) with LPS geometry.

    Raises
    ------
    ValueError
        Any failure caused by the file's content (nibabel, zlib or numpy errors included); the
        message names the file.
    FileNotFoundError, PermissionError, IsADirectoryError
        Passed through.

    See Also
    --------
    medkern.read : Read any supported format by its suffix.
    write_nifti : Write a NIfTI file.

    Examples
    --------
    >>> from medkern.io.nifti import read_nifti
    >>> mk.write(mk.Image(np.ones((2, 3, 4), np.float32), spacing=(3.0, 1.0, 1.0)), "t1.nii.gz")
    >>> read_nifti("t1.nii.gz")
    Image(shape=(2, 3, 4), dtype=float32, spacing=(3, 1, 1), origin=(0, 0, 0), numpy)
    """
    import nibabel as nib

    p = Path(path)
    try:
        with _quiet_nibabel():
            nifti = nib.load(os.fspath(p))
        _check_claims(p, nifti)
        image = image_from_nibabel(nifti, volume=volume)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (Exception, MemoryError) as exc:
        # nibabel's HeaderDataError and ImageFileError, gzip's BadGzipFile, zlib.error, EOFError,
        # mmap's length errors, numpy's size errors: all are about the file, so say which file.
        message = " ".join(str(exc).split()) or type(exc).__name__
        if type(exc) is ValueError and _raised_by_medkern(exc):  # medkern's own checks of the content
            raise ValueError(f"{p}: {message}") from exc
        raise ValueError(f"{p}: not a readable NIfTI file ({type(exc).__name__}: {message})") from exc
    _warn_unknown_spacing(p, nifti, image.ndim)
    return image


def _warn_unknown_spacing(path: Path, nifti: Any, ndim: int) -> None:
    """A file without sform and qform has only pixdim for its spacing; nibabel replaces a zero
    pixdim with 1 when it loads the header, so the raw header says whether the 1 mm is made up."""
    header = nifti.header
    if int(header["sform_code"]) or int(header["qform_code"]):
        return
    raw = _raw_pixdim(path, header)
    spatial = None if raw is None else raw[1:min(ndim, 3) + 1]
    if spatial is not None and not np.all(np.isfinite(spatial) & (spatial > 0)):
        import warnings

        from medkern.errors import MedkernWarning

        warnings.warn(f"{path}: no sform or qform and pixdim {spatial.tolist()}: the voxel spacing "
                      "is unknown and 1 mm was assumed; set the image's spacing before measuring or resampling",
                      MedkernWarning, stacklevel=3)


def _raw_pixdim(path: Path, header: Any) -> np.ndarray | None:
    """pixdim as stored in the file (NIfTI-1 offset 76 float32[8], NIfTI-2 offset 104 float64[8])."""
    offset, dtype, size = (104, "f8", 64) if int(header.sizeof_hdr) == 540 else (76, "f4", 32)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(offset + size)
    except OSError:
        return None
    if len(head) < offset + size:
        return None
    return np.frombuffer(head, dtype=header.endianness + dtype, count=8, offset=offset).astype(np.float64)


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """nibabel logs the header problems it checks on stderr (and raises for the serious ones):
    the raised error is reported, with the file's name; the log lines are noise."""
    import logging

    from nibabel.imageglobals import logger

    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _raised_by_medkern(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}medkern{os.sep}" in tb.tb_frame.f_code.co_filename


@fill_doc
def write_nifti(img: Image, path: str | os.PathLike, nifti_version: int = 1) -> None:
    """Write an Image as a ``.nii`` or ``.nii.gz`` file, atomically.

    int64/uint64 images are written as int32/uint32 when every value fits. Hidden temporaries
    that a killed earlier write to the same path left behind are removed; a file that is replaced
    keeps its permissions.

    Parameters
    ----------
    img : Image
        The image to write (scalar or vector).
    %(path_out)s
    nifti_version : {1, 2}, optional
        NIfTI-1 (default; geometry stored as float32) or NIfTI-2 (float64, round-trips bit for
        bit).

    Raises
    ------
    ValueError
        A geometry that is not finite (in float32 for NIfTI-1) or a 64-bit integer image whose
        values do not fit 32 bits, before anything is written.

    See Also
    --------
    medkern.write : Write any supported format by its suffix.
    read_nifti : Read a NIfTI file.

    Examples
    --------
    >>> from medkern.io.nifti import read_nifti, write_nifti
    >>> img = mk.Image(np.zeros((2, 3, 4), np.int64), spacing=(3.0, 1.0, 1.0))
    >>> write_nifti(img, "labels.nii.gz")
    >>> read_nifti("labels.nii.gz").dtype.name     # int64 narrowed: every value fits
    'int32'
    """
    import nibabel as nib

    if nifti_version in (1, 2):
        _check_writable_geometry(img, nifti_version)
    nifti = image_to_nibabel(img, nifti_version=nifti_version)
    with atomic_path(path) as tmp:
        nib.save(nifti, os.fspath(tmp))
