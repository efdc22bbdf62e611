"""Time medkern against the reference implementations, in one process, and write RESULTS.md.

    python benchmarks/run.py                 # every family (benchmarks/bench_*.py)
    python benchmarks/run.py io resample     # some families; other sections of RESULTS.md stay
    python benchmarks/run.py --quick         # fewer repeats, for a smoke run

Each family module ``bench_<family>.py`` defines ``cases(quick: bool) -> list[Case]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import median_time, touch_memory  # noqa: E402

RESULTS = HERE / "RESULTS.md"


def families() -> list[str]:
    return sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def copy_bandwidth_gbs() -> float:
    """Large-array copy bandwidth (read + write bytes / time): the floor for memory-bound kernels."""
    src = np.ones(64 * 2**20, dtype=np.float32)  # 256 MiB
    dst = np.empty_like(src)
    t = median_time(lambda: np.copyto(dst, src), repeats=5)
    return 2 * src.nbytes / t / 1e9


def configure_references() -> None:
    """Give every reference all cores, as a user would run it."""
    n = os.cpu_count() or 1
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:
        pass


def run_family(name: str, quick: bool, bandwidth: float) -> list[str]:
    module = importlib.import_module(f"bench_{name}")
    rows = []
    print(f"\n== {name}", flush=True)
    for case in module.cases(quick=quick):
        repeats = 2 if quick else case.repeats
        t_mk = median_time(case.medkern, repeats)
        gbs = f"{case.bytes_moved / t_mk / 1e9:.1f} ({case.bytes_moved / t_mk / 1e9 / bandwidth:.0%})" \
            if case.bytes_moved else ""
        if not case.references:
            rows.append(f"| {case.name} | {t_mk:.4f} | — | — | — | {gbs} | {case.target} |")
        for ref_name, ref in case.references.items():
            t_ref = median_time(ref, repeats)
            rows.append(f"| {case.name} | {t_mk:.4f} | {ref_name} | {t_ref:.4f} | "
                        f"**{t_ref / t_mk:.1f}×** | {gbs} | {case.target} |")
        for r in rows[-max(1, len(case.references)):]:
            print(r, flush=True)
    return rows


HEADER = ("| case | medkern (s) | reference | reference (s) | speed-up | medkern GB/s (of copy bw) | target |\n"
          "|---|---|---|---|---|---|---|")


def write_results(sections: dict[str, str], machine: str) -> None:
    old = RESULTS.read_text() if RESULTS.exists() else ""
    kept = dict(re.findall(r"<!-- family:(\w+) -->\n(.*?)<!-- /family -->\n", old, flags=re.S))
    kept.update(sections)
    body = [
        "# Benchmark results",
        "",
        "Median of several runs after a warm-up, medkern and the reference in the same process on the",
        "same arrays; speed-up = reference time / medkern time. Written by `benchmarks/run.py`;",
        "each section records the machine and the command that produced it.",
        "",
    ]
    for name in sorted(kept):
        body.append(f"<!-- family:{name} -->\n{kept[name]}<!-- /family -->")
        body.append("")
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text("\n".join(body))
    os.replace(tmp, RESULTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("families", nargs="*", help=f"families to run (default all: {', '.join(families())})")
    parser.add_argument("--quick", action="store_true", help="2 repeats, smaller inputs where a family offers them")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    chosen = args.families or families()
    unknown = set(chosen) - set(families())
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; available: {families()}")
    import medkern as mk

    configure_references()
    touch_memory()
    bandwidth = copy_bandwidth_gbs()
    machine = (f"{cpu_name()}, {os.cpu_count()} cores, medkern threads {mk.get_num_threads()}, "
               f"numpy {np.__version__}, copy bandwidth {bandwidth:.1f} GB/s")
    print(machine)
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    sections = {}
    for name in chosen:
        t0 = time.perf_counter()
        rows = run_family(name, args.quick, bandwidth)
        stamp = dt.date.today().isoformat()
        sections[name] = (f"## {name}\n\n{machine}; `{command.strip()}`, {stamp}, "
                          f"{time.perf_counter() - t0:.0f} s\n\n{HEADER}\n" + "\n".join(rows) + "\n\n")
    if not args.no_write:
        write_results(sections, machine)
        print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
