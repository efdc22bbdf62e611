"""Reading and writing images: DICOM (files, series, RTSTRUCT), NIfTI, NRRD and MetaImage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medkern.image import Image
from medkern.io._atomic import full_suffix
from medkern.io.dicom_write import write_dicom_series
from medkern.io.metaimage import read_metaimage, write_metaimage
from medkern.io.nrrd import NrrdHeader, SegmentInfo, read_nrrd, write_nrrd
from medkern.io.rtstruct_write import write_rtstruct

__all__ = ["read", "write", "write_dicom_series", "write_rtstruct"]
__all__ += ["NrrdHeader", "SegmentInfo", "read_metaimage", "read_nrrd", "write_metaimage", "write_nrrd"]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_NRRD_SUFFIXES = (".nrrd", ".nhdr")  # .seg.nrrd included
_METAIMAGE_SUFFIXES = (".mha", ".mhd")


def read(path: str | os.PathLike, **kwargs: Any) -> Image:
    """Read an image by content and suffix, with its LPS geometry.

    - a directory: the DICOM series in it (``series_uid=`` picks one when there are several);
    - a DICOM file (by its 'DICM' preamble or a ``.dcm`` suffix): that file, a 2D image, a
      multi-frame volume, or the whole series it belongs to with ``series=True``;
    - ``.nii`` / ``.nii.gz``: NIfTI (``volume=t`` picks one volume of a 4D file);
    - ``.nrrd`` / ``.nhdr`` / ``.seg.nrrd``: NRRD (segment metadata: ``medkern.io.read_nrrd(path,
      return_header=True)``);
    - ``.mha`` / ``.mhd``: MetaImage (``volume=t`` picks one volume of a 4D file).

    Parameters
    ----------
    path : str or os.PathLike
        A DICOM directory or file, or a NIfTI, NRRD or MetaImage file.
    **kwargs
        Passed to the reader: :func:`~medkern.read_dicom_series` for a directory,
        :func:`~medkern.read_dicom_file` for a DICOM file, :func:`~medkern.io.nifti.read_nifti`,
        :func:`~medkern.io.read_nrrd` or :func:`~medkern.io.read_metaimage`.

    Returns
    -------
    Image
        The image in array order ``[k, j, i]`` with LPS geometry (CT in HU, PET as stored).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        ``path`` is not a regular file or directory, its format is not recognised, or its
        content cannot be read (the message names the file).
    medkern.DicomError
        A DICOM file or series cannot be read as asked.

    See Also
    --------
    write : Write an image.
    medkern.list_dicom_series : The series in a DICOM folder.
    medkern.io.read_nrrd : NRRD with its header and Slicer segments.

    Examples
    --------
    >>> mk.write(mk.Image(np.zeros((2, 3, 4), np.int16), spacing=(2.5, 1.0, 0.5)), "ct.nii.gz")
    >>> mk.read("ct.nii.gz")
    Image(shape=(2, 3, 4), dtype=int16, spacing=(2.5, 1, 0.5), origin=(0, 0, 0), numpy)
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.is_dir():
        from medkern.io import dicom

        return dicom.read_dicom_series(p, **kwargs)
    if not p.is_file():  # a FIFO or device would block or never end: only regular files are read
        raise ValueError(f"{p}: not a regular file or a directory")
    if full_suffix(p) in _NIFTI_SUFFIXES:
        from medkern.io.nifti import read_nifti

        return read_nifti(p, **kwargs)
    if full_suffix(p) in _NRRD_SUFFIXES:
        return read_nrrd(p, **kwargs)
    if full_suffix(p) in _METAIMAGE_SUFFIXES:
        return read_metaimage(p, **kwargs)
    from medkern.io.dicom import has_preamble

    if has_preamble(p) or p.suffix.lower() == ".dcm":
        from medkern.io import dicom

        return dicom.read_dicom_file(p, **kwargs)
    raise ValueError(f"{p}: not a DICOM file or directory and not NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr) "
                     "or MetaImage (.mha/.mhd)")


def write(img: Image, path: str | os.PathLike, **kwargs: Any) -> None:
    """Write an image atomically (temporary file, then rename), the format chosen by the suffix.

    Formats: ``.nii``, ``.nii.gz``; ``.nrrd``, ``.nhdr``, ``.seg.nrrd`` (keywords of
    :func:`~medkern.io.write_nrrd`: ``encoding``, ``segments``, ``key_values``...); ``.mha``, ``.mhd``
    (``compress=True`` for zlib-compressed voxels). A header and its data file land together.
    Files get the permissions an ordinary ``open`` gives a new file (``0o666`` less the umask); a
    NIfTI file that is replaced keeps its own. NIfTI: hidden temporaries that a killed earlier
    write to the same path left behind are removed (``medkern.io._atomic``); int64 and uint64
    images are stored as int32 / uint32 when every value fits.

    Parameters
    ----------
    img : Image
        The image to write.
    path : str or os.PathLike
        The output file; its suffix picks the format.
    **kwargs
        Passed to the writer: :func:`~medkern.io.nifti.write_nifti` (``nifti_version``),
        :func:`~medkern.io.write_nrrd` or :func:`~medkern.io.write_metaimage`.

    Returns
    -------
    None
        The file (with its data file, for ``.nhdr`` and ``.mhd``) is in place when this returns.

    Raises
    ------
    TypeError
        ``img`` is not a :class:`~medkern.Image`.
    ValueError
        The suffix is not a supported format; a geometry that would not read back (not finite,
        or beyond float32 for NIfTI-1), or 64-bit integers that do not fit 32 bits, before
        anything is written.

    See Also
    --------
    read : Read an image.
    medkern.write_dicom_series : Write a DICOM series.

    Examples
    --------
    >>> img = mk.Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), spacing=(2.5, 1.0, 0.5))
    >>> for name in ("ct.nii.gz", "ct.nrrd", "ct.mha"):
    ...     mk.write(img, name)
    ...     print(name, mk.read(name).same_geometry(img))
    ct.nii.gz True
    ct.nrrd True
    ct.mha True
    """
    if not isinstance(img, Image):
        raise TypeError(f"write expects a medkern.Image, got {type(img).__name__}")
    p = Path(path)
    if full_suffix(p) in _NIFTI_SUFFIXES:
        from medkern.io.nifti import write_nifti

        return write_nifti(img, p, **kwargs)
    if full_suffix(p) in _NRRD_SUFFIXES:
        return write_nrrd(img, p, **kwargs)
    if full_suffix(p) in _METAIMAGE_SUFFIXES:
        return write_metaimage(img, p, **kwargs)
    raise ValueError(f"{p}: unsupported output format {full_suffix(p)!r}; use .nii, .nii.gz, .nrrd, .nhdr, "
                     ".mha or .mhd")

