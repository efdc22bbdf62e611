"""The header pass: one file's data set parsed once without its pixel data, every attribute the
reading depends on checked, and the file's frames with their geometry and rescale."""

from __future__ import annotations

import io
import math
import struct
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from medkern.io.dicom._files import (
    _DEFLATED,
    _MAX_INFLATED_HEADER,
    _NATIVE_LITTLE_ENDIAN,
    _PIXEL_TAGS,
    _last_element_end,
    _looks_like_dicom,
    _meta_end,
    _open_regular,
    _peek_pixel_tag,
    _pixel_element,
    _read_deflated,
    _stop_at_pixels,
    _zero_run,
    has_preamble,
)
from medkern.io.dicom._pixel_checks import _check_fragments, _check_native_length, _is_compressed, _native_bytes, _sizes
from medkern.io.dicom._records import _File, _Frame, _NotRegular, _Unreadable

# A file claiming more frames than this is refused (each frame becomes a Python object when listing).
MAX_FRAMES = 1 << 17
# A slice position further than this (mm) from the origin of the patient coordinates is corrupt.
_MAX_EXTENT_MM = 1e6


def _shown(value: Any, limit: int = 60) -> str:
    """A header value as text for a message, cut to ``limit`` characters."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", "replace").strip(" \x00")
    elif not isinstance(value, str) and isinstance(value, Iterable):
        value = "\\".join(str(v) for v in value)
    text = repr(str(value))
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    """n finite floats from a DS/FD value or multi-value, else None (absent or malformed)."""
    if value is None:
        return None
    items = [value] if isinstance(value, (str, bytes, int, float)) else list(value)
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _first_item(ds: Any, keyword: str) -> Any:
    seq = ds.get(keyword) if ds is not None else None
    return seq[0] if seq else None


class _Attrs:
    """Attribute values read from the raw element bytes of a header.

    pydicom converts a raw element into a value object on first access (VR classes, validation,
    character sets), ~80 us per element, which was most of the time spent on a series' headers.
    The numeric and UID attributes needed here are parsed from their bytes directly; text that
    may use a character set goes through pydicom.
    """

    __slots__ = ("ds", "endian")

    def __init__(self, ds: Any, little_endian: bool = True) -> None:
        self.ds = ds
        self.endian = "<" if little_endian else ">"

    def _raw(self, tag: int) -> Any:
        if self.ds is None:
            return None
        elem = self.ds.get_item(tag)
        return None if elem is None else elem.value

    def numbers(self, tag: int, n: int) -> tuple[float, ...] | None:
        """n finite numbers of a DS/IS attribute, else None (absent or malformed)."""
        value = self._raw(tag)
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).strip(b" \x00").split(b"\\") if value.strip(b" \x00") else None
        return _floats(value, n)

    def checked(self, tag: int, n: int, name: str) -> tuple[float, ...] | None:
        """n finite numbers of a DS/IS attribute; None when it is absent or empty. A value that is
        there but malformed, not n numbers or not finite raises _Unreadable naming ``name``."""
        value = self._raw(tag)
        if isinstance(value, (bytes, bytearray)):
            text = bytes(value).strip(b" \x00")
            if not text:
                return None
            items: list[Any] = text.split(b"\\")
        elif value is None or (isinstance(value, str) and not value.strip()):
            return None
        else:
            items = [value] if isinstance(value, (str, int, float)) else list(value)
        try:
            out = tuple(float(v) for v in items)
        except (TypeError, ValueError):
            raise _Unreadable(f"{name} {_shown(value)} is not {'a number' if n == 1 else f'{n} numbers'}") from None
        if len(out) != n:
            raise _Unreadable(f"{name} {_shown(value)} has {len(out)} values, {n} expected")
        if not all(math.isfinite(v) for v in out):
            raise _Unreadable(f"{name} {_shown(value)} is not finite")
        return out

    def integer(self, tag: int) -> int | None:
        v = self.numbers(tag, 1)
        return int(v[0]) if v is not None else None

    def us(self, tag: int) -> int | None:
        """An unsigned short (US) attribute."""
        value = self._raw(tag)
        if isinstance(value, (bytes, bytearray)):
            return struct.unpack(self.endian + "H", value[:2])[0] if len(value) >= 2 else None
        return None if value is None else int(value if not isinstance(value, (list, tuple)) else value[0])

    def text(self, tag: int) -> str:
        """A UI/CS attribute (ASCII by definition, PS3.5 6.2)."""
        value = self._raw(tag)
        if isinstance(value, (bytes, bytearray)):
            return bytes(value).decode("ascii", "replace").strip(" \x00")
        return "" if value is None else str(value).strip()

    def string(self, tag: int) -> str:
        """Text that may be in the dataset's character set (LO, SH): decoded by pydicom unless
        the data set uses the default repertoire (no SpecificCharacterSet, or ISO_IR 6)."""
        if self.ds is None:
            return ""
        if self.text(0x00080005) in ("", "ISO_IR 6"):
            return self.text(tag)
        elem = self.ds.get(tag)
        return "" if elem is None else str(elem.value).strip()


def _pixel_spacing(a: _Attrs, where: str = "", placed: bool = False) -> tuple[tuple[float, float] | None, str]:
    """PixelSpacing, else ImagerPixelSpacing (radiographs: at the detector plane), as (row, col).

    0\\0 (written by some CR/DX devices for "unknown") counts as absent in an image without
    patient position (``placed`` False); any other value that is not two positive numbers, and
    0\\0 in a slice placed in the patient, raises _Unreadable."""
    for tag, keyword in ((0x00280030, "PixelSpacing"), (0x00181164, "ImagerPixelSpacing")):
        sp = a.checked(tag, 2, keyword + where)
        if sp is None or (sp == (0.0, 0.0) and not placed):
            continue
        if not (sp[0] > 0 and sp[1] > 0):
            raise _Unreadable(f"{keyword}{where} {sp[0]:g}\\{sp[1]:g} is not two positive spacings (mm)")
        return (sp[0], sp[1]), keyword
    return None, "absent (1 mm assumed)"


_MONOCHROME = ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_PARTIAL_422", "YBR_ICT", "YBR_RCT")


def _read_header(path: Path) -> tuple[_File, list[_Frame]] | None:
    """Header of one file: None when it is not a DICOM image; raises _Unreadable when it is (or
    claims to be) one that cannot be read. No other exception leaves it: a scan goes on."""
    try:
        return _parse_header(path)
    except _Unreadable:
        raise
    except _NotRegular as exc:
        raise _Unreadable(str(exc)) from exc
    except OSError as exc:
        raise _Unreadable(f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})") from exc
    except MemoryError as exc:
        raise _Unreadable("MemoryError: the header claims more memory than there is") from exc
    except Exception as exc:
        from pydicom.errors import InvalidDicomError

        if isinstance(exc, InvalidDicomError) and not has_preamble(path):
            if path.suffix.lower() == ".dcm":
                # Named as DICOM but not readable as DICOM: a file cut inside its preamble (or not
                # DICOM at all) is reported, not skipped, so that a lost slice never goes unnoticed.
                raise _Unreadable("not a DICOM image: no Part 10 preamble ('DICM' at byte 128) and no data set "
                                  "(cut short, or not DICOM)") from exc
            return None
        if _looks_like_dicom(path):
            raise _Unreadable(f"{type(exc).__name__}: {exc}") from exc
        return None


def _parse_header(path: Path) -> tuple[_File, list[_Frame]] | None:
    from pydicom.errors import InvalidDicomError

    with _open_regular(path) as fp, warnings.catch_warnings():
        # pydicom warns about non-conformant values (e.g. malformed DS strings); a reader
        # must take files as they come, and bad geometry values are checked below.
        warnings.simplefilter("ignore")
        size = fp.size
        start, meta_ts = _meta_end(fp)
        fp.seek(0)
        inflater = None
        if meta_ts == _DEFLATED:
            ds, at, inflater = _read_deflated(fp, start, True, _MAX_INFLATED_HEADER)
            implicit, little, ts = False, True, _DEFLATED
        else:
            from pydicom.filereader import read_partial

            try:
                ds = read_partial(fp, stop_when=_stop_at_pixels)
            except InvalidDicomError:
                # No Part 10 preamble: still a DICOM data set when it starts with a group 0008
                # element (files written without meta information, as GDCM and DCMTK accept).
                fp.seek(0)
                if fp.read(2) != b"\x08\x00":
                    raise
                fp.seek(0)
                ds = read_partial(fp, stop_when=_stop_at_pixels, force=True)
            at = stopped_at = fp.tell()
            meta = getattr(ds, "file_meta", None)
            ts = _Attrs(meta).text(0x00020010) if meta is not None else ""
            # The encoding pydicom found when it read the data set (it detects a transfer syntax
            # that misstates implicit / explicit VR).
            implicit, little = getattr(ds, "original_encoding", (None, None))
            if implicit is None:
                implicit, little = ts == "1.2.840.10008.1.2", ts != "1.2.840.10008.1.2.2"
            if not ts:
                ts = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
            if ts == _DEFLATED:
                # pydicom found a deflated data set that the meta walk above did not (a meta header
                # not in explicit VR little endian): offsets would not be file offsets.
                raise _Unreadable("deflated data set after a non-conformant file meta information")
            at = at if at < size and _peek_pixel_tag(fp, at) is not None else -1
        pixel_tag = None
        if at >= 0:
            src = io.BytesIO(inflater.read_upto(at + 12)) if inflater is not None else fp
            pixel_tag, length, value_at = _pixel_element(src, at, implicit, little)
        a = _Attrs(ds, little_endian=little)
        rows, cols = a.us(0x00280010), a.us(0x00280011)
        if pixel_tag is None:
            zeros = _zero_run(inflater.data, inflater.stopped_at) if inflater is not None else _zero_run(fp, stopped_at)
            if zeros is not None:
                # A zero-filled tail (a copy that was never completed, preallocated space): the
                # parser stopped at the first all-zero element instead of walking 8 bytes at a time.
                if not (inflater is not None or _looks_like_dicom(path)):
                    return None
                raise _Unreadable(f"zero bytes in place of the data set from byte {zeros} on, before any Pixel Data "
                                  "(a file not completely written?)")
            if len(ds) == 0 and has_preamble(path):
                # A Part 10 file whose data set is missing: cut off after the meta header.
                raise _Unreadable("truncated: no data set after the file meta information")
            end = _last_element_end(ds)
            data_end = len(inflater.data) if inflater is not None else size
            if end is not None and end != data_end and (inflater is not None or _looks_like_dicom(path)):
                last = max(ds.keys())
                raise _Unreadable(f"truncated: the data set ends inside element {last}, {end - data_end} bytes short"
                                  if end > data_end else f"truncated: the data set ends {data_end - end} bytes "
                                  f"after element {last}, inside the header of the next element")
            return None
        if rows is None and cols is None:
            return None  # no Image Pixel module: not an image (test objects, private data)
        if rows is None or cols is None:
            raise _Unreadable(f"Pixel Data without {'Rows' if rows is None else 'Columns'}")
        if rows == 0 or cols == 0:
            raise _Unreadable(f"Rows {rows} x Columns {cols}: an image has no zero size")
        # NumberOfFrames that is not a positive integer is read as 1; the Pixel Data must then
        # hold exactly one frame (checked below).
        frames_raw = a._raw(0x00280008)
        nf = a.numbers(0x00280008, 1)
        n_frames = int(nf[0]) if nf is not None and nf[0] >= 1 and nf[0].is_integer() else 1
        frames_text = "" if frames_raw is None or (nf is not None and nf[0] >= 1 and nf[0].is_integer()) \
            else f"{_shown(frames_raw)} (read as 1)"
        (samples, photometric, bits_allocated, bits_stored, representation, float_pixels, stored_samples,
         stored_bits) = _pixel_format(a, ds, pixel_tag)
        sizes = _sizes(rows, cols, n_frames, stored_samples, stored_bits, frames_text)
        frame_bytes = _native_bytes(rows, cols, 1, stored_samples, stored_bits, photometric)
        data_size = inflater.total(value_at + length) if inflater is not None else size
        native = ts in _NATIVE_LITTLE_ENDIAN or ts in (_DEFLATED, "1.2.840.10008.1.2.2")
        if native or (length != 0xFFFFFFFF and not _is_compressed(ts)):
            _check_native_length(length, value_at, data_size,
                                 _native_bytes(rows, cols, n_frames, stored_samples, stored_bits, photometric), sizes)
        elif length == 0xFFFFFFFF:
            extended = a._raw(0x7FE00001)
            _check_fragments(fp, value_at, size, ts, rows, cols, n_frames, frame_bytes, frames_text,
                             None if extended is None else len(extended) // 8)
        else:
            raise _Unreadable(f"transfer syntax {ts} is compressed but Pixel Data is not encapsulated")
        if n_frames > MAX_FRAMES:
            raise _Unreadable(f"NumberOfFrames {n_frames} is more than medkern reads ({MAX_FRAMES})")
        pixel_offset = None
        if (ts in _NATIVE_LITTLE_ENDIAN and little and pixel_tag == 0x7FE00010 and stored_bits in (8, 16, 32)
                and stored_samples == 1 and photometric != "PALETTE COLOR" and sys.byteorder == "little"):
            pixel_offset = value_at
        spacing_hint = a.numbers(0x00180088, 1)
        sop_class = a.text(0x00080016)
    from pydicom.uid import UID

    f = _File(
        path=path,
        series_uid=a.text(0x0020000E),
        modality=a.text(0x00080060),
        description=a.string(0x0008103E),
        series_number=a.integer(0x00200011),
        patient_id=a.string(0x00100020),
        study_uid=a.text(0x0020000D),
        frame_of_reference_uid=a.text(0x00200052),
        sop_class=UID(sop_class).name if sop_class else "",
        transfer_syntax=ts,
        rows=rows,
        cols=cols,
        n_frames=n_frames,
        samples=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=representation == 1 and photometric != "PALETTE COLOR",
        float_pixels=float_pixels,
        monochrome1=photometric == "MONOCHROME1",
        palette=photometric == "PALETTE COLOR",
        instance_number=a.integer(0x00200013),
        slice_spacing_hint=spacing_hint[0] if spacing_hint and spacing_hint[0] > 0 else None,
        pixel_offset=pixel_offset,
        sop_uid=a.text(0x00080018),
        inflated_end=value_at + length if inflater is not None else None,
    )
    return f, _frames_of(a, f)


def _pixel_format(a: _Attrs, ds: Any, pixel_tag: int) -> tuple[int, str, int, int, int | None, bool, int, int]:
    """The Image Pixel module, checked: (samples, photometric, bits allocated, bits stored, pixel
    representation, float pixels, and the samples and bits as stored, which differ for PALETTE
    COLOR, whose image is the RGB its table gives)."""
    samples = a.us(0x00280002)
    samples = 1 if samples is None else samples
    if samples not in (1, 3):
        raise _Unreadable(f"SamplesPerPixel {samples} is not supported (1 or 3)")
    photometric = a.text(0x00280004) or ("MONOCHROME2" if samples == 1 else "RGB")
    if photometric not in _MONOCHROME + _COLOUR:
        raise _Unreadable(f"PhotometricInterpretation {photometric!r} is not supported "
                          "(MONOCHROME1, MONOCHROME2, PALETTE COLOR, RGB or YBR_*)")
    if samples != (1 if photometric in _MONOCHROME else 3):
        raise _Unreadable(f"PhotometricInterpretation {photometric} needs SamplesPerPixel "
                          f"{1 if photometric in _MONOCHROME else 3}, the file says {samples}")
    if samples == 3 and a.us(0x00280006) not in (None, 0, 1):
        raise _Unreadable(f"PlanarConfiguration {a.us(0x00280006)} is not 0 or 1")
    bits_allocated = a.us(0x00280100)
    bits_allocated = 16 if bits_allocated is None else bits_allocated
    float_pixels = pixel_tag != 0x7FE00010
    if pixel_tag not in _PIXEL_TAGS:
        raise _Unreadable(f"the Pixel Data element header is corrupt (tag {pixel_tag:08X})")
    if float_pixels:
        need = 32 if pixel_tag == 0x7FE00008 else 64
        if bits_allocated != need:
            raise _Unreadable(f"BitsAllocated {bits_allocated} with {'Float' if need == 32 else 'Double Float'} "
                              f"Pixel Data (needs {need})")
    elif bits_allocated not in (1, 8, 16, 32):
        raise _Unreadable(f"BitsAllocated {bits_allocated} is not supported (1, 8, 16 or 32; 32 or 64 for float "
                          "pixel data)")
    bits_stored = a.us(0x00280101)
    bits_stored = bits_allocated if bits_stored is None else bits_stored
    if not 1 <= bits_stored <= bits_allocated:
        raise _Unreadable(f"BitsStored {bits_stored} is not between 1 and BitsAllocated {bits_allocated}")
    high_bit = a.us(0x00280102)
    if high_bit is not None and not float_pixels and high_bit != bits_stored - 1:
        raise _Unreadable(f"HighBit {high_bit} is not BitsStored - 1 = {bits_stored - 1} (PS3.5 8.1.1)")
    representation = a.us(0x00280103)
    if representation not in (None, 0, 1):
        raise _Unreadable(f"PixelRepresentation {representation} is not 0 (unsigned) or 1 (signed)")
    stored_samples, stored_bits = samples, bits_allocated
    if photometric == "PALETTE COLOR":
        # Indices into a colour table: the image is the RGB the table gives (PS3.3 C.7.6.3.1.5).
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
        descriptor = list(descriptor) if descriptor is not None and not isinstance(descriptor, (int, bytes)) \
            else None
        if descriptor is None or len(descriptor) != 3 or not 1 <= int(descriptor[2]) <= 16:
            raise _Unreadable(f"PALETTE COLOR with RedPaletteColorLookupTableDescriptor {descriptor} (three "
                              "values, the last 8 or 16 bits)")
        lut_bits = 8 if descriptor[2] <= 8 else 16
        samples, bits_allocated, bits_stored = 3, lut_bits, lut_bits
    return (samples, photometric, bits_allocated, bits_stored, representation, float_pixels, stored_samples,
            stored_bits)


def _rescale_of(a: _Attrs, where: str = "") -> tuple[float, float]:
    slope = a.checked(0x00281053, 1, "RescaleSlope" + where)
    intercept = a.checked(0x00281052, 1, "RescaleIntercept" + where)
    if slope is not None and slope[0] == 0:
        raise _Unreadable(f"RescaleSlope{where} 0 maps every pixel to RescaleIntercept")
    return (slope[0] if slope else 1.0), (intercept[0] if intercept else 0.0)


def _frames_of(a: _Attrs, f: _File) -> list[_Frame]:
    """One _Frame per frame, with geometry from the functional groups when the file has them."""
    ds = a.ds
    if 0x52009230 in ds:
        per_frame = ds[0x52009230].value
        if len(per_frame) < f.n_frames:
            raise _Unreadable(f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for NumberOfFrames "
                              f"{f.n_frames}: the frames without one would lose their position and rescale")
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        # Enhanced CT/MR/PET (PS3.3 C.7.6.16): each attribute sits in the per-frame item or, when
        # it holds for every frame, in the shared item.
        frames = []
        rescaled = []
        for i, item in enumerate(per_frame[: f.n_frames]):
            def group(keyword: str, item: Any = item) -> _Attrs:
                return _Attrs(_first_item(item, keyword) or _first_item(shared, keyword), a.endian == "<")

            where = f" (frame {i + 1})" if f.n_frames > 1 else ""
            spacing, source = _pixel_spacing(group("PixelMeasuresSequence"), where,
                                             group("PlanePositionSequence").ds is not None)
            transformation = group("PixelValueTransformationSequence")
            rescaled.append(transformation.ds is not None)
            slope, intercept = _rescale_of(transformation, where)
            orientation = group("PlaneOrientationSequence").checked(0x00200037, 6, "ImageOrientationPatient" + where)
            frames.append(_Frame(
                f, i, group("PlanePositionSequence").checked(0x00200032, 3, "ImagePositionPatient" + where),
                _orientation(orientation, "ImageOrientationPatient" + where), spacing, source, slope, intercept,
            ))
        placed = [fr.position is not None and fr.orientation is not None for fr in frames]
        if f.modality in ("CT", "MR", "PT") and not any(placed):
            # Enhanced CT/MR/PET require the Plane Position and Orientation groups (PS3.3 A.38.1,
            # A.36.2, A.56): without them the frames would be stacked at a made-up origin and 1 mm.
            raise _Unreadable("no frame has a PlanePositionSequence / PlaneOrientationSequence in its functional "
                              f"groups (required for an enhanced {f.modality} image)")
        if any(placed) and not all(placed):
            k = placed.index(False)
            raise _Unreadable(f"frame {k + 1} has no PlanePositionSequence / PlaneOrientationSequence in its "
                              "functional groups while other frames have them")
        if any(rescaled) and not all(rescaled):
            k = rescaled.index(False)
            raise _Unreadable(f"frame {k + 1} has no PixelValueTransformationSequence in its functional groups "
                              "while other frames have one")
        return frames
    position = a.checked(0x00200032, 3, "ImagePositionPatient")
    orientation = _orientation(a.checked(0x00200037, 6, "ImageOrientationPatient"))
    spacing, source = _pixel_spacing(a, placed=position is not None or orientation is not None)
    slope, intercept = _rescale_of(a)
    dose_scaling = a.checked(0x3004000E, 1, "DoseGridScaling")
    if dose_scaling is not None and f.modality == "RTDOSE":
        if not dose_scaling[0] > 0:
            raise _Unreadable(f"DoseGridScaling {dose_scaling[0]:g} is not positive")
        slope = dose_scaling[0]
    if f.n_frames > 1 and (f.modality == "RTDOSE" or a._raw(0x3004000C) is not None):
        return _dose_frames(a, f, position, orientation, spacing, source, slope, intercept)
    if f.n_frames > 1:
        # A multi-frame file without per-frame positions: frames stack in stored order.
        return [_Frame(f, i, None, None, spacing, source, slope, intercept) for i in range(f.n_frames)]
    return [_Frame(f, 0, position, orientation, spacing, source, slope, intercept)]


def _dose_frames(a: _Attrs, f: _File, position: Any, orientation: Any, spacing: Any, source: str, slope: float,
                 intercept: float) -> list[_Frame]:
    """RT Dose (PS3.3 C.8.8.3.2): frame k lies at ImagePositionPatient + offset[k] * normal, the
    offsets relative (first 0) or, for an axial grid only, absolute (first = ImagePositionPatient z)."""
    offsets = a.checked(0x3004000C, f.n_frames, "GridFrameOffsetVector")
    if offsets is None:
        raise _Unreadable(f"RT Dose of {f.n_frames} frames without GridFrameOffsetVector: the frames have no position")
    if position is None or orientation is None:
        raise _Unreadable("GridFrameOffsetVector without ImagePositionPatient / ImageOrientationPatient")
    steps = np.diff(offsets)
    direction = 1.0 if steps[0] > 0 else -1.0
    wrong = np.flatnonzero(steps * direction <= 0)
    if wrong.size:
        k = int(wrong[0])
        raise _Unreadable(f"GridFrameOffsetVector is not strictly monotonic: {offsets[k]:g} then {offsets[k + 1]:g} "
                          f"(frames {k + 1} and {k + 2})")
    if max(abs(o) for o in offsets) > _MAX_EXTENT_MM:
        raise _Unreadable(f"GridFrameOffsetVector reaches {max(offsets, key=abs):g} mm, more than {_MAX_EXTENT_MM:g}")
    if offsets[0] != 0:
        axial = np.allclose(orientation, (1, 0, 0, 0, 1, 0), atol=1e-6)
        if not (axial and abs(offsets[0] - position[2]) <= 1e-3):
            raise _Unreadable(f"GridFrameOffsetVector starts at {offsets[0]:g}: neither 0 (offsets relative to "
                              f"ImagePositionPatient) nor its z {position[2]:g} (absolute offsets, axial grids only)")
        offsets = tuple(o - offsets[0] for o in offsets)
    normal = np.cross(orientation[:3], orientation[3:])
    return [_Frame(f, i, tuple(np.asarray(position) + o * normal), orientation, spacing, source, slope,
                   intercept) for i, o in enumerate(offsets)]


def _orientation(o: tuple[float, ...] | None, name: str = "ImageOrientationPatient") -> tuple[float, ...] | None:
    """The six direction cosines when they are two orthogonal unit vectors; raises _Unreadable
    for any other value (None stays None: absent)."""
    if o is None:
        return None
    # Plain arithmetic: this runs once per frame, where numpy's per-call overhead shows.
    rr = o[0] * o[0] + o[1] * o[1] + o[2] * o[2]
    cc = o[3] * o[3] + o[4] * o[4] + o[5] * o[5]
    rc = o[0] * o[3] + o[1] * o[4] + o[2] * o[5]
    if abs(rr - 1) < 2e-2 and abs(cc - 1) < 2e-2 and abs(rc) < 1e-2:
        return o
    raise _Unreadable(f"{name} {chr(92).join(f'{v:g}' for v in o)} is not two orthogonal unit vectors "
                      f"(|row|^2 {rr:.4g}, |column|^2 {cc:.4g}, row.column {rc:.4g})")
