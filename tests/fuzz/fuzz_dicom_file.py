"""Fuzz mk.read on one DICOM file (single frame, multi-frame, RT Dose, enhanced CT)."""

from __future__ import annotations

import numpy as np

from _harness import DOCUMENTED, SilentWrong, instrument_parsers, main, mk, scratch

instrument_parsers("pydicom")

DIR = scratch()


def seeds() -> dict[str, bytes]:
    import _seeds as s

    return {
        "ct_explicit.dcm": s.ct_slice_bytes(1),
        "ct_implicit.dcm": s.ct_slice_bytes(2, ts=s.IMPLICIT_LE),
        "multiframe.dcm": s.to_bytes(s.multiframe_ct()),
        "rtdose.dcm": s.to_bytes(s.rt_dose()),
        "enhanced.dcm": s.to_bytes(s.enhanced_ct()),
    }


def check(img) -> None:
    if not isinstance(img, mk.Image):
        raise SilentWrong(f"mk.read returned {type(img).__name__}")
    if not (np.all(np.isfinite(img.spacing)) and np.all(np.asarray(img.spacing) > 0)):
        raise SilentWrong(f"non-finite or non-positive spacing {img.spacing}")
    if not np.all(np.isfinite(img.origin)) or not np.all(np.isfinite(img.direction)):
        raise SilentWrong(f"non-finite origin/direction {img.origin} {img.direction}")
    if img.array.size == 0:
        raise SilentWrong(f"empty image of shape {img.shape}")


def declared_count(path) -> int | None:
    """Rows x Columns x frames x samples as pydicom reads the header, None when it cannot."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        samples = 3 if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR" else int(ds.SamplesPerPixel)
        return int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1) * samples
    except Exception:
        return None


def one_input(data: bytes) -> None:
    path = DIR / "input.dcm"
    path.write_bytes(data)
    try:
        img = mk.read(path)
    except DOCUMENTED:
        return
    check(img)
    count = declared_count(path)
    if count is not None and img.array.size != count:
        raise SilentWrong(f"{img.array.size} voxels returned, the header declares {count}")


if __name__ == "__main__":
    main(seeds, one_input)
