"""``report.html``: one self-contained page a clinician can read without medkern.

Everything is inline (CSS, figures as ``data:image/png;base64`` PNGs written by :func:`encode_png`),
so the page opens offline, can be mailed or archived, and needs no JavaScript. Every text taken
from the report is HTML-escaped: guideline and patient files are user-supplied.

Figures follow the radiological display convention: axial slices with the patient's right on the
viewer's left and anterior up, coronal with superior up and the patient's right on the left,
sagittal with superior up and anterior on the left. The orientation comes from the image geometry
(``direction``), never from the array layout, and every figure is resampled to square pixels so
anisotropic voxels keep their physical proportions.
"""

from __future__ import annotations

import base64
import html
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from medkern.analysis.report import DISCLAIMER, _cite
from medkern.image import Image

__all__ = ["render_html", "encode_png"]

BANNER = "Research decision support — not a medical device"
# Array axes toward Inferior, Posterior, Left: plain slicing of this layout then gives the
# radiological convention in all three planes (row 0 is the superior or anterior end, column 0
# the patient's right or, in sagittal slices, the anterior end).
DISPLAY_ORIENTATION = "IPL"
# (plane, fixed axis, row axis, column axis) in the DISPLAY_ORIENTATION layout
VIEWS = (("axial", 0, 1, 2), ("coronal", 1, 0, 2), ("sagittal", 2, 0, 1))
# CT soft-tissue display window (centre, width) in HU: lesions of soft tissue, fat and fluid stay
# distinguishable, where a lung or bone window would flatten them
CT_WINDOW = (40.0, 400.0)
PERCENTILE_WINDOW = (1.0, 99.0)
# The crop shows the lesion in its surroundings: a field this many times its diameter, never
# narrower than CROP_MIN_MM so small lesions keep enough anatomy around them to be recognised.
CROP_DIAMETERS = 4.0
CROP_MIN_MM = 60.0
VIEW_PX = 256
LESION_RGB = (255, 214, 0)
OTHER_RGB = (0, 190, 255)
OUTSIDE_RGB = (28, 32, 44)
NA_NOTE = "not available in the report"
_LPS_LETTERS = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}


# ---------------------------------------------------------------------------------------------- PNG
def encode_png(rgb: np.ndarray) -> bytes:
    """An RGB8 PNG (ISO/IEC 15948) of a ``(height, width, 3)`` uint8 array.

    Rows use the PNG "Sub" filter (type 1): neighbouring pixels of an image differ little, so the
    differences deflate far better than the raw bytes.
    """
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"rgb must be a non-empty (height, width, 3) uint8 array, got {a.dtype} {a.shape}")
    height, width = a.shape[:2]
    rows = np.ascontiguousarray(a).reshape(height, width * 3)
    filtered = rows.copy()
    filtered[:, 3:] = rows[:, 3:] - rows[:, :-3]  # uint8 arithmetic wraps modulo 256, as PNG wants
    scanlines = np.concatenate([np.ones((height, 1), np.uint8), filtered], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
            + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------ text helpers
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _na(reason: str = NA_NOTE) -> str:
    return f'<span class="na" title="{_esc(reason)}">—</span>'


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _num(value: Any, decimals: int = 1, unit: str = "", reason: str = NA_NOTE) -> str:
    """A number with fixed decimals (and unit); anything missing or undefined becomes a noted dash."""
    if value is None or (_is_number(value) and not math.isfinite(float(value))):
        return _na(reason)
    if not _is_number(value):
        return _esc(value)
    return f"{float(value):,.{decimals}f}" + (f"&nbsp;{_esc(unit)}" if unit else "")


def _cm3(value: Any, unit: str = "") -> str:
    """Volumes: hundredths of a cm³, thousandths below 1 cm³ so small lesions do not read as 0."""
    small = _is_number(value) and math.isfinite(float(value)) and abs(float(value)) < 1
    return _num(value, 3 if small else 2, unit)


def _general(value: float) -> str:
    """A float of unknown scale: four significant digits, no exponent for everyday magnitudes."""
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.3e}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    return f"{value:.4g}"


def _value(value: Any) -> str:
    """Any JSON value as escaped HTML: scalars inline, lists and objects nested."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return _na()
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return _esc(int(value))
    if _is_number(value):
        return _general(float(value)) if math.isfinite(float(value)) else _na("undefined (not a finite number)")
    if isinstance(value, dict):
        if not value:
            return _na("empty")
        rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_value(v)}</td></tr>" for k, v in value.items())
        return f'<table class="kv">{rows}</table>'
    if isinstance(value, (list, tuple)):
        if not value:
            return _na("empty list")
        if all(not isinstance(v, (dict, list, tuple)) for v in value):
            return ", ".join(_value(v) for v in value)
        return "<ul>" + "".join(f"<li>{_value(v)}</li>" for v in value) + "</ul>"
    return _esc(value)


def _vector(values: Any, decimals: int = 1) -> str:
    if not isinstance(values, (list, tuple)) or not values:
        return _na()
    return "(" + ", ".join(_num(v, decimals) for v in values) + ")"


def _reference(ref: Any) -> str:
    if not isinstance(ref, dict):
        return _value(ref)
    text = _cite(ref)
    cited = _esc(text) if text else _na("the rule names no reference")
    url = ref.get("url")
    # Only web links become links: a user-supplied "javascript:" or "file:" address stays text.
    if isinstance(url, str) and url.lower().startswith(("https://", "http://")):
        cited += f' <a href="{_esc(url)}">{_esc(url)}</a>'
    elif url:
        cited += f" ({_esc(url)})"
    return cited


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    """A table of already-escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fields(pairs: Iterable[tuple[str, str]]) -> str:
    """A two-column key/value table of already-escaped values."""
    return '<table class="kv">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_esc(title)}</h2>{body}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


# ------------------------------------------------------------------------------------- the volume
@dataclass
class _Volume:
    """The study laid out for display (DISPLAY_ORIENTATION), with its window and orientation."""

    grid: Image            # geometry of the display layout (maps LPS points to its indices)
    image: np.ndarray      # intensities in the study's dtype (a float copy of a CT would double it)
    labels: np.ndarray | None
    window: tuple[float, float]
    window_note: str
    letters: list[tuple[str, str]]  # per display axis: (letter at index 0, letter at the far end)
    oblique_deg: float


def _axis_letters(vector: np.ndarray) -> tuple[tuple[str, str], float]:
    """The patient directions at the two ends of an axis, and its angle to that anatomical axis."""
    world = int(np.argmax(np.abs(vector)))
    sign = 1 if vector[world] > 0 else -1
    cosine = abs(float(vector[world])) / float(np.linalg.norm(vector))
    angle = math.degrees(math.acos(min(1.0, cosine)))
    return (_LPS_LETTERS[(world, -sign)], _LPS_LETTERS[(world, sign)]), angle


def _window(array: np.ndarray, modality: Any) -> tuple[tuple[float, float], str]:
    if modality == "CT":
        centre, width = CT_WINDOW
        note = f"CT soft-tissue window (centre {centre:g} HU, width {width:g} HU)"
        return (centre - width / 2, centre + width / 2), note
    values = array[np.isfinite(array) & (array != 0)]
    if values.size == 0:
        return (0.0, 1.0), "the image has no non-zero voxel: shown as it is"
    lo, hi = (float(v) for v in np.percentile(values, PERCENTILE_WINDOW))
    note = (f"percentiles {PERCENTILE_WINDOW[0]:g} to {PERCENTILE_WINDOW[1]:g} of the non-zero voxels "
            f"({_general(lo)} to {_general(hi)})")
    if hi <= lo:
        hi = lo + 1.0
    return (lo, hi), note


def _volume(image: Image, labels: Image | None, modality: Any) -> _Volume:
    from medkern.inference import reorient

    grid = reorient(image, DISPLAY_ORIENTATION)
    array = np.asarray(grid)
    lab = None if labels is None else np.asarray(reorient(labels, DISPLAY_ORIENTATION))
    window, note = _window(array, modality)
    ends = [_axis_letters(grid.direction[:, a]) for a in range(3)]
    return _Volume(grid, array, lab, window, note, [e[0] for e in ends], max(e[1] for e in ends))


# ------------------------------------------------------------------------------------ the figures
def _axis_samples(centre: float, extent_mm: float, spacing: float, pixel_mm: float, n: int):
    """Continuous indices of ``round(extent/pixel)`` pixel centres around ``centre``, and which lie
    in the image (inside a voxel's footprint, i.e. within half a voxel of the outer centres)."""
    count = max(1, int(round(extent_mm / pixel_mm)))
    coords = centre + (np.arange(count) - (count - 1) / 2) * pixel_mm / spacing
    inside = (coords > -0.5) & (coords < n - 0.5)
    return np.clip(coords, 0, n - 1), inside


def _bilinear(plane: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    r0 = np.floor(rows).astype(np.intp)
    c0 = np.floor(cols).astype(np.intp)
    r1 = np.minimum(r0 + 1, plane.shape[0] - 1)
    c1 = np.minimum(c0 + 1, plane.shape[1] - 1)
    wr = (rows - r0)[:, None]
    wc = (cols - c0)[None, :]
    top = plane[np.ix_(r0, c0)] * (1 - wc) + plane[np.ix_(r0, c1)] * wc
    bottom = plane[np.ix_(r1, c0)] * (1 - wc) + plane[np.ix_(r1, c1)] * wc
    return top * (1 - wr) + bottom * wr


def _outline(labels: np.ndarray, width: int) -> np.ndarray:
    """Pixels of a label region within ``width`` pixels of its border (4-neighbourhood): a contour
    drawn inside the region, so the tissue outside and inside it stays visible."""
    core = labels.astype(np.int64)
    for _ in range(width):
        p = np.pad(core, 1, mode="edge")
        same = (p[:-2, 1:-1] == core) & (p[2:, 1:-1] == core) & (p[1:-1, :-2] == core) & (p[1:-1, 2:] == core)
        core = np.where(same, core, -1)
    return (labels != 0) & (core != labels)


def _nice_length(extent_mm: float) -> float:
    """A 1-2-5 scale-bar length of at most a fifth of the field."""
    target = extent_mm / 5
    base = 10 ** math.floor(math.log10(target))
    return max(m * base for m in (1, 2, 5) if m * base <= target)


@dataclass
class _Figure:
    rgb: np.ndarray
    pixel_mm: float
    letters: tuple[str, str, str, str]  # top, bottom, left, right
    lesion_in_plane: bool


def _plane(vol: _Volume, view: tuple[str, int, int, int], centre: np.ndarray, extent_mm: tuple[float, float],
           lesion_id: int | None, outline_px: int) -> _Figure:
    """One slice through ``centre`` (display indices) covering ``extent_mm`` (rows, columns)."""
    _, fixed, row_axis, col_axis = view
    shape, spacing = vol.image.shape, vol.grid.spacing
    index = int(np.clip(np.rint(centre[fixed]), 0, shape[fixed] - 1))
    pixel_mm = max(extent_mm) / VIEW_PX
    rows, rows_in = _axis_samples(centre[row_axis], extent_mm[0], spacing[row_axis], pixel_mm, shape[row_axis])
    cols, cols_in = _axis_samples(centre[col_axis], extent_mm[1], spacing[col_axis], pixel_mm, shape[col_axis])
    inside = rows_in[:, None] & cols_in[None, :]
    lo, hi = vol.window
    values = _bilinear(np.take(vol.image, index, axis=fixed).astype(np.float32), rows, cols)
    inside &= np.isfinite(values)  # NaN voxels hold no measurement: shown like the space outside
    grey = (np.clip((np.where(inside, values, lo) - lo) / (hi - lo), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[~inside] = OUTSIDE_RGB
    lesion_in_plane = False
    if vol.labels is not None:
        nearest = np.take(vol.labels, index, axis=fixed)[np.ix_(np.rint(rows).astype(np.intp),
                                                                 np.rint(cols).astype(np.intp))]
        nearest = np.where(inside, nearest, 0)
        edge = _outline(nearest, outline_px)
        own = nearest == lesion_id
        rgb[edge & ~own] = OTHER_RGB
        rgb[edge & own] = LESION_RGB
        lesion_in_plane = bool(own.any())
    (top, bottom), (left, right) = vol.letters[row_axis], vol.letters[col_axis]
    return _Figure(rgb, pixel_mm, (top, bottom, left, right), lesion_in_plane)


def _draw_box(fig: _Figure, top_left: np.ndarray, bottom_right: np.ndarray) -> None:
    """A one-pixel rectangle (pixel coordinates) marking the cropped field on the overview; sides
    beyond the image are left out rather than drawn on its edge, where they would mislead."""
    h, w = fig.rgb.shape[:2]
    r0, c0 = (int(v) for v in np.rint(top_left))
    r1, c1 = (int(v) for v in np.rint(bottom_right))
    rows, cols = slice(max(r0, 0), min(r1, h - 1) + 1), slice(max(c0, 0), min(c1, w - 1) + 1)
    for r in (r0, r1):
        if 0 <= r < h:
            fig.rgb[r, cols] = LESION_RGB
    for c in (c0, c1):
        if 0 <= c < w:
            fig.rgb[rows, c] = LESION_RGB


def _img(fig: _Figure, view: str, alt: str, lesion_id: int | None) -> str:
    h, w = fig.rgb.shape[:2]
    data = base64.b64encode(encode_png(fig.rgb)).decode("ascii")
    bar_mm = _nice_length(w * fig.pixel_mm)
    top, bottom, left, right = fig.letters
    lesion_attr = "" if lesion_id is None else f' data-lesion="{_esc(lesion_id)}"'
    return (f'<div class="view" style="width:{w}px"><img src="data:image/png;base64,{data}" width="{w}" '
            f'height="{h}" alt="{_esc(alt)}" data-view="{view}"{lesion_attr}>'
            f'<span class="o top">{top}</span><span class="o bottom">{bottom}</span>'
            f'<span class="o left">{left}</span><span class="o right">{right}</span>'
            f'<span class="scale" style="width:{100 * bar_mm / (w * fig.pixel_mm):.2f}%">{bar_mm:g} mm</span></div>')


def _full_field(vol: _Volume, centre: np.ndarray, lesion_id: int | None) -> _Figure:
    """The axial slice through ``centre`` over the whole field of view."""
    _, _, row_axis, col_axis = VIEWS[0]
    shape, spacing = vol.image.shape, vol.grid.spacing
    middle = np.array([centre[0], (shape[1] - 1) / 2, (shape[2] - 1) / 2])
    extent = (shape[row_axis] * spacing[row_axis], shape[col_axis] * spacing[col_axis])
    return _plane(vol, VIEWS[0], middle, extent, lesion_id, outline_px=1)


def _lesion_centre(vol: _Volume, lesion: dict[str, Any]) -> np.ndarray | None:
    point = lesion.get("centroid_lps_mm")
    if not (isinstance(point, (list, tuple)) and len(point) == 3 and all(_is_number(v) for v in point)
            and all(math.isfinite(float(v)) for v in point)):
        return None
    return vol.grid.world_to_index(np.asarray(point, dtype=np.float64))


def _lesion_figures(vol: _Volume, lesion: dict[str, Any], lesion_count: int) -> str:
    lesion_id = lesion.get("id")
    title = f"Lesion {_esc(lesion_id)}"
    centre = _lesion_centre(vol, lesion)
    if centre is None or np.any(centre < -0.5) or np.any(centre > np.array(vol.image.shape) - 0.5):
        why = "the report gives no centroid for it" if centre is None else "its centroid lies outside the image"
        return f"<figure><figcaption>{title}: no figure, {why}.</figcaption></figure>"
    diameter = lesion.get("max_diameter_mm")
    diameter = float(diameter) if _is_number(diameter) and math.isfinite(float(diameter)) else 0.0
    # A field wider than the whole image would only add empty margin around it.
    field = max(n * s for n, s in zip(vol.image.shape, vol.grid.spacing))
    side = min(max(CROP_DIAMETERS * diameter, CROP_MIN_MM), field)
    views, missing = [], []
    for view in VIEWS:
        fig = _plane(vol, view, centre, (side, side), lesion_id, outline_px=2)
        if vol.labels is not None and not fig.lesion_in_plane:
            missing.append(view[0])
        views.append(_img(fig, view[0], f"Lesion {lesion_id}, {view[0]} slice through its centroid", lesion_id))
    overview = _full_field(vol, centre, lesion_id)
    _, _, row_axis, col_axis = VIEWS[0]
    spacing = vol.grid.spacing
    h, w = overview.rgb.shape[:2]
    scale = np.array([spacing[row_axis], spacing[col_axis]]) / overview.pixel_mm
    mid = np.array([(vol.image.shape[row_axis] - 1) / 2, (vol.image.shape[col_axis] - 1) / 2])
    at = (np.array([centre[row_axis], centre[col_axis]]) - mid) * scale + (np.array([h, w]) - 1) / 2
    if side < field:
        half = side / 2 / overview.pixel_mm
        _draw_box(overview, at - half, at + half)
    views.append(_img(overview, "axial-fov", f"Lesion {lesion_id}, whole axial field of view", lesion_id))
    legend = (f'<span class="swatch" style="background:rgb{LESION_RGB}"></span>lesion {_esc(lesion_id)}'
              + (f' <span class="swatch" style="background:rgb{OTHER_RGB}"></span>other lesions'
                 if lesion_count > 1 else ""))
    notes = []
    if vol.labels is None:
        notes.append("no label map was given, so the lesion is not outlined")
    if len(missing) == len(VIEWS) and not np.any(vol.labels == lesion_id):
        notes.append(f"the label map has no voxel of lesion {lesion_id}, so it is not outlined")
    elif missing:
        notes.append(f"the lesion does not cross its centroid in the {', '.join(missing)} slice "
                     "(a non-convex shape), so no outline shows there")
    location = (lesion.get("location") or {}).get("description")
    where = f" — {_esc(location)}" if location else ""
    caption = (f"<figcaption><strong>{title}</strong>{where}. Axial, coronal and sagittal slices through the "
               f"centroid {_vector(lesion.get('centroid_lps_mm'))} mm LPS, {side:.0f} mm field; whole axial "
               f"field of view{' with the cropped field boxed' if side < field else ''}. {legend}. "
               + "".join(f"<br>Note: {_esc(n)}." for n in notes) + "</figcaption>")
    return f'<figure id="figure-{_esc(lesion_id)}"><div class="views">{"".join(views)}</div>{caption}</figure>'


def _figures(report: dict[str, Any], image: Image | None, labels: Image | None) -> str:
    lesions = _lesions(report)
    if image is None:
        return _note("No figures: this page was rendered without the image (for example re-rendered from "
                     "report.json). Render it with the analysed image and lesion labels "
                     "(<code>render_html(report, image, labels)</code> or <code>Report.write</code>) to see them.")
    if image.ndim != 3 or image.is_vector:
        kind = "a vector image" if image.is_vector else f"a {image.ndim}D image"
        return _note(f"No figures: they are drawn for 3D scalar volumes and this study is {kind}.")
    vol = _volume(image, labels, (report.get("study") or {}).get("modality"))
    notes = [f"Display window: {_esc(vol.window_note)}. Radiological convention; letters mark the patient "
             "directions at the edges; each image is resampled to square pixels, so proportions are physical."]
    if vol.oblique_deg > 1.0:
        notes.append(f"The acquisition is oblique: the views follow the nearest anatomical axes (up to "
                     f"{vol.oblique_deg:.0f}° off).")
    if not lesions:
        middle = (np.array(vol.image.shape) - 1) / 2
        overview = _img(_full_field(vol, middle, None), "axial-fov", "Whole axial field of view, middle slice", None)
        notes.append("No lesion was found, so there are no lesion views; the middle axial slice shows the study.")
        return "".join(_note(n) for n in notes) + f'<figure><div class="views">{overview}</div></figure>'
    return "".join(_note(n) for n in notes) + "".join(_lesion_figures(vol, les, len(lesions)) for les in lesions)


# ---------------------------------------------------------------------------------- the sections
def _lesions(report: dict[str, Any]) -> list[dict[str, Any]]:
    return list((report.get("findings") or {}).get("lesions") or [])


def _study_section(report: dict[str, Any]) -> str:
    study = report.get("study") or {}
    model = report.get("model") or {}
    shape = study.get("shape")
    grid = (" × ".join(_esc(n) for n in shape) + " voxels [k, j, i]") if shape else _na()
    parts = [_fields([
        ("Source", _value(study.get("source"))),
        ("Modality", _value(study.get("modality"))),
        ("Grid", grid),
        ("Spacing", _vector(study.get("spacing"), 3) + " mm [k, j, i]" if study.get("spacing") else _na()),
        ("Series read", _value(study.get("picked_reason"))),
    ])]
    series = study.get("series") or []
    if series:
        rows = [("✔" if s.get("picked") else "", _value(s.get("description")), _value(s.get("modality")),
                 " × ".join(_esc(n) for n in s.get("shape") or []) or _na(), _vector(s.get("spacing"), 3),
                 _value(s.get("reason")) + ("<br>" + _value(s.get("problems")) if s.get("problems") else ""),
                 f'<code>{_value(s.get("series_uid"))}</code>') for s in series]
        parts.append("<h3>Series in the study</h3>" + _table(
            ["Read", "Description", "Modality", "Shape", "Spacing (mm)", "Why", "Series UID"], rows))
    if study.get("identifiers"):
        parts.append("<h3>Identifiers</h3>" + _value(study["identifiers"]))
    sha = model.get("sha256")
    parts.append("<h3>Model</h3>" + _fields([
        ("Name", _value(model.get("name"))),
        ("Version", _value(model.get("version"))),
        ("Reads", _value(model.get("modalities"))),
        ("Intended use", _value(model.get("intended_use"))),
        ("Post-processing", _value(model.get("postprocessing")) if model.get("postprocessing") else "none declared"),
        ("SHA-256", f"<code>{_esc(sha)}</code>" if sha else _na("the model was not read from a file")),
    ]))
    patient = report.get("patient")
    if patient:
        parts.append("<h3>Patient context</h3>" + _value(patient))
    else:
        parts.append("<h3>Patient context</h3>" + _note(
            "No patient context was given: every patient field a guideline rule needs is listed under "
            "<a href=\"#missing\">Missing inputs</a>, never guessed."))
    return _section("study", "Study and model", "".join(parts))


def _findings_section(report: dict[str, Any], figures: str) -> str:
    findings = report.get("findings") or {}
    lesions = _lesions(report)
    unit = "HU" if (report.get("study") or {}).get("modality") == "CT" else ""
    summary = _fields([
        ("Lesions", _value(findings.get("lesion_count"))),
        ("Total volume", _cm3(findings.get("total_volume_cm3"), "cm³")),
        ("Largest 3D diameter", _num(findings.get("max_diameter_mm"), 1, "mm", "no lesion was found")),
    ])
    if not lesions:
        return _section("findings", "Findings", summary + _note("The model found no lesion.") + figures)
    rows = []
    for les in lesions:
        loc = les.get("location") or {}
        intensity = les.get("intensity") or {}
        mean = _num(intensity.get("mean"), 1, unit, "undefined for this lesion")
        if all(_is_number(intensity.get(k)) and math.isfinite(float(intensity[k])) for k in ("mean", "std")):
            mean += f" ± {_num(intensity['std'], 1)}"
        place = _value(loc.get("description"))
        if loc.get("method"):
            place += f'<div class="small">{_esc(loc["method"])}</div>'
        rows.append((f'<a href="#figure-{_esc(les.get("id"))}">{_value(les.get("id"))}</a>', place,
                     _cm3(les.get("volume_cm3")), _num(les.get("max_diameter_mm"), 1),
                     _num(les.get("axial_diameter_mm"), 1), _vector(les.get("centroid_lps_mm")), mean))
    header = ["ID", "Location", "Volume (cm³)", "Max 3D diameter (mm)", "Axial diameter (mm)",
              "Centroid LPS (mm)", "Mean intensity" + (f" ({unit})" if unit else "") + " ± SD"]
    radiomics = "".join(
        f"<details><summary>Lesion {_esc(les.get('id'))}: radiomics features (IBSI)</summary>"
        f"{_value(les.get('radiomics'))}</details>" for les in lesions if les.get("radiomics"))
    return _section("findings", "Findings", summary + _table(header, rows, "lesions") + radiomics + figures)


def _derived(guideline: dict[str, Any]) -> str:
    head = (f"<p><strong>{_value(guideline.get('title'))}</strong> ({_value(guideline.get('name'))}, version "
            f"{_value(guideline.get('version'))})</p>")
    if guideline.get("sources"):
        head += "<p>Sources:</p><ul>" + "".join(f"<li>{_reference(s)}</li>" for s in guideline["sources"]) + "</ul>"
    if guideline.get("disclaimer"):
        head += _note(_esc(guideline["disclaimer"]))
    derived = guideline.get("derived") or []
    if not derived:
        return head + _note("The guideline derived no value from these inputs.")
    rows = [(_value(d.get("name")), f"<strong>{_value(d.get('value'))}</strong>", _value(d.get("rationale")),
             _value(d.get("inputs")), _reference(d.get("reference"))) for d in derived]
    return head + _table(["Value", "Result", "Rationale", "Inputs used", "Reference"], rows)


def _recommendations(guideline: dict[str, Any]) -> str:
    items = []
    for rec in guideline.get("recommendations") or []:
        badge = f' <span class="badge">{_esc(rec["strength"])}</span>' if rec.get("strength") else ""
        lesion_id = rec.get("lesion_id")
        lesion = f' <a href="#figure-{_esc(lesion_id)}">lesion {_esc(lesion_id)}</a>' if lesion_id is not None else ""
        details = _fields([("Rationale", _value(rec.get("rationale"))), ("Inputs used", _value(rec.get("inputs"))),
                           ("Reference", _reference(rec.get("reference")))])
        items.append(f'<li class="rec"><p class="rec-text">{_value(rec.get("text"))}{badge}{lesion}</p>{details}</li>')
    if items:
        return f"<ol>{''.join(items)}</ol>"
    until = " until the missing inputs are given" if guideline.get("missing") else ""
    return _note(f"No recommendation applies to these inputs{until}.")


def _missing(guideline: dict[str, Any]) -> str:
    rows = []
    for miss in guideline.get("missing") or []:
        alternatives = "".join(
            f"<li><strong>{_value(alt.get('value'))}</strong>: {_value(alt.get('outcome'))}</li>"
            if isinstance(alt, dict) else f"<li>{_value(alt)}</li>" for alt in miss.get("alternatives") or [])
        rows.append((f"<code>{_esc(miss.get('field'))}</code>", _value(miss.get("needed_by")),
                     f"<ul>{alternatives}</ul>" if alternatives else _na("the guideline lists no alternative")))
    if not rows:
        return _note("Every input the guideline's rules use was given.")
    return _table(["Field", "Needed by", "What each possible value would change"], rows)


def _guideline_sections(report: dict[str, Any]) -> str:
    guideline = report.get("guideline")
    parts = (("derived", "Derived values", _derived), ("recommendations", "Recommendations", _recommendations),
             ("missing", "Missing inputs", _missing))
    none = _note("No guideline was evaluated for this study, so no stage or recommendation is given.")
    return "".join(_section(anchor, title, build(guideline) if guideline else none) for anchor, title, build in parts)


def _timings_section(report: dict[str, Any]) -> str:
    timings = report.get("timings_s") or {}
    if not timings:
        return _section("timings", "Timings", _note("No stage timings were recorded."))
    rows = [(_esc(stage), _num(seconds, 2, "s")) for stage, seconds in timings.items()]
    total = sum(float(s) for s in timings.values() if _is_number(s) and math.isfinite(float(s)))
    rows.append(("<strong>total</strong>", f"<strong>{_num(total, 2, 's')}</strong>"))
    return _section("timings", "Timings", _table(["Stage", "Wall time"], rows, "timings"))


def _provenance_section(report: dict[str, Any]) -> str:
    fields = [("Report", f"{_value(report.get('kind'))}, schema version {_value(report.get('schema_version'))}"),
              ("Created", _value(report.get("created")))]
    fields += [(_esc(k), _value(v)) for k, v in (report.get("provenance") or {}).items()]
    if report.get("outputs"):
        fields.append(("Outputs", _value(report["outputs"])))
    summary = "<summary>Versions, hashes, input series and parameters</summary>"
    return _section("provenance", "Provenance", f"<details>{summary}{_fields(fields)}</details>")


_CSS = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1b1f24;
 background:#f4f5f7;margin:0}
main{max-width:1200px;margin:0 auto;padding:0 20px 40px}
.banner{background:#8a1c1c;color:#fff;padding:14px 20px;border-bottom:4px solid #5c0f0f}
.banner h1{font-size:22px;margin:0 0 4px;letter-spacing:.02em}
.banner p{margin:0;max-width:1100px}
header.title{padding:18px 0 4px}
header.title h2{margin:0;font-size:24px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:6px 18px 16px;margin:16px 0}
h2{font-size:19px;border-bottom:1px solid #e3e6ea;padding-bottom:6px}
h3{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0;width:auto}
th,td{border:1px solid #d5d9de;padding:4px 8px;text-align:left;vertical-align:top}
thead th{background:#eef1f4}
table.kv th{background:#f6f7f9;font-weight:600;white-space:nowrap}
table.kv table.kv{margin:0}
table.lesions td:nth-child(n+3){text-align:right;white-space:nowrap}
table.timings td:nth-child(2){text-align:right}
.na{color:#6b7280;cursor:help}
.note{color:#4b5563;font-size:14px}
.small{color:#6b7280;font-size:12px}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
ul{margin:4px 0;padding-left:20px}
ol{padding-left:22px}
li.rec{margin:10px 0}
.rec-text{font-weight:600;margin:0 0 4px}
.badge{display:inline-block;background:#e0ecff;color:#1e3a8a;border-radius:10px;padding:0 8px;font-size:12px;
 font-weight:500;margin-left:6px}
figure{margin:14px 0;padding:10px;background:#111418;border-radius:6px;color:#e5e7eb;break-inside:avoid}
figcaption{font-size:13px;margin-top:6px}
.views{display:flex;flex-wrap:wrap;gap:8px}
.view{position:relative;max-width:100%;line-height:0}
.view img{display:block;width:100%;height:auto;image-rendering:auto}
.o{position:absolute;color:#fff;font:700 13px/1 system-ui,sans-serif;text-shadow:0 0 3px #000,0 0 2px #000}
.o.top{top:3px;left:50%;transform:translateX(-50%)}
.o.bottom{bottom:3px;left:50%;transform:translateX(-50%)}
.o.left{left:4px;top:50%;transform:translateY(-50%)}
.o.right{right:4px;top:50%;transform:translateY(-50%)}
.scale{position:absolute;right:6px;bottom:16px;border-bottom:2px solid #fff;color:#fff;font:11px/1 system-ui,sans-serif;
 text-align:center;padding-bottom:2px;text-shadow:0 0 2px #000;white-space:nowrap}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin:0 4px -1px 6px}
details summary{cursor:pointer;font-weight:600;margin:6px 0}
a{color:#1d4ed8}
figure a{color:#93c5fd}
@media print{body{background:#fff}section{border:none;padding:0}details{display:block}}
"""


def render_html(report: dict[str, Any], image: Image | None = None, labels: Image | None = None) -> str:
    """The analysis report as one self-contained HTML5 page (inline CSS and PNG figures, no script).

    Parameters
    ----------
    report : the report dict (``Report.to_dict()``, schema ``report-v1``). Absent optional keys
        and missing values are shown as "—" with a note.
    image : the analysed 3D volume; with it, each lesion gets axial, coronal and sagittal slices
        through its centroid (radiological convention, physical proportions) and a whole-field
        axial overview. None: the page says why it has no figures.
    labels : the lesion label map on ``image``'s grid (label value = lesion id), outlined on the
        slices: the lesion in yellow, other lesions in cyan.

    Returns
    -------
    str, the HTML document. Every text from ``report`` is escaped.
    """
    if not isinstance(report, dict):
        raise TypeError(f"report must be the report dict (Report.to_dict()), got {type(report).__name__}")
    for name, value in (("image", image), ("labels", labels)):
        if value is not None and not isinstance(value, Image):
            raise TypeError(f"{name} must be an mk.Image or None, got {type(value).__name__}")
    if labels is not None:
        if image is None:
            raise ValueError("labels were given without image: pass the analysed image too, or neither")
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_) or labels.is_vector:
            raise TypeError(f"labels must be an integer label map (label value = lesion id), got {labels.dtype}")
        if not labels.same_geometry(image, atol=1e-4):
            raise ValueError(f"labels must lie on image's grid (labels {labels.shape}, image {image.shape}); "
                             "bring them there with mk.resample_to(labels, image, interpolation='label')")
    figures = _figures(report, image, labels)
    disclaimer = report.get("disclaimer") or DISCLAIMER
    model = report.get("model") or {}
    study = report.get("study") or {}
    title = f"medkern report: {study.get('modality') or 'image'} study, {model.get('name') or 'model'}"
    body = (f'<div class="banner" role="note"><h1>{_esc(BANNER)}</h1><p>{_esc(disclaimer)}</p></div><main>'
            f'<header class="title"><h2>{_esc(title)}</h2>'
            f'<p class="note">Created {_value(report.get("created"))}. '
            f'A dash ({_na("a value the report does not hold")}) marks a value the report does not hold; its '
            f'note, shown on hover, says why.</p></header>'
            + _study_section(report) + _findings_section(report, figures) + _guideline_sections(report)
            + _timings_section(report) + _provenance_section(report) + "</main>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n")
