"""Benchmark harness: a Case times medkern and its references in the same process."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass
class Case:
    """One workload. ``medkern`` and each reference are zero-argument callables on prepared data.

    ``bytes_moved`` (the minimum bytes a kernel must read and write) turns the median time into an
    achieved bandwidth, to compare with the machine's copy bandwidth. ``target`` is the goal from
    the issue, printed beside the measurement.
    """

    name: str
    medkern: Callable[[], Any]
    references: dict[str, Callable[[], Any]] = field(default_factory=dict)
    bytes_moved: int | None = None
    target: str = ""
    repeats: int = 5


def touch_memory(gib: float = 4.0) -> None:
    """Write and free ``gib`` GiB once (at most a quarter of the available memory), before any timing.

    On a virtual machine the host backs guest memory on its first use: until a process has cycled
    through enough memory, every fresh array pays that on top of the usual page faults. A 256^3
    Gaussian took 150 ms for its first ten calls and 50 ms afterwards in one process; after this
    touch it takes 50 ms from the first call. It runs once, so medkern and the references all
    see the same memory."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        available = 4 * int(gib * 2**30)
    n = min(int(gib * 2**30), available // 4) // 4
    block = np.ones(n, dtype=np.float32)
    del block


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 3, warmup_budget_s: float = 2.0) -> float:
    """Median of ``repeats`` timed calls after up to ``warmup`` untimed ones (fewer once they
    have taken ``warmup_budget_s``). The first calls of a process that allocates large arrays
    pay the kernel's page faults and the allocator's adaptation (glibc raises its mmap threshold
    after the first frees), and on this machine that lasts two or three calls of a 256^3 filter."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
        if time.perf_counter() - start > warmup_budget_s:
            break
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
