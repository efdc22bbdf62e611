"""Accuracy guard of the reduced-precision options: Dice of the shipped models' float32 and
reduced-precision labels against the truth on their validation cases, and the time of each
``predict``.

    python benchmarks/inference_accuracy.py --variant int8 [--cases N]
    python benchmarks/inference_accuracy.py --variant bf16 [--cases N]   # with onnxruntime-openvino

Variants:

* ``int8``: :func:`medkern.inference.quantize` (static INT8 QDQ) against the float32 model, both
  on ONNX Runtime's CPU provider; calibrated on patients the model trained on.
* ``bf16``: ``mk.Model(..., providers="openvino", precision="bf16")`` against the same provider
  in float32.

Validation cases, as the models' own evaluations define them (``models/``):

* ``sarcoma-ct`` and ``sarcoma-petct``: each IBSI soft-tissue-sarcoma patient predicted by the
  cross-validation fold model that never saw it (``build/<name>/<name>-fold<k>.onnx``, written
  by ``models/train_sarcoma_*.py``), the images on their own grids as a user passes them;
  truth ``CT_mask``. ``--cases N`` takes the first N patients of each fold.
* ``brain-lesion``: the shipped model on the evaluation patients of
  ``models/evaluate_brain_lesion.py`` (simulated, seeds training never used), the first N.

Times: float32 and the variant alternating on the same case, median over the cases.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import medkern as mk

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "models"))
GUARD = 0.005  # largest Dice change accepted (issue: segmentation Dice change <= 0.005 vs FP32)

Case = tuple[Any, np.ndarray]  # (predict's first argument, truth mask on the input grid)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total


def sarcoma_groups(name: str, cases: int | None) -> Iterator[tuple[Path, list[Case], list[Case]]]:
    """Per fold: the fold model, its held-out patients and four of its training patients (INT8
    calibration)."""
    import sarcoma
    from train_sarcoma_ct import RECIPE as CT
    from train_sarcoma_petct import RECIPE as PETCT

    recipe = {"sarcoma-ct": CT, "sarcoma-petct": PETCT}[name]

    def case(patient: str) -> Case:
        images, truth = sarcoma.read_case(recipe, patient)
        return images, np.asarray(truth.array) > 0

    for k, held in enumerate(sarcoma.folds()):
        path = sarcoma.candidate(recipe, str(k))
        if not path.is_file():
            raise FileNotFoundError(f"{path}: run models/train_{name.replace('-', '_')}.py --all first")
        training = [p for p in sarcoma.patients() if p not in held]
        yield path, [case(p) for p in held[:cases]], [case(p) for p in training[:4]]


def brain_groups(cases: int | None) -> Iterator[tuple[Path, list[Case], list[Case]]]:
    from evaluate_brain_lesion import EVALUATION_SEEDS, TUNING_SEEDS
    from evaluate_brain_lesion import cases as simulated

    def as_cases(patients: list[Any]) -> list[Case]:
        return [(p.image, np.asarray(p.lesions.array) > 0) for p in patients]

    yield (mk.models.path("brain-lesion"), as_cases(simulated(EVALUATION_SEEDS[:cases])),
           as_cases(simulated(TUNING_SEEDS[:4])))


def variant_models(variant: str, path: Path, calibration: list[Case], folder: Path) -> tuple[mk.Model, mk.Model]:
    """(float32 reference, variant) for one model file."""
    if variant == "bf16":
        return mk.Model(path, providers="openvino"), mk.Model(path, providers="openvino", precision="bf16")
    int8 = mk.inference.quantize(path, [positional(images) for images, _ in calibration],
                                 folder / f"{path.stem}-int8.onnx", patches_per_image=8)
    return mk.Model(path, providers="cpu"), mk.Model(int8, providers="cpu")


def positional(images: Any) -> Any:
    """Calibration input for quantize: an Image, or a CT + PET pair on the CT's grid."""
    if not isinstance(images, dict):
        return images
    first, *others = images.values()
    return (first, *(mk.resample_to(other, first) for other in others)) if others else first


def predict(model: mk.Model, images: Any) -> mk.Prediction:
    """As a user calls it: several modalities on their own grids of one frame of reference."""
    if isinstance(images, dict) and len(images) > 1:
        return model.predict(images, same_frame=True)
    return model.predict(images)


def predict_labels(model: mk.Model, images: Any) -> np.ndarray:
    return np.asarray(predict(model, images).labels.array) > 0


def timed(model: mk.Model, images: Any) -> float:
    t0 = time.perf_counter()
    predict(model, images)
    return time.perf_counter() - t0


def evaluate(name: str, variant: str, groups: Iterator[tuple[Path, list[Case], list[Case]]], folder: Path) -> dict:
    changes, t_ref, t_var = [], [], []
    for path, cases, calibration in groups:
        reference, reduced = variant_models(variant, path, calibration, folder)
        for images, truth in cases:
            d_ref = dice(predict_labels(reference, images), truth)
            d_var = dice(predict_labels(reduced, images), truth)
            changes.append(d_var - d_ref)
            t_ref.append(timed(reference, images))
            t_var.append(timed(reduced, images))
            print(f"| {name} | {path.stem} | {d_ref:.4f} | {d_var:.4f} | {changes[-1]:+.4f} |", flush=True)
    worst = float(np.max(np.abs(changes)))
    row = {"model": name, "cases": len(changes), "mean_change": float(np.mean(changes)), "max_abs_change": worst,
           "within_guard": sum(abs(c) <= GUARD for c in changes), "predict_fp32_s": float(np.median(t_ref)),
           "predict_variant_s": float(np.median(t_var))}
    print(f"| {name} | **all {len(changes)}** | mean change {row['mean_change']:+.4f} | max abs. change {worst:.4f} "
          f"({row['within_guard']}/{len(changes)} within {GUARD}) | predict FP32 {row['predict_fp32_s']:.2f} s, "
          f"{variant} {row['predict_variant_s']:.2f} s |", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=["int8", "bf16"], default="int8")
    parser.add_argument("--cases", type=int, default=None, help="per sarcoma fold / brain patients (default all)")
    parser.add_argument("models", nargs="*", default=["sarcoma-ct", "sarcoma-petct", "brain-lesion"])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="medkern_precision_"))
    print(f"| model | model file | Dice FP32 | Dice {args.variant} | change |\n|---|---|---|---|---|")
    for name in args.models:
        groups = brain_groups(args.cases) if name == "brain-lesion" else sarcoma_groups(name, args.cases)
        evaluate(name, args.variant, groups, folder)


if __name__ == "__main__":
    main()
