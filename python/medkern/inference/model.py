"""mk.Model: an ONNX Runtime session plus the preprocessing its medkern metadata describes."""

from __future__ import annotations

import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from medkern._dispatch import get_num_threads, is_cupy_array
from medkern._progress import Progress
from medkern.errors import ModelError
from medkern.image import Image
from medkern.inference.metadata import (
    METADATA_KEY,
    ORIENTATION_LETTERS,
    check_graph_against_metadata,
    parse_metadata,
)
from medkern.inference.sliding import _scan_starts, sliding_window

__all__ = ["Model", "Prediction", "TensorInfo"]

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, shape (None for a dynamic axis) and ONNX element type."""

    name: str
    shape: tuple[int | None, ...]
    type: str


@dataclass
class Prediction:
    """What :meth:`Model.predict` returns, on the grid of the image that was given.

    ``probabilities``: vector Image, one component per output channel (float32), for dense tasks.
    ``labels``: uint8 Image, the argmax class (softmax) or the most probable channel above the
    threshold, numbered from 1 (sigmoid), for dense tasks. ``scores``: class name -> probability,
    for classification. ``label_names``: the model's output names.
    """

    label_names: list[str]
    probabilities: Image | None = None
    labels: Image | None = None
    scores: dict[str, float] | None = field(default=None)

    def probability(self, name: str) -> Image:
        """The probability map of one output channel, by its label name."""
        if self.probabilities is None:
            raise ValueError("this prediction has class scores, not probability maps")
        if name not in self.label_names:
            raise KeyError(f"no output named {name!r}; the model's labels are {self.label_names}")
        c = self.label_names.index(name)
        return Image(np.ascontiguousarray(self.probabilities.array[..., c]), **self.probabilities.geometry)


def _resolve_providers(providers: Any) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers == "auto":
        return [p for p in _PROVIDERS["cuda"] if p in available] or ["CPUExecutionProvider"]
    if isinstance(providers, str):
        if providers not in _PROVIDERS:
            raise ValueError(f"Model: providers must be 'auto', 'cpu', 'cuda', 'tensorrt' or a list of "
                             f"ONNX Runtime provider names, got {providers!r}")
        providers = _PROVIDERS[providers]
    providers = list(providers)
    missing = [p for p in providers if p not in available]
    if missing:
        raise ValueError(f"Model: execution provider(s) {missing} are not available in this onnxruntime "
                         f"(available: {available}); install onnxruntime-gpu for CUDA/TensorRT or use "
                         "providers='cpu'")
    return providers


# Rough costs (ns, 2-core CPU, the shipped 3D UNets) that size the progress spans of a prediction:
# preprocessing per input voxel and channel, one network pass per model-grid voxel (patch
# overlap included), the way back to the input grid and post-processing per input voxel and label.
_PREPARE_NS, _NETWORK_NS, _FINISH_NS = 20.0, 3000.0, 40.0

# Larger files are handed to ONNX Runtime as they are: parsing them twice costs load time and memory.
_REWRITE_MAX_BYTES = 1 << 30


def _all_tensors(proto) -> Iterator[Any]:
    """Every TensorProto of a model: initializers, sparse initializers, tensor attributes, in
    the main graph, every subgraph (If/Loop/Scan bodies) and the model's local functions."""
    from onnx import AttributeProto

    def in_nodes(nodes) -> Iterator[Any]:
        for node in nodes:
            for a in node.attribute:
                if a.type == AttributeProto.TENSOR or a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("sparse_tensor"):
                    yield a.sparse_tensor.values
                    yield a.sparse_tensor.indices
                for st in a.sparse_tensors:
                    yield st.values
                    yield st.indices
                if a.HasField("g"):
                    yield from in_graph(a.g)
                for g in a.graphs:
                    yield from in_graph(g)

    def in_graph(graph) -> Iterator[Any]:
        yield from graph.initializer
        for st in graph.sparse_initializer:
            yield st.values
            yield st.indices
        yield from in_nodes(graph.node)

    yield from in_graph(proto.graph)
    for function in proto.functions:
        yield from in_nodes(function.node)


def _check_external_data(proto, model: str | bytes, name: str) -> bool:
    """Whether the model keeps weights in external files; ModelError when it may not.

    Bytes have no folder to resolve external files against (ONNX Runtime would use the working
    directory, so a model received as bytes could read local files into its weights): refused.
    A file's external data must lie inside the model's own folder (no absolute paths, no ``..``
    escaping it, after resolving links)."""
    from onnx import TensorProto

    external = [t for t in _all_tensors(proto) if t.data_location == TensorProto.EXTERNAL]
    if not external:
        return False
    if isinstance(model, bytes):
        raise ModelError(f"{name}: the model keeps {len(external)} weight tensor(s) in external data files "
                         f"(e.g. {external[0].name!r}); a model given as bytes has no folder to find them in, "
                         "so external data is refused: load it from its .onnx path instead")
    folder = Path(model).resolve().parent
    for t in external:
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (folder / location).resolve() if location and "\x00" not in location else None
        if target is None or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ModelError(f"{name}: weight tensor {t.name!r} names external data {location!r}, outside the "
                             f"model's folder {folder}; external data is read only beside the model")
    return True


def _rewritten(model: str | bytes, name: str = "model") -> str | bytes:
    """The model with medkern's graph rewrites (:mod:`medkern.inference.graph`) applied, as
    bytes; the source unchanged when nothing applies, when its weights live in external files
    (they are found relative to the path) or when it does not parse (ONNX Runtime then reports).
    External data is checked first (:func:`_check_external_data`)."""
    import onnx

    from medkern.inference.graph import optimize_graph

    try:
        if isinstance(model, bytes):
            proto = onnx.load_model_from_string(model)
        elif os.path.getsize(model) <= _REWRITE_MAX_BYTES:
            proto = onnx.load_model(model, load_external_data=False)
        else:
            return model
    except Exception as exc:  # not ONNX, truncated: the session creation raises the ModelError
        if isinstance(model, bytes):  # unchecked bytes never reach ONNX Runtime (external data)
            raise ModelError(f"{name} is not a readable ONNX model (not ONNX, truncated or corrupted): "
                             f"{' '.join(str(exc).split())[:300]}") from None
        return model
    if _check_external_data(proto, model, name):
        return model
    try:
        changed = optimize_graph(proto)
    except Exception:  # a malformed graph the rewrites do not understand: ONNX Runtime judges it
        return model
    return proto.SerializeToString() if changed else model


class Model:
    """An exported model (ONNX) ready to run, with the preprocessing recorded in its metadata.

    Parameters
    ----------
    source : path to an ``.onnx`` file, or its bytes.
    providers : ``"auto"`` (CUDA when onnxruntime-gpu sees a device, else CPU), ``"cpu"``,
        ``"cuda"``, ``"tensorrt"``, or a list of ONNX Runtime provider names.
    threads : CPU cores to use: the intra-op threads of one run, and the number of batch items
        :meth:`run_independent` runs at once; default :func:`medkern.get_num_threads`.

    ``model.metadata`` is the validated medkern metadata (None for a bare ONNX file, which still
    runs through :meth:`run` and as the ``fn`` of :func:`medkern.sliding_window`);
    ``model.inputs`` / ``model.outputs`` describe the graph. The graph is loaded with the
    rewrites of :mod:`medkern.inference.graph` (faster activations, sub-pixel output heads).
    One Model may be used from several threads at once (ONNX Runtime sessions are thread-safe;
    medkern keeps no per-call state on it).
    """

    def __init__(self, source: str | os.PathLike | bytes, providers: Any = "auto", threads: int | None = None):
        if isinstance(source, (bytes, bytearray, memoryview)):
            model, self.name, empty = bytes(source), "model bytes", len(source) == 0
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"Model: no model file at {path}")
            # A path (not its bytes) lets ONNX Runtime find external weight files beside it.
            model, self.name, empty = str(path), str(path), path.stat().st_size == 0
        else:
            raise TypeError(f"Model: source must be a path or bytes, got {type(source).__name__}")
        if empty:
            raise ModelError(f"{self.name} is empty: not an ONNX model")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"Model: threads must be a positive integer or None, got {threads!r}")
        self.providers = _resolve_providers(providers)
        self.threads = threads or get_num_threads()
        self._source = _rewritten(model, self.name)
        try:
            self._session = self._new_session(self.threads)
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph
            detail = " ".join(str(exc).split())
            raise ModelError(f"{self.name} is not a readable ONNX model (not ONNX, truncated or "
                             f"corrupted): {detail[:500]}") from None
        self._single: Any = None  # single-threaded session shared by concurrent batch items
        self._lane_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        try:  # names and metadata are decoded as UTF-8 here: a corrupt file may hold anything
            self.inputs = [TensorInfo(i.name, _shape(i.shape), i.type) for i in self._session.get_inputs()]
            self.outputs = [TensorInfo(o.name, _shape(o.shape), o.type) for o in self._session.get_outputs()]
            props = self._session.get_modelmeta().custom_metadata_map
        except (UnicodeDecodeError, RuntimeError, ValueError, TypeError) as exc:
            raise ModelError(f"{self.name}: the model's names or metadata are corrupt ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]})") from None
        if not self.inputs or not self.outputs:
            raise ModelError(f"{self.name}: the graph has {len(self.inputs)} input(s) and {len(self.outputs)} "
                             "output(s); a model needs at least one of each")
        try:
            self.metadata = parse_metadata(props.get(METADATA_KEY))
            if self.metadata is not None:
                check_graph_against_metadata(self.metadata, [(i.name, list(i.shape)) for i in self.inputs])
        except ModelError as exc:
            raise ModelError(f"{self.name}: {exc}") from None

    def _new_session(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Memory patterns pre-plan one block for every intermediate of a shape; the arena alone
        # reuses freed blocks and keeps the peak lower (measured in benchmarks/bench_inference.py).
        options.enable_mem_pattern = False
        # Warnings about unused initialisers are not the user's concern, and errors arrive as
        # exceptions (a ModelError with ONNX Runtime's message): nothing is logged on stderr.
        options.log_severity_level = 4
        return ort.InferenceSession(self._source, options, providers=self.providers)

    def __repr__(self) -> str:
        task = self.metadata["task"] if self.metadata else "no medkern metadata"
        name = self.metadata["name"] if self.metadata else self.name
        return f"Model({name!r}, {task}, providers={self.providers})"

    # ------------------------------------------------------------------ raw execution
    def run(self, *arrays: Any) -> list[Any]:
        """Run the graph on its inputs (positional, in graph order); returns every output.

        NumPy inputs give NumPy outputs. CuPy inputs on a CUDA session are bound on the device
        (ONNX Runtime IO binding) and give CuPy outputs, with no host round trip.
        """
        if len(arrays) != len(self.inputs):
            raise ValueError(f"Model.run: the graph takes {len(self.inputs)} input(s) "
                             f"({', '.join(i.name for i in self.inputs)}), got {len(arrays)}")
        if any(is_cupy_array(a) for a in arrays):
            return self._run_on_device(arrays)
        return self._ort_run(self._session, self._feeds(arrays))

    def _ort_run(self, session: Any, feeds: dict[str, Any]) -> list[Any]:
        """``session.run``; ONNX Runtime's failures (a graph that breaks on its input: bad shapes
        inside, corrupt weights) become a ModelError naming the model."""
        try:
            return session.run(None, feeds)
        except Exception as exc:  # onnxruntime's Fail / InvalidArgument / RuntimeException
            if isinstance(exc, MemoryError):
                raise
            detail = " ".join(str(exc).split())
            raise ModelError(f"{self.name}: ONNX Runtime failed to run the model on input(s) of shape "
                             f"{[tuple(np.shape(v)) for v in feeds.values()]}: {detail[:500]}") from None

    def _feeds(self, arrays: Sequence[Any]) -> dict[str, np.ndarray]:
        """Host inputs checked against the graph (rank, fixed sizes) and cast to its types."""
        feeds = {}
        for info, a in zip(self.inputs, arrays):
            a = np.asarray(a)
            if len(info.shape) != a.ndim:
                raise ModelError(f"{self.name}: input {info.name!r} has rank {len(info.shape)} "
                                 f"{info.shape}, got an array of shape {a.shape}")
            for axis, (want, got) in enumerate(zip(info.shape, a.shape)):
                if want is not None and want != got:
                    raise ModelError(f"{self.name}: input {info.name!r} needs size {want} on axis {axis} "
                                     f"(shape {info.shape}), got shape {a.shape}")
            feeds[info.name] = np.ascontiguousarray(a, dtype=_NUMPY_TYPES.get(info.type, a.dtype))
        return feeds

    def __call__(self, batch: Any) -> Any:
        """First output for one input: the ``fn`` that :func:`medkern.sliding_window` calls."""
        return self.run(batch)[0]

    def run_independent(self, batch: Any) -> Any:
        """First output for a batch whose items do not interact (patches, separate cases).

        On the CPU the items run concurrently, ``threads`` at a time, each as a single-threaded
        run of one extra session (which holds the weights once more). One whole-network run per
        core has no per-operator thread synchronisation, a large part of a multi-threaded run of
        a small-channel 3D network (the benchmark UNet: 10-20 % faster). Items left over after
        whole rounds, and batches on a GPU, run as :meth:`__call__`. For any network that treats
        batch items separately the values equal ``model(batch)`` up to float32 rounding (ONNX
        Runtime's convolutions sum in another order for another thread count); this is what
        :func:`medkern.sliding_window` calls.
        """
        parts = [part for part, _ in self._run_parts(batch)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run_parts(self, batch: Any) -> Iterator[tuple[Any, int]]:
        """:meth:`run_independent` as consecutive pieces of the batch, each handed out with the
        number of cores still running later pieces, so the caller can use the others on it."""
        lanes = self.threads if self.providers == ["CPUExecutionProvider"] and not is_cupy_array(batch) else 1
        items = len(batch) if getattr(batch, "ndim", 0) >= 1 else 0
        per_lane = items // lanes
        if lanes == 1 or per_lane == 0 or len(self.inputs) != 1:
            yield self(batch), 0
            return
        name = self.inputs[0].name
        x = self._feeds([batch])[name]
        session = self._single_threaded()

        def run_lane(n: int) -> np.ndarray:
            return self._ort_run(session, {name: x[n * per_lane:(n + 1) * per_lane]})[0]

        pool = self._thread_pool(lanes - 1)
        futures = [pool.submit(run_lane, n) for n in range(1, lanes)]
        yield run_lane(0), lanes - 1
        for n, future in enumerate(futures, 2):
            yield future.result(), lanes - n
        done = lanes * per_lane
        if done < items:
            yield self._ort_run(self._session, {name: x[done:]})[0], 0

    def _single_threaded(self) -> Any:
        """One single-threaded session that every lane runs on: ONNX Runtime sessions take
        concurrent runs, and the weights are held once more, not once per lane."""
        with self._lane_lock:
            if self._single is None:
                self._single = self._new_session(1)
            return self._single

    def _thread_pool(self, workers: int) -> ThreadPoolExecutor:
        with self._lane_lock:
            if self._pool is None or self._pool_size < workers:
                self._pool, self._pool_size = ThreadPoolExecutor(workers, thread_name_prefix="medkern-model"), workers
            return self._pool

    def _run_on_device(self, arrays: Sequence[Any]) -> list[Any]:
        import cupy

        if "CUDAExecutionProvider" not in self._session.get_providers():
            raise ValueError("Model.run: CuPy input needs a CUDA session (onnxruntime-gpu and "
                             "providers='cuda'); pass NumPy arrays to run on the CPU")
        binding = self._session.io_binding()
        device = cupy.cuda.Device().id
        bound = []  # the bound device buffers must outlive the run
        for info, a in zip(self.inputs, arrays):
            a = cupy.ascontiguousarray(cupy.asarray(a), dtype=_NUMPY_TYPES.get(info.type, a.dtype))
            bound.append(a)
            binding.bind_input(info.name, "cuda", device, a.dtype, list(a.shape), a.data.ptr)
        for info in self.outputs:
            binding.bind_output(info.name, "cuda", device)
        cupy.cuda.get_current_stream().synchronize()
        self._session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        results = []
        for value in binding.get_outputs():
            # Device-to-device copy into CuPy-owned memory: the OrtValue is freed with the binding.
            n_bytes = int(np.prod(value.shape())) * np.dtype(_NUMPY_TYPES[value.data_type()]).itemsize
            src = cupy.cuda.MemoryPointer(cupy.cuda.UnownedMemory(value.data_ptr(), n_bytes, value), 0)
            out = cupy.empty(value.shape(), dtype=_NUMPY_TYPES[value.data_type()])
            out.data.copy_from_device(src, n_bytes)
            results.append(out)
        return results

    # ------------------------------------------------------------------ image prediction
    def _require_metadata(self) -> dict[str, Any]:
        if self.metadata is None:
            raise ModelError(f"{self.name} has no medkern metadata (metadata_props[{METADATA_KEY!r}]), so "
                             "predict() does not know its preprocessing; attach it with "
                             "mk.write_model_metadata, or call model.run / mk.sliding_window directly")
        return self.metadata

    def predict(self, *images: Any, tta: bool = False, postprocess: bool = True,
                progress: Any = None) -> Prediction:
        """Predict on one image (or one image per input channel, in the metadata's order).

        Steps, all from the metadata: reorient to the model's orientation (axis permutation and
        flips, exact), resample to its spacing (linear; the field of view is kept), preprocess,
        sliding window (dense tasks) or one centre-cropped pass (classification), activation, then
        back onto the given image's grid: probabilities with linear interpolation, labels with
        ``label`` interpolation. ``tta=True`` averages the probabilities over all flips of the
        spatial axes (2^ndim passes). Last, the metadata's ``postprocessing`` (the model's declared
        clean-up: small components removed, the top-n components kept) is applied to the labels;
        ``postprocess=False`` returns the raw labels. Probabilities are never altered. Returns a
        :class:`Prediction`.

        ``progress``: None, True (a tqdm bar on stderr) or a callable ``progress(stage, fraction)``
        (see :mod:`medkern._progress`) over the stages ``"preprocess"``, ``"patches"`` (the
        sliding window, one call per batch of patches; ``"classify"`` for classification models)
        and ``"postprocess"``; returning False raises :class:`medkern.Cancelled`.
        """
        with Progress(progress, "Model.predict") as prog:
            return self.predict_many([images[0] if len(images) == 1 else tuple(images)], tta=tta,
                                     postprocess=postprocess, progress=prog)[0]

    def predict_many(self, images: Sequence[Any], tta: bool = False, postprocess: bool = True, *,
                     progress: Any = None) -> list[Prediction]:
        """:meth:`predict` over several cases; cases whose model-grid shapes agree share patch batches.

        Each element of ``images`` is an Image or a tuple of per-channel Images. ``progress`` as
        for :meth:`predict`, over all the cases.
        """
        meta = self._require_metadata()
        prog = Progress(progress, "Model.predict_many")
        inputs = [case if isinstance(case, (tuple, list)) else (case,) for case in images]
        passes = len(_flip_sets(meta["input"]["spatial_dims"])) if tta else 1
        with prog:
            prepare_span, rest = prog.split(_predict_costs(inputs, meta, passes))
            cases = []
            for case, span in zip(inputs, prepare_span.split([_voxels(c) for c in inputs])):
                span.update("preprocess", 0.0)
                cases.append(self._prepare(case, meta))
            if meta["task"] == "classification":
                return [self._classify(c, meta, tta, span)
                        for c, span in zip(cases, rest.split([1] * len(cases)))]
            groups: dict[tuple[int, ...], list[int]] = {}
            for n, c in enumerate(cases):
                groups.setdefault(c.array.shape, []).append(n)
            # Spans in the order the work runs: each group's patches, then its cases' way back.
            n_labels = len(meta["output"]["labels"])
            costs = []
            for members in groups.values():
                costs.append(_NETWORK_NS * passes * sum(cases[n].array[0].size for n in members))
                costs.extend(_FINISH_NS * n_labels * cases[n].reference.size for n in members)
            spans = iter(rest.split(costs))
            results: list[Prediction | None] = [None] * len(cases)
            for members in groups.values():
                stack = cases[members[0]].array[None] if len(members) == 1 else \
                    np.stack([cases[n].array for n in members])
                probabilities = self._dense(stack, meta, tta, next(spans))
                for n, prob in zip(members, probabilities):
                    results[n] = self._dense_prediction(cases[n], prob, meta, postprocess, next(spans))
            return results  # type: ignore[return-value]

    def _prepare(self, channel_images: Sequence[Any], meta: dict[str, Any]) -> "_Case":
        from medkern._intensity import normalize, window

        inp = meta["input"]
        if len(channel_images) != inp["channels"]:
            raise ModelError(f"{meta['name']} takes {inp['channels']} channel image(s) "
                             f"({', '.join(inp['modalities'])}), got {len(channel_images)}")
        imgs = []
        for n, img in enumerate(channel_images):
            if not isinstance(img, Image):
                raise TypeError(f"predict: channel {n} must be an mk.Image (geometry is needed to reach the "
                                f"model's spacing), got {type(img).__name__}")
            if img.is_vector or img.ndim != inp["spatial_dims"]:
                raise ModelError(f"{meta['name']} takes {inp['spatial_dims']}D scalar images, channel {n} "
                                 f"({inp['modalities'][n]}) is {img.ndim}D{' vector' if img.is_vector else ''}")
            if n and not img.same_geometry(imgs[0], atol=1e-3):
                raise ModelError(f"channel images must share one grid, but {inp['modalities'][n]} differs "
                                 f"from {inp['modalities'][0]} (spacing {img.spacing} vs {imgs[0].spacing}, "
                                 f"shape {img.shape} vs {imgs[0].shape}); resample it with mk.resample_to first")
            imgs.append(img)
        reference = imgs[0]
        grid = None
        arrays = []
        for n, img in enumerate(imgs):
            if inp["spacing"] is not None:
                grid_voxels = float(np.prod(img.shape)) * float(np.prod(img.spacing) / np.prod(inp["spacing"]))
                if grid_voxels > _MAX_GRID_VOXELS:
                    raise ModelError(f"{self.name}: input.spacing {inp['spacing']} would resample the "
                                     f"{img.shape} image of spacing {tuple(round(v, 4) for v in img.spacing)} to "
                                     f"~{grid_voxels:.3g} voxels, more than the {_MAX_GRID_VOXELS} medkern runs a "
                                     "model on")
            img = _to_model_grid(img, inp["orientation"], inp["spacing"], inp["antialias"])
            grid = img
            x = np.asarray(img.array)
            for op in meta["preprocessing"]:
                if "channels" in op and n not in op["channels"]:
                    continue
                kind = op["op"]
                if kind == "clip":
                    x = np.clip(x, op["low"], op["high"]).astype(np.float32)
                elif kind == "window":
                    x = window(x, op["center"], op["width"], tuple(op["output_range"]))
                elif kind == "zscore":
                    x = normalize(x, "zscore", mask=(x != 0) if op["mask"] == "nonzero" else None)
                elif kind == "percentile":
                    x = normalize(x, "percentile", percentiles=(op["low"], op["high"]), clip=op["clip"])
                else:
                    x = (x * np.float32(op["scale"]) + np.float32(op["offset"])).astype(np.float32)
            x = np.asarray(x, dtype=np.float32)
            bad = _count_non_finite(x)
            if bad:
                raise ValueError(f"predict: channel {n} ({inp['modalities'][n]}) holds {bad} non-finite value(s) "
                                 f"(NaN or infinity) after {meta['name']}'s preprocessing; the image must be finite")
            arrays.append(x)
        return _Case(reference, grid, arrays[0][None] if len(arrays) == 1 else np.stack(arrays))

    def _activate(self, logits: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
        """Softmax or sigmoid over the channels of ``(N, C, ...)`` logits, in place on one float32
        buffer: the full-size logits are the largest arrays of a prediction."""
        from medkern import _core

        activation = meta["output"]["activation"]
        e = np.require(logits, np.float32, ["C_CONTIGUOUS", "WRITEABLE"])
        if activation != "none":
            for case in e:
                _core.activate(case, activation, get_num_threads())
        return e

    def _check_output(self, values: np.ndarray, meta: dict[str, Any]) -> None:
        """ModelError when the network's output holds NaN or infinity: its labels would be
        silently wrong (softmax and argmax of NaN give background everywhere)."""
        bad = _count_non_finite(values)
        if bad:
            raise ModelError(f"{self.name}: model {meta['name']!r} produced {bad} non-finite value(s) (NaN or "
                             f"infinity) among the {values.size} values of its output {self.outputs[0].name!r}; "
                             "no labels are given from it (a broken export, or an input far outside the model's "
                             "training range)")

    def _dense(self, stack: np.ndarray, meta: dict[str, Any], tta: bool, progress: Progress) -> np.ndarray:
        inf = meta["inference"]
        nsp = meta["input"]["spatial_dims"]
        flips = _flip_sets(nsp) if tta else [()]
        windows = len(stack) * len(flips) * math.prod(
            len(_scan_starts(max(s, r), r, inf["overlap"])) for s, r in zip(stack.shape[2:], inf["patch_size"]))
        if windows > _MAX_WINDOWS:
            raise ModelError(f"{self.name}: inference.patch_size {inf['patch_size']} with inference.overlap "
                             f"{inf['overlap']} gives {windows} network passes over a {stack.shape[2:]} model grid, "
                             f"more than the {_MAX_WINDOWS} medkern runs")
        total = None
        for axes, span in zip(flips, progress.split([1] * len(flips))):
            axes_arr = tuple(2 + a for a in axes)
            x = np.ascontiguousarray(np.flip(stack, axes_arr)) if axes else stack
            try:
                logits = sliding_window(x, self, inf["patch_size"], inf["overlap"], inf["blend"],
                                        inf["sigma_scale"], inf["batch_size"], inf["padding"],
                                        spatial_dims=nsp, progress=span)
            except ValueError as exc:  # the network's output does not fit its patches
                if isinstance(exc, ModelError):
                    raise
                raise ModelError(f"{self.name}: model {meta['name']!r} does not fit its metadata: {exc}") from None
            self._check_output(logits, meta)
            prob = self._activate(logits, meta)
            prob = np.flip(prob, axes_arr) if axes else prob
            # The activation returns a fresh buffer owned here unless it was flipped back (a view).
            total = (prob if not axes else prob.copy()) if total is None else np.add(total, prob, out=total)
        if len(flips) > 1:
            total /= np.float32(len(flips))
        labels = meta["output"]["labels"]
        if total.shape[1] != len(labels):
            raise ModelError(f"{self.name}: {meta['name']} produced {total.shape[1]} output channel(s), but its "
                             f"metadata names {len(labels)} labels ({', '.join(labels)})")
        return total

    def _dense_prediction(self, case: "_Case", prob: np.ndarray, meta: dict[str, Any],
                          postprocess: bool, progress: Progress) -> Prediction:
        from medkern import _core

        progress.update("postprocess", 0.0)
        out = meta["output"]
        threshold = None if out["activation"] == "softmax" else float(out["threshold"])
        labels = _core.channel_argmax(prob, threshold, get_num_threads())
        # Linear interpolation weights sum to one, so with softmax the first class is one minus the
        # others on the input grid too: one resampling pass saved. Channels are written straight
        # into the vector image.
        complement = out["activation"] == "softmax" and len(prob) > 1
        stacked = np.empty(case.reference.shape + (len(prob),), dtype=np.float32)
        for c in range(int(complement), len(prob)):
            progress.update("postprocess", c / (len(prob) + 1))
            stacked[..., c] = _back_to_input(case.grid.with_array(prob[c]), case.reference, "linear").array
        if complement:
            others = stacked[..., 1] if len(prob) == 2 else stacked[..., 1:].sum(axis=-1, dtype=np.float32)
            np.subtract(np.float32(1), others, out=stacked[..., 0])
        progress.update("postprocess", len(prob) / (len(prob) + 1))
        label_image = _back_to_input(case.grid.with_array(labels), case.reference, "label")
        if postprocess and meta["postprocessing"]:
            label_image = label_image.with_array(postprocess_labels(
                np.asarray(label_image.array), stacked, label_image.spacing, meta["postprocessing"],
                first_channel=0 if out["activation"] == "softmax" else 1))
        return Prediction(label_names=list(out["labels"]),
                          probabilities=Image(stacked, **case.reference.geometry, vector=True),
                          labels=label_image)

    def _classify(self, case: "_Case", meta: dict[str, Any], tta: bool, progress: Progress) -> Prediction:
        size = meta["inference"]["patch_size"]
        x = _center_crop_or_pad(case.array, size)[None]
        flips = _flip_sets(len(size)) if tta else [()]
        scores = np.zeros(len(meta["output"]["labels"]), dtype=np.float64)
        for n, axes in enumerate(flips):
            progress.update("classify", n / len(flips))
            xf = np.ascontiguousarray(np.flip(x, tuple(2 + a for a in axes))) if axes else x
            try:
                logits = np.asarray(self(xf), dtype=np.float32).reshape(1, -1)
            except (ValueError, TypeError) as exc:
                if isinstance(exc, ModelError):
                    raise
                raise ModelError(f"{self.name}: model {meta['name']!r} gave an output that is not class "
                                 f"scores: {exc}") from None
            self._check_output(logits, meta)
            if logits.shape[1] != scores.size:
                raise ModelError(f"{meta['name']} produced {logits.shape[1]} class score(s), but its metadata "
                                 f"names {scores.size} labels")
            scores += self._activate(logits, meta)[0]
        scores /= len(flips)
        labels = meta["output"]["labels"]
        return Prediction(label_names=list(labels), scores={k: float(v) for k, v in zip(labels, scores)})


def postprocess_labels(labels: np.ndarray, probabilities: np.ndarray, spacing: Sequence[float],
                       ops: Sequence[dict[str, Any]], first_channel: int = 0) -> np.ndarray:
    """Apply validated ``postprocessing`` operations to a label map (new array, same dtype).

    Components are those of each label value separately (full neighbourhood: 26 in 3D, 8 in 2D),
    so touching lesions of different classes stay apart. ``probabilities`` holds one channel per
    output on the last axis; label ``v`` reads channel ``v - first_channel`` (0 for softmax, whose
    channel 0 is the background; 1 for sigmoid, whose labels count from 1).
    """
    from medkern._segment import label as connected

    out = np.array(labels, copy=True)
    voxel = float(np.prod(spacing))
    for op in ops:
        components, n = connected(out)
        components = np.asarray(components).ravel()
        if n == 0:
            break
        volume = np.bincount(components, minlength=n + 1) * voxel
        if op["op"] == "remove_small":
            keep = volume >= float(op["min_volume_mm3"])
        else:
            if op["by"] == "volume":
                score = volume
            else:
                flat = out.ravel()
                channel = np.clip(flat.astype(np.int64) - first_channel, 0, probabilities.shape[-1] - 1)
                own = probabilities.reshape(-1, probabilities.shape[-1])[np.arange(flat.size), channel]
                score = np.bincount(components, weights=np.where(flat > 0, own, 0.0), minlength=n + 1)
            score[0] = -np.inf
            # Stable order: ties keep the earlier component in scan order.
            top = np.argsort(-score[1:], kind="stable")[: int(op["n"])] + 1
            keep = np.zeros(n + 1, bool)
            keep[top] = True
        keep[0] = False
        out.ravel()[~keep[components]] = 0
    return out


@dataclass
class _Case:
    reference: Image     # the first channel image as given: the output grid
    grid: Image          # the model grid (reoriented, resampled) with any array
    array: np.ndarray    # (channels, *spatial) preprocessed float32


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
                "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


# Bounds on the work one prediction may ask for (far beyond real use): voxels of the model grid
# after resampling to the metadata's spacing, and network passes of the sliding window.
_MAX_GRID_VOXELS = 1 << 30
_MAX_WINDOWS = 1 << 21


def _count_non_finite(values: np.ndarray) -> int:
    """NaN and infinite values of a float array: one float64 sum (no temporary of the array's
    size) decides whether there are any; only then are they counted, in chunks."""
    if values.dtype.kind != "f" or values.size == 0:
        return 0
    with np.errstate(all="ignore"):
        if np.isfinite(np.sum(values, dtype=np.float64)):
            return 0
    flat = values.reshape(-1)
    step = 1 << 22
    return int(sum(np.count_nonzero(~np.isfinite(flat[i:i + step])) for i in range(0, flat.size, step)))


def _voxels(channel_images: Sequence[Any]) -> float:
    """Voxels of one case's channel images (0 for what :meth:`Model._prepare` will reject)."""
    return float(sum(img.size for img in channel_images if isinstance(img, Image)))


def _predict_costs(cases: Sequence[Sequence[Any]], meta: dict[str, Any], passes: int) -> tuple[float, float]:
    """Expected cost of preprocessing all ``cases`` and of everything after (network passes on
    the model grid, estimated from the physical volume, and the way back to each input grid)."""
    inp = meta["input"]
    prepare = network = finish = 0.0
    for case in cases:
        prepare += _PREPARE_NS * _voxels(case)
        first = case[0] if case and isinstance(case[0], Image) else None
        if first is None:
            continue
        if meta["task"] == "classification":
            network += _NETWORK_NS * passes * float(np.prod(meta["inference"]["patch_size"]))
            continue
        grid = first.size
        if inp["spacing"] is not None:
            grid *= float(np.prod(first.spacing) / np.prod(inp["spacing"]))
        network += _NETWORK_NS * passes * grid
        finish += _FINISH_NS * len(meta["output"]["labels"]) * first.size
    return prepare, network + finish


def _shape(dims: Sequence[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in dims)


def _flip_sets(ndim: int) -> list[tuple[int, ...]]:
    return [axes for r in range(ndim + 1) for axes in itertools.combinations(range(ndim), r)]


def _center_crop_or_pad(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Centre (channels, *spatial) on a window of ``size``, zero-padding where it is larger."""
    out = np.zeros((x.shape[0], *size), dtype=np.float32)
    src, dst = [slice(None)], [slice(None)]
    for n, s in zip(x.shape[1:], size):
        lo = (n - s) // 2
        if lo >= 0:
            src.append(slice(lo, lo + s))
            dst.append(slice(None))
        else:
            src.append(slice(None))
            dst.append(slice(-lo, -lo + n))
    out[tuple(dst)] = x[tuple(src)]
    return out


def reorient(img: Image, code: str) -> Image:
    """The same voxels with array axes permuted and flipped to point toward ``code`` (exact).

    ``code`` names per array axis the LPS direction it should increase toward (``"SPL"`` is
    medkern's default orientation). Oblique images get the closest axis-aligned match.
    """
    out = _reoriented_view(img, code)
    return out if out is img else out.with_array(np.ascontiguousarray(out.array))


def _reoriented_view(img: Image, code: str) -> Image:
    """:func:`reorient` with the array left as a (possibly non-contiguous) view."""
    target = [ORIENTATION_LETTERS[c] for c in code]
    d = img.direction
    best = max(itertools.permutations(range(img.ndim)),
               key=lambda perm: sum(abs(d[w, a]) for (w, _), a in zip(target, perm)))
    flips = [int(np.sign(d[w, a]) != s) for (w, s), a in zip(target, best)]
    if list(best) == list(range(img.ndim)) and not any(flips):
        return img
    index0 = np.array([img.shape[a] - 1 if f else 0 for a, f in zip(best, flips)], dtype=np.float64)
    origin_index = np.zeros(img.ndim)
    origin_index[list(best)] = index0
    direction = np.stack([d[:, a] * (-1 if f else 1) for a, f in zip(best, flips)], axis=1)
    array = np.transpose(img.array, best)
    array = np.flip(array, [t for t, f in enumerate(flips) if f])
    return Image(array, [img.spacing[a] for a in best], img.index_to_world(origin_index), direction)


def _to_model_grid(img: Image, orientation: str | None, spacing: Sequence[float] | None,
                   antialias: bool) -> Image:
    if orientation is not None:
        img = reorient(img, orientation)
    if spacing is not None and not np.allclose(img.spacing, spacing, rtol=1e-4, atol=0):
        from medkern._resample import resample

        img = resample(img, spacing, interpolation="linear", antialias=antialias)
    return img


def _back_to_input(img: Image, reference: Image, interpolation: str) -> Image:
    """An Image on the model grid brought onto ``reference``'s grid (exactly when only reoriented)."""
    if img.same_geometry(reference, atol=1e-6):
        return reference.with_array(np.asarray(img.array))
    back = _reoriented_view(img, _orientation_code(reference.direction))
    if back.same_geometry(reference, atol=1e-6):
        return reference.with_array(np.ascontiguousarray(back.array))
    from medkern._resample import resample_to

    # Flips alone keep the index map diagonal: the model-grid array is resampled as it is. An
    # axis permutation is undone first (one copy), so the map stays axis-aligned for the
    # separable kernels.
    lin = (np.linalg.inv(reference.affine) @ img.affine)[:img.ndim, :img.ndim]
    source = img if np.allclose(lin, np.diag(np.diag(lin)), rtol=0, atol=1e-9) else \
        back.with_array(np.ascontiguousarray(back.array))
    # The model grid covers the input's field of view only up to half a model voxel (its shape is
    # rounded): where an input voxel centre falls outside it, one replicated voxel around it keeps
    # every centre inside. The extreme centres are the grid's corners.
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in reference.shape])), dtype=np.float64)
    reach = source.world_to_index(reference.index_to_world(corners))
    if not np.all((reach >= -0.5 + 1e-6) & (reach < np.array(source.shape) - 0.5 - 1e-6)):
        source = Image(np.pad(source.array, 1, mode="edge"), source.spacing,
                       source.index_to_world(-np.ones(source.ndim)), source.direction)
    return resample_to(source, reference, interpolation=interpolation)


def _orientation_code(direction: np.ndarray) -> str:
    letters = {v: k for k, v in ORIENTATION_LETTERS.items()}
    code = ""
    for a in range(direction.shape[1]):
        w = int(np.argmax(np.abs(direction[:, a])))
        code += letters[(w, 1 if direction[w, a] > 0 else -1)]
    return code
