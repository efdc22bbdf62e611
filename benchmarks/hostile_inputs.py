"""Hostile-input campaign: a few thousand malformed inputs, each run in a child process.

Usage::

    python benchmarks/hostile_inputs.py [--workers 2] [--max-seconds 900] [--timeout 10]
                                        [--only dicom_file,onnx] [--out benchmarks/HOSTILE.md]

Every input is one :class:`Case`: it builds its file(s) or array in a scratch directory and makes
one medkern call. The call runs in a child forked from this process (so the imports are paid once)
under an address-space limit (``--memory-mb``, default 4096: a huge allocation fails there instead
of exhausting the machine) and a wall-clock limit (``--timeout``). Each generator knows the right
answer for its input: an error is required, a known result is required, or either is acceptable.
Outcomes:

- **crash**: the child died from a signal or exited without reporting (a segfault, an abort);
- **hang**: it ran past ``--timeout`` and was killed;
- **silent wrong**: it returned, and the result is wrong, or an error was required;
- **undocumented**: it raised an exception outside the documented ones (medkern.MedkernError and
  its DicomError / ModelError, ValueError, TypeError, OSError), or one with an empty message:
  IndexError, KeyError, MemoryError, RecursionError, a library's own exception type...;
- **clear error**: a documented exception with a message;
- **correct**: it returned the right result.

The report (``--out``) has one row per input class and the list of everything that is not a clear
error or correct. The tables of the earlier reports are kept under "Earlier runs".
"""

from __future__ import annotations

import os

# before numpy: one BLAS thread, so forked children inherit no BLAS thread pool
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "fuzz"))


def _other_library(argv: list[str]) -> None:
    """``--library TREE``: import medkern from TREE/python (a source tree with its built extension,
    e.g. an older commit exported with ``git archive``) instead of the installed package."""
    if "--library" not in argv:
        return
    tree = Path(argv[argv.index("--library") + 1]).resolve()
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
    sys.path.insert(0, str(tree / "python"))


_other_library(sys.argv)

import medkern as mk  # noqa: E402

import _seeds as S  # noqa: E402

OUTCOMES = ("crash", "hang", "silent_wrong", "undocumented", "clear_error", "correct")
TITLES = {"crash": "crashes", "hang": "hangs", "silent_wrong": "silent wrong", "undocumented": "undocumented errors",
          "clear_error": "clear errors", "correct": "correct"}
FILE_ERRORS = (mk.MedkernError, ValueError, TypeError, OSError)
ARG_ERRORS = (ValueError, TypeError)
NOBODY = 65534


@dataclass
class Case:
    cls: str
    name: str
    build: Callable[[Path], Any]          # writes the input under a scratch directory, returns the call's argument
    call: Callable[[Any], Any]            # the medkern call
    expect: str = "error"                 # "error" | "value" | "either"
    check: Callable[[Any], str | None] | None = None  # None: right; a string: what is wrong
    errors: tuple = FILE_ERRORS
    nobody: bool = False                  # run the call as user nobody (unreadable files mean something)


# ============================================================================ checks
def _close(a, b, atol=1e-6, rtol=1e-6) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True))


def sane_image(img, count: int | None = None) -> str | None:
    if not isinstance(img, mk.Image):
        return f"returned {type(img).__name__}, not an Image"
    sp, org, d = np.asarray(img.spacing, float), np.asarray(img.origin, float), np.asarray(img.direction, float)
    if not (np.all(np.isfinite(sp)) and np.all(sp > 0)):
        return f"spacing {tuple(sp)} is not finite and positive"
    if not np.all(np.isfinite(org)):
        return f"origin {tuple(org)} is not finite"
    # the contract: column a is the unit vector of array axis a (sheared frames of tilted gantries are fine)
    if (not np.all(np.isfinite(d)) or not np.allclose(np.linalg.norm(d, axis=0), 1.0, atol=1e-3)
            or abs(np.linalg.det(d)) < 1e-6):
        return f"direction {np.round(d, 4).tolist()} does not have independent unit columns"
    if img.array.size == 0:
        return f"empty image of shape {img.shape}"
    if count is not None and img.array.size != count:
        return f"{img.array.size} voxels, the pixel data holds {count}"
    return None


def image_equals(values, spacing=None, origin=None, atol=1e-6) -> Callable[[Any], str | None]:
    def check(img) -> str | None:
        bad = sane_image(img)
        if bad:
            return bad
        a = np.asarray(img.array)
        if a.shape != np.shape(values) or not _close(a, values, atol=atol):
            return f"values differ (shape {a.shape}, expected {np.shape(values)})"
        if spacing is not None and not _close(img.spacing, spacing, atol=1e-4):
            return f"spacing {tuple(img.spacing)}, expected {tuple(spacing)}"
        if origin is not None and not _close(img.origin, origin, atol=1e-4):
            return f"origin {tuple(img.origin)}, expected {tuple(origin)}"
        return None
    return check


def frames_at(frames: np.ndarray, positions) -> Callable[[Any], str | None]:
    """Every frame of ``frames`` (its values) must sit in the image at its world position."""
    def check(img) -> str | None:
        bad = sane_image(img)
        if bad:
            return bad
        a = np.asarray(img.array, dtype=np.float64)
        if a.ndim != 3 or a.shape[1:] != frames.shape[1:]:
            return f"shape {a.shape}, frames are {frames.shape[1:]}"
        for f, pos in enumerate(positions):
            ks = [k for k in range(a.shape[0]) if np.allclose(a[k], frames[f], atol=1e-4)]
            if not ks:
                return f"frame {f} is not in the image"
            world = np.asarray(img.index_to_world(np.array([[ks[0], 0, 0]], dtype=float))).reshape(-1)
            if not np.allclose(world, pos, atol=1e-3):
                return f"frame {f} lies at {np.round(world, 3).tolist()}, expected {list(pos)}"
        return None
    return check


def finite_image(img) -> str | None:
    bad = sane_image(img)
    if bad:
        return bad
    if np.asarray(img.array).dtype.kind == "f" and not np.all(np.isfinite(img.array)):
        return "non-finite voxel values"
    return None


def all_of(*checks) -> Callable[[Any], str | None]:
    def check(x):
        for c in checks:
            bad = c(x)
            if bad:
                return bad
        return None
    return check


# ============================================================================ helpers
def write(name: str, data: bytes) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        p = d / name
        p.write_bytes(data)
        return p
    return build


def truncations(data: bytes, n: int, rng: random.Random) -> list[int]:
    length = len(data)
    cuts = {0, 1, 127, 128, 131, 132, 140, length // 4, length // 3, length // 2, 2 * length // 3,
            3 * length // 4, length - 64, length - 3, length - 2, length - 1}
    while len(cuts) < n:
        cuts.add(rng.randrange(0, length))
    return sorted(c for c in cuts if 0 <= c < length)


def bit_flips(data: bytes, rng: random.Random, start: int = 0) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(start, len(b))
        b[pos] ^= 1 << rng.randrange(8)
    return bytes(b)


_INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff", b"\x00\x00", b"\xff\xff\xff\x7f",
                b"\x00\x00\x00\x80", b"\xff\xff\xff\xff")


def byte_values(data: bytes, rng: random.Random, start: int = 0) -> bytes:
    b = bytearray(data)
    pos = rng.randrange(start, len(b) - 4)
    v = rng.choice(_INTERESTING)
    b[pos:pos + len(v)] = v
    return bytes(b)


def read_path(p):
    return mk.read(p)


# ============================================================================ DICOM files
def _ds_bytes(ds) -> bytes:
    return S.to_bytes(ds)


def _dicom_bases() -> dict[str, tuple[bytes, Callable | None, int]]:
    """name -> (bytes, check of the clean read, voxel count of the pixel data)."""
    from pydicom.data import get_testdata_file

    raw = S.series_values()
    bases = {
        "ct_explicit": (S.ct_slice_bytes(2), image_equals(raw[2:3], None, (S.SERIES_ORIGIN[0], S.SERIES_ORIGIN[1],
                                                                     S.SERIES_ORIGIN[2] + 2 * S.SERIES_DZ)), 64),
        "ct_implicit": (S.ct_slice_bytes(3, ts=S.IMPLICIT_LE), image_equals(raw[3:4]), 64),
        "multiframe": (_ds_bytes(S.multiframe_ct()), image_equals(S.multiframe_raw()), 90),
        "rtdose": (_ds_bytes(S.rt_dose()), image_equals(S.dose_raw() * S.DOSE_SCALING, (2.0, 3.0, 2.0),
                                                       S.DOSE_ORIGIN), 120),
        "enhanced": (_ds_bytes(S.enhanced_ct()), image_equals(S.enhanced_raw() - 1024.0,
                                                             (3.0,) + S.ENH_SPACING, (0, 0, S.ENH_Z[0])), 126),
    }
    for name in ("MR_small.dcm", "CT_small.dcm", "emri_small.dcm"):
        import pydicom

        p = get_testdata_file(name)
        ds = pydicom.dcmread(p)
        count = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1)
        bases[name.removesuffix(".dcm")] = (Path(p).read_bytes(), None, count)
    return bases


def _pixel_end(data: bytes) -> int:
    """Offset just past the native Pixel Data value (trailing elements such as padding may follow)."""
    import struct

    i = data.rfind(b"\xe0\x7f\x10\x00")
    if i < 0:
        return len(data)
    if data[i + 4:i + 6] in (b"OW", b"OB"):
        return min(len(data), i + 12 + struct.unpack_from("<I", data, i + 8)[0])
    return min(len(data), i + 8 + struct.unpack_from("<I", data, i + 4)[0])


def _pixel_start(data: bytes) -> int:
    i = data.rfind(b"\xe0\x7f\x10\x00")
    return i if i > 0 else 132


def dicom_file_cases(rng: random.Random, flips: int) -> list[Case]:
    cases = []
    for name, (data, check, count) in _dicom_bases().items():
        fname = f"{name}.dcm"
        if check is not None:
            cases.append(Case("dicom_file", f"{name}: clean", write(fname, data), read_path, "value", check))
        end = _pixel_end(data)
        for cut in truncations(data, 22, rng):
            # past the pixel data only trailing elements (padding) are lost: the image is intact
            expect = "error" if cut < end else "either"
            cases.append(Case("dicom_file", f"{name}: truncated at {cut}/{len(data)}", write(fname, data[:cut]),
                              read_path, expect, lambda img, c=count: sane_image(img, c)))
        for n in range(flips):
            d = bit_flips(data, rng)
            cases.append(Case("dicom_file", f"{name}: bit flips #{n}", write(fname, d), read_path, "either",
                              lambda img, c=count: sane_image(img, c)))
        for n in range(flips // 2):
            d = byte_values(data, rng, 0)
            cases.append(Case("dicom_file", f"{name}: byte values #{n}", write(fname, d), read_path, "either",
                              lambda img, c=count: sane_image(img, c)))
        start = _pixel_start(data)
        for n in range(flips // 2):
            d = byte_values(data, rng, 128) if start <= 140 else byte_values(data[:start], rng, 128) + data[start:]
            cases.append(Case("dicom_file", f"{name}: header byte values #{n}", write(fname, d), read_path,
                              "either", lambda img, c=count: sane_image(img, c)))
    cases += dicom_tag_cases()
    return cases


def _edit(make, fn) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        ds = make()
        fn(ds)
        p = d / "edited.dcm"
        data = S.to_bytes(ds)
        p.write_bytes(fn.patch(data) if isinstance(fn, _TsPatch) else data)
        return p
    return build


def _set(**kw):
    def fn(ds):
        for k, v in kw.items():
            if v is None:
                if k in ds:
                    delattr(ds, k)
            else:
                setattr(ds, k, v)
    return fn


def _set_raw(keyword: str, vr: str, value: bytes):
    """Store a raw value that pydicom would refuse to encode (e.g. 'nan' in a DS, a 65535 IS)."""
    def fn(ds):
        from pydicom.datadict import tag_for_keyword
        from pydicom.dataelem import DataElement

        tag = tag_for_keyword(keyword)
        ds[tag] = DataElement(tag, vr, value.decode("latin-1"))
        ds[tag].validation_mode = 0
    return fn


def _pixels(transform):
    def fn(ds):
        ds.PixelData = transform(bytes(ds.PixelData))
    return fn


class _TsPatch:
    """Marks an edit that rewrites the transfer syntax UID in the written bytes (pydicom refuses to
    write native pixel data under a compressed syntax)."""

    def __init__(self, uid: str):
        self.uid = uid

    def __call__(self, ds) -> None:
        pass

    def patch(self, data: bytes) -> bytes:
        import struct

        i = data.index(b"\x02\x00\x10\x00UI")
        n = struct.unpack_from("<H", data, i + 6)[0]
        value = self.uid.encode() + (b"\0" if len(self.uid) % 2 else b"")
        out = bytearray(data[:i + 6] + struct.pack("<H", len(value)) + value + data[i + 8 + n:])
        glen = struct.unpack_from("<I", out, 140)[0]
        struct.pack_into("<I", out, 140, glen + len(value) - n)
        return bytes(out)


def _ts_patch(uid: str) -> _TsPatch:
    return _TsPatch(uid)


def _meta(ts: str):
    def fn(ds):
        ds.file_meta.TransferSyntaxUID = ts
    return fn


def dicom_tag_cases() -> list[Case]:
    slice2 = S.series_values()[2:3]
    origin2 = (S.SERIES_ORIGIN[0], S.SERIES_ORIGIN[1], S.SERIES_ORIGIN[2] + 2 * S.SERIES_DZ)
    right = image_equals(slice2, None, origin2)
    edits: list[tuple[str, Callable, str, Any]] = [
        ("Rows 65535", _set(Rows=65535), "error", None),
        ("Columns 65535", _set(Columns=65535), "error", None),
        ("Rows and Columns 65535", _set(Rows=65535, Columns=65535), "error", None),
        ("Rows 0", _set(Rows=0), "error", None),
        ("Rows 4 (half the pixels)", _set(Rows=4), "error", None),
        ("NumberOfFrames 1000000000", _set(NumberOfFrames=1000000000), "error", None),
        ("NumberOfFrames 2147483647", _set(NumberOfFrames=2147483647), "error", None),
        ("NumberOfFrames 99999999999", _set_raw("NumberOfFrames", "IS", b"99999999999 "), "error", None),
        ("NumberOfFrames 2 (one frame of pixels)", _set(NumberOfFrames=2), "error", None),
        ("NumberOfFrames -1", _set_raw("NumberOfFrames", "IS", b"-1"), "either", right),
        ("NumberOfFrames 0", _set(NumberOfFrames=0), "either", right),
        ("NumberOfFrames 'abc'", _set_raw("NumberOfFrames", "LO", b"abc "), "either", right),
        ("NumberOfFrames 1.5", _set_raw("NumberOfFrames", "IS", b"1.5 "), "either", right),
        ("BitsAllocated 0", _set(BitsAllocated=0), "either", right),
        ("BitsAllocated 7", _set(BitsAllocated=7), "error", None),
        ("BitsAllocated 8", _set(BitsAllocated=8, BitsStored=8, HighBit=7), "error", None),
        ("BitsAllocated 12", _set(BitsAllocated=12), "error", None),
        ("BitsAllocated 32", _set(BitsAllocated=32, BitsStored=32, HighBit=31), "error", None),
        ("BitsAllocated 64", _set(BitsAllocated=64), "error", None),
        ("BitsAllocated 65535", _set(BitsAllocated=65535), "error", None),
        ("BitsStored 0", _set(BitsStored=0), "either", right),
        ("BitsStored 40", _set(BitsStored=40), "either", right),
        ("BitsStored 12", _set(BitsStored=12, HighBit=11), "either", right),
        ("HighBit 40", _set(HighBit=40), "either", right),
        ("SamplesPerPixel 0", _set(SamplesPerPixel=0), "either", right),
        ("SamplesPerPixel 3", _set(SamplesPerPixel=3), "error", None),
        ("SamplesPerPixel 65535", _set(SamplesPerPixel=65535), "error", None),
        ("PixelRepresentation 2", _set(PixelRepresentation=2), "either", right),
        ("pixel data 2 bytes short", _pixels(lambda b: b[:-2]), "error", None),
        ("pixel data half", _pixels(lambda b: b[: len(b) // 2]), "error", None),
        ("pixel data empty", _pixels(lambda b: b""), "error", None),
        ("pixel data 2 bytes long", _pixels(lambda b: b + b"\0\0"), "either", right),
        ("pixel data doubled", _pixels(lambda b: b + b), "either", right),
        ("no pixel data", _set(PixelData=None), "error", None),
        ("PixelSpacing 0\\0", _set_raw("PixelSpacing", "DS", b"0\\0 "), "either", sane_image),
        ("PixelSpacing -0.7\\0.8", _set_raw("PixelSpacing", "DS", b"-0.7\\0.8"), "either", sane_image),
        ("PixelSpacing nan\\0.8", _set_raw("PixelSpacing", "DS", b"nan\\0.8 "), "either", sane_image),
        ("PixelSpacing inf\\0.8", _set_raw("PixelSpacing", "DS", b"inf\\0.8 "), "either", sane_image),
        ("PixelSpacing 1e308\\1e308", _set_raw("PixelSpacing", "DS", b"1e308\\1e308 "), "either", sane_image),
        ("PixelSpacing one value", _set_raw("PixelSpacing", "DS", b"0.7 "), "either", sane_image),
        ("PixelSpacing abc", _set_raw("PixelSpacing", "LO", b"abc\\def "), "either", sane_image),
        ("PixelSpacing absent", _set(PixelSpacing=None), "either", sane_image),
        ("ImageOrientationPatient zeros", _set_raw("ImageOrientationPatient", "DS", b"0\\0\\0\\0\\0\\0 "),
         "either", sane_image),
        ("ImageOrientationPatient nan", _set_raw("ImageOrientationPatient", "DS", b"nan\\0\\0\\0\\1\\0 "),
         "either", sane_image),
        ("ImageOrientationPatient parallel", _set_raw("ImageOrientationPatient", "DS", b"1\\0\\0\\1\\0\\0 "),
         "either", sane_image),
        ("ImageOrientationPatient 5 values", _set_raw("ImageOrientationPatient", "DS", b"1\\0\\0\\0\\1 "),
         "either", sane_image),
        ("ImageOrientationPatient 1e308", _set_raw("ImageOrientationPatient", "DS", b"1e308\\0\\0\\0\\1\\0 "),
         "either", sane_image),
        ("ImagePositionPatient nan", _set_raw("ImagePositionPatient", "DS", b"nan\\0\\0 "), "either", sane_image),
        ("ImagePositionPatient inf", _set_raw("ImagePositionPatient", "DS", b"inf\\0\\0 "), "either", sane_image),
        ("ImagePositionPatient 2 values", _set_raw("ImagePositionPatient", "DS", b"1\\2 "), "either", sane_image),
        ("RescaleSlope nan", _set_raw("RescaleSlope", "DS", b"nan "), "either", finite_image),
        ("RescaleSlope inf", _set_raw("RescaleSlope", "DS", b"inf "), "either", finite_image),
        ("RescaleSlope 1e308", _set_raw("RescaleSlope", "DS", b"1e308 "), "either", finite_image),
        ("RescaleIntercept nan", _set_raw("RescaleIntercept", "DS", b"nan "), "either", finite_image),
        ("RescaleIntercept -inf", _set_raw("RescaleIntercept", "DS", b"-inf "), "either", finite_image),
        ("PhotometricInterpretation RGB, 1 sample", _set(PhotometricInterpretation="RGB"), "either", sane_image),
        ("PALETTE COLOR without a table", _set(PhotometricInterpretation="PALETTE COLOR"), "error", None),
        ("transfer syntax JPEG baseline, native data", _ts_patch("1.2.840.10008.1.2.4.50"), "error", None),
        ("transfer syntax RLE, native data", _ts_patch("1.2.840.10008.1.2.5"), "error", None),
        ("transfer syntax deflate, not deflated", _meta("1.2.840.10008.1.2.1.99"), "either", right),
        ("transfer syntax unknown 1.2.3.4", _meta("1.2.3.4"), "error", None),
        ("SOPClassUID unknown", _set(SOPClassUID="1.2.3.4.5"), "either", right),
        ("Modality RTDOSE on a CT slice", _set(Modality="RTDOSE"), "either", sane_image),
        ("WindowCenter junk", _set_raw("WindowCenter", "LO", b"abc "), "either", right),
    ]
    cases = []
    for ts_name, ts in (("explicit", S.EXPLICIT_LE), ("implicit", S.IMPLICIT_LE)):
        for name, fn, expect, check in edits:
            cases.append(Case("dicom_file", f"CT slice ({ts_name} VR): {name}",
                              _edit(lambda ts=ts: S.ct_slice(2, ts=ts), fn), read_path, expect, check))
    mf = [
        ("NumberOfFrames 1000000000", _set(NumberOfFrames=1000000000), "error", None),
        ("NumberOfFrames 2 (3 frames of pixels)", _set(NumberOfFrames=2), "either",
         image_equals(S.multiframe_raw()[:2])),
        ("NumberOfFrames 4 (3 frames of pixels)", _set(NumberOfFrames=4), "error", None),
        ("pixel data one frame short", _pixels(lambda b: b[: len(b) * 2 // 3]), "error", None),
        ("Rows 65535, NumberOfFrames 65535", _set(Rows=65535, NumberOfFrames=65535), "error", None),
    ]
    for name, fn, expect, check in mf:
        cases.append(Case("dicom_file", f"multi-frame CT: {name}", _edit(S.multiframe_ct, fn), read_path, expect,
                          check))
    return cases


# ============================================================================ RT Dose
def rt_dose_cases() -> list[Case]:
    raw = S.dose_raw() * S.DOSE_SCALING
    x0, y0, z0 = S.DOSE_ORIGIN

    def at(offsets):
        return frames_at(raw, [(x0, y0, z0 + o) for o in offsets])

    def grid(offsets):
        return lambda ts: S.rt_dose(ts, offsets)

    variants = [
        ("relative offsets (control)", grid(S.DOSE_OFFSETS), None, "value", at(S.DOSE_OFFSETS)),
        ("absolute offsets starting at the IPP z", grid([z0 + o for o in S.DOSE_OFFSETS]), None, "value",
         at(S.DOSE_OFFSETS)),
        ("decreasing offsets", grid([0.0, -2.0, -4.0, -6.0]), None, "value", at([0.0, -2.0, -4.0, -6.0])),
        ("shuffled offsets", grid([2.0, 0.0, 6.0, 4.0]), None, "either", at([2.0, 0.0, 6.0, 4.0])),
        ("non-uniform offsets", grid([0.0, 2.0, 5.0, 6.0]), None, "either", at([0.0, 2.0, 5.0, 6.0])),
        ("3 offsets for 4 frames", grid([0.0, 2.0, 4.0]), None, "error", None),
        ("5 offsets for 4 frames", grid([0.0, 2.0, 4.0, 6.0, 8.0]), None, "error", None),
        ("1 offset for 4 frames", grid([0.0]), None, "error", None),
        ("offsets all zero", grid([0.0, 0.0, 0.0, 0.0]), None, "error", None),
        ("duplicate offsets", grid([0.0, 2.0, 2.0, 4.0]), None, "error", None),
        ("no GridFrameOffsetVector", grid(None), None, "error", None),
        ("offsets nan", grid(None), _set_raw("GridFrameOffsetVector", "DS", b"0\\nan\\4\\6 "), "error", None),
        ("offsets inf", grid(None), _set_raw("GridFrameOffsetVector", "DS", b"0\\2\\inf\\6 "), "error", None),
        ("offsets not numbers", grid(None), _set_raw("GridFrameOffsetVector", "LO", b"a\\b\\c\\d "), "error", None),
        ("offsets empty", grid(None), _set_raw("GridFrameOffsetVector", "DS", b""), "error", None),
        ("offsets 1e308 apart", grid(None), _set_raw("GridFrameOffsetVector", "DS", b"0\\1e308\\-1e308\\5 "),
         "error", None),
        ("DoseGridScaling nan", grid(S.DOSE_OFFSETS), _set_raw("DoseGridScaling", "DS", b"nan "), "either",
         finite_image),
        ("DoseGridScaling inf", grid(S.DOSE_OFFSETS), _set_raw("DoseGridScaling", "DS", b"inf "), "either",
         finite_image),
        ("DoseGridScaling 0", grid(S.DOSE_OFFSETS), _set_raw("DoseGridScaling", "DS", b"0 "), "either",
         at(S.DOSE_OFFSETS)),
        ("no ImagePositionPatient", grid(S.DOSE_OFFSETS), _set(ImagePositionPatient=None), "either", sane_image),
        ("NumberOfFrames 1000000000", grid(S.DOSE_OFFSETS), _set(NumberOfFrames=1000000000), "error", None),
    ]
    cases = []
    for ts_name, ts in (("explicit", S.EXPLICIT_LE), ("implicit", S.IMPLICIT_LE)):
        for name, make, fn, expect, check in variants:
            cases.append(Case("rt_dose", f"RTDOSE ({ts_name} VR): {name}",
                              _edit(lambda m=make, ts=ts: m(ts), fn or (lambda ds: None)), read_path, expect, check))
    return cases


# ============================================================================ enhanced multi-frame
def _per_frame(fn):
    def edit(ds):
        fn(ds, ds.PerFrameFunctionalGroupsSequence)
    return edit


def enhanced_cases() -> list[Case]:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    raw = S.enhanced_raw() - 1024.0

    def at(zs):
        return frames_at(raw, [(0.0, 0.0, z) for z in zs])

    def empty_items(ds, seq):
        ds.PerFrameFunctionalGroupsSequence = Sequence([Dataset() for _ in seq])

    def drop_last(ds, seq):
        ds.PerFrameFunctionalGroupsSequence = Sequence(list(seq)[:-1])

    def extra_item(ds, seq):
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [0, 0, 99]
        item.PlanePositionSequence = Sequence([pp])
        ds.PerFrameFunctionalGroupsSequence = Sequence(list(seq) + [item])

    def empty_position(ds, seq):
        seq[1].PlanePositionSequence = Sequence([])

    def rotate_frame(ds, seq):
        po = Dataset()
        po.ImageOrientationPatient = [0, 1, 0, 0, 0, 1]
        seq[2].PlaneOrientationSequence = Sequence([po])

    def own_spacing(ds, seq):
        pm = Dataset()
        pm.PixelSpacing = [5.0, 5.0]
        pm.SliceThickness = 2.0
        seq[1].PixelMeasuresSequence = Sequence([pm])

    def shared_into_frames(ds, seq):
        shared = ds.SharedFunctionalGroupsSequence[0]
        for item in seq:
            for kw in ("PixelMeasuresSequence", "PlaneOrientationSequence", "PixelValueTransformationSequence"):
                setattr(item, kw, getattr(shared, kw))
        del ds.SharedFunctionalGroupsSequence

    def no_shared(ds, seq):
        del ds.SharedFunctionalGroupsSequence

    def no_pixel_measures(ds, seq):
        del ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence

    zs = S.ENH_Z
    variants = [
        ("control", None, lambda ds, seq: None, "value", at(zs)),
        ("shuffled frame positions", [zs[2], zs[0], zs[1]], lambda ds, seq: None, "value", at([zs[2], zs[0], zs[1]])),
        ("empty PerFrameFunctionalGroupsSequence", None,
         lambda ds, seq: setattr(ds, "PerFrameFunctionalGroupsSequence", Sequence([])), "either", at(zs)),
        ("per-frame items without positions", None, empty_items, "either", at(zs)),
        ("one per-frame item fewer than frames", None, drop_last, "either", at(zs)),
        ("one per-frame item more than frames", None, extra_item, "either", at(zs)),
        ("empty PlanePositionSequence in a frame", None, empty_position, "either", at(zs)),
        ("frame position nan", [zs[0], float("nan"), zs[2]], lambda ds, seq: None, "either", at(zs)),
        ("duplicate frame positions", [zs[0], zs[0], zs[2]], lambda ds, seq: None, "error", None),
        ("one frame rotated", None, rotate_frame, "either", sane_image),
        ("one frame with its own pixel spacing", None, own_spacing, "either", sane_image),
        ("shared groups moved into every frame", None, shared_into_frames, "value", at(zs)),
        ("no SharedFunctionalGroupsSequence", None, no_shared, "either", sane_image),
        ("no PixelMeasuresSequence", None, no_pixel_measures, "either", sane_image),
        ("NumberOfFrames 1000000", None, lambda ds, seq: setattr(ds, "NumberOfFrames", 1000000), "error", None),
        ("NumberOfFrames 0", None, lambda ds, seq: setattr(ds, "NumberOfFrames", 0), "either", sane_image),
    ]
    cases = []
    for ts_name, ts in (("explicit", S.EXPLICIT_LE), ("implicit", S.IMPLICIT_LE)):
        for name, positions, fn, expect, check in variants:
            cases.append(Case("enhanced_multiframe", f"enhanced CT ({ts_name} VR): {name}",
                              _edit(lambda ts=ts, p=positions: S.enhanced_ct(ts, p), _per_frame(fn)), read_path,
                              expect, check))
    return cases


# ============================================================================ DICOM folders
def _series_right(img) -> str | None:
    return image_equals(S.series_values(), (S.SERIES_DZ,) + S.PIXEL_SPACING, S.SERIES_ORIGIN)(img)


def _listed_right(series) -> str | None:
    if not isinstance(series, list):
        return f"returned {type(series).__name__}"
    ours = [s for s in series if s.series_uid == S.SERIES_UID]
    if len(ours) != 1:
        return f"{len(ours)} entries for the reference series ({[s.key for s in series]})"
    if tuple(ours[0].shape) != S.SERIES_SHAPE and not ours[0].unreadable and not ours[0].problems:
        return f"reference series listed with shape {ours[0].shape}, no unreadable file or problem named"
    return None


def _slices_sound(img) -> str | None:
    """Every slice returned holds one reference slice, at that slice's world position."""
    bad = sane_image(img)
    if bad:
        return bad
    raw = S.series_values()
    a = np.asarray(img.array, dtype=np.float64)
    if a.ndim != 3 or a.shape[1:] != raw.shape[1:]:
        return f"shape {a.shape}"
    for k in range(a.shape[0]):
        match = [f for f in range(raw.shape[0]) if np.array_equal(a[k], raw[f])]
        world = np.asarray(img.index_to_world(np.array([[k, 0, 0]], dtype=float))).reshape(-1)
        if not match:
            continue  # an interpolated slice of a recovered grid
        z = S.SERIES_ORIGIN[2] + match[0] * S.SERIES_DZ
        if not np.allclose(world, (S.SERIES_ORIGIN[0], S.SERIES_ORIGIN[1], z), atol=1e-3):
            return f"slice {match[0]} returned at {np.round(world, 3).tolist()}, it lies at z={z}"
    return None


def _folder(extra: Callable[[Path], None] | None = None, slices=None) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        folder = d / "study"
        S.write_series(folder, slices)
        if extra is not None:
            extra(folder)
        return folder
    return build


def _series_uid(folder: Path):
    return mk.read_dicom_series(folder, series_uid=S.SERIES_UID)


def folder_cases(rng: random.Random, flips: int) -> list[Case]:
    def fifo(name):
        return lambda f: os.mkfifo(f / name)

    def fifo_sub(f):
        (f / "sub").mkdir()
        os.mkfifo(f / "sub" / "pipe.dcm")

    def unreadable_dir(f):
        sub = f / "locked"
        sub.mkdir()
        (sub / "a.dcm").write_bytes(S.ct_slice_bytes(0, ts=S.EXPLICIT_LE))
        sub.chmod(0)

    def unreadable_file(f):
        p = f / "locked.dcm"
        p.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
        p.chmod(0)

    def unreadable_member(f):
        (f / "slice2.dcm").chmod(0)

    def symlink(name, target):
        return lambda f: os.symlink(target, f / name)

    def loop(f):
        os.symlink(f, f / "loop")

    def write_file(name, data):
        return lambda f: (f / name).write_bytes(data)

    def truncate_member(k, keep):
        def fn(f):
            p = f / f"slice{k}.dcm"
            p.write_bytes(p.read_bytes()[:keep(len(p.read_bytes()))])
        return fn

    def replace_member(k, make):
        def fn(f):
            (f / f"slice{k}.dcm").write_bytes(S.to_bytes(make()))
        return fn

    def edited_slice(k, **kw):
        def make():
            ds = S.ct_slice(k)
            for key, v in kw.items():
                setattr(ds, key, v)
            return ds
        return make

    def raw_edited_slice(k, keyword, value):
        def make():
            ds = S.ct_slice(k)
            _set_raw(keyword, "DS", value)(ds)
            return ds
        return make

    def duplicate(f):
        ds = S.ct_slice(2)
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".99"
        (f / "copy.dcm").write_bytes(S.to_bytes(ds))

    def clash(f):
        ds = S.ct_slice(2)
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".98"
        ds.PixelData = (S.series_raw()[2] + 7).astype("<i2").tobytes()
        (f / "clash.dcm").write_bytes(S.to_bytes(ds))

    def same_position(f):
        for k in range(S.SERIES_SHAPE[0]):
            ds = S.ct_slice(k)
            ds.ImagePositionPatient = list(S.SERIES_ORIGIN)
            (f / f"slice{k}.dcm").write_bytes(S.to_bytes(ds))

    def no_position(f):
        for k in range(S.SERIES_SHAPE[0]):
            ds = S.ct_slice(k)
            del ds.ImagePositionPatient
            (f / f"slice{k}.dcm").write_bytes(S.to_bytes(ds))

    def nested(f):
        deep = f
        for n in range(60):
            deep = deep / f"d{n}"
        deep.mkdir(parents=True)
        for p in list(f.glob("slice*.dcm")):
            p.rename(deep / p.name)

    def many_junk(f):
        for n in range(400):
            (f / f"junk{n}.txt").write_bytes(b"x" * (n % 7))

    def huge_other_series(f):
        ds = S.ct_slice(0, series_uid="1.2.826.0.1.3680043.8.498.77")
        ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 65535
        (f / "huge.dcm").write_bytes(S.to_bytes(ds))

    def odd_names(f):
        (f / "slice0.dcm").rename(f / "line\nbreak.dcm")
        (f / "slice1.dcm").rename(f / os.fsdecode(b"bad\xff\xfename.dcm"))

    def rtstruct_inside(f):
        (f / "rs.dcm").write_bytes(S.rtstruct_bytes())

    def dose_inside(f):
        (f / "dose.dcm").write_bytes(S.to_bytes(S.rt_dose()))

    def flipped_member(seed):
        def fn(f):
            p = f / "slice2.dcm"
            data = p.read_bytes()
            p.write_bytes(bit_flips(data[:_pixel_start(data)], random.Random(seed), 132) + data[_pixel_start(data):])
        return fn

    full = _series_right
    extras = [
        ("FIFO named x.dcm", fifo("x.dcm"), "value", full),
        ("FIFO without suffix", fifo("pipe"), "value", full),
        ("FIFO in a sub-folder", fifo_sub, "value", full),
        ("unreadable sub-folder", unreadable_dir, "either", full),
        ("unreadable extra file", unreadable_file, "either", full),
        ("unreadable member slice", unreadable_member, "either", full),
        ("symlink loop", loop, "value", full),
        ("symlink to /dev/zero", symlink("zero.dcm", "/dev/zero"), "either", full),
        ("symlink to /dev/urandom", symlink("random.dcm", "/dev/urandom"), "either", full),
        ("dangling symlink", symlink("gone.dcm", "/nonexistent/file.dcm"), "either", full),
        ("empty file", write_file("empty.dcm", b""), "either", full),
        ("text file", write_file("README.txt", b"not an image\n" * 10), "value", full),
        ("random bytes .dcm", write_file("junk.dcm", bytes(random.Random(5).randrange(256) for _ in range(3000))),
         "either", full),
        ("preamble then nothing", write_file("cut.dcm", b"\0" * 128 + b"DICM"), "either", full),
        ("RTSTRUCT in the folder", rtstruct_inside, "value", full),
        ("RT Dose in the folder", dose_inside, "either", full),
        ("other series claims 65535^3 voxels", huge_other_series, "either", full),
        ("middle slice truncated in its header", truncate_member(2, lambda n: 300), "either", full),
        ("middle slice truncated in its pixels", truncate_member(2, lambda n: n - 40), "either", full),
        ("last slice truncated in its pixels", truncate_member(4, lambda n: n - 40), "either", full),
        ("middle slice empty", truncate_member(2, lambda n: 0), "either", full),
        ("duplicate slice (same values)", duplicate, "either", full),
        ("two different slices at one position", clash, "error", None),
        ("all slices at one position", same_position, "error", None),
        ("no ImagePositionPatient", no_position, "either", sane_image),
        ("slice with other Rows", replace_member(2, edited_slice(2, Rows=4)), "either", _slices_sound),
        ("slice with nan position", replace_member(2, raw_edited_slice(2, "ImagePositionPatient", b"nan\\nan\\nan ")),
         "either", _slices_sound),
        ("slice with another orientation",
         replace_member(2, edited_slice(2, ImageOrientationPatient=[0, 1, 0, 0, 0, 1])), "either", _slices_sound),
        ("slice with other pixel spacing", replace_member(2, edited_slice(2, PixelSpacing=[1.5, 1.5])), "either",
         _slices_sound),
        ("series 60 folders deep", nested, "value", full),
        ("400 junk files", many_junk, "value", full),
        ("odd file names", odd_names, "value", full),
    ] + [(f"middle slice header bit flips #{n}", flipped_member(1000 + n), "either", _slices_sound)
         for n in range(max(4, flips // 6))]
    cases = []
    for name, extra, expect, check in extras:
        nobody = "unreadable" in name
        read_check = check
        if "other series" in name:
            cases.append(Case("dicom_folder", f"read_dicom_series(uid): {name}", _folder(extra), _series_uid, expect,
                              check, nobody=nobody))
        else:
            cases.append(Case("dicom_folder", f"mk.read(folder): {name}", _folder(extra), read_path, expect,
                              read_check, nobody=nobody))
        list_expect = "either" if expect == "error" else expect
        cases.append(Case("dicom_folder", f"list_dicom_series: {name}", _folder(extra), mk.list_dicom_series,
                          list_expect if check is not None else "either",
                          _listed_right if check is full else (lambda s: None), nobody=nobody))
    cases.append(Case("dicom_folder", "mk.read(folder): missing slice (gap)", _folder(slices=[0, 1, 3, 4]),
                      read_path, "either", _slices_sound))
    cases.append(Case("dicom_folder", "mk.read(folder): empty folder", _folder(slices=[]), read_path, "error"))
    cases.append(Case("dicom_folder", "mk.read(folder): only junk",
                      _folder(write_file("a.txt", b"x"), slices=[]), read_path, "error"))
    return cases


# ============================================================================ RTSTRUCT
def _rt_right(masks) -> str | None:
    if not isinstance(masks, dict):
        return f"returned {type(masks).__name__}"
    expected = S.expected_masks()
    if sorted(masks) != sorted(expected):
        return f"ROIs {sorted(masks)}, expected {sorted(expected)}"
    for name, m in masks.items():
        if not np.array_equal(np.asarray(m.array), expected[name]):
            return f"mask {name!r} differs ({int(np.asarray(m.array).sum())} voxels, expected {expected[name].sum()})"
    return None


def _rt_sane(masks) -> str | None:
    if not isinstance(masks, dict):
        return f"returned {type(masks).__name__}"
    for name, m in masks.items():
        if m.shape != S.SERIES_SHAPE or np.asarray(m.array).dtype != np.uint8:
            return f"mask {name!r} has shape {m.shape} and dtype {np.asarray(m.array).dtype}"
        if not set(np.unique(m.array)).issubset({0, 1}):
            return f"mask {name!r} holds values {np.unique(m.array)}"
    return None


def _rt_roi_right(name):
    def check(masks) -> str | None:
        bad = _rt_sane(masks)
        if bad:
            return bad
        if name not in masks or not np.array_equal(masks[name].array, S.expected_masks()[name]):
            return f"mask {name!r} missing or wrong"
        return None
    return check


def _rt_build(data_or_edit, reference: str = "folder") -> Callable[[Path], tuple]:
    def build(d: Path):
        S.write_series(d / "ref")
        p = d / "rs.dcm"
        if isinstance(data_or_edit, bytes):
            p.write_bytes(data_or_edit)
        else:
            ds = S.rtstruct()
            data_or_edit(ds)
            p.write_bytes(S.to_bytes(ds))
        return p, d / "ref"
    return build


def _read_rt(args):
    path, ref = args
    return mk.read_rtstruct(path, ref)


def rtstruct_cases(rng: random.Random, flips: int) -> list[Case]:
    def contour(roi=0, n=0):
        return lambda ds: ds.ROIContourSequence[roi].ContourSequence[n]

    def set_data(values, roi=0, n=0):
        def fn(ds):
            c = ds.ROIContourSequence[roi].ContourSequence[n]
            c.ContourData = values
            c.NumberOfContourPoints = len(values) // 3
        return fn

    def raw_data(raw: bytes, roi=0, n=0, vr="DS"):
        def fn(ds):
            from pydicom.dataelem import DataElement

            c = ds.ROIContourSequence[roi].ContourSequence[n]
            c[0x30060050] = DataElement(0x30060050, vr, raw.decode())
        return fn

    gtv = S._box_contour(*S.GTV_BOX)

    def dup_number(ds):
        ds.StructureSetROISequence[1].ROINumber = 1

    def dup_number_contours(ds):
        ds.StructureSetROISequence[1].ROINumber = 1
        ds.ROIContourSequence[1].ReferencedROINumber = 1

    def orphan(ds):
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        rc = Dataset()
        rc.ReferencedROINumber = 99
        c = Dataset()
        c.ContourGeometricType = "CLOSED_PLANAR"
        c.ContourData = gtv
        c.NumberOfContourPoints = 4
        rc.ContourSequence = Sequence([c])
        ds.ROIContourSequence.append(rc)

    def all_orphans(ds):
        for rc in ds.ROIContourSequence:
            rc.ReferencedROINumber = rc.ReferencedROINumber + 50

    def no_ref_number(ds):
        del ds.ROIContourSequence[1].ReferencedROINumber

    def roi_without_contours(ds):
        del ds.ROIContourSequence[1]

    def empty_contour_seq(ds):
        from pydicom.sequence import Sequence

        ds.ROIContourSequence[1].ContourSequence = Sequence([])

    def geometric(t):
        def fn(ds):
            for c in ds.ROIContourSequence[1].ContourSequence:
                c.ContourGeometricType = t
        return fn

    def set_attr(getter, **kw):
        def fn(ds):
            obj = getter(ds)
            for k, v in kw.items():
                if v is None:
                    delattr(obj, k)
                else:
                    setattr(obj, k, v)
        return fn

    def many_points(ds):
        # the GTV square traced with 40000 points along its edges
        x0, y0, z = gtv[0], gtv[1], gtv[2]
        x1, y1 = gtv[3], gtv[7]
        t = np.linspace(0, 1, 10000, endpoint=False)
        edges = [(x0 + (x1 - x0) * t, np.full_like(t, y0)), (np.full_like(t, x1), y0 + (y1 - y0) * t),
                 (x1 - (x1 - x0) * t, np.full_like(t, y1)), (np.full_like(t, x0), y1 - (y1 - y0) * t)]
        xs = np.concatenate([e[0] for e in edges])
        ys = np.concatenate([e[1] for e in edges])
        pts = np.stack([xs, ys, np.full_like(xs, z)], 1).ravel()
        set_data([round(float(v), 4) for v in pts])(ds)

    def bow_tie(ds):
        x0, y0, z, x1, y1 = gtv[0], gtv[1], gtv[2], gtv[3], gtv[7]
        set_data([x0, y0, z, x1, y1, z, x1, y0, z, x0, y1, z])(ds)

    def for_mismatch(ds):
        ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.999"
        for roi in ds.StructureSetROISequence:
            roi.ReferencedFrameOfReferenceUID = "1.2.3.999"

    def no_ssroi(ds):
        del ds.StructureSetROISequence

    def no_roi_contour(ds):
        del ds.ROIContourSequence

    z_gtv = gtv[2]
    variants = [
        ("control", lambda ds: None, "value", _rt_right),
        ("duplicate ROINumber (second ROI's contours orphaned)", dup_number, "error", None),
        ("duplicate ROINumber (both ROIs' contours)", dup_number_contours, "error", None),
        ("ContourData 3k+1 values", set_data(gtv + [1.0]), "error", None),
        ("ContourData 3k+2 values", set_data(gtv + [1.0, 2.0]), "error", None),
        ("ContourData 1 value", set_data([1.0]), "error", None),
        ("ContourData empty", set_data([]), "either", _rt_sane),
        ("ContourData nan", raw_data(b"nan\\4.0\\" + str(z_gtv).encode() + b"\\1\\1\\" + str(z_gtv).encode()
                                     + b"\\2\\2\\" + str(z_gtv).encode()), "error", None),
        ("ContourData inf", raw_data(b"-inf\\inf\\" + str(z_gtv).encode() + b"\\1\\1\\" + str(z_gtv).encode()
                                     + b"\\2\\2\\" + str(z_gtv).encode()), "error", None),
        ("ContourData not numbers", raw_data(b"a\\b\\c", vr="LO"), "error", None),
        ("ContourData 1e308", set_data([1e308, 1e308, z_gtv, -1e308, 1e308, z_gtv, 0, -1e308, z_gtv]), "error", None),
        ("two points only", set_data(gtv[:6]), "either", _rt_roi_right("CTV")),
        ("NumberOfContourPoints wrong", set_attr(contour(), NumberOfContourPoints=99), "either", _rt_right),
        ("orphan ROIContour (ROI 99)", orphan, "either", _rt_right),
        ("all ROIContours orphaned", all_orphans, "either", _rt_sane),
        ("ROIContour without ReferencedROINumber", no_ref_number, "either", _rt_roi_right("GTV")),
        ("ROI without a ROIContour item", roi_without_contours, "either", _rt_roi_right("GTV")),
        ("empty ContourSequence", empty_contour_seq, "either", _rt_roi_right("GTV")),
        ("POINT contours", geometric("POINT"), "either", _rt_roi_right("GTV")),
        ("OPEN_PLANAR contours", geometric("OPEN_PLANAR"), "either", _rt_roi_right("GTV")),
        ("contour between slices", set_data([v + (0.8 if i % 3 == 2 else 0) for i, v in enumerate(gtv)]), "either",
         _rt_sane),
        ("contour across slices", set_data(gtv[:-1] + [z_gtv + 5.0]), "error", None),
        ("contour outside the grid (x + 1000)", set_data([v + (1000 if i % 3 == 0 else 0) for i, v in enumerate(gtv)]),
         "error", None),
        ("contour above the last slice", set_data([v + (100 if i % 3 == 2 else 0) for i, v in enumerate(gtv)]),
         "error", None),
        ("contour of 40000 points", many_points, "value", _rt_right),
        ("self-intersecting contour", bow_tie, "either", _rt_sane),
        ("Modality CT", _set(Modality="CT"), "error", None),
        ("other frame of reference", for_mismatch, "error", None),
        ("no ReferencedFrameOfReferenceSequence", _set(ReferencedFrameOfReferenceSequence=None), "either", _rt_right),
        ("no StructureSetROISequence", no_ssroi, "either", _rt_sane),
        ("no ROIContourSequence", no_roi_contour, "either", _rt_sane),
        ("ROIName empty", set_attr(lambda ds: ds.StructureSetROISequence[0], ROIName=""), "either", _rt_sane),
        ("ROIName absent", set_attr(lambda ds: ds.StructureSetROISequence[0], ROIName=None), "either", _rt_sane),
        ("duplicate ROIName", set_attr(lambda ds: ds.StructureSetROISequence[1], ROIName="GTV"), "either", _rt_sane),
        ("ROINumber not a number", _set_raw_in(lambda ds: ds.StructureSetROISequence[0], 0x30060022, "LO", "abc"),
         "either", _rt_sane),
    ]
    cases = [Case("rtstruct", f"RTSTRUCT: {name}", _rt_build(fn), _read_rt, expect, check)
             for name, fn, expect, check in variants]
    cases.append(Case("rtstruct", "RTSTRUCT: rois=['absent']", _rt_build(lambda ds: None),
                      lambda a: mk.read_rtstruct(a[0], a[1], rois=["absent"]), "error"))
    cases.append(Case("rtstruct", "RTSTRUCT: reference is a 2D image", _rt_build(lambda ds: None),
                      lambda a: mk.read_rtstruct(a[0], mk.Image(np.zeros((8, 8), np.float32))), "error"))
    data = S.rtstruct_bytes()
    for cut in sorted(set(truncations(data, 16, rng)) | set(range(600, len(data), 50))):
        # a cut in the trailing RT ROI Observations leaves every contour intact: the masks must then be right
        cases.append(Case("rtstruct", f"RTSTRUCT: truncated at {cut}/{len(data)}", _rt_build(data[:cut]), _read_rt,
                          "either", _rt_right))
    for n in range(flips):
        cases.append(Case("rtstruct", f"RTSTRUCT: bit flips #{n}", _rt_build(bit_flips(data, rng, 132)), _read_rt,
                          "either", _rt_sane))
    for n in range(flips // 2):
        cases.append(Case("rtstruct", f"RTSTRUCT: byte values #{n}", _rt_build(byte_values(data, rng, 132)),
                          _read_rt, "either", _rt_sane))
    return cases


def _set_raw_in(getter, tag, vr, value):
    def fn(ds):
        from pydicom.dataelem import DataElement

        obj = getter(ds)
        obj[tag] = DataElement(tag, vr, value)
    return fn


# ============================================================================ NIfTI
def _nifti_patch(base: bytes, patches: list[tuple[int, str, Any]]) -> bytes:
    b = bytearray(base)
    for offset, fmt, value in patches:
        import struct

        struct.pack_into("<" + fmt, b, offset, *(value if isinstance(value, tuple) else (value,)))
    return bytes(b)


def nifti_cases(rng: random.Random, flips: int) -> list[Case]:
    base = S.nifti_bytes()
    base_i16 = S.nifti_bytes(np.int16, slope=0.5)
    right = image_equals(S.nifti_data().transpose(2, 1, 0), (4.0, 3.0, 2.0), (10.0, -20.0, 5.0))
    right_i16 = image_equals(S.nifti_data(np.int16).transpose(2, 1, 0) * 0.5, (4.0, 3.0, 2.0), (10.0, -20.0, 5.0))
    right_raw_i16 = image_equals(S.nifti_data(np.int16).transpose(2, 1, 0), (4.0, 3.0, 2.0), (10.0, -20.0, 5.0))
    nan, inf = float("nan"), float("inf")
    DIM, PIXDIM, VOX, SLOPE, QCODE, SCODE = 40, 76, 108, 112, 252, 254
    QUAT, SROW = 256, 280
    edits = [
        ("control", [], "value", right),
        ("dims 32767^3", [(DIM, "8h", (3, 32767, 32767, 32767, 1, 1, 1, 1))], "error", None),
        ("dim[1] 32767", [(DIM + 2, "h", 32767)], "error", None),
        ("dim[0] 0", [(DIM, "h", 0)], "either", sane_image),
        ("dim[0] 8", [(DIM, "h", 8)], "either", right),
        ("dim[0] -1", [(DIM, "h", -1)], "error", None),
        ("dim[0] 9", [(DIM, "h", 9)], "error", None),
        ("dim[1] 0", [(DIM + 2, "h", 0)], "either", sane_image),
        ("dim[1] -6", [(DIM + 2, "h", -6)], "error", None),
        ("4D with 1000 volumes", [(DIM, "5h", (4, 6, 5, 4, 1000))], "error", None),
        ("5D", [(DIM, "6h", (5, 6, 5, 4, 1, 1))], "either", sane_image),
        ("datatype 3 (invalid)", [(70, "h", 3)], "error", None),
        ("datatype 1792 (complex256)", [(70, "h", 2048)], "error", None),
        ("datatype int16 (half the bytes)", [(70, "2h", (4, 16))], "either", sane_image),
        ("datatype float64 (twice the bytes)", [(70, "2h", (64, 64))], "error", None),
        ("bitpix 8 for float32", [(72, "h", 8)], "either", right),
        ("vox_offset 1e10", [(VOX, "f", 1e10)], "error", None),
        ("vox_offset nan", [(VOX, "f", nan)], "error", None),
        ("vox_offset -352", [(VOX, "f", -352.0)], "error", None),
        ("vox_offset 0", [(VOX, "f", 0.0)], "either", sane_image),
        ("vox_offset 100", [(VOX, "f", 100.0)], "either", sane_image),
        ("scl_slope nan (no scaling)", [(SLOPE, "f", nan)], "value", right),
        ("scl_slope 0 (no scaling)", [(SLOPE, "f", 0.0)], "value", right),
        ("scl_slope inf", [(SLOPE, "f", inf)], "either", finite_image),
        ("scl_slope 1e38", [(SLOPE, "f", 3e38)], "either", finite_image),
        ("scl_slope 2, scl_inter nan", [(SLOPE, "2f", (2.0, nan))], "either", finite_image),
        ("scl_inter inf", [(SLOPE, "2f", (1.0, inf))], "either", finite_image),
        ("sform nan, qform right", [(SROW, "4f", (nan, 0, 0, -10))], "either", right),
        ("sform inf, qform right", [(SROW + 16, "4f", (0, inf, 0, 20))], "either", right),
        ("sform zero column, qform right", [(SROW, "4f", (0, 0, 0, -10))], "either", right),
        ("sform nan, qform nan", [(SROW, "4f", (nan, 0, 0, -10)), (QUAT, "f", nan)], "either", sane_image),
        ("qform only, quatern nan", [(SCODE, "h", 0), (QUAT, "3f", (nan, nan, nan))], "either", sane_image),
        ("qform only, |quatern| > 1", [(SCODE, "h", 0), (QUAT, "3f", (2.0, 2.0, 2.0))], "either", sane_image),
        ("qform only, pixdim 0", [(SCODE, "h", 0), (PIXDIM + 4, "f", 0.0)], "either", sane_image),
        ("qform only, pixdim nan", [(SCODE, "h", 0), (PIXDIM + 4, "f", nan)], "either", sane_image),
        ("qform only, pixdim inf", [(SCODE, "h", 0), (PIXDIM + 4, "f", inf)], "either", sane_image),
        ("qform only, pixdim -2 (abs value)", [(SCODE, "h", 0), (PIXDIM + 4, "f", -2.0)], "either", right),
        ("qform only, qoffset nan", [(SCODE, "h", 0), (268, "3f", (nan, 0, 0))], "either", sane_image),
        ("no qform, no sform, pixdim nan", [(SCODE, "h", 0), (QCODE, "h", 0), (PIXDIM + 4, "f", nan)], "either",
         sane_image),
        ("no qform, no sform", [(SCODE, "h", 0), (QCODE, "h", 0)], "either", sane_image),
        ("sform_code 99", [(SCODE, "h", 99)], "either", sane_image),
        ("magic ni1 in a .nii", [(344, "4s", b"ni1\0")], "either", sane_image),
        ("magic garbage", [(344, "4s", b"xyz\0")], "either", sane_image),
        ("sizeof_hdr 0", [(0, "i", 0)], "either", right),
        ("sizeof_hdr 1000", [(0, "i", 1000)], "either", right),
    ]
    cases = []
    for name, patches, expect, check in edits:
        data = _nifti_patch(base, patches)
        cases.append(Case("nifti", f".nii: {name}", write("img.nii", data), read_path, expect, check))
        cases.append(Case("nifti", f".nii.gz: {name}", write("img.nii.gz", S.gzip_bytes(data)), read_path, expect,
                          check))
    cases.append(Case("nifti", ".nii: int16 with slope 0.5 (control)", write("i.nii", base_i16), read_path, "value",
                      right_i16))
    cases.append(Case("nifti", ".nii: int16, scl_slope nan",
                      write("i.nii", _nifti_patch(base_i16, [(SLOPE, "f", nan)])),
                      read_path, "value", right_raw_i16))
    v2 = S.nifti_bytes(version=2)
    cases.append(Case("nifti", "NIfTI-2 (control)", write("v2.nii", v2), read_path, "value", right))
    for name, patch, expect in [("dims 2^40", [(16, "8q", (3, 1 << 40, 1 << 40, 1 << 40, 1, 1, 1, 1))], "error"),
                                ("dim[1] -6", [(24, "q", -6)], "error"),
                                ("vox_offset 2^62", [(168, "q", 1 << 62)], "error"),
                                ("dim[0] 0", [(16, "q", 0)], "either")]:
        cases.append(Case("nifti", f"NIfTI-2: {name}", write("v2.nii", _nifti_patch(v2, patch)), read_path, expect,
                          sane_image))
    # header extensions: the 4 bytes after the header flag them; each is (esize, ecode, data)
    import struct as _struct

    def with_extension(esize: int, ecode: int = 6, payload: bytes = b"", vox: float | None = None) -> bytes:
        ext = _struct.pack("<ii", esize, ecode) + payload
        offset = 352 + len(ext)
        offset += (-offset) % 16
        head = _nifti_patch(base[:348], [(VOX, "f", float(offset) if vox is None else vox)])
        body = head + b"\x01\0\0\0" + ext
        return body + b"\0" * (offset - len(body)) + base[352:]

    for name, data, expect, check in [
        ("extension (control)", with_extension(16, 6, b"comment\0"), "value", right),
        ("extension esize 0", with_extension(0), "either", right),
        ("extension esize -16", with_extension(-16), "either", right),
        ("extension esize 2^31-1", with_extension(2**31 - 1), "either", right),
        ("extension esize 17 (not a multiple of 16)", with_extension(17, 6, b"y" * 9), "either", right),
        ("extension flag without an extension", base[:348] + b"\x01\0\0\0" + base[352:], "either", right),
    ]:
        cases.append(Case("nifti", f".nii: {name}", write("e.nii", data), read_path, expect, check))
    four = S.nifti_bytes(data=np.stack([S.nifti_data() + 1000 * t for t in range(3)], axis=-1))
    vol1 = image_equals((S.nifti_data() + 1000).transpose(2, 1, 0))
    cases.append(Case("nifti", "4D without volume=", write("4d.nii", four), read_path, "error"))
    cases.append(Case("nifti", "4D volume=1", write("4d.nii", four), lambda p: mk.read(p, volume=1), "value", vol1))
    cases.append(Case("nifti", "4D volume=3 (out of range)", write("4d.nii", four), lambda p: mk.read(p, volume=3),
                      "error"))
    cases.append(Case("nifti", "4D volume=-1", write("4d.nii", four), lambda p: mk.read(p, volume=-1), "either",
                      image_equals((S.nifti_data() + 2000).transpose(2, 1, 0))))
    special = S.nifti_data()
    special[0, 0, 0], special[1, 0, 0], special[2, 0, 0] = np.nan, np.inf, -np.inf
    cases.append(Case("nifti", "non-finite voxel values are kept", write("nf.nii", S.nifti_bytes(data=special)),
                      read_path, "value", image_equals(special.transpose(2, 1, 0))))
    for cut in truncations(base, 14, rng):
        cases.append(Case("nifti", f".nii truncated at {cut}/{len(base)}", write("t.nii", base[:cut]), read_path,
                          "error"))
    gz = S.gzip_bytes(base)
    for cut in truncations(gz, 10, rng):
        cases.append(Case("nifti", f".nii.gz truncated at {cut}/{len(gz)}", write("t.nii.gz", gz[:cut]), read_path,
                          "error"))
    bad_crc = gz[:-8] + bytes([gz[-8] ^ 0xFF]) + gz[-7:]
    cases.append(Case("nifti", ".nii.gz with a wrong CRC", write("c.nii.gz", bad_crc), read_path, "either", right))
    cases.append(Case("nifti", ".nii.gz with trailing garbage", write("g.nii.gz", gz + b"garbage" * 10), read_path,
                      "either", right))
    cases.append(Case("nifti", ".nii.gz holding random bytes", write("r.nii.gz", S.gzip_bytes(bytes(range(256)) * 4)),
                      read_path, "error"))
    cases.append(Case("nifti", ".nii.gz announcing 8 GiB, holding 64 MiB",
                      lambda d: _gzip_bomb(d / "bomb.nii.gz", base[:352]), read_path, "error"))
    for n in range(flips):
        d = bit_flips(base[:352], rng) + base[352:]
        cases.append(Case("nifti", f".nii header bit flips #{n}", write("f.nii", d), read_path, "either", sane_image))
    for n in range(flips // 2):
        d = byte_values(base[:352], rng) + base[352:]
        cases.append(Case("nifti", f".nii header byte values #{n}", write("f.nii", d), read_path, "either",
                          sane_image))
    for n in range(flips // 4):
        d = bit_flips(base[:352], rng) + base[352:]
        cases.append(Case("nifti", f".nii.gz header bit flips #{n}", write("f.nii.gz", S.gzip_bytes(d)), read_path,
                          "either", sane_image))
    return cases


def _gzip_bomb(path: Path, header: bytes) -> Path:
    import struct
    import zlib

    # a header announcing 2048^3 uint8 voxels (8 GiB), followed by 64 MiB of zeros compressed to 64 kB
    h = bytearray(header)
    struct.pack_into("<8h", h, 40, 3, 2048, 2048, 2048, 1, 1, 1, 1)
    struct.pack_into("<2h", h, 70, 2, 8)
    struct.pack_into("<f", h, 108, 352.0)
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        f.write(comp.compress(bytes(h) + b"\0" * 4))
        chunk = b"\0" * (1 << 20)
        for _ in range(64):
            f.write(comp.compress(chunk))
        f.write(comp.flush())
    return path


# ============================================================================ transform files
def _sitk_points_check(points=((1.0, 2.0, 3.0), (-4.0, 0.5, 10.0), (0.0, 0.0, 0.0))):
    def check(affine) -> str | None:
        if not isinstance(affine, mk.Affine):
            return f"returned {type(affine).__name__}"
        return None
    return check


def _expected_points(expected_fn) -> Callable[[Any], str | None]:
    pts = np.array([[1.0, 2.0, 3.0], [-4.0, 0.5, 10.0], [0.0, 0.0, 0.0]])

    def check(affine) -> str | None:
        if not isinstance(affine, mk.Affine):
            return f"returned {type(affine).__name__}"
        got = np.asarray(affine.apply(pts[:, : affine.ndim]))
        want = expected_fn(pts[:, : affine.ndim])
        if not _close(got, want, atol=1e-6):
            return (f"maps {pts[0, :affine.ndim].tolist()} to {np.round(got[0], 6).tolist()}, "
                    f"expected {np.round(want[0], 6).tolist()}")
        return None
    return check


def _sitk_map(path_text: bytes, suffix: str):
    """Points mapped by SimpleITK reading the same (valid) file: the reference."""
    def fn(pts):
        import SimpleITK as sitk

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / f"t{suffix}"
            p.write_bytes(path_text)
            t = sitk.ReadTransform(str(p))
            return np.array([t.TransformPoint(tuple(float(v) for v in q)) for q in pts])
    return fn


def _finite_affine(affine) -> str | None:
    if not isinstance(affine, mk.Affine):
        return f"returned {type(affine).__name__}"
    if not np.all(np.isfinite(affine.matrix)):
        return "non-finite matrix"
    return None


def transform_cases(rng: random.Random, flips: int) -> list[Case]:
    L, T, C = S.TRANSFORM_LINEAR, S.TRANSFORM_TRANSLATION, S.TRANSFORM_CENTER
    p12 = np.concatenate([L.ravel(), T])
    nan, inf = float("nan"), float("inf")
    txt = S.itk_text
    valid = {
        "affine": txt(),
        "affine 2D": txt("AffineTransform_double_2_2", np.array([1.0, 0.1, -0.2, 0.9, 2.0, 3.0]), np.array([1.0, 1.0])),
        "euler 3D": txt("Euler3DTransform_double_3_3", np.array([0.1, -0.2, 0.3, 1.0, 2.0, 3.0]),
                        np.array([1.0, 2.0, 3.0, 0.0])),
        "euler 3D ZYX": txt("Euler3DTransform_double_3_3", np.array([0.1, -0.2, 0.3, 1.0, 2.0, 3.0]),
                            np.array([1.0, 2.0, 3.0, 1.0])),
        "versor rigid": txt("VersorRigid3DTransform_double_3_3", np.array([0.1, 0.2, -0.1, 1.0, 2.0, 3.0]),
                            np.array([1.0, 2.0, 3.0])),
        "similarity": txt("Similarity3DTransform_double_3_3", np.array([0.1, 0.2, -0.1, 1.0, 2.0, 3.0, 1.5]),
                          np.array([1.0, 2.0, 3.0])),
        "translation": txt("TranslationTransform_double_3_3", np.array([1.0, 2.0, 3.0]), np.zeros(0)),
        "identity": txt("IdentityTransform_double_3_3", np.zeros(0), np.zeros(0)),
        "matrix offset base": txt("MatrixOffsetTransformBase_double_3_3"),
        "composite": (b"#Insight Transform File V1.0\n#Transform 0\nTransform: CompositeTransform_double_3_3\n"
                      + txt().split(b"\n", 1)[1].replace(b"#Transform 0", b"#Transform 1")
                      + txt("Euler3DTransform_double_3_3", np.array([0.1, -0.2, 0.3, 1.0, 2.0, 3.0]),
                            np.array([1.0, 2.0, 3.0, 0.0])).split(b"\n", 1)[1]
                      .replace(b"#Transform 0", b"#Transform 2")),
    }
    cases = []
    valid["affine, CRLF line endings"] = txt().replace(b"\n", b"\r\n")
    for name, data in valid.items():
        cases.append(Case("transforms", f"ITK text: {name} (vs SimpleITK)", write("t.tfm", data), mk.Affine.read,
                          "value", _expected_points(_sitk_map(data, ".tfm"))))
    mats = {"affine .mat": S.itk_mat(), "affine .mat big-endian": S.itk_mat(endian=">"),
            "euler .mat": S.itk_mat("Euler3DTransform_double_3_3", np.array([0.1, -0.2, 0.3, 1.0, 2.0, 3.0]),
                                    np.array([1.0, 2.0, 3.0, 0.0]))}
    for name, data in mats.items():
        cases.append(Case("transforms", f"{name} (vs SimpleITK)", write("t.mat", data), mk.Affine.read, "value",
                          _expected_points(_sitk_map(data, ".mat"))))
    bad_text = [
        ("11 parameters for a 3D affine", txt(params=p12[:-1]), "error"),
        ("13 parameters for a 3D affine", txt(params=np.append(p12, 1.0)), "error"),
        ("no parameters", txt(params=np.zeros(0)), "error"),
        ("nan parameter", txt(params=np.where(np.arange(12) == 4, nan, p12)), "error"),
        ("inf parameter", txt(params=np.where(np.arange(12) == 10, inf, p12)), "error"),
        ("nan fixed parameter", txt(fixed=np.array([nan, 0, 0])), "error"),
        ("parameters not numbers", txt().replace(b"Parameters: 1.1", b"Parameters: abc"), "error"),
        ("parameter 1e999 (inf once parsed)", txt().replace(b"Parameters: 1.1", b"Parameters: 1e999"), "error"),
        ("NUL bytes in the parameters", txt().replace(b"Parameters: 1.1", b"Parameters: 1.1\0\0"), "error"),
        ("no header line", txt().split(b"\n", 1)[1], "error"),
        ("header only", b"#Insight Transform File V1.0\n", "error"),
        ("no FixedParameters line", txt().rsplit(b"FixedParameters", 1)[0], "error"),
        ("FixedParameters before Parameters", b"#Insight Transform File V1.0\nTransform: AffineTransform_double_3_3\n"
         b"FixedParameters: 0 0 0\nParameters: 1 0 0 0 1 0 0 0 1 0 0 0\n", "error"),
        ("unknown transform name", txt("BSplineTransform_double_3_3"), "error"),
        ("name says 3D, 6 parameters", txt(params=np.array([1.0, 0, 0, 1, 0, 0])), "error"),
        ("name says 100000-D", txt("AffineTransform_double_100000_100000"), "error"),
        ("versor |v| > 1", txt("VersorRigid3DTransform_double_3_3", np.array([0.9, 0.9, 0.9, 1, 2, 3]),
                               np.zeros(3)), "error"),
        ("similarity scale 0 (singular)", txt("Similarity3DTransform_double_3_3",
                                             np.array([0.1, 0.2, -0.1, 1, 2, 3, 0.0]), np.zeros(3)), "either"),
        ("singular affine", txt(params=np.concatenate([np.zeros(9), T])), "either"),
        ("1e308 parameters", txt(params=np.full(12, 1e308)), "either"),
        ("one million parameters", txt(params=np.ones(1_000_000)), "error"),
        ("empty file", b"", "error"),
        ("binary junk", bytes(range(256)) * 8, "error"),
        ("composite of nothing",
         b"#Insight Transform File V1.0\n#Transform 0\nTransform: CompositeTransform_double_3_3\n",
         "error"),
    ]
    for name, data, expect in bad_text:
        cases.append(Case("transforms", f"ITK text: {name}", write("t.tfm", data), mk.Affine.read, expect,
                          _finite_affine))
    me = S.mat_entry
    fixed = me("fixed", C)
    bad_mat = [
        ("negative row count", me("AffineTransform_double_3_3", p12, mrows=-1) + fixed, "error"),
        ("negative column count", me("AffineTransform_double_3_3", p12, ncols=-3) + fixed, "error"),
        ("row count 2^31-1", me("AffineTransform_double_3_3", p12, mrows=2**31 - 1) + fixed, "error"),
        ("row count x column count overflows int32", me("AffineTransform_double_3_3", p12, mrows=65536, ncols=65536)
         + fixed, "error"),
        ("name length 2^31-1", me("AffineTransform_double_3_3", p12, namelen=2**31 - 1) + fixed, "error"),
        ("name length -5", me("AffineTransform_double_3_3", p12, namelen=-5) + fixed, "error"),
        ("name length 0", me("AffineTransform_double_3_3", p12, namelen=0) + fixed, "error"),
        ("imaginary part flag", me("AffineTransform_double_3_3", p12, imagf=1) + fixed, "error"),
        ("type 20 (text)", me("AffineTransform_double_3_3", p12, mopt=20) + fixed, "error"),
        ("type 30 (int16)", me("AffineTransform_double_3_3", p12, mopt=30) + fixed, "error"),
        ("float32 precision, same bytes", me("AffineTransform_double_3_3", p12, mopt=10) + fixed, "error"),
        ("no parameter vector", fixed, "error"),
        ("two parameter vectors", me("AffineTransform_double_3_3", p12) + me("Euler3DTransform_double_3_3", p12[:6])
         + fixed, "error"),
        ("11 parameters", me("AffineTransform_double_3_3", p12[:-1]) + fixed, "error"),
        ("nan parameters", me("AffineTransform_double_3_3", np.where(np.arange(12) == 0, nan, p12)) + fixed, "error"),
        ("unknown variable name", me("foo", p12) + fixed, "error"),
        ("no fixed parameters", me("AffineTransform_double_3_3", p12), "either"),
        ("trailing garbage", S.itk_mat() + b"\x01\x02\x03", "error"),
        ("empty file", b"", "error"),
        ("20 bytes of header only", me("AffineTransform_double_3_3", p12)[:20], "error"),
    ]
    for name, data, expect in bad_mat:
        cases.append(Case("transforms", f".mat: {name}", write("t.mat", data), mk.Affine.read, expect,
                          _finite_affine))
    for label, data, suffix in (("ITK text", txt(), ".tfm"), (".mat", S.itk_mat(), ".mat")):
        for cut in truncations(data, 14, rng):
            if cut < len(data):
                cases.append(Case("transforms", f"{label}: truncated at {cut}/{len(data)}", write("t" + suffix,
                                  data[:cut]), mk.Affine.read, "either" if label == "ITK text" else "error",
                                  _finite_affine))
        for n in range(flips // 2):
            cases.append(Case("transforms", f"{label}: bit flips #{n}", write("t" + suffix, bit_flips(data, rng)),
                              mk.Affine.read, "either", _finite_affine))
        for n in range(flips // 4):
            cases.append(Case("transforms", f"{label}: byte values #{n}", write("t" + suffix, byte_values(data, rng)),
                              mk.Affine.read, "either", _finite_affine))
    return cases


# ============================================================================ ONNX models
def _predict(source):
    m = mk.Model(source, providers="cpu", threads=1)
    if m.metadata is None:
        return m
    return m.predict(mk.Image(S.model_image()[0]))


def _prediction_right(pred) -> str | None:
    if isinstance(pred, mk.Model):
        return None if pred.metadata is None else "model with metadata was not run"
    labels = np.asarray(pred.labels.array)
    expected = S.model_image()[1]
    if labels.shape != expected.shape or not np.array_equal(labels, expected):
        if labels.shape != expected.shape:
            return f"labels of shape {labels.shape}, expected {expected.shape}"
        return f"labels differ from x > 0 in {int((labels != expected).sum())} voxels"
    return None


def _prediction_sane(pred) -> str | None:
    if isinstance(pred, mk.Model):
        return None
    labels = np.asarray(pred.labels.array)
    if labels.shape != S.model_image()[1].shape:
        return f"labels of shape {labels.shape}"
    return None


def _model_bytes(metadata=None, **kw) -> Callable[[Path], bytes]:
    return lambda d: S.onnx_bytes(metadata, **kw)


def _model_file(metadata=None, weights: bytes | None = None, **kw) -> Callable[[Path], str]:
    def build(d: Path) -> str:
        p = d / "model.onnx"
        p.write_bytes(S.onnx_bytes(metadata, **kw))
        if weights is not None:
            (d / "weights.bin").write_bytes(weights)
        return str(p)
    return build


def onnx_cases(rng: random.Random, flips: int) -> list[Case]:
    M = S.model_metadata
    base_in = M()["input"]
    inf_ = M()["inference"]
    out = M()["output"]
    nan, inf = float("nan"), float("inf")

    def meta(**kw):
        return M(**kw)

    bad_meta: list[tuple[str, Any, str]] = [
        ("not JSON", "{not json", "error"),
        ("JSON list", "[1, 2, 3]", "error"),
        ("JSON null", "null", "either"),
        ("JSON string", '"medkern"', "error"),
        ("empty string", "", "either"),
        ("deeply nested JSON", "[" * 100000 + "]" * 100000, "error"),
        ("2 MB string value", json.dumps(M(description="x" * 2_000_000)), "either"),
        ("schema_version 99", meta(schema_version=99), "error"),
        ("schema_version '1'", meta(schema_version="1"), "either"),
        ("no task", {k: v for k, v in M().items() if k != "task"}, "error"),
        ("task 'regression'", meta(task="regression"), "error"),
        ("spatial_dims 2 (graph is 3D)", meta(input={**base_in, "spatial_dims": 2}), "error"),
        ("spatial_dims 4", meta(input={**base_in, "spatial_dims": 4}), "error"),
        ("spatial_dims '3'", meta(input={**base_in, "spatial_dims": "3"}), "either"),
        ("spatial_dims true", meta(input={**base_in, "spatial_dims": True}), "error"),
        ("channels 2 for one modality", meta(input={**base_in, "channels": 2}), "error"),
        ("modalities empty", meta(input={**base_in, "modalities": []}), "error"),
        ("spacing [0, 1, 1]", meta(input={**base_in, "spacing": [0, 1, 1]}), "error"),
        ("spacing [nan, 1, 1]", meta(input={**base_in, "spacing": [nan, 1, 1]}), "error"),
        ("spacing [inf, 1, 1]", meta(input={**base_in, "spacing": [inf, 1, 1]}), "error"),
        ("spacing [-1, 1, 1]", meta(input={**base_in, "spacing": [-1, 1, 1]}), "error"),
        ("spacing [1, 1] for 3D", meta(input={**base_in, "spacing": [1, 1]}), "error"),
        ("spacing 1e-9 (a 10^27-voxel grid)", meta(input={**base_in, "spacing": [1e-9, 1e-9, 1e-9]}), "error"),
        ("orientation 'XYZ'", meta(input={**base_in, "orientation": "XYZ"}), "error"),
        ("orientation 'SSS'", meta(input={**base_in, "orientation": "SSS"}), "error"),
        ("orientation 'SP' for 3D", meta(input={**base_in, "orientation": "SP"}), "error"),
        ("patch_size 1e9^3", meta(inference={**inf_, "patch_size": [10**9] * 3}), "error"),
        ("patch_size [0, 8, 8]", meta(inference={**inf_, "patch_size": [0, 8, 8]}), "error"),
        ("patch_size [-8, 8, 8]", meta(inference={**inf_, "patch_size": [-8, 8, 8]}), "error"),
        ("patch_size [8, 8]", meta(inference={**inf_, "patch_size": [8, 8]}), "error"),
        ("patch_size [8.5, 8, 8]", meta(inference={**inf_, "patch_size": [8.5, 8, 8]}), "error"),
        ("patch_size strings", meta(inference={**inf_, "patch_size": ["a", "b", "c"]}), "error"),
        ("overlap 1.0", meta(inference={**inf_, "overlap": 1.0}), "error"),
        ("overlap -0.5", meta(inference={**inf_, "overlap": -0.5}), "error"),
        ("overlap nan", meta(inference={**inf_, "overlap": nan}), "error"),
        ("blend 'median'", meta(inference={**inf_, "blend": "median"}), "error"),
        ("batch_size 0", meta(inference={**inf_, "batch_size": 0}), "error"),
        ("batch_size 10^12", meta(inference={**inf_, "batch_size": 10**12}), "either"),
        ("sigma_scale 0", meta(inference={**inf_, "blend": "gaussian", "sigma_scale": 0}), "error"),
        ("sigma_scale nan", meta(inference={**inf_, "blend": "gaussian", "sigma_scale": nan}), "error"),
        ("activation 'relu'", meta(output={**out, "activation": "relu"}), "error"),
        ("labels empty", meta(output={**out, "labels": []}), "error"),
        ("one label for two output channels", meta(output={**out, "labels": ["only"]}), "error"),
        ("three labels for two output channels", meta(output={**out, "labels": ["a", "b", "c"]}), "error"),
        ("threshold nan (sigmoid)", meta(output={"activation": "sigmoid", "labels": ["bg", "fg"], "threshold": nan}),
         "error"),
        ("unknown preprocessing op", meta(preprocessing=[{"op": "sharpen"}]), "error"),
        ("window width 0", meta(preprocessing=[{"op": "window", "center": 0, "width": 0}]), "error"),
        ("window width nan", meta(preprocessing=[{"op": "window", "center": 0, "width": nan}]), "error"),
        ("window width -1", meta(preprocessing=[{"op": "window", "center": 0, "width": -1}]), "error"),
        ("clip low > high", meta(preprocessing=[{"op": "clip", "low": 5, "high": -5}]), "error"),
        ("clip low nan", meta(preprocessing=[{"op": "clip", "low": nan, "high": 5}]), "error"),
        ("percentile low > high", meta(preprocessing=[{"op": "percentile", "low": 99, "high": 1}]), "error"),
        ("percentile -5..200", meta(preprocessing=[{"op": "percentile", "low": -5, "high": 200}]), "error"),
        ("scale nan", meta(preprocessing=[{"op": "scale", "scale": nan, "offset": 0}]), "error"),
        ("scale inf", meta(preprocessing=[{"op": "scale", "scale": inf, "offset": 0}]), "error"),
        ("zscore mask 'inside'", meta(preprocessing=[{"op": "zscore", "mask": "inside"}]), "error"),
        ("preprocessing channels [5]", meta(preprocessing=[{"op": "scale", "scale": 1, "channels": [5]}]), "error"),
        ("remove_small min_volume -1", meta(postprocessing=[{"op": "remove_small", "min_volume_mm3": -1}]), "error"),
        ("keep_top n 0", meta(postprocessing=[{"op": "keep_top", "n": 0}]), "error"),
        ("keep_top n '1'", meta(postprocessing=[{"op": "keep_top", "n": "1"}]), "error"),
        ("unknown postprocessing op", meta(postprocessing=[{"op": "smooth"}]), "error"),
        ("preprocessing is a dict", meta(preprocessing={"op": "clip"}), "error"),
        ("input is a list", meta(input=[1, 2]), "error"),
        ("unknown top-level key", meta(extra_key={"a": 1}), "either"),
    ]
    cases = [Case("onnx", "model bytes (control)", _model_bytes(), _predict, "value", _prediction_right),
             Case("onnx", "model file (control)", _model_file(), _predict, "value", _prediction_right),
             Case("onnx", "no metadata (raw graph)", lambda d: S.onnx_model(None).SerializeToString(), _predict,
                  "value", _prediction_right)]
    for name, m, expect in bad_meta:
        cases.append(Case("onnx", f"metadata: {name}", _model_bytes(m), _predict, expect, _prediction_right))
    graph_cases = [
        ("NaN outputs", _model_bytes(scale=nan), "error", None),
        ("inf outputs", _model_bytes(scale=inf), "error", None),
        ("output spatial shape smaller than input", _model_bytes(output_shrink=2), "error", None),
        ("one output channel for two labels", _model_bytes(channels_out=1), "error", None),
        ("three output channels for two labels", _model_bytes(channels_out=3), "error", None),
        ("two graph inputs", _model_bytes(inputs=2), "error", None),
        ("bytes model with external data beside the working directory",
         lambda d: (d.joinpath("weights.bin").write_bytes(np.float32(1).tobytes()), os.chdir(d),
                    S.onnx_bytes(external="weights.bin"))[-1], "error", None),
        ("bytes model with external data at /etc/hostname", _model_bytes(external="/etc/hostname"), "error", None),
        ("bytes model with external data at ../../etc/hostname", _model_bytes(external="../../../../etc/hostname"),
         "error", None),
        ("bytes model with missing external data", _model_bytes(external="missing.bin"), "error", None),
        ("file model with its external data beside it", _model_file(external="weights.bin",
                                                                    weights=np.float32(1).tobytes()),
         "value", _prediction_right),
        ("file model with missing external data", _model_file(external="missing.bin"), "error", None),
        ("file model with external data at /etc/hostname", _model_file(external="/etc/hostname"), "error", None),
        ("file model with external data at ../../../../etc/hostname",
         _model_file(external="../../../../etc/hostname"), "error", None),
        ("file model with external data shorter than the tensor", _model_file(external="weights.bin",
                                                                              weights=b"\0\0"), "error", None),
        ("empty bytes", lambda d: b"", "error", None),
        ("text bytes", lambda d: b"this is not a model", "error", None),
        ("JSON bytes", lambda d: json.dumps(M()).encode(), "error", None),
        ("random bytes", lambda d: bytes(random.Random(3).randrange(256) for _ in range(4000)), "error", None),
        ("path to a directory", lambda d: str(d), "error", None),
    ]
    for name, build, expect, check in graph_cases:
        cases.append(Case("onnx", name, build, _predict, expect, check or _prediction_right))
    data = S.onnx_bytes()
    for cut in truncations(data, 14, rng):
        cases.append(Case("onnx", f"model truncated at {cut}/{len(data)}", lambda d, c=cut: data[:c], _predict,
                          "either", _prediction_sane))
    for n in range(flips):
        flipped = bit_flips(data, rng)
        cases.append(Case("onnx", f"model bit flips #{n}", lambda d, b=flipped: b, _predict, "either",
                          _prediction_sane))
    return cases


# ============================================================================ kernels
def _rand(shape, dtype=np.float32, seed=0):
    r = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "b":
        return r.random(shape) > 0.5
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return r.integers(max(info.min, -1000), min(info.max, 1000), shape, endpoint=True).astype(dtype)
    return (r.random(shape) * 100).astype(dtype)


def _mask(shape, dtype=np.uint8, seed=0):
    r = np.random.default_rng(seed)
    m = r.random(shape) > 0.55
    m.flat[0] = False
    return m.astype(dtype)


def _ref(name, x, **kw):
    """The reference result of kernel ``name`` on ``x`` (scipy / scikit-image), None when there is none."""
    import scipy.ndimage as ndi

    x64 = np.asarray(x, dtype=np.float64)
    if name == "gaussian":
        return ndi.gaussian_filter(x64, kw.get("sigma", 1.0), mode="reflect", truncate=4.0)
    if name == "median":
        return ndi.median_filter(np.asarray(x), size=2 * kw.get("radius", 1) + 1, mode="nearest")
    if name == "mean_filter":
        # a direct correlation: uniform_filter's running sums spread NaN/inf along whole lines
        size = 2 * kw.get("radius", 1) + 1
        return ndi.correlate(x64, np.full((size,) * x64.ndim, 1.0 / size**x64.ndim), mode="reflect")
    if name == "label":
        m = np.asarray(x) != 0
        return ndi.label(m, structure=np.ones((3,) * m.ndim))[0]
    if name == "distance_transform":
        return ndi.distance_transform_edt(np.asarray(x) != 0)
    if name == "fill_holes":
        return ndi.binary_fill_holes(np.asarray(x) != 0)
    if name == "threshold_otsu":
        from skimage.filters import threshold_otsu

        return threshold_otsu(np.asarray(x))
    if name == "window":
        return np.clip((x64 - (40 - 200)) / 400, 0, 1)
    if name == "normalize_minmax":
        return (x64 - x64.min()) / (x64.max() - x64.min())
    return None


def _kernel_check(name, x, tol=1e-4, **kw):
    def check(res) -> str | None:
        try:
            ref = _ref(name, x, **kw)
        except Exception:  # the reference does not take this input: judge the result on its own
            ref = None
        if isinstance(res, tuple):
            res = res[0]
        if isinstance(res, mk.Image):
            res = res.array
        if ref is None:
            return _plain_sane(res, x)
        got = np.asarray(res, dtype=np.float64) if not np.isscalar(res) else np.float64(res)
        want = np.asarray(ref, dtype=np.float64)
        if np.shape(got) != np.shape(want):
            return f"shape {np.shape(got)}, expected {np.shape(want)}"
        scale = max(1.0, float(np.nanmax(np.abs(want))) if want.size and np.isfinite(want).any() else 1.0)
        if not np.allclose(got, want, atol=tol * scale, rtol=tol, equal_nan=True):
            diff = np.nanmax(np.abs(got - want)) if np.size(got) else 0
            return f"differs from the reference by up to {diff:.3g}"
        return None
    return check


def _plain_sane(res, x) -> str | None:
    if isinstance(res, tuple):
        res = res[0]
    if isinstance(res, mk.Image):
        res = res.array
    a = np.asarray(res)
    if np.isscalar(res) or a.ndim == 0:
        return None if np.isfinite(float(a)) else f"non-finite result {float(a)}"
    if a.shape != np.shape(x):
        return f"shape {a.shape} for an input of shape {np.shape(x)}"
    xf = np.asarray(x)
    finite_in = np.isfinite(xf) if xf.dtype.kind in "fc" else np.ones(xf.shape, bool)
    if a.dtype.kind == "f" and not np.all(np.isfinite(a[finite_in])):
        return "non-finite output where the input is finite"
    return None


def _unit_range(res, x) -> str | None:
    bad = _plain_sane(res, x)
    if bad:
        return bad
    a = np.asarray(res.array if isinstance(res, mk.Image) else res, dtype=np.float64)
    fin = a[np.isfinite(a)]
    if fin.size and (fin.min() < -1e-6 or fin.max() > 1 + 1e-6):
        return f"output outside [0, 1]: {fin.min():.3g}..{fin.max():.3g}"
    return None


KERNELS: dict[str, Callable[..., Any]] = {
    "gaussian": lambda x, **kw: mk.gaussian(x, sigma_vox=kw.get("sigma", 1.0)),
    "median": lambda x, **kw: mk.median(x, radius=kw.get("radius", 1)),
    "mean_filter": lambda x, **kw: mk.mean_filter(x, radius=kw.get("radius", 1)),
    "clahe": lambda x, **kw: mk.clahe(x, **kw),
    "equalize_hist": lambda x, **kw: mk.equalize_hist(x, **kw),
    "threshold_otsu": lambda x, **kw: mk.threshold_otsu(x, **kw),
    "label": lambda x, **kw: mk.label(x, **kw),
    "distance_transform": lambda x, **kw: mk.distance_transform(x, **kw),
    "fill_holes": lambda x, **kw: mk.fill_holes(x),
    "window": lambda x, **kw: mk.window(x, kw.get("center", 40), kw.get("width", 400)),
    "normalize_zscore": lambda x, **kw: mk.normalize(x, "zscore"),
    "normalize_minmax": lambda x, **kw: mk.normalize(x, "minmax"),
    "resample": lambda x, **kw: mk.resample(mk.Image(x), kw.get("spacing", 2.0)),
    "bilateral": lambda x, **kw: mk.bilateral(x, kw.get("sigma_spatial", 1.0), kw.get("sigma_range", 10.0)),
    "anisotropic_diffusion": lambda x, **kw: mk.anisotropic_diffusion(x, **kw),
    "unsharp_mask": lambda x, **kw: mk.unsharp_mask(x, sigma_vox=kw.get("sigma", 1.0)),
    "binary_dilate": lambda x, **kw: mk.binary_dilate(x, kw.get("radius", 1.0)),
    "map_coordinates": lambda x, **kw: mk.map_coordinates(x, kw["coords"]),
}
MASK_KERNELS = {"label", "distance_transform", "fill_holes", "binary_dilate"}
NAN_RAISES = {"median", "threshold_otsu"}


def _kcase(fn, name, make_x, expect, check=None, **kw):
    def call(x):
        return KERNELS[fn](x, **kw)
    return Case("kernels", f"{fn}: {name}", lambda d: make_x(), call, expect, check, errors=ARG_ERRORS)


def kernel_cases() -> list[Case]:
    cases = []
    layouts = {
        "3D C-order": lambda x: x,
        "3D F-order": lambda x: np.asfortranarray(x),
        "3D non-contiguous [::2]": lambda x: np.concatenate([x, x], axis=2)[:, :, ::2],
        "3D transposed view": lambda x: x.transpose(2, 1, 0),
        "3D byte-swapped": lambda x: x.astype(x.dtype.newbyteorder(">")) if x.dtype.itemsize > 1 else x,
        "3D read-only": lambda x: _readonly(x),
    }
    shapes = {"(1,1,1)": (1, 1, 1), "(1,6,7)": (1, 6, 7), "(5,1,7)": (5, 1, 7), "(5,6,1)": (5, 6, 1),
              "2D (9,8)": (9, 8), "2D (1,8)": (1, 8), "2D (1,1)": (1, 1)}
    dtypes_ok = ["uint8", "int16", "uint16", "int32", "float32", "float64"]
    dtypes_odd = ["int8", "int64", "uint64", "float16", "bool"]
    dtypes_bad = ["complex64", "object", "U3", "datetime64[s]"]
    for fn in KERNELS:
        if fn == "map_coordinates":
            continue
        is_mask = fn in MASK_KERNELS
        base_dtype = np.uint8 if is_mask else np.float32

        def make(shape, dtype, layout=lambda x: x, m=is_mask):
            def mk_x():
                x = _mask(shape, dtype) if m else _rand(shape, dtype)
                return layout(x)
            return mk_x

        tol = 2e-4 if fn in ("gaussian", "mean_filter") else 1e-5
        for lname, lay in layouts.items():
            x0 = make((5, 6, 7), base_dtype, lay)
            cases.append(_kcase(fn, f"{lname} {np.dtype(base_dtype).name}", x0, "either",
                                _checker(fn, x0(), tol)))
        for sname, shape in shapes.items():
            x0 = make(shape, base_dtype)
            cases.append(_kcase(fn, f"shape {sname}", x0, "either", _checker(fn, x0(), tol)))
        for dt in dtypes_ok + dtypes_odd:
            x0 = make((5, 6, 7), np.dtype(dt))
            # scikit-image bins float16 in float16: no reference for Otsu there
            check = (lambda r: None) if (fn == "threshold_otsu" and dt == "float16") else _checker(fn, x0(), tol)
            cases.append(_kcase(fn, f"dtype {dt}", x0, "either", check))
        for dt in dtypes_bad:
            cases.append(_kcase(fn, f"dtype {dt}", lambda dt=dt: np.zeros((5, 6, 7), dtype=dt), "error"))
        for sname, shape in {"(0,6,7)": (0, 6, 7), "(5,0,7)": (5, 0, 7), "(0,0)": (0, 0)}.items():
            cases.append(_kcase(fn, f"zero-size {sname}", lambda s=shape, b=base_dtype: np.zeros(s, b), "either",
                                lambda r, s=shape: _empty_ok(r, s)))
        cases.append(_kcase(fn, "0-d array", lambda b=base_dtype: np.array(5, b), "error"))
        x1, x2, x4 = make((10,), base_dtype), make((4, 5), base_dtype), make((2, 3, 4, 5), base_dtype)
        cases.append(_kcase(fn, "1-D array", x1, "either", _checker(fn, x1(), tol)))
        cases.append(_kcase(fn, "4-D array", x4, "either", _plain_sane_of(fn)))
        cases.append(_kcase(fn, "Python list", lambda x2=x2: x2().tolist(), "either", _checker(fn, x2(), tol)))
        if not is_mask:
            for vname, values in (("NaN voxel", [np.nan]), ("+inf voxel", [np.inf]), ("-inf voxel", [-np.inf]),
                                  ("NaN and inf", [np.nan, np.inf, -np.inf]), ("all NaN", None),
                                  ("1e38 values", [3e38, -3e38])):
                def nonfinite(values=values):
                    x = _rand((5, 6, 7), np.float32)
                    if values is None:
                        x[:] = np.nan
                    else:
                        for n, v in enumerate(values):
                            x.flat[7 * n + 3] = v
                    return x
                cases.append(_kcase(fn, vname, nonfinite, *_nonfinite_expect(fn, nonfinite())))
    cases += _param_cases()
    return cases


def _readonly(x):
    x = x.copy()
    x.setflags(write=False)
    return x


def _plain_sane_of(fn):
    return lambda r: None if isinstance(r, (tuple, float, int, np.floating, np.integer)) else _shape_any(r)


def _shape_any(r):
    a = np.asarray(r.array if isinstance(r, mk.Image) else r)
    return None if a.dtype.kind != "f" or np.all(np.isfinite(a)) else "non-finite output"


def _empty_ok(res, shape) -> str | None:
    if isinstance(res, tuple):
        res = res[0]
    if isinstance(res, mk.Image):
        res = res.array
    if np.isscalar(res):
        return f"a number ({res}) for an empty image"
    return None if np.shape(res) == shape else f"shape {np.shape(res)} for an empty input {shape}"


def _checker(fn, x, tol):
    if fn in ("gaussian", "median", "mean_filter", "label", "distance_transform", "fill_holes", "threshold_otsu",
              "window", "normalize_minmax"):
        if fn == "distance_transform" and np.all(np.asarray(x) != 0):
            return _plain_sane_checker(x, allow_inf=True)
        if fn == "threshold_otsu" and np.asarray(x).dtype == np.bool_:
            return lambda r: None
        if fn == "normalize_minmax" and np.ptp(np.asarray(x, dtype=np.float64)) == 0:
            return lambda r: _plain_sane(r, x) if np.ndim(x) else None
        if fn == "threshold_otsu":
            return _kernel_check(fn, x, tol=1e-4)
        return _kernel_check(fn, x, tol=tol)
    if fn in ("clahe", "equalize_hist"):
        return lambda r: _unit_range(r, x)
    if fn == "resample":
        return lambda r: sane_image(r)
    return _plain_sane_checker(x)


def _plain_sane_checker(x, allow_inf=False):
    def check(r):
        if allow_inf:
            return None
        return _plain_sane(r, x)
    return check


def _nonfinite_expect(fn, x):
    """What a kernel must do with non-finite voxels: documented NaN raisers raise; filters that
    spread NaN match scipy; histogram-based kernels raise or keep finite voxels finite."""
    finite = np.isfinite(x)
    if fn in NAN_RAISES and np.isnan(x).any():
        return "error", None
    if fn in ("gaussian", "mean_filter"):
        return "either", _kernel_check(fn, x, tol=2e-4)
    if fn == "window":
        return "either", _kernel_check(fn, x, tol=1e-5)
    if fn in ("clahe", "equalize_hist", "normalize_zscore", "normalize_minmax", "threshold_otsu", "median"):
        if finite.all() and fn != "threshold_otsu":
            return "either", lambda r: _plain_sane(r, x)

        def check(r):
            if isinstance(r, mk.Image):
                r = r.array
            if np.isscalar(r) or np.ndim(r) == 0:
                return None if np.isfinite(float(r)) else f"threshold {float(r)}"
            a = np.asarray(r, dtype=np.float64)
            if a.shape != x.shape:
                return f"shape {a.shape}"
            if not finite.any():
                return None
            if not np.all(np.isfinite(a[finite])):
                return f"{int((~np.isfinite(a[finite])).sum())} finite voxels became non-finite"
            if np.ptp(a[finite]) == 0 and np.ptp(x[finite]) > 0:
                return "every finite voxel mapped to one value"
            return None
        return "either", check
    return "either", lambda r: None


def _param_cases() -> list[Case]:
    x3 = lambda: _rand((5, 6, 7), np.float32)  # noqa: E731
    m3 = lambda: _mask((5, 6, 7))  # noqa: E731
    nan, inf = float("nan"), float("inf")
    E, Y = "error", "either"
    specs: list[tuple[str, str, Callable, str, dict, Any]] = []
    for s in (nan, inf, -1.0, "a", [1.0, 2.0], None):
        specs.append(("gaussian", f"sigma {s!r}", x3, E, {"sigma": s}, None))
    for s in (1e30, 1e10):
        specs.append(("gaussian", f"sigma {s!r}", x3, Y, {"sigma": s}, "sane"))
    specs.append(("gaussian", "sigma 0 (identity)", x3, "value", {"sigma": 0.0}, "identity"))
    for fn in ("median", "mean_filter"):
        for r in (-1, 1.5, nan, inf, [1, 1]):
            specs.append((fn, f"radius {r!r}", x3, E, {"radius": r}, None))
        for r in ("1", True):
            specs.append((fn, f"radius {r!r}", x3, Y, {"radius": r}, "radius1_" + fn))
        for r in (10**9, 2**31, 2**63, 100):
            specs.append((fn, f"radius {r}", x3, Y, {"radius": r}, "sane"))
        specs.append((fn, "radius 0 (identity)", x3, "value", {"radius": 0}, "identity"))
    for c in (nan, -1.0, inf, "x"):
        specs.append(("clahe", f"clip_limit {c!r}", x3, E, {"clip_limit": c}, None))
    for k in (0, -1, nan, [1, 2]):
        specs.append(("clahe", f"kernel_size {k!r}", x3, E, {"kernel_size": k}, None))
    specs.append(("clahe", "kernel_size 10^9", x3, Y, {"kernel_size": 10**9}, "unit"))
    for fn in ("clahe", "equalize_hist", "threshold_otsu"):
        for b in (0, -1, nan, 1.5, "256"):
            specs.append((fn, f"nbins {b!r}", x3, E, {"nbins": b}, None))
        specs.append((fn, "nbins 1", x3, Y, {"nbins": 1}, "unit" if fn != "threshold_otsu" else "sane"))
        for b in (2**31, 2**40, 2**62):
            specs.append((fn, f"nbins {b}", x3, Y, {"nbins": b}, "unit" if fn != "threshold_otsu" else "sane"))
    for w in (0.0, -1.0, nan, inf):
        specs.append(("window", f"width {w!r}", x3, E, {"width": w}, None))
    for c in (nan, inf):
        specs.append(("window", f"center {c!r}", x3, E, {"center": c}, None))
    for sp in (0.0, -1.0, nan, inf, [1.0, 1.0], "a"):
        specs.append(("resample", f"spacing {sp!r}", x3, E, {"spacing": sp}, None))
    specs.append(("resample", "spacing 1e-9 (10^27 voxels)", x3, E, {"spacing": 1e-9}, None))
    specs.append(("resample", "spacing 1e-3 (2*10^11 voxels)", x3, E, {"spacing": 1e-3}, None))
    specs.append(("resample", "spacing 1e9 (one voxel)", x3, Y, {"spacing": 1e9}, "sane_image"))
    for c in (5, 27, -1, True, "26"):
        specs.append(("label", f"connectivity {c!r}", m3, E, {"connectivity": c}, None))
    for sp in (0.0, -1.0, nan, inf, [1.0, 1.0]):
        specs.append(("distance_transform", f"spacing {sp!r}", m3, E, {"spacing": sp}, None))
    for sr in (0.0, -1.0, nan, inf):
        specs.append(("bilateral", f"sigma_range {sr!r}", x3, E, {"sigma_range": sr}, None))
    for ss in (nan, -1.0, inf):
        specs.append(("bilateral", f"sigma_spatial {ss!r}", x3, E, {"sigma_spatial": ss}, None))
    specs.append(("bilateral", "sigma_spatial 1e9", x3, Y, {"sigma_spatial": 1e9}, "sane"))
    for it in (-1, 1.5, nan):
        specs.append(("anisotropic_diffusion", f"iterations {it!r}", x3, E, {"iterations": it}, None))
    for ts in (nan, -1.0, inf, 1e9):
        specs.append(("anisotropic_diffusion", f"time_step {ts!r}", x3, E if ts != 1e9 else Y, {"time_step": ts},
                      "sane"))
    for c in (0.0, nan, -1.0):
        specs.append(("anisotropic_diffusion", f"conductance {c!r}", x3, E, {"conductance": c}, None))
    for r in (nan, -1.0, inf):
        specs.append(("binary_dilate", f"radius {r!r}", m3, E, {"radius": r}, None))
    specs.append(("binary_dilate", "radius 1e9 mm", m3, Y, {"radius": 1e9}, "all_ones"))
    specs.append(("binary_dilate", "radius 1e4 mm", m3, Y, {"radius": 1e4}, "all_ones"))
    for cname, coords in (("NaN", np.full((3, 4), nan)), ("inf", np.full((3, 4), inf)),
                          ("1e300", np.full((3, 4), 1e300)), ("-2^63", np.full((3, 4), -2.0**63)),
                          ("wrong first axis (2)", np.zeros((2, 4))), ("object", np.array([[None] * 4] * 3))):
        exp = Y if cname in ("NaN", "inf", "1e300", "-2^63", "object") else E
        specs.append(("map_coordinates", f"coordinates {cname}", x3, exp, {"coords": coords}, "fill"))
    cases = []
    for fn, name, make_x, expect, kw, how in specs:
        x = make_x()
        check = {
            None: None,
            "sane": lambda r, x=x: _plain_sane(r, x),
            "unit": lambda r, x=x: _unit_range(r, x),
            "identity": lambda r, x=x: None if _close(np.asarray(r), x, atol=1e-6) else "not the identity",
            "sane_image": lambda r: sane_image(r),
            "all_ones": lambda r: None if np.all(np.asarray(r) != 0) else "dilation by a huge ball left holes",
            "fill": lambda r: None if np.all(np.asarray(r) == 0) else f"samples {np.asarray(r)} outside the image",
            "radius1_median": _kernel_check("median", x, radius=1),
            "radius1_mean_filter": _kernel_check("mean_filter", x, tol=2e-4, radius=1),
        }[how]
        cases.append(_kcase(fn, name, make_x, expect, check, **kw))
    return cases


# ============================================================================ NRRD and MetaImage
_NV = (np.arange(4 * 5 * 6).reshape(4, 5, 6) * 3 - 100).astype("<i2")  # (k, j, i); i varies fastest in the file
_NRRD_FIELDS = [("type", "short"), ("dimension", "3"), ("space", "left-posterior-superior"), ("sizes", "6 5 4"),
                ("space directions", "(2,0,0) (0,3,0) (0,0,4)"), ("space origin", "(-10,20,5)"),
                ("endian", "little"), ("encoding", "raw")]
_META_FIELDS = [("ObjectType", "Image"), ("NDims", "3"), ("DimSize", "6 5 4"), ("ElementType", "MET_SHORT"),
                ("ElementSpacing", "2 3 4"), ("Offset", "-10 20 5"), ("TransformMatrix", "1 0 0 0 1 0 0 0 1"),
                ("BinaryData", "True"), ("BinaryDataByteOrderMSB", "False"), ("CompressedData", "False"),
                ("ElementDataFile", "LOCAL")]


def _fields(base, changes: dict) -> list:
    out = [(k, changes.get(k, v)) for k, v in base if changes.get(k, v) is not None]
    out += [(k, v) for k, v in changes.items() if v is not None and k not in dict(base)]
    if "ElementDataFile" in dict(out):  # MetaImage: the data file line comes last
        out = [kv for kv in out if kv[0] != "ElementDataFile"] + [("ElementDataFile", dict(out)["ElementDataFile"])]
    return out


def nrrd_text(changes: dict | None = None, data: bytes | None = None) -> bytes:
    lines = ["NRRD0004"] + [f"{k}: {v}" for k, v in _fields(_NRRD_FIELDS, changes or {})]
    return ("\n".join(lines) + "\n\n").encode() + (_NV.tobytes() if data is None else data)


def meta_text(changes: dict | None = None, data: bytes | None = None) -> bytes:
    lines = [f"{k} = {v}" for k, v in _fields(_META_FIELDS, changes or {})]
    return ("\n".join(lines) + "\n").encode() + (_NV.tobytes() if data is None else data)


def nrrd_meta_cases(rng: random.Random, flips: int) -> list[Case]:
    import gzip
    import zlib

    right = image_equals(_NV, (4.0, 3.0, 2.0), (-10.0, 20.0, 5.0))
    gz = gzip.compress(_NV.tobytes(), mtime=0)
    zl = zlib.compress(_NV.tobytes())
    bomb_nrrd = gzip.compress(b"\0" * (64 << 20), compresslevel=1, mtime=0)
    bomb_meta = zlib.compress(b"\0" * (64 << 20), 1)
    be = _NV.astype(">i2").tobytes()
    nrrd = [
        ("control", {}, None, "value", right),
        ("gzip encoding (control)", {"encoding": "gzip"}, gz, "value", right),
        ("big endian (control)", {"endian": "big"}, be, "value", right),
        ("RAS space", {"space": "right-anterior-superior", "space directions": "(-2,0,0) (0,-3,0) (0,0,4)",
                       "space origin": "(10,-20,5)"}, None, "value", right),
        ("sizes 100000^3", {"sizes": "100000 100000 100000"}, None, "error", None),
        ("sizes 2^62", {"sizes": f"{2**62} 5 4"}, None, "error", None),
        ("sizes 0", {"sizes": "0 5 4"}, None, "error", None),
        ("sizes -6", {"sizes": "-6 5 4"}, None, "error", None),
        ("sizes 2 values for dimension 3", {"sizes": "6 5"}, None, "error", None),
        ("dimension 99", {"dimension": "99"}, None, "error", None),
        ("dimension 1", {"dimension": "1", "sizes": "120", "space directions": None, "space": None,
                         "space origin": None}, None, "error", None),
        ("type 'block'", {"type": "block"}, None, "error", None),
        ("type unknown", {"type": "quaternion"}, None, "error", None),
        ("no encoding", {"encoding": None}, None, "error", None),
        ("encoding 'zip'", {"encoding": "zip"}, None, "error", None),
        ("gzip encoding, raw data", {"encoding": "gzip"}, None, "error", None),
        ("gzip stream cut in half", {"encoding": "gzip"}, gz[: len(gz) // 2], "error", None),
        ("gzip bomb: 64 MiB of zeros for 240 bytes", {"encoding": "gzip"}, bomb_nrrd, "either", right),
        ("gzip: sizes claim 2048^3 bytes, 64 MiB present", {"encoding": "gzip", "type": "uchar",
                                                            "sizes": "2048 2048 2048"}, bomb_nrrd, "error", None),
        ("raw data 2 bytes short", {}, _NV.tobytes()[:-2], "error", None),
        ("raw data empty", {}, b"", "error", None),
        ("raw data with 100 extra bytes", {}, _NV.tobytes() + b"\0" * 100, "either", right),
        ("ascii encoding, text values", {"encoding": "ascii"}, " ".join(str(v) for v in _NV.ravel()).encode(),
         "value", right),
        ("ascii encoding, junk text", {"encoding": "ascii"}, b"a b c d", "error", None),
        ("ascii encoding, 3 values", {"encoding": "ascii"}, b"1 2 3", "error", None),
        ("space directions nan", {"space directions": "(nan,0,0) (0,3,0) (0,0,4)"}, None, "either", sane_image),
        ("space directions inf", {"space directions": "(inf,0,0) (0,3,0) (0,0,4)"}, None, "either", sane_image),
        ("space directions zero vector", {"space directions": "(0,0,0) (0,3,0) (0,0,4)"}, None, "either", sane_image),
        ("space directions parallel", {"space directions": "(2,0,0) (3,0,0) (0,0,4)"}, None, "either", sane_image),
        ("space directions 2 vectors", {"space directions": "(2,0,0) (0,3,0)"}, None, "error", None),
        ("space directions not vectors", {"space directions": "abc"}, None, "error", None),
        ("space origin nan", {"space origin": "(nan,20,5)"}, None, "either", sane_image),
        ("space origin 2 values", {"space origin": "(1,2)"}, None, "error", None),
        ("spacings only, nan", {"space directions": None, "space": None, "space origin": None,
                                "spacings": "nan 3 4"}, None, "either", sane_image),
        ("spacings only, 0", {"space directions": None, "space": None, "space origin": None,
                              "spacings": "0 3 4"}, None, "either", sane_image),
        ("data file /etc/hostname", {"data file": "/etc/hostname"}, b"", "error", None),
        ("data file ../../../../etc/hostname", {"data file": "../../../../etc/hostname"}, b"", "error", None),
        ("data file missing", {"data file": "missing.raw"}, b"", "error", None),
        ("data file is a FIFO", {"data file": "fifo.raw"}, b"", "error", "fifo"),
        ("data file LIST", {"data file": "LIST"}, b"", "error", None),
        ("byte skip 10^12", {"byte skip": str(10**12)}, None, "error", None),
        ("byte skip -1 (data at the end)", {"byte skip": "-1"}, None, "value", right),
        ("byte skip -5", {"byte skip": "-5"}, None, "error", None),
        ("line skip 10^9", {"line skip": str(10**9)}, None, "error", None),
        ("kinds: 4 entries", {"kinds": "domain domain domain domain"}, None, "error", None),
        ("kinds: RGB-color on an axis of 6", {"kinds": "RGB-color domain domain"}, None, "either", sane_image),
        ("header only, no blank line", {}, b"", "error", None),
        ("magic NRRD0009", {}, None, "either", right),
    ]
    cases = []
    for name, changes, data, expect, check in nrrd:
        text = nrrd_text(changes, data)
        if name == "magic NRRD0009":
            text = text.replace(b"NRRD0004", b"NRRD0009", 1)
        if name == "header only, no blank line":
            text = text.rstrip(b"\n")
        if check == "fifo":
            def build(d, text=text):
                os.mkfifo(d / "fifo.raw")
                (d / "img.nhdr").write_bytes(text)
                return d / "img.nhdr"
            cases.append(Case("nrrd_metaimage", f"NRRD: {name}", build, read_path, "error"))
            continue
        suffix = ".nhdr" if "data file" in changes else ".nrrd"
        cases.append(Case("nrrd_metaimage", f"NRRD: {name}", write("img" + suffix, text), read_path, expect, check))
    meta = [
        ("control", {}, None, "value", right),
        ("zlib compressed (control)", {"CompressedData": "True", "CompressedDataSize": str(len(zl))}, zl, "value",
         right),
        ("MSB (control)", {"BinaryDataByteOrderMSB": "True"}, be, "value", right),
        ("DimSize 100000^3", {"DimSize": "100000 100000 100000"}, None, "error", None),
        ("DimSize 2^62", {"DimSize": f"{2**62} 5 4"}, None, "error", None),
        ("DimSize 0", {"DimSize": "0 5 4"}, None, "error", None),
        ("DimSize -6", {"DimSize": "-6 5 4"}, None, "error", None),
        ("DimSize 2 values", {"DimSize": "6 5"}, None, "error", None),
        ("NDims 1", {"NDims": "1"}, None, "error", None),
        ("NDims 9", {"NDims": "9"}, None, "error", None),
        ("NDims 'x'", {"NDims": "x"}, None, "error", None),
        ("ElementType unknown", {"ElementType": "MET_QUAD"}, None, "error", None),
        ("ElementNumberOfChannels 0", {"ElementNumberOfChannels": "0"}, None, "error", None),
        ("ElementNumberOfChannels 10^9", {"ElementNumberOfChannels": str(10**9)}, None, "error", None),
        ("ElementSpacing 0", {"ElementSpacing": "0 3 4"}, None, "error", None),
        ("ElementSpacing nan", {"ElementSpacing": "nan 3 4"}, None, "error", None),
        ("ElementSpacing -2", {"ElementSpacing": "-2 3 4"}, None, "either", sane_image),
        ("ElementSpacing inf", {"ElementSpacing": "inf 3 4"}, None, "error", None),
        ("Offset nan", {"Offset": "nan 20 5"}, None, "error", None),
        ("TransformMatrix singular", {"TransformMatrix": "1 0 0 1 0 0 0 0 1"}, None, "either", sane_image),
        ("TransformMatrix nan", {"TransformMatrix": "nan 0 0 0 1 0 0 0 1"}, None, "either", sane_image),
        ("TransformMatrix 4 values", {"TransformMatrix": "1 0 0 1"}, None, "error", None),
        ("TransformMatrix with a column of length 3", {"TransformMatrix": "1 0 0 0 1 0 0 0 3"}, None, "either",
         sane_image),
        ("compressed flag, raw data", {"CompressedData": "True"}, None, "error", None),
        ("zlib stream cut in half", {"CompressedData": "True"}, zl[: len(zl) // 2], "error", None),
        ("CompressedDataSize wrong", {"CompressedData": "True", "CompressedDataSize": "5"}, zl, "error", None),
        ("CompressedDataSize 10^15", {"CompressedData": "True", "CompressedDataSize": str(10**15)}, zl, "error",
         None),
        ("zlib: DimSize claims 2048^3 bytes, 64 MiB present", {"CompressedData": "True", "ElementType": "MET_UCHAR",
                                                               "DimSize": "2048 2048 2048"}, bomb_meta, "error", None),
        ("zlib bomb: 64 MiB of zeros for 240 bytes", {"CompressedData": "True"}, bomb_meta, "either", right),
        ("raw data 2 bytes short", {}, _NV.tobytes()[:-2], "error", None),
        ("raw data empty", {}, b"", "error", None),
        ("HeaderSize -1 (data at the end)", {"HeaderSize": "-1"}, None, "either", right),
        ("HeaderSize 10^12", {"HeaderSize": str(10**12)}, None, "either", right),
        ("HeaderSize -5", {"HeaderSize": "-5"}, None, "error", None),
        ("BinaryData False, text values", {"BinaryData": "False"}, " ".join(str(v) for v in _NV.ravel()).encode(),
         "either", right),
        ("ElementDataFile /etc/hostname", {"ElementDataFile": "/etc/hostname"}, b"", "error", None),
        ("ElementDataFile ../../../../etc/hostname", {"ElementDataFile": "../../../../etc/hostname"}, b"", "error",
         None),
        ("ElementDataFile missing", {"ElementDataFile": "missing.raw"}, b"", "error", None),
        ("ElementDataFile LIST", {"ElementDataFile": "LIST"}, b"", "error", None),
        ("ElementDataFile pattern %d 1 10^9 1", {"ElementDataFile": "slice%03d.raw 1 1000000000 1"}, b"", "error",
         None),
        ("ObjectType Transform", {"ObjectType": "Transform"}, None, "error", None),
        ("no ElementDataFile", {"ElementDataFile": None}, None, "error", None),
    ]
    for name, changes, data, expect, check in meta:
        text = meta_text(changes, data)
        detached = changes.get("ElementDataFile", "LOCAL") not in (None, "LOCAL")
        suffix = ".mhd" if detached else ".mha"
        cases.append(Case("nrrd_metaimage", f"MetaImage: {name}", write("img" + suffix, text), read_path, expect,
                          check))
    for label, data, suffix in (("NRRD", nrrd_text(), ".nrrd"), ("MetaImage", meta_text(), ".mha")):
        head = data.index(b"\n\n") + 2 if label == "NRRD" else len(data) - _NV.nbytes
        for n in range(flips // 2):
            cases.append(Case("nrrd_metaimage", f"{label}: header bit flips #{n}",
                              write("f" + suffix, bit_flips(data[:head], rng) + data[head:]), read_path, "either",
                              lambda img: sane_image(img, _NV.size)))
        for n in range(flips // 4):
            cases.append(Case("nrrd_metaimage", f"{label}: header byte values #{n}",
                              write("f" + suffix, byte_values(data[:head], rng) + data[head:]), read_path, "either",
                              lambda img: sane_image(img, _NV.size)))
        for cut in truncations(data, 10, rng):
            cases.append(Case("nrrd_metaimage", f"{label}: truncated at {cut}/{len(data)}", write("t" + suffix,
                              data[:cut]), read_path, "error"))
    return cases


# ============================================================================ geometry: images and transforms
def geometry_cases() -> list[Case]:
    x = (np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
    nan, inf = float("nan"), float("inf")

    def image(**kw):
        return lambda d: kw

    def make(kw):
        return mk.Image(x, **kw)

    cases = []
    for name, kw in [("spacing nan", {"spacing": (nan, 1, 1)}), ("spacing 0", {"spacing": (0, 1, 1)}),
                     ("spacing -1", {"spacing": (-1, 1, 1)}), ("spacing inf", {"spacing": (inf, 1, 1)}),
                     ("spacing 2 values", {"spacing": (1, 1)}), ("origin nan", {"origin": (nan, 0, 0)}),
                     ("origin inf", {"origin": (inf, 0, 0)}), ("direction singular", {"direction": np.zeros((3, 3))}),
                     ("direction nan", {"direction": np.full((3, 3), nan)}),
                     ("direction columns not unit vectors",
                      {"direction": np.array([[1, 0.5, 0], [0, 1, 0], [0, 0, 1.0]])}),
                     ("direction 2x2 for 3D", {"direction": np.eye(2)})]:
        cases.append(Case("geometry", f"Image(): {name}", image(**kw), make, "error", errors=ARG_ERRORS))
    ref = lambda: mk.Image(np.zeros((4, 5, 6), np.float32))  # noqa: E731
    src = lambda: mk.Image(x)  # noqa: E731
    affines = {
        "nan matrix": np.full((4, 4), nan), "inf translation": np.array([[1, 0, 0, inf], [0, 1, 0, 0],
                                                                          [0, 0, 1, 0], [0, 0, 0, 1.0]]),
        "singular": np.diag([0.0, 1, 1, 1]), "1e300 scale": np.diag([1e300, 1e300, 1e300, 1.0]),
        "bottom row not 0 0 0 1": np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 1, 1, 1.0]]),
        "3x3": np.eye(3), "5x5": np.eye(5),
    }
    for name, m in affines.items():
        expect = {"singular": "either", "1e300 scale": "either", "3x3": "either"}.get(name, "error")

        def build(d, m=m):
            return m

        cases.append(Case("geometry", f"mk.Affine: {name}", build, mk.Affine, expect,
                          lambda a: None if np.all(np.isfinite(a.matrix)) else "non-finite matrix", errors=ARG_ERRORS))
        cases.append(Case("geometry", f"resample_to with an Affine: {name}", build,
                          lambda m: mk.resample_to(src(), ref(), transform=mk.Affine(m)), expect, finite_image,
                          errors=ARG_ERRORS))
        cases.append(Case("geometry", f"warp with an Affine: {name}", build,
                          lambda m: mk.warp(src(), mk.Affine(m), reference=ref()), expect, finite_image,
                          errors=ARG_ERRORS))
    cases.append(Case("geometry", "Affine.inverse of a singular matrix", lambda d: np.diag([0.0, 1, 1, 1]),
                      lambda m: mk.Affine(m).inverse(), "error", errors=ARG_ERRORS + (np.linalg.LinAlgError,)))
    for name, fill in (("NaN", nan), ("inf", inf), ("1e300", 1e300)):
        def field(d, fill=fill):
            v = np.zeros((4, 5, 6, 3), np.float32)
            v[1, 2, 3] = fill
            return v
        cases.append(Case("geometry", f"DisplacementField with a {name} vector", field,
                          lambda v: mk.warp(src(), mk.DisplacementField(mk.Image(v, vector=True)), reference=ref()),
                          "either", finite_image, errors=ARG_ERRORS))
    cases.append(Case("geometry", "resample_to a 10^12-voxel reference", lambda d: None,
                      lambda _: mk.resample_to(src(), mk.Image(np.zeros((1, 1, 1), np.float32),
                                                                spacing=(1e-4, 1e-4, 1e-4)).with_array(
                          np.zeros((1, 1, 1), np.float32))), "either", finite_image, errors=ARG_ERRORS))
    cases.append(Case("geometry", "map_coordinates 10^9 points of NaN", lambda d: None,
                      lambda _: mk.map_coordinates(x, np.full((3, 10**9), nan, np.float32)), "error",
                      errors=ARG_ERRORS + (MemoryError,)))
    for name, roi in (("roi_size 0", (0, 4, 4)), ("roi_size -4", (-4, 4, 4)), ("roi_size 10^9", (10**9,) * 3),
                      ("roi_size 2 values", (4, 4)), ("roi_size nan", (nan, 4, 4))):
        cases.append(Case("geometry", f"sliding_window: {name}", lambda d, roi=roi: roi,
                          lambda roi: mk.sliding_window(x[None, None], lambda b: b, roi),
                          "error", errors=ARG_ERRORS))
    for name, ov in (("overlap 1.0", 1.0), ("overlap -0.5", -0.5), ("overlap nan", nan)):
        cases.append(Case("geometry", f"sliding_window: {name}", lambda d, ov=ov: ov,
                          lambda ov: mk.sliding_window(x[None, None], lambda b: b, (2, 2, 2), overlap=ov),
                          "error", errors=ARG_ERRORS))
    # radiomics and regions: kernel paths driven by user numbers (bins, distances) and masks
    img = lambda: mk.Image((np.random.default_rng(2).random((6, 7, 8)) * 100).astype(np.float32))  # noqa: E731
    msk = lambda: mk.Image((np.random.default_rng(3).random((6, 7, 8)) > 0.4).astype(np.uint8))  # noqa: E731
    rad_bad = [("bin_width 0", {"bin_width": 0.0}), ("bin_width -1", {"bin_width": -1.0}),
               ("bin_width nan", {"bin_width": nan}), ("bin_width 1e-9 (10^11 bins)", {"bin_width": 1e-9}),
               ("bin_count 0", {"bin_count": 0}), ("bin_count 10^12", {"bin_count": 10**12}),
               ("glcm_distance 0", {"bin_count": 16, "glcm_distance": 0}),
               ("glcm_distance 10^9", {"bin_count": 16, "glcm_distance": 10**9}),
               ("resample_spacing 1e-4 mm", {"bin_count": 16, "resample_spacing": 1e-4}),
               ("resegment_range reversed", {"bin_count": 16, "resegment_range": (100.0, 0.0)})]
    for name, kw in rad_bad:
        expect = "either" if name.startswith("glcm_distance 10^9") else "error"
        cases.append(Case("geometry", f"radiomics: {name}", lambda d, kw=kw: kw,
                          lambda kw: mk.radiomics(img(), msk(), features=("firstorder", "glcm"), **kw), expect,
                          lambda r: None, errors=ARG_ERRORS))
    for name, fn in [
        ("empty mask", lambda: mk.radiomics(img(), msk().with_array(np.zeros((6, 7, 8), np.uint8)),
                                            features=("firstorder",), bin_count=16)),
        ("NaN voxel inside the mask", lambda: mk.radiomics(img().with_array(np.where(msk().array > 0, np.nan,
                                                                                      1.0).astype(np.float32)),
                                                           msk(), features=("firstorder",), bin_count=16)),
        ("mask of another shape", lambda: mk.radiomics(img(), mk.Image(np.ones((2, 2, 2), np.uint8)),
                                                       features=("firstorder",), bin_count=16)),
    ]:
        cases.append(Case("geometry", f"radiomics: {name}", lambda d: None, lambda _, fn=fn: fn(), "either",
                          lambda r: _radiomics_finite(r), errors=ARG_ERRORS))
    cases.append(Case("geometry", "regions: float labels", lambda d: None,
                      lambda _: mk.regions(np.full((4, 4, 4), 1.5, np.float32)), "either", lambda r: None,
                      errors=ARG_ERRORS))
    cases.append(Case("geometry", "regions: labels up to 2^31-1", lambda d: None,
                      lambda _: mk.regions(np.array([[[0, 2**31 - 1]]], np.int32)), "either",
                      lambda r: None if len(r) <= 2 else f"{len(r)} regions for 1 label", errors=ARG_ERRORS))
    cases.append(Case("geometry", "regions: negative labels", lambda d: None,
                      lambda _: mk.regions(np.array([[[0, -5, -5]]], np.int32)), "either", lambda r: None,
                      errors=ARG_ERRORS))
    cases.append(Case("geometry", "sliding_window: fn returns NaN", lambda d: None,
                      lambda _: mk.sliding_window(x[None, None], lambda b: b * np.nan, (2, 2, 2)), "either",
                      lambda r: None, errors=ARG_ERRORS))
    cases.append(Case("geometry", "sliding_window: fn returns a smaller patch", lambda d: None,
                      lambda _: mk.sliding_window(x[None, None], lambda b: b[..., :1, :1, :1], (2, 2, 2)), "error",
                      errors=ARG_ERRORS))
    return cases


def _radiomics_finite(result) -> str | None:
    if not hasattr(result, "items"):
        return None
    values = dict(result.items())
    bad = [k for k, v in values.items() if isinstance(v, (float, np.floating)) and not np.isfinite(v)]
    return f"non-finite features {bad[:4]}" if bad else None


# ============================================================================ runner
def all_cases(seed: int, flips: int) -> list[Case]:
    rng = random.Random(seed)
    return (dicom_file_cases(rng, flips) + rt_dose_cases() + enhanced_cases() + folder_cases(rng, flips)
            + rtstruct_cases(rng, flips) + nifti_cases(rng, flips) + transform_cases(rng, flips)
            + onnx_cases(rng, flips) + kernel_cases() + nrrd_meta_cases(rng, flips) + geometry_cases())


def _outcome(case: Case, work: Path) -> dict:
    try:
        arg = case.build(work)
    except BaseException as exc:  # the generator's own failure
        return {"outcome": "harness_error", "detail": f"building the input failed: {type(exc).__name__}: {exc}"}
    if case.nobody:
        for p in [work, *work.rglob("*")]:
            if not p.is_symlink() and p.stat().st_mode & 0o777 != 0:
                p.chmod(p.stat().st_mode | (0o755 if p.is_dir() else 0o644))
        work.parent.chmod(0o755)
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    try:
        result = case.call(arg)
    except BaseException as exc:
        msg = str(exc).strip()
        if case.nobody and isinstance(exc, ImportError):
            return {"outcome": "harness_error", "detail": f"a module could not be imported as user nobody: {msg}"}
        where = _medkern_frame(exc)
        if isinstance(exc, case.errors) and msg:
            detail = f"{type(exc).__name__}: {msg}"
            if case.expect == "value":
                detail = "valid input rejected: " + detail
            return {"outcome": "clear_error", "detail": detail[:400]}
        return {"outcome": "undocumented", "detail": f"{type(exc).__name__}: {msg[:300]}{where}"}
    if case.expect == "error":
        return {"outcome": "silent_wrong", "detail": f"returned {_describe(result)}; an error was required"}
    try:
        problem = case.check(result) if case.check is not None else None
    except BaseException as exc:
        problem = f"the result could not be checked: {type(exc).__name__}: {str(exc)[:200]}"
    if problem:
        return {"outcome": "silent_wrong", "detail": problem[:400]}
    return {"outcome": "correct", "detail": ""}


def _medkern_frame(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/medkern/" in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {Path(f.filename).name}:{f.lineno} in {f.name})"


def _describe(result: Any) -> str:
    if isinstance(result, mk.Image):
        return f"an Image {result.shape} spacing {tuple(np.round(result.spacing, 4))}"
    if isinstance(result, np.ndarray):
        return f"an array {result.shape} {result.dtype}"
    if isinstance(result, tuple):
        return "(" + ", ".join(_describe(r) for r in result) + ")"
    if isinstance(result, dict):
        return f"a dict with keys {sorted(result)[:5]}"
    s = repr(result)
    return s[:80]


def _child(case: Case, wfd: int, work: Path, memory_mb: int) -> None:
    try:
        os.setpgid(0, 0)
        out = os.open(work.parent / "output.txt", os.O_WRONLY | os.O_CREAT, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.chdir(work)
        import warnings

        warnings.simplefilter("ignore")
        result = _outcome(case, work)
        os.write(wfd, json.dumps(result).encode()[:60000])
    finally:
        os._exit(0)


def run(cases: list[Case], workers: int, timeout: float, max_seconds: float, memory_mb: int,
        progress: bool = True) -> list[dict | None]:
    results: list[dict | None] = [None] * len(cases)
    running: dict[int, tuple[int, float, int, Path]] = {}
    t_end = time.monotonic() + max_seconds
    nxt = 0
    done = 0
    last = time.monotonic()
    while nxt < len(cases) or running:
        while nxt < len(cases) and len(running) < workers and time.monotonic() < t_end:
            base = Path(tempfile.mkdtemp(prefix="hostile-"))
            work = base / "work"
            work.mkdir()
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _child(cases[nxt], w, work, memory_mb)
            os.close(w)
            try:
                os.setpgid(pid, pid)
            except OSError:
                pass
            running[pid] = (nxt, time.monotonic(), r, base)
            nxt += 1
        if time.monotonic() >= t_end and nxt < len(cases) and not running:
            break
        finished = []
        for pid, (idx, t0, r, base) in running.items():
            wpid, status = os.waitpid(pid, os.WNOHANG)
            if wpid == 0:
                if time.monotonic() - t0 > timeout:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except OSError:
                        os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    results[idx] = {"outcome": "hang", "detail": f"killed after {timeout:.0f} s"}
                    finished.append(pid)
                continue
            data = b""
            while True:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
            if data:
                results[idx] = json.loads(data)
            else:
                tail = _tail(base / "output.txt")
                if os.WIFSIGNALED(status):
                    sig = signal.Signals(os.WTERMSIG(status)).name
                    results[idx] = {"outcome": "crash", "detail": f"killed by {sig}{tail}"}
                else:
                    results[idx] = {"outcome": "crash", "detail": f"exited with status {os.WEXITSTATUS(status)} "
                                                                  f"without a result{tail}"}
            finished.append(pid)
        for pid in finished:
            idx, t0, r, base = running.pop(pid)
            os.close(r)
            try:
                os.killpg(pid, signal.SIGKILL)  # anything the child left running
            except OSError:
                pass
            shutil.rmtree(base, ignore_errors=True)
            done += 1
        if not finished:
            time.sleep(0.005)
        if progress and time.monotonic() - last > 10:
            last = time.monotonic()
            print(f"  {done}/{len(cases)} inputs run", file=sys.stderr, flush=True)
    return results


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.strip()][-3:]
    return (": " + " | ".join(lines))[:300] if lines else ""


# ============================================================================ report
def table(cases: list[Case], results: list[dict | None]) -> tuple[str, dict]:
    per: dict[str, Counter] = defaultdict(Counter)
    for c, r in zip(cases, results):
        if r is None:
            per[c.cls]["not run"] += 1
            continue
        per[c.cls]["tried"] += 1
        per[c.cls][r["outcome"]] += 1
    total = Counter()
    for cnt in per.values():
        total.update(cnt)
    cols = ["tried"] + list(OUTCOMES)
    head = "| class | inputs tried | " + " | ".join(TITLES[o] for o in OUTCOMES) + " |"
    if total["not run"]:
        head = head[:-1] + "| not run (time limit) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for cls in sorted(per):
        row = [str(per[cls][k]) for k in cols]
        if total["not run"]:
            row.append(str(per[cls]["not run"]))
        lines.append(f"| {cls} | " + " | ".join(row) + " |")
    row = [f"**{total[k]}**" for k in cols]
    if total["not run"]:
        row.append(f"**{total['not run']}**")
    lines.append("| **total** | " + " | ".join(row) + " |")
    if total["harness_error"]:
        lines.append(f"\n{total['harness_error']} input(s) could not be built (generator errors, listed below).")
    return "\n".join(lines), total


def report(cases, results, args, seconds: float, out: Path) -> str:
    tab, total = table(cases, results)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "python", "cpp"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    if args.label:
        commit, dirty = args.label, ""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    earlier: list[str] = []
    if out.exists():
        old = out.read_text()
        m = re.search(r"<!-- latest -->\n(.*?)<!-- /latest -->", old, re.S)
        if m:
            earlier.append(m.group(1).strip().replace("**Run of", "Run of", 1).replace("** —", " —", 1))
        m = re.search(r"<!-- earlier -->\n(.*?)<!-- /earlier -->", old, re.S)
        if m:
            earlier += [b.strip() for b in m.group(1).split("<!-- run -->") if b.strip()]
        elif "## Previous run" in old:  # the layout of the first reports
            m = re.search(r"## Previous run\n\n(.*?)\n## ", old, re.S)
            if m:
                earlier.append(m.group(1).strip())
    lines = [
        "# Hostile inputs",
        "",
        "Malformed inputs across the I/O formats, the model loader and the kernels, each run in a child "
        "process with a time and memory limit (`benchmarks/hostile_inputs.py`; the outcome classes are "
        "defined in its docstring). *undocumented errors* are exceptions outside medkern's documented "
        "ones (MedkernError / DicomError / ModelError, ValueError, TypeError, OSError) or without a message.",
        "",
        "<!-- latest -->",
        f"**Run of {now}** — {'library' if args.label else 'commit'} {commit}"
        f"{' + uncommitted library changes' if dirty else ''}; "
        f"`python benchmarks/hostile_inputs.py --workers {args.workers} --timeout {args.timeout:g} "
        f"--memory-mb {args.memory_mb} --seed {args.seed} --flips {args.flips}`; {seconds:.0f} s on "
        f"{os.cpu_count()} CPU(s), {platform.python_version()}.",
        "",
        tab,
        "<!-- /latest -->",
        "",
    ]
    if earlier:
        lines += ["## Earlier runs (newest first)", "", "<!-- earlier -->"]
        for block in earlier:
            lines += ["<!-- run -->", block, ""]
        lines += ["<!-- /earlier -->", ""]
    failures = defaultdict(list)
    rejected = []
    for c, r in zip(cases, results):
        if r is None:
            continue
        if r["outcome"] in ("crash", "hang", "silent_wrong", "undocumented", "harness_error"):
            failures[r["outcome"]].append((c, r))
        elif r["outcome"] == "clear_error" and r["detail"].startswith("valid input rejected"):
            rejected.append((c, r))
    lines += ["## Remaining failures", ""]
    if not any(failures.values()):
        lines.append("None.")
    for outcome in ("crash", "hang", "silent_wrong", "undocumented", "harness_error"):
        items = failures.get(outcome, [])
        if not items:
            continue
        lines += [f"### {TITLES.get(outcome, 'generator errors')} ({len(items)})", ""]
        for c, r in items:
            detail = r["detail"].replace("\n", " ").replace("|", "\\|")
            lines.append(f"- `{c.cls}` {c.name} — {detail}")
        lines.append("")
    if rejected:
        lines += [f"## Valid inputs rejected with a clear error ({len(rejected)})", ""]
        for c, r in rejected:
            lines.append(f"- `{c.cls}` {c.name} — {r['detail'].replace(chr(10), ' ')}")
        lines.append("")
    return "\n".join(lines)


def _preimport() -> None:
    """Import what the readers load lazily. Children that drop to user nobody (to make files
    unreadable: root reads everything) cannot import from root's site-packages any more."""
    import importlib
    import pkgutil

    names = ["numpy.ma", "numpy.lib.recfunctions", "numpy.linalg", "difflib", "textwrap", "gzip", "bz2", "lzma",
             "zlib", "uuid", "hashlib", "fnmatch", "glob", "locale", "codecs", "encodings.idna", "stat",
             "concurrent.futures", "xml.etree.ElementTree"]
    for pkg in ("medkern", "pydicom"):
        mod = importlib.import_module(pkg)
        for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
            if any(part in info.name for part in ("batch", "_cupy", "cuda", "demo", "benchmark", "examples")):
                continue
            names.append(info.name)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # optional dependencies of some submodules
            pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="children run at once (default 2)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before an input counts as a hang")
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="stop starting inputs after this long")
    ap.add_argument("--memory-mb", type=int, default=4096, help="address-space limit of each child")
    ap.add_argument("--seed", type=int, default=20261205)
    ap.add_argument("--flips", type=int, default=60, help="random bit-flip inputs per base file")
    ap.add_argument("--only", default="", help="comma-separated classes to run")
    ap.add_argument("--match", default="", help="run only inputs whose name contains this")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "HOSTILE.md"))
    ap.add_argument("--no-write", action="store_true", help="print the table, leave the report alone")
    ap.add_argument("--library", default="", help="medkern source tree (with its built _core) to test instead")
    ap.add_argument("--label", default="", help="what the report calls the library tested (default: the commit)")
    args = ap.parse_args(argv)
    # import the heavy modules once, here, so every child starts with them loaded (no threads start)
    import nibabel  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import pydicom  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import skimage.filters  # noqa: F401
    _preimport()
    cases = all_cases(args.seed, args.flips)
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if c.cls in keep]
    if args.match:
        cases = [c for c in cases if args.match in c.name]
    print(f"{len(cases)} inputs, {args.workers} worker(s)", file=sys.stderr)
    t0 = time.monotonic()
    results = run(cases, args.workers, args.timeout, args.max_seconds, args.memory_mb)
    again = [i for i, r in enumerate(results) if r is not None and r["outcome"] in ("crash", "hang")]
    if again:
        print(f"rerunning {len(again)} crash/hang input(s) one at a time to confirm them", file=sys.stderr)
        second = run([cases[i] for i in again], 1, args.timeout, max(60.0, 3 * args.timeout * len(again)),
                     args.memory_mb, progress=False)
        for i, r in zip(again, second):
            first = results[i]
            if r is None or r["outcome"] == first["outcome"]:
                continue
            # not reproduced (e.g. the extension was being rebuilt under the run): keep the second outcome
            r = dict(r)
            r["detail"] = (r["detail"] + f" [first run: {first['outcome']}, {first['detail'][:120]}; "
                           "not reproduced]").strip()
            results[i] = r
    seconds = time.monotonic() - t0
    text = report(cases, results, args, seconds, Path(args.out))
    tab, _ = table(cases, results)
    print(tab)
    if not args.no_write:
        Path(args.out).write_text(text)
        print(f"report written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
