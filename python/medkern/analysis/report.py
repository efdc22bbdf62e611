"""The result of ``mk.analyze``: a versioned, JSON-able report plus the images it describes.

``report.json`` follows ``schemas/report-v1.schema.json`` (shipped in the package); every written
report is validated against it before anything is moved into place.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medkern.image import Image

__all__ = ["Report", "REPORT_SCHEMA_VERSION", "report_schema", "validate_report", "DISCLAIMER"]

REPORT_SCHEMA_VERSION = 1
DISCLAIMER = ("Research decision support, not a medical device. Findings come from an automated model "
              "and must be reviewed by a qualified clinician; recommendations restate published "
              "guidelines for the inputs shown and are not a treatment decision.")
_SCHEMAS = Path(__file__).resolve().parent / "schemas"


@lru_cache(maxsize=1)
def report_schema() -> dict[str, Any]:
    """Return the JSON Schema of ``report.json`` (draft 2020-12).

    Returns
    -------
    dict
        The schema ``report-v1.schema.json`` shipped in the package (cached: do not modify it).

    See Also
    --------
    validate_report : Check a report against it.

    Examples
    --------
    >>> from medkern.analysis import report_schema
    >>> report_schema()["$schema"]
    'https://json-schema.org/draft/2020-12/schema'
    """
    return json.loads((_SCHEMAS / "report-v1.schema.json").read_text())


def validate_report(data: dict[str, Any]) -> None:
    """Check a report against the report schema.

    Parameters
    ----------
    data : dict
        A report as ``Report.to_dict()`` gives it.

    Raises
    ------
    ValueError
        ``data`` breaks the schema; the message names every place (the first 20).

    See Also
    --------
    report_schema : The schema.

    Examples
    --------
    >>> from medkern.analysis import validate_report
    >>> try:
    ...     validate_report({"schema_version": 1})
    ... except ValueError as exc:
    ...     print(str(exc).splitlines()[0])
    report does not follow report-v1.schema.json:
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(report_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
    if errors:
        lines = [f"  {'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors[:20]]
        raise ValueError("report does not follow report-v1.schema.json:\n" + "\n".join(lines))


class Report:
    """Findings, stage and guideline recommendations for one study, as :func:`analyze` returns them.

    ``to_dict()`` / ``to_json()`` give the report (schema ``report-v1``); ``write(directory)``
    writes ``report.json``, ``report.html``, the lesion labels as NIfTI and, for DICOM studies,
    a DICOM SEG and a DICOM SR measurement report (TID 1500) referencing the source series.
    Research decision support, not a medical device.

    Parameters
    ----------
    data : dict
        The report (schema ``report-v1``).
    image : Image, optional
        The analysed image (attribute ``image``).
    labels : Image, optional
        Its lesion labels, lesion id = label (attribute ``labels``).
    source_files : sequence of os.PathLike, optional
        The DICOM files of the analysed series (attribute ``source_files``), which the DICOM
        SEG and SR reference.

    See Also
    --------
    analyze : Makes a Report.
    medkern.analysis.validate_report : Check a report dict against the schema.

    Examples
    --------
    >>> from medkern.analysis import Report
    >>> report = Report({"findings": {"lesion_count": 0, "lesions": []}, "guideline": None,
    ...                  "timings_s": {"read": 0.5, "predict": 1.25}})
    >>> report.findings["lesion_count"], report.guideline
    (0, None)
    """

    def __init__(self, data: dict[str, Any], image: Image | None = None, labels: Image | None = None,
                 source_files: Sequence[str | os.PathLike[str]] = ()) -> None:
        self._data = data
        self.image = image
        self.labels = labels
        self.source_files = tuple(Path(p) for p in source_files)

    # ------------------------------------------------------------------ views
    def to_dict(self) -> dict[str, Any]:
        """Return the report as a dict (a deep copy).

        Returns
        -------
        dict
            The report, schema ``report-v1``.

        See Also
        --------
        to_json : The same as JSON text.

        Examples
        --------
        >>> from medkern.analysis import Report
        >>> report = Report({"findings": {"lesion_count": 0, "lesions": []}, "guideline": None,
        ...                  "timings_s": {"read": 0.5, "predict": 1.25}})
        >>> report.to_dict()["timings_s"]
        {'read': 0.5, 'predict': 1.25}
        """
        return copy.deepcopy(self._data)

    def to_json(self, indent: int | None = 2) -> str:
        """Return the report as JSON text (no NaN or infinity: strict JSON).

        Parameters
        ----------
        indent : int, optional
            Indentation; ``None`` for one line.

        Returns
        -------
        str
            The JSON text.

        See Also
        --------
        to_dict : The same as a dict.

        Examples
        --------
        >>> from medkern.analysis import Report
        >>> report = Report({"findings": {"lesion_count": 0, "lesions": []}, "guideline": None,
        ...                  "timings_s": {"read": 0.5, "predict": 1.25}})
        >>> report.to_json(indent=None)[:40]
        '{"findings": {"lesion_count": 0, "lesion'
        """
        return json.dumps(self._data, indent=indent, allow_nan=False)

    @property
    def findings(self) -> dict[str, Any]:
        """The findings: ``lesion_count``, ``total_volume_cm3``, ``max_diameter_mm``, ``lesions``."""
        return self._data["findings"]

    @property
    def guideline(self) -> dict[str, Any] | None:
        """The guideline result (derived values, recommendations, missing inputs), or None."""
        return self._data.get("guideline")

    @property
    def timings(self) -> dict[str, float]:
        """Seconds spent in each stage of the analysis."""
        return dict(self._data["timings_s"])

    def __repr__(self) -> str:
        d = self._data
        f = d["findings"]
        lines = [f"<medkern Report: {d['study']['modality'] or 'image'} study, model "
                 f"{d['model']['name']} {d['model']['version']}, {f['lesion_count']} lesion(s)>"]
        for les in f["lesions"]:
            lines.append(f"  lesion {les['id']}: {les['volume_cm3']:.2f} cm3, max diameter "
                         f"{les['max_diameter_mm']:.1f} mm, {les['location']['description']}")
        g = d.get("guideline")
        if g:
            for item in g["derived"]:
                value = "not determined (missing input)" if item["value"] is None else item["value"]
                lines.append(f"  {item['name']}: {value}")
            for rec in g["recommendations"]:
                lines.append(f"  - {rec['text']} [{_cite(rec['reference'])}]")
            for miss in g["missing"]:
                lines.append(f"  missing: {miss['field']} (needed by {', '.join(miss['needed_by'])})")
        lines.append(f"  {sum(d['timings_s'].values()):.1f} s; {d['disclaimer'].split('.')[0]}.")
        return "\n".join(lines)

    # ------------------------------------------------------------------ output
    def write(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write every output into a folder: report.json and .html, NIfTI labels, DICOM SEG and SR.

        All files are made in a temporary folder beside ``directory`` and moved in only when every
        one of them was written and ``report.json`` validated, so a failure leaves nothing partial
        (and earlier outputs in ``directory`` untouched). The DICOM SEG and SR are written only
        for a study read from DICOM with at least one lesion; the report says why when not.

        Parameters
        ----------
        directory : str or os.PathLike
            The output folder, created if needed (its parent must exist).

        Returns
        -------
        dict of str to pathlib.Path
            Output name (``report_json``, ``report_html``, ``segmentation_nifti``,
            ``segmentation_dicom``, ``measurement_report_dicom``) to the file written.

        Raises
        ------
        FileNotFoundError
            The parent folder does not exist.
        NotADirectoryError
            ``directory`` exists and is not a folder.
        PermissionError
            The folder is not writable.
        ValueError
            The report does not follow the report schema.

        See Also
        --------
        medkern.analyze : ``out_dir=`` writes the report as it is made.

        Examples
        --------
        >>> ct = np.full((24, 64, 64), -100, np.int16)
        >>> k, j, i = np.mgrid[:24, :64, :64]
        >>> ct[((k - 12) * 3) ** 2 + (j - 32) ** 2 + (i - 32) ** 2 < 15 ** 2] = 60
        >>> report = mk.analyze(mk.Image(ct, spacing=(3.0, 1.0, 1.0)), model="sarcoma-ct",
        ...                     guideline=False, radiomics=False, location=False)
        >>> sorted(report.write("out"))
        ['report_html', 'report_json', 'segmentation_nifti']
        """
        target = Path(directory)
        parent = target.parent
        if not parent.exists():
            raise FileNotFoundError(f"Report.write: the parent folder {parent} of {target} does not exist")
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(f"Report.write: {target} exists and is not a folder")
        if not os.access(parent if not target.exists() else target, os.W_OK):
            raise PermissionError(f"Report.write: {target if target.exists() else parent} is not writable")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
        try:
            data = self.to_dict()
            names = self._write_files(tmp, data)
            target.mkdir(exist_ok=True)
            for name in names.values():
                os.replace(tmp / name, target / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._data["outputs"] = data["outputs"]
        return {key: target / name for key, name in names.items()}

    def _write_files(self, tmp: Path, data: dict[str, Any]) -> dict[str, str]:
        from medkern.analysis.html import render_html
        from medkern.io import write

        names: dict[str, str] = {}
        outputs: dict[str, Any] = {}
        if self.labels is not None:
            write(self.labels, tmp / "lesions.nii.gz")
            names["segmentation_nifti"] = "lesions.nii.gz"
        # pydicom warns about the source series' own non-conformant values (e.g. an over-long SH)
        # as highdicom copies them; they belong in the report, not in the caller's warning stream.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dicom_note = self._write_dicom(tmp, data, names)
        if dicom_note:
            outputs["dicom_not_written"] = dicom_note
        notes = list(dict.fromkeys(str(w.message) for w in caught))
        if notes:
            outputs["dicom_warnings"] = "; ".join(notes)
        outputs.update({key: name for key, name in names.items()})
        outputs["report_json"] = "report.json"
        outputs["report_html"] = "report.html"
        data["outputs"] = outputs
        validate_report(data)
        (tmp / "report.html").write_text(render_html(data, self.image, self.labels), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(data, indent=2, allow_nan=False), encoding="utf-8")
        names["report_html"] = "report.html"
        names["report_json"] = "report.json"
        return names

    def _write_dicom(self, tmp: Path, data: dict[str, Any], names: dict[str, str]) -> str | None:
        if not self.source_files:
            return "the study was not read from DICOM files, so there is no series to reference"
        if self.labels is None or not np.asarray(self.labels.array).any():
            return "no lesion was found; a DICOM SEG needs at least one segment"
        from medkern.analysis.dicom_objects import write_measurement_report, write_segmentation

        model = data["model"]
        segments = {les["id"]: f"Lesion {les['id']}" for les in data["findings"]["lesions"]}
        write_segmentation(self.labels, self.source_files, tmp / "segmentation.dcm", segments=segments,
                           algorithm_name=f"medkern {model['name']}", algorithm_version=model["version"])
        names["segmentation_dicom"] = "segmentation.dcm"
        lesions = [{"id": les["id"], "volume_mm3": les["volume_mm3"], "max_diameter_mm": les["max_diameter_mm"],
                    "axial_diameter_mm": les["axial_diameter_mm"], "location": les["location"]["description"]}
                   for les in data["findings"]["lesions"]]
        write_measurement_report(tmp / "segmentation.dcm", self.source_files, lesions, tmp / "measurements.dcm",
                                 algorithm_name=f"medkern {model['name']}", algorithm_version=model["version"])
        names["measurement_report_dicom"] = "measurements.dcm"
        return None


def _cite(ref: dict[str, Any]) -> str:
    parts = [str(ref.get("title", "")), str(ref.get("year", "")), str(ref.get("section", ""))]
    return ", ".join(p for p in parts if p)
