"""Atomic output: write to a temporary name beside the target, then rename over it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def full_suffix(path: Path) -> str:
    """'.nii.gz' for 'a.nii.gz', '.nii' for 'a.nii' (suffixes that name a format)."""
    name = path.name.lower()
    for s in (".nii.gz", ".tar.gz"):
        if name.endswith(s):
            return s
    return path.suffix.lower()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path with the target's suffix; on success rename it onto ``path``.

    On any exception the temporary file is removed and the target is left untouched, so a reader
    never sees a half-written file and a failed write never destroys the previous version.
    """
    target = Path(path)
    if not target.parent.exists():
        raise FileNotFoundError(f"output directory {target.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + full_suffix(target),
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
