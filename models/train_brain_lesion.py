"""Train and export the shipped `brain-lesion` model (enhancing lesions on post-contrast T1 MR).

No patient data: every case is a simulated patient of :mod:`medkern.phantoms` (the MNI152 2009a
T1 template shipped with nilearn, deformed, with enhancing vessels, sinuses and choroid plexus,
metastasis-like lesions of 3-25 mm, 1.5 T / 3 T contrast and noise, 1 mm or 3 mm slices).
Evaluation and the model card: ``models/evaluate_brain_lesion.py`` (also ``--stage evaluate``).

    nohup nice -n 10 python models/train_brain_lesion.py --stage train > /tmp/brain-lesion/train.log &
    python models/train_brain_lesion.py --stage train --resume    # after an interruption
    python models/train_brain_lesion.py --stage evaluate

Three phases: phase 1 trains from scratch on the first 32 simulated patients; phase 2 continues
from its weights on 64, at a lower learning rate and with more patches on the bright non-lesion
structures (vessels, sinuses, choroid plexus) that false lesions come from. Phase 3 is
hard-negative mining: the phase-2 model predicts 48 further simulated patients as a user would
(``Model.predict`` with its post-processing), and training continues on those patients with a
share of the patches centred on its false lesions (mostly choroid plexus in the ventricular atria,
bright ellipsoids like a metastasis that only their surroundings tell apart).

Reproducible: seed 0, one PyTorch thread, deterministic kernels, fixed step counts. The
training cases are cached, and checkpoints written, under ``$MEDKERN_BRAIN_LESION_WORKDIR``
(default /tmp/brain-lesion), never into the repository. About two and a half hours on one core
of a two-core machine (the three phases 135 minutes, mining 11); the model is exported there and
replaces the shipped one only when the evaluation finds it better (or ``--install`` says so).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from _common import UNet, crop_and_flip, export, main, seed_everything, train

NAME = "brain-lesion"
SPACING = [1.5, 1.5, 1.5]     # mm, array order
PATCH = [48, 48, 48]
CHANNELS = (12, 24, 48, 96)
SEED = 0
# One thread, because the thread count is part of the recipe: PyTorch's reductions round
# differently with two threads, and so give other weights. A two-thread run took 1 h 49 min in
# all on the two cores (phases 3,379 + 1,562 + 940 s; two such runs gave bit for bit the same
# phase-1 weights), but its model evaluated worse than the shipped one: sensitivity >= 6 mm
# 0.93 against 0.95, 0.50 false lesions per patient against 0.20, volume error 19 % against 13 %.
# The same two-thread run with each phase ending on an exponential moving average of its weights
# (decay 0.998) fits in about 1 h 46 min and evaluated worse still: 0.86, 0.30 and 15.5 %.
THREADS = 1
BATCH = 2
TRAIN_SEEDS = [SEED * 1_000_000 + n for n in range(64)]
# Phase 3's patients; the tuning (4_000_000..) and evaluation (5_000_000..) seeds stay unseen.
MINING_SEEDS = [6_000_000 + n for n in range(48)]
# (training patients, steps, learning rate, share of patches on lesions, on bright non-lesion
# structures, on the previous phase's false lesions)
PHASES = ((TRAIN_SEEDS[:32], 4300, 2e-3, 0.5, 0.25, 0.0),
          (TRAIN_SEEDS, 2000, 1e-3, 0.4, 0.4, 0.0),
          (MINING_SEEDS, 1200, 5e-4, 0.4, 0.15, 0.3))
# Version 2.1's post-processing (with METADATA's threshold 0.5), chosen on the tuning patients:
# mining sees the false lesions a user of the phase-2 model saw.
MINING_POSTPROCESSING = [{"op": "remove_small", "min_volume_mm3": 10.0}]
WORKDIR = Path(os.environ.get("MEDKERN_BRAIN_LESION_WORKDIR", "/tmp/brain-lesion"))
CANDIDATE = WORKDIR / f"{NAME}.onnx"

METADATA = {
    "schema_version": 1,
    "name": NAME,
    "version": "2.4",
    "description": "Enhancing brain lesions (metastasis-like) on contrast T1 MR, skull-stripped input",
    "task": "segmentation",
    "input": {"modalities": ["T1"], "spatial_dims": 3, "spacing": SPACING, "orientation": "SPL"},
    "preprocessing": [{"op": "zscore", "mask": "nonzero"}],
    # Overlap 0.25: a 1 mm brain in well under 10 s on two cores; the Gaussian blend hides the seams.
    "inference": {"patch_size": PATCH, "overlap": 0.25, "blend": "gaussian", "sigma_scale": 0.125,
                  "batch_size": 2, "padding": "constant"},
    "output": {"activation": "sigmoid", "labels": ["lesion"], "threshold": 0.5},
    "training_data": "simulated metastases, vessels, sinuses and choroid plexus in deformed MNI152 "
                     "2009a symmetric T1 templates (Fonov et al., NeuroImage 54 (2011) 313; copyright "
                     "McConnell Brain Imaging Centre, free use with attribution), as shipped by nilearn; "
                     "medkern.phantoms",
    "licence": "model: Apache-2.0; template: MNI ICBM 2009a licence (attribution, no warranty)",
    "intended_use": "research, demonstrations and decision support only; trained on simulated "
                    "lesions, not a medical device",
}


def model_grid(case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A simulated case as the model sees it (what ``Model.predict`` does before the network):
    z-scored T1, lesion mask and lesion ids on the model grid."""
    import medkern as mk

    image = mk.resample(case.image, SPACING, interpolation="linear", antialias=False)
    x = mk.normalize(image.array, "zscore", mask=image.array != 0)
    fraction = mk.resample(case.lesions.with_array((case.lesions.array > 0).astype(np.float32)), SPACING,
                           interpolation="linear", antialias=False).array
    ids = mk.resample(case.lesions, SPACING, interpolation="nearest").array
    return x.astype(np.float32), fraction >= 0.5, ids.astype(np.int32)


Case = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]   # x, lesion mask, lesion ids, hard negatives


def training_cases(seeds: list[int]) -> list[Case]:
    """Simulated training patients on the model grid, cached in WORKDIR (same seeds, same cases);
    no hard negatives."""
    from medkern.analysis.location import mni_template
    from medkern.phantoms import simulate_brain_metastases

    cache = WORKDIR / "cases"
    cache.mkdir(parents=True, exist_ok=True)
    template = mni_template()
    cases = []
    t0 = time.perf_counter()
    for seed in seeds:
        path = cache / f"train-{seed}.npz"
        if not path.is_file():
            x, y, ids = model_grid(simulate_brain_metastases(template, seed))
            partial = path.with_suffix(".partial.npz")
            np.savez(partial, x=x, y=y, ids=ids)
            os.replace(partial, path)
        with np.load(path) as f:
            cases.append((f["x"], f["y"], f["ids"], np.zeros((0, 3), np.int64)))
    print(f"{len(cases)} simulated training cases in {time.perf_counter() - t0:.0f} s", flush=True)
    return cases


def mining_cases(seeds: list[int], model_path: Path) -> tuple[list[Case], dict]:
    """The patients of ``seeds`` (the evaluation's simulator settings: acquisitions in turn) on the
    model grid, with the voxels of the false lesions that the model at ``model_path`` reports on
    them as a user would (``Model.predict``, declared post-processing included), cached in WORKDIR."""
    from evaluate_brain_lesion import cases as simulated

    import medkern as mk

    cache = WORKDIR / "mining"
    cache.mkdir(parents=True, exist_ok=True)
    model = mk.Model(model_path)
    out, false_lesions = [], 0
    t0 = time.perf_counter()
    for seed in seeds:
        path = cache / f"mining-{seed}.npz"
        if not path.is_file():
            case = simulated([seed], acquisition=_acquisition(seed))[0]
            labels = np.asarray(model.predict(case.image).labels.array)
            components, n = mk.label(labels > 0, connectivity=26)
            touched = np.unique(components[(case.lesions.array > 0) & (components > 0)])
            false = (components > 0) & ~np.isin(components, touched)   # components that touch no lesion
            hard = mk.resample(case.image.with_array(false.astype(np.uint8)), SPACING, interpolation="nearest")
            x, y, ids = model_grid(case)
            partial = path.with_suffix(".partial.npz")
            np.savez(partial, x=x, y=y, ids=ids, hard=np.argwhere(hard.array > 0),
                     false_lesions=n - len(touched))
            os.replace(partial, path)
        with np.load(path) as f:
            out.append((f["x"], f["y"], f["ids"], f["hard"]))
            false_lesions += int(f["false_lesions"])
    print(f"{len(out)} mining cases, {false_lesions} false lesions, in {time.perf_counter() - t0:.0f} s", flush=True)
    return out, {"patients": len(out), "false_lesions": false_lesions}


def _acquisition(seed: int) -> str:
    """The acquisition the evaluation gives a seed (its presets in turn)."""
    from medkern.phantoms import ACQUISITIONS

    return list(ACQUISITIONS)[seed % len(ACQUISITIONS)]


class Sampler:
    """Patches centred on a lesion (a share ``lesion``), on a bright structure that is not a
    lesion (a share ``bright``: vessels, sinuses and choroid plexus are where false lesions come
    from), on a hard negative (a share ``hard``: a false lesion of the previous phase's model; a
    bright structure where the patient has none) or anywhere in the brain; random flips and an
    intensity scale and shift of the z-scored input."""

    def __init__(self, cases: list[Case], rng: np.random.Generator, lesion: float, bright: float,
                 hard: float = 0.0):
        self.cases, self.rng = cases, rng
        self.lesion, self.bright_share, self.hard_share = lesion, bright, hard
        self.lesion_voxels = [[np.argwhere(ids == i) for i in np.unique(ids) if i] for _, _, ids, _ in cases]
        self.hard = [h for *_, h in cases]
        self.bright = []
        self.brain = []
        for x, y, _, _ in cases:
            inside = x != x.flat[0]
            self.brain.append(np.argwhere(inside)[::97])
            threshold = np.percentile(x[inside], 99.0)
            self.bright.append(np.argwhere((x > threshold) & ~y)[::7])

    def crop(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        x, y, _, _ = self.cases[n]
        u = rng.random()
        if u < self.lesion and self.lesion_voxels[n]:
            voxels = self.lesion_voxels[n][int(rng.integers(len(self.lesion_voxels[n])))]
            centre = voxels[rng.integers(len(voxels))] + rng.integers(-12, 13, 3)
        elif u >= 1 - self.hard_share and len(self.hard[n]):
            centre = self.hard[n][rng.integers(len(self.hard[n]))] + rng.integers(-6, 7, 3)
        elif (u < self.lesion + self.bright_share or u >= 1 - self.hard_share) and len(self.bright[n]):
            centre = self.bright[n][rng.integers(len(self.bright[n]))] + rng.integers(-6, 7, 3)
        else:
            centre = self.brain[n][rng.integers(len(self.brain[n]))]
        xs, ys = crop_and_flip(x, y, PATCH, centre, rng)
        return xs * np.float32(rng.uniform(0.85, 1.15)) + np.float32(rng.uniform(-0.2, 0.2)), ys

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self.crop(int(self.rng.integers(len(self.cases)))) for _ in range(BATCH)]
        return (np.stack([p[0][None] for p in pairs]).astype(np.float32),
                np.stack([p[1] for p in pairs]).astype(np.float32))

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def stage_train(resume: bool = False) -> None:
    import torch

    logs = []
    mining: dict = {}
    for phase, (seeds, steps, lr, lesion, bright, hard) in enumerate(PHASES, start=1):
        path = WORKDIR / ("checkpoint.pt" if phase == 1 else f"checkpoint-phase{phase}.pt")
        rng = seed_everything(SEED + phase - 1, THREADS)
        if phase == 1:
            net = UNet(1, 1, CHANNELS)
        if hard:
            # The previous phase's model, exported with the shipped post-processing, finds the
            # false lesions this phase trains on.
            previous = export(net, 1, PATCH, dict(METADATA, postprocessing=MINING_POSTPROCESSING),
                              NAME, out=WORKDIR / f"{NAME}-phase{phase - 1}.onnx")
            cases, mining = mining_cases(seeds, previous)
        state = torch.load(path, weights_only=False) if path.is_file() else None
        if state is not None and state["step"] == steps:
            net.load_state_dict(state["net"])
        else:
            sample = Sampler(cases if hard else training_cases(seeds), rng, lesion, bright, hard)
            print(f"phase {phase}: {steps} steps on {len(seeds)} patients", flush=True)
            train(net, sample, steps=steps, sigmoid=True, lr=lr, checkpoint=path,
                  sampler_state=(sample.state, sample.set_state), resume=resume)
            state = torch.load(path, weights_only=False)
        logs.append(state)
    log = {"steps": sum(s["step"] for s in logs), "seconds": round(sum(s["seconds"] for s in logs)),
           "phase_seconds": [round(s["seconds"]) for s in logs],
           "final_loss": float(np.mean(logs[-1]["losses"][-50:])), "mining": mining}
    print(log, flush=True)
    export(net, 1, PATCH, dict(METADATA, metrics={"training": log}), NAME, out=CANDIDATE)


def stage_evaluate() -> None:
    from evaluate_brain_lesion import evaluate

    evaluate(CANDIDATE if CANDIDATE.is_file() else None)


if __name__ == "__main__":
    main(__doc__, stage_train, stage_evaluate, resumable=True)
