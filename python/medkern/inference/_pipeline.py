"""What a model's medkern metadata declares around its network: preprocessing onto the model
grid (reorientation, resampling, intensity operations), the sliding window or the centre crop,
test-time flips, the activation, the way back to the input grid, the declared post-processing of
the labels, and class scores."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, cast

import numpy as np

from medkern._dispatch import get_num_threads
from medkern._progress import Progress
from medkern._reorient import _orientation_code, _reoriented_view, reorient
from medkern.errors import ModelError
from medkern.image import Image
from medkern.inference.metadata import INTENSITY_FEATURES, OUTER_SHELL_FEATURES, SHELL_FEATURES
from medkern.inference.sliding import _scan_starts, sliding_window


@dataclass
class Prediction:
    """What :meth:`Model.predict` returns, on the grid of the image that was given.

    Parameters
    ----------
    label_names : list of str
        The model's output names.
    probabilities : Image, optional
        Dense tasks: a vector Image, one component per output channel (float32).
    labels : Image, optional
        Dense tasks: uint8, the argmax class (softmax) or the most probable channel above the
        threshold, numbered from 1 (sigmoid).
    scores : dict of str to float, optional
        Classification: class name -> probability.

    See Also
    --------
    Model.predict : Makes one.

    Examples
    --------
    >>> grid = mk.Image(np.zeros((2, 2, 2), np.uint8))
    >>> p = mk.Prediction(["background", "lesion"], labels=grid,
    ...                   probabilities=mk.Image(np.zeros((2, 2, 2, 2), np.float32), vector=True))
    >>> p.probability("lesion")
    Image(shape=(2, 2, 2), dtype=float32, spacing=(1, 1, 1), origin=(0, 0, 0), numpy)
    """

    label_names: list[str]
    probabilities: Image | None = None
    labels: Image | None = None
    scores: dict[str, float] | None = field(default=None)

    def probability(self, name: str) -> Image:
        """Return the probability map of one output channel, by its label name.

        Parameters
        ----------
        name : str
            One of ``label_names``.

        Returns
        -------
        Image
            float32, on the prediction's grid.

        Raises
        ------
        ValueError
            The prediction has class scores, not probability maps.
        KeyError
            No output has that name.

        See Also
        --------
        Model.predict

        Examples
        --------
        >>> probs = np.zeros((2, 2, 2, 2), np.float32)
        >>> probs[..., 1] = 0.75
        >>> p = mk.Prediction(["background", "lesion"], probabilities=mk.Image(probs, vector=True))
        >>> float(p.probability("lesion").array.mean())
        0.75
        """
        if self.probabilities is None:
            raise ValueError("this prediction has class scores, not probability maps")
        if name not in self.label_names:
            raise KeyError(f"no output named {name!r}; the model's labels are {self.label_names}")
        c = self.label_names.index(name)
        return Image(np.ascontiguousarray(self.probabilities.array[..., c]), **self.probabilities.geometry)


# Rough costs (ns, 2-core CPU, the shipped 3D UNets) that size the progress spans of a prediction:
# preprocessing per input voxel and channel, one network pass per model-grid voxel (patch
# overlap included), the way back to the input grid and post-processing per input voxel and label.
_PREPARE_NS, _NETWORK_NS, _FINISH_NS = 20.0, 3000.0, 40.0

# Bounds on the work one prediction may ask for (far beyond real use): voxels of the model grid
# after resampling to the metadata's spacing, and network passes of the sliding window.
_MAX_GRID_VOXELS = 1 << 30
_MAX_WINDOWS = 1 << 21


class SharedFrame(tuple):
    """One case's channel images, in the metadata's order, whose frame of reference was checked
    by :func:`channel_images`: a secondary image on another grid than the primary's is resampled
    straight onto the primary's model grid (one interpolation, not two)."""


def channel_images(meta: dict[str, Any], images: Mapping[str, Any], same_frame: bool) -> SharedFrame:
    """The channel images of ``{modality: Image or DicomSeries}``, in the metadata's order.

    The first modality is the primary: the prediction comes back on its grid. A secondary image
    on another grid must share the primary's frame of reference: DICOM series carry their
    FrameOfReferenceUID, which must be equal; a plain Image carries none, so the caller vouches
    with ``same_frame=True``. Either way the two fields of view must overlap in space. A DICOM
    PET series is read in SUVbw (:func:`medkern.suv`), the unit models read PET in.
    """
    from medkern.io.dicom import DicomSeries

    modalities = list(meta["input"]["modalities"])
    missing = [m for m in modalities if m not in images]
    unexpected = [str(k) for k in images if k not in modalities]
    if missing or unexpected:
        raise ModelError(f"{meta['name']} takes the modalities {modalities}; "
                         + "; ".join(([f"missing {missing}"] if missing else [])
                                     + ([f"not an input of this model: {unexpected}"] if unexpected else [])))
    read: list[Image] = []
    frames: list[str | None] = []
    for modality in modalities:
        value = images[modality]
        if isinstance(value, DicomSeries):
            frames.append(value.frame_of_reference_uid or None)
            if modality.upper() in ("PT", "PET"):
                from medkern._pet import suv

                read.append(suv(value, "bw"))
            else:
                read.append(value.read())
        elif isinstance(value, Image):
            frames.append(None)
            read.append(value)
        else:
            raise TypeError(f"predict: {modality} must be an mk.Image or an mk.DicomSeries, got "
                            f"{type(value).__name__}")
    primary = read[0]
    for modality, img, frame in zip(modalities[1:], read[1:], frames[1:]):
        check_same_frame(modalities[0], primary, frames[0], modality, img, frame, same_frame)
    return SharedFrame(read)


def check_same_frame(name_a: str, a: Image, frame_a: str | None, name_b: str, b: Image, frame_b: str | None,
                     same_frame: bool) -> None:
    """ModelError unless ``b`` may be resampled onto ``a``: FrameOfReferenceUIDs (None: unknown)
    must not differ; on another grid, unknown UIDs need the caller's ``same_frame``; the two
    fields of view must overlap."""
    if frame_a and frame_b and frame_a != frame_b:
        raise ModelError(f"{name_b} and {name_a} lie in different frames of reference (FrameOfReferenceUID "
                         f"{frame_b} vs {frame_a}): their coordinates are not comparable. Register {name_b} to "
                         f"{name_a} first (mk.register), resample it with mk.resample_to, and pass the result")
    if isinstance(b, Image) and b.ndim == a.ndim and b.same_geometry(a, atol=1e-3):
        return
    if not (frame_a and frame_b) and not same_frame:
        raise ModelError(f"{name_b} lies on another grid than {name_a}, and an mk.Image does not record its frame of "
                         f"reference, so medkern cannot check that the two share one. Pass the DICOM series "
                         f"(mk.DicomSeries, whose FrameOfReferenceUID is compared), or same_frame=True when you "
                         f"know they do (a PET/CT pair from one acquisition); otherwise register {name_b} first "
                         "(mk.register)")
    if b.ndim == a.ndim and not _overlap(a, b):
        raise ModelError(f"{name_b} and {name_a} do not overlap in space (world bounding boxes disjoint), so they "
                         "cannot share a frame of reference as placed; check their origins and directions")


def _overlap(a: Image, b: Image) -> bool:
    """Whether the world bounding boxes of two grids (voxel edges included) intersect."""
    boxes = []
    for img in (a, b):
        corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in img.shape])), dtype=np.float64)
        world = img.index_to_world(corners)
        boxes.append((world.min(axis=0), world.max(axis=0)))
    (lo_a, hi_a), (lo_b, hi_b) = boxes
    return bool(np.all(np.minimum(hi_a, hi_b) > np.maximum(lo_a, lo_b)))


@dataclass
class _Case:
    reference: Image     # the first channel image as given: the output grid
    grid: Image          # the model grid (reoriented, resampled) with any array
    array: np.ndarray    # (channels, *spatial) preprocessed float32


class Pipeline:
    """The steps of :meth:`medkern.Model.predict` around the network, as ``meta`` (validated
    medkern metadata) declares them. ``network`` runs the graph on one batch (a
    :class:`~medkern.inference._session.OnnxSession`: :func:`sliding_window` hands it the patches
    of a batch to run in parallel); ``name`` and ``output_name`` name the model and its first
    output in messages."""

    def __init__(self, name: str, meta: dict[str, Any], network: Callable[[Any], Any], output_name: str):
        self.name = name
        self.meta = meta
        self.network = network
        self.output_name = output_name

    def predict_many(self, inputs: Sequence[Sequence[Any]], tta: bool, postprocess: bool,
                     prog: Progress) -> list[Prediction]:
        """One :class:`Prediction` per case (a sequence of channel images), reporting to ``prog``."""
        meta = self.meta
        passes = len(_flip_sets(meta["input"]["spatial_dims"])) if tta else 1
        with prog:
            prepare_span, rest = prog.split(_predict_costs(inputs, meta, passes))
            cases = []
            for case, span in zip(inputs, prepare_span.split([_voxels(c) for c in inputs])):
                span.update("preprocess", 0.0)
                cases.append(self._prepare(case))
            if meta["task"] == "classification":
                return [self._classify(c, tta, span)
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
                probabilities = self._dense(stack, tta, next(spans))
                for n, prob in zip(members, probabilities):
                    results[n] = self._dense_prediction(cases[n], prob, postprocess, next(spans))
            return results  # type: ignore[return-value]

    def _prepare(self, channel_images: Sequence[Any]) -> _Case:
        meta = self.meta
        inp = meta["input"]
        if len(channel_images) != inp["channels"]:
            raise ModelError(f"{meta['name']} takes {inp['channels']} channel image(s) "
                             f"({', '.join(inp['modalities'])}), got {len(channel_images)}")
        shared_frame = isinstance(channel_images, SharedFrame)
        imgs = []
        for n, img in enumerate(channel_images):
            if not isinstance(img, Image):
                raise TypeError(f"predict: channel {n} must be an mk.Image (geometry is needed to reach the "
                                f"model's spacing), got {type(img).__name__}")
            if img.is_vector or img.ndim != inp["spatial_dims"]:
                raise ModelError(f"{meta['name']} takes {inp['spatial_dims']}D scalar images, channel {n} "
                                 f"({inp['modalities'][n]}) is {img.ndim}D{' vector' if img.is_vector else ''}")
            if n and not shared_frame and not img.same_geometry(imgs[0], atol=1e-3):
                raise ModelError(f"channel images must share one grid, but {inp['modalities'][n]} differs "
                                 f"from {inp['modalities'][0]} (spacing {img.spacing} vs {imgs[0].spacing}, "
                                 f"shape {img.shape} vs {imgs[0].shape}); resample it with mk.resample_to first, "
                                 f"or pass {{modality: image}} (resampled for you within one frame of reference)")
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
            if grid is None or img.same_geometry(imgs[0], atol=1e-3):
                img = _to_model_grid(img, inp["orientation"], inp["spacing"], inp["antialias"])
            else:
                img = _onto_grid(img, grid, inp["antialias"])
            if grid is None:
                grid = img
            x = preprocess_channel(np.asarray(img.array), n, meta["preprocessing"])
            bad = _count_non_finite(x)
            if bad:
                raise ValueError(f"predict: channel {n} ({inp['modalities'][n]}) holds {bad} non-finite value(s) "
                                 f"(NaN or infinity) after {meta['name']}'s preprocessing; the image must be finite")
            arrays.append(x)
        return _Case(reference, grid, arrays[0][None] if len(arrays) == 1 else np.stack(arrays))

    def _intensity(self, case: _Case) -> tuple[np.ndarray, np.ndarray | None] | None:
        """What ``classify_components`` reads from the image, when an operation asks for it."""
        ops = self.meta["postprocessing"]
        if not any(set(op.get("features", ())) & set(INTENSITY_FEATURES) for op in ops):
            return None
        return component_intensity(np.asarray(case.reference.array), self.meta["preprocessing"])

    def _activate(self, logits: np.ndarray) -> np.ndarray:
        """Softmax or sigmoid over the channels of ``(N, C, ...)`` logits, in place on one float32
        buffer: the full-size logits are the largest arrays of a prediction."""
        from medkern import _core

        meta = self.meta
        activation = meta["output"]["activation"]
        e = np.require(logits, np.float32, ["C_CONTIGUOUS", "WRITEABLE"])
        if activation != "none":
            for case in e:
                _core.activate(case, activation, get_num_threads())
        return e

    def _check_output(self, values: np.ndarray) -> None:
        """ModelError when the network's output holds NaN or infinity: its labels would be
        silently wrong (softmax and argmax of NaN give background everywhere)."""
        meta = self.meta
        bad = _count_non_finite(values)
        if bad:
            raise ModelError(f"{self.name}: model {meta['name']!r} produced {bad} non-finite value(s) (NaN or "
                             f"infinity) among the {values.size} values of its output {self.output_name!r}; "
                             "no labels are given from it (a broken export, or an input far outside the model's "
                             "training range)")

    def _dense(self, stack: np.ndarray, tta: bool, progress: Progress) -> np.ndarray:
        meta = self.meta
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
                logits = sliding_window(x, self.network, inf["patch_size"], inf["overlap"], inf["blend"],
                                        inf["sigma_scale"], inf["batch_size"], inf["padding"],
                                        spatial_dims=nsp, progress=span)
            except ValueError as exc:  # the network's output does not fit its patches
                if isinstance(exc, ModelError):
                    raise
                raise ModelError(f"{self.name}: model {meta['name']!r} does not fit its metadata: {exc}") from None
            self._check_output(logits)
            prob = self._activate(logits)
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

    def _dense_prediction(self, case: _Case, prob: np.ndarray, postprocess: bool, progress: Progress) -> Prediction:
        from medkern import _core

        meta = self.meta
        progress.update("postprocess", 0.0)
        out = meta["output"]
        threshold = None if out["activation"] == "softmax" else float(out["threshold"])
        labels = _core.channel_argmax(prob, threshold, get_num_threads())
        # Linear interpolation weights sum to one, so with softmax the first class is one minus the
        # others on the input grid too: one resampling pass saved. The channels go into the vector
        # image in one pass.
        complement = out["activation"] == "softmax" and len(prob) > 1
        planes = []
        for c in range(int(complement), len(prob)):
            progress.update("postprocess", c / (len(prob) + 1))
            planes.append(_back_to_input(case.grid.with_array(prob[c]), case.reference, "linear").array)
        stacked = _core.interleave_channels(planes, complement, get_num_threads())
        # Freed now, the planes' memory serves the arrays below without fresh page faults.
        del planes
        progress.update("postprocess", len(prob) / (len(prob) + 1))
        label_image = _back_to_input(case.grid.with_array(labels), case.reference, "label")
        if postprocess and meta["postprocessing"]:
            label_image = label_image.with_array(postprocess_labels(
                np.asarray(label_image.array), stacked, label_image.spacing, meta["postprocessing"],
                first_channel=0 if out["activation"] == "softmax" else 1, intensity=self._intensity(case)))
        return Prediction(label_names=list(out["labels"]),
                          probabilities=Image(stacked, **case.reference.geometry, vector=True),
                          labels=label_image)

    def _classify(self, case: _Case, tta: bool, progress: Progress) -> Prediction:
        meta = self.meta
        size = meta["inference"]["patch_size"]
        x = _center_crop_or_pad(case.array, size)[None]
        flips = _flip_sets(len(size)) if tta else [()]
        scores = np.zeros(len(meta["output"]["labels"]), dtype=np.float64)
        for n, axes in enumerate(flips):
            progress.update("classify", n / len(flips))
            xf = np.ascontiguousarray(np.flip(x, tuple(2 + a for a in axes))) if axes else x
            try:
                logits = np.asarray(self.network(xf), dtype=np.float32).reshape(1, -1)
            except (ValueError, TypeError) as exc:
                if isinstance(exc, ModelError):
                    raise
                raise ModelError(f"{self.name}: model {meta['name']!r} gave an output that is not class "
                                 f"scores: {exc}") from None
            self._check_output(logits)
            if logits.shape[1] != scores.size:
                raise ModelError(f"{meta['name']} produced {logits.shape[1]} class score(s), but its metadata "
                                 f"names {scores.size} labels")
            scores += self._activate(logits)[0]
        scores /= len(flips)
        labels = meta["output"]["labels"]
        return Prediction(label_names=list(labels), scores={k: float(v) for k, v in zip(labels, scores)})


def preprocess_channel(x: np.ndarray, channel: int, ops: Sequence[dict[str, Any]]) -> np.ndarray:
    """The declared intensity ``preprocessing`` of input channel ``channel`` (float32 out)."""
    from medkern._intensity import normalize, window

    for op in ops:
        if "channels" in op and channel not in op["channels"]:
            continue
        kind = op["op"]
        if kind == "clip":
            x = np.clip(x, op["low"], op["high"]).astype(np.float32)
        elif kind == "window":
            x = cast(np.ndarray, window(x, op["center"], op["width"], tuple(op["output_range"])))
        elif kind == "zscore":
            x = cast(np.ndarray, normalize(x, "zscore", mask=(x != 0) if op["mask"] == "nonzero" else None))
        elif kind == "percentile":
            x = cast(np.ndarray, normalize(x, "percentile", percentiles=(op["low"], op["high"]), clip=op["clip"]))
        else:
            x = (x * np.float32(op["scale"]) + np.float32(op["offset"])).astype(np.float32)
    return np.asarray(x, dtype=np.float32)


def component_intensity(image: np.ndarray, ops: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray | None]:
    """The image ``classify_components`` reads its intensity features from: the first input
    channel ``image`` (on the label grid) after the declared ``preprocessing`` ops, and the voxels
    a shell may hold (the non-zero ones when the model z-scores over those: a skull-stripped brain;
    None for all)."""
    nonzero = any(op["op"] == "zscore" and op["mask"] == "nonzero" and 0 in op.get("channels", [0]) for op in ops)
    return preprocess_channel(image, 0, ops), (image != 0) if nonzero else None


def postprocess_labels(labels: np.ndarray, probabilities: np.ndarray, spacing: Sequence[float],
                       ops: Sequence[dict[str, Any]], first_channel: int = 0,
                       intensity: tuple[np.ndarray, np.ndarray | None] | None = None) -> np.ndarray:
    """Apply validated ``postprocessing`` operations to a label map (new array, same dtype).

    Components are those of each label value separately (full neighbourhood: 26 in 3D, 8 in 2D),
    so touching lesions of different classes stay apart. ``probabilities`` holds one channel per
    output on the last axis; label ``v`` reads channel ``v - first_channel`` (0 for softmax, whose
    channel 0 is the background; 1 for sigmoid, whose labels count from 1). ``intensity``, the
    preprocessed image and shell mask of :func:`component_intensity` on the same grid, is needed
    by a ``classify_components`` that weighs intensity features.
    """
    from medkern import _core
    from medkern._segment import label as connected

    out = np.array(labels, copy=True)
    if probabilities.dtype != np.float32:
        probabilities = probabilities.astype(np.float32)
    voxel = float(np.prod(spacing))
    for op in ops:
        needs = set(op.get("features", ())) if op["op"] == "classify_components" else set()
        if needs & set(INTENSITY_FEATURES) and intensity is None:
            raise ValueError(f"postprocess_labels: classify_components weighs "
                             f"{sorted(needs & set(INTENSITY_FEATURES))}, which need the image: pass "
                             "intensity=component_intensity(image, preprocessing)")
        if intensity is not None and intensity[0].shape != labels.shape:
            raise ValueError(f"postprocess_labels: the intensity image has shape {intensity[0].shape}, "
                             f"the labels {labels.shape}; they must share the grid")
        # Only the labelled voxels' bounding box is read or cleared: a tumour is a few % of a CT.
        # Raster order inside the box is the whole array's, so components are numbered alike. The
        # shell features see a margin of their reach beyond it.
        margin = [math.ceil(shell_reach_mm(needs, float(op["shell_mm"])) / s) for s in spacing] \
            if needs & set(SHELL_FEATURES) else None
        box = _foreground_box(out, margin)
        if box is None:
            break
        region = np.ascontiguousarray(out[box])
        components, n = connected(region)
        counts, own = _core.component_probability_sums(components, region, probabilities[box], first_channel, n)
        volume = counts * voxel
        if op["op"] == "remove_small":
            keep = volume >= float(op["min_volume_mm3"])
        elif op["op"] == "classify_components":
            boxed = None if intensity is None else \
                (intensity[0][box], None if intensity[1] is None else intensity[1][box])
            keep = component_scores(components, region, probabilities[box], spacing, op, first_channel,
                                    counts, own, boxed) >= float(op["min_score"])
        else:
            score = volume if op["by"] == "volume" else own
            score[0] = -np.inf
            # Stable order: ties keep the earlier component in scan order.
            top = np.argsort(-score[1:], kind="stable")[: int(op["n"])] + 1
            keep = np.zeros(n + 1, bool)
            keep[top] = True
        drop = ~keep
        drop[0] = False  # background
        region[drop[components]] = 0
        out[box] = region
    return out


def component_features(components: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                       spacing: Sequence[float], names: Sequence[str], first_channel: int = 0,
                       counts: np.ndarray | None = None, own: np.ndarray | None = None,
                       intensity: tuple[np.ndarray, np.ndarray | None] | None = None,
                       shell_mm: float = 3.0) -> dict[str, np.ndarray]:
    """Per-component features of ``classify_components`` (see medkern.inference.metadata), index 0
    (background) included and meaningless.

    ``components`` numbers the components 1..n (0 elsewhere) of the label map ``labels``;
    ``probabilities`` holds one channel per output on the last axis. ``counts`` and ``own``
    (voxels and summed own-class probability per component) are computed when not given.
    ``intensity`` (:func:`component_intensity` on the same grid) is needed for the intensity
    features; the shell ones see only what the arrays hold, so give them
    ``shell_reach_mm(names, shell_mm)`` of margin.
    """
    from medkern import _core

    n = int(components.max(initial=0))
    if counts is None or own is None:
        counts, own = _core.component_probability_sums(
            np.ascontiguousarray(components, np.int32), np.ascontiguousarray(labels),
            np.ascontiguousarray(probabilities, np.float32), first_channel, n)
    size = np.maximum(counts, 1).astype(np.float64)
    sp = np.asarray(spacing, np.float64)
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore"):
        if "volume_mm3" in names or "log_volume_mm3" in names:
            out["volume_mm3"] = counts * float(np.prod(sp))
            out["log_volume_mm3"] = np.log(out["volume_mm3"])
    out["mean_probability"] = own / size
    if not {"max_probability", "elongation", "flatness", *INTENSITY_FEATURES} & set(names):
        return {name: out[name] for name in names}
    if set(INTENSITY_FEATURES) & set(names) and intensity is None:
        raise ValueError(f"component_features: {sorted(set(INTENSITY_FEATURES) & set(names))} need the image "
                         "(intensity=component_intensity(...))")
    # Only these need the voxels themselves: one scan of the box for their positions.
    at = np.nonzero(components)
    which = components[at]
    if "max_probability" in names:
        channel = labels[at].astype(np.intp) - first_channel
        out["max_probability"] = np.zeros(n + 1)
        np.maximum.at(out["max_probability"], which, probabilities[at + (channel,)])
    if "elongation" in names or "flatness" in names:
        # Coordinates in mm about the grid centre: the moments then stay small enough in double.
        mm = [(a - components.shape[d] / 2) * sp[d] for d, a in enumerate(at)]
        mean = [np.bincount(which, x, n + 1) / size for x in mm]
        cov = np.empty((n + 1, len(mm), len(mm)))
        for i in range(len(mm)):
            for j in range(i + 1):
                c = np.bincount(which, mm[i] * mm[j], n + 1) / size - mean[i] * mean[j]
                cov[:, i, j] = cov[:, j, i] = c + (sp[i] ** 2 / 12 if i == j else 0.0)
        lam = np.clip(np.linalg.eigvalsh(cov), 0.0, None)  # ascending
        out["elongation"] = np.sqrt(lam[:, -2] / lam[:, -1])
        if len(mm) == 3:
            out["flatness"] = np.sqrt(lam[:, 0] / lam[:, -1])
    if intensity is not None and set(INTENSITY_FEATURES) & set(names):
        image = intensity[0]
        out["mean_intensity"] = np.bincount(which, image[at].astype(np.float64), n + 1) / size
        if set(SHELL_FEATURES) & set(names):
            out.update(_shell_intensities(components, labels, intensity, spacing, shell_mm,
                                          shell_reach_mm(names, shell_mm), at, out["mean_intensity"]))
    return {name: out[name] for name in names}


def shell_reach_mm(names: Any, shell_mm: float) -> float:
    """How far from a component the shell features ``names`` look: 2 shell_mm with an outer shell."""
    return 2.0 * shell_mm if set(OUTER_SHELL_FEATURES) & set(names) else shell_mm


def _shell_intensities(components: np.ndarray, labels: np.ndarray, intensity: tuple[np.ndarray, np.ndarray | None],
                       spacing: Sequence[float], shell_mm: float, reach_mm: float, at: tuple[np.ndarray, ...],
                       inside: np.ndarray) -> dict[str, np.ndarray]:
    """The shell features of every component: mean, 10th and 90th percentiles of the image over
    its shell, the unlabelled voxels (inside the shell mask) within ``shell_mm`` of it, and where
    ``reach_mm`` (:func:`shell_reach_mm`) goes beyond it, the 90th percentile over those between
    ``shell_mm`` and ``reach_mm``; ``inside`` (its own mean) where a shell is empty."""
    from medkern._segment import distance_transform

    image, allowed = intensity
    n = inside.size - 1
    which = components[at]
    outer = reach_mm > shell_mm
    reach = [math.ceil(reach_mm / s) for s in spacing]
    lo = [np.full(n + 1, np.iinfo(np.intp).max) for _ in at]
    hi = [np.full(n + 1, -1) for _ in at]
    for d, a in enumerate(at):
        np.minimum.at(lo[d], which, a)
        np.maximum.at(hi[d], which, a)
    out = {name: inside.copy() for name in SHELL_FEATURES}
    for c in range(1, n + 1):
        # The component's box grown by the shells' reach: the transform stays small.
        sub = tuple(slice(max(int(lo[d][c]) - reach[d], 0), min(int(hi[d][c]) + reach[d] + 1, components.shape[d]))
                    for d in range(len(at)))
        squared = distance_transform(components[sub] != c, spacing, squared=True)
        free = labels[sub] == 0
        if allowed is not None:
            free &= allowed[sub]
        values = image[sub][free & (squared <= shell_mm ** 2)]
        if values.size:
            out["shell_mean_intensity"][c] = float(np.mean(values, dtype=np.float64))
            out["shell_p10_intensity"][c], out["shell_p90_intensity"][c] = np.percentile(values, (10, 90))
        if outer:
            values = image[sub][free & (squared > shell_mm ** 2) & (squared <= reach_mm ** 2)]
            if values.size:
                out["outer_shell_p90_intensity"][c] = float(np.percentile(values, 90))
    return out


def component_scores(components: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                     spacing: Sequence[float], op: dict[str, Any], first_channel: int = 0,
                     counts: np.ndarray | None = None, own: np.ndarray | None = None,
                     intensity: tuple[np.ndarray, np.ndarray | None] | None = None) -> np.ndarray:
    """The logistic score of a validated ``classify_components`` operation for each component
    (index 0, the background, included)."""
    features = component_features(components, labels, probabilities, spacing, op["features"], first_channel,
                                   counts, own, intensity, float(op["shell_mm"]))
    z = float(op["bias"]) + sum(float(w) * features[name] for name, w in zip(op["features"], op["weights"]))
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def _foreground_box(labels: np.ndarray, margin: Sequence[int] | None = None) -> tuple[slice, ...] | None:
    """The smallest box holding every non-zero voxel, grown by ``margin`` voxels per axis within
    the array; None when there is none."""
    # Integer labels as unsigned: non-zero is then > 0, and maxima find it without a volume-sized
    # temporary (whose fresh pages cost more than the reduction, right after the network).
    bits = labels.view(f"u{labels.itemsize}") if labels.dtype.kind in "biu" else (labels != 0)
    box = []
    # Two passes over the volume, then only the small projections: the first axis from
    # contiguous row blocks, the others from the projection along axis 0.
    first = bits.reshape(bits.shape[0], -1).max(axis=1)
    rest = bits.max(axis=0)
    hits = [first] + [rest.max(axis=tuple(a for a in range(rest.ndim) if a != axis)) for axis in range(rest.ndim)]
    for hit in hits:
        at = np.flatnonzero(hit)
        if not at.size:
            return None
        grow = 0 if margin is None else margin[len(box)]
        box.append(slice(max(int(at[0]) - grow, 0), min(int(at[-1]) + 1 + grow, hit.size)))
    return tuple(box)


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


def _to_model_grid(img: Image, orientation: str | None, spacing: Sequence[float] | None,
                   antialias: bool) -> Image:
    if orientation is not None:
        img = reorient(img, orientation)
    if spacing is not None and not np.allclose(img.spacing, spacing, rtol=1e-4, atol=0):
        from medkern._resample import resample

        img = cast(Image, resample(img, spacing, interpolation="linear", antialias=antialias))
    return img


def _onto_grid(img: Image, grid: Image, antialias: bool) -> Image:
    """A secondary channel image (same frame of reference, another grid) resampled straight onto
    the primary's model grid; smoothed first where the model grid is coarser (as
    :func:`medkern.resample` does with ``antialias``)."""
    from medkern._filters import gaussian
    from medkern._resample import resample_to

    # The model grid's voxel extent along each axis of ``img`` (exact for permuted or flipped
    # axes), in ``img`` voxels; the sigma is resample's: (scale - 1) / 2 input voxels.
    d_img = np.asarray(img.direction).reshape(img.ndim, img.ndim)
    d_grid = np.asarray(grid.direction).reshape(grid.ndim, grid.ndim)
    extent = np.abs(d_img.T @ d_grid) @ np.asarray(grid.spacing)
    scale = extent / np.asarray(img.spacing)
    if antialias and np.any(scale > 1.0):
        sigma = np.where(scale > 1.0, (scale - 1.0) / 2.0, 0.0)
        img = cast(Image, gaussian(img.astype(np.float32), sigma_vox=tuple(float(v) for v in sigma), mode="mirror"))
    return cast(Image, resample_to(img, grid, interpolation="linear"))


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
    return cast(Image, resample_to(source, reference, interpolation=interpolation))
