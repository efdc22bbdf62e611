"""Fuzz mk.read on .nii and .nii.gz files.

An input that starts with the gzip magic is written as ``.nii.gz`` as it is; any other input is
read both as ``.nii`` and, compressed, as ``.nii.gz``.
"""

from __future__ import annotations

import gzip

import numpy as np

from _harness import DOCUMENTED, SilentWrong, instrument_parsers, main, mk, scratch

instrument_parsers("nibabel")

DIR = scratch()


def seeds() -> dict[str, bytes]:
    import _seeds as s

    return {
        "f32.nii": s.nifti_bytes(),
        "i16_scaled.nii": s.nifti_bytes(np.int16, slope=0.5),
        "u8_v2.nii": s.nifti_bytes(np.uint8, version=2),
        "f32.nii.gz": s.gzip_bytes(s.nifti_bytes()),
    }


def _read(path) -> None:
    try:
        img = mk.read(path)
    except DOCUMENTED:
        return
    if not (np.all(np.isfinite(img.spacing)) and np.all(np.asarray(img.spacing) > 0)):
        raise SilentWrong(f"spacing {img.spacing}")
    if not np.all(np.isfinite(img.origin)) or not np.all(np.isfinite(img.direction)):
        raise SilentWrong(f"origin {img.origin}, direction {img.direction}")


def one_input(data: bytes) -> None:
    if data[:2] == b"\x1f\x8b":
        (DIR / "input.nii.gz").write_bytes(data)
        _read(DIR / "input.nii.gz")
        return
    (DIR / "input.nii").write_bytes(data)
    _read(DIR / "input.nii")
    (DIR / "input.nii.gz").write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
    _read(DIR / "input.nii.gz")


if __name__ == "__main__":
    main(seeds, one_input)
