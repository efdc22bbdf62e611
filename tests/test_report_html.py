"""report.html: a well-formed self-contained page, correctly oriented figures, escaped text.

The ground truth is a synthetic CT on an anisotropic grid whose array axes point in non-trivial
directions (a flipped axis, and a permuted and flipped set), with spherical lesions and bright
markers placed in world (LPS) coordinates: where a marker must appear on each view follows from
the radiological convention alone, independently of the array layout.
"""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest

import medkern as mk
from medkern.analysis.html import CROP_DIAMETERS, CROP_MIN_MM, LESION_RGB, OTHER_RGB, encode_png, render_html

PIL_Image = pytest.importorskip("PIL.Image", reason="Pillow (a scikit-image dependency) decodes the PNGs")

SHAPE = (24, 64, 80)
SPACING = (3.0, 0.8, 0.6)
CENTRE_INDEX = (12, 32, 40)
LESION_RADII_MM = {1: 8.0, 2: 5.0}
LESION_OFFSETS_MM = {1: (0.0, 0.0, 0.0), 2: (-16.0, 0.0, 0.0)}  # lesion 2 on the patient's right
TISSUE_HU, LESION_HU, MARKER_HU = 0.0, 60.0, 1000.0
DIRECTIONS = {
    # array axes toward S, P and R (x flipped against the usual layout)
    "x flipped": np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
    # array axes toward A, I and L: slices stacked along y, rows running feet-ward
    "permuted": np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
}
HOSTILE = "<script>alert('x')</script>"


def _grey(value_hu: float) -> int:
    """The expected 8-bit grey of a HU value in the CT soft-tissue window (centre 40, width 400)."""
    return int(np.clip((value_hu + 160.0) / 400.0, 0, 1) * 255 + 0.5)


def _study(direction: np.ndarray, marker_mm=None, modality: str = "CT"):
    """(report, image, labels, lesion-1 centre, marker centre) with lesions placed in world mm."""
    geometry = mk.Image(np.zeros(SHAPE, np.int16), SPACING, origin=(-20.0, 35.0, 110.0), direction=direction)
    world = geometry.index_to_world(np.moveaxis(np.indices(SHAPE), 0, -1).astype(np.float64))
    centre = geometry.index_to_world(np.array(CENTRE_INDEX, np.float64))
    array = np.full(SHAPE, TISSUE_HU, np.int16)
    labels = np.zeros(SHAPE, np.uint16)
    lesions = []
    for lesion_id, radius in LESION_RADII_MM.items():
        at = centre + np.array(LESION_OFFSETS_MM[lesion_id])
        inside = np.linalg.norm(world - at, axis=-1) <= radius
        labels[inside] = lesion_id
        array[inside] = LESION_HU
        lesions.append(_lesion_entry(lesion_id, geometry, inside, radius))
    marker = None
    if marker_mm is not None:
        k, j, i = np.rint(geometry.world_to_index(centre + np.asarray(marker_mm))).astype(int)
        array[k - 1:k + 2, j - 1:j + 2, i - 1:i + 2] = MARKER_HU
        marker = geometry.index_to_world(np.array([k, j, i], np.float64))
    image = geometry.with_array(array)
    report = _report(lesions, modality)
    return report, image, geometry.with_array(labels), centre, marker


def _lesion_entry(lesion_id: int, geometry: mk.Image, inside: np.ndarray, radius: float) -> dict:
    index = np.argwhere(inside)
    volume = float(inside.sum() * np.prod(SPACING))
    return {"id": lesion_id, "volume_mm3": volume, "volume_cm3": volume / 1000,
            "max_diameter_mm": 2 * radius, "axial_diameter_mm": 2 * radius,
            "centroid_lps_mm": [float(v) for v in geometry.index_to_world(index.mean(axis=0))],
            "centroid_index": [float(v) for v in index.mean(axis=0)],
            "bbox": [int(v) for v in np.concatenate([index.min(axis=0), index.max(axis=0) + 1])],
            "intensity": {"mean": LESION_HU, "std": 0.0, "min": LESION_HU, "max": LESION_HU},
            "location": {"description": f"lesion {lesion_id} place", "side": "right", "region": None,
                         "method": "LPS position"},
            "radiomics": {"morph_volume": volume}}


def _report(lesions: list[dict], modality: str) -> dict:
    reference = {"title": "AJCC Cancer Staging Manual, 8th edition", "year": 2017, "section": "Chapter 41, Table 41.1"}
    return {
        "schema_version": 1, "kind": "medkern.report", "created": "2026-12-05T11:00:00Z",
        "disclaimer": mk.analysis.DISCLAIMER,
        "study": {"source": "synthetic study", "modality": modality,
                  "series": [{"series_uid": "1.2.3", "modality": modality, "description": "axial soft tissue",
                              "shape": list(SHAPE), "spacing": list(SPACING), "picked": True,
                              "reason": "the model reads CT"}],
                  "picked_reason": "the only CT series", "shape": list(SHAPE), "spacing": list(SPACING)},
        "patient": {"age": 61, "sex": "F", "histology": "leiomyosarcoma", "grade": 2},
        "model": {"name": "sarcoma-ct", "version": "1.1", "sha256": "a" * 64, "modalities": [modality],
                  "postprocessing": [{"op": "keep_top", "n": 2}]},
        "findings": {"lesion_count": len(lesions),
                     "total_volume_cm3": sum(les["volume_cm3"] for les in lesions),
                     "max_diameter_mm": max((les["max_diameter_mm"] for les in lesions), default=None),
                     "lesions": lesions},
        "guideline": {
            "name": "sts-extremity", "version": "1.0", "title": "Soft-tissue sarcoma of the extremity",
            "sources": [reference], "disclaimer": "Restates the cited sources.",
            "derived": [{"id": "t_category", "name": "AJCC T category", "value": "T2",
                         "rationale": "largest dimension above 5 cm and at most 10 cm",
                         "inputs": {"findings.max_diameter_mm": 16.0}, "reference": reference}],
            "recommendations": [{"id": "refer", "text": "Refer to a sarcoma multidisciplinary team",
                                 "rationale": "suspected sarcoma", "strength": "strong",
                                 "inputs": {"patient.histology": "leiomyosarcoma"}, "reference": reference,
                                 "lesion_id": 1}],
            "missing": [{"field": "patient.n_status", "needed_by": ["stage"],
                         "alternatives": [{"value": "N0", "outcome": ["stage II"]},
                                          {"value": "N1", "outcome": ["stage IV"]}]}]},
        "timings_s": {"read": 0.4, "preprocess+predict": 3.1},
        "provenance": {"medkern_version": "0.1", "model_sha256": "a" * 64, "guideline": None,
                       "series_uids": ["1.2.3"], "parameters": {"lesion_connectivity": 26}},
        "outputs": {"report_json": "report.json"},
    }


class _Document(HTMLParser):
    """Collects tags, attributes and visible text, and checks that every element is closed in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "wbr", "source"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()
        self.errors += [f"<{t}> never closed" for t in self.stack]

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if not self.stack or self.stack[-1] != "style":
            self.text.append(data)

    @property
    def visible(self) -> str:
        return " ".join(self.text).replace("\xa0", " ")

    def images(self) -> dict[tuple[str | None, str], np.ndarray]:
        """(lesion id, view) -> decoded RGB, checking each PNG has the size its tag states."""
        found = {}
        for tag, attrs in self.tags:
            if tag != "img":
                continue
            prefix = "data:image/png;base64,"
            assert attrs["src"].startswith(prefix)
            png = PIL_Image.open(io.BytesIO(base64.b64decode(attrs["src"][len(prefix):], validate=True)))
            assert png.format == "PNG" and png.mode == "RGB"
            assert png.size == (int(attrs["width"]), int(attrs["height"]))
            found[(attrs.get("data-lesion"), attrs["data-view"])] = np.asarray(png)
        return found


def _bright(rgb: np.ndarray) -> np.ndarray:
    """Mean (row, column) of the saturated grey pixels: the marker (outlines are coloured)."""
    grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
    rows, cols = np.nonzero(grey & (rgb[..., 0] == 255))
    assert rows.size, "the marker is not on this view"
    return np.array([rows.mean(), cols.mean()])


@pytest.fixture(scope="module", params=list(DIRECTIONS))
def direction(request) -> np.ndarray:
    return DIRECTIONS[request.param]


@pytest.fixture(scope="module")
def rendered(direction):
    report, image, labels, _, _ = _study(direction)
    page = render_html(report, image, labels)
    return _Document(page), page, report


# ---------------------------------------------------------------------------------------- structure
def test_document_is_well_formed_and_self_contained(rendered):
    doc, _, _ = rendered
    assert doc.errors == []
    names = [t for t, _ in doc.tags]
    assert names[:1] == ["html"] and "script" not in names and "link" not in names and "iframe" not in names
    for _tag, attrs in doc.tags:
        assert not attrs.get("src") or attrs["src"].startswith("data:image/png;base64,")
        href = attrs.get("href")
        assert href is None or href.startswith(("#", "https://", "http://")), href
        assert "url(" not in (attrs.get("style") or "")
    # two lesions: axial, coronal, sagittal and the whole-field axial view each
    assert sorted(doc.images()) == sorted((str(i), v) for i in (1, 2)
                                          for v in ("axial", "coronal", "sagittal", "axial-fov"))


def test_sections_in_order_with_banner_first(rendered):
    doc, _, report = rendered
    ids = [a["id"] for t, a in doc.tags if t == "section"]
    assert ids == ["study", "findings", "derived", "recommendations", "missing", "timings", "provenance"]
    text = doc.visible
    assert text.index("Research decision support — not a medical device") < text.index("Study and model")
    assert report["disclaimer"] in text
    provenance = next(i for i, (t, a) in enumerate(doc.tags) if a.get("id") == "provenance")
    assert doc.tags[provenance + 2][0] == "details"  # h2, then the collapsible body


def test_tables_show_values_with_units_and_references(rendered):
    doc, _, report = rendered
    text = doc.visible
    lesion = report["findings"]["lesions"][0]
    centroid = "(" + ", ".join(f"{v:,.1f}" for v in lesion["centroid_lps_mm"]) + ")"
    assert centroid in text
    assert f"{lesion['volume_cm3']:.2f}" in text and "16.0" in text
    assert f"{report['findings']['lesions'][1]['volume_cm3']:.3f}" in text  # below 1 cm³: thousandths
    assert "60.0 HU ± 0.0" in text
    assert "AJCC Cancer Staging Manual, 8th edition, 2017, Chapter 41, Table 41.1" in text
    assert "Refer to a sarcoma multidisciplinary team" in text and "strong" in text
    assert "N1" in text and "stage IV" in text and "patient.n_status" in text
    assert "3.50 s" in text  # total of the stage timings


# ------------------------------------------------------------------------------------------ figures
MARKERS = {
    # offset from lesion 1 (LPS mm) -> views it lies on, with the expected position of the marker
    # as (rows down, columns right) in mm of the view, from the radiological convention
    "left": ((18.0, 0.0, 0.0), {"axial": (1, 0), "coronal": (2, 0)}),
    "anterior": ((0.0, -18.0, 0.0), {"axial": (1, 1), "sagittal": (2, 1)}),
    "superior": ((0.0, 0.0, 18.0), {"coronal": (2, 0), "sagittal": (2, 1)}),
}


@pytest.mark.parametrize("marker", list(MARKERS))
def test_orientation_follows_the_radiological_convention(direction, marker):
    offset, views = MARKERS[marker]
    report, image, labels, centre, at = _study(direction, offset)
    images = _Document(render_html(report, image, labels)).images()
    d = at - centre
    # view axis -> signed world displacement along it: axial rows run anterior->posterior (+y),
    # columns right->left (+x); coronal/sagittal rows run superior->inferior (-z); sagittal columns
    # run anterior->posterior (+y)
    along = {"axial": (d[1], d[0]), "coronal": (-d[2], d[0]), "sagittal": (-d[2], d[1])}
    side = CROP_DIAMETERS * 2 * LESION_RADII_MM[1]
    assert side > CROP_MIN_MM
    for view in views:
        rgb = images[("1", view)]
        height, width = rgb.shape[:2]
        assert height == width  # square field
        expected = (np.array([height, width]) - 1) / 2 + np.array(along[view]) * width / side
        np.testing.assert_allclose(_bright(rgb), expected, atol=2.0)  # px (0.25 mm each)
    if "axial" in views:
        rgb = images[("1", "axial-fov")]
        found = _bright(rgb)
        if marker == "left":
            assert found[1] > rgb.shape[1] / 2 + 10  # the patient's left on the viewer's right
        else:
            assert found[0] < rgb.shape[0] / 2 - 10  # anterior up


def test_letters_name_the_patient_directions(rendered):
    _, page, _ = rendered
    # top, bottom, left, right, whatever the array layout
    for view, expected in {"axial": "APRL", "coronal": "SIRL", "sagittal": "SIAP", "axial-fov": "APRL"}.items():
        block = re.search(rf'data-view="{view}" data-lesion="1">(.*?)</div>', page).group(1)
        assert "".join(re.findall(r'class="o (?:top|bottom|left|right)">(\w)<', block)) == expected


def test_physical_proportions_on_anisotropic_voxels(direction):
    report, image, labels, _, _ = _study(direction)
    images = _Document(render_html(report, image, labels)).images()
    # whole field: the image's edge-to-edge extent along x (columns) and y (rows)
    world_axis = np.argmax(np.abs(image.direction), axis=0)
    extent = {w: SHAPE[a] * SPACING[a] for a, w in enumerate(world_axis)}
    height, width = images[("1", "axial-fov")].shape[:2]
    assert abs(width / height - extent[0] / extent[1]) < 2 / min(height, width)
    # the spherical lesion stays round in every plane despite 3 mm against 0.6-0.8 mm voxels
    side = CROP_DIAMETERS * 2 * LESION_RADII_MM[1]
    for view in ("axial", "coronal", "sagittal"):
        rgb = images[("1", view)]
        rows, cols = np.nonzero(np.all(rgb == LESION_RGB, axis=-1))
        mm = rgb.shape[1] / side
        h, w = (np.ptp(rows) + 1) / mm, (np.ptp(cols) + 1) / mm
        # voxelised diameter: within one 3 mm slice of 16 mm
        assert abs(h - 16.0) <= 3.0 and abs(w - 16.0) <= 3.0, (view, h, w)


def test_outline_not_filled_and_ct_window(rendered):
    doc, _, _ = rendered
    rgb = doc.images()[("1", "axial")]
    middle = (np.array(rgb.shape[:2]) - 1) // 2
    assert np.all(rgb[middle[0], middle[1]] == _grey(LESION_HU))  # tissue inside the contour shows
    anterior = middle[0] - int(12.0 * rgb.shape[0] / (CROP_DIAMETERS * 2 * LESION_RADII_MM[1]))
    assert np.all(rgb[anterior, middle[1]] == _grey(TISSUE_HU))  # 12 mm anterior: tissue
    assert np.all(rgb == LESION_RGB, axis=-1).any()
    assert np.all(rgb == OTHER_RGB, axis=-1).any()  # lesion 2 lies 16 mm away, in the same plane
    # the lesion-2 outline sits on the patient's right, the viewer's left
    assert np.nonzero(np.all(rgb == OTHER_RGB, axis=-1))[1].mean() < rgb.shape[1] / 2


def test_mr_window_is_the_1_99_percentile_of_non_zero_voxels():
    report, image, labels, _, _ = _study(DIRECTIONS["x flipped"], modality="MR")
    rng = np.random.default_rng(3)
    array = np.asarray(image.array, np.float32) + 100.0
    array += rng.uniform(0, 400, size=array.shape).astype(np.float32) * (labels.array == 0)
    array[:2] = 0  # background outside the body does not widen the window
    image = image.with_array(array)
    rgb = _Document(render_html(report, image, labels)).images()[("1", "axial")]
    lo, hi = np.percentile(array[array != 0], [1, 99])
    middle = (np.array(rgb.shape[:2]) - 1) // 2
    expected = np.clip((LESION_HU + 100.0 - lo) / (hi - lo), 0, 1) * 255
    assert abs(int(rgb[middle[0], middle[1], 0]) - expected) <= 1


# -------------------------------------------------------------------------- text and missing data
def test_hostile_text_is_escaped():
    report, image, labels, _, _ = _study(DIRECTIONS["x flipped"])
    g = report["guideline"]
    g["title"] = HOSTILE
    g["recommendations"][0]["text"] = HOSTILE
    g["recommendations"][0]["inputs"] = {HOSTILE: HOSTILE}
    g["recommendations"][0]["reference"] = {"title": HOSTILE, "year": 2017, "url": "javascript:alert(1)"}
    report["patient"]["histology"] = '"><img src=x onerror=alert(1)>'
    report["findings"]["lesions"][0]["location"]["description"] = HOSTILE
    report["study"]["series"][0]["description"] = HOSTILE
    html = render_html(report, image, labels)
    doc = _Document(html)
    assert doc.errors == []
    assert all(tag != "script" for tag, _ in doc.tags)
    assert all(a.get("src", "data:").startswith("data:") for _, a in doc.tags)
    assert all(not (a.get("href") or "").startswith("javascript") for _, a in doc.tags)
    assert doc.visible.count(HOSTILE) >= 6
    assert '"><img src=x onerror=alert(1)>' in doc.visible
    assert "<script>" not in html


def test_missing_values_show_a_noted_dash():
    report, image, labels, _, _ = _study(DIRECTIONS["x flipped"])
    lesion = report["findings"]["lesions"][1]
    lesion["intensity"] = {"mean": None, "std": 1.5, "min": None, "max": None}
    lesion["axial_diameter_mm"] = float("nan")
    report["patient"]["grade"] = None
    report["model"]["sha256"] = None
    report["study"]["modality"] = None
    doc = _Document(render_html(report, image, labels))
    text = doc.visible
    assert not re.search(r"\b(None|nan|NaN|null|inf)\b", text)
    row = re.search(r"lesion 2 place.*", text, re.S).group(0)[:200]
    assert row.count("—") >= 2 and "± 1.5" not in row  # axial diameter and mean intensity
    dashes = [a.get("title") for t, a in doc.tags if t == "span" and a.get("class") == "na"]
    assert "undefined for this lesion" in dashes and "the model was not read from a file" in dashes
    assert all(dashes)  # every dash carries its note


def test_identifiers_only_when_present():
    report, image, labels, _, _ = _study(DIRECTIONS["x flipped"])
    assert "PAT-0042" not in render_html(report)
    report["patient"]["patient_id"] = "PAT-0042"
    report["study"]["identifiers"] = {"PatientName": "Doe^Jane"}
    text = _Document(render_html(report)).visible
    assert "PAT-0042" in text and "Doe^Jane" in text


# ----------------------------------------------------------------------------------- degenerate cases
def test_without_image_no_figures_and_says_why():
    report, *_ = _study(DIRECTIONS["x flipped"])
    doc = _Document(render_html(report))
    assert doc.errors == [] and not [t for t, _ in doc.tags if t == "img"]
    assert "No figures: this page was rendered without the image" in doc.visible


def test_without_guideline_and_without_lesions():
    report, image, _, _, _ = _study(DIRECTIONS["permuted"])
    report["guideline"] = None
    report["patient"] = None
    report["findings"] = {"lesion_count": 0, "total_volume_cm3": 0.0, "max_diameter_mm": None, "lesions": []}
    labels = image.with_array(np.zeros(SHAPE, np.uint16))
    doc = _Document(render_html(report, image, labels))
    assert doc.errors == []
    text = doc.visible
    assert "The model found no lesion." in text
    assert "No guideline was evaluated for this study" in text
    assert "No patient context was given" in text
    assert list(doc.images()) == [(None, "axial-fov")]  # the middle slice, to show the study was read


def test_non_finite_voxels_show_as_no_data():
    report, image, labels, _, _ = _study(DIRECTIONS["x flipped"], modality="MR")
    array = np.asarray(image.array, np.float32) + 100.0
    array[:, :, :40] = np.nan  # the patient's left half of the grid (axis i runs toward R)
    array[0, 0, 45] = np.inf
    rgb = _Document(render_html(report, image.with_array(array), labels)).images()[("1", "axial-fov")]
    width = rgb.shape[1]
    no_data = np.all(rgb == (28, 32, 44), axis=-1)
    # the viewer's right half, but for the lesion outline drawn over it
    assert no_data[:, width // 2 + 2:].mean() > 0.95 and not no_data[:, : width // 2 - 2].any()


def test_two_dimensional_image_is_explained():
    report, *_ = _study(DIRECTIONS["x flipped"])
    image = mk.Image(np.zeros((8, 9), np.float32))
    text = _Document(render_html(report, image)).visible
    assert "drawn for 3D scalar volumes and this study is a 2D image" in text


def test_figures_without_labels_say_so():
    report, image, _, _, _ = _study(DIRECTIONS["x flipped"])
    doc = _Document(render_html(report, image))
    assert "no label map was given, so the lesion is not outlined" in doc.visible
    assert not np.all(doc.images()[("1", "axial")] == LESION_RGB, axis=-1).any()


def test_outline_notes_for_a_lesion_missing_from_its_slices():
    report, image, labels, _, _ = _study(DIRECTIONS["x flipped"])
    # lesion 1 cut into two caps above and below its centroid: the axial plane through the
    # centroid misses it, the coronal and sagittal planes cross both caps
    split = np.array(labels.array)
    world = image.index_to_world(np.moveaxis(np.indices(SHAPE), 0, -1).astype(np.float64))
    centre_z = report["findings"]["lesions"][0]["centroid_lps_mm"][2]
    split[(split == 1) & (np.abs(world[..., 2] - centre_z) < 4.0)] = 0
    report["findings"]["lesions"][1]["id"] = 7  # no voxel carries this id
    text = _Document(render_html(report, image, labels.with_array(split))).visible
    assert "the lesion does not cross its centroid in the axial slice" in text
    assert "the label map has no voxel of lesion 7, so it is not outlined" in text


def test_oblique_acquisition_is_noted_and_views_stay_anatomical():
    angle = np.radians(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    report, image, labels, _, _ = _study(rotation @ DIRECTIONS["x flipped"])
    page = render_html(report, image, labels)
    assert "The acquisition is oblique: the views follow the nearest anatomical axes (up to 20° off)." in \
        _Document(page).visible
    block = re.search(r'data-view="axial" data-lesion="1">(.*?)</div>', page).group(1)
    assert "".join(re.findall(r'class="o (?:top|bottom|left|right)">(\w)<', block)) == "APRL"


def test_lesion_without_a_usable_centroid_is_explained():
    report, image, labels, _, _ = _study(DIRECTIONS["x flipped"])
    report["findings"]["lesions"][0]["centroid_lps_mm"] = None
    report["findings"]["lesions"][1]["centroid_lps_mm"] = [0.0, 0.0, 5000.0]
    doc = _Document(render_html(report, image, labels))
    assert doc.errors == [] and not doc.images()
    assert "Lesion 1: no figure, the report gives no centroid for it." in doc.visible
    assert "Lesion 2: no figure, its centroid lies outside the image." in doc.visible


@pytest.mark.parametrize("kwargs, error, words", [
    ({"report": [1]}, TypeError, "report must be the report dict"),
    ({"image": np.zeros(SHAPE)}, TypeError, "image must be an mk.Image"),
    ({"labels": "labels.nii"}, TypeError, "labels must be an mk.Image"),
    ({"image": None}, ValueError, "labels were given without image"),
    ({"labels": mk.Image(np.zeros(SHAPE, np.float32))}, TypeError, "integer label map"),
    ({"labels": mk.Image(np.zeros((24, 64, 81), np.uint8))}, ValueError, "mk.resample_to"),
    ({"labels": mk.Image(np.zeros(SHAPE, np.uint8), spacing=(1, 1, 1))}, ValueError, "labels must lie on image's grid"),
])
def test_bad_input(kwargs, error, words):
    report, image, labels, _, _ = _study(DIRECTIONS["x flipped"])
    args = {"report": report, "image": image, "labels": labels, **kwargs}
    with pytest.raises(error, match=re.escape(words)):
        render_html(**args)


# ------------------------------------------------------------------------------------------ PNG
def test_png_encoder_round_trips_through_pillow():
    rng = np.random.default_rng(7)
    for shape in [(1, 1, 3), (5, 17, 3), (64, 33, 3)]:
        rgb = rng.integers(0, 256, size=shape, dtype=np.uint8)
        decoded = np.asarray(PIL_Image.open(io.BytesIO(encode_png(rgb))))
        np.testing.assert_array_equal(decoded, rgb)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                                 np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 4), np.uint8)])
def test_png_encoder_rejects_non_rgb8(bad):
    with pytest.raises(ValueError, match=r"rgb must be a non-empty \(height, width, 3\) uint8 array"):
        encode_png(bad)


def test_report_write_renders_this_page(tmp_path):
    report, image, labels, _, _ = _study(DIRECTIONS["permuted"])
    written = mk.analysis.Report(report, image, labels).write(tmp_path / "out")
    page = written["report_html"].read_text(encoding="utf-8")
    doc = _Document(page)
    assert doc.errors == [] and len(doc.images()) == 8
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["lesions.nii.gz", "report.html", "report.json"]


# ------------------------------------------------------------------------- docs/render_report.py
def _render_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "render_report.py"
    spec = importlib.util.spec_from_file_location("render_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_script_without_chromium_says_how_to_install(tmp_path, monkeypatch, capsys):
    script = _render_script()
    page = tmp_path / "report.html"
    page.write_text(render_html(_study(DIRECTIONS["x flipped"])[0]), encoding="utf-8")
    monkeypatch.setattr(script.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as exit_info:
        script.main([str(page)])
    assert "Chromium was not found" in str(exit_info.value) and "apt-get install -y chromium" in str(exit_info.value)
    assert not (tmp_path / "report.png").exists()


def test_render_script_screenshots_the_whole_page(tmp_path):
    script = _render_script()
    if not any(script.shutil.which(name) for name in script.BROWSERS):
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    report, image, labels, _, _ = _study(DIRECTIONS["x flipped"])
    page = tmp_path / "report.html"
    page.write_text(render_html(report, image, labels), encoding="utf-8")
    assert script.main([str(page), "--width", "1000"]) == 0
    shot = np.asarray(PIL_Image.open(tmp_path / "report.png").convert("RGB"))
    assert shot.shape[1] == 1000 and shot.shape[0] > 2000  # every section, not just the first screen
    assert np.all(shot[5, 5] == (0x8A, 0x1C, 0x1C))  # the disclaimer banner on top
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.png"]
