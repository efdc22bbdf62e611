"""medkern behind HTTP: model inference and study analysis as a small FastAPI app.

    pip install fastapi uvicorn python-multipart httpx
    uvicorn --app-dir examples/service app:app --port 8000        # or: python examples/service/app.py

Endpoints (see README.md beside this file):

    GET  /health                 models loaded, worker pool, limits
    POST /predict/{model}        multipart field ``file``: NIfTI (.nii/.nii.gz), a zip of a DICOM
                                 series, or one DICOM file; returns the label map as .nii.gz, or a
                                 JSON summary with ``?format=json``
    POST /analyze                multipart fields ``file`` (a zipped study folder or a NIfTI),
                                 optional ``patient`` (JSON text), ``model``, ``guideline``,
                                 ``radiomics``, ``location``; returns report.json of mk.analyze

Every rejected input is answered with a 4xx and a JSON body ``{"error": code, "detail": text}``:
400 for uploads that cannot be read (corrupt, truncated, unsafe zip), 404 for an unknown model,
413 for uploads or images beyond the configured limits, 422 for readable inputs the models cannot
use (wrong dimensionality, non-finite voxels, implausible spacing, invalid patient context).

The models are loaded once at startup. Work runs in a thread pool of ``workers`` threads, and each
job uses ``cores // workers`` threads inside medkern and ONNX Runtime, so the cores are never
oversubscribed. Every upload lives in a per-request temporary folder that is removed when the
request ends, whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Callable

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi import HTTPException as FastAPIHTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import medkern as mk

log = logging.getLogger("medkern.service")

MiB = 1 << 20
_CHUNK = 1 << 20
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


# ----------------------------------------------------------------------------- settings
def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    """Limits and sizing; ``Settings.from_env()`` reads ``MEDKERN_SERVICE_<FIELD>`` variables."""

    max_upload_bytes: int = 256 * MiB      # request body, multipart overhead included
    max_unzipped_bytes: int = 1024 * MiB   # all members of an uploaded zip together, as extracted
    max_zip_members: int = 5000
    max_voxels: int = 100_000_000          # input image (a 512 x 512 x 380 CT)
    max_model_voxels: int = 16_000_000     # the image on the model's grid, patch padding included
    max_patient_bytes: int = 64 * 1024
    workers: int = 0                       # concurrent jobs; 0: one per core
    max_pending: int = 64                  # jobs queued or running; beyond: 503 busy
    models: tuple[str, ...] = ("sarcoma-ct", "brain-lesion")

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"MEDKERN_SERVICE_{f.name.upper()}")
            if raw is None:
                continue
            if f.name == "models":
                values[f.name] = tuple(n.strip() for n in raw.split(",") if n.strip())
            else:
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise ValueError(f"MEDKERN_SERVICE_{f.name.upper()} must be an integer, got {raw!r}") from None
        values.update(overrides)
        return cls(**values)

    def sizing(self) -> tuple[int, int]:
        """(concurrent jobs, threads per job) with jobs x threads <= cores."""
        cores = _cores()
        workers = min(self.workers, cores) if self.workers > 0 else cores
        return workers, max(1, cores // workers)


# ----------------------------------------------------------------------------- errors
class ServiceError(Exception):
    """A request the service answers with ``status`` and ``{"error": code, "detail": detail}``."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class _BodyTooLarge(FastAPIHTTPException):
    """Raised while the body streams in: FastAPI passes HTTPExceptions from body parsing through."""

    def __init__(self, limit: int):
        super().__init__(413, f"the upload is larger than the limit of {limit} bytes")


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


_SAVED_NAMES = ("upload.nii.gz", "upload.nii", "upload.zip", "upload.dcm", "upload.bin", "study")


def _clean(message: str, workdir: Path | None, upload_name: str) -> str:
    """A library message with the server's temporary paths replaced by the upload's name."""
    if workdir is not None:
        for prefix in {str(workdir.resolve()), str(workdir)}:
            for saved in _SAVED_NAMES:
                message = message.replace(prefix + os.sep + saved, upload_name)
            message = message.replace(prefix + os.sep, "").replace(prefix, upload_name)
    return message.strip() or "no detail"


def _classify(exc: BaseException, stage: str, workdir: Path | None, upload_name: str) -> ServiceError | None:
    """The answer to an exception raised while reading (``stage="read"``) or processing an upload;
    None for an exception that is the service's own fault (it becomes a 500)."""
    if isinstance(exc, ServiceError):
        exc.detail = _clean(exc.detail, workdir, upload_name)
        return exc
    text = _clean(f"{exc}", workdir, upload_name)
    if isinstance(exc, MemoryError):
        return ServiceError(413, "too_large", "processing this image needs more memory than the service has; "
                                              "send a smaller image")
    if isinstance(exc, mk.DicomError):
        return ServiceError(400, "unreadable_dicom", text)
    if isinstance(exc, mk.ModelError):
        return ServiceError(422, "unsupported_image", text)
    if stage == "read":
        # Anything raised while parsing an uploaded file is that file's fault: NIfTI header errors
        # (nibabel's HeaderDataError is no ValueError), gzip/zlib errors, truncation.
        if not isinstance(exc, (ValueError, TypeError)):
            log.warning("reading %s raised %s (mapped to 400)", upload_name, type(exc).__name__, exc_info=exc)
        return ServiceError(400, "unreadable_input", text if upload_name in text else f"{upload_name}: {text}")
    if isinstance(exc, (ValueError, TypeError)):  # mk.analyze: study or patient context unusable
        return ServiceError(422, "unprocessable", text)
    return None


# ----------------------------------------------------------------------------- size limit
class BodyLimitMiddleware:
    """413 for request bodies over ``limit`` bytes: at once from Content-Length, else while the
    body streams in, before anything is spooled beyond the limit."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None and declared > self.limit:
            response = _error(413, "too_large", f"the upload is {declared} bytes; the limit is {self.limit} bytes",
                              headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


# ----------------------------------------------------------------------------- uploads
def _save_upload(upload: UploadFile, workdir: Path) -> Path:
    """The upload copied into ``workdir``, named by what its first bytes say it is."""
    raw = workdir / "upload.bin"
    upload.file.seek(0)
    with open(raw, "wb") as out:
        shutil.copyfileobj(upload.file, out, _CHUNK)
    size = raw.stat().st_size
    name = upload.filename or "upload"
    if size == 0:
        raise ServiceError(400, "empty_upload", f"{name} is empty")
    with open(raw, "rb") as fh:
        head = fh.read(132)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        kind = "upload.zip"
    elif head[:2] == b"\x1f\x8b":
        kind = "upload.nii.gz"
    elif len(head) >= 4 and int.from_bytes(head[:4], "little") in (348, 540) or \
            int.from_bytes(head[:4], "big") in (348, 540):
        kind = "upload.nii"
    elif head[128:132] == b"DICM":
        kind = "upload.dcm"
    else:
        raise ServiceError(400, "unrecognised_upload",
                           f"{name} is not NIfTI (.nii/.nii.gz), a zip of a DICOM series or a DICOM file "
                           "(its first bytes match none of them)")
    return raw.rename(workdir / kind)


def _safe_extract(path: Path, dest: Path, settings: Settings, name: str) -> None:
    """Extract a zip with bounded member count and size; no absolute paths, no ``..``, no links."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise ServiceError(400, "bad_zip", f"{name} is not a readable zip archive ({exc})") from None
    dest.mkdir()
    root = dest.resolve()
    with archive:
        members = archive.infolist()
        if len(members) > settings.max_zip_members:
            raise ServiceError(413, "zip_too_large", f"{name} has {len(members)} members; the limit is "
                                                     f"{settings.max_zip_members}")
        declared = sum(m.file_size for m in members)
        if declared > settings.max_unzipped_bytes:
            raise ServiceError(413, "zip_too_large", f"{name} expands to {declared} bytes; the limit is "
                                                     f"{settings.max_unzipped_bytes} bytes")
        written = 0
        for m in members:
            parts = PurePosixPath(m.filename.replace("\\", "/")).parts
            if (not parts or m.filename.startswith(("/", "\\")) or ".." in parts
                    or (parts[0].endswith(":")) or "\x00" in m.filename):
                raise ServiceError(400, "unsafe_zip", f"{name}: member {m.filename!r} has an absolute path or "
                                                      "leaves the archive's folder")
            if stat.S_ISLNK(m.external_attr >> 16):
                raise ServiceError(400, "unsafe_zip", f"{name}: member {m.filename!r} is a symbolic link")
            if m.flag_bits & 0x1:
                raise ServiceError(400, "bad_zip", f"{name}: member {m.filename!r} is encrypted")
            target = dest.joinpath(*parts)
            if not target.resolve().is_relative_to(root):
                raise ServiceError(400, "unsafe_zip", f"{name}: member {m.filename!r} leaves the archive's folder")
            if m.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(m) as src, open(target, "wb") as out:
                    while block := src.read(_CHUNK):
                        written += len(block)
                        if written > settings.max_unzipped_bytes:  # sizes in the headers can lie
                            raise ServiceError(413, "zip_too_large", f"{name} expands beyond "
                                                                     f"{settings.max_unzipped_bytes} bytes")
                        out.write(block)
            except ServiceError:
                raise
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
                # zlib.error is an Exception subclass without a common base: caught below
                raise ServiceError(400, "bad_zip", f"{name}: member {m.filename!r} cannot be extracted ({exc})") \
                    from None
            except Exception as exc:
                if type(exc).__module__ == "zlib" or "lzma" in type(exc).__module__ or "bz2" in type(exc).__module__:
                    raise ServiceError(400, "bad_zip", f"{name}: member {m.filename!r} cannot be extracted "
                                                       f"({exc})") from None
                raise


def _study_path(upload: Path, workdir: Path, settings: Settings, name: str) -> Path:
    """What to read: a NIfTI/DICOM file as uploaded, or the folder a zip extracts to (the one
    NIfTI file in it when it holds nothing else)."""
    if upload.suffix != ".zip":
        return upload
    folder = workdir / "study"
    _safe_extract(upload, folder, settings, name)
    files = [p for p in folder.rglob("*") if p.is_file() and "__MACOSX" not in p.parts]
    if not files:
        raise ServiceError(400, "empty_zip", f"{name} holds no files")
    nifti = [p for p in files if p.name.lower().endswith(_NIFTI_SUFFIXES)]
    if nifti and len(nifti) == len(files):
        if len(nifti) > 1:
            raise ServiceError(422, "ambiguous_study", f"{name} holds {len(nifti)} NIfTI files; send one")
        return nifti[0]
    return folder


def _raw_spacing_fields(path: Path, ndim: int) -> tuple[tuple[int, int], np.ndarray]:
    """(qform_code, sform_code) and pixdim[1:] as stored: nibabel replaces zero voxel sizes by 1
    when it loads a header, so they are read from the file's bytes."""
    import gzip
    import struct

    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read(540)
        for order in "<>":
            size = struct.unpack_from(order + "i", raw, 0)[0]
            if size == 348:
                pixdim = struct.unpack_from(order + "8f", raw, 76)
                codes = struct.unpack_from(order + "2h", raw, 252)
                break
            if size == 540:
                pixdim = struct.unpack_from(order + "8d", raw, 104)
                codes = struct.unpack_from(order + "2i", raw, 344)
                break
        else:
            return (1, 1), np.ones(1)
    except (OSError, EOFError, struct.error):
        return (1, 1), np.ones(1)  # nibabel read this header already; the checks below report the rest
    return (int(codes[0]), int(codes[1])), np.asarray(pixdim[1:1 + min(ndim, 3)], np.float64)


def _check_nifti(path: Path, settings: Settings, name: str) -> None:
    """Header checks before any voxel is read: declared size within the limits and present."""
    import nibabel as nib

    try:
        header = nib.load(os.fspath(path)).header
        shape = tuple(int(n) for n in header.get_data_shape())
        itemsize = np.dtype(header.get_data_dtype()).itemsize
        offset = int(header.get("vox_offset", 0)) if hasattr(header, "get") else 0
    except Exception as exc:
        raise ServiceError(400, "unreadable_input", f"{name}: not a readable NIfTI header ({exc})") from None
    codes, pixdim = _raw_spacing_fields(path, len(shape))
    if codes == (0, 0) and not np.all(np.isfinite(pixdim) & (pixdim != 0)):
        # nibabel would fall back to 1 mm voxels: volumes and the model's resampling would be wrong
        raise ServiceError(422, "implausible_geometry", f"{name}: the NIfTI header has no sform/qform and its "
                                                        f"voxel sizes (pixdim {tuple(pixdim.tolist())}) are zero "
                                                        "or not finite; the model needs the real voxel size")
    if not shape or any(n <= 0 for n in shape):
        raise ServiceError(400, "unreadable_input", f"{name}: the NIfTI header declares no voxels (shape {shape})")
    voxels = int(np.prod(shape, dtype=np.float64))
    if voxels > settings.max_voxels:
        raise ServiceError(413, "too_large", f"{name}: the NIfTI header declares {voxels} voxels "
                                             f"(shape {shape}); the limit is {settings.max_voxels}")
    if path.suffix == ".nii":
        need = offset + voxels * itemsize
        have = path.stat().st_size
        if have < need:
            raise ServiceError(400, "unreadable_input", f"{name}: the NIfTI header declares {need} bytes "
                                                        f"(shape {shape}), the file holds {have}: truncated")


def _read_image(study: Path, settings: Settings, name: str, series_uid: str | None) -> mk.Image:
    if study.name.lower().endswith(_NIFTI_SUFFIXES):
        _check_nifti(study, settings, name)
        img = mk.read(study)
    elif study.is_dir():
        img = mk.read_dicom_series(study, series_uid=series_uid)
        if img.is_vector:
            raise ServiceError(422, "unsupported_image", f"{name}: the series holds colour (vector) images")
    else:
        img = mk.read(study)
    if img.size > settings.max_voxels:
        raise ServiceError(413, "too_large", f"{name}: the image has {img.size} voxels (shape {img.shape}); "
                                             f"the limit is {settings.max_voxels}")
    return img


def _check_grid(shape: tuple[int, ...], spacing: Any, models: list[mk.Model], settings: Settings,
                name: str) -> None:
    """Reject a grid whose size on a model's grid (patch padding included) is beyond the limit:
    a wrong spacing in a header would otherwise make resampling allocate without bound."""
    if int(np.prod(shape, dtype=np.float64)) > settings.max_voxels:
        raise ServiceError(413, "too_large", f"{name}: the image has {int(np.prod(shape))} voxels (shape "
                                             f"{tuple(shape)}); the limit is {settings.max_voxels}")
    spacing = np.asarray(spacing, np.float64)
    if spacing.shape != (len(shape),) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ServiceError(422, "implausible_geometry", f"{name}: voxel spacing {tuple(spacing)} is not finite "
                                                        "and positive")
    extent = np.asarray(shape, np.float64) * spacing
    for model in models:
        meta = model.metadata
        target = min(float(s) for s in meta["input"]["spacing"])
        patch = max(meta.get("inference", {}).get("patch_size") or [1])
        voxels = float(np.prod(np.maximum(np.ceil(extent / target), patch)))
        if voxels > settings.max_model_voxels:
            raise ServiceError(422, "implausible_geometry",
                               f"{name}: at {meta['name']}'s {target} mm spacing the image (shape {tuple(shape)}, "
                               f"spacing {tuple(round(float(s), 6) for s in spacing)} mm) would be about "
                               f"{voxels:.3g} voxels; the limit is {settings.max_model_voxels}. Check the voxel "
                               "spacing in the header")


def _check_for_model(img: mk.Image, model: mk.Model, settings: Settings, name: str) -> None:
    """Reject what would make prediction wrong or unbounded, before it runs."""
    meta = model.metadata
    dims = meta["input"]["spatial_dims"]
    if img.is_vector or img.ndim != dims:
        raise ServiceError(422, "unsupported_image",
                           f"{name}: {meta['name']} reads {dims}D scalar images, this one is {img.ndim}D"
                           f"{' vector' if img.is_vector else ''} (shape {img.shape})")
    array = np.asarray(img.array)
    if array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            # a single NaN voxel spreads through the network and blanks the whole prediction
            raise ServiceError(422, "non_finite_voxels", f"{name}: {bad} voxel(s) are NaN or infinite; the model "
                                                         "needs finite values")
    _check_grid(img.shape, img.spacing, [model], settings, name)


def _check_dicom_folder(folder: Path, models: list[mk.Model], settings: Settings, name: str,
                        by_modality: bool = False) -> None:
    """Header-only checks of the series in a folder, before any pixel data is read: every series,
    or with ``by_modality`` those that one of ``models`` reads (the others stay unread)."""
    from medkern.analysis.study import dicom_modality

    for series in mk.list_dicom_series(folder):
        modality = getattr(series, "modality", None)
        readers = models
        if by_modality and modality:
            readers = [m for m in models
                       if dicom_modality(m.metadata["input"]["modalities"][0]) == dicom_modality(modality)]
            if not readers:
                continue
        where = f"{name} (series {series.key})"
        source = getattr(series, "spacing_source", "")
        if "assumed" in source:
            # the reader falls back to 1 mm: every volume in mm3 and the model's resampling would be wrong
            raise ServiceError(422, "implausible_geometry", f"{where}: the files carry no usable PixelSpacing "
                                                            f"({source}); the model needs the real voxel size")
        _check_grid(tuple(series.shape), series.spacing, readers, settings, where)


def _label_names(meta: dict[str, Any]) -> dict[int, str]:
    out = meta["output"]
    names = list(out["labels"])
    if out.get("activation") == "softmax":
        return dict(enumerate(names))
    return {0: "background", **{n + 1: label for n, label in enumerate(names)}}


def _summary(labels: mk.Image, meta: dict[str, Any]) -> list[dict[str, Any]]:
    array = np.asarray(labels.array)
    counts = np.bincount(array.ravel().astype(np.int64), minlength=len(_label_names(meta)))
    voxel_mm3 = float(np.prod(labels.spacing))
    names = _label_names(meta)
    return [{"value": int(v), "name": names.get(int(v), f"label {v}"), "voxels": int(c),
             "volume_mm3": round(int(c) * voxel_mm3, 3)} for v, c in enumerate(counts)]


# ----------------------------------------------------------------------------- the service
class Service:
    """Models, worker pool and the job functions; one per app."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.workers, self.threads = settings.sizing()
        self.models: dict[str, mk.Model] = {}
        self.pool: ThreadPoolExecutor | None = None
        self._pending = 0
        self._lock = threading.Lock()
        self.started = time.time()
        self.counts = {"ok": 0, "rejected": 0, "failed": 0}

    def start(self) -> None:
        mk.set_num_threads(self.threads)
        for name in self.settings.models:
            self.models[name] = mk.models.load(name, threads=self.threads)
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="medkern-job")

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    async def run(self, job: Callable[[Path, list[str]], Any], upload_name: str) -> Any:
        """Run ``job(workdir)`` on the pool; the folder is removed afterwards, whatever happens."""
        with self._lock:
            if self._pending >= self.settings.max_pending:
                raise ServiceError(503, "busy", f"{self._pending} jobs are queued or running; retry later")
            self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, self._in_workdir, job, upload_name)
        finally:
            with self._lock:
                self._pending -= 1

    def _in_workdir(self, job: Callable[[Path, list[str]], Any], upload_name: str) -> Any:
        workdir = Path(tempfile.mkdtemp(prefix="medkern-service-"))
        stage = ["read"]
        try:
            return job(workdir, stage)
        except Exception as exc:
            mapped = _classify(exc, stage[0], workdir, upload_name)
            if mapped is None:
                raise
            raise mapped from None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    # jobs --------------------------------------------------------------------
    def predict(self, upload: UploadFile, model_name: str, fmt: str, series_uid: str | None) -> Callable:
        model = self.models[model_name]
        name = upload.filename or "upload"

        def job(workdir: Path, stage: list[str]) -> Response:
            saved = _save_upload(upload, workdir)
            study = _study_path(saved, workdir, self.settings, name)
            if study.is_dir():
                _check_dicom_folder(study, [model], self.settings, name)
            start = time.perf_counter()
            img = _read_image(study, self.settings, name, series_uid)
            read_s = time.perf_counter() - start
            stage[0] = "predict"
            _check_for_model(img, model, self.settings, name)
            start = time.perf_counter()
            pred = model.predict(img)
            predict_s = time.perf_counter() - start
            meta = model.metadata
            labels = pred.labels
            if fmt == "json":
                body = {"model": meta["name"], "version": meta.get("version", ""), "shape": list(img.shape),
                        "spacing_mm": [round(float(s), 6) for s in img.spacing],
                        "labels": _summary(labels, meta),
                        "timings_s": {"read": round(read_s, 4), "predict": round(predict_s, 4)},
                        "intended_use": meta.get("intended_use", "")}
                return JSONResponse(body)
            out = workdir / "labels.nii.gz"
            mk.write(labels, out)
            names = json.dumps({str(k): v for k, v in _label_names(meta).items()})
            return Response(out.read_bytes(), media_type="application/gzip", headers={
                "Content-Disposition": f'attachment; filename="{meta["name"]}-labels.nii.gz"',
                "X-Medkern-Labels": names})

        return job

    def analyze(self, upload: UploadFile, patient: str | None, model_name: str | None, guideline: str | None,
                radiomics: bool, location: bool) -> Callable:
        name = upload.filename or "upload"
        if model_name is not None and model_name not in self.models:
            raise ServiceError(404, "unknown_model", f"no model named {model_name!r}; loaded: {sorted(self.models)}")
        nets: Any = self.models[model_name] if model_name else [self.models[n] for n in self.models]
        if patient is not None:
            if len(patient.encode()) > self.settings.max_patient_bytes:
                raise ServiceError(413, "too_large", f"patient context is larger than "
                                                     f"{self.settings.max_patient_bytes} bytes")
            # JSON text only: medkern reads any other string as a path on this machine
            if not patient.lstrip().startswith("{"):
                raise ServiceError(422, "invalid_patient", "patient must be a JSON object ({...}) as text")
        if guideline is not None:
            from medkern.analysis.guideline import available_guidelines

            shipped = [g["name"] for g in available_guidelines()]
            if guideline not in shipped + ["none"]:
                raise ServiceError(422, "unknown_guideline",
                                   f"guideline {guideline!r} is not shipped; use one of {shipped} or 'none'")

        def job(workdir: Path, stage: list[str]) -> Response:
            saved = _save_upload(upload, workdir)
            study = _study_path(saved, workdir, self.settings, name)
            candidates = nets if isinstance(nets, list) else [nets]
            if study.name.lower().endswith(_NIFTI_SUFFIXES):
                if isinstance(nets, list):
                    raise ServiceError(422, "model_required", f"{name}: a NIfTI image carries no modality; give "
                                                              f"the form field model (one of {sorted(self.models)})")
                _check_nifti(study, self.settings, name)
                img = mk.read(study)
                _check_for_model(img, nets, self.settings, name)
                study_arg: Any = img
            elif study.is_dir():
                _check_dicom_folder(study, candidates, self.settings, name, by_modality=True)
                study_arg = study
            else:  # one DICOM file
                study_arg = study
            stage[0] = "analyze"
            report = mk.analyze(study_arg, patient=patient, model=nets,
                                guideline=(False if guideline == "none" else guideline),
                                radiomics=radiomics, location=location)
            # the report names the study by the uploaded file, not by this server's temporary folder
            return Response(_clean(report.to_json(), workdir, name), media_type="application/json",
                            headers={"Content-Disposition": 'inline; filename="report.json"'})

        return job


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        log.info("medkern service: models %s, %d worker(s) x %d thread(s)", list(service.models),
                 service.workers, service.threads)
        yield
        service.stop()

    app = FastAPI(title="medkern service", version=mk.__version__, lifespan=lifespan,
                  description="medkern model inference and study analysis. Research decision support only.")
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if exc.status < 500:
            service.counts["rejected"] += 1
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return _error(exc.status, exc.code, exc.detail, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        service.counts["rejected"] += 1
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors())
        return _error(422, "invalid_request", problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:
            return _error(413, "too_large", str(exc.detail), headers={"Connection": "close"})
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            return _error(400, "bad_request", "the request body is not valid multipart/form-data (send the file "
                                              "as the form field 'file')")
        return _error(exc.status_code, f"http_{exc.status_code}", str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        service.counts["failed"] += 1
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal", f"unexpected {type(exc).__name__}; the service logged it")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        ready = service.pool is not None
        return {"status": "ok" if ready else "starting", "medkern": mk.__version__,
                "models": {n: {"version": m.metadata.get("version", ""),
                               "modalities": m.metadata["input"]["modalities"],
                               "labels": m.metadata["output"]["labels"]} for n, m in service.models.items()},
                "workers": service.workers, "threads_per_worker": service.threads, "pending": service._pending,
                "requests": dict(service.counts), "uptime_s": round(time.time() - service.started, 1),
                "limits": {k: v for k, v in asdict(settings).items() if k.startswith("max_")}}

    def model_or_404(model: str) -> None:
        if model not in service.models:
            raise ServiceError(404, "unknown_model", f"no model named {model!r}; loaded: {sorted(service.models)}")

    @app.post("/predict/{model}")
    async def predict(model: str, file: Annotated[UploadFile, File()],
                      format: Annotated[str, Query(pattern="^(nifti|json)$")] = "nifti",
                      series_uid: Annotated[str | None, Query(max_length=200)] = None) -> Response:
        model_or_404(model)
        response = await service.run(service.predict(file, model, format, series_uid), file.filename or "upload")
        service.counts["ok"] += 1
        return response

    @app.post("/analyze")
    async def analyze(file: Annotated[UploadFile, File()], patient: Annotated[str | None, Form()] = None,
                      model: Annotated[str | None, Form()] = None, guideline: Annotated[str | None, Form()] = None,
                      radiomics: Annotated[bool, Form()] = True, location: Annotated[bool, Form()] = True) -> Response:
        job = service.analyze(file, patient, model, guideline, radiomics, location)
        response = await service.run(job, file.filename or "upload")
        service.counts["ok"] += 1
        return response

    return app


app = create_app()


if __name__ == "__main__":
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description="medkern service (uvicorn, one process)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
