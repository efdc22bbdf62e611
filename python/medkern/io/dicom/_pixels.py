"""Pixel values: stored values decoded file by file, then the modality LUT (bit trimming,
MONOCHROME1 inversion, per-frame rescale) in the output dtype the series calls for."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from medkern._dispatch import Kernel
from medkern._progress import Progress
from medkern.errors import DicomError
from medkern.image import Image
from medkern.io.dicom._files import _meta_end, _open_regular, _read_deflated
from medkern.io.dicom._records import _File, _Frame
from medkern.io.dicom._recovery import _recover

if TYPE_CHECKING:
    from medkern.io.dicom._series import DicomSeries


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


modality_lut = Kernel("modality_lut", cpp="modality_lut", numba="medkern._numba.modality:modality_lut")


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
