"""Progress reporting and cancellation for medkern's long operations.

Every long operation (``register``, ``n4_bias_correction``, ``Model.predict``, ``sliding_window``,
``radiomics``, the DICOM series scans) takes a keyword-only ``progress`` argument:

- ``None`` or ``False``: nothing is reported (the default; one attribute test per check point).
- ``True``: a tqdm bar on stderr.
- a callable ``progress(stage, fraction)``: called from the calling thread with a stage name
  (``"level 2/3"``, ``"patches"``, ``"read"``...) and the fraction of the whole operation done,
  in [0, 1], never decreasing, and exactly 1.0 once when the operation has finished. Calls are at
  least ``MIN_INTERVAL_S`` apart (except the first and the last), so a callable costs at most
  about a hundred calls a second whatever the loop rate. When it returns ``False`` (exactly
  ``False``; ``None`` means go on) the operation stops there and raises :class:`Cancelled`;
  whatever the callable raises propagates unchanged. Operations have no side effects before
  they return, so a cancelled call leaves nothing behind.
- a :class:`Progress` handed down by an enclosing operation: the inner operation reports into the
  span of the outer one it was given (``Model.predict`` gives ``sliding_window`` the span of its
  patch inference). This is how pipelines nest operations under one bar or callable.

The fraction is the share of the expected work, each operation weighting its stages by their
cost (e.g. a multi-level registration by voxels x iterations per level), so it reads as elapsed
time over total time, roughly.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from medkern.errors import Cancelled

__all__ = ["Progress", "NO_PROGRESS", "MIN_INTERVAL_S"]

# Shortest time between two calls of a progress callable (seconds): at most ~100 calls a second.
MIN_INTERVAL_S = 0.01


class _Sink:
    """Where the fractions of one top-level operation go: a callable, or (``callback`` None) a
    tqdm bar opened at the first report."""

    __slots__ = ("operation", "callback", "bar", "fraction", "stage", "last_call", "finished")

    def __init__(self, operation: str, callback: Callable[[str, float], Any] | None):
        self.operation = operation
        self.callback = callback
        self.bar: Any = None  # a tqdm bar, imported only when one is shown
        self.fraction = 0.0
        self.stage = "start"
        self.last_call = -math.inf
        self.finished = False

    def emit(self, stage: str, fraction: float) -> None:
        if self.callback is None:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=100, desc=self.operation, file=sys.stderr,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                                           "[{elapsed}<{remaining}{postfix}]")
            self.bar.set_postfix_str(stage, refresh=False)
            self.bar.update(100.0 * fraction - self.bar.n)
            if fraction >= 1.0:
                self.bar.close()
            return
        if self.callback(stage, fraction) is False:
            raise Cancelled(f"{self.operation} cancelled by its progress callable during stage "
                            f"{stage!r} ({100.0 * fraction:.0f} % done)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Progress:
    """One operation's view of a progress argument: the span ``[lo, hi]`` of the overall fraction
    it reports into. Use it as a context manager around the work::

        with Progress(progress, "register") as p:
            for n, level in enumerate(p.split(costs)):
                for it in range(max_iterations):
                    level.update(f"level {n + 1}/{len(costs)}", it / max_iterations)
                    ...

    On normal exit the span is reported complete (1.0 for a top-level operation); on any exit a
    bar the operation opened is closed. ``update`` raises :class:`medkern.Cancelled` when the
    callable asks to stop.
    """

    __slots__ = ("_sink", "_lo", "_hi", "_owner")

    def __init__(self, progress: Any, operation: str):
        self._sink: _Sink | None
        self._lo, self._hi, self._owner = 0.0, 1.0, True
        if isinstance(progress, Progress):
            self._sink, self._lo, self._hi, self._owner = progress._sink, progress._lo, progress._hi, False
        elif progress is None or progress is False:
            self._sink = None
        elif progress is True:
            self._sink = _Sink(operation, None)
        elif callable(progress):
            self._sink = _Sink(operation, progress)
        else:
            raise TypeError(f"{operation}: progress must be None, False, True or a callable "
                            f"progress(stage, fraction), got {type(progress).__name__} {progress!r}")

    @property
    def active(self) -> bool:
        """Whether anything listens (False for ``progress=None``)."""
        return self._sink is not None

    def span(self, lo: float, hi: float) -> Progress:
        """The part ``[lo, hi]`` (fractions of this span) for a sub-step or a nested operation."""
        child = Progress.__new__(Progress)
        width = self._hi - self._lo
        child._sink, child._owner = self._sink, False
        child._lo = self._lo + width * lo
        child._hi = self._hi if hi >= 1.0 else self._lo + width * hi
        return child

    def split(self, costs: Sequence[float]) -> list[Progress]:
        """Consecutive spans, one per step, as wide as each step's share of the summed cost
        (equal shares when every cost is zero)."""
        costs = [max(float(c), 0.0) for c in costs]
        total = sum(costs)
        if total <= 0.0:
            costs, total = [1.0] * len(costs), float(len(costs))
        spans, done = [], 0.0
        for n, c in enumerate(costs):
            end = 1.0 if n == len(costs) - 1 else done + c / total
            spans.append(self.span(done, end))
            done = end
        return spans

    def update(self, stage: str, fraction: float) -> None:
        """Report ``fraction`` (0..1) of this span done, in ``stage``; a cancellation point."""
        sink = self._sink
        if sink is None:
            return
        if fraction >= 1.0:
            f = self._hi
        else:
            f = self._lo + (self._hi - self._lo) * max(float(fraction), 0.0)
        f = max(f, sink.fraction)
        sink.stage = stage
        if f >= 1.0:
            if sink.finished:
                return
            sink.finished, f = True, 1.0
        else:
            now = time.monotonic()
            if now - sink.last_call < MIN_INTERVAL_S:
                sink.fraction = f
                return
            sink.last_call = now
        sink.fraction = f
        sink.emit(stage, f)

    def done(self, stage: str | None = None) -> None:
        """Report this span complete (the top-level span: the final 1.0)."""
        if self._sink is not None:
            self.update(self._sink.stage if stage is None else stage, 1.0)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._sink is None:
            return
        if exc_type is None:
            try:
                self.done()
            finally:
                if self._owner:
                    self._sink.close()
        elif self._owner:
            self._sink.close()


# The inactive Progress, a default for internal helpers that report only when given one.
NO_PROGRESS = Progress(None, "")
