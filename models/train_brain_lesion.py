"""Train, export and evaluate the shipped `brain-lesion` model (lesions on T1 brain MR).

No patient data: every case is the MNI152 2009a T1 template shipped with nilearn, augmented
(random affine + elastic deformation, bias field, contrast change, noise) with simulated
enhancing metastases (soft-edged ellipsoids, 3-20 mm, 1.5-2.3x brighter than the tissue around
them, ring-shaped with a darker necrotic core above 10 mm) inserted at random positions in the
brain, as they appear on contrast-enhanced T1. Held-out cases come from separate seeds.

    python models/train_brain_lesion.py                 # train + export + evaluate + model card
    python models/train_brain_lesion.py --stage evaluate

Reproducible: seed 0, one PyTorch thread, deterministic kernels, a fixed number of steps
(about 10-15 minutes on a shared two-core machine).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from _common import (SHIPPED, UNet, crop_and_flip, dice, export, main, save_metrics, seed_everything,
                     train, write_card)

NAME = "brain-lesion"
SPACING = [2.0, 2.0, 2.0]     # mm, array order
PATCH = [32, 32, 32]
SEED = 0
STEPS = 600
THREADS = 1
N_TRAIN, N_VALIDATION = 30, 12
SMALL_MM = 5.0                # "small" lesion: diameter <= 5 mm

METADATA = {
    "schema_version": 1,
    "name": NAME,
    "version": "1.0",
    "description": "Enhancing brain lesions (metastasis-like) on contrast T1 MR, skull-stripped input",
    "task": "segmentation",
    "input": {"modalities": ["T1"], "spatial_dims": 3, "spacing": SPACING, "orientation": "SPL"},
    "preprocessing": [{"op": "zscore", "mask": "nonzero"}],
    "inference": {"patch_size": PATCH, "overlap": 0.5, "blend": "gaussian", "sigma_scale": 0.125,
                  "batch_size": 2, "padding": "constant"},
    "output": {"activation": "sigmoid", "labels": ["lesion"], "threshold": 0.5},
    "training_data": "simulated metastases in augmented MNI152 2009a symmetric T1 templates "
                     "(Fonov et al., NeuroImage 54 (2011) 313; copyright McConnell Brain Imaging "
                     "Centre, free use with attribution), as shipped by nilearn",
    "licence": "model: Apache-2.0; template: MNI ICBM 2009a licence (attribution, no warranty)",
    "intended_use": "research, demonstrations and decision support only; trained on simulated "
                    "lesions, not a medical device",
}


def template() -> tuple[np.ndarray, "object"]:
    """The MNI152 T1 (skull-stripped) on the model grid, SPL orientation, as an mk.Image."""
    from nilearn.datasets import load_mni152_template

    import medkern as mk
    from medkern.inference import reorient

    t1 = reorient(mk.Image.from_nibabel(load_mni152_template(resolution=1)), "SPL")
    shape = [round(n * s / t) for n, s, t in zip(t1.shape, t1.spacing, SPACING)]
    zoom = [m / n for m, n in zip(shape, t1.shape)]
    x = ndimage.zoom(np.asarray(t1.array, dtype=np.float32), zoom, order=1, grid_mode=True, mode="nearest")
    origin = t1.index_to_world((np.asarray(zoom) ** -1 - 1) / 2)
    return np.clip(x, 0, None), mk.Image(x, SPACING, origin, t1.direction)


@dataclass
class Case:
    image: np.ndarray          # float32 T1, background exactly 0
    lesions: np.ndarray        # int32 lesion ids (0 = none)
    diameters: list[float]     # mm, per lesion id - 1


def _smooth_noise(rng, shape, coarse, amplitude):
    field = rng.normal(size=coarse)
    # Cubic to an eighth of the size, then linear: smooth enough, and fast on the full grid.
    mid = [max(c, s // 8) for c, s in zip(coarse, shape)]
    field = ndimage.zoom(field, [m / c for m, c in zip(mid, coarse)], order=3, grid_mode=True, mode="nearest")
    return ndimage.zoom(field, [s / m for s, m in zip(shape, mid)], order=1, grid_mode=True,
                        mode="nearest") * amplitude


def simulate(base: np.ndarray, rng: np.random.Generator) -> Case:
    shape = base.shape
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.asarray(shape, dtype=np.float32) - 1) / 2
    # Random affine (rotation up to ~8 degrees, scale +-8 %) plus an elastic field of ~2 voxels.
    angles = rng.uniform(-0.14, 0.14, 3)
    rot = np.eye(3)
    for a, (i, j) in zip(angles, [(0, 1), (0, 2), (1, 2)]):
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        rot = rot @ r
    lin = (rot * rng.uniform(0.92, 1.08, 3)[None, :]).astype(np.float32)
    coords = np.einsum("ab,b...->a...", lin, grid - centre[:, None, None, None]) + centre[:, None, None, None]
    coords += np.stack([_smooth_noise(rng, shape, (5, 5, 5), 2.0) for _ in range(3)]).astype(np.float32)
    img = ndimage.map_coordinates(base, coords, order=1, mode="constant").astype(np.float32)
    brain = ndimage.binary_erosion(img > 0.05, iterations=2)

    lesions = np.zeros(shape, np.int32)
    diameters: list[float] = []
    candidates = np.argwhere(brain)
    for _ in range(int(rng.integers(2, 7))):
        small = rng.random() < 0.5
        d_mm = rng.uniform(3.0, SMALL_MM) if small else rng.uniform(SMALL_MM, 20.0)
        c = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, 3)
        if lesions[tuple(np.round(c).astype(int))]:
            continue
        radii = d_mm / 2 * rng.uniform(0.85, 1.15, 3) / np.asarray(SPACING)
        box = tuple(slice(max(int(ci - r - 2), 0), int(ci + r + 3)) for ci, r in zip(c, radii))
        dist = np.sqrt(sum(((grid[a][box] - c[a]) / radii[a]) ** 2 for a in range(3)))
        # Partial volume: a soft edge one voxel wide; the label holds the voxels at least half inside.
        fraction = np.clip(0.5 - (dist - 1) * np.min(radii), 0, 1) * brain[box]
        inside = fraction >= 0.5
        if not inside.any():
            inside[np.unravel_index(np.argmax(fraction + (dist == dist.min())), inside.shape)] = True
        lesions[box][inside & (lesions[box] == 0)] = len(diameters) + 1
        diameters.append(float(d_mm))
        # Enhancing metastases: solid when small, a ring around a necrotic core above 10 mm.
        gain = np.full(dist.shape, rng.uniform(1.5, 2.3), np.float32)
        if d_mm > 10:
            gain[dist < rng.uniform(0.4, 0.7)] = rng.uniform(0.5, 0.8)
        img[box] *= 1 + (gain - 1) * fraction.astype(np.float32)
    inside_head = img > 0
    # Bias field (smooth multiplicative, +-20 %), contrast (gamma), Rician-like noise inside the head.
    img *= np.exp(_smooth_noise(rng, shape, (3, 3, 3), 0.12)).astype(np.float32)
    img = np.power(np.clip(img, 0, None), rng.uniform(0.75, 1.4)).astype(np.float32)
    sigma = rng.uniform(0.01, 0.05) * float(img.max())
    noisy = np.hypot(img + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape)).astype(np.float32)
    img = np.where(inside_head, noisy, 0).astype(np.float32)
    return Case(img, lesions, diameters)


def preprocess(x: np.ndarray) -> np.ndarray:
    import medkern as mk

    return mk.normalize(x, "zscore", mask=x != 0)


def sampler(cases: list[Case], rng: np.random.Generator, batch: int = 2):
    inputs = [preprocess(c.image) for c in cases]

    def crop(n):
        x, y = inputs[n], cases[n].lesions > 0
        if rng.random() < 0.75:  # centre on a lesion: most are small and rare
            fg = np.argwhere(cases[n].lesions == rng.integers(1, len(cases[n].diameters) + 1))
            if len(fg) == 0:
                fg = np.argwhere(y)
            centre = fg[rng.integers(len(fg))] + rng.integers(-10, 11, 3)
        else:
            centre = None
        return crop_and_flip(x, y, PATCH, centre, rng)

    def sample():
        pairs = [crop(int(rng.integers(len(cases)))) for _ in range(batch)]
        return (np.stack([p[0][None] for p in pairs]).astype(np.float32),
                np.stack([p[1] for p in pairs]).astype(np.float32))

    return sample


def stage_train() -> None:
    rng = seed_everything(SEED, THREADS)
    base, _ = template()
    t0 = time.perf_counter()
    cases = [simulate(base, np.random.default_rng([SEED, n])) for n in range(N_TRAIN)]
    print(f"{len(cases)} simulated training cases in {time.perf_counter() - t0:.0f} s", flush=True)
    net = UNet(1, 1, (8, 16, 32))
    log = train(net, sampler(cases, rng), steps=STEPS, sigmoid=True)
    print(log)
    export(net, 1, PATCH, dict(METADATA, metrics={"training": log}), NAME)


def lesion_metrics(pred: np.ndarray, case: Case) -> dict:
    detected = [bool(pred[case.lesions == i + 1].any()) for i in range(len(case.diameters))]
    components, n = ndimage.label(pred)
    false_positives = sum(1 for i in range(1, n + 1) if not case.lesions[components == i].any())
    return {"dice": dice(pred, case.lesions > 0), "detected": detected, "false_positives": false_positives}


def stage_evaluate() -> dict:
    import medkern as mk

    model = mk.models.load(NAME)
    base, grid = template()
    rows = []
    for n in range(N_VALIDATION):
        case = simulate(base, np.random.default_rng([SEED + 1000, n]))
        pred = model.predict(grid.with_array(case.image))
        rows.append((case, lesion_metrics(pred.labels.array > 0, case)))
        print(n, round(rows[-1][1]["dice"], 3), rows[-1][1]["detected"], flush=True)
    diam = np.concatenate([c.diameters for c, _ in rows])
    hit = np.concatenate([m["detected"] for _, m in rows])
    small = diam <= SMALL_MM
    dices = [m["dice"] for _, m in rows]
    metrics = {
        "validation_cases": N_VALIDATION,
        "dice_median": round(float(np.median(dices)), 4),
        "dice_mean": round(float(np.mean(dices)), 4),
        "dice_per_case": [round(d, 4) for d in dices],
        "lesions": int(len(diam)),
        "sensitivity": round(float(hit.mean()), 4),
        "small_lesions": int(small.sum()),
        "sensitivity_small_le_5mm": round(float(hit[small].mean()), 4),
        "sensitivity_large_gt_5mm": round(float(hit[~small].mean()), 4),
        "false_positives_per_case": round(float(np.mean([m["false_positives"] for _, m in rows])), 3),
        "training": model.metadata["metrics"].get("training"),
        "evaluated": dt.date.today().isoformat(),
        "evaluation": "mk.Model.predict on held-out simulated cases (seeds 1000+n), 2 mm grid",
    }
    save_metrics(NAME, metrics)
    model_card(metrics)
    return metrics


def model_card(m: dict) -> None:
    size = (SHIPPED / f"{NAME}.onnx").stat().st_size / 1e6
    card = f"""# Model card: `{NAME}`

**Task**: segmentation of enhancing focal brain lesions (metastasis-like) on skull-stripped,
contrast-enhanced T1-weighted MR.
Output: sigmoid lesion probability; labels = probability >= 0.5.
`mk.models.load("{NAME}").predict(t1)` returns both on the T1's own grid.

**Intended use**: research, demonstrations (the `medkern demo`) and decision support only. Trained
on *simulated* lesions in a template brain: it has never seen a real metastasis, oedema, a
resection cavity or a skull. Not a medical device.

## Data, licence and attribution
- MNI152 2009a symmetric T1 template (Fonov V. et al., "Unbiased average age-appropriate atlases
  for pediatric studies", NeuroImage 54 (2011) 313; Fonov et al., NeuroImage 47 (2009) S102),
  copyright McConnell Brain Imaging Centre, Montreal Neurological Institute, freely usable with
  attribution; read offline from the nilearn package.
- Cases: random affine and elastic deformation, smooth multiplicative bias field, gamma contrast
  change and Rician-like noise; 2-6 soft-edged ellipsoids per case, diameter 3-20 mm (half of them
  <= {SMALL_MM:g} mm), 1.5-2.3x brighter than the tissue around them, those above 10 mm as a ring
  around a darker necrotic core, with partial volume at the 2 mm model grid. {N_TRAIN}
  training cases (seeds 0..{N_TRAIN - 1}), {N_VALIDATION} held-out cases from separate seeds.
- Model weights: Apache-2.0, like medkern.

## Model
3D U-Net (channels 8/16/32, instance norm, leaky ReLU), {size:.2f} MB ONNX. Input: T1 reoriented to
SPL, resampled to {SPACING} mm, z-score over the non-zero (brain) voxels. Sliding window {PATCH}
voxels, overlap 0.5, Gaussian blending. Dice + binary cross-entropy, Adam, lesion-centred
oversampling, flips; seed {SEED}, {THREADS} thread(s) ({m["training"]["steps"]} steps,
{m["training"]["seconds"]} s). Reproduce with `python models/train_brain_lesion.py`.

## Validation ({N_VALIDATION} held-out simulated cases, {m["lesions"]} lesions)

| metric | value |
|---|---|
| Dice, median (mean) | {m["dice_median"]:.3f} ({m["dice_mean"]:.3f}) |
| lesion-level sensitivity, all | {m["sensitivity"]:.3f} |
| sensitivity, small lesions <= {SMALL_MM:g} mm ({m["small_lesions"]}) | {m["sensitivity_small_le_5mm"]:.3f} |
| sensitivity, lesions > {SMALL_MM:g} mm | {m["sensitivity_large_gt_5mm"]:.3f} |
| false-positive components per case | {m["false_positives_per_case"]:.2f} |

A lesion counts as detected when any predicted voxel falls inside it.
"""
    write_card(NAME, card, m)


if __name__ == "__main__":
    main(__doc__, stage_train, stage_evaluate)
