"""Cohorts on a cluster: ``mk.analyze`` over many studies on Dask's ``distributed`` scheduler.

    result = mk.batch.analyze_many(["archive/"], "cohort-out/", patients="patients.csv")
    result = mk.batch.analyze_many(studies, "out/", scheduler="tcp://scheduler:8786")

One task per study. Tasks carry paths, never pixels: the scheduler holds only file names and the
small summary rows the workers send back. Each worker loads the model and the guideline once (a
Dask worker plugin, which the nanny re-applies to a worker restarted after a crash) and runs its
studies one at a time, with medkern's and ONNX Runtime's thread counts set so that workers x
threads never exceed the cores of a host.

Output folder
-------------
``studies/<id>/`` holds each study's report (``report.json``/``.html``, the lesion label map, DICOM
SEG and SR where the study was DICOM) and ``batch.json``, the record of the run that made it: the
input fingerprint, the summary row and the findings rows; a failed study holds ``error.json``
(exception, message, the stage of ``mk.analyze`` that raised, traceback) instead of the report.
A study folder is built under a temporary name and renamed into place whole, so a worker killed
at any moment leaves either the previous complete folder or none, never half a report.
Beside them: ``studies.csv``/``.parquet`` (one row per study), ``findings.csv``/``.parquet``
(one row per lesion), ``index.html`` (the cohort overview, linking every report) and ``run.json``
(settings, counts, timings).

Resuming
--------
A study is skipped when its ``batch.json`` records the same fingerprint: the SHA-256 of its input
files' paths, sizes and modification times, its patient record, the model and guideline file
hashes, the analysis parameters and the medkern version. Any change runs it again. Studies that
failed inside the analysis are deterministic and are skipped too unless ``retry_failed=True``;
studies lost to infrastructure (a worker that kept dying, a write error) leave no record and
always run again. One batch at a time may write into an output folder (a lock file says which).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import html
import io
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

from medkern.analysis.analyze import _sha256
from medkern.analysis.guideline import Guideline
from medkern.inference import Model

try:
    from distributed import Client, WorkerPlugin
except ImportError as exc:   # an optional dependency: say how to get it
    raise ImportError("medkern.batch runs on Dask's distributed scheduler: pip install 'medkern[batch]'") from exc

__all__ = ["Study", "BatchResult", "find_studies", "read_patients", "analyze_many"]

_NIFTI = (".nii", ".nii.gz")
_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
RECORD = "batch.json"
LOCK = ".medkern-batch.lock"
# Columns that lead the study table; the guideline's derived values (T category, stage, ...)
# follow as derived.<id>.
STUDY_COLUMNS = ("study", "status", "reused", "source", "study_uid", "modality", "model", "guideline",
                 "lesion_count", "total_volume_cm3", "max_diameter_mm", "missing_patient_fields",
                 "recommendations", "failed_stage", "error_type", "error", "seconds", "peak_rss_mb",
                 "rss_before_mb", "worker", "report")


@dataclass(frozen=True)
class Study:
    """One study of a cohort: what a task reads, by path only.

    Parameters
    ----------
    id : str
        The study's name: the trailing parts of the folder that holds its files (as many as
        needed to tell studies apart), or a NIfTI file's name.
    source : str or tuple of str
        What ``mk.analyze`` is given: a folder holding this study alone, or the list of its DICOM
        files where a folder mixes studies, or a NIfTI file.
    files : tuple of str
        Every input file of the study.
    study_uid : str, optional
        StudyInstanceUID (DICOM studies).
    patient_id : str, optional
        PatientID (DICOM studies).

    See Also
    --------
    find_studies : Makes them.

    Examples
    --------
    >>> ct = np.full((24, 64, 64), -100, np.int16)
    >>> k, j, i = np.mgrid[:24, :64, :64]
    >>> ct[((k - 12) * 3) ** 2 + (j - 32) ** 2 + (i - 32) ** 2 < 15 ** 2] = 60
    >>> mk.write(mk.Image(ct, spacing=(3.0, 1.0, 1.0)), "case1.nii.gz")
    >>> mk.write(mk.Image(ct[:, ::-1].copy(), spacing=(3.0, 1.0, 1.0)), "case2.nii.gz")
    >>> study = mk.batch.find_studies(["case1.nii.gz"])[0]
    >>> study.id, study.study_uid
    ('case1', None)
    """

    id: str
    source: str | tuple[str, ...]
    files: tuple[str, ...]
    study_uid: str | None = None
    patient_id: str | None = None

    def fingerprint(self) -> str:
        """Return the SHA-256 of the input files' paths, sizes and modification times.

        Returns
        -------
        str
            Hex digest; part of what decides whether a later run reuses a study's result.

        See Also
        --------
        analyze_many

        Examples
        --------
        >>> ct = np.full((24, 64, 64), -100, np.int16)
        >>> k, j, i = np.mgrid[:24, :64, :64]
        >>> ct[((k - 12) * 3) ** 2 + (j - 32) ** 2 + (i - 32) ** 2 < 15 ** 2] = 60
        >>> mk.write(mk.Image(ct, spacing=(3.0, 1.0, 1.0)), "case1.nii.gz")
        >>> mk.write(mk.Image(ct[:, ::-1].copy(), spacing=(3.0, 1.0, 1.0)), "case2.nii.gz")
        >>> study = mk.batch.find_studies(["case1.nii.gz"])[0]
        >>> len(study.fingerprint())
        64
        """
        h = hashlib.sha256()
        for name in sorted(self.files):
            st = os.stat(name)
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def __repr__(self) -> str:   # a study can hold thousands of files: count them, do not list them
        source = self.source if isinstance(self.source, str) else f"<{len(self.source)} files>"
        return (f"Study(id={self.id!r}, source={source!r}, files={len(self.files)}, "
                f"study_uid={self.study_uid!r}, patient_id={self.patient_id!r})")


@dataclass
class BatchResult:
    """What :func:`analyze_many` did: a row per study (``studies``) and per lesion (``findings``).

    Parameters
    ----------
    out_dir : pathlib.Path
        The output folder.
    studies : list of dict
        One row per study (columns of ``studies.csv``: ``study``, ``status``, ``reused``,
        ``lesion_count``, the derived guideline values...).
    findings : list of dict
        One row per lesion (columns of ``findings.csv``).
    seconds : float
        Wall time of the run.
    workers : int
        Workers that ran the studies.
    dashboard : str or None
        The Dask dashboard address, if any.
    files : dict of str to pathlib.Path, optional
        The cohort files written (``studies_csv``, ``findings_parquet``, ``index_html``...).

    See Also
    --------
    analyze_many : Makes one.

    Examples
    --------
    >>> from pathlib import Path
    >>> from medkern.batch import BatchResult
    >>> result = BatchResult(out_dir=Path("cohort"), findings=[], seconds=12.5, workers=2, dashboard=None,
    ...                      studies=[{"status": "ok", "reused": False}, {"status": "ok", "reused": True},
    ...                               {"status": "failed", "reused": False}])
    >>> result.analysed, result.reused, len(result.failed)
    (1, 1, 1)
    """

    out_dir: Path
    studies: list[dict[str, Any]]
    findings: list[dict[str, Any]]
    seconds: float
    workers: int
    dashboard: str | None
    files: dict[str, Path] = field(default_factory=dict)

    def count(self, status: str) -> int:
        """Count the studies with a given status.

        Parameters
        ----------
        status : str
            ``"ok"`` or ``"failed"``.

        Returns
        -------
        int
            The number of study rows with that status (reused ones included).

        See Also
        --------
        failed : The failed rows themselves.

        Examples
        --------
        >>> from pathlib import Path
        >>> from medkern.batch import BatchResult
        >>> result = BatchResult(out_dir=Path("cohort"), findings=[], seconds=12.5, workers=2, dashboard=None,
        ...                      studies=[{"status": "ok", "reused": False}, {"status": "ok", "reused": True},
        ...                               {"status": "failed", "reused": False}])
        >>> result.count("ok"), result.count("failed")
        (2, 1)
        """
        return sum(row["status"] == status for row in self.studies)

    @property
    def analysed(self) -> int:
        """Studies analysed in this run (not reused from an earlier one)."""
        return sum(row["status"] == "ok" and not row["reused"] for row in self.studies)

    @property
    def reused(self) -> int:
        """Studies whose result of an earlier run was reused (same fingerprint)."""
        return sum(bool(row["reused"]) for row in self.studies)

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The rows of the studies that failed, with the stage and the error."""
        return [row for row in self.studies if row["status"] == "failed"]

    def __repr__(self) -> str:
        return (f"BatchResult({len(self.studies)} studies: {self.analysed} analysed, {self.reused} reused, "
                f"{len(self.failed)} failed; {len(self.findings)} lesions; {self.seconds:.1f} s on "
                f"{self.workers} worker(s); {self.out_dir})")


# ----------------------------------------------------------------------------------- studies


def _safe_id(parts: Sequence[str]) -> str:
    name = _ID_CHARS.sub("_", "-".join(p for p in parts if p)).strip("._-")
    return name or "study"


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in _NIFTI:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _unique_ids(paths: Sequence[tuple[str, ...]]) -> list[str]:
    """Each study's shortest trailing path parts that no other study shares, as a folder name."""
    depth = [1] * len(paths)
    while True:
        ids = [_safe_id(p[-d:]) for p, d in zip(paths, depth)]
        groups: dict[str, list[int]] = {}
        for n, name in enumerate(ids):
            groups.setdefault(name, []).append(n)
        # lengthen the names that clash with a study elsewhere (studies of one folder stay equal)
        grow = [n for group in groups.values() for n in group
                if depth[n] < len(paths[n]) and any(paths[m] != paths[n] for m in group)]
        if not grow:
            break
        for n in grow:
            depth[n] += 1
    seen: dict[str, int] = {}
    out = []
    for name in ids:   # still equal at full depth (e.g. two studies in one folder): number them
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def find_studies(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Study]:
    """Find the studies under the inputs: NIfTI files (one study each) and folders of DICOM files.

    A folder is scanned recursively (headers only) and its image series are grouped by
    StudyInstanceUID, so a study folder, a folder of study folders and a flat PACS export all
    work. A study is named after the folder that holds its files (its trailing path parts, as
    many as needed to tell studies apart), a NIfTI study after its file.

    Parameters
    ----------
    inputs : str, os.PathLike or iterable of them
        NIfTI files and folders.

    Returns
    -------
    list of Study
        The studies, by path only.

    Raises
    ------
    FileNotFoundError
        An input does not exist.
    ValueError
        A folder holds no DICOM image series (the message says when it holds NIfTI files to give
        instead), or no study was found.

    See Also
    --------
    analyze_many : Analyse them.

    Examples
    --------
    >>> ct = np.full((24, 64, 64), -100, np.int16)
    >>> k, j, i = np.mgrid[:24, :64, :64]
    >>> ct[((k - 12) * 3) ** 2 + (j - 32) ** 2 + (i - 32) ** 2 < 15 ** 2] = 60
    >>> mk.write(mk.Image(ct, spacing=(3.0, 1.0, 1.0)), "case1.nii.gz")
    >>> mk.write(mk.Image(ct[:, ::-1].copy(), spacing=(3.0, 1.0, 1.0)), "case2.nii.gz")
    >>> [s.id for s in mk.batch.find_studies(["case1.nii.gz", "case2.nii.gz"])]
    ['case1', 'case2']
    """
    from medkern.io.dicom import scan_dicom_folder

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError("find_studies: no input given")
    found: list[tuple[tuple[str, ...], Study]] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"batch input {path} does not exist")
        if path.is_file():
            if not path.name.lower().endswith(_NIFTI):
                raise ValueError(f"batch input {path}: a file input must be NIfTI (.nii/.nii.gz); give DICOM "
                                 "studies as folders")
            name = path.resolve()
            found.append(((*name.parent.parts[1:], _nifti_stem(name)), Study("", str(name), (str(name),))))
            continue
        # the scan with its unreadable files: a study whose every file is damaged must still be
        # listed (and fail visibly), not vanish from the cohort
        scan = scan_dicom_folder(path, recursive=True)
        by_study: dict[str, list[Any]] = {}
        for series in scan.series:
            by_study.setdefault(series.study_uid, []).append(series)
        damaged: dict[Path, list[Path]] = {}
        for file, _ in scan.unreadable:
            damaged.setdefault(file.resolve().parent, []).append(file.resolve())
        if not by_study and not damaged:
            nifti = sorted(str(p) for p in path.rglob("*") if p.name.lower().endswith(_NIFTI))
            hint = (f"; it holds {len(nifti)} NIfTI file(s): give them as inputs (e.g. {nifti[0]})" if nifti else "")
            raise ValueError(f"batch input {path}: no DICOM image series under it{hint}")
        root = path.resolve()
        common = {uid: Path(os.path.commonpath([str(f.resolve().parent) for s in group for f in s.files]))
                  for uid, group in by_study.items()}

        def holds_other(folder: Path, uid: str, common: dict[str, Path] = common) -> bool:
            return any(o == folder or folder in o.parents for u, o in common.items() if u != uid)

        entries = []
        for uid, group in by_study.items():
            files = tuple(sorted(str(f.resolve()) for s in group for f in s.files))
            folder = common[uid]
            if holds_other(folder, uid):   # a folder that mixes studies: the study is its file list
                source: str | tuple[str, ...] = files
            else:
                # the highest folder (up to the input) that holds this study alone: it names the
                # study, and analyze then reads only the series the model needs
                while folder != root and root in folder.parents and not holds_other(folder.parent, uid):
                    folder = folder.parent
                source = str(folder)
            entries.append((folder.parts[1:], Study("", source, files, uid, group[0].patient_id or None)))
        for n, (folder, files) in enumerate(sorted(damaged.items())):
            if any(folder == o or o in folder.parents for o in common.values()):
                continue   # beside a readable series: that study's reader reports them
            key = f"unreadable:{n}"
            common[key] = folder
            while folder != root and root in folder.parents and not holds_other(folder.parent, key):
                folder = folder.parent
            entries.append((folder.parts[1:], Study("", str(folder), tuple(sorted(map(str, files))))))
        found += sorted(entries, key=lambda e: (e[0], e[1].files))
    ids = _unique_ids([parts for parts, _ in found])
    studies = [Study(i, s.source, s.files, s.study_uid, s.patient_id) for i, (_, s) in zip(ids, found)]
    return studies


# ---------------------------------------------------------------------------------- patients


def read_patients(table: str | os.PathLike[str] | dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Read patient records by study key from a CSV or JSON file or a mapping, each validated.

    The key (column ``study`` in CSV; the mapping key, or a ``study`` field in a JSON list) is a
    study's id, its StudyInstanceUID, its DICOM PatientID or its input path. CSV cells are typed
    by the patient schema: numbers, integers, and lists separated by ``;``. An empty cell is a
    missing value: reported as missing by the guideline, never guessed.

    Parameters
    ----------
    table : str, os.PathLike or mapping
        A ``.csv`` or ``.json`` file, or a mapping of study key to record.

    Returns
    -------
    dict of str to dict
        The validated records (schema ``patient-v1``) by study key.

    Raises
    ------
    medkern.analysis.patient.PatientError
        A record breaks the patient schema (the message names the study and the field).
    ValueError
        A malformed table (no ``study`` column, a key given twice...).

    See Also
    --------
    analyze_many : ``patients=`` takes the same tables.

    Examples
    --------
    >>> from pathlib import Path
    >>> _ = Path("patients.csv").write_text("study,schema_version,grade,symptoms\\n"
    ...                                     "case1,1,G3,pain;swelling\\n"
    ...                                     "case2,1,,\\n")
    >>> mk.batch.read_patients("patients.csv")
    {'case1': {'schema_version': 1, 'grade': 'G3', 'symptoms': ['pain', 'swelling']}, 'case2': {'schema_version': 1}}
    """
    from medkern.analysis.patient import patient_schema, validate_patient

    if isinstance(table, dict):
        rows = dict(table)
    elif isinstance(table, (str, os.PathLike)):
        path = Path(table)
        if not path.is_file():
            raise FileNotFoundError(f"patients: no file at {path}")
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix.lower() == ".csv":
            rows = _patients_csv(text, patient_schema()["properties"], path)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
            if isinstance(data, list):
                if not all(isinstance(r, dict) and isinstance(r.get("study"), str) for r in data):
                    raise ValueError(f"patients {path}: a JSON list must hold objects with a 'study' key")
                data = {r["study"]: {k: v for k, v in r.items() if k != "study"} for r in data}
            if not isinstance(data, dict):
                raise ValueError(f"patients {path}: expected an object keyed by study or a list of objects")
            rows = data
        else:
            raise ValueError(f"patients: {path} is neither .csv nor .json")
    else:
        raise TypeError(f"patients must be a CSV/JSON path or a dict, got {type(table).__name__}")
    out = {}
    for key, record in rows.items():
        record = dict(record)
        record.setdefault("schema_version", 1)
        try:
            out[str(key)] = validate_patient(record)
        except Exception as exc:
            raise type(exc)(f"patients, study {key!r}: {exc}") from None
    return out


def _patients_csv(text: str, properties: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "study" not in reader.fieldnames:
        raise ValueError(f"patients {path}: the CSV needs a 'study' column naming each row's study")
    unknown = [c for c in reader.fieldnames if c != "study" and c not in properties]
    if unknown:
        raise ValueError(f"patients {path}: unknown column(s) {unknown}; the columns are the patient schema's "
                         f"fields ({', '.join(sorted(properties))})")
    rows: dict[str, dict[str, Any]] = {}
    for line, row in enumerate(reader, start=2):
        key = (row.pop("study") or "").strip()
        if not key:
            raise ValueError(f"patients {path}, line {line}: empty 'study'")
        if key in rows:
            raise ValueError(f"patients {path}, line {line}: study {key!r} appears twice")
        record = {}
        for name, cell in row.items():
            cell = (cell or "").strip()
            if cell:
                record[name] = _typed(cell, properties[name], f"{path}, line {line}, column {name}")
        rows[key] = record
    return rows


def _typed(cell: str, schema: dict[str, Any], where: str) -> Any:
    kind = schema.get("type")
    try:
        if kind == "integer" or schema.get("const") == 1:
            return int(cell)
        if kind == "number":
            return float(cell)
        if kind == "boolean":
            if cell.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError(cell)
            return cell.lower() in ("true", "yes", "1")
        if kind == "array":
            return [part.strip() for part in cell.split(";") if part.strip()]
    except ValueError:
        raise ValueError(f"patients {where}: {cell!r} is not a valid {kind}") from None
    return cell


def _patient_for(study: Study, patients: dict[str, dict[str, Any]]) -> tuple[dict[str, Any] | None, str | None]:
    keys = [study.id, study.study_uid, study.patient_id]
    keys += [study.source] if isinstance(study.source, str) else []
    for key in keys:
        if key and key in patients:
            return patients[key], key
    return None, None


# ------------------------------------------------------------------------------------ worker


class _AnalysisPlugin(WorkerPlugin):
    """Loads the model(s) and the guideline once per worker process and sets its thread counts."""

    def __init__(self, name: str, models: list[tuple[str, str | None, bytes | None, str]],
                 guideline: Any, threads_by_host: dict[str, int]):
        self.name = name
        self.models = models
        self.guideline = guideline
        self.threads_by_host = threads_by_host
        self.nets: list[Any] = []
        self.threads = 1

    def setup(self, worker: Any) -> None:
        import medkern as mk
        from medkern.inference import Model

        host = worker.address.rsplit(":", 1)[0].split("//")[-1]
        self.threads = self.threads_by_host.get(host) or max(1, (os.cpu_count() or 1) // worker.state.nthreads)
        mk.set_num_threads(self.threads)
        folder = Path(worker.local_directory) / "medkern-models"
        self.nets = []
        for shipped, path, blob, digest in self.models:
            if shipped:
                self.nets.append(mk.models.load(shipped, threads=self.threads))
                continue
            # The model file where the worker sees it with the same content; else the bytes that
            # travelled with this plugin, saved once so that the report can hash and name it.
            if path is None or not Path(path).is_file() or _sha256(Path(path)) != digest:
                folder.mkdir(parents=True, exist_ok=True)
                path = str(folder / f"{digest[:16]}-{Path(path or 'model.onnx').name}")
                if not Path(path).is_file():
                    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
                    Path(tmp).write_bytes(blob or b"")
                    os.replace(tmp, path)
            self.nets.append(Model(path, threads=self.threads))


def _plugin_state(name: str) -> _AnalysisPlugin:
    from distributed import get_worker

    return get_worker().plugins[name]


class _PeakMemory:
    """Peak resident memory of this process while a study runs (sampled every 20 ms)."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.before = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> "_PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _run_study(study: Study, patient: dict[str, Any] | None, fingerprint: str, out_dir: str,
               plugin: str, options: dict[str, Any]) -> dict[str, Any]:
    """One task: analyse one study and put its folder in place. Returns its record (no pixels)."""
    from medkern.analysis import analyze

    state = _plugin_state(plugin)
    studies = Path(out_dir) / "studies"
    tmp = studies / f".{study.id}.partial-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    start = time.perf_counter()
    row: dict[str, Any] = {"study": study.id, "source": _shown_source(study), "study_uid": study.study_uid,
                           "worker": socket.gethostname() + f":{os.getpid()}"}
    findings: list[dict[str, Any]] = []
    try:
        with _PeakMemory() as memory:
            try:
                report = analyze(study.source if isinstance(study.source, str) else list(study.source),
                                 patient=patient, model=state.nets, guideline=state.guideline, **options)
                report.write(tmp)
                row.update(_study_row(report.to_dict()), status="ok", report=f"studies/{study.id}/report.html")
                findings = _finding_rows(study.id, report.to_dict())
            except Exception as exc:
                row.update(status="failed", failed_stage=getattr(exc, "medkern_stage", "write"),
                           error_type=type(exc).__name__, error=str(exc).strip()[:2000],
                           report=f"studies/{study.id}/error.json")
                _write_json(tmp / "error.json", {**{k: row[k] for k in ("failed_stage", "error_type", "error")},
                                                  "traceback": traceback.format_exc()})
        row.update(seconds=round(time.perf_counter() - start, 3),
                   peak_rss_mb=round(memory.peak / 2**20, 1), rss_before_mb=round(memory.before / 2**20, 1))
        _write_json(tmp / RECORD, {"fingerprint": fingerprint, "row": row, "findings": findings,
                                   "threads": state.threads})
        _replace_dir(tmp, studies / study.id)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"row": row, "findings": findings}


def _shown_source(study: Study) -> str:
    return study.source if isinstance(study.source, str) else f"{len(study.source)} DICOM files"


def _study_row(report: dict[str, Any]) -> dict[str, Any]:
    findings = report["findings"]
    guideline = report.get("guideline") or {}
    row = {"modality": report["study"]["modality"], "model": report["model"]["name"],
           "guideline": guideline.get("name"), "lesion_count": findings["lesion_count"],
           "total_volume_cm3": findings["total_volume_cm3"], "max_diameter_mm": findings["max_diameter_mm"],
           "missing_patient_fields": ";".join(m.get("field", "") for m in guideline.get("missing", [])) or None,
           "recommendations": ";".join(r["id"] for r in guideline.get("recommendations", [])) or None}
    for entry in guideline.get("derived", []):
        row[f"derived.{entry['id']}"] = entry.get("value")
    return row


def _finding_rows(study_id: str, report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for les in report["findings"]["lesions"]:
        x, y, z = les["centroid_lps_mm"]
        place = les["location"]
        rows.append({"study": study_id, "lesion": les["id"], "volume_cm3": les["volume_cm3"],
                     "max_diameter_mm": les["max_diameter_mm"], "axial_diameter_mm": les["axial_diameter_mm"],
                     "centroid_x_mm": x, "centroid_y_mm": y, "centroid_z_mm": z,
                     "location": place["description"], "side": place.get("side"), "region": place.get("region"),
                     "intensity_mean": les["intensity"]["mean"], "intensity_std": les["intensity"]["std"]})
    return rows


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _replace_dir(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` at ``target``: the old one is renamed away first, so at any
    moment ``target`` is absent or complete (a rerun redoes an absent study)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
        os.rename(target, old)
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------ driver


def _models_spec(model: Any) -> list[tuple[str, str | None, bytes | None, str]]:
    """(shipped name, path, bytes for a non-shipped file, sha256) per model to load on workers."""
    import medkern.models as models
    from medkern.analysis.analyze import DEFAULT_MODELS
    from medkern.inference import Model

    if model is None:
        names: list[Any] = list(DEFAULT_MODELS)
    elif isinstance(model, (list, tuple)):
        names = list(model)
    else:
        names = [model]
    spec = []
    for m in names:
        if isinstance(m, Model):
            m = m.name
        if isinstance(m, str) and m in models.available():
            spec.append((m, None, None, _sha256(models.path(m))))
            continue
        if not isinstance(m, (str, os.PathLike)):
            raise TypeError(f"model must be a shipped model name or an ONNX path, got {type(m).__name__}")
        path = Path(m)
        if not path.is_file():
            raise ValueError(f"model: {m!r} is neither a shipped model ({', '.join(models.available())}) "
                             "nor an existing ONNX file")
        net = Model(path)   # fail here, not on every worker, when the file is not a usable model
        if net.metadata is None:
            raise ValueError(f"model {path} has no medkern metadata: analyze needs its preprocessing and labels")
        blob = path.read_bytes()
        spec.append(("", str(path.resolve()), blob, hashlib.sha256(blob).hexdigest()))
    return spec


def _guideline_obj(guideline: Any) -> Any:
    if guideline is None or guideline is False or guideline == "none":
        return guideline
    from medkern.analysis.guideline import Guideline, load_guideline

    return guideline if isinstance(guideline, Guideline) else load_guideline(guideline)


def _settings_digest(spec: list, guideline: Any, options: dict[str, Any]) -> str:
    from medkern._version import __version__

    rules = None
    if guideline not in (None, False, "none"):
        rules = [guideline.name, guideline.version, getattr(guideline, "sha256", None)]
    text = json.dumps({"models": [[s[0], s[3]] for s in spec], "guideline": rules if rules else guideline,
                       "options": options, "medkern": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def _locked(out: Path):
    """One batch per output folder: a lock file naming the host and process that holds it."""
    lock = out / LOCK
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = lock.read_text().strip() if lock.exists() else ""
            host, _, pid = holder.partition(" ")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                lock.unlink(missing_ok=True)   # its process is gone: a stale lock
                continue
            raise RuntimeError(f"{out} is in use by another batch ({holder or 'unknown'}); if no batch is running, "
                               f"delete {lock}") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _previous(out: Path, study: Study) -> dict[str, Any] | None:
    try:
        return json.loads((out / "studies" / study.id / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _client_for(scheduler: Any, workers: int | None, threads: int | None) -> tuple[Any, Any, int, dict[str, int]]:
    """A Dask client (and the LocalCluster it owns, if any), the worker count and threads by host."""
    from distributed import Client, LocalCluster

    cores = os.cpu_count() or 1
    if scheduler in (None, "local"):
        n = workers or cores
        if n < 1:
            raise ValueError(f"workers must be >= 1, got {n}")
        per_task = threads or max(1, cores // n)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=":0" if _has_bokeh() else None, silence_logs=50)
        client = Client(cluster, set_as_default=False)
        return client, cluster, n, {"127.0.0.1": per_task, socket.gethostname(): per_task}
    if hasattr(scheduler, "submit") and hasattr(scheduler, "register_plugin"):
        client = scheduler   # a Client the caller made
    elif isinstance(scheduler, str):
        client = Client(scheduler, timeout="30s", set_as_default=False)
    else:
        raise TypeError(f"scheduler must be None, 'local', an address like tcp://host:8786 or a "
                        f"distributed.Client, got {type(scheduler).__name__}")
    # newer schedulers list only a few workers unless asked for all
    info = (client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else client.scheduler_info())["workers"]
    slots: dict[str, int] = {}
    for w in info.values():
        slots[w["host"]] = slots.get(w["host"], 0) + w["nthreads"]
    cpus = client.run(os.cpu_count) if info else {}
    by_host = {}
    for addr, w in info.items():
        by_host[w["host"]] = threads or max(1, (cpus.get(addr) or cores) // slots[w["host"]])
    return client, None, len(info), by_host


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def _dashboard(client: Any, cluster: Any) -> str | None:
    """The dashboard address, where one is served (a LocalCluster serves it when bokeh is installed)."""
    if cluster is not None and not _has_bokeh():
        return None
    try:
        return client.dashboard_link
    except Exception:   # a remote scheduler without the dashboard
        return None


def _accepts_n_workers(client: Any) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def analyze_many(studies: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | Sequence[Study],
                 out_dir: str | os.PathLike, patients: str | os.PathLike[str] | dict[str, Any] | None = None,
                 model: str | os.PathLike[str] | Model | Sequence[str | os.PathLike[str] | Model] | None = None,
                 guideline: str | os.PathLike[str] | Guideline | Literal[False] | None = None, *,
                 scheduler: str | Client | None = None, workers: int | None = None,
                 threads: int | None = None, include_identifiers: bool = False, radiomics: bool = True,
                 location: bool = True, retry_failed: bool = False, retries: int = 2,
                 progress: bool | Callable[[int, int], object] = False) -> BatchResult:
    """Run ``mk.analyze`` on every study on a Dask cluster; resumable, one failure never stops the rest.

    One task per study; tasks carry paths, never pixels. Each worker loads the model and the
    guideline once and runs its studies one at a time, with thread counts set so that workers x
    threads never exceed the cores of a host.

    Parameters
    ----------
    studies : str, os.PathLike, or list of them or of Study
        Study folders, NIfTI files, folders of studies (see :func:`find_studies`), or a list of
        :class:`Study`.
    out_dir : str or os.PathLike
        The output folder (created); see Notes for its layout. One batch at a time may write
        into it (a lock file says which).
    patients : str, os.PathLike or mapping, optional
        Patient records (CSV/JSON path or dict, see :func:`read_patients`); studies without a
        record are analysed without patient context (every patient field reported missing).
    model : str, os.PathLike or list, optional
        As for ``mk.analyze`` (a shipped name or a file path), or a list of them (the first that
        reads a study's modality runs); None: the shipped defaults.
    guideline : str, os.PathLike or False, optional
        As for ``mk.analyze``.
    scheduler : None, str or distributed.Client, optional
        None or ``"local"`` for a ``LocalCluster`` on this machine (one single-threaded worker
        process per core), an address (``tcp://host:8786``) or a ``distributed.Client``.
    workers : int, optional
        The LocalCluster's worker processes (default one per core); a ValueError with a running
        cluster, whose size is set where its workers start.
    threads : int, optional
        medkern and ONNX Runtime threads per study (default: a host's cores divided by the
        studies it runs at once).
    include_identifiers : bool, optional
        As for ``mk.analyze``.
    radiomics : bool, optional
        As for ``mk.analyze``.
    location : bool, optional
        As for ``mk.analyze``.
    retry_failed : bool, optional
        Run again the studies whose analysis failed in an earlier run.
    retries : int, optional
        Dask retries of a task that raised outside the analysis (e.g. a failed write); a task
        whose worker died is rescheduled by Dask itself.
    progress : bool or callable, optional
        True for a console bar and the dashboard link on stderr, or a callable
        ``(done, total)``.

    Returns
    -------
    BatchResult
        A row per study and per lesion; failures are rows, not exceptions.

    Raises
    ------
    ValueError
        No study in the inputs, ``workers`` with a running cluster, or another batch writing
        into ``out_dir``.

    See Also
    --------
    medkern.analyze : The analysis of one study.
    find_studies : What the inputs become.

    Notes
    -----
    ``studies/<id>/`` holds each study's report (``report.json``/``.html``, the lesion label map,
    DICOM SEG and SR where the study was DICOM) and ``batch.json``, the record of the run that
    made it: the input fingerprint, the summary row and the findings rows; a failed study holds
    ``error.json`` (exception, message, the stage of ``mk.analyze`` that raised, traceback)
    instead. A study folder is built under a temporary name and renamed into place whole, so a
    worker killed at any moment leaves either the previous complete folder or none. Beside them:
    ``studies.csv``/``.parquet``, ``findings.csv``/``.parquet``, ``index.html`` (the cohort
    overview) and ``run.json`` (settings, counts, timings).

    Resuming: a study is skipped when its ``batch.json`` records the same fingerprint (input
    files' paths, sizes and modification times, its patient record, the model and guideline
    file hashes, the analysis parameters and the medkern version). Studies that failed inside
    the analysis are skipped too unless ``retry_failed=True``; studies lost to infrastructure
    leave no record and always run again.

    Examples
    --------
    Two CT studies on an in-process Dask cluster (``scheduler=None`` starts one worker process
    per core instead):

    >>> import distributed
    >>> ct = np.full((24, 64, 64), -100, np.int16)
    >>> k, j, i = np.mgrid[:24, :64, :64]
    >>> ct[((k - 12) * 3) ** 2 + (j - 32) ** 2 + (i - 32) ** 2 < 15 ** 2] = 60
    >>> mk.write(mk.Image(ct, spacing=(3.0, 1.0, 1.0)), "case1.nii.gz")
    >>> mk.write(mk.Image(ct[:, ::-1].copy(), spacing=(3.0, 1.0, 1.0)), "case2.nii.gz")
    >>> client = distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
    ...                             dashboard_address=None)
    >>> run = mk.batch.analyze_many(["case1.nii.gz", "case2.nii.gz"], "cohort", model="sarcoma-ct",
    ...                             scheduler=client, radiomics=False, location=False)
    >>> [(row["study"], row["status"], row["lesion_count"]) for row in run.studies]
    [('case1', 'ok', 1), ('case2', 'ok', 1)]
    >>> again = mk.batch.analyze_many(["case1.nii.gz", "case2.nii.gz"], "cohort", model="sarcoma-ct",
    ...                               scheduler=client, radiomics=False, location=False)
    >>> again.reused, again.analysed                # nothing changed: nothing runs again
    (2, 0)
    >>> client.close()
    """
    from distributed import as_completed

    if workers is not None and scheduler not in (None, "local"):
        raise ValueError("workers sizes the local cluster only; a running cluster has the workers that were "
                         "started for it (dask worker ... --nworkers N, or cluster.scale(N))")
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = list(studies) if isinstance(studies, (list, tuple)) and all(isinstance(s, Study) for s in studies) \
        and studies else find_studies(studies)
    ids = [s.id for s in items]
    if len(set(ids)) != len(ids):
        raise ValueError("analyze_many: study ids must be unique")
    records = read_patients(patients) if patients is not None else {}
    options = {"include_identifiers": bool(include_identifiers), "radiomics": bool(radiomics),
               "location": bool(location)}
    spec = _models_spec(model)
    rules = _guideline_obj(guideline)
    settings = _settings_digest(spec, rules, options)

    with _locked(out):
        (out / "studies").mkdir(exist_ok=True)
        for stale in (out / "studies").glob(".*"):   # left by a killed worker or run (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        todo, rows, finding_rows = [], {}, {}
        unmatched = set(records)
        for study in items:
            patient, key = _patient_for(study, records)
            unmatched.discard(key)
            digest = hashlib.sha256(json.dumps([study.fingerprint(), patient, settings], sort_keys=True,
                                               default=str).encode()).hexdigest()
            before = _previous(out, study)
            if before and before.get("fingerprint") == digest and (before["row"]["status"] == "ok" or not retry_failed):
                rows[study.id] = {**before["row"], "reused": True}
                finding_rows[study.id] = before["findings"]
            else:
                todo.append((study, patient, digest))

        client = cluster = None
        n_workers, dashboard = 0, None
        try:
            if todo:
                client, cluster, n_workers, by_host = _client_for(scheduler, workers, threads)
                dashboard = _dashboard(client, cluster)
                name = f"medkern-analysis-{settings[:16]}"
                client.register_plugin(_AnalysisPlugin(name, spec, rules, by_host), name=name)
                report_progress = _progress(progress, len(items), dashboard)
                report_progress(len(items) - len(todo))
                futures = {client.submit(_run_study, study, patient, digest, str(out.resolve()), name, options,
                                         key=f"medkern-study-{study.id}-{digest[:12]}", retries=retries,
                                         pure=False): study for study, patient, digest in todo}
                done = len(items) - len(todo)
                for future in as_completed(futures, loop=client.loop):
                    study = futures[future]
                    try:
                        result = future.result()
                        rows[study.id] = {**result["row"], "reused": False}
                        finding_rows[study.id] = result["findings"]
                    except Exception as exc:   # lost worker after Dask's retries, or a write that failed
                        rows[study.id] = {"study": study.id, "source": _shown_source(study),
                                          "study_uid": study.study_uid, "status": "failed", "reused": False,
                                          "failed_stage": "worker", "error_type": type(exc).__name__,
                                          "error": str(exc).strip()[:2000]}
                        finding_rows[study.id] = []
                    done += 1
                    report_progress(done)
                report_progress(None)
        finally:
            if client is not None and client is not scheduler:   # close only what this call opened
                client.close()
            if cluster is not None:
                cluster.close()
        ordered = [rows[s.id] for s in items]
        lesions = [r for s in items for r in finding_rows[s.id]]
        result = BatchResult(out, ordered, lesions, round(time.perf_counter() - start, 3), n_workers, dashboard)
        result.files = _write_summary(out, result, {"settings_sha256": settings, "options": options,
                                                    "models": [s[0] or s[1] for s in spec],
                                                    "guideline": None if rules in (None, False, "none") else rules.name,
                                                    "patients_unmatched": sorted(unmatched)})
    return result


def _progress(progress: Any, total: int, dashboard: str | None) -> Callable[[int | None], None]:
    if callable(progress):
        return lambda done: None if done is None else progress(done, total)
    if not progress:
        return lambda done: None
    from tqdm import tqdm

    if dashboard:
        print(f"medkern batch: Dask dashboard at {dashboard}", file=sys.stderr)
    bar = tqdm(total=total, desc="medkern batch", unit="study")

    def update(done: int | None) -> None:
        if done is None:
            bar.close()
        else:
            bar.update(done - bar.n)

    return update


# ----------------------------------------------------------------------------------- summary


def _columns(rows: list[dict[str, Any]], leading: Sequence[str]) -> list[str]:
    extra = sorted({k for r in rows for k in r} - set(leading))
    return [c for c in leading if any(c in r for r in rows)] + extra


def _write_table(path_stem: Path, rows: list[dict[str, Any]], columns: list[str]) -> dict[str, Path]:
    from medkern.io._atomic import atomic_path

    written = {}
    csv_path = path_stem.with_suffix(".csv")
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    written[path_stem.name + "_csv"] = csv_path
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written   # Parquet needs pyarrow (pip install "medkern[batch]"); the CSV holds the same rows
    table = pa.Table.from_pylist([{c: _parquet_value(r.get(c)) for c in columns} for r in rows],
                                 schema=_parquet_schema(rows, columns))
    parquet_path = path_stem.with_suffix(".parquet")
    with atomic_path(parquet_path) as tmp:
        pq.write_table(table, tmp)
    written[path_stem.name + "_parquet"] = parquet_path
    return written


def _parquet_value(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def _parquet_schema(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    """Column types from the values present (int and float mixed -> float; anything else -> string)."""
    import pyarrow as pa

    fields = []
    for c in columns:
        kinds = {type(_parquet_value(r.get(c))) for r in rows} - {type(None)}
        if kinds == {bool}:
            kind = pa.bool_()
        elif kinds and kinds <= {int}:
            kind = pa.int64()
        elif kinds and kinds <= {int, float}:
            kind = pa.float64()
        else:
            kind = pa.string()
        fields.append(pa.field(c, kind))
    return pa.schema(fields)


def _write_summary(out: Path, result: BatchResult, run: dict[str, Any]) -> dict[str, Path]:
    from medkern.io._atomic import atomic_path

    files = _write_table(out / "studies", result.studies, _columns(result.studies, STUDY_COLUMNS))
    for row in result.findings:
        row.setdefault("study", "")
    files.update(_write_table(out / "findings", result.findings, _columns(result.findings, ("study", "lesion"))))
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text(_cohort_html(result), encoding="utf-8")
    files["index_html"] = out / "index.html"
    run = {**run, "finished": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
           "seconds": result.seconds, "workers": result.workers, "studies": len(result.studies),
           "analysed": result.analysed, "reused": result.reused, "failed": len(result.failed),
           "lesions": len(result.findings)}
    _write_json(out / "run.json", run)
    files["run_json"] = out / "run.json"
    return files


def _cohort_html(result: BatchResult) -> str:
    from medkern.analysis.report import DISCLAIMER

    derived = sorted({k for r in result.studies for k in r if k.startswith("derived.")})
    head = ["Study", "Status", "Modality", "Lesions", "Max diameter (mm)", "Total volume (cm³)"]
    head += [k.split(".", 1)[1] for k in derived] + ["Missing patient data", "Time (s)", "Report"]
    lines = []
    for r in result.studies:
        link = html.escape(r.get("report") or "")
        ok = r["status"] == "ok"
        status = "reused" if r.get("reused") and ok else r["status"]
        if not ok:
            status += f" ({r.get('failed_stage')}: {r.get('error_type')}: {r.get('error')})"
        cells = [r["study"], status, r.get("modality"), r.get("lesion_count"), r.get("max_diameter_mm"),
                 r.get("total_volume_cm3")] + [r.get(k) for k in derived] + [
                 (r.get("missing_patient_fields") or "").replace(";", ", "), r.get("seconds")]
        tds = "".join(f"<td>{html.escape('' if c is None else str(c))}</td>" for c in cells)
        anchor = f'<a href="{link}">{"report" if ok else "error"}</a>' if link else ""
        lines.append(f'<tr class="{"ok" if ok else "failed"}">{tds}<td>{anchor}</td></tr>')
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medkern cohort: {len(result.studies)} studies</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}tr.failed{{background:#fde8e8}}
.disclaimer{{background:#fff6d6;padding:8px;border:1px solid #e6c200}}</style></head><body>
<h1>Cohort: {len(result.studies)} studies</h1>
<p class="disclaimer">{html.escape(DISCLAIMER)}</p>
<p>{result.analysed} analysed in this run, {result.reused} reused from an earlier run, {len(result.failed)} failed;
{len(result.findings)} lesions. Tables: <a href="studies.csv">studies.csv</a>,
<a href="findings.csv">findings.csv</a>.</p>
<table><thead><tr>{header}</tr></thead><tbody>
{chr(10).join(lines)}
</tbody></table></body></html>
"""

