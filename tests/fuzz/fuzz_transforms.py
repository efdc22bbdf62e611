"""Fuzz mk.Affine.read on ITK transform files: text (.tfm/.txt) and MATLAB v4 (.mat).

The input is read as a text file when it starts with '#', otherwise as a .mat file.
"""

from __future__ import annotations

import numpy as np

from _harness import DOCUMENTED, SilentWrong, main, mk, scratch

DIR = scratch()


def seeds() -> dict[str, bytes]:
    import _seeds as s

    euler = s.itk_text("Euler3DTransform_double_3_3", np.array([0.1, -0.2, 0.3, 1.0, 2.0, 3.0]),
                       np.array([1.0, 2.0, 3.0, 0.0]))
    composite = (b"#Insight Transform File V1.0\n#Transform 0\nTransform: CompositeTransform_double_3_3\n"
                 + s.itk_text().split(b"\n", 1)[1].replace(b"#Transform 0", b"#Transform 1")
                 + s.itk_text("TranslationTransform_double_3_3", np.array([1.0, 2.0, 3.0]), np.zeros(0))
                 .split(b"\n", 1)[1].replace(b"#Transform 0", b"#Transform 2"))
    return {
        "affine.tfm": s.itk_text(),
        "euler.tfm": euler,
        "composite.tfm": composite,
        "affine2d.tfm": s.itk_text("AffineTransform_double_2_2", np.array([1.0, 0.1, 0.0, 1.0, 2.0, 3.0]),
                                   np.zeros(2)),
        "affine.mat": s.itk_mat(),
        "affine_be.mat": s.itk_mat(endian=">"),
    }


def one_input(data: bytes) -> None:
    path = DIR / ("input.tfm" if data[:1] == b"#" else "input.mat")
    path.write_bytes(data)
    try:
        a = mk.Affine.read(path)
    except DOCUMENTED:
        return
    m = np.asarray(a.matrix)
    if not np.all(np.isfinite(m)):
        raise SilentWrong(f"Affine.read returned a non-finite matrix:\n{m}")
    a.apply(np.zeros((1, a.ndim)))


if __name__ == "__main__":
    main(seeds, one_input)
