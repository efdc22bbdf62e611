"""Folder scans: the regular files under a folder, each file's header read once, and the key
that splits a series into parts no single grid holds."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from medkern._progress import NO_PROGRESS, Progress
from medkern.errors import DicomWarning
from medkern.io.dicom._header import _read_header
from medkern.io.dicom._records import _Frame, _Unreadable

# Orientation cosines equal to this many decimals belong to the same part of a series.
_ORIENTATION_DECIMALS = 4


@dataclass(frozen=True)
class _Unlisted:
    """A folder of the scan that cannot be listed (what _iter_files yields in place of its files)."""

    path: Path
    reason: str


def _iter_files(directory: Path, recursive: bool) -> Iterable[Path | _Unlisted]:
    """The regular files under ``directory`` (symbolic links to regular files included), folder
    by folder in name order, as os.walk gives them. Named pipes, sockets, devices and broken
    links are never yielded; links to folders are not followed (no loops). A folder that cannot
    be listed yields an _Unlisted entry."""
    stack = [Path(directory)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield _Unlisted(folder, f"folder cannot be listed ({type(exc).__name__}: {exc.strerror or exc})")
            continue
        folders = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    folders.append(Path(e.path))
                elif e.is_file():
                    yield Path(e.path)
            except OSError:
                continue  # vanished, or a link loop
        if recursive:
            stack.extend(reversed(folders))


@dataclass
class _Scan:
    frames: list[_Frame] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    skipped: int = 0


def _scan(paths: Iterable[Path | _Unlisted], progress: Progress = NO_PROGRESS) -> _Scan:
    scan = _Scan()
    paths = list(paths)
    for n, p in enumerate(paths):
        progress.update("scan", n / len(paths))
        if isinstance(p, _Unlisted):
            warnings.warn(f"{p.path}: {p.reason}; its files are left out of the scan", DicomWarning, stacklevel=3)
            scan.unreadable.append((p.path, p.reason))
            continue
        try:
            header = _read_header(p)
        except _Unreadable as exc:
            scan.unreadable.append((p, str(exc)))
            continue
        if header is None:
            scan.skipped += 1
        else:
            scan.frames.extend(header[1])
    return scan


def _part_key(fr: _Frame) -> tuple:
    # + 0.0 turns -0.0 into 0.0 so that both land in the same part.
    ori = None if fr.orientation is None else tuple(round(v, _ORIENTATION_DECIMALS) + 0.0 for v in fr.orientation)
    sp = None if fr.pixel_spacing is None else tuple(round(v, 4) for v in fr.pixel_spacing)
    f = fr.file
    # Frames whose stored values mean different things (modality, bits, sign, inversion, float)
    # are never stacked: one modality LUT serves a whole volume.
    return (ori, f.rows, f.cols, sp, f.samples, f.bits_allocated, f.signed, f.modality, f.bits_stored,
            f.monochrome1, f.float_pixels)


def _describe_key(key: tuple, keys: Sequence[tuple] = ()) -> str:
    """A part of a series in words; modality and bit layout only where they vary among ``keys``."""
    ori, rows, cols, sp, samples, bits, signed = key[:7]
    text = f"{rows}x{cols}"
    if sp is not None:
        text += f" pixels {sp[0]:g}x{sp[1]:g} mm"
    if ori is not None:
        text += f", orientation [{', '.join(f'{v:g}' for v in ori)}]"
    if samples != 1:
        text += f", {samples} samples/pixel"
    modality, bits_stored, monochrome1, float_pixels = key[7:]
    varies = {i for i in range(5, 11) if len({k[i] for k in keys}) > 1}
    if 7 in varies:
        text += f", modality {modality or '(none)'}"
    if varies & {5, 6, 8, 10}:
        text += f", {'float ' if float_pixels else ''}{bits_stored}/{bits} bits {'signed' if signed else 'unsigned'}"
    if 9 in varies:
        text += ", MONOCHROME1" if monochrome1 else ", MONOCHROME2"
    return text
