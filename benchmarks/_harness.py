"""Benchmark harness: a Case times medkern and its references in the same process."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable


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


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
