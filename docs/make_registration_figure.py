"""Draw docs/registration.png: an MNI152 atlas registered to a simulated patient scan.

    PYTHONPATH=python python docs/make_registration_figure.py

The "patient" is the MNI152 T1 with a T2-like contrast, moved by a rigid pose and a smooth warp,
seen on a 3 x 1.2 x 1.2 mm grid with noise and a bias field. The atlas (fixed) is registered
with mutual information, then deformably; each panel is a checkerboard of the atlas and the
patient resampled onto it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "benchmarks"))
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _registration_data import load_mni, make_moving, random_diffeomorphism, random_transform, t2_like  # noqa: E402

import medkern as mk  # noqa: E402


def checkerboard(a: np.ndarray, b: np.ndarray, tile: int = 16) -> np.ndarray:
    def unit(x):
        lo, hi = np.percentile(x, [1, 99.5])
        return np.clip((x - lo) / (hi - lo + 1e-9), 0, 1)

    jj, ii = np.indices(a.shape)
    return np.where(((jj // tile) + (ii // tile)) % 2 == 0, unit(a), unit(b))


def main() -> None:
    atlas, gm, wm = load_mni(1.5)
    rng = np.random.default_rng(4)
    warp = random_diffeomorphism(atlas, rng, amplitude_mm=6.0, length_mm=15.0)
    patient_anatomy = mk.warp(t2_like(atlas, gm, wm), warp, reference=atlas)
    T = random_transform(rng, "rigid", atlas.index_to_world((np.array(atlas.shape) - 1) / 2.0))
    patient = make_moving(patient_anatomy, T, (3.0, 1.2, 1.2), rng)

    rigid = mk.register(atlas, patient, "rigid", "mi")
    after_rigid = mk.warp(patient, rigid.transform, reference=atlas).array
    before = mk.warp(patient, mk.Affine.identity(), reference=atlas).array
    deformable = mk.register(atlas, mk.Image(after_rigid, **atlas.geometry), "deformable")
    after_def = mk.warp(mk.Image(after_rigid, **atlas.geometry), deformable.transform,
                        reference=atlas).array

    k = atlas.shape[0] // 2 + 8
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
    for ax, moving, title in zip(axes, (before, after_rigid, after_def),
                                 ("before (scanner geometry)", f"rigid MI ({sum(rigid.iterations)} steps)",
                                  "rigid + diffeomorphic (LNCC)")):
        ax.imshow(checkerboard(atlas.array[k], moving[k]), cmap="gray", origin="lower")
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle("mk.register: MNI152 T1 atlas (tiles) vs a T2-like, warped, 3 x 1.2 x 1.2 mm scan")
    fig.tight_layout()
    fig.savefig(HERE / "registration.png", dpi=80)


if __name__ == "__main__":
    main()
