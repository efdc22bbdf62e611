"""mk.Model: an ONNX Runtime session plus the preprocessing its medkern metadata describes.

The session side (providers, threads, graph rewrites, device I/O, parallel lanes) is
:mod:`medkern.inference._session`; what the metadata declares around the network
(preprocessing, sliding window, test-time flips, activation, post-processing, class scores) is
:mod:`medkern.inference._pipeline`.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Mapping, Sequence

from medkern._docstrings import fill_doc
from medkern._progress import Progress
from medkern._reorient import reorient as reorient
from medkern._typing import Array, ProgressArg
from medkern.errors import ModelError
from medkern.image import Image
from medkern.inference._pipeline import Pipeline, Prediction, channel_images
from medkern.inference._pipeline import postprocess_labels as postprocess_labels
from medkern.inference._session import OnnxSession, TensorInfo
from medkern.inference.metadata import METADATA_KEY, check_graph_against_metadata, parse_metadata

__all__ = ["Model", "Prediction", "TensorInfo"]


class Model:
    """An exported model (ONNX) ready to run, with the preprocessing recorded in its metadata.

    ``model.metadata`` is the validated medkern metadata (None for a bare ONNX file, which still
    runs through :meth:`run` and as the ``fn`` of :func:`sliding_window`); ``model.inputs`` /
    ``model.outputs`` describe the graph. The graph is loaded with the rewrites of
    ``medkern.inference.graph`` (a single-slope ``PRelu`` becomes ``LeakyRelu``; a strided
    ``ConvTranspose`` with at most 4 output channels takes its sub-pixel form). One Model may be
    used from several threads at once (ONNX Runtime sessions are thread-safe; medkern keeps no
    per-call state on it). Calling the model, ``model(batch)``, returns the first output for one
    input: the ``fn`` that :func:`sliding_window` calls.

    Parameters
    ----------
    source : str, os.PathLike or bytes
        Path to an ``.onnx`` file, or its bytes.
    providers : str or list of str, optional
        ``"auto"`` (CUDA when onnxruntime-gpu sees a device, else CPU), ``"cpu"``, ``"cuda"``,
        ``"tensorrt"``, ``"openvino"`` (with the ``onnxruntime-openvino`` package, which replaces
        ``onnxruntime``; faster than the CPU provider on 3D networks), or a list of ONNX Runtime
        provider names.
    threads : int, optional
        CPU cores to use: the intra-op threads of one run, and the number of batch items
        :meth:`run_independent` runs at once; default :func:`get_num_threads`.
    precision : {"fp32", "bf16"}, optional
        The network's arithmetic. ``"bf16"`` (bfloat16, float32's range with an 8-bit mantissa)
        needs ``providers="openvino"`` and pays on CPUs with AVX-512 BF16 or AMX: on the MONAI
        nets of ``benchmarks/inference_results.md`` it is 1.6-1.9x faster than float32, and the
        labels' Dice on the shipped models' validation cases changes by at most 0.004.

    Raises
    ------
    medkern.ModelError
        Not a readable ONNX model, invalid medkern metadata, or metadata that contradicts the
        graph's inputs.
    ValueError
        Unknown providers or precision, or ``precision="bf16"`` with a provider other than OpenVINO.

    See Also
    --------
    medkern.models.load : Load a shipped model.
    write_model_metadata : Attach the preprocessing recipe to an exported model.
    sliding_window : Patch-wise inference with any callable.

    Examples
    --------
    >>> model = mk.models.load("sarcoma-ct", threads=1)
    >>> model
    Model('sarcoma-ct', segmentation, providers=['CPUExecutionProvider'])
    >>> model.metadata["input"]["spacing"], model.metadata["output"]["labels"]
    ([4.0, 4.0, 4.0], ['background', 'gtv'])
    """

    def __init__(self, source: str | os.PathLike | bytes, providers: str | Sequence[str] = "auto",
                 threads: int | None = None, precision: str = "fp32") -> None:
        self._onnx = OnnxSession(source, providers, threads, precision)
        try:
            self.metadata = parse_metadata(self._onnx.custom_metadata.get(METADATA_KEY))
            if self.metadata is not None:
                check_graph_against_metadata(self.metadata, [(i.name, list(i.shape)) for i in self.inputs])
        except ModelError as exc:
            raise ModelError(f"{self.name}: {exc}") from None
        self._pipeline = None if self.metadata is None else \
            Pipeline(self.name, self.metadata, self._onnx, self.outputs[0].name)

    @property
    def name(self) -> str:
        """The model's path, or ``"model bytes"`` for a model given as bytes."""
        return self._onnx.name

    @property
    def providers(self) -> list[str]:
        """The ONNX Runtime execution providers, in order of preference."""
        return self._onnx.providers

    @property
    def threads(self) -> int:
        """CPU cores the model uses (intra-op threads, and concurrent items of :meth:`run_independent`)."""
        return self._onnx.threads

    @property
    def precision(self) -> str:
        """The network's arithmetic: ``"fp32"`` or ``"bf16"``."""
        return self._onnx.precision

    @property
    def inputs(self) -> list[TensorInfo]:
        """The graph's inputs: name, shape (None for a dynamic axis) and element type."""
        return self._onnx.inputs

    @property
    def outputs(self) -> list[TensorInfo]:
        """The graph's outputs: name, shape (None for a dynamic axis) and element type."""
        return self._onnx.outputs

    def __repr__(self) -> str:
        task = self.metadata["task"] if self.metadata else "no medkern metadata"
        name = self.metadata["name"] if self.metadata else self.name
        return f"Model({name!r}, {task}, providers={self.providers})"

    # ------------------------------------------------------------------ raw execution
    def run(self, *arrays: Array) -> list[Array]:
        """Run the graph on its inputs (positional, in graph order) and return every output.

        NumPy inputs give NumPy outputs. CuPy inputs on a CUDA session are bound on the device
        (ONNX Runtime IO binding) and give CuPy outputs, with no host round trip.

        Parameters
        ----------
        *arrays : numpy.ndarray or cupy.ndarray
            One array per graph input, in graph order.

        Returns
        -------
        list of numpy.ndarray or cupy.ndarray
            Every graph output, in graph order.

        Raises
        ------
        medkern.ModelError
            Wrong number, shape or type of inputs.

        See Also
        --------
        predict : Run on an Image with the metadata's preprocessing.
        run_independent : A batch whose items run concurrently.

        Examples
        --------
        >>> model = mk.models.load("sarcoma-ct", threads=1)
        >>> (logits,) = model.run(np.zeros((1, 1, 32, 32, 32), np.float32))
        >>> logits.shape
        (1, 2, 32, 32, 32)
        """
        return self._onnx.run(*arrays)

    def __call__(self, batch: Array) -> Array:
        """First output for one input: the ``fn`` that :func:`medkern.sliding_window` calls."""
        return self.run(batch)[0]

    def run_independent(self, batch: Array) -> Array:
        """Return the first output for a batch whose items do not interact (patches, separate cases).

        On the CPU the items run concurrently, ``threads`` at a time, each as a single-threaded
        run of one extra session (which holds the weights once more). One whole-network run per
        core has no per-operator thread synchronisation, a large part of a multi-threaded run of
        a small-channel 3D network (the benchmark UNet: 10-20 % faster). Items left over after
        whole rounds, and batches on a GPU, run as ``model(batch)``. For any network that treats
        batch items separately the values equal ``model(batch)`` up to float32 rounding (ONNX
        Runtime's convolutions sum in another order for another thread count); this is what
        :func:`sliding_window` calls.

        Parameters
        ----------
        batch : numpy.ndarray or cupy.ndarray
            The batch, items on axis 0.

        Returns
        -------
        numpy.ndarray or cupy.ndarray
            The first graph output for the whole batch.

        See Also
        --------
        run : Every output, one session run.

        Examples
        --------
        >>> model = mk.models.load("sarcoma-ct", threads=1)
        >>> model.run_independent(np.zeros((2, 1, 32, 32, 32), np.float32)).shape
        (2, 2, 32, 32, 32)
        """
        return self._onnx.run_independent(batch)

    def _run_parts(self, batch: Any) -> Iterator[tuple[Any, int]]:
        """What :func:`medkern.sliding_window` runs a batch of patches with (see
        :class:`medkern.inference.sliding._RunsInParts`)."""
        return self._onnx._run_parts(batch)

    # The ONNX Runtime sessions themselves, reachable so that instrumentation can wrap their
    # ``run`` (benchmarks/bench_inference.py measures the network's share of a prediction).
    @property
    def _session(self) -> Any:
        return self._onnx._session

    @_session.setter
    def _session(self, session: Any) -> None:
        self._onnx._session = session

    @property
    def _single(self) -> Any:
        return self._onnx._single

    @_single.setter
    def _single(self, session: Any) -> None:
        self._onnx._single = session

    def _single_threaded(self) -> Any:
        return self._onnx._single_threaded()

    # ------------------------------------------------------------------ image prediction
    def _require_metadata(self) -> dict[str, Any]:
        if self.metadata is None:
            raise ModelError(f"{self.name} has no medkern metadata (metadata_props[{METADATA_KEY!r}]), so "
                             "predict() does not know its preprocessing; attach it with "
                             "mk.write_model_metadata, or call model.run / mk.sliding_window directly")
        return self.metadata

    @fill_doc
    def predict(self, *images: Image | Mapping[str, Any], tta: bool | None = None, postprocess: bool = True,
                same_frame: bool = False, progress: ProgressArg | Progress = None) -> Prediction:
        """Predict on one image, one image per input channel, or a ``{modality: image}`` mapping.

        Steps, all from the metadata: reorient to the model's orientation (axis permutation and
        flips, exact), resample to its spacing (linear; the field of view is kept), preprocess,
        sliding window (dense tasks) or one centre-cropped pass (classification), activation,
        then back onto the given image's grid: probabilities with linear interpolation, labels
        with ``label`` interpolation. Last, the metadata's ``postprocessing`` (the model's
        declared clean-up: small components removed, the top-n components kept) is applied to
        the labels. Probabilities are never altered.

        A multi-input model (``input.modalities`` such as ``["CT", "PT"]``) takes its channels
        either positionally, all on one grid, or as one mapping ``{"CT": ct, "PT": pet}`` whose
        keys are the metadata's modalities. The first modality is the primary: the prediction
        comes back on its grid, and each other image on another grid is resampled straight onto
        the primary's model grid (linear, anti-aliased where coarser) -- but only within one frame
        of reference. A :class:`~medkern.DicomSeries` value carries its FrameOfReferenceUID,
        which must equal the primary's; an :class:`~medkern.Image` records none, so pass
        ``same_frame=True`` when you know the images share one (a PET/CT pair of one
        acquisition). Images in different frames of reference must be registered first
        (:func:`medkern.register`). A DICOM PET series value is read in SUVbw
        (:func:`medkern.suv`).

        Parameters
        ----------
        *images : Image or mapping of str to Image or DicomSeries
            One image; one per input channel in the metadata's order, on one grid; or one mapping
            of modality name to image (or DICOM series), the grids may differ.
        tta : bool, optional
            Average the probabilities over all flips of the spatial axes (2^ndim passes). Default
            None: as the metadata's ``inference.tta`` declares (false unless the model's authors
            validated it with flips).
        postprocess : bool, optional
            Apply the metadata's post-processing to the labels (default); False returns the raw
            labels.
        same_frame : bool, optional
            Mapping input only: vouch that plain Images on different grids share the primary's
            frame of reference (their fields of view must still overlap). Default False: such
            images are refused.
        %(progress)s
            Stages ``"preprocess"``, ``"patches"`` (the sliding window, one call per batch of
            patches; ``"classify"`` for classification models) and ``"postprocess"``.

        Returns
        -------
        Prediction
            Probabilities and labels on the given image's grid (dense tasks), or class scores.

        Raises
        ------
        medkern.ModelError
            The model has no medkern metadata; the images do not fit it; a mapping names other
            modalities than the model's; secondary images lie in another frame of reference, or
            on another grid without ``same_frame=True``.
        medkern.Cancelled
            ``progress`` returned False.

        See Also
        --------
        predict_many : Several cases, sharing patch batches.
        medkern.analyze : Prediction, measurement and guideline in one call.

        Examples
        --------
        >>> model = mk.models.load("sarcoma-ct", threads=1)
        >>> ct = np.full((24, 64, 64), -100, np.int16)
        >>> k, j, i = np.mgrid[:24, :64, :64]
        >>> ct[((k - 12) * 3) ** 2 + (j - 32) ** 2 + (i - 32) ** 2 < 15 ** 2] = 60
        >>> img = mk.Image(ct, spacing=(3.0, 1.0, 1.0))
        >>> prediction = model.predict(img)
        >>> prediction.labels
        Image(shape=(24, 64, 64), dtype=uint8, spacing=(3, 1, 1), origin=(0, 0, 0), numpy)
        >>> int(prediction.labels.array.max()), prediction.label_names
        (1, ['background', 'gtv'])
        """
        with Progress(progress, "Model.predict") as prog:
            return self.predict_many([images[0] if len(images) == 1 else tuple(images)], tta=tta,
                                     postprocess=postprocess, same_frame=same_frame, progress=prog)[0]

    @fill_doc
    def predict_many(self, images: Sequence[Image | tuple[Image, ...] | list[Image] | Mapping[str, Any]],
                     tta: bool | None = None, postprocess: bool = True, *, same_frame: bool = False,
                     progress: ProgressArg | Progress = None) -> list[Prediction]:
        """Predict on several cases; cases whose model-grid shapes agree share patch batches.

        Parameters
        ----------
        images : sequence of Image, of tuple of Image, or of mapping
            One Image per case, a tuple of per-channel Images, or a ``{modality: image}`` mapping
            (as for :meth:`predict`).
        tta : bool, optional
            As for :meth:`predict`.
        postprocess : bool, optional
            As for :meth:`predict`.
        same_frame : bool, optional
            As for :meth:`predict`.
        %(progress)s
            Over all the cases.

        Returns
        -------
        list of Prediction
            One per case, in order.

        Raises
        ------
        medkern.ModelError
            The model has no medkern metadata, or an image does not fit it.

        See Also
        --------
        predict : One case.

        Examples
        --------
        >>> model = mk.models.load("sarcoma-ct", threads=1)
        >>> ct = np.full((24, 64, 64), -100, np.int16)
        >>> k, j, i = np.mgrid[:24, :64, :64]
        >>> ct[((k - 12) * 3) ** 2 + (j - 32) ** 2 + (i - 32) ** 2 < 15 ** 2] = 60
        >>> img = mk.Image(ct, spacing=(3.0, 1.0, 1.0))
        >>> [p.labels.shape for p in model.predict_many([img, img[:, :32, :32]])]
        [(24, 64, 64), (24, 32, 32)]
        """
        meta = self._require_metadata()
        prog = Progress(progress, "Model.predict_many")
        inputs = [channel_images(meta, case, same_frame) if isinstance(case, Mapping)
                  else case if isinstance(case, (tuple, list)) else (case,) for case in images]
        if tta is None:
            tta = bool(meta["inference"]["tta"])
        return self._pipeline.predict_many(inputs, tta, postprocess, prog)
