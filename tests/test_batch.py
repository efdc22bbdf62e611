"""mk.batch.analyze_many on a real Dask LocalCluster: equal to serial mk.analyze, resumable,
failure-isolated, surviving a killed worker; its study discovery, patient tables and summaries."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import medkern as mk

distributed = pytest.importorskip("distributed")
batch = pytest.importorskip("medkern.batch")

pytestmark = pytest.mark.filterwarnings(
    # distributed's own shutdown chatter in the test process, not medkern's
    "ignore::ResourceWarning", "ignore::DeprecationWarning:distributed.*", "ignore::DeprecationWarning:tornado.*",
    "ignore:.*Port .* is already in use.*:UserWarning",
)

STS = ("STS_001", "STS_002", "STS_003")


def _ct(seed: int, shape=(24, 96, 96), lesion_mm: float = 30.0) -> mk.Image:
    """A small CT: a soft-tissue body (40 HU) in air with a denser round mass (90 HU) and noise."""
    rng = np.random.default_rng(seed)
    spacing = (5.0, 2.0, 2.0)
    k, j, i = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    cj, ci = shape[1] * spacing[1] / 2, shape[2] * spacing[2] / 2
    body = ((j - cj) / 80) ** 2 + ((i - ci) / 70) ** 2 < 1
    mass = (k - shape[0] * spacing[0] / 2) ** 2 + (j - cj - 15) ** 2 + (i - ci + 10) ** 2 < (lesion_mm / 2) ** 2
    arr = np.where(body, 40.0, -1000.0) + np.where(mass, 50.0, 0.0) + rng.normal(0, 8, shape)
    return mk.Image(arr.round().astype(np.int16), spacing=spacing, origin=(-300.0 + 7 * seed, -90.0, -100.0))


def _write_study(folder: Path, seed: int, **kwargs) -> list[Path]:
    folder.parent.mkdir(parents=True, exist_ok=True)
    return mk.write_dicom_series(_ct(seed, **kwargs), folder, modality="CT",
                                 patient={"PatientID": f"GEN{seed:03d}", "PatientName": f"Generated^{seed}"},
                                 series_description="generated CT")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=50)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A folder whose sub-folders are studies: three generated CT studies and a corrupt one."""
    root = tmp_path_factory.mktemp("cohort")
    for seed in range(3):
        _write_study(root / f"patient{seed}" / "CT", seed)
    for f in _write_study(root / "corrupt" / "CT", 7):   # a transfer that cut every file short:
        f.write_bytes(f.read_bytes()[:-3000])            # headers intact, pixel data truncated
    return root


def _comparable(report: dict) -> dict:
    """A report without what differs between two runs of the same analysis (clock, paths)."""
    return {"findings": report["findings"], "guideline": report["guideline"], "model": report["model"],
            "series": [s["series_uid"] for s in report["study"]["series"]],
            "provenance": {k: v for k, v in report["provenance"].items() if k != "parameters"}}


def test_results_equal_serial_analyze_and_failures_are_isolated(client, generated, tmp_path):
    out = tmp_path / "out"
    result = batch.analyze_many([generated], out, model="sarcoma-ct", scheduler=client)
    assert [r["study"] for r in result.studies] == ["corrupt", "patient0", "patient1", "patient2"]
    assert result.analysed == 3 and result.reused == 0
    (bad,) = result.failed
    assert bad["study"] == "corrupt" and bad["failed_stage"] == "read" and bad["error_type"] == "DicomError"
    error = json.loads((out / "studies" / "corrupt" / "error.json").read_text())
    assert error["failed_stage"] == "read" and "Traceback" in error["traceback"]
    for row in result.studies[1:]:
        folder = out / "studies" / row["study"]
        serial = mk.analyze(generated / row["study"], model="sarcoma-ct").to_dict()
        assert _comparable(json.loads((folder / "report.json").read_text())) == _comparable(serial)
        assert row["lesion_count"] == serial["findings"]["lesion_count"]
        assert row["peak_rss_mb"] >= row["rss_before_mb"] > 0
    assert len(result.findings) == sum(r["lesion_count"] for r in result.studies[1:])


def test_summary_tables_and_cohort_page(client, generated, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "out"
    result = batch.analyze_many([generated], out, model="sarcoma-ct", scheduler=client)
    with open(out / "studies.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["study"] for r in rows] == [r["study"] for r in result.studies]
    assert [r["status"] for r in rows] == ["failed", "ok", "ok", "ok"]
    table = pq.read_table(out / "studies.parquet").to_pylist()
    assert [r["lesion_count"] for r in table] == [r.get("lesion_count") for r in result.studies]
    assert pq.read_table(out / "findings.parquet").num_rows == len(result.findings)
    page = (out / "index.html").read_text()
    for row in result.studies:
        assert f'href="{row["report"]}"' in page
        assert (out / row["report"]).is_file()
    assert "not a medical device" in page.lower()
    run = json.loads((out / "run.json").read_text())
    assert (run["studies"], run["failed"], run["analysed"]) == (4, 1, 3)


def test_rerun_skips_unchanged_and_redoes_changed(client, generated, tmp_path):
    out = tmp_path / "out"
    cohort = tmp_path / "cohort"
    for name in ("patient0", "patient1"):
        shutil.copytree(generated / name, cohort / name)
    first = batch.analyze_many([cohort], out, model="sarcoma-ct", scheduler=client)
    assert first.analysed == 2
    reports = {p: p.stat().st_ino for p in out.glob("studies/*/report.json")}

    again = batch.analyze_many([cohort], out, model="sarcoma-ct", scheduler=client)
    # nothing was submitted: no worker ran, the reports are the same files, the rows the same
    assert (again.analysed, again.reused, again.workers) == (0, 2, 0)
    assert {p: p.stat().st_ino for p in out.glob("studies/*/report.json")} == reports
    assert [{k: v for k, v in r.items() if k != "reused"} for r in again.studies] == \
           [{k: v for k, v in r.items() if k != "reused"} for r in first.studies]

    # a patient record is an input: only that study runs again
    patients = {"patient1": {"schema_version": 1, "grade": "G3", "n_status": "N0", "m_status": "M0"}}
    third = batch.analyze_many([cohort], out, patients=patients, model="sarcoma-ct", scheduler=client)
    assert [(r["study"], r["reused"]) for r in third.studies] == [("patient0", True), ("patient1", False)]
    report = json.loads((out / "studies" / "patient1" / "report.json").read_text())
    assert report["patient"]["grade"] == "G3"

    # a modified input file (new modification time) makes its study run again
    some = next((cohort / "patient0").rglob("*.dcm"))
    st = some.stat()
    os.utime(some, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fourth = batch.analyze_many([cohort], out, patients=patients, model="sarcoma-ct", scheduler=client)
    assert [(r["study"], r["reused"]) for r in fourth.studies] == [("patient0", False), ("patient1", True)]


def test_failed_study_is_retried_only_when_asked(client, generated, tmp_path):
    out = tmp_path / "out"
    batch.analyze_many([generated / "corrupt"], out, model="sarcoma-ct", scheduler=client)
    again = batch.analyze_many([generated / "corrupt"], out, model="sarcoma-ct", scheduler=client)
    assert again.workers == 0 and again.failed[0]["reused"]
    retried = batch.analyze_many([generated / "corrupt"], out, model="sarcoma-ct", scheduler=client,
                                 retry_failed=True)
    assert retried.workers == 2 and not retried.failed[0]["reused"]


def test_killed_worker_loses_nothing(client, shared_data, tmp_path):
    studies = [shared_data / "ibsi" / "ibsi_validation" / "dicom" / name for name in STS]
    out = tmp_path / "out"
    done: dict = {}
    run = threading.Thread(target=lambda: done.setdefault(
        "result", batch.analyze_many(studies, out, model="sarcoma-ct", scheduler=client)))
    run.start()
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline:   # a worker that is analysing a study now
        busy = [w for w, tasks in client.processing().items() if any("medkern-study" in str(t) for t in tasks)]
        if busy:
            time.sleep(0.5)
            victim = client.run(os.getpid, workers=[busy[0]])[busy[0]]
        else:
            time.sleep(0.05)
    assert victim is not None, "no study task started"
    os.kill(victim, signal.SIGKILL)
    run.join(timeout=300)
    result = done["result"]
    assert [r["status"] for r in result.studies] == ["ok"] * len(STS)
    rerun = batch.analyze_many(studies, out, model="sarcoma-ct", scheduler=client)
    assert rerun.analysed == 0 and rerun.reused == len(STS)
    # the killed task's scratch folder is cleared by the next run: exactly one complete folder per study
    assert sorted(p.name for p in (out / "studies").iterdir()) == list(STS)
    for name in STS:
        record = json.loads((out / "studies" / name / "batch.json").read_text())
        assert record["row"]["status"] == "ok" and (out / "studies" / name / "report.json").is_file()
    client.wait_for_workers(2, timeout=60)


def test_local_cluster_on_real_studies_matches_serial(shared_data, tmp_path):
    study = shared_data / "ibsi" / "ibsi_validation" / "dicom" / "STS_002"
    result = batch.analyze_many([study], tmp_path / "out", model="sarcoma-ct", workers=1)
    assert result.workers == 1 and result.studies[0]["status"] == "ok"
    serial = mk.analyze(study, model="sarcoma-ct").to_dict()
    got = json.loads((tmp_path / "out" / "studies" / "STS_002" / "report.json").read_text())
    assert _comparable(got) == _comparable(serial)
    assert result.studies[0]["derived.t_category"] == serial["guideline"]["derived"][0]["value"]


# ------------------------------------------------------------------------- discovery, patients


def test_find_studies_groups_by_study_uid(tmp_path):
    flat = tmp_path / "export"
    a = _write_study(tmp_path / "a", 1)
    b = _write_study(tmp_path / "b", 2)
    flat.mkdir()
    for n, f in enumerate(a + b):     # a PACS export: both studies' files in one folder
        f.rename(flat / f"IM{n:05d}")
    studies = batch.find_studies(flat)
    assert len(studies) == 2 and len({s.study_uid for s in studies}) == 2
    assert sorted(len(s.files) for s in studies) == [len(a), len(b)]
    for s in studies:   # the folder mixes studies: each is given as its own file list
        assert isinstance(s.source, tuple) and set(s.source) == set(s.files)
        assert s.id.startswith("export")
    assert len({s.id for s in studies}) == 2


def test_find_studies_names_and_inputs(tmp_path):
    _write_study(tmp_path / "site1" / "p01" / "CT", 1)
    _write_study(tmp_path / "site2" / "p01" / "CT", 2)
    nifti = tmp_path / "n" / "p09" / "CT_image.nii.gz"
    nifti.parent.mkdir(parents=True)
    mk.write(_ct(3), nifti)
    studies = batch.find_studies([tmp_path / "site1", tmp_path / "site2", nifti])
    # each input folder holds one study: it is the study's folder and names it
    assert [s.id for s in studies] == ["site1", "site2", "CT_image"]
    assert studies[0].source == str((tmp_path / "site1").resolve())
    _write_study(tmp_path / "site1" / "p02" / "CT", 4)
    both = batch.find_studies(tmp_path)   # site1 now holds two studies: p01 and p02 name them
    assert [s.id for s in both] == ["p01", "p02", "site2"]
    assert studies[2].source == str(nifti.resolve())
    with pytest.raises(ValueError, match="NIfTI file.*give them as inputs"):
        batch.find_studies(tmp_path / "n")
    with pytest.raises(ValueError, match="must be NIfTI"):
        batch.find_studies(next((tmp_path / "site1").rglob("*.dcm")))
    with pytest.raises(FileNotFoundError):
        batch.find_studies(tmp_path / "nowhere")


def test_read_patients_csv_types_and_errors(tmp_path):
    table = tmp_path / "patients.csv"
    table.write_text("study,age,ecog,grade,symptoms,histology\n"
                     "p1,61.5,1,G3,pain;swelling,leiomyosarcoma\n"
                     "p2,,,,,\n")
    got = batch.read_patients(table)
    assert got["p1"] == {"schema_version": 1, "age": 61.5, "ecog": 1, "grade": "G3",
                         "symptoms": ["pain", "swelling"], "histology": "leiomyosarcoma"}
    assert got["p2"] == {"schema_version": 1}   # empty cells are missing, never guessed
    table.write_text("study,grade\np1,G7\n")
    with pytest.raises(ValueError, match="p1"):
        batch.read_patients(table)
    table.write_text("study,weight\np1,70\n")
    with pytest.raises(ValueError, match="unknown column"):
        batch.read_patients(table)
    table.write_text("study,ecog\np1,one\n")
    with pytest.raises(ValueError, match="not a valid integer"):
        batch.read_patients(table)
    js = tmp_path / "patients.json"
    js.write_text(json.dumps([{"study": "p3", "m_status": "M1"}]))
    assert batch.read_patients(js) == {"p3": {"schema_version": 1, "m_status": "M1"}}


def test_one_batch_per_output_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with batch._locked(out):
        with pytest.raises(RuntimeError, match="in use by another batch"):
            with batch._locked(out):
                pass
    (out / batch.LOCK).write_text(f"{os.uname().nodename} 999999999")   # a process that is gone
    with batch._locked(out):
        assert (out / batch.LOCK).read_text().endswith(str(os.getpid()))
    assert not (out / batch.LOCK).exists()


def test_workers_only_size_the_local_cluster(tmp_path):
    with pytest.raises(ValueError, match="local cluster only"):
        batch.analyze_many([], tmp_path / "out", scheduler="tcp://127.0.0.1:8786", workers=4)
    assert not (tmp_path / "out").exists()


def test_study_repr_counts_files(tmp_path):
    study = batch.Study("s1", tuple(f"/d/{i}.dcm" for i in range(500)), tuple(f"/d/{i}.dcm" for i in range(500)))
    assert repr(study) == "Study(id='s1', source='<500 files>', files=500, study_uid=None, patient_id=None)"


def test_cli_batch(client, generated, tmp_path, capsys):
    from medkern.cli import main

    address = client.scheduler.address
    code = main(["batch", str(generated / "patient0"), str(generated / "corrupt"), "--out", str(tmp_path / "o"),
                 "--model", "sarcoma-ct", "--scheduler", address, "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 1   # one study failed
    assert [r["status"] for r in printed["studies"]] == ["ok", "failed"]
    assert Path(printed["files"]["index_html"]).is_file()
