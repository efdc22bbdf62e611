"""Train and cross-validate `sarcoma-petct`: sarcoma GTV segmentation on CT + FDG-PET.

Data: all 45 IBSI soft-tissue-sarcoma patients (../shared/data/ibsi/ibsi_validation/nifti; CT,
PET in SUV on the same frame of reference, GTV_Mass on the CT grid; Vallières et al. 2015, TCIA,
CC BY 3.0). Five folds by patient (fold of a patient = its index in sorted order modulo 5): each
patient is predicted by the fold model that never saw it; the model that ships is then trained
on all 45.

    python models/train_sarcoma_petct.py --fold 0          # train fold 0 (checkpointed, --resume)
    python models/train_sarcoma_petct.py --fold all        # the model that ships, on all 45
    python models/train_sarcoma_petct.py --evaluate 0      # predict fold 0's patients with its model
    python models/train_sarcoma_petct.py --report          # cross-validation table + model card

Reproducible: seed 0, one PyTorch thread per run (two folds train side by side on two cores),
deterministic kernels, a fixed number of steps; a resumed run ends with the same weights.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
from evaluate_sarcoma_ct import markdown_table, max_diameter_mm, summary, t_category
from scipy import ndimage
from train_sarcoma_ct import DATA, patients, sampler

from _common import REPO, SHIPPED, UNet, dice, export, seed_everything, train, write_card

NAME = "sarcoma-petct"
FOLDS = 5
SPACING = [4.0, 4.0, 4.0]          # mm, array order (k, j, i)
PATCH = [32, 48, 48]               # 128 x 192 x 192 mm: most of a tumour and its surroundings
CHANNELS = (8, 16, 32, 64)
FOREGROUND = 0.2
STEPS = 2000
LR = 3e-3
THREADS = 1
SEED = 0
WORK = Path("/tmp/sarcoma-petct")
CANDIDATES = REPO / "build" / "sarcoma-petct"
CT_WINDOW = {"op": "window", "center": 40.0, "width": 500.0, "channels": [0]}   # soft tissue -> [0, 1]
PET_WINDOW = {"op": "window", "center": 5.0, "width": 10.0, "channels": [1]}    # SUV 0..10 -> [0, 1]

METADATA = {
    "schema_version": 1,
    "name": NAME,
    "version": "1.0",
    "description": "Gross tumour volume of soft-tissue sarcoma of the extremities on CT with FDG-PET (SUV)",
    "task": "segmentation",
    "input": {"modalities": ["CT", "PT"], "spatial_dims": 3, "spacing": SPACING, "orientation": "SPL"},
    "preprocessing": [CT_WINDOW, PET_WINDOW],
    "inference": {"patch_size": PATCH, "overlap": 0.5, "blend": "gaussian", "sigma_scale": 0.125,
                  "batch_size": 2, "padding": "constant"},
    "output": {"activation": "softmax", "labels": ["background", "gtv"]},
    # One primary tumour per study: fragments around it would inflate the maximum tumour dimension
    # that the AJCC T category is read from.
    "postprocessing": [{"op": "keep_top", "n": 1, "by": "probability"}],
    "training_data": "IBSI soft-tissue sarcoma CT and FDG-PET (SUV) with GTV_Mass contours, 45 patients "
                     "(Vallieres et al., Phys. Med. Biol. 60 (2015) 5471; TCIA doi:10.7937/K9/TCIA.2015.7GO2GSKS), "
                     "images cropped 5 cm around the tumour",
    "licence": "model: Apache-2.0; training data CC BY 3.0 (attribution above)",
    "intended_use": "research and decision support only; not a medical device",
}


def folds() -> list[list[str]]:
    ids = patients()
    return [ids[k::FOLDS] for k in range(FOLDS)]


def read_case(patient: str) -> tuple[Any, Any, Any]:
    """CT, PET resampled onto the CT grid (same frame of reference), and the GTV mask."""
    import medkern as mk

    ct = mk.read(DATA / patient / "CT_image.nii.gz")
    pet = mk.resample_to(mk.read(DATA / patient / "PET_image.nii.gz"), ct)
    return ct, pet, mk.read(DATA / patient / "CT_mask.nii.gz")


def load_case(patient: str) -> tuple[np.ndarray, np.ndarray]:
    """(2, k, j, i) preprocessed CT and PET and the mask on the model grid (SPL, SPACING)."""
    import medkern as mk
    from medkern.inference import reorient

    ct, pet, mask = (reorient(img, "SPL") for img in read_case(patient))
    shape = [max(1, round(n * s / t)) for n, s, t in zip(ct.shape, ct.spacing, SPACING)]
    zoom = [m / n for m, n in zip(shape, ct.shape)]

    def grid(a: np.ndarray) -> np.ndarray:
        return ndimage.zoom(a.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True)

    x = np.stack([mk.window(grid(ct.array), CT_WINDOW["center"], CT_WINDOW["width"]),
                  mk.window(grid(pet.array), PET_WINDOW["center"], PET_WINDOW["width"])])
    return x.astype(np.float32), (grid(mask.array) > 0.5).astype(np.int64)


def fit(train_ids: list[str], checkpoint: Path, resume: bool) -> tuple[UNet, dict]:
    """A network trained on ``train_ids`` (checkpointed every 250 steps, resumable)."""
    rng = seed_everything(SEED, THREADS)
    cases = [load_case(p) for p in train_ids]
    print(f"{len(cases)} training cases loaded", flush=True)
    net = UNet(2, 2, CHANNELS)
    state = (lambda: rng.bit_generator.state, lambda s: setattr(rng.bit_generator, "state", s))
    log = train(net, sampler(cases, rng, PATCH, FOREGROUND), steps=STEPS, sigmoid=False, lr=LR,
                checkpoint=checkpoint, sampler_state=state, resume=resume)
    return net, log


def candidate(fold: str) -> Path:
    return CANDIDATES / f"{NAME}-fold{fold}.onnx"


def train_fold(fold: str, resume: bool) -> None:
    """Fold k trains on the other four folds; "all" on every patient (the model that ships)."""
    held = _held_out(fold)
    fit([p for p in patients() if p not in held], WORK / f"fold{fold}.pt", resume)
    print(training_log(fold), flush=True)
    CANDIDATES.mkdir(parents=True, exist_ok=True)
    export_checkpoint(fold)


def _held_out(fold: str) -> list[str]:
    return [] if fold == "all" else folds()[int(fold)]


def _final_state(fold: str) -> dict[str, Any]:
    import torch

    state = torch.load(WORK / f"fold{fold}.pt", weights_only=False)
    if state["step"] != STEPS:
        raise SystemExit(f"fold {fold}: the checkpoint is at step {state['step']} of {STEPS}; finish it with --resume")
    return state


def training_log(fold: str) -> dict[str, Any]:
    """Steps, seconds, final loss and patient count of a finished run, from its checkpoint."""
    state = _final_state(fold)
    return {"steps": state["step"], "seconds": round(state["seconds"]),
            "final_loss": round(float(np.mean(state["losses"][-50:])), 4),
            "patients": len(patients()) - len(_held_out(fold))}


def export_checkpoint(fold: str) -> Path:
    """The fold's candidate ONNX, exported from its final checkpoint (what evaluation and shipping read)."""
    net = UNet(2, 2, CHANNELS)
    net.load_state_dict(_final_state(fold)["net"])
    return export(net, 2, tuple(PATCH), dict(METADATA, metrics={"training": training_log(fold)}), NAME,
                  out=candidate(fold))


def hd95_mm(a: np.ndarray, b: np.ndarray, spacing: Any) -> float | None:
    """95th percentile of the symmetric surface distance (mm); None when either mask is empty."""
    if not a.any() or not b.any():
        return None
    surface_a = a & ~ndimage.binary_erosion(a)
    surface_b = b & ~ndimage.binary_erosion(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)[surface_b]
    return float(np.percentile(np.concatenate([to_b, to_a]), 95))


def evaluate_fold(fold: int) -> dict[str, Any]:
    """Each of the fold's patients predicted by the fold model, on its original CT grid."""
    import medkern as mk

    CANDIDATES.mkdir(parents=True, exist_ok=True)
    model = mk.Model(export_checkpoint(str(fold)))
    rows = {}
    for patient in folds()[fold]:
        ct, pet, truth = read_case(patient)
        mask = truth.array > 0
        pred = model.predict(ct, pet).labels
        predicted = pred.array == 1
        true_d = max_diameter_mm(truth.with_array(mask))
        pred_d = max_diameter_mm(pred.with_array(predicted)) if predicted.any() else None
        hd = hd95_mm(predicted, mask, ct.spacing)
        rows[patient] = {
            "fold": fold,
            "dice": round(dice(predicted, mask), 4),
            "hd95_mm": None if hd is None else round(hd, 1),
            "max_diameter_mm": None if pred_d is None else round(pred_d, 1),
            "true_max_diameter_mm": round(true_d, 1),
            "diameter_error_mm": round(-true_d if pred_d is None else pred_d - true_d, 1) + 0.0,
            "t": t_category(pred_d), "true_t": t_category(true_d),
        }
        print(patient, rows[patient], flush=True)
    (CANDIDATES / f"cv-fold{fold}.json").write_text(json.dumps(rows, indent=1))
    return rows


def report() -> dict[str, Any]:
    """The cross-validation over all 45 patients, recorded in the shipped model and its card."""
    rows: dict[str, Any] = {}
    for k in range(FOLDS):
        rows.update(json.loads((CANDIDATES / f"cv-fold{k}.json").read_text()))
    rows = dict(sorted(rows.items()))
    result = {"per_patient": rows, **summary(rows)}
    hds = [r["hd95_mm"] for r in rows.values() if r["hd95_mm"] is not None]
    result["hd95_median_mm"] = round(float(np.median(hds)), 1) if hds else None
    result["dice_below_0_5"] = sum(r["dice"] < 0.5 for r in rows.values())
    training = {str(k): training_log(str(k)) for k in range(FOLDS)}
    print(markdown_table(result))
    print(json.dumps({k: v for k, v in result.items() if k != "per_patient"}, indent=1))
    (CANDIDATES / "cv.json").write_text(json.dumps({"cv": result, "training": training}, indent=1))
    return result


def ship() -> None:
    """Copy the all-patients model into the package with the cross-validation in its metadata."""
    import shutil

    from _common import save_metrics

    cv = json.loads((CANDIDATES / "cv.json").read_text())
    final = training_log("all")
    shutil.copyfile(export_checkpoint("all"), SHIPPED / f"{NAME}.onnx")
    save_metrics(NAME, {"cross_validation": cv["cv"], "training": final, "fold_training": cv["training"],
                        "evaluated": dt.date.today().isoformat(),
                        "evaluation": "5-fold cross-validation by patient over all 45; mk.Model.predict(ct, pet) "
                                      "on the original CT grid vs the GTV mask, declared post-processing"})
    model_card(cv["cv"], final, cv["training"])


def model_card(result: dict[str, Any], final: dict[str, Any], fold_training: dict[str, Any]) -> None:
    size = (SHIPPED / f"{NAME}.onnx").stat().st_size / 1e6
    per_fold = ", ".join(f"{fold_training[str(k)]['seconds']} s" for k in range(FOLDS))
    within_5mm = sum(abs(r["diameter_error_mm"]) <= 5 for r in result["per_patient"].values())
    counts = {t: sum(r["true_t"] == t for r in result["per_patient"].values()) for t in ("T1", "T2", "T3", "T4")}
    card = f"""# Model card: `{NAME}`

**Task**: segmentation of the gross tumour volume (GTV) of soft-tissue sarcoma of the extremities
on CT with the FDG-PET of the same study. Inputs: CT (HU) and PET (SUV) sharing a frame of
reference; `mk.models.load("{NAME}").predict(ct, pet_on_ct_grid)` returns the probabilities and
the label map on the CT's grid; `mk.analyze` picks it for a study that has both and resamples the
PET onto the CT. Output: softmax over (background, gtv).

**Intended use**: research and decision support only. Not a medical device; not validated for
clinical use. Trained on 45 patients of one collection (CT and PET cropped 5 cm around the
tumour, extremities only): expect failures on anatomy, scanners and tumour types not represented.

## Data, licence and attribution
- IBSI soft-tissue-sarcoma CT and FDG-PET (SUV) with the `GTV_Mass` contour, NIfTI as released
  by the IBSI (`ibsi_validation/nifti`), all 45 patients.
- Vallières M. et al., "A radiomics model from joint FDG-PET and MRI texture features for the
  prediction of lung metastases in soft-tissue sarcomas of the extremities", Phys. Med. Biol. 60
  (2015) 5471; data via The Cancer Imaging Archive, doi:10.7937/K9/TCIA.2015.7GO2GSKS
  (Clark K. et al., J. Digit. Imaging 26 (2013) 1045). Licence of the data: CC BY 3.0.
- Model weights: Apache-2.0, like medkern.

## Model (version {METADATA["version"]})
3D U-Net (channels {"/".join(map(str, CHANNELS))}, {len(CHANNELS) - 1} stride-2 levels, instance norm,
leaky ReLU), {size:.2f} MB ONNX, two input channels. Both images reoriented to SPL and resampled to
{SPACING} mm (array order, linear); CT window centre 40 HU width 500 HU and PET SUV 0–10, each
mapped to [0, 1]. Sliding window {PATCH} voxels
({" x ".join(f"{p * s:.0f}" for p, s in zip(PATCH, SPACING))} mm), overlap 0.5, Gaussian blending.
Declared post-processing, applied by `predict`: keep the one connected component with the largest
summed tumour probability (one primary tumour per study). Trained with Dice + cross-entropy, Adam
(learning rate {LR}, poly decay), patches centred on tumour with probability {FOREGROUND}, flips,
intensity scaling; seed {SEED}, {THREADS} thread per run, {STEPS} steps: the shipped model on all
{final["patients"]} patients in {final["seconds"]} s, the fold models in {per_fold} (wall times with up to
four runs and other work sharing two cores). Reproduce with
`python models/train_sarcoma_petct.py` (see its docstring; `--resume` continues a run).

## Validation: 5-fold cross-validation by patient over all 45

Each patient is predicted by the fold model that never saw it (fold = index in sorted order
modulo 5), with `predict(ct, pet)` on the original CT grid and the declared post-processing.
Dice against the GTV mask, maximum 3D diameter (`mk.regions(...)[0].max_diameter_mm`) of
prediction and mask, and the AJCC 8th T category read from each by the shipped
`sarcoma-extremity` guideline (T1 <= 50 mm, T2 <= 100, T3 <= 150, T4 > 150).

{markdown_table(result)}

Median Dice {result["dice_median"]:.3f} (lowest {result["dice_min"]:.3f}; {result["dice_below_0_5"]} patients
below 0.5); median 95th-percentile Hausdorff distance {result["hd95_median_mm"]} mm; median absolute
error of the maximum diameter {result["diameter_abs_error_median_mm"]:.1f} mm (signed
{result["diameter_error_median_mm"]:+.1f} mm); T category agreement {100 * result["t_agreement"]:.1f} %.
True T categories: {", ".join(f"{t} {n}" for t, n in counts.items())}.

**Limitations**: a small network at 4 mm, trained for a few thousand steps on CPU so that it ships
in the package and retrains within the two-hour budget. The collection holds no T1 tumour, so
that category is untested; the cross-validation folds share scanners and protocols, so they
estimate performance on this collection, not elsewhere. The PET must be in SUV: `mk.analyze`
converts a DICOM PET series with `mk.suv` (body weight), a NIfTI PET is taken as given. Two
patients fall below a Dice of 0.5, STS_013 and STS_020: the two largest tumours (283 and 321 mm),
larger than the network's 128 x 192 x 192 mm patch. The maximum diameter is within 5 mm for
{within_5mm} of the {result["patients"]} patients, so the T category read from it is a screening aid to check
against the contour.
"""
    write_card(NAME, card, {k: v for k, v in result.items() if k != "per_patient"})


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fold", help="train fold 0-4, or 'all' for the model that ships")
    parser.add_argument("--resume", action="store_true", help="continue the fold's run from its checkpoint")
    parser.add_argument("--evaluate", type=int, help="predict a fold's patients with its fold model")
    parser.add_argument("--report", action="store_true", help="the cross-validation table over all folds")
    parser.add_argument("--ship", action="store_true", help="copy the all-patients model into the package")
    args = parser.parse_args()
    if args.fold is not None:
        if args.fold != "all" and args.fold not in map(str, range(FOLDS)):
            parser.error(f"--fold must be 0-{FOLDS - 1} or all")
        train_fold(args.fold, args.resume)
    if args.evaluate is not None:
        evaluate_fold(args.evaluate)
    if args.report:
        report()
    if args.ship:
        ship()


if __name__ == "__main__":
    cli()
