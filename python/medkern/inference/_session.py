"""The ONNX Runtime side of a model: the session (providers, threads, graph rewrites, checked
external data), and the ways to run it: host or device arrays, batch items on parallel lanes."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from medkern._dispatch import get_num_threads, is_cupy_array
from medkern.errors import ModelError

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    # onnxruntime-openvino (replaces the onnxruntime package): 1.3-2x the CPU provider on the
    # MONAI nets of benchmarks/inference_openvino.py, equal labels, float32 rounding apart.
    "openvino": ["OpenVINOExecutionProvider", "CPUExecutionProvider"],
}
_OPENVINO = "OpenVINOExecutionProvider"

# Arithmetic of the network's operators. bfloat16 keeps float32's range with an 8-bit mantissa;
# OpenVINO runs it natively on CPUs with AVX-512 BF16 or AMX (2.9-5.0x MONAI on the nets of
# bench_inference.py, against 1.8-2.5x in float32; benchmarks/inference_results.md). ONNX
# Runtime's CPU provider has no x86 BF16 convolutions, so there it is refused, not emulated.
PRECISIONS = ("fp32", "bf16")



@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, shape (None for a dynamic axis) and ONNX element type.

    Parameters
    ----------
    name : str
        The tensor's name in the graph.
    shape : tuple of int or None
        Its shape; None for a dynamic axis.
    type : str
        The ONNX element type, e.g. ``"tensor(float)"``.

    See Also
    --------
    medkern.Model : ``model.inputs`` and ``model.outputs`` list them.

    Examples
    --------
    >>> mk.models.load("sarcoma-ct", threads=1).inputs[0]
    TensorInfo(name='image', shape=(None, 1, None, None, None), type='tensor(float)')
    """

    name: str
    shape: tuple[int | None, ...]
    type: str



def _resolve_providers(providers: Any) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers == "auto":
        return [p for p in _PROVIDERS["cuda"] if p in available] or ["CPUExecutionProvider"]
    if isinstance(providers, str):
        if providers not in _PROVIDERS:
            raise ValueError(f"Model: providers must be 'auto', 'cpu', 'cuda', 'tensorrt', 'openvino' or a list of "
                             f"ONNX Runtime provider names, got {providers!r}")
        providers = _PROVIDERS[providers]
    providers = list(providers)
    missing = [p for p in providers if p not in available]
    if missing:
        raise ValueError(f"Model: execution provider(s) {missing} are not available in this onnxruntime "
                         f"(available: {available}); install onnxruntime-gpu for CUDA/TensorRT, "
                         "onnxruntime-openvino for OpenVINO, or use providers='cpu'")
    return providers



# ONNX Runtime session settings, each measured on the three MONAI networks of
# benchmarks/inference_levers.py (results in benchmarks/inference_results.md). Memory patterns pre-plan
# one block for every intermediate of a shape; the arena alone reuses freed blocks and keeps the
# peak lower. Module-level so that the benchmarks can compare alternatives; not an API.
SESSION_SETTINGS: dict[str, Any] = {
    "graph_optimization_level": "ORT_ENABLE_ALL",
    "execution_mode": "ORT_SEQUENTIAL",
    "enable_mem_pattern": False,
    "enable_cpu_mem_arena": True,
}

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



_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
                "tensor(int8)": np.int8, "tensor(bool)": np.bool_}



def _shape(dims: Sequence[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in dims)



class OnnxSession:
    """One model's ONNX Runtime session: ``name``, ``providers``, ``threads``, the graph's
    ``inputs`` / ``outputs``, and its ``custom_metadata`` (the ONNX metadata_props). Arguments as
    for :class:`medkern.Model`. Thread-safe: ONNX Runtime sessions take concurrent runs and no
    per-call state is kept here.
    """

    def __init__(self, source: str | os.PathLike | bytes, providers: Any = "auto", threads: int | None = None,
                 precision: str = "fp32"):
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
        if precision not in PRECISIONS:
            raise ValueError(f"Model: precision must be one of {PRECISIONS}, got {precision!r}")
        if precision != "fp32" and self.providers[0] != _OPENVINO:
            raise ValueError(f"Model: precision={precision!r} needs providers='openvino' (the onnxruntime-openvino "
                             f"package); {self.providers[0]} computes in float32 only")
        self.precision = precision
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
            self.custom_metadata: dict[str, str] = self._session.get_modelmeta().custom_metadata_map
        except (UnicodeDecodeError, RuntimeError, ValueError, TypeError) as exc:
            raise ModelError(f"{self.name}: the model's names or metadata are corrupt ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]})") from None
        if not self.inputs or not self.outputs:
            raise ModelError(f"{self.name}: the graph has {len(self.inputs)} input(s) and {len(self.outputs)} "
                             "output(s); a model needs at least one of each")

    def _new_session(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                   SESSION_SETTINGS["graph_optimization_level"])
        options.execution_mode = getattr(ort.ExecutionMode, SESSION_SETTINGS["execution_mode"])
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_mem_pattern = SESSION_SETTINGS["enable_mem_pattern"]
        options.enable_cpu_mem_arena = SESSION_SETTINGS["enable_cpu_mem_arena"]
        # Warnings about unused initialisers are not the user's concern, and errors arrive as
        # exceptions (a ModelError with ONNX Runtime's message): nothing is logged on stderr.
        options.log_severity_level = 4
        return ort.InferenceSession(self._source, options, providers=[self._with_options(p, threads)
                                                                      for p in self.providers])

    def _with_options(self, provider: str, threads: int) -> Any:
        """OpenVINO gets the thread count and the precision as explicit settings: its own
        defaults are every core and, on CPUs with AMX, bfloat16."""
        if provider != _OPENVINO:
            return provider
        hint = {"fp32": "f32", "bf16": "bf16"}[self.precision]
        return (provider, {"device_type": "CPU", "num_of_threads": str(threads),
                           "load_config": json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": hint}})})

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
        :func:`medkern.sliding_window` calls. With the OpenVINO provider the items run one after
        another, each on all threads.
        """
        parts = [part for part, _ in self._run_parts(batch)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run_parts(self, batch: Any) -> Iterator[tuple[Any, int]]:
        """:meth:`run_independent` as consecutive pieces of the batch, each handed out with the
        number of cores still running later pieces, so the caller can use the others on it.

        Whole rounds of ``threads`` items run one item per single-threaded run, ``threads`` runs
        at a time: a run's intermediates are those of one item, so a batch of 4 on 2 cores peaks
        like a batch of 2 (UNet of benchmarks/inference_levers.py: -35 % peak RSS, no slower).
        OpenVINO runs the items one after another, each on all threads: as fast as the whole
        batch, with one item's intermediates (bench_inference.py UNet, batch 4: 387 -> 242 MB)."""
        sequential = self.providers[0] == _OPENVINO
        lanes = self.threads if self.providers == ["CPUExecutionProvider"] and not is_cupy_array(batch) else 1
        items = len(batch) if getattr(batch, "ndim", 0) >= 1 else 0
        rounds = items // lanes
        split = items > 1 if sequential else lanes > 1 and rounds > 0
        if not split or len(self.inputs) != 1:
            yield self(batch), 0
            return
        name = self.inputs[0].name
        x = self._feeds([batch])[name]
        if sequential:
            for n in range(items):
                yield self._ort_run(self._session, {name: x[n:n + 1]})[0], 0
            return
        session = self._single_threaded()

        def run_item(n: int) -> np.ndarray:
            return self._ort_run(session, {name: x[n:n + 1]})[0]

        done = lanes * rounds
        pool = self._thread_pool(lanes)
        futures = [pool.submit(run_item, n) for n in range(done)]
        try:
            for n, future in enumerate(futures):
                yield future.result(), min(lanes, done - n - 1)
        finally:  # an error (or an abandoned generator) leaves no queued run behind
            for future in futures:
                future.cancel()
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

