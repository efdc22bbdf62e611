"""The recipe shared by the shipped sarcoma GTV models: `sarcoma-ct` (CT) and `sarcoma-petct`
(CT + FDG-PET in SUV), trained and cross-validated the same way.

Data: all 45 IBSI soft-tissue-sarcoma patients (../shared/data/ibsi/ibsi_validation/nifti; CT,
PET in SUV on the same frame of reference, GTV_Mass on the CT grid; Vallières et al. 2015, TCIA,
CC BY 3.0). Five folds by patient (fold of a patient = its index in sorted order modulo 5): each
patient is predicted by the fold model that never saw it; the model that ships is then trained
on all 45.

Reproducible: seed 0, one PyTorch thread per run (two runs side by side on two cores),
deterministic kernels, fixed step counts; a resumed run ends with the same weights.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from evaluate_sarcoma import markdown_table, max_diameter_mm, summary, t_category
from scipy import ndimage

from _common import (
    REPO,
    SHARED_DATA,
    SHIPPED,
    UNet,
    crop_and_flip,
    dice,
    export,
    save_metrics,
    seed_everything,
    train,
    write_card,
)

DATA = SHARED_DATA / "ibsi" / "ibsi_validation" / "nifti"
FOLDS = 5
SPACING = [4.0, 4.0, 4.0]          # mm, array order (k, j, i)
CHANNELS = (8, 16, 32, 64)
THREADS = 1
SEED = 0
# (patch in voxels, share of patches centred on tumour, steps, learning rate) of each training
# phase. A second phase from these weights on whole-tumour patches (600 steps on [48, 64, 64],
# 192 x 256 x 256 mm, learning rate 1e-3, share 0.33, then predicted with that window) was tried on
# sarcoma-petct: over the 36 patients of folds 0-3 it moved the median Dice from 0.806 to 0.811
# but the median diameter error from 10.4 to 12.9 mm and the T agreement from 88.9 to 86.1 %, so it
# is not part of the recipe.
# Test-time flips (predict(tta=True)) over the same cross-validation of sarcoma-petct: median Dice
# 0.789 -> 0.802 but T agreement 84.4 -> 77.8 %, so the models do not declare them (inference.tta).
# Retrained on an AVX2-only CPU (the shipped weights came from an AVX-512 one, where PyTorch's
# kernels round differently), the same recipe cross-validated sarcoma-petct at Dice 0.790, diameter
# error 15.9 mm and T agreement 77.8 % (card: 0.788, 12.4 mm, 84.4 %): differences of that size are
# training noise. Over those predictions, tumour-probability thresholds 0.3-0.7 instead of the
# argmax, with and without the flips, kept the diameter error within 14.9-16.9 mm and the T
# agreement within 75.6-80.0 %: the diameter is not a matter of where the probability is cut.
PHASES = (([32, 48, 48], 0.2, 2000, 3e-3),)
PATCH = PHASES[-1][0]              # what predict's sliding window uses: 128 x 192 x 192 mm
FILES = {"CT": "CT_image.nii.gz", "PT": "PET_image.nii.gz"}
WINDOWS = {"CT": (40.0, 500.0),    # soft tissue, HU -> [0, 1]
           "PT": (5.0, 10.0)}      # SUV 0..10 -> [0, 1]
UNITS = {"CT": "HU", "PT": "SUV"}
VARIABLES = {"CT": "ct", "PT": "pet"}   # as the cards write the predict call


@dataclass(frozen=True)
class Recipe:
    """One shipped sarcoma model: its name, version and input modalities (CT first)."""

    name: str
    version: str
    modalities: tuple[str, ...]
    history: str = ""          # the card's paragraph on earlier versions, measured on the same patients

    @property
    def work(self) -> Path:
        """Checkpoints (outside the repository)."""
        return Path("/tmp") / self.name

    @property
    def candidates(self) -> Path:
        """Fold models and cross-validation results, before shipping."""
        return REPO / "build" / self.name

    @property
    def metadata(self) -> dict[str, Any]:
        described = " with FDG-PET (SUV)" if "PT" in self.modalities else ""
        images = "CT and FDG-PET (SUV)" if "PT" in self.modalities else "CT"
        return {
            "schema_version": 1,
            "name": self.name,
            "version": self.version,
            "description": f"Gross tumour volume of soft-tissue sarcoma of the extremities on CT{described}",
            "task": "segmentation",
            "input": {"modalities": list(self.modalities), "spatial_dims": 3, "spacing": SPACING,
                      "orientation": "SPL"},
            "preprocessing": [{"op": "window", "center": WINDOWS[m][0], "width": WINDOWS[m][1], "channels": [n]}
                              for n, m in enumerate(self.modalities)],
            "inference": {"patch_size": PATCH, "overlap": 0.5, "blend": "gaussian", "sigma_scale": 0.125,
                          "batch_size": 2, "padding": "constant"},
            "output": {"activation": "softmax", "labels": ["background", "gtv"]},
            # One primary tumour per study: fragments around it would inflate the maximum tumour
            # dimension that the AJCC T category is read from.
            "postprocessing": [{"op": "keep_top", "n": 1, "by": "probability"}],
            "training_data": f"IBSI soft-tissue sarcoma {images} with GTV_Mass contours, 45 patients "
                             "(Vallieres et al., Phys. Med. Biol. 60 (2015) 5471; TCIA "
                             "doi:10.7937/K9/TCIA.2015.7GO2GSKS), images cropped 5 cm around the tumour",
            "licence": "model: Apache-2.0; training data CC BY 3.0 (attribution above)",
            "intended_use": "research and decision support only; not a medical device",
        }


def patients() -> list[str]:
    return sorted(p.name for p in DATA.iterdir() if (p / FILES["CT"]).is_file())


def folds() -> list[list[str]]:
    ids = patients()
    return [ids[k::FOLDS] for k in range(FOLDS)]


def held_out(fold: str) -> list[str]:
    return [] if fold == "all" else folds()[int(fold)]


def read_case(recipe: Recipe, patient: str) -> tuple[dict[str, Any], Any]:
    """The patient's images by modality, each on its own grid, and the GTV mask (CT grid)."""
    import medkern as mk

    images = {m: mk.read(DATA / patient / FILES[m]) for m in recipe.modalities}
    return images, mk.read(DATA / patient / "CT_mask.nii.gz")


def load_case(recipe: Recipe, patient: str) -> tuple[np.ndarray, np.ndarray]:
    """(channels, k, j, i) windowed images and the mask on the model grid (SPL, SPACING): other
    modalities resampled onto the CT grid first (one frame of reference)."""
    import medkern as mk
    from medkern.inference import reorient

    images, mask = read_case(recipe, patient)
    ct = images["CT"]
    on_ct = [ct] + [mk.resample_to(images[m], ct) for m in recipe.modalities[1:]]
    oriented = [reorient(img, "SPL") for img in on_ct]
    mask = reorient(mask, "SPL")
    shape = [max(1, round(n * s / t)) for n, s, t in zip(oriented[0].shape, oriented[0].spacing, SPACING)]
    zoom = [m / n for m, n in zip(shape, oriented[0].shape)]

    def grid(a: np.ndarray) -> np.ndarray:
        return ndimage.zoom(a.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True)

    x = np.stack([mk.window(grid(img.array), *WINDOWS[m]) for m, img in zip(recipe.modalities, oriented)])
    return x.astype(np.float32), (grid(mask.array) > 0.5).astype(np.int64)


def sampler(cases: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, patch: list[int],
            foreground: float, batch: int = 2):
    """Patches centred on a tumour voxel with probability ``foreground`` (nnU-Net's oversampling),
    else anywhere, flipped and with a random linear intensity change."""
    def crop(x, y):   # x: (channels, k, j, i)
        pad = [(0, max(p - n, 0)) for p, n in zip(patch, y.shape)]
        x, y = np.pad(x, [(0, 0)] + pad), np.pad(y, pad)
        if rng.random() < foreground:
            fg = np.argwhere(y)
            centre = fg[rng.integers(len(fg))]
        else:
            centre = None
        xs, ys = crop_and_flip(x, y, patch, centre, rng)
        xs = xs * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05)
        return xs, ys

    def sample():
        pairs = [crop(*cases[rng.integers(len(cases))]) for _ in range(batch)]
        return (np.stack([p[0] for p in pairs]).astype(np.float32),
                np.stack([p[1] for p in pairs]).astype(np.int64))

    return sample


# ----------------------------------------------------------------------------- training

def checkpoint(recipe: Recipe, fold: str, phase: int) -> Path:
    return recipe.work / (f"fold{fold}.pt" if phase == 1 else f"fold{fold}-phase{phase}.pt")


def fit(recipe: Recipe, fold: str, resume: bool) -> None:
    """Each phase on every patient but the fold's, checkpointed every 250 steps and resumable."""
    import torch

    cases: list[tuple[np.ndarray, np.ndarray]] = []
    for phase, (patch, foreground, steps, lr) in enumerate(PHASES, start=1):
        path = checkpoint(recipe, fold, phase)
        if path.is_file() and torch.load(path, weights_only=False)["step"] == steps:
            continue
        if not cases:   # read only when a phase still has steps to run
            cases = [load_case(recipe, p) for p in patients() if p not in held_out(fold)]
            print(f"{len(cases)} training cases loaded", flush=True)
        rng = seed_everything(SEED + phase - 1, THREADS)
        net = UNet(len(recipe.modalities), 2, CHANNELS)
        if phase > 1:
            net.load_state_dict(finished(recipe, fold, phase - 1)["net"])
        state = (lambda g=rng: g.bit_generator.state, lambda s, g=rng: setattr(g.bit_generator, "state", s))
        print(f"phase {phase}: {steps} steps at patch {patch}", flush=True)
        train(net, sampler(cases, rng, patch, foreground), steps=steps, sigmoid=False, lr=lr,
              checkpoint=path, sampler_state=state, resume=resume)


def finished(recipe: Recipe, fold: str, phase: int) -> dict[str, Any]:
    import torch

    steps = PHASES[phase - 1][2]
    state = torch.load(checkpoint(recipe, fold, phase), weights_only=False)
    if state["step"] != steps:
        raise SystemExit(f"{recipe.name} fold {fold}: phase {phase} is at step {state['step']} of {steps}; "
                         "finish it with --resume")
    return state


def training_log(recipe: Recipe, fold: str) -> dict[str, Any]:
    """Steps, seconds (per phase), final loss and patient count of a finished run."""
    states = [finished(recipe, fold, phase) for phase in range(1, len(PHASES) + 1)]
    return {"steps": sum(s["step"] for s in states), "seconds": round(sum(s["seconds"] for s in states)),
            "phase_seconds": [round(s["seconds"]) for s in states],
            "final_loss": round(float(np.mean(states[-1]["losses"][-50:])), 4),
            "patients": len(patients()) - len(held_out(fold))}


def candidate(recipe: Recipe, fold: str) -> Path:
    return recipe.candidates / f"{recipe.name}-fold{fold}.onnx"


def export_fold(recipe: Recipe, fold: str) -> Path:
    """The fold's candidate ONNX from its final checkpoint (what evaluation and shipping read)."""
    net = UNet(len(recipe.modalities), 2, CHANNELS)
    net.load_state_dict(finished(recipe, fold, len(PHASES))["net"])
    recipe.candidates.mkdir(parents=True, exist_ok=True)
    return export(net, len(recipe.modalities), tuple(PATCH),
                  dict(recipe.metadata, metrics={"training": training_log(recipe, fold)}), recipe.name,
                  out=candidate(recipe, fold))


# ----------------------------------------------------------------------------- evaluation

def hd95_mm(a: np.ndarray, b: np.ndarray, spacing: Any) -> float | None:
    """95th percentile of the symmetric surface distance (mm); None when either mask is empty."""
    if not a.any() or not b.any():
        return None
    surface_a = a & ~ndimage.binary_erosion(a)
    surface_b = b & ~ndimage.binary_erosion(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)[surface_b]
    return float(np.percentile(np.concatenate([to_b, to_a]), 95))


def evaluate_fold(recipe: Recipe, fold: int) -> dict[str, Any]:
    """Each of the fold's patients predicted by the fold model as a user calls it: the images on
    their own grids (``same_frame``: the IBSI NIfTI pairs share the CT's frame of reference),
    labels on the CT grid after the declared post-processing."""
    import medkern as mk

    model = mk.Model(export_fold(recipe, str(fold)))
    rows = {}
    for patient in folds()[fold]:
        images, truth = read_case(recipe, patient)
        mask = truth.array > 0
        pred = model.predict(images, same_frame=True).labels
        predicted = pred.array == 1
        true_d = max_diameter_mm(truth.with_array(mask))
        pred_d = max_diameter_mm(pred.with_array(predicted)) if predicted.any() else None
        hd = hd95_mm(predicted, mask, truth.spacing)
        rows[patient] = {
            "fold": fold,
            "dice": round(dice(predicted, mask), 4),
            "hd95_mm": None if hd is None else round(hd, 1),
            "max_diameter_mm": None if pred_d is None else round(pred_d, 1),
            "true_max_diameter_mm": round(true_d, 1),
            # A missed tumour has no diameter: undersized by the whole true diameter (+ 0.0: no -0.0).
            "diameter_error_mm": round(-true_d if pred_d is None else pred_d - true_d, 1) + 0.0,
            "t": t_category(pred_d), "true_t": t_category(true_d),
        }
        print(patient, rows[patient], flush=True)
    (recipe.candidates / f"cv-fold{fold}.json").write_text(json.dumps(rows, indent=1))
    return rows


def report(recipe: Recipe) -> dict[str, Any]:
    """The cross-validation over all 45 patients, recorded in the shipped model and its card."""
    rows: dict[str, Any] = {}
    for k in range(FOLDS):
        rows.update(json.loads((recipe.candidates / f"cv-fold{k}.json").read_text()))
    rows = dict(sorted(rows.items()))
    result = {"per_patient": rows, **summary(rows)}
    hds = [r["hd95_mm"] for r in rows.values() if r["hd95_mm"] is not None]
    result["hd95_median_mm"] = round(float(np.median(hds)), 1) if hds else None
    result["dice_below_0_5"] = sum(r["dice"] < 0.5 for r in rows.values())
    training = {str(k): training_log(recipe, str(k)) for k in range(FOLDS)}
    print(markdown_table(result))
    print(json.dumps({k: v for k, v in result.items() if k != "per_patient"}, indent=1))
    (recipe.candidates / "cv.json").write_text(json.dumps({"cv": result, "training": training}, indent=1))
    return result


REFERENCE_PATIENT = "STS_038"


def reference_case(recipe: Recipe, path: Path) -> dict[str, Any]:
    """The Dice of the model at ``path`` on one patient (a training patient of the shipped model):
    recorded so that a test can check that medkern still reproduces the model's output."""
    import medkern as mk

    images, truth = read_case(recipe, REFERENCE_PATIENT)
    predicted = mk.Model(path).predict(images, same_frame=True).labels.array == 1
    return {"patient": REFERENCE_PATIENT, "dice": round(dice(predicted, truth.array > 0), 4)}


def ship(recipe: Recipe) -> None:
    """Copy the all-patients model into the package with the cross-validation in its metadata."""
    cv = json.loads((recipe.candidates / "cv.json").read_text())
    final = training_log(recipe, "all")
    shutil.copyfile(export_fold(recipe, "all"), SHIPPED / f"{recipe.name}.onnx")
    save_metrics(recipe.name, {
        "cross_validation": cv["cv"], "training": final, "fold_training": cv["training"],
        "reference_case": reference_case(recipe, SHIPPED / f"{recipe.name}.onnx"),
        "evaluated": dt.date.today().isoformat(),
        "evaluation": f"5-fold cross-validation by patient over all 45; mk.Model.{_call(recipe)} "
                      "on the original grids vs the GTV mask, declared post-processing"})
    model_card(recipe, cv["cv"], final, cv["training"])


def _call(recipe: Recipe, vouch: bool = True) -> str:
    """The predict call as the cards write it (the IBSI NIfTI pairs need ``same_frame``)."""
    if len(recipe.modalities) == 1:
        return f"predict({VARIABLES[recipe.modalities[0]]})"
    call = ", ".join(f'"{m}": {VARIABLES[m]}' for m in recipe.modalities)
    return f"predict({{{call}}}{', same_frame=True' if vouch else ''})"


def model_card(recipe: Recipe, result: dict[str, Any], final: dict[str, Any], fold_training: dict[str, Any]) -> None:
    name = recipe.name
    pet = "PT" in recipe.modalities
    size = (SHIPPED / f"{name}.onnx").stat().st_size / 1e6
    per_fold = ", ".join(f"{fold_training[str(k)]['seconds']} s" for k in range(FOLDS))
    within_5mm = sum(abs(r["diameter_error_mm"]) <= 5 for r in result["per_patient"].values())
    counts = {t: sum(r["true_t"] == t for r in result["per_patient"].values()) for t in ("T1", "T2", "T3", "T4")}
    low = sorted((r["dice"], p) for p, r in result["per_patient"].items() if r["dice"] < 0.5)
    windows = "; ".join(f"{m} window centre {WINDOWS[m][0]:g} {UNITS[m]} width {WINDOWS[m][1]:g} {UNITS[m]}"
                        for m in recipe.modalities)
    (patch, foreground, steps, lr), = PHASES
    mm = " x ".join(f"{p * s:.0f}" for p, s in zip(PATCH, SPACING))
    card = f"""# Model card: `{name}`

**Task**: segmentation of the gross tumour volume (GTV) of soft-tissue sarcoma of the extremities
on {"CT with the FDG-PET of the same study" if pet else "CT"}. {"Inputs: CT (HU) and PET (SUV) in one frame of reference. " if pet else ""}\
`mk.models.load("{name}").{_call(recipe, vouch=False)}` returns the probabilities and the label map on the
CT's grid{"; the PET may stay on its own grid: it is resampled once onto the model grid, after the frames of reference are checked (DICOM series) or vouched for (`same_frame=True` for plain images)" if pet else ""}.
`mk.analyze` reads the AJCC 8th T category from the maximum 3D diameter of this segmentation, so
that diameter is validated below as well{"; it picks this model for a study that has a CT and a PET" if pet else ""}.
Output: softmax over (background, gtv).

**Intended use**: research and decision support only. Not a medical device; not validated for
clinical use. Trained on 45 patients of one collection ({"CT and PET" if pet else "CTs"} cropped 5 cm around the
tumour, extremities only): expect failures on anatomy, scanners and tumour types not represented.

## Data, licence and attribution
- IBSI soft-tissue-sarcoma {"CT and FDG-PET (SUV)" if pet else "CT"} with the `GTV_Mass` contour, NIfTI as released
  by the IBSI (`ibsi_validation/nifti`), all 45 patients.
- Vallières M. et al., "A radiomics model from joint FDG-PET and MRI texture features for the
  prediction of lung metastases in soft-tissue sarcomas of the extremities", Phys. Med. Biol. 60
  (2015) 5471; data via The Cancer Imaging Archive, doi:10.7937/K9/TCIA.2015.7GO2GSKS
  (Clark K. et al., J. Digit. Imaging 26 (2013) 1045). Licence of the data: CC BY 3.0.
- Model weights: Apache-2.0, like medkern.

## Model (version {recipe.version})
3D U-Net (channels {"/".join(map(str, CHANNELS))}, {len(CHANNELS) - 1} stride-2 levels, instance norm,
leaky ReLU), {size:.2f} MB ONNX, {len(recipe.modalities)} input channel{"s" if pet else ""}. Images reoriented to SPL and
resampled to {SPACING} mm (array order, linear); {windows}, each mapped to [0, 1]. Sliding window
{PATCH} voxels ({mm} mm), overlap 0.5, Gaussian blending.
Declared post-processing, applied by `predict`: keep the one connected component with the largest
summed tumour probability (one primary tumour per study). Trained with Dice + cross-entropy, Adam
(learning rate {lr:g}, poly decay), {steps} steps of two {patch} patches, a share {foreground:g} of them
centred on tumour, flips and intensity scaling. Seed {SEED}, {THREADS} thread per run: the shipped
model on all {final["patients"]} patients in {final["seconds"]} s, the fold models in {per_fold} (wall
times with up to five runs sharing two cores; one run alone on a core takes about 11 minutes).
Reproduce with `python models/train_{name.replace("-", "_")}.py --all` (see models/sarcoma.py;
`--resume` continues an interrupted run).

## Validation: 5-fold cross-validation by patient over all 45

Each patient is predicted by the fold model that never saw it (fold = index in sorted order
modulo 5), with `{_call(recipe)}` on the original grids and the declared
post-processing. Dice against the GTV mask, maximum 3D diameter (`mk.regions(...)[0].max_diameter_mm`)
of prediction and mask, and the AJCC 8th T category read from each by the shipped
`sarcoma-extremity` guideline (T1 <= 50 mm, T2 <= 100, T3 <= 150, T4 > 150).

{markdown_table(result)}

Median Dice {result["dice_median"]:.3f} (lowest {result["dice_min"]:.3f}; {result["dice_below_0_5"]} patient(s)
below 0.5); median 95th-percentile Hausdorff distance {result["hd95_median_mm"]} mm; median absolute
error of the maximum diameter {result["diameter_abs_error_median_mm"]:.1f} mm (signed
{result["diameter_error_median_mm"]:+.1f} mm); T category agreement {100 * result["t_agreement"]:.1f} %.
True T categories: {", ".join(f"{t} {n}" for t, n in counts.items())}.

{recipe.history}**Limitations**: a small network at 4 mm, trained for a few thousand steps on CPU so that it ships
in the package and retrains within the two-hour budget. The collection holds no T1 tumour, so
that category is untested; the cross-validation folds share scanners and protocols, so they
estimate performance on this collection, not elsewhere. {"The PET must be in SUV: `mk.analyze` and `predict` convert a DICOM PET series with `mk.suv` (body weight); a NIfTI PET is taken as given. " if pet else ""}\
{"Below a Dice of 0.5: " + ", ".join(f"{p} ({d:.2f})" for d, p in low) + "; the largest tumours exceed the network's window. " if low else ""}\
The maximum diameter is within 5 mm for {within_5mm} of the {result["patients"]} patients, so the T category read from it is a
screening aid to check against the contour.
"""
    write_card(name, card, {k: v for k, v in result.items() if k != "per_patient"})


# ----------------------------------------------------------------------------- command line

def cli(recipe: Recipe, doc: str) -> None:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fold", help="train fold 0-4, or 'all' for the model that ships")
    parser.add_argument("--resume", action="store_true", help="continue a run from its checkpoints")
    parser.add_argument("--evaluate", type=int, help="predict a fold's patients with its fold model")
    parser.add_argument("--report", action="store_true", help="the cross-validation table over all folds")
    parser.add_argument("--ship", action="store_true", help="copy the all-patients model into the package")
    parser.add_argument("--all", action="store_true",
                        help="every fold, its evaluation, the report, the all-patients model and shipping, in turn")
    args = parser.parse_args()
    if args.all:
        for fold in [*map(str, range(FOLDS)), "all"]:
            fit(recipe, fold, args.resume)
            if fold != "all":
                evaluate_fold(recipe, int(fold))
        report(recipe)
        ship(recipe)
        return
    if args.fold is not None:
        if args.fold != "all" and args.fold not in map(str, range(FOLDS)):
            parser.error(f"--fold must be 0-{FOLDS - 1} or all")
        fit(recipe, args.fold, args.resume)
        print(training_log(recipe, args.fold), flush=True)
        export_fold(recipe, args.fold)
    if args.evaluate is not None:
        evaluate_fold(recipe, args.evaluate)
    if args.report:
        report(recipe)
    if args.ship:
        ship(recipe)
