"""Small, synthetic, well-formed inputs for the fuzzing harnesses and the hostile-input campaign.

Everything here is generated (no patient data): a CT series of a few 8x8 slices, single- and
multi-frame CT files, an RT Dose grid, an enhanced CT, an RTSTRUCT drawn on the series, NIfTI
files, ITK transform files (text and MATLAB v4) and a tiny ONNX segmentation model with medkern
metadata. Each builder returns bytes (or writes files) and documents the image it encodes, so
callers can compare what medkern reads against the known answer.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------ DICOM
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_STRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2"
FRAME_UID = "1.2.826.0.1.3680043.8.498.3"

# the reference CT series: SERIES_SLICES slices of SERIES_SHAPE[1:], slice k at z = k * SERIES_DZ
SERIES_SHAPE = (5, 8, 8)
SERIES_DZ = 2.5
PIXEL_SPACING = (0.7, 0.8)  # (row spacing = along j, column spacing = along i)
SERIES_ORIGIN = (-3.0, 4.0, 10.0)
RESCALE = (1.0, -1024.0)


def series_raw() -> np.ndarray:
    """Stored int16 values of the reference series, (k, j, i)."""
    k, j, i = np.indices(SERIES_SHAPE)
    return (1000 + 100 * k + 10 * j + i).astype(np.int16)


def series_values() -> np.ndarray:
    """Modality values (stored * slope + intercept) of the reference series."""
    return series_raw().astype(np.float64) * RESCALE[0] + RESCALE[1]


def _file_meta(sop_class: str, sop_uid: str, ts: str):
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.99"
    return meta


def _base(sop_class: str, sop_uid: str, modality: str, series_uid: str = SERIES_UID, ts: str = EXPLICIT_LE):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_uid, ts)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = FRAME_UID
    ds.Modality = modality
    ds.PatientID = "FUZZ"
    ds.PatientName = "Fuzz^Phantom"
    ds.SeriesNumber = 1
    return ds


def _pixels(ds, raw: np.ndarray, signed: bool = True) -> None:
    frames = raw.shape[0] if raw.ndim == 3 else 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(raw.shape[-2]), int(raw.shape[-1])
    if raw.ndim == 3:
        ds.NumberOfFrames = frames
    bits = raw.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.ascontiguousarray(raw).astype(raw.dtype.newbyteorder("<")).tobytes()


def to_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ts = str(ds.file_meta.TransferSyntaxUID)
    little = ts != "1.2.840.10008.1.2.2"
    implicit = ts == IMPLICIT_LE
    ds.save_as(buf, enforce_file_format=True, implicit_vr=implicit, little_endian=little)
    return buf.getvalue()


def ct_slice(k: int, series_uid: str = SERIES_UID, ts: str = EXPLICIT_LE):
    """Dataset of slice ``k`` of the reference series."""
    ds = _base(CT_IMAGE, f"{series_uid}.{k + 1}", "CT", series_uid, ts)
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [SERIES_ORIGIN[0], SERIES_ORIGIN[1], SERIES_ORIGIN[2] + k * SERIES_DZ]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = list(PIXEL_SPACING)
    ds.SliceThickness = SERIES_DZ
    ds.RescaleSlope, ds.RescaleIntercept = RESCALE
    _pixels(ds, series_raw()[k])
    return ds


def ct_slice_bytes(k: int = 0, ts: str = EXPLICIT_LE) -> bytes:
    return to_bytes(ct_slice(k, ts=ts))


def write_series(directory: Path, slices=None, series_uid: str = SERIES_UID) -> list[Path]:
    """The reference series as ``slice<k>.dcm`` files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for k in (range(SERIES_SHAPE[0]) if slices is None else slices):
        p = directory / f"slice{k}.dcm"
        p.write_bytes(to_bytes(ct_slice(k, series_uid)))
        out.append(p)
    return out


MULTIFRAME_SHAPE = (3, 6, 5)


def multiframe_raw() -> np.ndarray:
    k, j, i = np.indices(MULTIFRAME_SHAPE)
    return (200 * k + 10 * j + i).astype(np.uint16)


def multiframe_ct(ts: str = EXPLICIT_LE):
    """A classic multi-frame CT file (frames without positions): the values are what matters."""
    ds = _base(CT_IMAGE, "1.2.826.0.1.3680043.8.498.10", "CT", "1.2.826.0.1.3680043.8.498.11", ts)
    ds.PixelSpacing = [1.0, 1.0]
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    _pixels(ds, multiframe_raw(), signed=False)
    return ds


# RT Dose: frames of DOSE_SHAPE at z = DOSE_ORIGIN[2] + offset[k], values raw * DOSE_SCALING
DOSE_SHAPE = (4, 6, 5)
DOSE_ORIGIN = (10.0, 20.0, 30.0)
DOSE_OFFSETS = (0.0, 2.0, 4.0, 6.0)
DOSE_SCALING = 0.01


def dose_raw() -> np.ndarray:
    k, j, i = np.indices(DOSE_SHAPE)
    return (1000 * k + 10 * j + i + 7).astype(np.uint32)


def rt_dose(ts: str = EXPLICIT_LE, offsets=DOSE_OFFSETS):
    ds = _base(RT_DOSE, "1.2.826.0.1.3680043.8.498.20", "RTDOSE", "1.2.826.0.1.3680043.8.498.21", ts)
    ds.ImagePositionPatient = list(DOSE_ORIGIN)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [3.0, 2.0]
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    ds.DoseGridScaling = DOSE_SCALING
    if offsets is not None:
        ds.GridFrameOffsetVector = list(offsets)
    ds.FrameIncrementPointer = 0x3004000C
    _pixels(ds, dose_raw(), signed=False)
    return ds


# Enhanced CT: ENH_SHAPE frames, frame f at z = ENH_Z[f] (shared orientation, spacing, rescale)
ENH_SHAPE = (3, 6, 7)
ENH_Z = (10.0, 13.0, 16.0)
ENH_SPACING = (0.5, 0.6)


def enhanced_raw() -> np.ndarray:
    k, j, i = np.indices(ENH_SHAPE)
    return (300 * k + 10 * j + i).astype(np.int16)


def enhanced_ct(ts: str = EXPLICIT_LE, positions=None):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _base(ENHANCED_CT, "1.2.826.0.1.3680043.8.498.30", "CT", "1.2.826.0.1.3680043.8.498.31", ts)
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = list(ENH_SPACING)
    pm.SliceThickness = 2.0
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    pv = Dataset()
    pv.RescaleSlope, pv.RescaleIntercept, pv.RescaleType = 1, -1024, "HU"
    shared.PixelMeasuresSequence = Sequence([pm])
    shared.PlaneOrientationSequence = Sequence([po])
    shared.PixelValueTransformationSequence = Sequence([pv])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    items = []
    for z in (ENH_Z if positions is None else positions):
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [0.0, 0.0, z]
        item.PlanePositionSequence = Sequence([pp])
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    _pixels(ds, enhanced_raw())
    return ds


# RTSTRUCT on the reference series: ROI 1 "GTV" a square on slice 2, ROI 2 "CTV" a square on
# slices 1 and 3. Corners sit half-way between voxel centres, so the masks are unambiguous.
GTV_BOX = (2, (2, 6), (1, 5))  # slice k, rows j0..j1 inclusive, columns i0..i1 inclusive
CTV_BOXES = ((1, (0, 3), (0, 3)), (3, (4, 7), (3, 6)))


def _box_contour(k: int, rows: tuple[int, int], cols: tuple[int, int]) -> list[float]:
    x0 = SERIES_ORIGIN[0] + (cols[0] - 0.5) * PIXEL_SPACING[1]
    x1 = SERIES_ORIGIN[0] + (cols[1] + 0.5) * PIXEL_SPACING[1]
    y0 = SERIES_ORIGIN[1] + (rows[0] - 0.5) * PIXEL_SPACING[0]
    y1 = SERIES_ORIGIN[1] + (rows[1] + 0.5) * PIXEL_SPACING[0]
    z = SERIES_ORIGIN[2] + k * SERIES_DZ
    pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return [round(v, 4) for x, y in pts for v in (x, y, z)]


def expected_masks() -> dict[str, np.ndarray]:
    gtv = np.zeros(SERIES_SHAPE, np.uint8)
    k, (j0, j1), (i0, i1) = GTV_BOX
    gtv[k, j0:j1 + 1, i0:i1 + 1] = 1
    ctv = np.zeros(SERIES_SHAPE, np.uint8)
    for k, (j0, j1), (i0, i1) in CTV_BOXES:
        ctv[k, j0:j1 + 1, i0:i1 + 1] = 1
    return {"GTV": gtv, "CTV": ctv}


def rtstruct(ts: str = EXPLICIT_LE):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _base(RT_STRUCT, "1.2.826.0.1.3680043.8.498.40", "RTSTRUCT", "1.2.826.0.1.3680043.8.498.41", ts)
    ds.StructureSetLabel = "fuzz"
    ref = Dataset()
    ref.FrameOfReferenceUID = FRAME_UID
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    rois, contours, observations = [], [], []
    boxes = {"GTV": [GTV_BOX], "CTV": list(CTV_BOXES)}
    for number, (name, bxs) in enumerate(boxes.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = FRAME_UID
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        rois.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = [255, 0, 0]
        items = []
        for k, rows, cols in bxs:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            data = _box_contour(k, rows, cols)
            c.NumberOfContourPoints = len(data) // 3
            c.ContourData = data
            img = Dataset()
            img.ReferencedSOPClassUID = CT_IMAGE
            img.ReferencedSOPInstanceUID = f"{SERIES_UID}.{k + 1}"
            c.ContourImageSequence = Sequence([img])
            items.append(c)
        rc.ContourSequence = Sequence(items)
        contours.append(rc)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = "GTV" if name == "GTV" else "CTV"
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    return ds


def rtstruct_bytes() -> bytes:
    return to_bytes(rtstruct())


# ------------------------------------------------------------------ NIfTI
NIFTI_SHAPE_IJK = (6, 5, 4)  # nibabel order (i, j, k); medkern reads (4, 5, 6)
NIFTI_AFFINE = np.array([[2.0, 0, 0, -10], [0, 3.0, 0, 20], [0, 0, 4.0, 5], [0, 0, 0, 1]])


def nifti_data(dtype=np.float32) -> np.ndarray:
    i, j, k = np.indices(NIFTI_SHAPE_IJK)
    return (100 * k + 10 * j + i).astype(dtype)


def nifti_bytes(dtype=np.float32, version: int = 1, slope: float | None = None, data=None) -> bytes:
    """An uncompressed single-file NIfTI (.nii) holding ``nifti_data(dtype)``."""
    import nibabel as nib

    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    img = cls(nifti_data(dtype) if data is None else data, NIFTI_AFFINE)
    img.header.set_qform(NIFTI_AFFINE, 1)
    img.header.set_sform(NIFTI_AFFINE, 1)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    buf = io.BytesIO()
    fm = img.make_file_map({"image": buf, "header": buf})
    img.to_file_map(fm)
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


# ------------------------------------------------------------------ transforms
TRANSFORM_LINEAR = np.array([[1.1, 0.05, 0.0], [-0.02, 0.95, 0.1], [0.0, 0.03, 1.02]])
TRANSFORM_TRANSLATION = np.array([2.0, -3.0, 1.5])
TRANSFORM_CENTER = np.array([10.0, 5.0, -2.0])


def itk_text(name: str = "AffineTransform_double_3_3", params=None, fixed=None) -> bytes:
    p = np.concatenate([TRANSFORM_LINEAR.ravel(), TRANSFORM_TRANSLATION]) if params is None else params
    f = TRANSFORM_CENTER if fixed is None else fixed
    text = ("#Insight Transform File V1.0\n#Transform 0\n"
            f"Transform: {name}\n"
            f"Parameters: {' '.join(repr(float(v)) for v in p)}\n"
            f"FixedParameters: {' '.join(repr(float(v)) for v in f)}\n")
    return text.encode()


def mat_entry(name: str, values, endian: str = "<", mopt: int | None = None, mrows: int | None = None,
              ncols: int = 1, namelen: int | None = None, imagf: int = 0) -> bytes:
    values = np.asarray(values, dtype=np.float64)
    raw = name.encode("ascii") + b"\0"
    if mopt is None:
        mopt = 0 if endian == "<" else 1000
    header = struct.pack(endian + "5i", mopt, values.size if mrows is None else mrows, ncols, imagf,
                         len(raw) if namelen is None else namelen)
    return header + raw + values.astype(endian + "f8").tobytes()


def itk_mat(name: str = "AffineTransform_double_3_3", params=None, fixed=None, endian: str = "<") -> bytes:
    p = np.concatenate([TRANSFORM_LINEAR.ravel(), TRANSFORM_TRANSLATION]) if params is None else params
    f = TRANSFORM_CENTER if fixed is None else fixed
    return mat_entry(name, p, endian) + mat_entry("fixed", f, endian)


# ------------------------------------------------------------------ ONNX
def model_metadata(**changes) -> dict:
    meta = {
        "schema_version": 1, "name": "fuzz", "version": "1", "task": "segmentation",
        "input": {"modalities": ["CT"], "channels": 1, "spatial_dims": 3, "spacing": None,
                  "orientation": None},
        "preprocessing": [],
        "inference": {"patch_size": [8, 8, 8], "overlap": 0.25, "blend": "constant", "batch_size": 1},
        "output": {"activation": "softmax", "labels": ["background", "object"]},
    }
    meta.update(changes)
    return meta


def onnx_model(metadata: dict | str | None = None, scale: float = 1.0, output_shrink: int = 0,
               channels_out: int = 2, inputs: int = 1, external: str | None = None):
    """A segmentation graph: logits (-x * scale, x * scale) per voxel, so the label is ``x > 0``.

    ``metadata``: dict (JSON-encoded) or a raw string for the "medkern" metadata_props entry.
    ``scale`` NaN/inf make the outputs non-finite; ``output_shrink`` crops the output (a wrong
    output shape); ``external`` stores the scale initialiser as external data at that location.
    """
    from onnx import TensorProto, helper

    dims = ["n", 1, "z", "y", "x"]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)
    graph_inputs = [x]
    if inputs > 1:
        graph_inputs += [helper.make_tensor_value_info(f"extra{n}", TensorProto.FLOAT, dims) for n in range(1, inputs)]
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", channels_out, "z", "y", "x"])
    scale_t = helper.make_tensor("scale", TensorProto.FLOAT, [1], [float(scale)])
    inits = [scale_t]
    nodes = [helper.make_node("Mul", ["image", "scale"], ["pos"]), helper.make_node("Neg", ["pos"], ["neg"])]
    parts = ["neg", "pos"] + ["pos"] * (channels_out - 2)
    if channels_out == 1:
        parts = ["pos"]
    nodes.append(helper.make_node("Concat", parts, ["cat"], axis=1))
    last = "cat"
    if output_shrink:
        starts = helper.make_tensor("starts", TensorProto.INT64, [3], [0, 0, 0])
        ends = helper.make_tensor("ends", TensorProto.INT64, [3], [-output_shrink] * 3)
        axes = helper.make_tensor("axes", TensorProto.INT64, [3], [2, 3, 4])
        inits += [starts, ends, axes]
        nodes.append(helper.make_node("Slice", ["cat", "starts", "ends", "axes"], ["sliced"]))
        last = "sliced"
    nodes.append(helper.make_node("Identity", [last], ["logits"]))
    graph = helper.make_graph(nodes, "fuzz", graph_inputs, [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if external is not None:
        t = model.graph.initializer[0]
        t.ClearField("float_data")
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", "4")):
            e = t.external_data.add()
            e.key, e.value = key, value
    if metadata is not None:
        text = metadata if isinstance(metadata, str) else json.dumps(metadata)
        entry = model.metadata_props.add()
        entry.key, entry.value = "medkern", text
    return model


def onnx_bytes(metadata: dict | str | None = None, **kw) -> bytes:
    return onnx_model(model_metadata() if metadata is None else metadata, **kw).SerializeToString()


def model_image() -> tuple[np.ndarray, np.ndarray]:
    """An (8, 8, 8) image for the ONNX model and the labels it must give (x > 0)."""
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (8, 8, 8)).astype(np.float32)
    x[np.abs(x) < 0.05] = 0.5
    return x, (x > 0).astype(np.uint8)
