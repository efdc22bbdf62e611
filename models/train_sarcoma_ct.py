"""Train, export and evaluate the shipped `sarcoma-ct` model (GTV segmentation on CT).

Data: the IBSI soft-tissue-sarcoma CTs with their GTV_Mass masks (../shared/data/ibsi/
ibsi_validation/nifti; Vallières et al. 2015, TCIA, CC BY 3.0), split by patient below.

    python models/train_sarcoma_ct.py                 # train + export + evaluate + model card
    python models/train_sarcoma_ct.py --stage evaluate

Reproducible: seed 0, two PyTorch threads, deterministic kernels, a fixed number of steps
(about 15-20 minutes on a two-core machine).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from scipy import ndimage

from _common import (SHARED_DATA, SHIPPED, UNet, crop_and_flip, dice, export, main, save_metrics, seed_everything,
                     train, write_card)

NAME = "sarcoma-ct"
DATA = SHARED_DATA / "ibsi" / "ibsi_validation" / "nifti"
# Fixed split by patient (every fourth of the 32 patients that have a CT goes to validation).
VALIDATION = ["STS_004", "STS_012", "STS_019", "STS_025", "STS_029", "STS_034", "STS_038", "STS_043"]
SPACING = [3.0, 3.0, 3.0]          # mm, array order (k, j, i)
PATCH = [32, 48, 48]
STEPS = 4000
THREADS = 2
WINDOW = {"op": "window", "center": 40.0, "width": 500.0}   # soft tissue, mapped to [0, 1]
SEED = 0

METADATA = {
    "schema_version": 1,
    "name": NAME,
    "version": "1.1",
    "description": "Gross tumour volume of soft-tissue sarcoma of the extremities on CT",
    "task": "segmentation",
    "input": {"modalities": ["CT"], "spatial_dims": 3, "spacing": SPACING, "orientation": "SPL"},
    "preprocessing": [WINDOW],
    "inference": {"patch_size": PATCH, "overlap": 0.5, "blend": "gaussian", "sigma_scale": 0.125,
                  "batch_size": 2, "padding": "constant"},
    "output": {"activation": "softmax", "labels": ["background", "gtv"]},
    # One primary tumour per study: the fragments the network adds around it would inflate the
    # maximum tumour dimension that the AJCC T category is read from.
    "postprocessing": [{"op": "keep_top", "n": 1, "by": "probability"}],
    "training_data": "IBSI soft-tissue sarcoma CTs with GTV_Mass contours, 24 training patients "
                     "(Vallieres et al., Phys. Med. Biol. 60 (2015) 5471; TCIA "
                     "doi:10.7937/K9/TCIA.2015.7GO2GSKS), CT cropped 5 cm around the tumour",
    "licence": "model: Apache-2.0; training data CC BY 3.0 (attribution above)",
    "intended_use": "research and decision support only; not a medical device",
}


def patients() -> list[str]:
    return sorted(p.name for p in DATA.iterdir() if (p / "CT_image.nii.gz").is_file())


def load_case(patient: str) -> tuple[np.ndarray, np.ndarray]:
    """CT and mask on the model grid (SPL orientation, SPACING, linear, field of view kept)."""
    import medkern as mk
    from medkern.inference import reorient

    ct = reorient(mk.read(DATA / patient / "CT_image.nii.gz"), "SPL")
    mask = reorient(mk.read(DATA / patient / "CT_mask.nii.gz"), "SPL")
    shape = [max(1, round(n * s / t)) for n, s, t in zip(ct.shape, ct.spacing, SPACING)]
    zoom = [m / n for m, n in zip(shape, ct.shape)]
    x = ndimage.zoom(ct.array.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True)
    y = ndimage.zoom(mask.array.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True) > 0.5
    x = mk.window(x, WINDOW["center"], WINDOW["width"])
    return x, y.astype(np.int64)


def sampler(cases: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, batch: int = 2):
    def crop(x, y):
        pad = [(0, max(p - n, 0)) for p, n in zip(PATCH, x.shape)]
        x, y = np.pad(x, pad), np.pad(y, pad)
        if rng.random() < 0.5:  # foreground oversampling (nnU-Net style)
            fg = np.argwhere(y)
            centre = fg[rng.integers(len(fg))]
        else:
            centre = None
        xs, ys = crop_and_flip(x, y, PATCH, centre, rng)
        xs = xs * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05)
        return xs, ys

    def sample():
        pairs = [crop(*cases[rng.integers(len(cases))]) for _ in range(batch)]
        return (np.stack([p[0][None] for p in pairs]).astype(np.float32),
                np.stack([p[1] for p in pairs]).astype(np.int64))

    return sample


def stage_train() -> None:
    rng = seed_everything(SEED, THREADS)
    train_ids = [p for p in patients() if p not in VALIDATION]
    cases = [load_case(p) for p in train_ids]
    print(f"{len(cases)} training cases loaded")
    net = UNet(1, 2, (8, 16, 32))
    log = train(net, sampler(cases, rng), steps=STEPS, sigmoid=False)
    print(log)
    meta = dict(METADATA, metrics={"training": log})
    export(net, 1, PATCH, meta, NAME)


def stage_evaluate() -> dict:
    import medkern as mk

    model = mk.models.load(NAME)
    per_patient = {}
    for p in VALIDATION:
        ct = mk.read(DATA / p / "CT_image.nii.gz")
        mask = mk.read(DATA / p / "CT_mask.nii.gz").array > 0
        pred = model.predict(ct)
        per_patient[p] = round(dice(pred.labels.array == 1, mask), 4)
        print(p, per_patient[p], flush=True)
    metrics = {"validation_dice": per_patient,
               "validation_dice_median": round(float(np.median(list(per_patient.values()))), 4),
               "validation_patients": len(VALIDATION), "training": model.metadata["metrics"].get("training"),
               "evaluated": dt.date.today().isoformat(),
               "evaluation": "mk.Model.predict on the original CT grid vs the GTV mask"}
    save_metrics(NAME, metrics)
    model_card(metrics)
    return metrics


def model_card(metrics: dict) -> None:
    rows = "\n".join(f"| {p} | {d:.3f} |" for p, d in metrics["validation_dice"].items())
    size = (SHIPPED / f"{NAME}.onnx").stat().st_size / 1e6
    card = f"""# Model card: `{NAME}`

**Task**: segmentation of the gross tumour volume (GTV) of soft-tissue sarcoma of the extremities
on CT. Output: softmax over (background, gtv); `mk.models.load("{NAME}").predict(ct)` returns the
probabilities and the label map on the CT's own grid.

**Intended use**: research and decision support only. Not a medical device; not validated for
clinical use. Trained on 24 patients: expect failures on anatomy, scanners and tumour types not
represented (cropped CTs 5 cm around the tumour, extremities only).

## Data, licence and attribution
- IBSI soft-tissue-sarcoma CTs with the `GTV_Mass` contour, NIfTI as released by the IBSI
  (`ibsi_validation/nifti`), 32 patients with CT: 24 for training, 8 for validation
  ({", ".join(VALIDATION)}), split by patient and fixed in `models/train_sarcoma_ct.py`.
- Vallières M. et al., "A radiomics model from joint FDG-PET and MRI texture features for the
  prediction of lung metastases in soft-tissue sarcomas of the extremities", Phys. Med. Biol. 60
  (2015) 5471; data via The Cancer Imaging Archive, doi:10.7937/K9/TCIA.2015.7GO2GSKS
  (Clark K. et al., J. Digit. Imaging 26 (2013) 1045). Licence of the data: CC BY 3.0.
- Model weights: Apache-2.0, like medkern.

## Model
3D U-Net (channels 8/16/32, instance norm, leaky ReLU), {size:.2f} MB ONNX. Input: CT reoriented to
SPL, resampled to {SPACING} mm (array order, linear), soft-tissue window centre 40 HU width 500 HU
mapped to [0, 1]. Sliding window {PATCH} voxels, overlap 0.5, Gaussian blending. Trained with Dice +
cross-entropy, Adam, foreground oversampling, flips; seed {SEED}, {THREADS} thread(s)
({metrics["training"]["steps"]} steps, {metrics["training"]["seconds"]} s). Reproduce with
`python models/train_sarcoma_ct.py`.

## Validation (8 held-out patients, on the original CT grid)

| patient | Dice |
|---|---|
{rows}

**Median Dice: {metrics["validation_dice_median"]:.3f}**

**Limitations**: a deliberately tiny network at 3 mm, trained for a few thousand steps on two CPU
cores so that it ships in the package and retrains in minutes; it over-segments surrounding soft
tissue and misses small tumours. It demonstrates the pipeline (metadata, resampling, sliding
window, return to the CT grid), not state-of-the-art GTV delineation.
"""
    write_card(NAME, card, metrics)


if __name__ == "__main__":
    main(__doc__, stage_train, stage_evaluate)
