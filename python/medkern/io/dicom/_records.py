"""What the header pass keeps of an image file and its frames, and the two failures it reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
