"""Train and export the shipped `brain-lesion` model (enhancing lesions on post-contrast T1 MR).

No patient data: every case is a simulated patient of :mod:`medkern.phantoms` (the MNI152 2009a
T1 template shipped with nilearn, deformed, with enhancing vessels, sinuses and choroid plexus,
metastasis-like lesions of 3-25 mm, 1.5 T / 3 T contrast and noise, 1 mm or 3 mm slices).
Evaluation and the model card: ``models/evaluate_brain_lesion.py`` (also ``--stage evaluate``).

    nohup nice -n 10 python models/train_brain_lesion.py --stage train > /tmp/brain-lesion/train.log &
    python models/train_brain_lesion.py --stage train --resume    # after an interruption
    python models/train_brain_lesion.py --stage evaluate

Two phases: phase 1 trains from scratch on the first 32 simulated patients; phase 2 continues
from its weights on 64, at a lower learning rate and with more patches on the bright non-lesion
structures (vessels, sinuses, choroid plexus) that false lesions come from.

Reproducible: seed 0, one PyTorch thread, deterministic kernels, fixed step counts. The
training cases are cached, and checkpoints written, under ``$MEDKERN_BRAIN_LESION_WORKDIR``
(default /tmp/brain-lesion), never into the repository. About 100 minutes on one core of a
two-core machine; the model is exported there and replaces the shipped one only when the
evaluation finds it better.
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
THREADS = 1
BATCH = 2
TRAIN_SEEDS = [SEED * 1_000_000 + n for n in range(64)]
# (training patients, steps, learning rate, share of patches on lesions, on bright non-lesion structures)
PHASES = ((TRAIN_SEEDS[:32], 4300, 2e-3, 0.5, 0.25),
          (TRAIN_SEEDS, 2000, 1e-3, 0.4, 0.4))
WORKDIR = Path(os.environ.get("MEDKERN_BRAIN_LESION_WORKDIR", "/tmp/brain-lesion"))
CANDIDATE = WORKDIR / f"{NAME}.onnx"

METADATA = {
    "schema_version": 1,
    "name": NAME,
    "version": "2.1",
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


def training_cases(seeds: list[int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Simulated training patients on the model grid, cached in WORKDIR (same seeds, same cases)."""
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
            cases.append((f["x"], f["y"], f["ids"]))
    print(f"{len(cases)} simulated training cases in {time.perf_counter() - t0:.0f} s", flush=True)
    return cases


class Sampler:
    """Patches centred on a lesion (a share ``lesion``), on a bright structure that is not a
    lesion (a share ``bright``: vessels, sinuses and choroid plexus are where false lesions come
    from) or anywhere in the brain; random flips and an intensity scale and shift of the z-scored
    input."""

    def __init__(self, cases: list[tuple[np.ndarray, np.ndarray, np.ndarray]], rng: np.random.Generator,
                 lesion: float, bright: float):
        self.cases, self.rng = cases, rng
        self.lesion, self.bright_share = lesion, bright
        self.lesion_voxels = [[np.argwhere(ids == i) for i in np.unique(ids) if i] for _, _, ids in cases]
        self.bright = []
        self.brain = []
        for x, y, _ in cases:
            inside = x != x.flat[0]
            self.brain.append(np.argwhere(inside)[::97])
            threshold = np.percentile(x[inside], 99.0)
            self.bright.append(np.argwhere((x > threshold) & ~y)[::7])

    def crop(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        x, y, _ = self.cases[n]
        u = rng.random()
        if u < self.lesion and self.lesion_voxels[n]:
            voxels = self.lesion_voxels[n][int(rng.integers(len(self.lesion_voxels[n])))]
            centre = voxels[rng.integers(len(voxels))] + rng.integers(-12, 13, 3)
        elif u < self.lesion + self.bright_share and len(self.bright[n]):
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
    for phase, (seeds, steps, lr, lesion, bright) in enumerate(PHASES, start=1):
        path = WORKDIR / ("checkpoint.pt" if phase == 1 else f"checkpoint-phase{phase}.pt")
        rng = seed_everything(SEED + phase - 1, THREADS)
        if phase == 1:
            net = UNet(1, 1, CHANNELS)
        state = torch.load(path, weights_only=False) if path.is_file() else None
        if state is not None and state["step"] == steps:
            net.load_state_dict(state["net"])
        else:
            sample = Sampler(training_cases(seeds), rng, lesion, bright)
            print(f"phase {phase}: {steps} steps on {len(seeds)} patients", flush=True)
            train(net, sample, steps=steps, sigmoid=True, lr=lr, checkpoint=path,
                  sampler_state=(sample.state, sample.set_state), resume=resume)
            state = torch.load(path, weights_only=False)
        logs.append(state)
    log = {"steps": sum(s["step"] for s in logs), "seconds": round(sum(s["seconds"] for s in logs)),
           "phase_seconds": [round(s["seconds"]) for s in logs],
           "final_loss": float(np.mean(logs[-1]["losses"][-50:]))}
    print(log, flush=True)
    export(net, 1, PATCH, dict(METADATA, metrics={"training": log}), NAME, out=CANDIDATE)


def stage_evaluate() -> None:
    from evaluate_brain_lesion import evaluate

    evaluate(CANDIDATE if CANDIDATE.is_file() else None)


if __name__ == "__main__":
    main(__doc__, stage_train, stage_evaluate, resumable=True)
