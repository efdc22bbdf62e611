"""NRRD (.nrrd/.nhdr/.seg.nrrd) and MetaImage (.mha/.mhd) reading and writing.

The reference is SimpleITK (ITK's NrrdImageIO and MetaImageIO) and pynrrd: files medkern writes
must read back in SimpleITK with identical voxels and geometry, and files SimpleITK (or pynrrd, in
3D Slicer's layout) writes must read in medkern the same way. Geometry is compared in ITK's own
(x, y, z) axis order, straight from ``GetSpacing``/``GetOrigin``/``GetDirection``, not through
``Image.from_sitk``. Tolerance 1e-6 mm / cosine as asked of every round trip; the writers print 17
significant digits or the shortest exact decimal, so the observed differences are ~1e-15 or zero.
Voxels must be bit-identical.
"""

from __future__ import annotations

import gzip
import os
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

import medkern as mk
from medkern.io.metaimage import read_metaimage
from medkern.io.nrrd import SegmentInfo, read_nrrd

sitk = pytest.importorskip("SimpleITK")
nrrd = pytest.importorskip("nrrd")

GEOMETRY_TOL = 1e-6
DTYPES = ("uint8", "int16", "uint16", "int32", "float32", "float64")
SHAPE = (5, 6, 7)


def _rotation(axis, angle) -> np.ndarray:
    """Rodrigues' rotation matrix about ``axis`` by ``angle`` radians."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


# medkern geometry: spacing in array order (k, j, i), direction columns = array axes.
GEOMETRIES = {
    "oblique": ((2.5, 0.8, 0.6), (-12.5, 30.25, 101.125), _rotation((1, 2, 3), 0.4)[:, ::-1]),
    "flipped": ((1.25, 0.9, 0.9), (7.0, -3.5, 0.25), (_rotation((0, 0, 1), 0.3) @ np.diag([1.0, -1.0, 1.0]))[:, ::-1]),
    "anisotropic": ((5.0, 0.35, 1.7), (0.0, 0.0, -40.0), np.eye(3)[:, ::-1]),
}
# (suffix, write keywords, SimpleITK useCompression)
FORMATS = [
    (".nrrd", {"encoding": "raw"}, False),
    (".nrrd", {"encoding": "gzip"}, True),
    (".nhdr", {"encoding": "raw"}, False),
    (".nhdr", {"encoding": "gzip"}, True),
    (".mha", {"compress": False}, False),
    (".mha", {"compress": True}, True),
    (".mhd", {"compress": False}, False),
    (".mhd", {"compress": True}, True),
]
FORMAT_IDS = [f"{s}-{'compressed' if c else 'raw'}" for s, _, c in FORMATS]


def _voxels(dtype: str, shape=SHAPE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        a = rng.normal(0, 1e3, size=shape).astype(dt)
        a.flat[:3] = [np.finfo(dt).max, np.finfo(dt).tiny, -0.0]
        return a
    info = np.iinfo(dt)
    a = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)
    a.flat[:2] = [info.min, info.max]
    return a


def _image(dtype: str, geometry: str) -> mk.Image:
    spacing, origin, direction = GEOMETRIES[geometry]
    return mk.Image(_voxels(dtype), spacing=spacing, origin=origin, direction=direction)


def _geometry_errors(img: mk.Image, s) -> tuple[float, float, float]:
    """Max |difference| of spacing, origin, direction between a medkern Image and a SimpleITK image,
    comparing in ITK's order: ITK spacing = reversed array spacing, ITK direction column c = medkern
    column n-1-c."""
    n = img.ndim
    d_itk = np.asarray(s.GetDirection()).reshape(n, n)
    return (float(np.max(np.abs(np.asarray(s.GetSpacing()) - np.asarray(img.spacing)[::-1]))),
            float(np.max(np.abs(np.asarray(s.GetOrigin()) - img.origin))),
            float(np.max(np.abs(d_itk - img.direction[:, ::-1]))))


def _sitk_image(array: np.ndarray, spacing, origin, direction, vector: bool = False):
    """A SimpleITK image built in ITK terms from medkern-order geometry (independently of to_sitk)."""
    s = sitk.GetImageFromArray(array, isVector=vector)
    s.SetSpacing([float(v) for v in spacing[::-1]])
    s.SetOrigin([float(v) for v in origin])
    s.SetDirection([float(v) for v in np.asarray(direction)[:, ::-1].ravel()])
    return s


def _assert_same(img: mk.Image, s, dtype) -> None:
    ref = sitk.GetArrayFromImage(s)
    assert img.array.dtype == np.dtype(dtype)
    assert img.array.shape == ref.shape
    assert np.array_equal(img.array, ref), "voxels differ"
    assert max(_geometry_errors(img, s)) <= GEOMETRY_TOL


# ------------------------------------------------------------------------ round trips with SimpleITK
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix,kwargs,compressed", FORMATS, ids=FORMAT_IDS)
def test_medkern_writes_simpleitk_reads(tmp_path, suffix, kwargs, compressed, dtype, geometry):
    img = _image(dtype, geometry)
    path = tmp_path / f"img{suffix}"
    mk.write(img, path, **kwargs)
    _assert_same(img, sitk.ReadImage(str(path)), dtype)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix,kwargs,compressed", FORMATS, ids=FORMAT_IDS)
def test_simpleitk_writes_medkern_reads(tmp_path, suffix, kwargs, compressed, dtype, geometry):
    spacing, origin, direction = GEOMETRIES[geometry]
    s = _sitk_image(_voxels(dtype, seed=1), spacing, origin, direction)
    path = tmp_path / f"img{suffix}"
    sitk.WriteImage(s, str(path), compressed)
    _assert_same(mk.read(path), s, dtype)


@pytest.mark.parametrize("suffix,kwargs,compressed", FORMATS, ids=FORMAT_IDS)
def test_2d_and_vector_images_both_ways(tmp_path, suffix, kwargs, compressed):
    th = 0.7
    d2 = np.array([[np.cos(th), np.sin(th)], [np.sin(th), -np.cos(th)]])  # a reflection: det -1
    cases = [
        (mk.Image(_voxels("int16", (9, 4)), spacing=(0.5, 2.0), origin=(3.0, -4.5), direction=d2), "int16"),
        (mk.Image(_voxels("float32", SHAPE + (3,)), *GEOMETRIES["oblique"], vector=True), "float32"),
        (mk.Image(_voxels("uint8", (6, 5, 2)), spacing=(1.5, 0.5), origin=(1.0, 2.0), direction=d2, vector=True),
         "uint8"),
    ]
    for n, (img, dtype) in enumerate(cases):
        path = tmp_path / f"w{n}{suffix}"
        mk.write(img, path, **kwargs)
        _assert_same(img, sitk.ReadImage(str(path)), dtype)
        s = _sitk_image(np.asarray(img.array)[::-1].copy(), img.spacing, img.origin, img.direction, img.is_vector)
        back = tmp_path / f"s{n}{suffix}"
        sitk.WriteImage(s, str(back), compressed)
        got = mk.read(back)
        assert got.is_vector == img.is_vector and got.ndim == img.ndim
        _assert_same(got, s, dtype)


def test_geometry_round_trip_precision(tmp_path):
    """MetaImage stores spacing, origin and direction as shortest-exact decimals: bit-exact. NRRD
    stores direction x spacing (17 digits) and the spacing is its length again: within ~1 ulp."""
    img = _image("float32", "oblique")
    for suffix in (".nrrd", ".nhdr", ".mha", ".mhd"):
        mk.write(img, tmp_path / f"x{suffix}")
        back = mk.read(tmp_path / f"x{suffix}")
        assert np.array_equal(back.array, img.array)
        assert np.array_equal(back.origin, img.origin)
        if suffix in (".mha", ".mhd"):
            assert back.spacing == img.spacing and np.array_equal(back.direction, img.direction)
        else:
            assert np.allclose(back.spacing, img.spacing, rtol=1e-15, atol=0)
            assert np.max(np.abs(back.direction - img.direction)) <= 1e-15


# ------------------------------------------------------------------------------------ NRRD specifics
def _pynrrd_write(path: Path, array_c: np.ndarray, header: dict) -> None:
    nrrd.write(str(path), array_c, header, index_order="C")


@pytest.mark.parametrize("space,flip", [("right-anterior-superior", (-1, -1, 1)), ("RAS", (-1, -1, 1)),
                                        ("left-anterior-superior", (1, -1, 1)), ("scanner-xyz", (1, 1, 1))])
def test_named_spaces_read_as_lps(tmp_path, space, flip):
    rot = _rotation((2, -1, 1), 0.5)
    steps = (rot * np.array([0.7, 0.9, 3.0])).T  # rows: i, j, k steps in the file's space
    origin = np.array([11.0, -22.0, 33.0])
    data = _voxels("int16", SHAPE)
    path = tmp_path / "space.nrrd"
    _pynrrd_write(path, data, {"space": space, "space directions": steps, "space origin": origin,
                               "encoding": "gzip"})
    img = mk.read(path)
    s = sitk.ReadImage(str(path))
    _assert_same(img, s, "int16")
    # and by hand: LPS = flip * file coordinates; array axis a is file axis 2 - a
    f = np.asarray(flip, dtype=np.float64)
    assert np.allclose(img.origin, f * origin, atol=1e-12)
    assert np.allclose(img.direction * np.asarray(img.spacing), (f[:, None] * steps.T)[:, ::-1], atol=1e-12)


def test_nrrd_bzip2_ascii_hex_big_endian_and_skips(tmp_path):
    data = _voxels("int32", SHAPE)
    base = {"space": "left-posterior-superior", "space directions": np.diag([0.5, 0.6, 2.0]),
            "space origin": np.array([1.0, 2.0, 3.0])}
    for enc in ("bzip2", "ascii"):
        _pynrrd_write(tmp_path / f"{enc}.nrrd", data, {**base, "encoding": enc})
        img = mk.read(tmp_path / f"{enc}.nrrd")
        assert np.array_equal(img.array, data) and img.spacing == (2.0, 0.6, 0.5)
    _pynrrd_write(tmp_path / "big.nrrd", data.astype(">i4"), {**base, "encoding": "raw"})
    assert b"endian: big" in (tmp_path / "big.nrrd").read_bytes()
    big = mk.read(tmp_path / "big.nrrd")
    assert big.dtype == np.int32 and big.dtype.isnative and np.array_equal(big.array, data)

    header = ("NRRD0004\ntype: int\ndimension: 3\nsizes: 7 6 5\nendian: little\nspace: left-posterior-superior\n"
              "space directions: (0.5,0,0) (0,0.6,0) (0,0,2)\nspace origin: (1,2,3)\n")
    (tmp_path / "junk.dat").write_bytes(b"two lines\nof preamble\nXYZ" + data.astype("<i4").tobytes())
    (tmp_path / "skip.nhdr").write_text(header + "encoding: raw\ndata file: junk.dat\nline skip: 2\nbyte skip: 3\n")
    (tmp_path / "end.nhdr").write_text(header + "encoding: raw\ndata file: junk.dat\nbyte skip: -1\n")
    (tmp_path / "hex.nrrd").write_text(header + "encoding: hex\n\n" + data.astype("<i4").tobytes().hex() + "\n")
    (tmp_path / "gz.raw.gz").write_bytes(gzip.compress(b"HEAD" + data.astype("<i4").tobytes()))
    (tmp_path / "gzskip.nhdr").write_text(header + "encoding: gzip\ndata file: gz.raw.gz\nbyte skip: 4\n")
    for name in ("skip.nhdr", "end.nhdr", "hex.nrrd", "gzskip.nhdr"):
        img = mk.read(tmp_path / name)
        assert np.array_equal(img.array, data), name
        assert np.allclose(img.origin, [1, 2, 3]) and img.spacing == (2.0, 0.6, 0.5)
    for name in ("skip.nhdr", "end.nhdr"):  # ITK agrees on the raw skips
        _assert_same(mk.read(tmp_path / name), sitk.ReadImage(str(tmp_path / name)), "int32")


def test_nrrd_without_orientation_matches_itk(tmp_path):
    data = _voxels("uint16", SHAPE)
    path = tmp_path / "plain.nrrd"
    _pynrrd_write(path, data, {"spacings": np.array([0.4, 0.5, 3.0]), "axis mins": np.array([5.0, 6.0, 7.0]),
                               "encoding": "raw"})
    img = mk.read(path)
    _assert_same(img, sitk.ReadImage(str(path)), "uint16")
    assert np.allclose(img.origin, [5.2, 6.25, 8.5])  # cell-centred: min + spacing / 2


def test_nrrd_component_axis_anywhere_and_one_slice_in_3d_space(tmp_path):
    data = _voxels("float32", (4, 6, 7))  # file sizes 7 6 4: i, j, then a list of 4 samples
    path = tmp_path / "listlast.nrrd"
    _pynrrd_write(path, data, {"space": "left-posterior-superior", "kinds": ["domain", "domain", "list"],
                               "space directions": np.array([[0.5, 0, 0], [0, 0, -0.8], [np.nan] * 3]),
                               "space origin": np.array([1.0, 2.0, 3.0]), "encoding": "raw"})
    img = mk.read(path)
    # ITK refuses this file; by hand: the list axis becomes the components, the i/j plane is a
    # coronal slice (normal = i x j = (0, 1, 0) here) read as a 3D image of one slice.
    assert img.is_vector and img.array.shape == (1, 6, 7, 4)
    assert np.array_equal(img.array[0], np.moveaxis(data, 0, -1))
    assert img.spacing == (1.0, 0.8, 0.5)
    assert np.allclose(img.direction, [[0, 0, 1], [1, 0, 0], [0, -1, 0]])
    assert np.allclose(img.origin, [1, 2, 3])


def test_nrrd_refuses_what_an_image_cannot_hold(tmp_path):
    plain = "type: uchar\nencoding: raw\n"
    cases = {  # name: (header lines after the magic, what the message names)
        "time.nrrd": (plain + "dimension: 3\nsizes: 2 2 2\nspace: right-anterior-superior-time\n"
                      "space directions: (1,0,0,0) (0,1,0,0) (0,0,1,0)\n", "time"),
        "twolists.nrrd": (plain + "dimension: 4\nsizes: 2 2 2 2\nkinds: list list domain domain\n", "non-spatial"),
        "fivedim.nrrd": (plain + "dimension: 5\nsizes: 2 2 2 2 2\n", "dimension"),
        "onedim.nrrd": (plain + "dimension: 1\nsizes: 8\n", "dimension"),
        "mismatch.nrrd": (plain + "dimension: 3\nsizes: 2 4\n", "dimension"),
        "zerosize.nrrd": (plain + "dimension: 2\nsizes: 0 4\n", "at least 1"),
        "nodirs.nrrd": (plain + "dimension: 2\nsizes: 2 4\nspace: left-posterior-superior\n", "space directions"),
        "badspace.nrrd": (plain + "dimension: 2\nsizes: 2 4\nspace: upside-down\n"
                          "space directions: (1,0,0) (0,1,0)\n", "unknown NRRD space"),
        "block.nrrd": ("type: block\nencoding: raw\ndimension: 2\nsizes: 2 4\n", "unsupported NRRD type"),
        "notype.nrrd": ("encoding: raw\ndimension: 2\nsizes: 2 4\n", "no 'type'"),
        "encoding.nrrd": ("type: uchar\nencoding: zip\ndimension: 2\nsizes: 2 4\n", "unsupported NRRD encoding"),
        "endian.nrrd": ("type: short\nencoding: raw\ndimension: 2\nsizes: 2 2\n", "endian"),
        "duplicate.nrrd": (plain + "dimension: 2\ndimension: 2\nsizes: 2 4\n", "Duplicate"),
        "multi.nhdr": (plain + "dimension: 2\nsizes: 2 4\ndata file: slice%03d.raw 0 3 1\n", "multi-file"),
    }
    for name, (lines, message) in cases.items():
        p = tmp_path / name
        p.write_bytes(b"NRRD0004\n" + lines.encode() + b"\n" + bytes(8))
        with pytest.raises(ValueError, match=message):
            mk.read(p)
    (tmp_path / "nomagic.nrrd").write_bytes(b"PK\x03\x04 a zip file\n\n" + bytes(8))
    with pytest.raises(ValueError, match="not a readable NRRD header"):
        mk.read(tmp_path / "nomagic.nrrd")


# ------------------------------------------------------------------------------- 3D Slicer .seg.nrrd
def _slicer_fields(n: int) -> dict[str, str]:
    out = {}
    colors = ["0.501961 0.682353 0.501961", "0.945098 0.839216 0.568627", "0.694118 0.478431 0.396078"]
    for s in range(n):
        out.update({
            f"Segment{s}_Color": colors[s], f"Segment{s}_ColorAutoGenerated": "1",
            f"Segment{s}_Extent": f"0 {6 - s} 1 5 0 {4 - s}", f"Segment{s}_ID": f"Segment_{s + 1}",
            f"Segment{s}_LabelValue": str(s + 1), f"Segment{s}_Layer": "0", f"Segment{s}_Name": f"organ {s + 1}",
            f"Segment{s}_NameAutoGenerated": "0",
            f"Segment{s}_Tags": "Segmentation.Status:inprogress|TerminologyEntry:Segmentation category and type - "
                                "3D Slicer General Anatomy list~SCT^85756007^Tissue~SCT^85756007^Tissue~^^~"
                                "Anatomic codes - DICOM master list~^^~^^|",
        })
    out.update({"Segmentation_ContainedRepresentationNames": "Binary labelmap|Closed surface|",
                "Segmentation_ConversionParameters": "Smoothing factor|0.5|Smoothing factor.&",
                "Segmentation_MasterRepresentation": "Binary labelmap",
                "Segmentation_ReferenceImageExtentOffset": "0 0 0"})
    return out


def _slicer_header(layers: int | None) -> dict:
    steps = (_rotation((0, 1, 1), 0.25) * np.array([0.8, 0.8, 2.0])).T
    header = {"space": "left-posterior-superior", "space origin": np.array([-50.0, 20.0, 5.5]),
              "encoding": "gzip", "kinds": ["domain"] * 3, "space directions": steps}
    if layers:
        header["kinds"] = ["list"] + header["kinds"]
        header["space directions"] = np.vstack([np.full((1, 3), np.nan), steps])
    return header


def test_seg_nrrd_segments_kept_both_ways(tmp_path):
    labels = np.random.default_rng(3).integers(0, 4, size=SHAPE).astype(np.uint8)
    fields = _slicer_fields(3)
    src = tmp_path / "in.seg.nrrd"
    _pynrrd_write(src, labels, {**_slicer_header(None), **fields})
    img, header = read_nrrd(src, return_header=True)
    _assert_same(img, sitk.ReadImage(str(src)), "uint8")
    assert [s.name for s in header.segments] == ["organ 1", "organ 2", "organ 3"]
    assert [s.label_value for s in header.segments] == [1, 2, 3]
    assert header.segments[0] == SegmentInfo(
        id="Segment_1", name="organ 1", label_value=1, layer=0, color=(0.501961, 0.682353, 0.501961),
        extent=(0, 6, 1, 5, 0, 4), tags=fields["Segment0_Tags"],
        extra={"ColorAutoGenerated": "1", "NameAutoGenerated": "0"})
    assert header.key_values["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert header.fields["kinds"] == ["domain"] * 3

    out = tmp_path / "out.seg.nrrd"
    mk.write(img, out, segments=header.segments, key_values=header.key_values)
    data, written = nrrd.read(str(out), index_order="C")
    assert np.array_equal(data, labels)
    for key, value in fields.items():
        assert written[key] == value, key
    _assert_same(mk.read(out), sitk.ReadImage(str(src)), "uint8")


def test_multilayer_seg_nrrd(tmp_path):
    rng = np.random.default_rng(4)
    layers = rng.integers(0, 3, size=SHAPE + (2,)).astype(np.uint8)  # C order: (k, j, i, layer)
    fields = _slicer_fields(3)
    fields["Segment2_Layer"] = "1"
    fields["Segment2_LabelValue"] = "1"
    src = tmp_path / "layers.seg.nrrd"
    _pynrrd_write(src, layers, {**_slicer_header(2), **fields})
    img, header = read_nrrd(src, return_header=True)
    assert img.is_vector and img.array.shape == SHAPE + (2,)
    assert np.array_equal(img.array, layers)
    assert [(s.layer, s.label_value) for s in header.segments] == [(0, 1), (0, 2), (1, 1)]
    ref = _sitk_image(layers[..., 0].copy(), img.spacing, img.origin, img.direction)
    pyn_data, pyn_header = nrrd.read(str(src), index_order="C")  # independent geometry: pynrrd's header
    assert np.allclose(pyn_header["space directions"][1:], (img.direction * np.asarray(img.spacing))[:, ::-1].T)
    assert max(_geometry_errors(img, ref)) == 0.0

    out = tmp_path / "back.seg.nrrd"
    mk.write(img, out, segments=header.segments, key_values=header.key_values)
    data, written = nrrd.read(str(out), index_order="C")
    assert written["kinds"] == ["list", "domain", "domain", "domain"]
    assert np.array_equal(data, layers)
    assert np.allclose(written["space directions"][1:], pyn_header["space directions"][1:], atol=1e-12, rtol=0)
    for key, value in fields.items():
        assert written[key] == value, key
    with pytest.raises(ValueError, match="layer 5"):
        mk.write(img, tmp_path / "bad.seg.nrrd", segments=[SegmentInfo("a", "a", 1, layer=5)])


def test_seg_nrrd_without_segments_gets_one_per_label(tmp_path):
    labels = np.zeros(SHAPE, np.int16)
    labels[1:3, 2:4, 2:5] = 7
    labels[4, 0, 0] = 2
    img = mk.Image(labels, *GEOMETRIES["oblique"])
    mk.write(img, tmp_path / "gen.seg.nrrd")
    _, written = nrrd.read(str(tmp_path / "gen.seg.nrrd"))
    assert [written[f"Segment{n}_LabelValue"] for n in range(2)] == ["2", "7"]
    assert written["Segmentation_MasterRepresentation"] == "Binary labelmap"
    _, header = read_nrrd(tmp_path / "gen.seg.nrrd", return_header=True)
    assert [s.id for s in header.segments] == ["Segment_2", "Segment_7"]
    with pytest.raises(ValueError, match="integer label map"):
        mk.write(img.astype(np.float32), tmp_path / "float.seg.nrrd")
    with pytest.raises(ValueError, match="unique"):
        mk.write(img, tmp_path / "dup.seg.nrrd", segments=[SegmentInfo("a", "a", 2), SegmentInfo("a", "b", 7)])
    with pytest.raises(ValueError, match="standard NRRD field"):
        mk.write(img, tmp_path / "x.nrrd", key_values={"space origin": "(0,0,0)"})
    with pytest.raises(ValueError, match="line break"):
        mk.write(img, tmp_path / "x.nrrd", key_values={"note": "two\nlines"})


# ------------------------------------------------------------------------------- MetaImage specifics
def _mha(path: Path, keys: str, data: bytes = b"") -> Path:
    path.write_bytes(keys.encode() + data)
    return path


def test_metaimage_layouts_match_simpleitk(tmp_path):
    data = _voxels("int16", SHAPE)
    le, be = data.astype("<i2").tobytes(), data.astype(">i2").tobytes()
    head = "ObjectType = Image\nNDims = 3\nDimSize = 7 6 5\nElementType = MET_SHORT\n"
    (tmp_path / "pre.dat").write_bytes(b"x" * 13 + le)
    for k in range(5):
        (tmp_path / f"slice{k:03d}.raw").write_bytes(data[k].astype("<i2").tobytes())
        (tmp_path / f"z{k}.raw").write_bytes(zlib.compress(data[k].astype("<i2").tobytes()))
    for j in range(6 * 5):
        (tmp_path / f"row{j}.raw").write_bytes(data.reshape(30, 7)[j].astype("<i2").tobytes())
    files = {
        "msb.mha": (head + "BinaryDataByteOrderMSB = True\nElementDataFile = LOCAL\n", be),
        "elmsb.mha": (head + "ElementByteOrderMSB = True\nElementDataFile = LOCAL\n", be),
        "skip.mhd": (head + "HeaderSize = 13\nElementDataFile = pre.dat\n", b""),
        "end.mhd": (head + "HeaderSize = -1\nElementDataFile = pre.dat\n", b""),
        "list.mhd": (head + "ElementDataFile = LIST\n" + "".join(f"slice{k:03d}.raw\n" for k in range(5)), b""),
        "list1d.mhd": (head + "ElementDataFile = LIST 1D\n" + "".join(f"row{j}.raw\n" for j in range(30)), b""),
        "zlist.mhd": (head + "CompressedData = True\nElementDataFile = LIST\n"
                      + "".join(f"z{k}.raw\n" for k in range(5)), b""),
        "pattern.mhd": (head + "ElementDataFile = slice%03d.raw 0 4 1\n", b""),
        "synonyms.mha": (head + "Position = 1 2 3\nRotation = 0 1 0 -1 0 0 0 0 1\nElementSize = 0.5 0.25 4\n"
                         "ElementDataFile = LOCAL\n", le),
        "text.mha": (head + "BinaryData = False\nElementDataFile = LOCAL\n", " ".join(map(str, data.ravel())).encode()),
        "zlocal.mha": (head + f"CompressedData = True\nCompressedDataSize = {len(zlib.compress(le))}\n"
                       "ElementDataFile = LOCAL\n", zlib.compress(le)),
    }
    for name, (keys, payload) in files.items():
        path = _mha(tmp_path / name, keys, payload)
        img = mk.read(path)
        assert np.array_equal(img.array, data), name
        if name != "text.mha":  # ITK's MetaImageIO fails on this text data; checked by hand above
            _assert_same(img, sitk.ReadImage(str(path)), "int16")


def test_metaimage_long_is_four_bytes_as_in_metaio(tmp_path):
    data = _voxels("int32", SHAPE)
    path = _mha(tmp_path / "long.mha", "NDims = 3\nDimSize = 7 6 5\nElementType = MET_LONG\nElementDataFile = LOCAL\n",
                data.tobytes())
    _assert_same(mk.read(path), sitk.ReadImage(str(path)), "int32")


def test_metaimage_transform_matrix_rows_are_axis_directions(tmp_path):
    """TransformMatrix row a = unit vector of ITK axis a (ITK's direction transposed), as ITK reads it."""
    path = _mha(tmp_path / "rows.mha", "NDims = 3\nDimSize = 2 2 2\nTransformMatrix = 0 1 0 -1 0 0 0 0 1\n"
                "ElementType = MET_UCHAR\nElementDataFile = LOCAL\n", bytes(8))
    img = mk.read(path)
    assert np.allclose(np.asarray(sitk.ReadImage(str(path)).GetDirection()).reshape(3, 3),
                       [[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    assert np.allclose(img.direction[:, ::-1], [[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    img = _image("uint8", "flipped")
    mk.write(img, tmp_path / "w.mha")
    text = (tmp_path / "w.mha").read_bytes().split(b"ElementDataFile")[0].decode()
    matrix = [line for line in text.splitlines() if line.startswith("TransformMatrix")][0]
    rows = np.array(matrix.split("=")[1].split(), dtype=float).reshape(3, 3)
    assert np.allclose(rows, img.direction[:, ::-1].T, atol=1e-15)


def test_metaimage_anatomical_orientation_as_itk_writes_it(tmp_path):
    for geometry in GEOMETRIES:
        img = _image("uint8", geometry)
        sitk.WriteImage(_sitk_image(img.array, img.spacing, img.origin, img.direction), str(tmp_path / "s.mha"))
        mk.write(img, tmp_path / "m.mha")

        def orientation(p):
            head = p.read_bytes().split(b"ElementDataFile")[0].decode()
            return [line for line in head.splitlines() if line.startswith("AnatomicalOrientation")][0]

        assert orientation(tmp_path / "m.mha") == orientation(tmp_path / "s.mha"), geometry


def test_metaimage_4d_picks_a_volume(tmp_path):
    vols = [_sitk_image(_voxels("float32", SHAPE, seed=t), *GEOMETRIES["oblique"]) for t in range(3)]
    series = sitk.JoinSeries(vols)
    path = tmp_path / "series.mha"
    sitk.WriteImage(series, str(path))
    for t in range(3):
        _assert_same(mk.read(path, volume=t), vols[t], "float32")
    with pytest.raises(ValueError, match="volume=t"):
        mk.read(path)
    with pytest.raises(ValueError, match="out of range"):
        mk.read(path, volume=3)


# --------------------------------------------------------------------------------- hostile headers
def _small_peak(fn) -> tuple[int, str]:
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            fn()
        return tracemalloc.get_traced_memory()[1], str(info.value)
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("compressed", [False, True])
def test_size_claims_beyond_the_file_fail_before_allocating(tmp_path, compressed):
    """10^12 voxels claimed, 1 kB present: a clear error, and no allocation beyond a few MB."""
    payload = zlib.compress(bytes(1024)) if compressed else bytes(1024)
    mha = _mha(tmp_path / "huge.mha", f"NDims = 3\nDimSize = 10000 10000 10000\nCompressedData = {compressed}\n"
               "ElementType = MET_UCHAR\nElementDataFile = LOCAL\n", payload)
    (tmp_path / "huge.raw").write_bytes(payload)
    mhd = _mha(tmp_path / "huge.mhd", f"NDims = 3\nDimSize = 10000 10000 10000\nCompressedData = {compressed}\n"
               "ElementType = MET_UCHAR\nElementDataFile = huge.raw\n")
    enc = "gzip" if compressed else "raw"
    body = gzip.compress(bytes(1024)) if compressed else bytes(1024)
    nrrd_path = tmp_path / "huge.nrrd"
    nrrd_path.write_bytes(f"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 10000 10000 10000\nencoding: {enc}\n\n"
                          .encode() + body)
    for path in (mha, mhd, nrrd_path):
        peak, message = _small_peak(lambda path=path: mk.read(path))
        assert peak < 8 * 2**20, f"{path.name}: {peak} bytes allocated"
        assert "truncated" in message or "more than" in message


def test_truncated_and_surplus_data(tmp_path):
    img = _image("int16", "oblique")
    for suffix, kwargs in ((".mha", {}), (".mha", {"compress": True}), (".nrrd", {"encoding": "raw"}),
                           (".nrrd", {"encoding": "gzip"}), (".nrrd", {"encoding": "bzip2"})):
        path = tmp_path / f"t{suffix}"
        mk.write(img, path, **kwargs)
        whole = path.read_bytes()
        path.write_bytes(whole[:-40])
        with pytest.raises(ValueError, match="truncated|corrupt"):
            mk.read(path)
        path.write_bytes(whole + bytes(6))
        if kwargs.get("compress"):  # CompressedDataSize delimits the stream; what follows is not read
            assert np.array_equal(mk.read(path).array, img.array)
            continue
        with pytest.raises(ValueError, match="follow|corrupt|more than"):
            mk.read(path)
    mk.write(img, tmp_path / "d.nhdr", encoding="raw")
    raw = tmp_path / "d.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated"):
        mk.read(tmp_path / "d.nhdr")
    # a stream that inflates to 64 MB behind a header that says 8 bytes: inflating stops at 9 bytes
    squeeze = zlib.compressobj(9)
    bomb = b"".join(squeeze.compress(bytes(2**20)) for _ in range(64)) + squeeze.flush()
    _mha(tmp_path / "bomb.mha", "NDims = 2\nDimSize = 2 4\nCompressedData = True\nElementType = MET_UCHAR\n"
         "ElementDataFile = LOCAL\n", bomb)
    peak, message = _small_peak(lambda: mk.read(tmp_path / "bomb.mha"))
    assert "more than the 8 bytes" in message and peak < 8 * 2**20


def test_bad_metaimage_headers(tmp_path):
    ok = "ElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
    cases = {
        "ndims5.mha": ("NDims = 5\nDimSize = 2 2 2 2 2\n" + ok, "NDims"),
        "ndims1.mha": ("NDims = 1\nDimSize = 8\n" + ok, "NDims"),
        "count.mha": ("NDims = 3\nDimSize = 2 4\n" + ok, "DimSize"),
        "zero.mha": ("NDims = 2\nDimSize = 0 4\n" + ok, "at least 1"),
        "negative.mha": ("NDims = 2\nDimSize = -2 4\n" + ok, "at least 1"),
        "type.mha": ("NDims = 2\nDimSize = 2 4\nElementType = MET_FOO\nElementDataFile = LOCAL\n", "ElementType"),
        "array.mha": ("NDims = 2\nDimSize = 2 4\nElementType = MET_UCHAR_ARRAY\nElementDataFile = LOCAL\n",
                      "ElementType"),
        "spacing.mha": ("NDims = 2\nDimSize = 2 4\nElementSpacing = 1 nan\n" + ok, "finite"),
        "singular.mha": ("NDims = 2\nDimSize = 2 4\nTransformMatrix = 1 0 1 0\n" + ok, "singular"),
        "object.mha": ("ObjectType = Tube\nNDims = 2\nDimSize = 2 4\n" + ok, "ObjectType"),
        "noend.mha": ("NDims = 2\nDimSize = 2 4\nElementType = MET_UCHAR\n", "ElementDataFile"),
        "binary.mha": ("\x89PNG\r\n\x1a\n\x00\x00 garbage", "not 'Key = Value'"),
        "twice.mha": ("NDims = 2\nNDims = 2\nDimSize = 2 4\n" + ok, "twice"),
        "volume.mha": ("NDims = 2\nDimSize = 2 4\n" + ok, "volume"),
    }
    for name, (keys, message) in cases.items():
        path = _mha(tmp_path / name, keys, b"" if name == "noend.mha" else bytes(8))
        with pytest.raises(ValueError, match=message):
            mk.read(path, volume=1) if name == "volume.mha" else mk.read(path)


def test_data_files_only_beside_their_header(tmp_path):
    """Decision: a data file is read only from inside the header's folder (after resolving '..' and
    symbolic links); anything else is refused with ValueError, whether or not it exists."""
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "outside.raw").write_bytes(bytes(8))
    os.symlink(tmp_path / "outside.raw", inner / "link.raw")
    (inner / "sub").mkdir()
    (inner / "sub" / "ok.raw").write_bytes(bytes(range(8)))
    meta = "NDims = 2\nDimSize = 2 4\nElementType = MET_UCHAR\nElementDataFile = {}\n"
    for name in ("../../etc/passwd", "../outside.raw", str(tmp_path / "outside.raw"), "/etc/passwd", "link.raw"):
        with pytest.raises(ValueError, match="outside the header's folder"):
            read_metaimage(_mha(inner / "evil.mhd", meta.format(name)))
    _mha(inner / "list.mhd", "NDims = 2\nDimSize = 2 4\nElementType = MET_UCHAR\nElementDataFile = LIST\n"
         + "sub/ok.raw\n" * 3 + "../outside.raw\n")
    with pytest.raises(ValueError, match="outside the header's folder"):
        mk.read(inner / "list.mhd")
    nhdr = "NRRD0004\ntype: uchar\ndimension: 2\nsizes: 2 4\nencoding: raw\ndata file: {}\n"
    for name in ("../outside.raw", "/etc/passwd", "link.raw"):
        (inner / "evil.nhdr").write_text(nhdr.format(name))
        with pytest.raises(ValueError, match="outside the header's folder"):
            mk.read(inner / "evil.nhdr")
    # a subfolder of the header's folder is inside it
    assert np.array_equal(read_metaimage(_mha(inner / "good.mhd", meta.format("sub/ok.raw"))).array.ravel(),
                          np.arange(8))
    (inner / "good.nhdr").write_text(nhdr.format("./sub/ok.raw"))
    assert np.array_equal(mk.read(inner / "good.nhdr").array.ravel(), np.arange(8))
    (inner / "missing.nhdr").write_text(nhdr.format("nothere.raw"))
    with pytest.raises(FileNotFoundError, match="nothere.raw"):
        mk.read(inner / "missing.nhdr")


# ----------------------------------------------------------------------------------- atomic writes
def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("suffix,kwargs", [(".mhd", {"compress": True}), (".nhdr", {"encoding": "gzip"}),
                                           (".mha", {"compress": True}), (".nrrd", {"encoding": "gzip"})])
def test_failed_write_leaves_previous_files(tmp_path, monkeypatch, suffix, kwargs):
    mk.write(_image("int16", "oblique"), tmp_path / f"x{suffix}", **kwargs)
    before = _listing(tmp_path)

    def broken(*args, **kw):
        raise OSError("disk full")

    monkeypatch.setattr("medkern.io.metaimage.zlib.compress", broken)
    monkeypatch.setattr("nrrd.writer.zlib.compressobj", broken)
    with pytest.raises(OSError, match="disk full"):
        mk.write(_image("int16", "flipped"), tmp_path / f"x{suffix}", **kwargs)
    assert _listing(tmp_path) == before  # nothing half-written, no temporary left behind


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_header_and_data_land_together(tmp_path, monkeypatch, suffix):
    """If the header cannot be renamed into place, the data file already renamed is put back."""
    import medkern.io._datafile as datafile

    mk.write(_image("int16", "oblique"), tmp_path / f"x{suffix}")
    before = _listing(tmp_path)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).suffix in (".mhd", ".nhdr"):
            raise OSError("rename refused")
        return real_replace(src, dst)

    monkeypatch.setattr(datafile.os, "replace", replace)
    with pytest.raises(OSError, match="rename refused"):
        mk.write(_image("int16", "flipped"), tmp_path / f"x{suffix}")
    monkeypatch.setattr(datafile.os, "replace", real_replace)
    assert _listing(tmp_path) == before
    _assert_same(mk.read(tmp_path / f"x{suffix}"), _image("int16", "oblique").to_sitk(), "int16")


def test_write_argument_errors(tmp_path):
    img = _image("uint8", "oblique")
    with pytest.raises(ValueError, match="encoding"):
        mk.write(img, tmp_path / "x.nrrd", encoding="zip")
    with pytest.raises(ValueError, match="compression_level"):
        mk.write(img, tmp_path / "x.mha", compress=True, compression_level=0)
    with pytest.raises(TypeError):
        mk.write(img, tmp_path / "x.mha", encoding="gzip")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mk.write(img, tmp_path / "no" / "x.mhd")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mk.write(img, tmp_path / "no" / "x.nhdr")


def test_bool_and_int64_images(tmp_path):
    mask = mk.Image(_voxels("uint8", SHAPE) > 128, *GEOMETRIES["flipped"])
    big = mk.Image(_voxels("int64", SHAPE), *GEOMETRIES["oblique"])
    for suffix in (".nrrd", ".mha"):
        mk.write(mask, tmp_path / f"m{suffix}")
        _assert_same(mask.astype(np.uint8), sitk.ReadImage(str(tmp_path / f"m{suffix}")), "uint8")
        mk.write(big, tmp_path / f"b{suffix}")
        _assert_same(big, sitk.ReadImage(str(tmp_path / f"b{suffix}")), "int64")
        _assert_same(mk.read(tmp_path / f"b{suffix}"), sitk.ReadImage(str(tmp_path / f"b{suffix}")), "int64")


def test_cli_convert_between_formats(tmp_path, capsys):
    from medkern.cli import main

    img = _image("float32", "oblique")
    sitk.WriteImage(img.to_sitk(), str(tmp_path / "in.mha"))
    assert main(["convert", str(tmp_path / "in.mha"), str(tmp_path / "out.nrrd")]) == 0
    assert main(["convert", str(tmp_path / "out.nrrd"), str(tmp_path / "out.mhd")]) == 0
    _assert_same(mk.read(tmp_path / "out.mhd"), sitk.ReadImage(str(tmp_path / "in.mha")), "float32")
    assert "wrote" in capsys.readouterr().out
