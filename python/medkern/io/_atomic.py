"""Atomic output: write to a temporary name beside the target, then rename over it.

The temporary file is ``.<target name>.<host>-<pid>.<8 random characters>.tmp<suffix>``. A writer
killed before its rename (SIGKILL, power loss) leaves that file behind; the next write to the same
target removes such leftovers of earlier writers, and only those: names that match the pattern
exactly for this target, regular files (not links or folders), whose writer is known dead (same
host, the pid no longer runs) or, when that cannot be known (another host, or the older pattern
without a pid), that have not been modified for :data:`STALE_AFTER_S` seconds. A writer that is
still running is never disturbed.

The file gets the permissions a plain ``open(path, "w")`` would give it: those of the file it
replaces, or ``0o666`` less the process umask for a new file (``mkstemp`` alone would leave 0600).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

# Leftovers whose writer's liveness cannot be checked are removed after this long untouched.
STALE_AFTER_S = 24 * 3600.0

_UMASK_LOCK = threading.Lock()


def full_suffix(path: Path) -> str:
    """'.nii.gz' for 'a.nii.gz', '.nii' for 'a.nii' (suffixes that name a format)."""
    name = path.name.lower()
    for s in (".nii.gz", ".tar.gz"):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux /proc)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _pid_running(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists but belongs to someone else (or cannot be asked): leave it alone
    return True


def remove_stale_temporaries(target: Path, now: float | None = None) -> list[Path]:
    """Remove leftovers of interrupted atomic writes to ``target`` (see the module docstring);
    returns the paths removed."""
    target = Path(target)
    suffix = ".tmp" + full_suffix(target)
    pattern = re.compile(r"\.(?:(?P<host>[A-Za-z0-9]{1,32})-(?P<pid>\d{1,10})\.)?[a-z0-9_]{8}"
                         + re.escape(suffix))
    prefix = f".{target.name}"
    host, now = _host(), time.time() if now is None else now
    removed: list[Path] = []
    try:
        candidates = [e for e in os.scandir(target.parent) if e.name.startswith(prefix + ".")]
    except OSError:
        return removed
    for entry in candidates:
        match = pattern.fullmatch(entry.name[len(prefix):])
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        if match["pid"] is not None and match["host"] == host:
            stale = not _pid_running(int(match["pid"]))
        else:
            stale = now - info.st_mtime > STALE_AFTER_S
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path with the target's suffix; on success rename it onto ``path``.

    On any exception the temporary file is removed and the target is left untouched, so a reader
    never sees a half-written file and a failed write never destroys the previous version.
    Leftovers of earlier interrupted writes to ``path`` are cleaned first (module docstring).
    """
    target = Path(path)
    if not target.parent.exists():
        raise FileNotFoundError(f"output directory {target.parent} does not exist")
    remove_stale_temporaries(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_host()}-{os.getpid()}.",
                               suffix=".tmp" + full_suffix(target), dir=target.parent)
    tmp_path = Path(tmp)
    try:
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
