"""Static INT8 quantisation (medkern.inference.quantize) with the real ONNX Runtime quantiser.

The network is a small hand-made 3D segmentation net (3x3x3 convolutions, leaky ReLU, a 1x1
head) whose FP32 labels segment the generated volume well; the INT8 copy must keep the Dice
against the truth within 0.005 of FP32's (the accuracy guard of the quantised models).
"""

from __future__ import annotations

import numpy as np
import pytest

import medkern as mk

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")
from onnx import TensorProto, helper  # noqa: E402

PATCH = [24, 32, 32]


def segmentation_net() -> bytes:
    """image -> Conv 3^3 (6 ch: local means, offsets) -> LeakyRelu -> Conv 3^3 (4 ch) -> LeakyRelu
    -> Conv 1^3 -> (background, foreground) logits; foreground where the smoothed image > 0.5."""
    rng = np.random.default_rng(3)
    box = np.full((3, 3, 3), 1 / 27, np.float32)
    w1 = np.stack([box, -box, box * 0.5, -box * 0.5, box + rng.normal(0, 0.01, box.shape), -box])[:, None]
    b1 = np.array([-0.5, 0.5, -0.25, 0.25, -0.5, 0.5], np.float32)
    w2 = np.zeros((4, 6, 3, 3, 3), np.float32)
    for o in range(4):
        w2[o, :, 1, 1, 1] = [1, -1, 1, -1, 1, -1] if o % 2 == 0 else [-1, 1, -1, 1, -1, 1]
        w2[o] += rng.normal(0, 0.01, w2[o].shape)
    b2 = np.zeros(4, np.float32)
    w3 = np.array([[-2.0, 2.0, -2.0, 2.0], [2.0, -2.0, 2.0, -2.0]], np.float32)[:, :, None, None, None]
    b3 = np.zeros(2, np.float32)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.ravel())
             for n, a in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("w3", w3), ("b3", b3))]
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1] * 6),
             helper.make_node("LeakyRelu", ["c1"], ["a1"], alpha=0.01),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], pads=[1] * 6),
             helper.make_node("LeakyRelu", ["c2"], ["a2"], alpha=0.01),
             helper.make_node("Conv", ["a2", "w3", "b3"], ["logits"])]
    graph = helper.make_graph(nodes, "seg", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                          ["b", 1, "z", "y", "x"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 2, "z", "y", "x"])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


META = {"schema_version": 1, "name": "test-seg", "version": "1.0", "task": "segmentation",
        "input": {"modalities": ["CT"], "spatial_dims": 3, "spacing": None, "orientation": None},
        "preprocessing": [{"op": "window", "center": -20, "width": 160}],
        "inference": {"patch_size": PATCH, "overlap": 0.5, "batch_size": 2},
        "output": {"activation": "softmax", "labels": ["background", "lesion"]},
        "metrics": {"dice": 0.9}}


def volume(seed: int) -> tuple[mk.Image, np.ndarray]:
    """A CT-like volume with ellipsoidal lesions (60 HU on -100 HU, 20 HU noise) and its truth."""
    rng = np.random.default_rng(seed)
    shape = (40, 64, 64)
    k, j, i = np.mgrid[:shape[0], :shape[1], :shape[2]]
    truth = np.zeros(shape, bool)
    for _ in range(4):
        c = rng.uniform([8, 12, 12], [32, 52, 52])
        r = rng.uniform(4, 9, 3)
        truth |= ((k - c[0]) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2 + ((i - c[2]) / r[2]) ** 2 < 1
    ct = np.where(truth, 60.0, -100.0) + rng.normal(0, 20, shape)
    return mk.Image(ct.astype(np.int16), spacing=(2.0, 1.0, 1.0)), truth


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def fp32_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("quantize") / "seg.onnx"
    path.write_bytes(mk.write_model_metadata(segmentation_net(), META))
    return path


def test_int8_keeps_dice_within_0005_of_fp32_and_keeps_the_metadata(fp32_path, tmp_path):
    calibration = [volume(seed)[0] for seed in (1, 2)]
    out = mk.inference.quantize(fp32_path, calibration, tmp_path / "seg-int8.onnx", patches_per_image=4,
                                validation=calibration[:1])
    assert out == tmp_path / "seg-int8.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg-int8.onnx"]  # no temporary left behind
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops

    fp32, int8 = mk.Model(fp32_path, threads=1), mk.Model(out, threads=1)
    meta = dict(int8.metadata)
    assert meta.pop("precision") == "int8"
    settings = meta.pop("quantization")
    assert settings["format"] == "QDQ" and settings["calibration_patches"] == 8
    assert settings["calibration_cases"] == 2 and 0.995 <= settings["min_agreement"] <= 1.0
    assert meta == fp32.metadata

    for seed in (10, 11, 12):  # cases calibration never saw
        img, truth = volume(seed)
        d32 = dice(fp32.predict(img).labels.array == 1, truth)
        d8 = dice(int8.predict(img).labels.array == 1, truth)
        assert d32 > 0.9, d32  # the net segments: the comparison means something
        assert abs(d8 - d32) <= 0.005, (seed, d32, d8)


def test_preprocessed_arrays_calibrate_too(fp32_path, tmp_path):
    img, _ = volume(1)
    x = mk.window(img.array, -20, 160).astype(np.float32)[None]
    out = mk.inference.quantize(fp32_path, [x], tmp_path / "a.onnx", patches_per_image=2)
    assert mk.Model(out, threads=1).metadata["quantization"]["calibration_patches"] == 2


def test_corrupt_model_gives_model_error_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(mk.ModelError, match="not a readable ONNX model"):
        mk.inference.quantize(bad, [volume(1)[0]], tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_disagreeing_int8_is_refused_and_nothing_is_written(fp32_path, tmp_path):
    img, _ = volume(1)
    with pytest.raises(mk.ModelError, match="agree with FP32 only to Dice"):
        # one patch of pure background calibrates no foreground range: the INT8 labels collapse
        mk.inference.quantize(fp32_path, [np.zeros((1, *PATCH), np.float32)], tmp_path / "out.onnx",
                              patches_per_image=1, validation=[img])
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("kwargs, exc, message", [
    ({"calibration": []}, ValueError, "calibration is empty"),
    ({"patches_per_image": 0}, ValueError, "patches_per_image"),
    ({"calibrate_method": "kl"}, ValueError, "calibrate_method"),
    ({"min_agreement": 1.5}, ValueError, "min_agreement"),
    ({"calibration": [np.zeros((2, 8, 8), np.float32)]}, ValueError, "preprocessed"),
    ({"calibration": ["ct.nii.gz"]}, TypeError, "must be an Image"),
])
def test_argument_errors(fp32_path, tmp_path, kwargs, exc, message):
    args = {"calibration": [volume(1)[0]], **kwargs}
    with pytest.raises(exc, match=message):
        mk.inference.quantize(fp32_path, args.pop("calibration"), tmp_path / "out.onnx", **args)


def test_an_int8_model_is_not_quantised_again(fp32_path, tmp_path):
    out = mk.inference.quantize(fp32_path, [volume(1)[0]], tmp_path / "a.onnx", patches_per_image=1)
    with pytest.raises(mk.ModelError, match="already int8"):
        mk.inference.quantize(out, [volume(1)[0]], tmp_path / "b.onnx")
    with pytest.raises(mk.ModelError, match="precision"):
        mk.validate_metadata(dict(META, precision="int4"))
