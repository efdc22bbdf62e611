"""Findings of the harnesses that are not fixed yet.

Each entry names the harness, the exception type that escapes, the reproducer under
``regressions/<harness>/`` and what is wrong. tests/test_fuzz.py replays every reproducer and
expects it to fail (xfail, strict) while it is listed here; a short fuzzing run lets these types
pass so that it reports new findings only (``MEDKERN_FUZZ_STRICT=1`` disables that). When a fix
lands the replay passes, the strict xfail turns red, and the entry is removed from this list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Known:
    harness: str
    exception: str
    reproducer: str
    reason: str


KNOWN_OPEN: list[Known] = []
