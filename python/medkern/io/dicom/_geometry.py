"""Slice geometry: frames ordered along the slice normal, spacing from their positions, and the
problems (duplicates, gaps, gantry tilt) that make a series irregular, with the grid that recovers it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from medkern.io.dicom._header import _MAX_EXTENT_MM
from medkern.io.dicom._records import _Frame

# A slice gap may differ from the mean spacing by this fraction before the series counts as
# irregular: DS values are often rounded to 0.01 mm, which is 2% of a 0.5 mm spacing.
SPACING_TOLERANCE = 0.05
# Slices closer than this along the normal are at the same position (a repeat, not a slice).
DUPLICATE_TOLERANCE_MM = 0.01
# In-plane drift of the slice positions larger than this fraction of a pixel is gantry tilt.
TILT_TOLERANCE = 0.05
# The regular grid that recovers an irregular series may hold at most this many times its slices
# (plus _RECOVERY_SLACK): a stray slice far away from the others is not interpolated over.
_RECOVERY_FACTOR = 16
_RECOVERY_SLACK = 1024


@dataclass
class _Layout:
    """How frames map onto a grid: the regular reading, or the recovery of an irregular one."""

    frames: list[_Frame]  # in slice order, duplicates removed when recovering
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: np.ndarray
    direction: np.ndarray
    problems: list[str]
    fatal: str | None = None  # a problem allow_irregular cannot recover
    # recovery: for each output slice, (input slice a, input slice b, weight of b)
    interpolation: list[tuple[int, int, float]] | None = None
    shifts: np.ndarray | None = None  # per input slice (dj, di) in pixels, gantry tilt
    vector: bool = False


def _names(frames: Sequence[_Frame], limit: int = 6) -> str:
    names = [fr.name for fr in frames]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _repeated_instances(frames: Sequence[_Frame]) -> list[str]:
    """A problem line when files of the series share a SOPInstanceUID (copies of one instance, or
    a broken export): with allow_irregular=True they count as any other slices (duplicates of a
    position keep the lowest InstanceNumber)."""
    owners: dict[str, list[Path]] = {}
    for fr in frames:
        if fr.file.sop_uid:
            paths = owners.setdefault(fr.file.sop_uid, [])
            if fr.file.path not in paths:
                paths.append(fr.file.path)
    repeated = {uid: paths for uid, paths in owners.items() if len(paths) > 1}
    if not repeated:
        return []
    shown = "; ".join(f"{uid}: {', '.join(p.name for p in paths[:3])}" for uid, paths in list(repeated.items())[:3])
    return [f"{sum(len(p) for p in repeated.values())} files share {len(repeated)} SOPInstanceUID(s) ({shown}"
            f"{' ...' if len(repeated) > 3 else ''}): one instance stored more than once"]


def _layout(frames: list[_Frame]) -> _Layout:
    first = frames[0]
    f = first.file
    vector = f.samples > 1
    in_plane = first.pixel_spacing or (1.0, 1.0)
    positioned = all(fr.position is not None and fr.orientation is not None for fr in frames)
    if not positioned:
        if len(frames) == 1:
            # A projection radiograph, secondary capture, ...: a 2D image in its own plane.
            return _Layout(frames, (f.rows, f.cols), in_plane, np.zeros(2), np.eye(2)[:, ::-1], [],
                           vector=vector)
        files = {fr.file.path for fr in frames}
        if len(files) > 1:
            missing = [fr for fr in frames if fr.position is None or fr.orientation is None]
            return _Layout(frames, (len(frames), f.rows, f.cols), (1.0,) + in_plane, np.zeros(3),
                           np.eye(3)[:, ::-1], [], vector=vector,
                           fatal=(f"{len(missing)} of {len(frames)} slices have no ImagePositionPatient/"
                                  f"ImageOrientationPatient ({_names(missing)}), so the files cannot be "
                                  "stacked into a volume; read them one by one with read_dicom_file"))
        # Frames of one file without plane positions (cine, un-enhanced multi-frame): stored order.
        return _Layout(frames, (len(frames), f.rows, f.cols), (1.0,) + in_plane, np.zeros(3),
                       np.eye(3)[:, ::-1], [], vector=vector)

    row = np.asarray(first.orientation[:3], dtype=np.float64)
    col = np.asarray(first.orientation[3:], dtype=np.float64)
    normal = np.cross(row, col)
    positions = np.asarray([fr.position for fr in frames], dtype=np.float64)
    t = positions @ normal
    numbers = [fr.file.instance_number if fr.file.instance_number is not None else 1 << 62 for fr in frames]
    order = sorted(range(len(frames)), key=lambda a: (t[a], numbers[a], str(frames[a].file.path), frames[a].index))
    frames = [frames[a] for a in order]
    positions, t = positions[order], t[order]
    problems: list[str] = _repeated_instances(frames)
    far = int(np.argmax(np.abs(positions).max(axis=1)))
    if np.abs(positions[far]).max() > _MAX_EXTENT_MM:
        # A position kilometres away is a typo or corruption, not a scan: no arithmetic on it (it
        # would overflow to inf / nan) and no grid.
        return _Layout(frames, (len(frames), f.rows, f.cols), (1.0,) + in_plane, positions[0].copy(),
                       np.stack([normal, col, row], axis=1), problems, vector=vector,
                       fatal=(f"ImagePositionPatient {chr(92).join(f'{v:g}' for v in positions[far])} of "
                              f"{frames[far].name} is more than {_MAX_EXTENT_MM:g} mm from the origin; no scanner "
                              "places a slice there"))

    # Duplicates: repeats of a position (several acquisitions, echoes or phases in one series).
    keep = [0]
    dropped: list[tuple[_Frame, _Frame]] = []
    for a in range(1, len(frames)):
        if t[a] - t[keep[-1]] < DUPLICATE_TOLERANCE_MM:
            kept = keep[-1]
            if numbers[order[a]] < numbers[order[kept]]:
                keep[-1] = a
                dropped.append((frames[kept], frames[a]))
            else:
                dropped.append((frames[a], frames[kept]))
        else:
            keep.append(a)
    if dropped:
        pairs = "; ".join(f"{d.name} = {k.name} at {t[frames.index(k)]:.3f} mm" for d, k in dropped[:4])
        problems.append(f"{len(dropped)} duplicate slice positions ({pairs}"
                        f"{' ...' if len(dropped) > 4 else ''}); with allow_irregular=True the slice "
                        "with the lowest InstanceNumber is kept")
    frames = [frames[a] for a in keep]
    positions, t = positions[keep], t[keep]

    origin = positions[0].copy()
    direction = np.stack([normal, col, row], axis=1)
    n = len(frames)
    if n == 1:
        spacing = ((f.slice_spacing_hint or 1.0),) + in_plane
        return _Layout(frames, (1, f.rows, f.cols), spacing, origin, direction, problems, vector=vector)

    # Gantry tilt (or any in-plane drift): the positions do not move along the normal only.
    drift = positions - positions[0] - np.outer(t - t[0], normal)
    shifts = np.stack([drift @ col / in_plane[0], drift @ row / in_plane[1]], axis=1)  # (dj, di) px
    worst = int(np.argmax(np.abs(shifts).max(axis=1)))
    tilted = np.abs(shifts[worst]).max() > TILT_TOLERANCE
    if tilted:
        extent = np.linalg.norm(drift[worst])
        problems.append(
            f"gantry tilt: slice positions drift {extent:.3f} mm in-plane ({abs(shifts[worst]).max():.2f} "
            f"pixels) between {frames[0].name} and {frames[worst].name}, so the slices are not stacked "
            "along their normal; with allow_irregular=True each slice is shifted onto the first one's grid")

    gaps = np.diff(t)
    spacing_k = (t[-1] - t[0]) / (n - 1)
    bad = np.flatnonzero(np.abs(gaps - spacing_k) > SPACING_TOLERANCE * spacing_k)
    interpolation = None
    if bad.size:
        # The grid spacing: the smallest gap that is not a near-duplicate (at least half the
        # median gap), so a missing slice or a finer stretch is never undersampled.
        median = float(np.median(gaps))
        step = float(gaps[gaps >= 0.5 * median].min())
        missing = np.flatnonzero(gaps > 1.5 * step)
        where = "; ".join(f"{gaps[b]:.3f} mm between {frames[b].name} and {frames[b + 1].name}"
                          for b in bad[:4])
        kind = (f"{int(np.sum(np.round(gaps[missing] / step) - 1))} missing slice(s)" if missing.size
                else "varying slice spacing")
        problems.append(f"{kind}: gaps differ from the mean spacing {spacing_k:.4f} mm by more than "
                        f"{SPACING_TOLERANCE:.0%} ({where}{' ...' if bad.size > 4 else ''}); with "
                        f"allow_irregular=True the slices are interpolated onto a {step:.4f} mm grid")
        grid = (t[-1] - t[0]) / step + 1
        widest = int(np.argmax(gaps))
        limit = _RECOVERY_FACTOR * n + _RECOVERY_SLACK
        if not grid <= limit:
            # A stray slice far from the others (or a position typo): interpolating would build a
            # grid of mostly empty slices, of any size the positions ask for.
            return _Layout(frames, (n, f.rows, f.cols), (float(spacing_k),) + in_plane, origin, direction, problems,
                           vector=vector, fatal=(
                               f"the slices span {t[-1] - t[0]:.6g} mm along the normal with gaps down to "
                               f"{step:.4g} mm and up to {gaps[widest]:.6g} mm (between {frames[widest].name} and "
                               f"{frames[widest + 1].name}): a regular grid would need {grid:.6g} slices for {n}, "
                               f"more than {limit}; no recovery (check the ImagePositionPatient of those slices)"))
        n_out = int(round(grid - 1)) + 1
        spacing_k = (t[-1] - t[0]) / (n_out - 1)
        interpolation = []
        for k in range(n_out):
            tk = t[0] + k * spacing_k
            b = int(np.clip(np.searchsorted(t, tk, side="right"), 1, n - 1))
            w = float(np.clip((tk - t[b - 1]) / (t[b] - t[b - 1]), 0.0, 1.0))
            interpolation.append((b - 1, b, w))
        n = n_out
    return _Layout(frames, (n, f.rows, f.cols), (float(spacing_k),) + in_plane, origin, direction, problems,
                   interpolation=interpolation, shifts=shifts if tilted else None, vector=vector)
