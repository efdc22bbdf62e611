"""The medkern model-metadata schema, stored as one JSON entry in an ONNX file's metadata_props.

Version 1 (key ``"medkern"``). Per-axis values are in array-axis order, millimetres::

    {
      "schema_version": 1,
      "name": "sarcoma-ct", "version": "1.0", "description": "...",
      "task": "segmentation" | "classification" | "detection",
      "input": {
        "modalities": ["CT"],            # one entry per input channel
        "channels": 1,                   # optional, must equal len(modalities)
        "spatial_dims": 3,
        "spacing": [3.0, 2.0, 2.0],      # model grid in mm; null: use the image's own grid
        "antialias": false,              # Gaussian pre-smoothing when downsampling (mk.resample)
        "orientation": "SPL"             # null: keep the image's axes (see below)
      },
      "preprocessing": [                 # applied in order; "channels": [..] restricts an op
        {"op": "clip", "low": -1000, "high": 1000},
        {"op": "window", "center": 40, "width": 400},              # -> [0, 1] (mk.window)
        {"op": "zscore", "mask": "all" | "nonzero"},               # mk.normalize "zscore"
        {"op": "percentile", "low": 0.5, "high": 99.5, "clip": false},
        {"op": "scale", "scale": 0.001, "offset": 0.0}             # x * scale + offset
      ],
      "inference": {"patch_size": [64, 64, 64], "overlap": 0.5, "blend": "gaussian",
                    "sigma_scale": 0.125, "batch_size": 4, "padding": "constant",
                    "tta": false},       # test-time flips by default (predict(tta=None))
      "output": {"activation": "softmax" | "sigmoid" | "none",
                 "labels": ["background", "tumour"], "threshold": 0.5},
      "postprocessing": [                # optional; applied in order to the label map on the
        {"op": "remove_small", "min_volume_mm3": 20.0},            # input grid (26-/8-connected
        {"op": "keep_top", "n": 1, "by": "probability" | "volume"}, # components of each label)
        {"op": "classify_components", "features": ["log_volume_mm3", "max_probability"],
         "weights": [0.8, 6.0], "bias": -5.0, "min_score": 0.5, "shell_mm": 3.0}
      ],
      "training_data": "...", "licence": "...", "intended_use": "...",
      "metrics": {"dice_median": 0.8, ...},
      "precision": "fp32" | "int8",      # optional, default fp32; int8 models are written by
      "quantization": {...}              # medkern.inference.quantize with its settings here
    }

``orientation`` names, for each array axis in order, the LPS direction it increases toward
(``L``/``R`` for x, ``P``/``A`` for y, ``S``/``I`` for z). medkern's default orientation (and
SimpleITK's identity direction) is ``"SPL"`` in 3D and ``"PL"`` in 2D. For classification models
``patch_size`` is the fixed network input: the preprocessed image is centre-cropped or padded to it.
Detection models are dense (a heat map per class) and are blended like segmentation.
``postprocessing`` is the model's declared clean-up, part of the model as its authors validated it
(dense tasks only): ``remove_small`` drops components smaller than a physical volume (area in 2D),
``keep_top`` keeps the ``n`` components with the largest summed probability of their own class
(``"probability"``) or the largest volume (``"volume"``), and ``classify_components`` keeps the
components whose logistic score ``1 / (1 + exp(-(bias + weights . features)))`` reaches
``min_score``: a false-positive reduction stage as in computer-aided detection, fitted by the
model's authors on candidate components of their own validation data. Its features, per component:
``volume_mm3``, ``log_volume_mm3`` (natural log), ``mean_probability`` and ``max_probability`` (of
the component's own class), ``elongation`` and ``flatness`` (IBSI's PCA definitions,
``sqrt(lambda_minor / lambda_major)`` and ``sqrt(lambda_least / lambda_major)``, from the covariance
of the voxel centres in mm with each voxel's own extent, ``spacing**2 / 12`` per axis, added so
that one-voxel components have a defined shape; ``flatness`` is 3D only), and three read from the
image, its first input channel as the network sees it (the declared ``preprocessing`` applied on
the input grid): ``mean_intensity`` over the component, and ``shell_mean_intensity`` and
``shell_p10_intensity`` and ``shell_p90_intensity`` (mean, 10th and 90th percentiles) over its
shell, the voxels within ``shell_mm`` (default 3 mm, Euclidean) of the component that no label
covers, inside the brain (the image's non-zero voxels) when the model z-scores over the non-zero
voxels, and ``outer_shell_p90_intensity`` over the outer shell, the same voxels between ``shell_mm``
and ``2 * shell_mm`` from it. A component without a shell (an outer shell) takes its own mean
intensity there. The surroundings tell apart what looks alike inside: an enhancing lesion in brain
tissue, the choroid plexus in the dark CSF of a ventricle, and a vessel seen in cross-section,
which goes on, bright, beyond the component.
Resampling to ``spacing`` is linear and keeps the field of view (``mk.resample``); ``antialias``
defaults to false, as MONAI's ``Spacing`` and nnU-Net prepare their training data.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medkern._reorient import ORIENTATION_LETTERS
from medkern.errors import ModelError

if TYPE_CHECKING:
    import onnx

__all__ = ["METADATA_KEY", "SCHEMA_VERSION", "validate_metadata", "write_model_metadata"]

METADATA_KEY = "medkern"
SCHEMA_VERSION = 1

TASKS = ("segmentation", "classification", "detection")
ACTIVATIONS = ("softmax", "sigmoid", "none")
BLENDS = ("gaussian", "constant")
PADDINGS = ("constant", "reflect", "replicate", "circular")
# op -> (required fields, optional fields with defaults)
PREPROCESSING_OPS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "clip": (("low", "high"), {}),
    "window": (("center", "width"), {"output_range": [0.0, 1.0]}),
    "zscore": ((), {"mask": "all"}),
    "percentile": ((), {"low": 0.5, "high": 99.5, "clip": False}),
    "scale": (("scale",), {"offset": 0.0}),
}
POSTPROCESSING_OPS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "remove_small": (("min_volume_mm3",), {}),
    "keep_top": (("n",), {"by": "probability"}),
    "classify_components": (("features", "weights", "bias"), {"min_score": 0.5, "shell_mm": 3.0}),
}
# Per-component features classify_components can weigh (medkern.inference._pipeline computes them).
# The features read from the image (its first channel as the network sees it) rather than the
# prediction; the shell ones from the unlabelled voxels within shell_mm of the component, the outer
# shell ones from those between shell_mm and 2 shell_mm.
OUTER_SHELL_FEATURES = ("outer_shell_p90_intensity",)
SHELL_FEATURES = ("shell_mean_intensity", "shell_p10_intensity", "shell_p90_intensity", *OUTER_SHELL_FEATURES)
INTENSITY_FEATURES = ("mean_intensity", *SHELL_FEATURES)
COMPONENT_FEATURES = ("volume_mm3", "log_volume_mm3", "mean_probability", "max_probability", "elongation",
                      "flatness", *INTENSITY_FEATURES)
MAX_SHELL_MM = 50.0
INFERENCE_DEFAULTS = {"overlap": 0.5, "blend": "gaussian", "sigma_scale": 0.125, "batch_size": 4,
                      "padding": "constant", "tta": False}
NOTES = ("name", "version", "description", "training_data", "licence", "intended_use")
PRECISIONS = ("fp32", "int8")

# Bounds on every number the metadata gives, far beyond any real model, so that a hostile or
# corrupt file fails here with the field named instead of asking for absurd memory or time.
MAX_CHANNELS = 64                 # input modalities
MAX_LABELS = 255                  # output channels (labels are uint8)
MAX_PATCH_AXIS = 2048             # voxels per patch axis
MAX_PATCH_VOXELS = 1 << 27        # voxels per patch (512^3)
MAX_BATCH_SIZE = 1024
MAX_BATCH_VALUES = 1 << 28        # batch_size * channels * patch voxels (1 GiB of float32 input)
SPACING_RANGE_MM = (1e-3, 1e4)    # model grid spacing
SIGMA_SCALE_RANGE = (1e-3, 100.0)
MAX_ABS_VALUE = 1e30              # intensities and scales of preprocessing (float32 holds 3.4e38)
MAX_VOLUME_MM3 = 1e12             # remove_small
MAX_KEEP_TOP = 1 << 20            # keep_top n


def _fail(field: str, problem: str) -> ModelError:
    return ModelError(f"medkern model metadata: {field} {problem}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: Any, field: str, positive: bool = False, low: float | None = None,
            high: float | None = MAX_ABS_VALUE) -> float:
    """A finite number (an int too large for a float is not one), optionally within [low, high];
    ``high`` also bounds the magnitude from below when ``low`` is None."""
    try:
        finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        finite = False
    if not finite:
        raise _fail(field, f"must be a finite number, got {_short(value)}")
    if positive and value <= 0:
        raise _fail(field, f"must be positive, got {value!r}")
    if low is not None and value < low:
        raise _fail(field, f"must be at least {low:g}, got {value!r}")
    if high is not None and (value > high or (low is None and value < -high)):
        raise _fail(field, f"must be {'at most' if low is not None else 'within ±'} {high:g}, got {value!r}")
    return float(value)


def _int(value: Any, field: str, low: int = 1, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(field, f"must be an integer >= {low}, got {_short(value)}")
    if high is not None and value > high:
        raise _fail(field, f"must be an integer <= {high}, got {_short(value)}")
    return value


def _choice(value: Any, options: tuple[str, ...], field: str) -> str:
    if value not in options:
        raise _fail(field, f"must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def _per_axis(value: Any, n: int, field: str, kind: str) -> list:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise _fail(field, f"must be a list of {n} values (one per spatial axis, array order), got {value!r}")
    if kind == "int":
        return [_int(v, f"{field}[{i}]", high=MAX_PATCH_AXIS) for i, v in enumerate(value)]
    low, high = SPACING_RANGE_MM
    return [_number(v, f"{field}[{i}]", positive=True, low=low, high=high) for i, v in enumerate(value)]


def validate_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Check model metadata against schema version 1 and return it with defaults filled in.

    The metadata records what a model expects around the network: input modalities, spatial
    dimensions, spacing and orientation, preprocessing, sliding-window inference, activation,
    output labels, post-processing, and the model card fields.

    Parameters
    ----------
    metadata : dict
        The metadata (JSON-able).

    Returns
    -------
    dict
        A validated copy with defaults filled in.

    Raises
    ------
    medkern.ModelError
        Names the first missing or malformed field.

    See Also
    --------
    write_model_metadata : Attach it to an ONNX model.
    Model : Reads it on load.

    Examples
    --------
    >>> meta = mk.models.load("sarcoma-ct", threads=1).metadata
    >>> mk.validate_metadata(meta)["task"]
    'segmentation'
    >>> try:
    ...     mk.validate_metadata({"schema_version": 1, "task": "segmentation"})
    ... except mk.ModelError as exc:
    ...     print(exc)
    medkern model metadata: name is missing (a short model name)
    """
    if not isinstance(metadata, dict):
        raise ModelError(f"medkern model metadata must be a JSON object (dict), got {type(metadata).__name__}")
    meta = copy.deepcopy(metadata)
    version = meta.get("schema_version")
    if version is None:
        raise _fail("schema_version", f"is missing (this medkern writes version {SCHEMA_VERSION})")
    if version != SCHEMA_VERSION:
        raise _fail("schema_version", f"is {version!r}; this medkern reads version {SCHEMA_VERSION} "
                                      "(upgrade medkern or re-export the model)")
    _choice(meta.get("task"), TASKS, "task")
    for note in NOTES:
        if note in meta and not isinstance(meta[note], str):
            raise _fail(note, f"must be a string, got {type(meta[note]).__name__}")
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        raise _fail("name", "is missing (a short model name)")
    nsp, channels = _validate_input(meta)
    _validate_preprocessing(meta, channels)
    _validate_inference(meta, nsp, channels)
    _validate_output(meta)
    _validate_postprocessing(meta)

    metrics = meta.setdefault("metrics", {})
    if not isinstance(metrics, dict):
        raise _fail("metrics", f"must be an object (name -> value), got {type(metrics).__name__}")
    if "precision" in meta:
        _choice(meta["precision"], PRECISIONS, "precision")
    if not isinstance(meta.get("quantization", {}), dict):
        raise _fail("quantization", f"must be an object (settings), got {type(meta['quantization']).__name__}")
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"medkern model metadata is not JSON-serialisable: {exc}") from None
    return meta



def _validate_input(meta: dict[str, Any]) -> tuple[int, int]:
    """The ``input`` section, defaults filled in; returns (spatial dims, channels)."""
    inp = meta.get("input")
    if not isinstance(inp, dict):
        raise _fail("input", "is missing (modalities, spatial_dims, spacing, orientation)")
    modalities = inp.get("modalities")
    if not isinstance(modalities, list) or not modalities or not all(isinstance(m, str) for m in modalities):
        raise _fail("input.modalities", f"must be a non-empty list of names, one per channel, got {modalities!r}")
    if len(modalities) > MAX_CHANNELS:
        raise _fail("input.modalities", f"names {len(modalities)} channels; at most {MAX_CHANNELS} are read")
    channels = inp.setdefault("channels", len(modalities))
    if _int(channels, "input.channels", high=MAX_CHANNELS) != len(modalities):
        raise _fail("input.channels", f"is {channels} but input.modalities names {len(modalities)} channels")
    nsp = inp.get("spatial_dims")
    if nsp not in (2, 3):
        raise _fail("input.spatial_dims", f"must be 2 or 3, got {nsp!r}")
    if inp.setdefault("spacing", None) is not None:
        inp["spacing"] = _per_axis(inp["spacing"], nsp, "input.spacing", "float")
    if not isinstance(inp.setdefault("antialias", False), bool):
        raise _fail("input.antialias", f"must be true or false, got {inp['antialias']!r}")
    code = inp.setdefault("orientation", None)
    if code is not None:
        axes = [ORIENTATION_LETTERS.get(c, (None,))[0] for c in code] if isinstance(code, str) else []
        if len(axes) != nsp or None in axes or len(set(axes)) != nsp or (nsp == 2 and 2 in axes):
            raise _fail("input.orientation", f"must name one LPS direction per array axis "
                                             f"(letters L/R, P/A{', S/I' if nsp == 3 else ''}, "
                                             f"each world axis once, e.g. {'SPL' if nsp == 3 else 'PL'}), "
                                             f"got {code!r}")
    return nsp, channels


def _validate_preprocessing(meta: dict[str, Any], channels: int) -> None:
    for field, op in _operations(meta, "preprocessing", PREPROCESSING_OPS, ("channels",)):
        for key in PREPROCESSING_OPS[op["op"]][0]:
            _number(op[key], f"{field}.{key}")
        if "channels" in op and (not isinstance(op["channels"], list) or
                                 not all(isinstance(c, int) and 0 <= c < channels for c in op["channels"])):
            raise _fail(f"{field}.channels", f"must list channel indices in [0, {channels}), got {op['channels']!r}")
        if op["op"] == "window":
            _number(op["width"], f"{field}.width", positive=True)
            rng = op["output_range"]
            if not isinstance(rng, (list, tuple)) or len(rng) != 2:
                raise _fail(f"{field}.output_range", f"must be a list of 2 numbers [low, high], got {_short(rng)}")
            low, high = (_number(v, f"{field}.output_range[{i}]") for i, v in enumerate(rng))
            if not low < high:
                raise _fail(f"{field}.output_range", f"needs low < high, got {rng!r}")
        if op["op"] == "scale":
            _number(op["offset"], f"{field}.offset")
        if op["op"] == "clip" and not op["low"] < op["high"]:
            raise _fail(field, f"needs low < high, got {op['low']} and {op['high']}")
        if op["op"] == "zscore":
            _choice(op["mask"], ("all", "nonzero"), f"{field}.mask")
        if op["op"] == "percentile" and \
                not 0 <= _number(op["low"], f"{field}.low") < _number(op["high"], f"{field}.high") <= 100:
            raise _fail(field, f"needs 0 <= low < high <= 100, got {op['low']} and {op['high']}")


def _validate_inference(meta: dict[str, Any], nsp: int, channels: int) -> None:
    inf = meta.get("inference")
    if not isinstance(inf, dict):
        raise _fail("inference", "is missing (at least patch_size)")
    if "patch_size" not in inf:
        raise _fail("inference.patch_size", "is missing")
    inf["patch_size"] = _per_axis(inf["patch_size"], nsp, "inference.patch_size", "int")
    patch_voxels = math.prod(inf["patch_size"])
    if patch_voxels > MAX_PATCH_VOXELS:
        raise _fail("inference.patch_size", f"{inf['patch_size']} holds {patch_voxels} voxels; at most "
                                            f"{MAX_PATCH_VOXELS} per patch")
    for key, default in INFERENCE_DEFAULTS.items():
        inf.setdefault(key, default)
    overlap = _number(inf["overlap"], "inference.overlap")
    if not 0 <= overlap < 1:
        raise _fail("inference.overlap", f"must be in [0, 1), got {overlap}")
    _choice(inf["blend"], BLENDS, "inference.blend")
    _number(inf["sigma_scale"], "inference.sigma_scale", positive=True, low=SIGMA_SCALE_RANGE[0],
            high=SIGMA_SCALE_RANGE[1])
    _int(inf["batch_size"], "inference.batch_size", high=MAX_BATCH_SIZE)
    if inf["batch_size"] * channels * patch_voxels > MAX_BATCH_VALUES:
        raise _fail("inference.batch_size", f"{inf['batch_size']} patches of {inf['patch_size']} x {channels} "
                                            f"channel(s) exceed {MAX_BATCH_VALUES} input values per batch")
    _choice(inf["padding"], PADDINGS, "inference.padding")
    if not isinstance(inf["tta"], bool):
        raise _fail("inference.tta", f"must be true or false, got {inf['tta']!r}")


def _validate_output(meta: dict[str, Any]) -> None:
    out = meta.get("output")
    if not isinstance(out, dict):
        raise _fail("output", "is missing (activation and labels)")
    _choice(out.get("activation"), ACTIVATIONS, "output.activation")
    labels = out.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(v, str) for v in labels):
        raise _fail("output.labels", f"must be a non-empty list of names, one per output channel, got {_short(labels)}")
    if len(labels) > MAX_LABELS:
        raise _fail("output.labels", f"names {len(labels)} outputs; at most {MAX_LABELS} (uint8 label maps)")
    threshold = _number(out.setdefault("threshold", 0.5), "output.threshold")
    if not 0 < threshold < 1:
        raise _fail("output.threshold", f"must be in (0, 1), got {threshold}")


def _operations(meta: dict[str, Any], section: str, table: dict[str, tuple[tuple[str, ...], dict[str, Any]]],
                extra: tuple[str, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """``(field, op)`` for each operation of a list section: known op, required fields present,
    defaults filled in, no unknown field (``extra`` names fields any op may carry)."""
    ops = meta.setdefault(section, [])
    if not isinstance(ops, list):
        raise _fail(section, f"must be a list of operations, got {type(ops).__name__}")
    out = []
    for n, op in enumerate(ops):
        field = f"{section}[{n}]"
        if not isinstance(op, dict) or op.get("op") not in table:
            raise _fail(field, f"must be an object whose 'op' is one of {', '.join(table)}, got {op!r}")
        required, optional = table[op["op"]]
        for key in required:
            if key not in op:
                raise _fail(f"{field}.{key}", f"is missing (needed by op {op['op']!r})")
        for key, default in optional.items():
            op.setdefault(key, copy.deepcopy(default))
        unknown = set(op) - {"op", *extra, *required, *optional}
        if unknown:
            raise _fail(field, f"has unknown field(s) {sorted(unknown)} for op {op['op']!r}")
        out.append((field, op))
    return out


def _validate_postprocessing(meta: dict[str, Any]) -> None:
    ops = _operations(meta, "postprocessing", POSTPROCESSING_OPS)
    if ops and meta["task"] == "classification":
        raise _fail("postprocessing", "applies to dense (segmentation, detection) models only")
    for field, op in ops:
        if op["op"] == "remove_small" and _number(op["min_volume_mm3"], f"{field}.min_volume_mm3",
                                                   high=MAX_VOLUME_MM3) < 0:
            raise _fail(f"{field}.min_volume_mm3", f"must be >= 0, got {op['min_volume_mm3']}")
        if op["op"] == "keep_top":
            _int(op["n"], f"{field}.n", high=MAX_KEEP_TOP)
            _choice(op["by"], ("probability", "volume"), f"{field}.by")
        if op["op"] == "classify_components":
            _validate_component_classifier(op, field, meta["input"]["spatial_dims"])


def _validate_component_classifier(op: dict[str, Any], field: str, spatial_dims: int) -> None:
    features, weights = op["features"], op["weights"]
    if not isinstance(features, list) or not features or len(features) > len(COMPONENT_FEATURES):
        raise _fail(f"{field}.features", f"must be a non-empty list of feature names, got {_short(features)}")
    for n, name in enumerate(features):
        _choice(name, COMPONENT_FEATURES, f"{field}.features[{n}]")
    if len(set(features)) != len(features):
        raise _fail(f"{field}.features", f"names a feature twice: {features}")
    if "flatness" in features and spatial_dims != 3:
        raise _fail(f"{field}.features", "uses 'flatness', which needs a 3D model (input.spatial_dims 3)")
    if not isinstance(weights, list) or len(weights) != len(features):
        raise _fail(f"{field}.weights", f"must be a list of {len(features)} numbers (one per feature), "
                    f"got {_short(weights)}")
    for n, w in enumerate(weights):
        _number(w, f"{field}.weights[{n}]")
    _number(op["bias"], f"{field}.bias")
    _number(op["min_score"], f"{field}.min_score", low=0.0, high=1.0)
    _number(op["shell_mm"], f"{field}.shell_mm", positive=True, low=0.0, high=MAX_SHELL_MM)


def parse_metadata(text: str | None) -> dict[str, Any] | None:
    """The validated metadata of a ``metadata_props["medkern"]`` entry (None when absent)."""
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, integers of too many digits, deep nesting
        raise ModelError(f"medkern model metadata is not valid JSON ({type(exc).__name__}: {str(exc)[:200]}); "
                         "rewrite it with mk.write_model_metadata") from None
    return validate_metadata(meta)


def write_model_metadata(model: str | os.PathLike[str] | bytes | bytearray | onnx.ModelProto, metadata: dict[str, Any],
                         out: str | os.PathLike[str] | None = None) -> Path | bytes | onnx.ModelProto:
    """Attach validated medkern metadata to an ONNX model, replacing an earlier entry.

    The metadata's channel count and spatial rank are checked against the graph's first input
    where its shape is static.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The model. A path is rewritten atomically (to ``out`` when given, else in place).
    metadata : dict
        The metadata; validated by :func:`validate_metadata`.
    out : str or os.PathLike, optional
        Where to write when ``model`` is a path.

    Returns
    -------
    pathlib.Path, bytes or onnx.ModelProto
        The written path for a path, bytes for bytes, a new ModelProto for a ModelProto.

    Raises
    ------
    medkern.ModelError
        Invalid metadata, an unreadable model, or metadata that contradicts the graph.
    FileNotFoundError
        No model file at the path.
    TypeError
        ``model`` is none of the accepted types.

    See Also
    --------
    validate_metadata : The checks.
    Model : Loads a model with its metadata.

    Examples
    --------
    >>> meta = dict(mk.models.load("sarcoma-ct", threads=1).metadata, name="my-ct")
    >>> onnx_bytes = mk.models.path("sarcoma-ct").read_bytes()
    >>> mk.Model(mk.write_model_metadata(onnx_bytes, meta))
    Model('my-ct', segmentation, providers=['CPUExecutionProvider'])
    """
    import onnx

    meta = validate_metadata(metadata)
    if isinstance(model, onnx.ModelProto):
        proto = copy.deepcopy(model)
    elif isinstance(model, (bytes, bytearray)):
        proto = _load_proto(bytes(model), "model bytes")
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"write_model_metadata: no model file at {path}")
        proto = _load_proto(path.read_bytes(), str(path))
    else:
        raise TypeError(f"write_model_metadata: model must be a path, bytes or onnx.ModelProto, "
                        f"got {type(model).__name__}")
    graph_inputs = [(i.name, [d.dim_value if d.HasField("dim_value") else None
                              for d in i.type.tensor_type.shape.dim]) for i in _graph_inputs(proto)]
    check_graph_against_metadata(meta, graph_inputs)
    for prop in [p for p in proto.metadata_props if p.key == METADATA_KEY]:
        proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)
    if isinstance(model, onnx.ModelProto):
        return proto
    if isinstance(model, (bytes, bytearray)):
        return proto.SerializeToString()
    from medkern.io._atomic import atomic_path

    target = Path(out) if out is not None else Path(model)
    with atomic_path(target) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    return target


def _load_proto(data: bytes, name: str):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{name} is not a readable ONNX model (not ONNX, truncated or corrupted): {exc}") from None
    if not proto.graph.node and not proto.graph.input:
        raise ModelError(f"{name} is not a readable ONNX model: it holds no graph")
    return proto


def _graph_inputs(proto):
    initializers = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in initializers]


def check_graph_against_metadata(meta: dict[str, Any], inputs: list[tuple[str, list]]) -> None:
    """The graph's image input must be (batch, channels, *spatial) with the metadata's sizes."""
    if len(inputs) != 1:
        raise ModelError(f"medkern metadata describes one image input, but the graph has {len(inputs)} "
                         f"inputs ({', '.join(n for n, _ in inputs)})")
    name, shape = inputs[0]
    nsp, channels = meta["input"]["spatial_dims"], meta["input"]["channels"]
    if len(shape) != 2 + nsp:
        raise ModelError(f"graph input {name!r} has rank {len(shape)}, but the metadata describes "
                         f"{nsp}D images: expected (batch, channels, {'z, y, x' if nsp == 3 else 'y, x'}) "
                         f"= rank {2 + nsp}")
    if isinstance(shape[1], int) and shape[1] > 0 and shape[1] != channels:
        raise ModelError(f"graph input {name!r} takes {shape[1]} channel(s), but the metadata lists "
                         f"{channels} modality/modalities ({', '.join(meta['input']['modalities'])})")
