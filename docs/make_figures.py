"""Figures of the documentation, made from data shipped in PyPI packages (no download).

    PYTHONPATH=python python docs/make_figures.py      # needs matplotlib, pydicom-data, nilearn

docs/enhancement.png: CLAHE on the pydicom-data chest radiograph RG1_UNCR.dcm, and N4 on the
MNI152 T1 (nilearn) multiplied by a known smooth bias field.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import medkern as mk  # noqa: E402

HERE = Path(__file__).resolve().parent


def enhancement(path: Path) -> None:
    import pydicom
    from nilearn.datasets import load_mni152_template
    from pydicom.data import get_testdata_file

    xray = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm")).pixel_array[::2, ::2].copy()
    xray_clahe = mk.clahe(xray, clip_limit=0.01)

    t1 = np.asarray(load_mni152_template(resolution=1).dataobj, dtype=np.float32)
    t1 = np.ascontiguousarray(t1.transpose(2, 1, 0))  # [k, j, i] = (z, y, x)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, s) for s in t1.shape], indexing="ij")
    true_bias = np.exp(0.3 * k + 0.3 * j * j - 0.45 * i + 0.1 * k * i).astype(np.float32)
    biased = t1 * 100 * true_bias
    corrected, bias = mk.n4_bias_correction(biased, biased > 20, shrink_factor=4,
                                            return_bias_field=True)
    z = 100
    brain = t1[z] > 0.2
    scale = bias[z][brain].mean() / true_bias[z][brain].mean()

    fig, ax = plt.subplots(2, 3, figsize=(12, 8.4))
    ax[0, 0].imshow(xray, cmap="gray")
    ax[0, 0].set_title("chest radiograph (RG1_UNCR.dcm)")
    ax[0, 1].imshow(xray_clahe, cmap="gray")
    ax[0, 1].set_title("mk.clahe(img, clip_limit=0.01)")
    ax[0, 2].hist([xray.ravel() / xray.max(), xray_clahe.ravel()], bins=128,
                  label=["before (scaled)", "after"], histtype="step")
    ax[0, 2].set_title("grey-level histograms")
    ax[0, 2].legend()
    # Both on the scale of their white matter, so that shading shows as it would to a reader.
    for a, img, title in ((ax[1, 0], biased[z], "MNI152 T1 x synthetic bias field"),
                          (ax[1, 1], corrected[z], "mk.n4_bias_correction(img, mask)")):
        a.imshow(img[::-1] / np.median(img[t1[z] > 0.75]), cmap="gray", vmin=0, vmax=1.3)
        a.set_title(title)
    field = np.where(brain, bias[z] / scale, np.nan)
    im = ax[1, 2].imshow(field[::-1], cmap="magma")
    ax[1, 2].contour(np.where(brain, true_bias[z], np.nan)[::-1], levels=8, colors="c",
                     linewidths=0.6)
    ax[1, 2].set_title("recovered field (colour), true field (contours)")
    fig.colorbar(im, ax=ax[1, 2], fraction=0.046)
    for a in ax.ravel():
        if a is not ax[0, 2]:
            a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    enhancement(HERE / "enhancement.png")
