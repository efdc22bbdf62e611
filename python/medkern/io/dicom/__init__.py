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

Modules
-------
The steps above, one private module each: ``_files`` (file access, Part 10 structure),
``_pixel_checks`` (Pixel Data sizes), ``_header`` (the header pass and each file's frames),
``_scanning`` (folder scans, series parts), ``_geometry`` (slice order, spacing, irregularities),
``_recovery``, ``_pixels`` (decoding, modality LUT) and ``_series`` (the functions exported here).
"""

from __future__ import annotations

from medkern.io.dicom._files import has_preamble as has_preamble
from medkern.io.dicom._geometry import DUPLICATE_TOLERANCE_MM as DUPLICATE_TOLERANCE_MM
from medkern.io.dicom._geometry import SPACING_TOLERANCE
from medkern.io.dicom._geometry import TILT_TOLERANCE as TILT_TOLERANCE
from medkern.io.dicom._header import MAX_FRAMES
from medkern.io.dicom._pixels import modality_lut as modality_lut
from medkern.io.dicom._series import (
    DicomScan,
    DicomSeries,
    list_dicom_series,
    read_dicom_file,
    read_dicom_series,
    scan_dicom_folder,
)

__all__ = [
    "DicomScan",
    "DicomSeries",
    "MAX_FRAMES",
    "SPACING_TOLERANCE",
    "list_dicom_series",
    "read_dicom_file",
    "read_dicom_series",
    "scan_dicom_folder",
]
