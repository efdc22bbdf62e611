"""Static INT8 quantisation of a medkern model, calibrated on the model's own preprocessed inputs.

ONNX Runtime's ``quantize_static`` in QDQ format: per-channel signed weights in a reduced (7-bit)
range, so that CPUs without VNNI do not saturate, and unsigned 8-bit activations (the U8S8 form
the x86 kernels run; ONNX Runtime fuses each
``DequantizeLinear -> Conv -> QuantizeLinear`` into one integer ``QLinearConv`` when the session
is created). The medkern graph rewrites (:mod:`medkern.inference.graph`) are applied first, so
that the single-slope ``PRelu`` of MONAI blocks is a quantisable ``LeakyRelu`` and a small
segmentation-head ``ConvTranspose`` is a ``Conv``. Normalisation layers that do not fold into a
convolution (instance and group norm) stay in float32 between a dequantise and a quantise.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from medkern._progress import Progress
from medkern._typing import ProgressArg
from medkern.errors import ModelError
from medkern.image import Image

__all__ = ["quantize"]

_CALIBRATE_METHODS = ("minmax", "percentile", "entropy")


def quantize(model: str | os.PathLike[str], calibration: Sequence[Any], out: str | os.PathLike[str], *,
             patches_per_image: int = 8, calibrate_method: str = "minmax", validation: Sequence[Any] | None = None,
             min_agreement: float = 0.995, seed: int = 0, progress: ProgressArg = None) -> Path:
    """Write a static INT8 copy of a model, calibrated on patches of its own preprocessed inputs.

    Each calibration image goes through the model's preprocessing (reorientation, resampling,
    intensity operations, as :meth:`medkern.Model.predict` does); ``patches_per_image`` patches of the
    metadata's ``patch_size`` are drawn from it at seeded random positions (padded as the sliding
    window pads), and ONNX Runtime's ``quantize_static`` records the range of every activation on
    them. The result is QDQ ONNX with per-channel int8 weights and uint8 activations, the form
    ONNX Runtime's CPU kernels run fastest with AVX-512 VNNI. The medkern metadata is kept, with
    ``"precision": "int8"`` and the calibration settings under ``"quantization"``; the file is
    written atomically. Loading it needs nothing new: ``mk.Model(out)``.

    INT8 is lossy. With ``validation`` images, FP32 and INT8 predictions are compared before
    anything is written: for every image and foreground label the Dice overlap of the two label
    maps must reach ``min_agreement``, else :class:`medkern.ModelError` is raised and nothing is
    written. The lowest agreement is stored in the metadata (``quantization.min_agreement``).

    Parameters
    ----------
    model : str or os.PathLike
        The float32 ONNX model, with medkern metadata (a dense task: segmentation or detection).
    calibration : sequence of Image, of tuple of Image, or of numpy.ndarray
        Calibration cases, as :meth:`medkern.Model.predict_many` takes them (one Image, or one per input
        channel). A numpy array is taken as already preprocessed, ``(channels, *spatial)`` on
        the model grid.
    out : str or os.PathLike
        Where to write the INT8 model.
    patches_per_image : int, optional
        Patches drawn from each calibration case.
    calibrate_method : {"minmax", "percentile", "entropy"}, optional
        How activation ranges are set from the calibration patches (ONNX Runtime's
        ``CalibrationMethod``).
    validation : sequence of Image or of tuple of Image, optional
        Cases on which the INT8 labels are checked against the FP32 labels before writing.
    min_agreement : float, optional
        The lowest Dice overlap between FP32 and INT8 label maps accepted on ``validation``.
    seed : int, optional
        Seed of the patch positions.
    progress : bool, callable or None, optional
        Stages ``"calibrate"`` and ``"validate"``.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    medkern.ModelError
        The model is unreadable, has no medkern metadata or is a classification model, or the
        INT8 labels disagree with FP32 on ``validation``.
    ValueError
        No calibration cases, or an argument out of range.
    FileNotFoundError
        No model file at ``model``.

    See Also
    --------
    medkern.Model : Loads the INT8 model as any other.
    medkern.sliding_window : The patches the model runs on.

    Examples
    --------
    >>> ct = np.full((24, 64, 64), -100, np.int16)
    >>> k, j, i = np.mgrid[:24, :64, :64]
    >>> ct[((k - 12) * 3) ** 2 + (j - 32) ** 2 + (i - 32) ** 2 < 15 ** 2] = 60
    >>> img = mk.Image(ct, spacing=(3.0, 1.0, 1.0))
    >>> path = mk.inference.quantize(mk.models.path("sarcoma-ct"), [img], "ct-int8.onnx",
    ...                              patches_per_image=2)
    >>> int8 = mk.Model(path, threads=1)
    >>> int8.metadata["precision"], int8.metadata["quantization"]["activations"]
    ('int8', 'uint8')
    >>> int(int8.predict(img).labels.array.max())
    1
    """
    from medkern.inference.model import Model

    source = Path(model)
    if not source.is_file():
        raise FileNotFoundError(f"quantize: no model file at {source}")
    if isinstance(patches_per_image, bool) or not isinstance(patches_per_image, int) or patches_per_image < 1:
        raise ValueError(f"quantize: patches_per_image must be a positive integer, got {patches_per_image!r}")
    if calibrate_method not in _CALIBRATE_METHODS:
        raise ValueError(f"quantize: calibrate_method must be one of {_CALIBRATE_METHODS}, got {calibrate_method!r}")
    if not 0.0 <= float(min_agreement) <= 1.0:
        raise ValueError(f"quantize: min_agreement must be in [0, 1], got {min_agreement!r}")
    cases = list(calibration)
    if not cases:
        raise ValueError("quantize: calibration is empty; give the images the model will see (a few cases)")
    fp32 = Model(source, threads=1)
    meta = fp32._require_metadata()
    if meta["task"] == "classification":
        raise ModelError(f"{source}: quantize calibrates on sliding-window patches; {meta['name']!r} is a "
                         "classification model")
    if meta.get("precision", "fp32") != "fp32":  # absent: float32
        raise ModelError(f"{source}: {meta['name']!r} is already {meta['precision']}; quantize its float32 model")
    with Progress(progress, "quantize") as prog:
        prog.update("calibrate", 0.0)
        patches = list(_calibration_patches(fp32, cases, patches_per_image, seed))
        proto = _quantized_proto(source, fp32.inputs[0].name, patches, calibrate_method)
        settings = {"format": "QDQ", "weights": "int8 per channel", "activations": "uint8",
                    "calibrate_method": calibrate_method, "calibration_cases": len(cases),
                    "calibration_patches": len(patches), "seed": seed}
        int8_meta = dict(meta, precision="int8", quantization=settings)
        if validation is not None:
            prog.update("validate", 0.5)
            int8_meta["quantization"]["min_agreement"] = _check_agreement(
                fp32, proto, int8_meta, list(validation), float(min_agreement), source)
        from medkern.inference.metadata import write_model_metadata
        from medkern.io._atomic import atomic_path

        proto = write_model_metadata(proto, int8_meta)
        target = Path(out)
        with atomic_path(target) as tmp:
            tmp.write_bytes(proto.SerializeToString())
    return target


def _calibration_patches(model: Any, cases: Sequence[Any], per_case: int, seed: int) -> Iterator[np.ndarray]:
    """``per_case`` patches ``(1, C, *patch_size)`` of each preprocessed case, at seeded random
    positions; a case smaller than the patch is padded as :func:`medkern.sliding_window` pads it."""
    from medkern.inference.sliding import _PADDING

    inf = model.metadata["inference"]
    roi = tuple(inf["patch_size"])
    rng = np.random.default_rng(seed)
    for n, case in enumerate(cases):
        if isinstance(case, np.ndarray):
            x = np.asarray(case, dtype=np.float32)
            if x.ndim != 1 + len(roi) or x.shape[0] != model.metadata["input"]["channels"]:
                raise ValueError(f"quantize: calibration[{n}] is an array of shape {x.shape}; a preprocessed "
                                 f"case is (channels={model.metadata['input']['channels']}, *spatial) with "
                                 f"{len(roi)} spatial axes")
        else:
            channels = tuple(case) if isinstance(case, (tuple, list)) else (case,)
            if not all(isinstance(c, Image) for c in channels):
                raise TypeError(f"quantize: calibration[{n}] must be an Image, a tuple of Images or a "
                                f"preprocessed numpy array, got {type(case).__name__}")
            x = model._pipeline._prepare(channels).array
        diff = [max(r - s, 0) for r, s in zip(roi, x.shape[1:])]
        if any(diff):
            extra = {"constant_values": 0.0} if inf["padding"] == "constant" else {}
            x = np.pad(x, [(0, 0)] + [(d // 2, d - d // 2) for d in diff], mode=_PADDING[inf["padding"]], **extra)
        for _ in range(per_case):
            start = [int(rng.integers(0, s - r + 1)) for s, r in zip(x.shape[1:], roi)]
            window = (slice(None),) + tuple(slice(s, s + r) for s, r in zip(start, roi))
            yield np.ascontiguousarray(x[window])[None]


def _quantized_proto(source: Path, input_name: str, patches: list[np.ndarray], method: str) -> Any:
    """The QDQ ModelProto of ``source`` (graph rewrites first), calibrated on ``patches``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from medkern.inference._session import _check_external_data
    from medkern.inference.graph import optimize_graph

    try:
        proto = onnx.load_model(str(source))
    except Exception as exc:  # DecodeError, ValueError, OSError: not ONNX, truncated
        raise ModelError(f"{source} is not a readable ONNX model (not ONNX, truncated or corrupted): "
                         f"{' '.join(str(exc).split())[:300]}") from None
    _check_external_data(proto, str(source), str(source))
    optimize_graph(proto)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(patches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.items, None)
            return None if x is None else {input_name: x}

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    with tempfile.TemporaryDirectory(prefix="medkern-quantize-") as folder:
        fp32_path, int8_path = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        onnx.save_model(proto, str(fp32_path))
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its advice (pre-processing, per-channel axes) is logged on the root logger
        try:
            quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            # 7-bit weights: x86 CPUs without VNNI multiply u8 x s8 with VPMADDUBSW,
                            # whose 16-bit pair sums saturate with full 8-bit weights (labels then
                            # change, Dice 0.86 on an AVX2 machine). A model quantised anywhere may
                            # run on such a CPU, so the range is always reduced.
                            reduce_range=True,
                            calibrate_method=methods[method],
                            extra_options={"CalibTensorRangeSymmetric": False,
                                           "CalibMovingAverage": method == "minmax"})
        except Exception as exc:  # onnxruntime/onnx raise their own types for graphs they cannot handle
            if isinstance(exc, MemoryError):
                raise
            raise ModelError(f"{source}: ONNX Runtime could not quantise the model: "
                             f"{' '.join(str(exc).split())[:500]}") from None
        finally:
            root.setLevel(level)
        return onnx.load_model(str(int8_path))


def _check_agreement(fp32: Any, proto: Any, meta: dict[str, Any], cases: list[Any], floor: float,
                     source: Path) -> float:
    """The lowest Dice overlap of FP32 and INT8 label maps over ``cases`` and foreground labels;
    ModelError when it is below ``floor``."""
    from medkern.inference.metadata import write_model_metadata
    from medkern.inference.model import Model

    int8 = Model(write_model_metadata(proto.SerializeToString(), meta), threads=fp32.threads)
    lowest = 1.0
    for n, (a, b) in enumerate(zip(fp32.predict_many(cases), int8.predict_many(cases))):
        la, lb = np.asarray(a.labels.array), np.asarray(b.labels.array)
        for label in range(1, len(a.label_names)):
            ma, mb = la == label, lb == label
            total = int(ma.sum()) + int(mb.sum())
            dice = 1.0 if total == 0 else 2.0 * int(np.count_nonzero(ma & mb)) / total
            if dice < floor:
                raise ModelError(f"{source}: INT8 labels of validation case {n} agree with FP32 only to Dice "
                                 f"{dice:.4f} for {a.label_names[label]!r} (min_agreement {floor}); keep the "
                                 "float32 model, or calibrate on more cases")
            lowest = min(lowest, dice)
    return round(lowest, 6)
