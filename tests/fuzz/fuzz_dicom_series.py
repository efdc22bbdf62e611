"""Fuzz mk.list_dicom_series / mk.read_dicom_series on a folder built from the input.

The input is split on SEPARATOR; each part becomes one file of the folder (``part<n>.dcm``),
beside a sub-folder holding one good slice of the reference series.
"""

from __future__ import annotations

import numpy as np

from _harness import DOCUMENTED, SilentWrong, clear, instrument_parsers, main, mk, scratch

instrument_parsers("pydicom")

SEPARATOR = b"\0--medkern-fuzz-file--\0"
DIR = scratch()


def seeds() -> dict[str, bytes]:
    import _seeds as s

    series = [s.ct_slice_bytes(k) for k in range(s.SERIES_SHAPE[0])]
    return {
        "series": SEPARATOR.join(series),
        "series_and_dose": SEPARATOR.join(series[:3] + [s.to_bytes(s.rt_dose())]),
        "mixed": SEPARATOR.join([series[0], s.to_bytes(s.multiframe_ct()), b"not dicom", series[1]]),
    }


def _good_slice() -> bytes:
    import _seeds as s

    return s.ct_slice_bytes(4)


GOOD = _good_slice()


def one_input(data: bytes) -> None:
    clear(DIR)
    parts = data.split(SEPARATOR)[:16]
    for n, part in enumerate(parts):
        (DIR / f"part{n}.dcm").write_bytes(part)
    (DIR / "sub").mkdir()
    (DIR / "sub" / "good.dcm").write_bytes(GOOD)
    try:
        series = mk.list_dicom_series(DIR)
    except DOCUMENTED:
        return
    for s in series:
        try:
            img = mk.read_dicom_series(DIR, series_uid=s.key)
        except DOCUMENTED:
            continue
        if not (np.all(np.isfinite(img.spacing)) and np.all(np.asarray(img.spacing) > 0)):
            raise SilentWrong(f"series {s.key}: spacing {img.spacing}")
        if not np.all(np.isfinite(img.origin)):
            raise SilentWrong(f"series {s.key}: origin {img.origin}")


if __name__ == "__main__":
    main(seeds, one_input)
