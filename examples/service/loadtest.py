"""Bounded load test of the medkern service on localhost.

    python examples/service/loadtest.py                 # 8 clients x 1000 requests, writes LOADTEST.md
    python examples/service/loadtest.py --quick         # 2 clients x 60 requests, prints the figures

Starts ``uvicorn app:app`` (one process) as a subprocess with small limits, warms it up, then
runs concurrent clients that send a mix of good uploads (small generated CT and T1 volumes as
NIfTI and as a zipped DICOM series, a few /analyze studies) and bad ones (truncated, random bytes,
bad or hostile zips, header lies, NaN voxels, oversized, unknown model). Measures throughput,
p50/p99 latency of good and bad requests, failed good requests (must be 0), bad requests answered
with anything but a 4xx carrying a JSON error (must be 0), the server's resident memory after the
warm-up and at the end (growth must stay under 5 %), and that the server's temporary folder is
empty afterwards.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import random
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
MiB = 1 << 20

# limits the server under test runs with (small, so the hostile cases stay cheap to build)
LIMITS = {"MAX_UPLOAD_BYTES": 8 * MiB, "MAX_UNZIPPED_BYTES": 64 * MiB, "MAX_ZIP_MEMBERS": 500,
          "MAX_VOXELS": 8_000_000, "MAX_MODEL_VOXELS": 4_000_000}


# ----------------------------------------------------------------------------- sample data
def synthetic_ct(shape=(24, 48, 48), spacing=(3.0, 3.0, 3.0), seed=0) -> Any:
    """A CT-like limb: air, soft tissue, a bone, a slightly denser tumour, noise (HU, int16)."""
    import medkern as mk

    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    nk, nj, ni = shape
    body = ((j - nj / 2) / (0.42 * nj)) ** 2 + ((i - ni / 2) / (0.38 * ni)) ** 2 < 1
    bone = ((j - nj * 0.55) / (0.08 * nj)) ** 2 + ((i - ni * 0.45) / (0.08 * ni)) ** 2 < 1
    c = np.array([nk * 0.5, nj * 0.4, ni * 0.6]) + rng.uniform(-2, 2, 3)
    tumour = ((k - c[0]) * spacing[0]) ** 2 + ((j - c[1]) * spacing[1]) ** 2 + ((i - c[2]) * spacing[2]) ** 2 \
        < rng.uniform(15, 25) ** 2
    ct = np.where(body, 40.0, -1000.0)
    ct[bone & body] = 700.0
    ct[tumour & body] = 65.0
    ct += rng.normal(0, 12, shape)
    return mk.Image(ct.astype(np.int16), spacing=spacing, origin=(-100.0, -120.0, -30.0))


def synthetic_t1(shape=(40, 48, 48), spacing=(1.5, 1.5, 1.5), seed=0) -> Any:
    """A skull-stripped T1-like head: brain ellipsoid, ventricles, two bright lesions (float32)."""
    import medkern as mk

    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    centre = np.array(shape) / 2
    r2 = sum(((g - c) / (0.45 * n)) ** 2 for g, c, n in zip((k, j, i), centre, shape))
    t1 = np.where(r2 < 1, 600.0, 0.0)
    t1[r2 < 0.08] = 250.0
    for _ in range(2):
        c = centre + rng.uniform(-0.25, 0.25, 3) * np.array(shape)
        d2 = sum(((g - cc) * s) ** 2 for g, cc, s in zip((k, j, i), c, spacing))
        t1[(d2 < rng.uniform(3, 6) ** 2) & (r2 < 1)] = 1100.0
    t1 = np.where(r2 < 1, t1 + rng.normal(0, 20, shape), 0.0)
    return mk.Image(t1.astype(np.float32), spacing=spacing)


def nifti_bytes(img: Any, suffix: str = ".nii.gz") -> bytes:
    import medkern as mk

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"img{suffix}"
        mk.write(img, path)
        return path.read_bytes()


def zip_bytes(members: list[tuple[str, bytes]], **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, **kwargs) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def dicom_zip(img: Any, modality: str = "CT") -> bytes:
    import medkern as mk

    with tempfile.TemporaryDirectory() as d:
        files = mk.write_dicom_series(img, Path(d) / "series", modality=modality)
        return zip_bytes([(f"study/series/{f.name}", f.read_bytes()) for f in files])


def _drop_spacing(ds: Any) -> None:
    del ds.PixelSpacing


def dicom_zip_edited(data: bytes, edit: Any) -> bytes:
    """The zipped series ``data`` with ``edit(dataset)`` applied to every file."""
    import pydicom

    members = []
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for name in z.namelist():
            ds = pydicom.dcmread(io.BytesIO(z.read(name)))
            edit(ds)
            out = io.BytesIO()
            ds.save_as(out)
            members.append((name, out.getvalue()))
    return zip_bytes(members)


def _patched(raw: bytes, *fields: tuple[int, str, tuple]) -> bytes:
    header = bytearray(raw)
    for offset, fmt, values in fields:
        struct.pack_into(fmt, header, offset, *values)
    return bytes(header)


def _symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("series/link.dcm")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _lying_zip(size: int) -> bytes:
    """A zip whose central directory declares 1000 bytes for a member that inflates to ``size``."""
    raw = zip_bytes([("series/a.dcm", b"\0" * size)])
    cd = raw.rfind(b"PK\x01\x02")
    out = bytearray(raw)
    struct.pack_into("<I", out, cd + 24, 1000)       # uncompressed size, central directory
    local = raw.find(b"PK\x03\x04")
    struct.pack_into("<I", out, local + 22, 1000)    # and in the local header
    return bytes(out)


@dataclass
class Case:
    name: str
    good: bool
    path: str                      # URL path with query
    upload: tuple[str, bytes] | None
    expect: tuple[int, ...]        # acceptable status codes
    form: dict[str, str] = field(default_factory=dict)
    check: str = ""                # "nifti" | "json" | "report" for good cases


def build_cases() -> list[Case]:
    """The good and the bad requests of the test."""
    rng = np.random.default_rng(7)
    ct = synthetic_ct()
    ct2 = synthetic_ct((20, 40, 56), (3.5, 2.5, 2.5), seed=1)
    t1 = synthetic_t1()
    t1b = synthetic_t1((36, 44, 40), (1.5, 1.2, 1.2), seed=2)
    ct_gz = nifti_bytes(ct)
    ct_nii = nifti_bytes(ct, ".nii")
    ct_dcm = dicom_zip(synthetic_ct((16, 40, 40), seed=3))
    patient = json.dumps({"schema_version": 1, "age": 61, "sex": "female", "ecog": 1})
    good = [
        Case("ct .nii.gz -> nifti", True, "/predict/sarcoma-ct", ("ct.nii.gz", ct_gz), (200,), check="nifti"),
        Case("ct .nii -> json", True, "/predict/sarcoma-ct?format=json", ("ct.nii", ct_nii), (200,), check="json"),
        Case("ct anisotropic -> json", True, "/predict/sarcoma-ct?format=json", ("ct2.nii.gz", nifti_bytes(ct2)),
             (200,), check="json"),
        Case("ct DICOM zip -> nifti", True, "/predict/sarcoma-ct", ("ct-series.zip", ct_dcm), (200,), check="nifti"),
        Case("t1 .nii.gz -> json", True, "/predict/brain-lesion?format=json", ("t1.nii.gz", nifti_bytes(t1)),
             (200,), check="json"),
        Case("t1 .nii.gz -> nifti", True, "/predict/brain-lesion", ("t1b.nii.gz", nifti_bytes(t1b)), (200,),
             check="nifti"),
        Case("analyze CT DICOM study + patient", True, "/analyze", ("study.zip", ct_dcm), (200,),
             form={"patient": patient}, check="report"),
        Case("analyze NIfTI zip, model named", True, "/analyze", ("study.zip", zip_bytes([("ct.nii.gz", ct_gz)])),
             (200,), form={"model": "sarcoma-ct", "location": "false"}, check="report"),
    ]
    P = "/predict/sarcoma-ct"
    nan_ct = ct.array.astype(np.float32)
    nan_ct[3, 4, 5] = np.nan
    import medkern as mk

    nan_gz = nifti_bytes(mk.Image(nan_ct, spacing=ct.spacing))
    flat = nifti_bytes(mk.Image(ct.array[5], spacing=(3.0, 3.0)))
    ok_zip = bytearray(ct_dcm)
    ok_zip[len(ok_zip) // 2: len(ok_zip) // 2 + 64] = rng.bytes(64)       # corrupt deflate data / CRC
    series_files = zipfile.ZipFile(io.BytesIO(ct_dcm)).namelist()
    one = zipfile.ZipFile(io.BytesIO(ct_dcm)).read(series_files[3])
    cut_series = zip_bytes([(n, zipfile.ZipFile(io.BytesIO(ct_dcm)).read(n)[: (None if i != 3 else len(one) // 3)])
                            for i, n in enumerate(series_files)])
    bad = [
        Case("truncated .nii.gz", False, P, ("t.nii.gz", ct_gz[: len(ct_gz) // 2]), (400,)),
        Case("truncated .nii", False, P, ("t.nii", ct_nii[: len(ct_nii) // 2]), (400,)),
        Case("random bytes .nii.gz", False, P, ("r.nii.gz", rng.bytes(20000)), (400,)),
        Case("random bytes .zip", False, P, ("r.zip", rng.bytes(20000)), (400,)),
        Case("text file named .nii", False, P, ("notes.nii", b"patient notes, not an image\n" * 50), (400,)),
        Case("empty file", False, P, ("e.nii.gz", b""), (400,)),
        Case("gzip of text", False, P, ("g.nii.gz", gzip.compress(b"hello" * 1000)), (400,)),
        Case("zip without end record", False, P, ("cut.zip", ct_dcm[: len(ct_dcm) - 200]), (400,)),
        Case("zip with corrupt data", False, P, ("crc.zip", bytes(ok_zip)), (400,)),
        Case("zip path traversal", False, P, ("evil.zip", zip_bytes([("../../evil.dcm", b"x")])), (400,)),
        Case("zip absolute path", False, P, ("abs.zip", zip_bytes([("/tmp/evil.dcm", b"x")])), (400,)),
        Case("zip symlink member", False, P, ("link.zip", _symlink_zip()), (400,)),
        Case("zip bomb (declared 100 MB)", False, P, ("bomb.zip", zip_bytes([("a.dcm", b"\0" * (100 * MiB))])),
             (413,)),
        Case("zip header lies about size", False, P, ("lie.zip", _lying_zip(80 * MiB)), (400, 413)),
        Case("zip with 600 members", False, P, ("many.zip", zip_bytes([(f"f{n}.dcm", b"") for n in range(600)])),
             (413,)),
        Case("zip of text files", False, P, ("txt.zip", zip_bytes([(f"s/{n}.dcm", b"hello") for n in range(5)])),
             (400,)),
        Case("zip with truncated DICOM slice", False, P, ("cut-series.zip", cut_series), (400,)),
        Case("NIfTI header: 4000^3 voxels", False, P,
             ("huge.nii.gz", gzip.compress(_patched(ct_nii, (40, "<4h", (3, 4000, 4000, 4000))))), (413,)),
        Case("NIfTI header: datatype lie", False, P,
             ("dt.nii.gz", gzip.compress(_patched(ct_nii, (70, "<hh", (64, 64))))), (400,)),
        Case("NIfTI header: unknown datatype", False, P,
             ("dt2.nii", _patched(ct_nii, (70, "<hh", (9999, 16)))), (400,)),
        Case("NIfTI header: vox_offset past end", False, P,
             ("vo.nii", _patched(ct_nii, (108, "<f", (1e7,)))), (400,)),
        Case("NIfTI header: NaN spacing", False, P,
             ("nan-sp.nii", _patched(ct_nii, (252, "<hh", (0, 0)), (76, "<4f", (1, *[float("nan")] * 3)))), (400, 422)),
        Case("NIfTI header: zero voxel size", False, P,
             ("zero-sp.nii", _patched(ct_nii, (252, "<hh", (0, 0)), (76, "<4f", (1, 0, 0, 0)))), (422,)),
        Case("DICOM without PixelSpacing", False, P, ("no-spacing.zip", dicom_zip_edited(ct_dcm, _drop_spacing)),
             (422,)),
        Case("NIfTI header: 3 m voxels", False, P,
             ("big-sp.nii", _patched(ct_nii, (252, "<hh", (0, 1)), (280, "<4f", (3000, 0, 0, 0)),
                                     (296, "<4f", (0, 3000, 0, 0)), (312, "<4f", (0, 0, 3000, 0)))), (422,)),
        Case("NaN voxel", False, P, ("nan.nii.gz", nan_gz), (422,)),
        Case("2D image", False, P, ("flat.nii.gz", flat), (422,)),
        Case("unknown model", False, "/predict/liver-9000", ("ct.nii.gz", ct_gz), (404,)),
        Case("bad format parameter", False, P + "?format=xml", ("ct.nii.gz", ct_gz), (422,)),
        Case("no file field", False, P, None, (422,)),
        Case("oversized upload (9 MB)", False, P, ("big.nii.gz", rng.bytes(9 * MiB)), (413,)),
        Case("analyze: patient not JSON", False, "/analyze", ("study.zip", ct_dcm), (422,),
             form={"patient": "/etc/passwd"}),
        Case("analyze: patient invalid", False, "/analyze", ("study.zip", ct_dcm), (422,),
             form={"patient": json.dumps({"schema_version": 1, "ecog": 9})}),
        Case("analyze: NIfTI without model", False, "/analyze", ("ct.nii.gz", ct_gz), (422,)),
    ]
    return good + bad


# ----------------------------------------------------------------------------- client side
@dataclass
class Result:
    case: Case
    status: int
    seconds: float
    ok: bool
    note: str = ""


def send(client: Any, base: str, case: Case) -> Result:
    start = time.perf_counter()
    try:
        files = {"file": (case.upload[0], case.upload[1], "application/octet-stream")} if case.upload else None
        r = client.post(base + case.path, files=files, data=case.form or None)
    except Exception as exc:  # connection reset, timeout: a failure either way
        return Result(case, 0, time.perf_counter() - start, False, f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - start
    status, note = r.status_code, ""
    if case.good:
        ok = status == 200
        if ok and case.check == "nifti":
            ok = r.content[:2] == b"\x1f\x8b" and "x-medkern-labels" in r.headers
        elif ok and case.check == "json":
            body = r.json()
            ok = bool(body.get("labels")) and sum(e["voxels"] for e in body["labels"]) > 0
        elif ok and case.check == "report":
            body = r.json()
            ok = body.get("kind") == "medkern.report" and "/tmp" not in json.dumps(body["study"])
        if not ok:
            note = r.text[:300]
    else:
        try:
            body = r.json()
            shaped = isinstance(body, dict) and bool(body.get("error")) and bool(body.get("detail"))
        except ValueError:
            shaped = False
        ok = 400 <= status < 500 and status in case.expect and shaped
        if not ok:
            note = r.text[:300]
    return Result(case, status, seconds, ok, note)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``uvicorn app:app`` in a subprocess with its own temporary folder."""

    def __init__(self, port: int, log_path: Path):
        self.port, self.log_path = port, log_path
        self.tmp = Path(tempfile.mkdtemp(prefix="medkern-loadtest-tmp-"))
        env = dict(os.environ, TMPDIR=str(self.tmp), **{f"MEDKERN_SERVICE_{k}": str(v) for k, v in LIMITS.items()})
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "app:app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning", "--no-access-log"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, client: Any, timeout: float = 120.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                r = client.get(f"http://127.0.0.1:{self.port}/health")
                if r.status_code == 200:
                    return r.json()
            except Exception:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def leftover_files(self) -> list[str]:
        return sorted(str(p.relative_to(self.tmp)) for p in self.tmp.rglob("*"))


def percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def run(clients: int, requests: int, good_share: float, warmup_rounds: int, seed: int,
        log_path: Path) -> dict[str, Any]:
    import httpx

    t0 = time.perf_counter()
    cases = build_cases()
    build_s = time.perf_counter() - t0
    good = [c for c in cases if c.good]
    bad = [c for c in cases if not c.good]
    rnd = random.Random(seed)
    plan = [rnd.choice(good) if rnd.random() < good_share else rnd.choice(bad) for _ in range(requests)]
    server = Server(free_port(), log_path)
    base = f"http://127.0.0.1:{server.port}"
    try:
        with httpx.Client(timeout=300) as c:
            health = server.wait_ready(c)
            rss_start = server.rss()
            load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            warm = [send(c, base, case) for _ in range(warmup_rounds) for case in cases]
            sequential = warm[len(cases):] if warmup_rounds > 1 else list(warm)  # one request at a time
        # then concurrent: every case once per client, and a mixed plan a quarter the size of the
        # measured one, so that worker threads, ONNX Runtime's arena and the allocator's per-thread
        # arenas reach their steady state before the memory baseline is taken
        warm += _concurrent(base, [case for case in cases for _ in range(clients)], clients)[0]
        warm_rnd = random.Random(seed + 1)
        warm_plan = [warm_rnd.choice(good) if warm_rnd.random() < good_share else warm_rnd.choice(bad)
                     for _ in range(max(100, requests // 4))]
        warm += _concurrent(base, warm_plan, clients)[0]
        time.sleep(0.5)
        rss_warm = server.rss()
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                try:
                    samples.append(server.rss())
                except Exception:
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results, wall = _concurrent(base, plan, clients)
        stop.set()
        sampler.join()
        time.sleep(0.5)
        rss_end = server.rss()
        with httpx.Client(timeout=30) as c:
            health_end = c.get(base + "/health").json()
        alive = server.proc.poll() is None
        load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    finally:
        server.stop()
    leftovers = server.leftover_files()
    log_text = log_path.read_text(errors="replace")
    good_r = [r for r in results if r.case.good]
    bad_r = [r for r in results if not r.case.good]
    per_case: dict[str, dict[str, Any]] = {}
    for r in results:
        e = per_case.setdefault(r.case.name, {"good": r.case.good, "n": 0, "statuses": {}, "failed": 0,
                                              "seconds": []})
        e["n"] += 1
        e["statuses"][r.status] = e["statuses"].get(r.status, 0) + 1
        e["failed"] += not r.ok
        e["seconds"].append(r.seconds)
    return {
        "clients": clients, "requests": requests, "good_share": good_share, "wall_s": wall,
        "build_s": build_s, "throughput_rps": len(results) / wall,
        "good": {"n": len(good_r), "failed": sum(not r.ok for r in good_r),
                 "p50_ms": percentiles([r.seconds * 1e3 for r in good_r])[0],
                 "p99_ms": percentiles([r.seconds * 1e3 for r in good_r])[1]},
        "bad": {"n": len(bad_r), "not_4xx": sum(not r.ok for r in bad_r),
                "p50_ms": percentiles([r.seconds * 1e3 for r in bad_r])[0],
                "p99_ms": percentiles([r.seconds * 1e3 for r in bad_r])[1]},
        "warmup_failed": sum(not r.ok for r in warm), "warmup_n": len(warm),
        # service time without queueing: the second sequential warm-up round, one request at a time
        "idle_good_p50_ms": percentiles([r.seconds * 1e3 for r in sequential if r.case.good])[0],
        "idle_bad_p50_ms": percentiles([r.seconds * 1e3 for r in sequential if not r.case.good])[0],
        "loadavg_start": load_start, "loadavg_end": load_end,
        "rss_start": rss_start, "rss_warm": rss_warm, "rss_end": rss_end,
        "rss_peak": max(samples + [rss_end]), "rss_growth_pct": 100.0 * (rss_end - rss_warm) / rss_warm,
        # the trend through the run: RSS at each quarter of it (a leak keeps climbing, an allocator settles)
        "rss_quarters": [samples[min(len(samples) - 1, int(q * len(samples)))] for q in (0.25, 0.5, 0.75)]
        if samples else [],
        "server_alive": alive, "leftover_tmp": leftovers,
        "server_errors": log_text.count("Traceback"), "health": health, "health_end": health_end,
        "failures": [(r.case.name, r.status, r.note) for r in results + warm if not r.ok][:20],
        "per_case": per_case,
    }


def _concurrent(base: str, plan: list[Case], clients: int) -> tuple[list[Result], float]:
    import httpx

    results: list[Result] = []
    lock = threading.Lock()
    jobs = iter(plan)

    def client() -> None:
        with httpx.Client(timeout=300) as c:
            while True:
                with lock:
                    case = next(jobs, None)
                if case is None:
                    return
                r = send(c, base, case)
                with lock:
                    results.append(r)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


# ----------------------------------------------------------------------------- report
def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def passed(res: dict[str, Any]) -> bool:
    return (res["good"]["failed"] == 0 and res["bad"]["not_4xx"] == 0 and res["warmup_failed"] == 0
            and res["rss_growth_pct"] < 5.0 and res["server_alive"] and not res["leftover_tmp"]
            and res["server_errors"] == 0)


def markdown(res: dict[str, Any], command: str) -> str:
    import fastapi
    import httpx
    import uvicorn

    import medkern as mk

    h = res["health"]
    mb = 1 / MiB
    lines = [
        "# medkern service: load test",
        "",
        f"`{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). Machine: {_cores()} cores "
        f"({_cpu()}), shared with other work, Python {platform.python_version()}, medkern {mk.__version__}, "
        f"FastAPI {fastapi.__version__}, uvicorn {uvicorn.__version__}, httpx {httpx.__version__}. "
        f"One uvicorn process on localhost, {h['workers']} worker thread(s) x {h['threads_per_worker']} "
        "inference thread(s); the clients run on the same cores. Load average (1 min) of the machine at the "
        f"start / end: {res['loadavg_start']:.1f} / {res['loadavg_end']:.1f}.",
        "",
        f"Case: {res['clients']} concurrent clients, {res['requests']} requests, about "
        f"{round(res['good_share'] * 100)} % good (small generated CT and T1 volumes: `/predict` as NIfTI or "
        "JSON from .nii, .nii.gz and a zipped DICOM series, and `/analyze` on a zipped study), the rest bad "
        "(table below). Warm-up before measuring: "
        f"{res['warmup_n']} requests (every case twice in sequence, every case once per client concurrently, "
        "then a mixed plan a quarter the size of the measured one, at least 100).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| throughput | {res['throughput_rps']:.1f} requests/s ({res['requests']} in {res['wall_s']:.1f} s) |",
        f"| good requests: p50 / p99 latency | {res['good']['p50_ms']:.0f} / {res['good']['p99_ms']:.0f} ms "
        f"({res['good']['n']} requests) |",
        f"| bad requests: p50 / p99 latency | {res['bad']['p50_ms']:.0f} / {res['bad']['p99_ms']:.0f} ms "
        f"({res['bad']['n']} requests) |",
        f"| one request at a time (warm-up): p50 good / bad | {res['idle_good_p50_ms']:.0f} / "
        f"{res['idle_bad_p50_ms']:.0f} ms |",
        f"| failed good requests | **{res['good']['failed']}** |",
        f"| bad requests not answered with the expected 4xx + JSON error | **{res['bad']['not_4xx']}** |",
        f"| server RSS: start / after warm-up / end (peak) | {res['rss_start'] * mb:.0f} / {res['rss_warm'] * mb:.1f} "
        f"/ {res['rss_end'] * mb:.1f} MiB ({res['rss_peak'] * mb:.1f}) |",
        f"| RSS growth after warm-up (limit 5 %) | **{res['rss_growth_pct']:+.2f} %** |",
        "| RSS at 25 / 50 / 75 % of the run | " + " / ".join(f"{v * mb:.1f}" for v in res["rss_quarters"])
        + " MiB |",
        f"| server alive at the end, tracebacks in its log | {res['server_alive']}, {res['server_errors']} |",
        f"| files left in the server's temporary folder | {len(res['leftover_tmp'])} |",
        f"| verdict | {'PASS' if passed(res) else 'FAIL'} |",
        "",
        f"Server limits during the test: {', '.join(f'{k.lower()}={v}' for k, v in LIMITS.items())}.",
        "",
        "| request | kind | sent | status codes | median ms | wrong |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in res["per_case"].items():
        codes = ", ".join(f"{k}×{v}" for k, v in sorted(e["statuses"].items()))
        lines.append(f"| {name} | {'good' if e['good'] else 'bad'} | {e['n']} | {codes} | "
                     f"{np.median(e['seconds']) * 1e3:.0f} | {e['failed']} |")
    if res["failures"]:
        lines += ["", "Failures (first 20):", ""] + [f"- {n}: {s} {note!r}" for n, s, note in res["failures"]]
    return "\n".join(lines) + "\n"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--good-share", type=float, default=0.6)
    parser.add_argument("--warmup-rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 clients x 60 requests")
    parser.add_argument("--out", type=Path, default=None,
                        help="Markdown report (default: LOADTEST.md beside this file, not written with --quick)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.requests = 2, 60
    out = args.out or (None if args.quick else HERE / "LOADTEST.md")
    with tempfile.TemporaryDirectory() as d:
        res = run(args.clients, args.requests, args.good_share, args.warmup_rounds, args.seed,
                  Path(d) / "server.log")
        if res["server_errors"]:
            print(Path(d, "server.log").read_text(errors="replace")[-4000:], file=sys.stderr)
    command = "python examples/service/loadtest.py" + (" --quick" if args.quick else "") + \
        ("" if args.quick or (args.clients, args.requests) == (8, 1000)
         else f" --clients {args.clients} --requests {args.requests}")
    text = markdown(res, command)
    if out is not None:
        out.write_text(text)
    if args.json:
        res = {k: v for k, v in res.items() if k != "per_case"}
        print(json.dumps(res, indent=2, default=str))
    else:
        print(text)
    return 0 if passed(res) else 1


if __name__ == "__main__":
    sys.exit(main())
