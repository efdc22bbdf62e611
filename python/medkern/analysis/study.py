"""Studies as ``mk.analyze`` sees them: which images a study holds, and which one a model reads.

A study is a DICOM folder (one or several series), a list of DICOM files, a NIfTI file, an
``Image`` or several (a list, or a dict ``modality -> Image``). Series are chosen by modality from
the model's metadata; the choice and its reason are recorded, because a report has to say which
images it describes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from medkern.errors import DicomError
from medkern.image import Image

__all__ = ["StudyImage", "Candidate", "dicom_modality", "load_candidates", "choose"]

# Model metadata names channels by what they show ("T1", "CT", "PT"); DICOM by the modality.
_DICOM_MODALITY = {"CT": "CT", "PT": "PT", "PET": "PT", "MR": "MR", "T1": "MR", "T1C": "MR",
                   "T1GD": "MR", "T2": "MR", "FLAIR": "MR", "DWI": "MR", "ADC": "MR"}


def dicom_modality(name: str) -> str:
    """The DICOM Modality that carries a model input named ``name`` (``"T1"`` -> ``"MR"``)."""
    return _DICOM_MODALITY.get(name.upper(), name.upper())


@dataclass
class Candidate:
    """One image of a study that a model might read (a DICOM series or a given image)."""

    modality: str | None
    description: str
    source: str
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    study_uid: str | None = None
    shape: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    problems: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()
    series: Any = field(default=None, repr=False)   # DicomSeries, read lazily
    image: Image | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        return {"series_uid": self.series_uid, "modality": self.modality, "description": self.description,
                "shape": list(self.shape), "spacing": [round(float(s), 4) for s in self.spacing],
                "problems": list(self.problems)}

    def read(self) -> Image:
        if self.image is None:
            self.image = self.series.read()
        return self.image


@dataclass
class StudyImage:
    """The image a model reads, with where it came from and why it was picked."""

    image: Image
    candidate: Candidate
    reason: str


def _from_series(series: Any, path_map: dict[Path, Path] | None = None) -> Candidate:
    files = tuple(path_map.get(f, f) for f in series.files) if path_map else tuple(series.files)
    return Candidate(modality=series.modality or None, description=series.description or "",
                     source=str(files[0].parent) if files else "", series_uid=series.key,
                     frame_of_reference_uid=series.frame_of_reference_uid or None,
                     study_uid=series.study_uid or None, shape=tuple(series.shape),
                     spacing=tuple(series.spacing), problems=tuple(series.problems), files=files,
                     series=series)


def _from_image(img: Any, modality: str | None, source: str) -> Candidate:
    if not isinstance(img, Image):
        raise TypeError(f"study: expected an mk.Image, got {type(img).__name__}")
    return Candidate(modality=modality, description=source, source=source, shape=tuple(img.shape),
                     spacing=tuple(img.spacing), image=img)


def _dicom_files(paths: Sequence[Path]) -> list[Candidate]:
    """Series among an explicit list of DICOM files, grouped as a folder of them would be."""
    from medkern.io.dicom import list_dicom_series

    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"study: {len(missing)} file(s) of the list do not exist, e.g. {missing[0]}")
    # The series reader groups a folder; links to the listed files make one without copying them.
    tmp = Path(tempfile.mkdtemp(prefix="medkern-study-"))
    try:
        path_map = {}
        for n, p in enumerate(paths):
            link = tmp / f"{n:06d}.dcm"
            os.symlink(p.resolve(), link)
            path_map[link] = p
        series = list_dicom_series(tmp, recursive=False)
        candidates = [_from_series(s, path_map) for s in series]
        for c in candidates:   # read now: the links go away with the folder
            c.read()
        return candidates
    finally:
        for link in tmp.iterdir():
            link.unlink()
        tmp.rmdir()


def load_candidates(study: Any) -> list[Candidate]:
    """Every image of ``study`` a model might read (headers only for DICOM folders)."""
    from medkern.io import read
    from medkern.io.dicom import list_dicom_series

    if isinstance(study, Image):
        return [_from_image(study, None, "image given in memory")]
    if isinstance(study, dict):
        return [_from_image(img, str(mod), f"image given in memory as {mod!r}") for mod, img in study.items()]
    if isinstance(study, (list, tuple)):
        if not study:
            raise ValueError("study: the list is empty; give a DICOM folder, DICOM files, a NIfTI file or mk.Image(s)")
        if all(isinstance(s, Image) for s in study):
            return [_from_image(img, None, f"image {n} given in memory") for n, img in enumerate(study)]
        if all(isinstance(s, (str, os.PathLike)) for s in study):
            return _dicom_files([Path(s) for s in study])
        raise TypeError("study: a list must hold only mk.Image objects or only DICOM file paths")
    if not isinstance(study, (str, os.PathLike)):
        raise TypeError(f"study must be a DICOM folder, a list of DICOM files, a NIfTI file or mk.Image(s), "
                        f"got {type(study).__name__}")
    path = Path(study)
    if not path.exists():
        raise FileNotFoundError(f"study: {path} does not exist")
    if path.is_dir():
        series = list_dicom_series(path)
        if not series:
            unreadable = "" if not any(path.rglob("*")) else " (files are there, but none is a DICOM image)"
            raise DicomError(f"study: no DICOM image series under {path}{unreadable}")
        return [_from_series(s) for s in series]
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return [_from_image(read(path), None, str(path))]
    return _dicom_files([path])


def choose(candidates: list[Candidate], modality: str) -> StudyImage:
    """The candidate a model input named ``modality`` reads, and why.

    Among the series of the right DICOM modality: regular series before irregular ones, 3D before
    2D, then the most slices, then the finest in-plane spacing; MR inputs named after a weighting
    (``"T1"``) prefer series whose description names it. Images without a modality (NIfTI, arrays)
    are taken as the model's modality only when the study has no other images.
    """
    want = dicom_modality(modality)
    typed = [c for c in candidates if c.modality is not None]
    if not typed:
        if len(candidates) > 1:
            raise ValueError(f"study: {len(candidates)} images without a modality; give a dict "
                             f"{{'{modality}': image, ...}} so each image's modality is known")
        c = candidates[0]
        return StudyImage(c.read(), c, f"the study's only image, taken as {modality} "
                                       f"({'NIfTI' if c.source.lower().endswith(('.nii', '.nii.gz')) else 'an image'} "
                                       "carries no modality)")
    matching = [c for c in typed if dicom_modality(c.modality) == want]
    if not matching:
        found = sorted({c.modality for c in typed})
        raise ValueError(f"study: no {want} series for a model that reads {modality}; the study holds "
                         f"{', '.join(found)}. Pick a model for that modality (model=...)")
    weighting = modality.upper() if want == "MR" and modality.upper() != "MR" else None

    def rank(c: Candidate) -> tuple:
        named = weighting is not None and weighting in c.description.upper().replace(" ", "")
        return (bool(c.problems), len(c.shape) < 3, not named,
                -(c.shape[0] if len(c.shape) == 3 else 1), min(c.spacing[-2:]) if c.spacing else 0.0)

    ordered = sorted(matching, key=rank)
    best = ordered[0]
    why = [f"modality {best.modality} matches the model input {modality}"]
    if len(matching) > 1:
        why.append(f"chosen among {len(matching)} {want} series: regular before irregular, 3D before 2D"
                   + (f", description naming {weighting}" if weighting else "")
                   + ", most slices, finest in-plane spacing")
    if best.problems:
        why.append("irregular series read with recovery: " + "; ".join(best.problems))
    others = len(typed) - len(matching)
    if others:
        why.append(f"{others} series of other modalities not used by this model")
    try:
        image = best.read()
    except DicomError:
        if not best.problems:
            raise
        image = best.series.read(allow_irregular=True)
        best.image = image
    return StudyImage(image, best, "; ".join(why))
