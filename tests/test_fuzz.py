"""Short atheris runs of every harness in tests/fuzz/ and replays of the stored reproducers.

Each harness runs in its own process for MEDKERN_FUZZ_SECONDS (default 15 s; the whole file stays
within about two and a half minutes), from seeds generated at run time, with a 10 s per-input
timeout (a hang is a finding) and a memory limit of 2 GiB beyond the test process's own peak. A
crash, an undocumented exception, a broken invariant, a hang or an out-of-memory makes libFuzzer
stop with a non-zero status and write the input under the test's temporary directory; the failure
message shows where. The longer run is described in tests/fuzz/README.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

FUZZ = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ))
from known_open import KNOWN_OPEN  # noqa: E402

sys.path.remove(str(FUZZ))

HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))
SECONDS = int(os.environ.get("MEDKERN_FUZZ_SECONDS", "15"))


def _rss_limit_mb(margin_mb: int = 2048) -> str:
    """libFuzzer's -rss_limit_mb: a child's peak-RSS counter starts at the parent's peak when it is
    forked (Linux keeps ru_maxrss across fork and exec), so the limit is this test process's peak
    plus the margin the harness may use; a fixed 2 GiB failed whenever pytest itself had grown
    past it."""
    import resource

    parent_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024   # KiB on Linux
    return f"-rss_limit_mb={parent_mb + margin_mb}"


def _env(strict: bool) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["MEDKERN_FUZZ_STRICT"] = "1" if strict else "0"
    return env


def _run(args: list[str], strict: bool, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=FUZZ, env=_env(strict), capture_output=True, text=True,
                          errors="replace", timeout=timeout)


def _tail(proc: subprocess.CompletedProcess, lines: int = 60) -> str:
    out = [line for line in (proc.stdout + proc.stderr).splitlines() if not line.startswith("INFO: Instrumenting")]
    return "\n".join(out[-lines:])


@pytest.mark.parametrize("harness", HARNESSES)
def test_fuzz_harness(harness, tmp_path):
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    artifacts.mkdir()
    proc = _run([f"fuzz_{harness}.py", str(corpus), f"-max_total_time={SECONDS}", "-timeout=10",
                 _rss_limit_mb(), "-seed=1", f"-artifact_prefix={artifacts}/", "-print_final_stats=1"],
                strict=False, timeout=SECONDS + 180)
    found = sorted(p.name for p in artifacts.iterdir())
    assert proc.returncode == 0 and not found, (
        f"fuzz_{harness}.py stopped with status {proc.returncode}; inputs kept: {found} in {artifacts}\n"
        f"{_tail(proc)}")
    assert "Done" in proc.stdout + proc.stderr, _tail(proc)


def _reproducers():
    known = {(k.harness, k.reproducer): k for k in KNOWN_OPEN}
    cases = []
    for d in sorted((FUZZ / "regressions").iterdir()):
        for f in sorted(d.iterdir()):
            k = known.get((d.name, f.name))
            marks = [pytest.mark.xfail(strict=True, reason=k.reason)] if k else []
            cases.append(pytest.param(d.name, f, marks=marks, id=f"{d.name}/{f.name}"))
    return cases


def test_known_open_entries_have_reproducers():
    for k in KNOWN_OPEN:
        assert (FUZZ / "regressions" / k.harness / k.reproducer).is_file(), k
        assert (FUZZ / f"fuzz_{k.harness}.py").is_file(), k


@pytest.mark.parametrize("harness,reproducer", _reproducers())
def test_regression(harness, reproducer):
    """A stored input that once made a harness fail: it must now run through cleanly."""
    proc = _run([f"fuzz_{harness}.py", str(reproducer), "-timeout=10", _rss_limit_mb()], strict=True,
                timeout=120)
    assert proc.returncode == 0, _tail(proc)
