"""Fuzz mk.read_rtstruct with a fixed small reference series (as an Image and as its folder)."""

from __future__ import annotations

import numpy as np

from _harness import DOCUMENTED, SilentWrong, instrument_parsers, main, mk, scratch

instrument_parsers("pydicom")

DIR = scratch()


def _reference():
    import _seeds as s

    s.write_series(DIR / "ref")
    return mk.read(DIR / "ref")


REFERENCE = _reference()


def seeds() -> dict[str, bytes]:
    import _seeds as s

    ds = s.rtstruct()
    one = s.rtstruct()
    one.ROIContourSequence[0].ContourSequence = one.ROIContourSequence[0].ContourSequence[:1]
    return {"rtstruct.dcm": s.to_bytes(ds), "rtstruct_implicit.dcm": s.to_bytes(s.rtstruct(ts=s.IMPLICIT_LE))}


def one_input(data: bytes) -> None:
    path = DIR / "rtstruct.dcm"
    path.write_bytes(data)
    # the folder reference also checks the frame of reference; the Image one is faster
    reference = DIR / "ref" if data[-1:] in (b"\x00", b"\x01") else REFERENCE
    try:
        masks = mk.read_rtstruct(path, reference)
    except DOCUMENTED:
        return
    if not isinstance(masks, dict):
        raise SilentWrong(f"read_rtstruct returned {type(masks).__name__}")
    for name, m in masks.items():
        if m.shape != REFERENCE.shape or m.array.dtype != np.uint8 or not np.allclose(m.affine, REFERENCE.affine):
            raise SilentWrong(f"ROI {name!r}: mask {m.shape} {m.array.dtype} is not on the reference grid")
        if m.array.size and int(m.array.max()) > 1:
            raise SilentWrong(f"ROI {name!r}: mask holds {int(m.array.max())}, masks are 0/1")


if __name__ == "__main__":
    main(seeds, one_input)
