"""Inference: sliding window vs MONAI, exported-model parity, metadata schema, Model errors.

Tolerances: the sliding-window blending itself is compared bit for bit (same float32 operations in
the same order as MONAI); through ONNX Runtime the network outputs differ from PyTorch's by float32
rounding of a different convolution algorithm (~1e-6), hence 1e-5. scikit-learn models are
exported with double inputs, so their probabilities agree to 1e-6.
"""

from __future__ import annotations

import io
import json
import threading
import warnings

import numpy as np
import pytest
from scipy import ndimage

import medkern as mk
from medkern.inference import reorient

from _helpers import random_direction

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

# ----------------------------------------------------------------------------- small ONNX graphs


def pointwise_model(in_channels: int = 1, spatial_dims: int = 3, rank: int | None = None) -> bytes:
    """logits = [x, -x] summed over input channels: softmax class 1 = sigmoid(-2 x)."""
    rank = rank or spatial_dims + 2
    w = np.zeros((2, in_channels) + (1,) * spatial_dims, np.float32)
    w[0], w[1] = 1.0, -1.0
    shape = ["b", in_channels] + [None] * (rank - 2)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"])], "pointwise",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 2] + [None] * (rank - 2))],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def classifier_model(in_channels: int = 1) -> bytes:
    """Class logits = (mean intensity, -mean intensity) of the patch."""
    w = np.array([[1.0] * in_channels, [-1.0] * in_channels], np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1)], "classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", in_channels, None, None, None])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def metadata(**changes) -> dict:
    meta = {
        "schema_version": 1, "name": "test-seg", "task": "segmentation",
        "input": {"modalities": ["CT"], "spatial_dims": 3, "spacing": None, "orientation": "SPL"},
        "preprocessing": [{"op": "scale", "scale": 0.01}],
        "inference": {"patch_size": [8, 16, 16], "overlap": 0.5, "batch_size": 3},
        "output": {"activation": "softmax", "labels": ["background", "object"]},
        "licence": "test", "intended_use": "tests",
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            meta[section][field] = value
        else:
            meta[section] = value
    return meta


@pytest.fixture(scope="module")
def seg_model() -> mk.Model:
    return mk.Model(mk.write_model_metadata(pointwise_model(), metadata()))


@pytest.fixture
def ct_image(rng) -> mk.Image:
    direction = np.eye(3)[:, ::-1]
    return mk.Image(rng.normal(0, 100, (13, 29, 22)).astype(np.float32), (2.0, 1.5, 1.5), (5, -3, 7), direction)


# ----------------------------------------------------------------------------- torch / MONAI


@pytest.fixture(scope="module")
def torch_unet(tmp_path_factory):
    """A monai UNet (seeded) and its ONNX export, shared by the module (torch import is slow)."""
    torch = pytest.importorskip("torch")
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    net = nets.UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
                    num_res_units=1).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(net, (torch.zeros(1, 1, 16, 16, 16),), buf, input_names=["image"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"image": {0: "b", 2: "z", 3: "y", 4: "x"},
                                        "logits": {0: "b", 2: "z", 3: "y", 4: "x"}})
    return torch, net, buf.getvalue()


def _monai(torch, net, x, roi, **kwargs):
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        return sliding_window_inference(torch.from_numpy(x), roi, predictor=net, **kwargs).numpy()


@pytest.mark.parametrize("shape, roi, overlap, blend, padding, batch", [
    ((2, 1, 37, 45, 30), (16, 24, 16), 0.5, "gaussian", "constant", 4),
    ((1, 1, 12, 50, 21), (16, 24, 24), 0.25, "constant", "constant", 3),
    ((1, 1, 20, 14, 33), (16, 16, 16), 0.6, "gaussian", "replicate", 1),
])
def test_sliding_window_matches_monai_onnx_unet(torch_unet, rng, shape, roi, overlap, blend, padding, batch):
    torch, net, onnx_bytes = torch_unet
    x = rng.normal(size=shape).astype(np.float32)
    ref = _monai(torch, net, x, roi, sw_batch_size=batch, overlap=overlap, mode=blend,
                 sigma_scale=0.125, padding_mode=padding)
    got = mk.sliding_window(x, mk.Model(onnx_bytes), roi, overlap, blend, 0.125, batch, padding)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_sliding_window_blending_is_bit_exact_with_monai(torch_unet, rng):
    """Same predictor (PyTorch) on both sides: the blending agrees to the last bit (these patch
    sizes have identical weight maps; see test_importance_map_equals_monai)."""
    torch, _, _ = torch_unet
    conv = torch.nn.Conv3d(2, 3, 3, padding=1)
    x = rng.normal(size=(2, 2, 21, 34, 27)).astype(np.float32)

    def fn(batch):
        with torch.no_grad():
            return conv(torch.from_numpy(batch)).numpy()

    for blend, sigma in (("gaussian", 0.125), ("gaussian", (0.2, 0.1, 0.3)), ("constant", 0.125)):
        ref = _monai(torch, conv, x, (12, 20, 16), sw_batch_size=3, overlap=0.4, mode=blend, sigma_scale=sigma)
        got = mk.sliding_window(x, fn, (12, 20, 16), 0.4, blend, sigma, batch_size=3)
        np.testing.assert_array_equal(got, ref)


def test_sliding_window_2d_and_reflect_padding_match_monai(torch_unet, rng):
    torch, _, _ = torch_unet
    conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def fn(batch):
        with torch.no_grad():
            return conv(torch.from_numpy(batch)).numpy()

    x = rng.normal(size=(1, 1, 70, 19)).astype(np.float32)
    ref = _monai(torch, conv, x, (32, 24), sw_batch_size=4, overlap=0.5, mode="gaussian", padding_mode="reflect")
    got = mk.sliding_window(x[0, 0], fn, (32, 24), padding="reflect")
    assert got.shape == (2, 70, 19)
    np.testing.assert_array_equal(got, ref[0])


def test_importance_map_equals_monai(torch_unet):
    """Same float32 operations as MONAI; only exp differs (libm vs PyTorch's SLEEF): <= 1 ulp."""
    from monai.data.utils import compute_importance_map

    from medkern.inference.sliding import _weight_map

    for roi, sigma in (((96, 96, 96), 0.125), ((1, 17, 32), 0.2), ((5, 8, 3), 0.125)):
        ref = compute_importance_map(roi, "gaussian", sigma).numpy()
        got = _weight_map(roi, "gaussian", (sigma,) * 3)
        np.testing.assert_allclose(got, ref, rtol=2.5e-7, atol=0)
        assert got.min() == ref.min()  # the clamp floor, max(min, 1e-3), is the same value


def test_pytorch_export_parity(torch_unet, rng):
    torch, net, onnx_bytes = torch_unet
    x = rng.normal(size=(2, 1, 24, 32, 16)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    got = mk.Model(onnx_bytes).run(x)[0]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- scikit-learn


@pytest.fixture(scope="module")
def radiomics_features():
    """Radiomics-like features: volume, intensity moments, texture and shape proxies, 2 classes."""
    rng = np.random.default_rng(7)
    n = 160
    label = rng.integers(0, 2, n)
    volume = rng.lognormal(3 + label, 0.5)
    mean = rng.normal(40 + 15 * label, 10)
    std = rng.gamma(4 + 2 * label, 5)
    entropy = rng.normal(4 + 0.5 * label, 0.4)
    sphericity = np.clip(rng.normal(0.8 - 0.1 * label, 0.08), 0.3, 1)
    contrast = rng.gamma(2 + label, 3)
    x = np.stack([np.log(volume), mean, std, entropy, sphericity, contrast], axis=1)
    return x, label


# scikit-learn 1.9 deprecates SVC(probability=True) in favour of CalibratedClassifierCV; Platt
# scaling inside the SVC is still what deployed radiomics models use, and what skl2onnx converts.
@pytest.mark.filterwarnings("ignore:.*(probability|probA_|probB_).*deprecated:FutureWarning")
@pytest.mark.parametrize("kind", ["svc", "random_forest"])
def test_sklearn_export_predict_proba(radiomics_features, kind):
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import DoubleTensorType
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    x, y = radiomics_features
    clf = (make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)) if kind == "svc"
           else RandomForestClassifier(n_estimators=25, max_depth=6, random_state=0))
    clf.fit(x[:120], y[:120])
    proto = skl2onnx.convert_sklearn(clf, initial_types=[("features", DoubleTensorType([None, x.shape[1]]))],
                                     options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    model = mk.Model(proto.SerializeToString(), providers="cpu")
    assert model.metadata is None and [o.name for o in model.outputs] == ["label", "probabilities"]
    labels, proba = model.run(x[120:])
    np.testing.assert_allclose(proba, clf.predict_proba(x[120:]), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(labels, clf.predict(x[120:]))


# ----------------------------------------------------------------------------- sliding window


def test_sliding_window_serial_equals_threaded(rng):
    x = rng.normal(size=(2, 23, 40, 31)).astype(np.float32)

    def fn(b):
        return np.concatenate([b.sum(1, keepdims=True), np.tanh(b[:, :1])], axis=1)

    before = mk.get_num_threads()
    try:
        mk.set_num_threads(1)
        serial = mk.sliding_window(x, fn, (16, 16, 16))
        mk.set_num_threads(4)
        threaded = mk.sliding_window(x, fn, (16, 16, 16))
    finally:
        mk.set_num_threads(before)
    np.testing.assert_array_equal(serial, threaded)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "float32", "float64"])
def test_sliding_window_identity_is_exact_for_every_dtype(rng, dtype):
    """Blending copies of the input gives the input back (weights sum to 1 up to rounding)."""
    x = rng.integers(0, 200, size=(19, 33, 26)).astype(dtype)
    out = mk.sliding_window(x, lambda b: b, (8, 16, 12), overlap=0.5)
    assert out.shape == (1,) + x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[0], x.astype(np.float32), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("kwargs, exc, message", [
    ({"roi_size": (0, 8, 8)}, ValueError, "roi_size must be positive"),
    ({"roi_size": (8, 8, 8, 8)}, ValueError, "spatial_dims must be 2 or 3"),
    ({"roi_size": (8, 8), "spatial_dims": 3}, ValueError, "1 or 3 values"),
    ({"overlap": 1.0}, ValueError, r"overlap must be in \[0, 1\)"),
    ({"blend": "linear"}, ValueError, "blend must be 'gaussian' or 'constant'"),
    ({"sigma_scale": 0.0}, ValueError, "sigma_scale must be positive"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
    ({"padding": "zeros"}, ValueError, "padding must be one of"),
    ({"fn": 3}, TypeError, "fn must be callable"),
    ({"fn": lambda b: b[:, :, :4]}, ValueError, r"expected \(batch, channels, \*roi_size\)"),
])
def test_sliding_window_errors(rng, kwargs, exc, message):
    args = {"array": rng.normal(size=(10, 12, 14)), "fn": lambda b: b, "roi_size": (8, 8, 8)}
    args.update(kwargs)
    if "spatial_dims" in args and "roi_size" in kwargs:
        args["spatial_dims"] = kwargs["spatial_dims"]
    with pytest.raises(exc, match=message):
        mk.sliding_window(**args)


def test_sliding_window_array_errors():
    with pytest.raises(TypeError, match="must be numeric"):
        mk.sliding_window(np.zeros((4, 4, 4), bool), lambda b: b, (2, 2, 2))
    with pytest.raises(ValueError, match="empty"):
        mk.sliding_window(np.zeros((0, 4, 4), np.float32), lambda b: b, (2, 2, 2))
    with pytest.raises(ValueError, match=r"\(N, C, \*spatial\)"):
        mk.sliding_window(np.zeros((1, 1, 1, 4, 4, 4), np.float32), lambda b: b, (2, 2, 2))
    x = np.zeros((6, 6, 6), np.float32)
    with pytest.raises(ValueError, match=r"fn returned shape \(2, 1, 4, 4\)"):
        mk.sliding_window(x, lambda b: b[:, :, 0], (4, 4, 4), batch_size=2)
    with pytest.raises(ValueError, match=r"fn returned 1 patch predictions for a batch of shape \(2, 1, 4, 4, 4\)"):
        mk.sliding_window(x, lambda b: b[:1], (4, 4, 4), batch_size=2)
    calls = []

    def growing(b):  # one more output channel on every call
        calls.append(1)
        return np.concatenate([b] * len(calls), axis=1)

    with pytest.raises(ValueError, match="fn returned 2 channels, earlier 1"):
        mk.sliding_window(x, growing, (4, 4, 4), batch_size=1)


@pytest.mark.parametrize("channels", [1, 2, 5])
def test_channel_argmax_matches_numpy(rng, channels):
    from medkern import _core

    # Quantised values make ties common: the first channel must win them, as in numpy.argmax.
    prob = np.round(rng.random((channels, 7, 33, 65)) * 4).astype(np.float32) / 4
    for threads in (1, 2):
        np.testing.assert_array_equal(_core.channel_argmax(prob, None, threads), np.argmax(prob, axis=0))
        above = prob >= 0.5
        expected = np.where(above.any(0), np.argmax(np.where(above, prob, -np.inf), axis=0) + 1, 0)
        np.testing.assert_array_equal(_core.channel_argmax(prob, 0.5, threads), expected)
    with pytest.raises(ValueError, match="at least one channel"):
        _core.channel_argmax(np.zeros((0, 4), np.float32), None, 1)
    with pytest.raises(ValueError, match="fit uint8 labels"):
        _core.channel_argmax(np.zeros((256, 4), np.float32), 0.5, 1)


@pytest.mark.parametrize("ndim", [2, 3])
def test_component_probability_sums_match_bincount(rng, ndim):
    """Voxel counts and own-label probability sums per component (channel = label - first,
    clamped) against numpy.bincount, the same bits; on a strided box view; bad input refused."""
    from medkern import _core
    from medkern._segment import label as connected

    shape = (9, 14, 11)[-ndim:]
    labels = ((rng.random(shape) > 0.6) * rng.integers(1, 4, shape)).astype(np.int16)
    components, n = connected(labels)
    prob = rng.random((12, 16, 13, 3)[-ndim - 1:]).astype(np.float32)
    box = tuple(slice(1, 1 + s) for s in shape)
    for first in (0, 1):
        counts, sums = _core.component_probability_sums(components, labels, prob[box], first, n)
        fg = labels.ravel() != 0
        comp = components.ravel()[fg]
        channel = np.clip(labels.ravel()[fg].astype(np.intp) - first, 0, 2)
        own = prob[box].reshape(-1, 3)[np.flatnonzero(fg), channel]
        np.testing.assert_array_equal(counts[1:], np.bincount(comp, minlength=n + 1)[1:])
        np.testing.assert_array_equal(sums[1:], np.bincount(comp, weights=own, minlength=n + 1)[1:])
    with pytest.raises(ValueError, match="one shape"):
        _core.component_probability_sums(components, labels[:-1], prob[box][:-1], 0, n)
    with pytest.raises(ValueError, match="float32"):
        _core.component_probability_sums(components, labels, prob[box].astype(np.float64), 0, n)
    with pytest.raises(ValueError, match="channel axis"):
        _core.component_probability_sums(components, labels, prob[box][..., 0], 0, n)
    with pytest.raises(ValueError, match="number of components"):
        _core.component_probability_sums(components, labels, prob[box], 0, -1)


@pytest.mark.parametrize("planes", [1, 2, 4])
@pytest.mark.parametrize("complement", [False, True])
def test_interleave_channels_matches_numpy(rng, planes, complement):
    """The vector image of a prediction: the planes as channels (after the complement channel,
    1 minus their float32 sum in channel order), the same bits as numpy, with 1 and 2 threads."""
    from medkern import _core

    channels = [rng.random((5, 37, 41)).astype(np.float32) / planes for _ in range(planes)]
    expected = np.stack(([np.float32(1) - np.sum(np.stack(channels, -1), -1, dtype=np.float32)] if complement
                         else []) + channels, axis=-1)
    for threads in (1, 2):
        got = _core.interleave_channels(channels, complement, threads)
        assert got.dtype == np.float32 and got.shape == (5, 37, 41, planes + complement)
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="one shape"):
        _core.interleave_channels([channels[0], channels[0][:2]], True, 1)
    with pytest.raises(ValueError, match="at least one channel"):
        _core.interleave_channels([], True, 1)


@pytest.mark.parametrize("channels", [1, 2, 5])
def test_softmax_and_sigmoid_kernels_match_float64(rng, channels):
    from medkern import _core

    logits = (rng.normal(size=(channels, 5, 40, 70)) * 30).astype(np.float32)
    logits.flat[:5] = [0.0, -87.5, 88.0, 1e-30, -np.inf]
    with np.errstate(invalid="ignore"):  # one channel at -inf: -inf - -inf is NaN on both sides
        ref = np.exp(logits - logits.max(0)) / np.exp(logits.astype(np.float64) - logits.max(0)).sum(0)
    got = logits.copy()
    _core.activate(got, "softmax", 2)
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-30)
    x = np.concatenate([np.linspace(-120, 120, 20001, dtype=np.float32),
                        np.array([0.0, -0.0, np.inf, -np.inf, 1e-8, -1e-8], np.float32)])[None]
    expected = 1 / (1 + np.exp(-x.astype(np.float64)))
    got = x.copy()
    _core.activate(got, "sigmoid", 1)
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-37)
    nan = np.full((2, 3), np.nan, np.float32)
    _core.activate(nan, "softmax", 1)
    assert np.isnan(nan).all()
    with pytest.raises(TypeError, match="writable C-contiguous float32"):
        _core.activate(np.zeros((2, 4)), "softmax", 1)
    with pytest.raises(ValueError, match="activation must be"):
        _core.activate(np.zeros((2, 4), np.float32), "relu", 1)


# ----------------------------------------------------------------------------- graph rewrites


def prelu_model() -> bytes:
    """PRelu slopes in every form an exporter writes: one-element initializer, the same behind
    an Identity, a Constant node, a per-channel slope and an overridable (graph input) slope."""
    init = [helper.make_tensor("s1", TensorProto.FLOAT, [1, 1, 1, 1], [0.25]),
            helper.make_tensor("s_pc", TensorProto.FLOAT, [2, 1, 1], [0.1, 0.3]),
            helper.make_tensor("s_in", TensorProto.FLOAT, [1], [0.7])]
    nodes = [helper.make_node("Identity", ["s1"], ["s1_shared"]),
             helper.make_node("Constant", [], ["s_const"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [0.5])),
             helper.make_node("PRelu", ["x", "s1"], ["a"]),
             helper.make_node("PRelu", ["a", "s1_shared"], ["b"]),
             helper.make_node("PRelu", ["b", "s_const"], ["c"]),
             helper.make_node("PRelu", ["c", "s_pc"], ["d"]),
             helper.make_node("PRelu", ["d", "s_in"], ["y"])]
    graph = helper.make_graph(
        nodes, "prelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2, None, None]),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2, None, None])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_prelu_with_one_slope_becomes_leaky_relu_bit_exactly(rng):
    import onnxruntime as ort

    from medkern.inference.graph import optimize_graph

    proto = onnx.load_model_from_string(prelu_model())
    assert optimize_graph(proto) == 3
    assert [n.op_type for n in proto.graph.node if "Relu" in n.op_type] == ["LeakyRelu"] * 3 + ["PRelu"] * 2
    onnx.checker.check_model(proto)
    x = rng.normal(size=(3, 2, 9, 11)).astype(np.float32) * 10
    x.flat[:5] = [0.0, -0.0, np.inf, -np.inf, np.nan]
    x.flat[5:8] = [1e-40, -1e-40, -3.4e38]  # subnormals and the float32 extreme
    feeds = {"x": x, "s_in": np.array([0.7], np.float32)}
    original = ort.InferenceSession(prelu_model(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    rewritten = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(rewritten.view(np.uint32), original.view(np.uint32))
    # The overridable slope stays a PRelu input: feeding another value still changes the output.
    other = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "s_in": np.array([0.5], np.float32)})[0]
    assert not np.array_equal(other, original, equal_nan=True)
    model = mk.Model(prelu_model())
    assert isinstance(model._onnx._source, bytes)
    np.testing.assert_array_equal(model.run(x)[0].view(np.uint32), original.view(np.uint32))


def test_models_without_rewrites_load_untouched(tmp_path, rng):
    path = tmp_path / "pointwise.onnx"
    path.write_bytes(pointwise_model())
    assert mk.Model(path)._onnx._source == str(path)
    assert mk.Model(pointwise_model())._onnx._source == pointwise_model()
    # Weights in an external file are found relative to the model's path, so such a model is
    # handed to ONNX Runtime by path, as it is, and still runs.
    from onnx import numpy_helper

    proto = onnx.load_model_from_string(prelu_model())
    for t in proto.graph.initializer:  # only raw-data tensors can move to an external file
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
    onnx.save_model(proto, tmp_path / "external.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="external.bin", size_threshold=0)
    model = mk.Model(tmp_path / "external.onnx")
    assert (tmp_path / "external.bin").is_file() and model._onnx._source == str(tmp_path / "external.onnx")
    x = rng.normal(size=(1, 2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(model.run(x)[0], mk.Model(prelu_model()).run(x)[0])


def test_monai_unet_export_is_rewritten(torch_unet):
    """MONAI's UNet uses torch.nn.PReLU() throughout: every activation gets the faster kernel,
    and both up-convolutions (4 and 2 output channels here) their sub-pixel form."""
    from medkern.inference.graph import optimize_graph

    proto = onnx.load_model_from_string(torch_unet[2])
    n_prelu = sum(n.op_type == "PRelu" for n in proto.graph.node)
    n_up = sum(n.op_type == "ConvTranspose" for n in proto.graph.node)
    assert n_prelu > 0 and n_up == 2 and optimize_graph(proto) == n_prelu + n_up
    assert not {"PRelu", "ConvTranspose"} & {n.op_type for n in proto.graph.node}
    names = {t.name for t in proto.graph.initializer}
    assert all(i in names or i == "" or any(i in n.output for n in proto.graph.node) or i == "image"
               for n in proto.graph.node for i in n.input)


def conv_transpose_model(rng, ndim, c_in, c_out, kernel, stride, pad, out_pad, bias) -> bytes:
    w = rng.normal(size=(c_in, c_out) + (kernel,) * ndim).astype(np.float32)
    inits = [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())]
    if bias:
        inits.append(helper.make_tensor("b", TensorProto.FLOAT, [c_out], rng.normal(size=c_out).astype(np.float32)))
    node = helper.make_node("ConvTranspose", ["x", "w"] + (["b"] if bias else []), ["y"],
                            kernel_shape=[kernel] * ndim, strides=[stride] * ndim, pads=[pad] * (2 * ndim),
                            output_padding=[out_pad] * ndim)
    graph = helper.make_graph(
        [node], "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c_in] + [None] * ndim)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", c_out] + [None] * ndim)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("ndim, c_in, c_out, kernel, stride, pad, out_pad, bias, rewritten", [
    (3, 16, 2, 3, 2, 1, 1, True, True),    # MONAI UNet head
    (3, 5, 3, 2, 2, 0, 0, False, True),    # nnU-Net / UNETR style k = s = 2
    (2, 4, 1, 4, 2, 1, 0, True, True),
    (2, 3, 2, 3, 3, 0, 0, True, True),     # stride 3
    (1, 6, 4, 5, 2, 2, 1, False, True),
    (3, 4, 8, 3, 2, 1, 1, True, False),    # too many output channels
    (2, 3, 2, 3, 2, 0, 0, True, False),    # output not stride x input
    (2, 3, 2, 3, 1, 1, 0, True, False),    # not strided
])
def test_conv_transpose_subpixel_rewrite(rng, ndim, c_in, c_out, kernel, stride, pad, out_pad, bias, rewritten):
    import onnxruntime as ort

    from medkern.inference.graph import optimize_graph

    source = conv_transpose_model(rng, ndim, c_in, c_out, kernel, stride, pad, out_pad, bias)
    old = onnx.load_model_from_string(source)
    old.opset_import[0].version = 11  # before the opset this rewrite is tested with: left alone
    assert optimize_graph(old) == 0
    proto = onnx.load_model_from_string(source)
    assert optimize_graph(proto) == int(rewritten)
    if not rewritten:
        return
    onnx.checker.check_model(proto)
    assert "ConvTranspose" not in {n.op_type for n in proto.graph.node}
    for shape in [(2, c_in, 7, 9, 6), (1, c_in, 1, 4, 11)]:
        x = rng.normal(size=shape[:2 + ndim]).astype(np.float32)
        ref = ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert got.shape == ref.shape
        # Same products, summed in another order: float32 rounding of sums of size ~c_in * kernel**ndim.
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_run_independent_equals_one_batched_run(torch_unet, rng, threads):
    model = mk.Model(torch_unet[2], threads=threads)
    for items in (1, 2, 3, 5):
        x = rng.normal(size=(items, 1, 16, 16, 24)).astype(np.float32)
        # Equal up to float32 rounding: ONNX Runtime's convolutions split the work differently
        # for other thread counts and batch sizes, as model(x) itself does for another `threads`.
        np.testing.assert_allclose(model.run_independent(x), model(x), rtol=0, atol=1e-5)
    with pytest.raises(mk.ModelError, match="needs size 1 on axis 1"):
        model.run_independent(np.zeros((4, 2, 16, 16, 16), np.float32))


# ----------------------------------------------------------------------------- metadata


def test_metadata_round_trip_path_bytes_proto(tmp_path):
    raw = pointwise_model()
    path = tmp_path / "m.onnx"
    path.write_bytes(raw)
    assert mk.write_model_metadata(path, metadata()) == path
    from_path = mk.Model(path).metadata
    from_bytes = mk.Model(mk.write_model_metadata(raw, metadata())).metadata
    proto = mk.write_model_metadata(onnx.load_model_from_string(raw), metadata())
    assert from_path == from_bytes == mk.Model(proto.SerializeToString()).metadata
    assert from_path == mk.validate_metadata(metadata())
    assert from_path["inference"]["blend"] == "gaussian" and from_path["output"]["threshold"] == 0.5
    # Writing again replaces the entry instead of adding a second one.
    mk.write_model_metadata(path, metadata(name="renamed"))
    assert [p.key for p in onnx.load(str(path)).metadata_props] == ["medkern"]
    assert mk.Model(path).metadata["name"] == "renamed"


@pytest.mark.parametrize("meta, message", [
    ([], "must be a JSON object"),
    ({k: v for k, v in metadata().items() if k != "schema_version"}, "schema_version is missing"),
    (metadata(schema_version=2), "schema_version is 2; this medkern reads version 1"),
    (metadata(task="regression"), "task must be one of"),
    (metadata(name=""), "name is missing"),
    ({k: v for k, v in metadata().items() if k != "input"}, "input is missing"),
    (metadata(input__modalities=[]), "input.modalities must be a non-empty list"),
    (metadata(input__channels=2), "input.channels is 2 but input.modalities names 1"),
    (metadata(input__spatial_dims=4), "input.spatial_dims must be 2 or 3"),
    (metadata(input__spacing=[1.0, 1.0]), r"input.spacing must be a list of 3 values"),
    (metadata(input__spacing=[1.0, -1.0, 1.0]), r"input.spacing\[1\] must be positive"),
    (metadata(input__orientation="SPP"), "input.orientation must name one LPS direction"),
    (metadata(preprocessing=[{"op": "gamma"}]), r"preprocessing\[0\] must be an object whose 'op'"),
    (metadata(preprocessing=[{"op": "window", "center": 40}]), r"preprocessing\[0\].width is missing"),
    (metadata(preprocessing=[{"op": "window", "center": 40, "width": -1}]), "width must be positive"),
    (metadata(preprocessing=[{"op": "clip", "low": 5, "high": 1}]), "needs low < high"),
    (metadata(preprocessing=[{"op": "zscore", "mask": "brain"}]), "mask must be one of"),
    (metadata(preprocessing=[{"op": "scale", "scale": 1, "channel": 0}]), "unknown field"),
    (metadata(preprocessing=[{"op": "scale", "scale": 1, "channels": [1]}]), "channel indices in"),
    (metadata(inference={"overlap": 0.5}), "inference.patch_size is missing"),
    (metadata(inference={"patch_size": [8, 8]}), "inference.patch_size must be a list of 3"),
    (metadata(inference={"patch_size": [8, 8, 8], "overlap": 1.5}), r"overlap must be in \[0, 1\)"),
    (metadata(inference={"patch_size": [8, 8, 8], "padding": "zeros"}), "inference.padding must be one of"),
    (metadata(output={"activation": "relu", "labels": ["a"]}), "output.activation must be one of"),
    (metadata(output={"activation": "sigmoid", "labels": "lesion"}), "output.labels must be a non-empty list"),
    (metadata(output={"activation": "sigmoid", "labels": ["l"], "threshold": 1.5}), r"threshold must be in \(0, 1\)"),
    (metadata(metrics=[0.9]), "metrics must be an object"),
    (metadata(postprocessing={"op": "remove_small"}), "postprocessing must be a list"),
    (metadata(postprocessing=[{"op": "dilate"}]), r"postprocessing\[0\] must be an object whose 'op'"),
    (metadata(postprocessing=[{"op": "remove_small"}]), r"postprocessing\[0\].min_volume_mm3 is missing"),
    (metadata(postprocessing=[{"op": "remove_small", "min_volume_mm3": -1}]), "must be >= 0"),
    (metadata(postprocessing=[{"op": "keep_top", "n": 0}]), r"postprocessing\[0\].n must be an integer >= 1"),
    (metadata(postprocessing=[{"op": "keep_top", "n": 1, "by": "size"}]), "by must be one of"),
    (metadata(postprocessing=[{"op": "keep_top", "n": 1, "k": 2}]), "unknown field"),
    (metadata(task="classification", postprocessing=[{"op": "keep_top", "n": 1}]), "dense"),
    (metadata(postprocessing=[{"op": "classify_components", "features": [], "weights": [], "bias": 0}]),
     r"postprocessing\[0\].features must be a non-empty list"),
    (metadata(postprocessing=[{"op": "classify_components", "features": ["roundness"], "weights": [1],
                               "bias": 0}]), r"features\[0\] must be one of"),
    (metadata(postprocessing=[{"op": "classify_components", "features": ["elongation", "elongation"],
                               "weights": [1, 1], "bias": 0}]), "names a feature twice"),
    (metadata(postprocessing=[{"op": "classify_components", "features": ["elongation"], "weights": [1, 2],
                               "bias": 0}]), r"weights must be a list of 1 numbers"),
    (metadata(postprocessing=[{"op": "classify_components", "features": ["elongation"], "weights": ["1"],
                               "bias": 0}]), r"weights\[0\]"),
    (metadata(postprocessing=[{"op": "classify_components", "features": ["elongation"], "weights": [1],
                               "bias": float("nan")}]), r"\.bias"),
    (metadata(postprocessing=[{"op": "classify_components", "features": ["elongation"], "weights": [1],
                               "bias": 0, "min_score": 1.5}]), r"min_score"),
    (metadata(postprocessing=[{"op": "classify_components", "features": ["elongation"], "weights": [1]}]),
     r"\.bias is missing"),
    (metadata(input__spatial_dims=2, input__orientation="PL", inference={"patch_size": [16, 16]},
              postprocessing=[{"op": "classify_components", "features": ["flatness"], "weights": [1], "bias": 0}]),
     "needs a 3D model"),
    (metadata(postprocessing=[{"op": "classify_components", "features": ["shell_p10_intensity"], "weights": [1],
                               "bias": 0, "shell_mm": 0}]), r"shell_mm must be positive"),
    (metadata(postprocessing=[{"op": "classify_components", "features": ["shell_p10_intensity"], "weights": [1],
                               "bias": 0, "shell_mm": 80.0}]), r"shell_mm must be at most 50"),
    (metadata(metrics={"dice": float("nan")}), "not JSON-serialisable"),
])
def test_metadata_validation_errors(meta, message):
    with pytest.raises(mk.ModelError, match=message):
        mk.validate_metadata(meta)
    if isinstance(meta, dict):
        with pytest.raises(mk.ModelError, match=message):
            mk.write_model_metadata(pointwise_model(), meta)


def _with_raw_metadata(raw: bytes, text: str) -> bytes:
    proto = onnx.load_model_from_string(raw)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "medkern", text
    return proto.SerializeToString()


def test_model_error_not_onnx_truncated_empty(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    with pytest.raises(mk.ModelError, match="not a readable ONNX model"):
        mk.Model(text)
    raw = mk.write_model_metadata(pointwise_model(), metadata())
    with pytest.raises(mk.ModelError, match="not a readable ONNX model"):
        mk.Model(raw[: len(raw) // 2])
    with pytest.raises(mk.ModelError, match="is empty"):
        mk.Model(b"")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(mk.ModelError, match="empty.onnx is empty"):
        mk.Model(tmp_path / "empty.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(raw[: len(raw) - 7])
    with pytest.raises(mk.ModelError, match="truncated.onnx is not a readable ONNX model"):
        mk.Model(truncated)
    with pytest.raises(mk.ModelError, match="not a readable ONNX model"):
        mk.write_model_metadata(b"\x00garbage" * 10, metadata())
    with pytest.raises(FileNotFoundError, match="no model file"):
        mk.Model(tmp_path / "absent.onnx")
    with pytest.raises(TypeError, match="path or bytes"):
        mk.Model(42)


def test_model_error_metadata_in_file_is_checked():
    with pytest.raises(mk.ModelError, match="not valid JSON"):
        mk.Model(_with_raw_metadata(pointwise_model(), "{not json"))
    with pytest.raises(mk.ModelError, match="output is missing"):
        bad = {k: v for k, v in metadata().items() if k != "output"}
        mk.Model(_with_raw_metadata(pointwise_model(), json.dumps(bad)))


def test_model_error_wrong_rank_and_channels():
    with pytest.raises(mk.ModelError, match="has rank 4, but the metadata describes 3D images"):
        mk.write_model_metadata(pointwise_model(spatial_dims=2), metadata())
    with pytest.raises(mk.ModelError, match="has rank 4, but the metadata describes 3D images"):
        mk.Model(_with_raw_metadata(pointwise_model(spatial_dims=2), json.dumps(metadata())))
    two = metadata(input__modalities=["T1", "T2"])
    with pytest.raises(mk.ModelError, match=r"takes 1 channel\(s\), but the metadata lists 2"):
        mk.write_model_metadata(pointwise_model(in_channels=1), two)
    with pytest.raises(mk.ModelError, match=r"takes 1 channel\(s\), but the metadata lists 2"):
        mk.Model(_with_raw_metadata(pointwise_model(in_channels=1), json.dumps(two)))


def test_model_error_missing_metadata_on_predict(ct_image):
    bare = mk.Model(pointwise_model())
    assert bare.metadata is None
    with pytest.raises(mk.ModelError, match="has no medkern metadata"):
        bare.predict(ct_image)


def test_model_error_wrong_inputs_to_predict_and_run(seg_model, ct_image, rng):
    with pytest.raises(mk.ModelError, match=r"takes 1 channel image\(s\) \(CT\), got 2"):
        seg_model.predict(ct_image, ct_image)
    with pytest.raises(mk.ModelError, match="takes 3D scalar images"):
        seg_model.predict(mk.Image(np.zeros((8, 8), np.float32)))
    with pytest.raises(TypeError, match="must be an mk.Image"):
        seg_model.predict(np.zeros((8, 8, 8), np.float32))
    with pytest.raises(mk.ModelError, match=r"input 'image' has rank 5"):
        seg_model.run(np.zeros((1, 8, 8, 8), np.float32))
    with pytest.raises(mk.ModelError, match="needs size 1 on axis 1"):
        seg_model.run(np.zeros((1, 2, 8, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"takes 1 input\(s\)"):
        seg_model.run()


def test_model_error_spacing_mismatch_between_channels(rng):
    two = mk.Model(mk.write_model_metadata(pointwise_model(in_channels=2),
                                           metadata(input__modalities=["T1", "T2"])))
    t1 = mk.Image(rng.normal(size=(10, 12, 12)).astype(np.float32), (2.0, 1.0, 1.0))
    t2 = mk.Image(rng.normal(size=(10, 12, 12)).astype(np.float32), (2.0, 1.2, 1.0))
    with pytest.raises(mk.ModelError, match="channel images must share one grid"):
        two.predict(t1, t2)
    out = two.predict(t1, t1.with_array(-t1.array))  # [x, -x] channels: logits cancel
    np.testing.assert_allclose(out.probabilities.array, 0.5, atol=1e-6)


def _two_channel(modalities=("CT", "PT"), antialias=False) -> mk.Model:
    """logits = [x1 + x2, -(x1 + x2)] of the scaled channels: class 0 = sigmoid(0.02 (x1 + x2))."""
    return mk.Model(mk.write_model_metadata(pointwise_model(in_channels=2),
                                            metadata(input__modalities=list(modalities), input__antialias=antialias)))


def _sitk_linear_onto(img: mk.Image, reference: mk.Image) -> np.ndarray:
    """SimpleITK's linear resampling of ``img`` onto ``reference``'s grid (0 outside)."""
    sitk = pytest.importorskip("SimpleITK")
    out = sitk.Resample(img.to_sitk(), reference.to_sitk(), sitk.Transform(), sitk.sitkLinear, 0.0,
                        sitk.sitkFloat64)
    return mk.Image.from_sitk(out).array


def test_predict_mapping_same_grid_is_the_positional_call(ct_image, rng):
    model = _two_channel()
    pet = ct_image.with_array(rng.normal(0, 50, ct_image.shape).astype(np.float32))
    positional = model.predict(ct_image, pet)
    mapped = model.predict({"PT": pet, "CT": ct_image})  # keys in any order; the metadata's order counts
    np.testing.assert_array_equal(mapped.probabilities.array, positional.probabilities.array)
    np.testing.assert_array_equal(mapped.labels.array, positional.labels.array)


def test_predict_mapping_resamples_the_secondary_like_simpleitk(ct_image, rng):
    """A PET on its own coarser, shifted grid in the CT's frame: resampled onto the CT's model
    grid (here the CT grid itself, input.spacing None), equal to SimpleITK linear resampling."""
    model = _two_channel()
    pet = mk.Image(rng.normal(0, 50, (9, 14, 12)).astype(np.float32), (3.0, 3.0, 2.5),
                   np.asarray(ct_image.origin) + (1.2, -0.7, 0.4), ct_image.direction)
    with pytest.raises(mk.ModelError, match="does not record its frame of reference"):
        model.predict({"CT": ct_image, "PT": pet})
    # the PET is never finer than the CT here, so no anti-aliasing smooths it
    out = model.predict({"CT": ct_image, "PT": pet}, same_frame=True)
    pet_on_ct = _sitk_linear_onto(pet, ct_image)
    expected = 1.0 / (1.0 + np.exp(-0.02 * (ct_image.array.astype(np.float64) + pet_on_ct)))
    np.testing.assert_allclose(out.probability("background").array, expected, atol=2e-5)
    assert out.labels.same_geometry(ct_image)


def test_predict_mapping_antialiases_a_finer_secondary(rng):
    """A secondary twice as fine per axis as the model grid is smoothed with resample's sigma
    ((scale - 1) / 2 voxels, mirror) before the linear sampling when the metadata asks for
    anti-aliasing, and sampled as it is when not: scipy.ndimage reference."""
    ct = mk.Image(np.zeros((6, 8, 10), np.float32), (2.0, 2.0, 2.0))
    fine = mk.Image(rng.normal(0, 100, (12, 16, 20)).astype(np.float32), (1.0, 1.0, 1.0), (-0.5, -0.5, -0.5))
    # CT voxel (k, j, i) is world 2 (k, j, i) in this identity frame: fine index 2 (k, j, i) + 0.5
    coords = np.stack(np.meshgrid(*[np.arange(n) * 2.0 + 0.5 for n in ct.shape], indexing="ij"))
    smooth = ndimage.gaussian_filter(fine.array.astype(np.float64), 0.5, mode="mirror", truncate=4.0)
    for antialias, source in ((True, smooth), (False, fine.array.astype(np.float64))):
        out = _two_channel(antialias=antialias).predict({"CT": ct, "PT": fine}, same_frame=True)
        expected = 1.0 / (1.0 + np.exp(-0.02 * ndimage.map_coordinates(source, coords, order=1)))
        np.testing.assert_allclose(out.probability("background").array, expected, atol=2e-5)


def test_predict_mapping_refuses_what_it_cannot_check(ct_image, rng):
    model = _two_channel()
    pet = ct_image.with_array(rng.normal(size=ct_image.shape).astype(np.float32))
    with pytest.raises(mk.ModelError, match=r"missing \['PT'\]"):
        model.predict({"CT": ct_image})
    with pytest.raises(mk.ModelError, match=r"not an input of this model: \['MR'\]"):
        model.predict({"CT": ct_image, "PT": pet, "MR": pet})
    with pytest.raises(TypeError, match="PT must be an mk.Image or an mk.DicomSeries"):
        model.predict({"CT": ct_image, "PT": pet.array})
    far = mk.Image(pet.array, pet.spacing, np.asarray(pet.origin) + 1000.0, pet.direction)
    with pytest.raises(mk.ModelError, match="do not overlap in space"):
        model.predict({"CT": ct_image, "PT": far}, same_frame=True)
    with pytest.raises(mk.ModelError, match="channel images must share one grid"):
        model.predict(ct_image, far)


def test_predict_mapping_compares_dicom_frames_of_reference(tmp_path, rng):
    model = _two_channel(("CT", "MR"))
    ct = mk.Image(rng.integers(-100, 100, (6, 16, 16)).astype(np.int16), (3.0, 1.0, 1.0))
    mr = mk.Image(rng.integers(0, 200, (4, 8, 8)).astype(np.int16), (4.0, 2.0, 2.0), (1.0, 0.5, 0.5))
    mk.write_dicom_series(ct, tmp_path / "ct", modality="CT")
    mk.write_dicom_series(mr, tmp_path / "same", modality="MR", source=tmp_path / "ct", series_number=2)
    mk.write_dicom_series(mr, tmp_path / "other", modality="MR", series_number=3)
    ct_series = mk.list_dicom_series(tmp_path / "ct")[0]
    same = mk.list_dicom_series(tmp_path / "same")[0]
    other = mk.list_dicom_series(tmp_path / "other")[0]
    assert same.frame_of_reference_uid == ct_series.frame_of_reference_uid != other.frame_of_reference_uid
    out = model.predict({"CT": ct_series, "MR": same})  # UIDs checked: no same_frame needed
    vouched = model.predict({"CT": ct_series.read(), "MR": same.read()}, same_frame=True)
    np.testing.assert_array_equal(out.probabilities.array, vouched.probabilities.array)
    with pytest.raises(mk.ModelError, match="different frames of reference"):
        model.predict({"CT": ct_series, "MR": other}, same_frame=True)


def test_model_providers_and_threads():
    with pytest.raises(ValueError, match="providers must be 'auto'"):
        mk.Model(pointwise_model(), providers="gpu")
    with pytest.raises(ValueError, match="not available in this onnxruntime"):
        mk.Model(pointwise_model(), providers=["NoSuchExecutionProvider"])
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        mk.Model(pointwise_model(), threads=0)
    with pytest.raises(ValueError, match="precision must be one of"):
        mk.Model(pointwise_model(), precision="fp16")
    with pytest.raises(ValueError, match="needs providers='openvino'"):
        mk.Model(pointwise_model(), providers="cpu", precision="bf16")
    m = mk.Model(pointwise_model(), providers="cpu", threads=1)
    assert m.providers == ["CPUExecutionProvider"] and m.precision == "fp32"
    assert m.inputs[0].name == "image" and m.inputs[0].shape[1] == 1
    assert m.outputs[0].shape[1] == 2


def test_openvino_provider_items_and_bf16(rng):
    """The OpenVINO provider (onnxruntime-openvino) runs a batch's items one per run with the
    values of the whole batch, and in bfloat16 stays within bf16 rounding of float32 (8-bit
    mantissa: relative 2**-8 per operand)."""
    import onnxruntime as ort

    if "OpenVINOExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-openvino is not installed (it replaces the onnxruntime package)")
    model = mk.Model(mk.write_model_metadata(pointwise_model(), metadata()), providers="openvino", threads=2)
    assert model.providers[0] == "OpenVINOExecutionProvider"
    batch = rng.normal(0, 100, (3, 1, 8, 9, 10)).astype(np.float32)
    whole = model(batch)
    np.testing.assert_allclose(model.run_independent(batch), whole, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(whole[:, 1], -batch[:, 0])
    bf16 = mk.Model(mk.write_model_metadata(pointwise_model(), metadata()), providers="openvino", precision="bf16")
    assert bf16.precision == "bf16"
    np.testing.assert_allclose(bf16(batch), whole, rtol=2 ** -7, atol=1e-2)
    from medkern._cpu import _cpu_flags

    if {"avx512_bf16", "amx_bf16"} & _cpu_flags():  # computed in bfloat16, not float32
        assert np.any(bf16(batch) != whole)


# ----------------------------------------------------------------------------- predict


def test_predict_reorients_preprocesses_and_returns_on_input_grid(seg_model, rng):
    """Oblique, flipped input: the pointwise model's answer is known voxel by voxel."""
    direction = random_direction(rng)
    img = mk.Image(rng.normal(0, 100, (11, 17, 14)).astype(np.float32), (2.0, 1.0, 1.5), (3, 4, 5), direction)
    pred = seg_model.predict(img)
    expected = 1 / (1 + np.exp(2 * 0.01 * img.array.astype(np.float64)))
    assert pred.probabilities.is_vector and pred.probabilities.shape == img.shape
    assert pred.probabilities.same_geometry(img) and pred.labels.same_geometry(img)
    np.testing.assert_allclose(pred.probability("object").array, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pred.probabilities.array.sum(-1), 1, atol=1e-6)
    np.testing.assert_array_equal(pred.labels.array, (expected > 0.5).astype(np.uint8))
    assert pred.labels.dtype == np.uint8 and pred.scores is None
    with pytest.raises(KeyError, match="no output named"):
        pred.probability("tumour")


def test_predict_resamples_to_model_spacing_and_back(rng):
    """Model at 2 mm, oblique-free flipped image at 1 x 0.8 x 0.8 mm. With no activation the
    pointwise model is linear, and linear resampling down and back reproduces a linear ramp
    exactly away from the outer band where the edge value is extended: so any shift, flip or
    scaling error in the round trip shows up."""
    meta = metadata(input__spacing=[2.0, 2.0, 2.0], output={"activation": "none", "labels": ["a", "b"]})
    coarse = mk.Model(mk.write_model_metadata(pointwise_model(), meta))
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in (24, 40, 35)), indexing="ij")
    img = mk.Image((3 * k - 2 * j + 1.5 * i).astype(np.float32), (1.0, 0.8, 0.8), (4, 5, 6),
                   np.diag([-1.0, 1.0, 1.0])[:, ::-1])
    pred = coarse.predict(img)
    assert pred.probabilities.same_geometry(img) and pred.labels.same_geometry(img)
    inner = (slice(3, -3), slice(4, -4), slice(4, -4))
    expected = 0.01 * img.array[inner]
    np.testing.assert_allclose(pred.probabilities.array[inner + (0,)], expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(pred.probabilities.array[inner + (1,)], -expected, rtol=0, atol=1e-4)
    # Softmax probabilities resampled linearly still sum to one everywhere, edges included.
    softmax = mk.Model(mk.write_model_metadata(pointwise_model(), metadata(input__spacing=[2.0, 2.0, 2.0])))
    np.testing.assert_allclose(softmax.predict(img).probabilities.array.sum(-1), 1, atol=1e-5)


def test_predict_tta_and_predict_many(seg_model, ct_image, rng):
    other = mk.Image(rng.normal(0, 50, (9, 20, 25)).astype(np.int16), (1.0, 1.0, 1.0))
    single = [seg_model.predict(ct_image), seg_model.predict(other)]
    many = seg_model.predict_many([ct_image, other, ct_image])
    for a, b in zip(single + single[:1], many):
        np.testing.assert_array_equal(a.probabilities.array, b.probabilities.array)
    # A pointwise model commutes with flips: test-time augmentation changes nothing but rounding.
    np.testing.assert_allclose(seg_model.predict(ct_image, tta=True).probabilities.array,
                               single[0].probabilities.array, atol=1e-6)


def _shift_model() -> bytes:
    """logits = [y, -y], y = x[i] + 0.5 x[i + 1] (zero past the end): not symmetric under flips."""
    w = np.zeros((2, 1, 1, 1, 2), np.float32)
    w[0, 0, 0, 0] = (1.0, 0.5)
    w[1] = -w[0]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"], pads=[0, 0, 0, 0, 0, 1])], "shift",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", 1, None, None, None])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 2, None, None, None])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_metadata_declares_test_time_flips(ct_image):
    plain = mk.Model(mk.write_model_metadata(_shift_model(), metadata()))
    flips = mk.Model(mk.write_model_metadata(_shift_model(), metadata(inference__tta=True)))
    assert plain.metadata["inference"]["tta"] is False and flips.metadata["inference"]["tta"] is True
    with_flips = plain.predict(ct_image, tta=True).probabilities.array
    without = plain.predict(ct_image).probabilities.array
    assert np.abs(with_flips - without).max() > 1e-3       # the flips change this model's output
    np.testing.assert_array_equal(flips.predict(ct_image).probabilities.array, with_flips)
    np.testing.assert_array_equal(flips.predict(ct_image, tta=False).probabilities.array, without)
    np.testing.assert_array_equal(flips.predict_many([ct_image])[0].probabilities.array, with_flips)
    with pytest.raises(mk.ModelError, match="inference.tta"):
        mk.write_model_metadata(_shift_model(), metadata(inference__tta="yes"))


def test_predict_sigmoid_threshold_labels(rng):
    meta = metadata(output={"activation": "sigmoid", "labels": ["pos", "neg"], "threshold": 0.7},
                    preprocessing=[])
    model = mk.Model(mk.write_model_metadata(pointwise_model(), meta))
    img = mk.Image(np.linspace(-3, 3, 6 * 8 * 8, dtype=np.float32).reshape(6, 8, 8))
    pred = model.predict(img)
    p = 1 / (1 + np.exp(-img.array.astype(np.float64)))
    expected = np.where(p >= 0.7, 1, np.where(1 - p >= 0.7, 2, 0))
    np.testing.assert_array_equal(pred.labels.array, expected)


def _postprocess_reference(labels, prob, spacing, ops, first_channel):
    """scipy.ndimage.label per label value, volumes and probability sums by brute force."""
    out = labels.copy()
    for op in ops:
        comps = []
        for v in np.unique(out[out > 0]):
            lab, n = ndimage.label(out == v, np.ones((3,) * out.ndim))
            for c in range(1, n + 1):
                region = lab == c
                comps.append((region, region.sum() * np.prod(spacing), prob[..., v - first_channel][region].sum()))
        if op["op"] == "remove_small":
            drop = [r for r, vol, _ in comps if vol < op["min_volume_mm3"]]
        else:
            key = 1 if op["by"] == "volume" else 2
            ranked = sorted(comps, key=lambda c: -c[key])
            drop = [c[0] for c in ranked[op["n"]:]]
        for r in drop:
            out[r] = 0
    return out


@pytest.mark.parametrize("ops", [
    [{"op": "remove_small", "min_volume_mm3": 6.0}],
    [{"op": "keep_top", "n": 1, "by": "probability"}],
    [{"op": "keep_top", "n": 2, "by": "volume"}],
    [{"op": "remove_small", "min_volume_mm3": 3.0}, {"op": "keep_top", "n": 3, "by": "probability"}],
])
@pytest.mark.parametrize("first_channel", [0, 1])
def test_postprocess_labels_matches_scipy_components(rng, ops, first_channel):
    from medkern.inference.model import postprocess_labels

    spacing = (2.0, 1.0, 0.5)
    labels = (rng.random((10, 12, 14)) > 0.8).astype(np.uint8) * rng.integers(1, 3, (10, 12, 14)).astype(np.uint8)
    # Distinct probabilities so that rankings have no ties.
    prob = rng.random((10, 12, 14, 3)).astype(np.float32)
    got = postprocess_labels(labels, prob, spacing, ops, first_channel)
    expected = _postprocess_reference(labels, prob, spacing, ops, first_channel)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == labels.dtype and (got != labels).any()


def _component_features_reference(components, labels, prob, spacing, first_channel):
    """Each component's features from its own voxels (numpy.cov, numpy.linalg.eigvalsh)."""
    rows = {}
    for c in range(1, components.max() + 1):
        at = np.argwhere(components == c)
        own = prob[tuple(at.T) + (labels[tuple(at.T)].astype(int) - first_channel,)].astype(np.float64)
        cov = np.cov((at * spacing).T, bias=True).reshape(len(spacing), len(spacing))
        lam = np.sort(np.linalg.eigvalsh(cov + np.diag(np.square(spacing) / 12)))[::-1]
        rows[c] = dict(volume_mm3=len(at) * np.prod(spacing), log_volume_mm3=np.log(len(at) * np.prod(spacing)),
                       mean_probability=own.mean(), max_probability=own.max(), elongation=np.sqrt(lam[1] / lam[0]))
        if len(spacing) == 3:
            rows[c]["flatness"] = np.sqrt(lam[2] / lam[0])
    return rows


@pytest.mark.parametrize("shape, spacing", [((9, 11, 13), (2.0, 0.7, 0.5)), ((17, 19), (0.8, 1.3))])
@pytest.mark.parametrize("first_channel", [0, 1])
def test_component_features_match_each_components_voxels(rng, shape, spacing, first_channel):
    """Features of classify_components against each component's own voxels: a random two-label
    map (blobs of every shape, one-voxel components among them) and a single straight tube, whose
    elongation and flatness are known."""
    from medkern._segment import label as connected
    from medkern.inference._pipeline import component_features

    labels = (rng.random(shape) > 0.75) * rng.integers(1, 3, shape)
    labels = labels.astype(np.uint8)
    prob = rng.random(shape + (3,)).astype(np.float32)
    components, n = connected(labels)
    names = ["volume_mm3", "log_volume_mm3", "mean_probability", "max_probability", "elongation"]
    names += ["flatness"] if len(shape) == 3 else []
    got = component_features(components, labels, prob, spacing, names, first_channel)
    expected = _component_features_reference(components, labels, prob, np.array(spacing), first_channel)
    assert n > 20 and any(r["volume_mm3"] == np.prod(spacing) for r in expected.values())
    for name in names:
        np.testing.assert_allclose(got[name][1:], [expected[c][name] for c in range(1, n + 1)], rtol=1e-9,
                                   err_msg=name)
    # A one-voxel-wide tube of 10 voxels along the last axis (unit spacing): variances 99/12 + 1/12
    # along it and 1/12 across, so elongation = flatness = sqrt(1/100).
    tube = np.zeros(shape, np.uint8)
    tube[(2,) * (len(shape) - 1) + (slice(1, 11),)] = 1
    comps, _ = connected(tube)
    f = component_features(comps, tube, prob, (1.0,) * len(shape), names, 1)
    np.testing.assert_allclose(f["elongation"][1], 0.1, rtol=1e-12)
    if len(shape) == 3:
        np.testing.assert_allclose(f["flatness"][1], 0.1, rtol=1e-12)


def test_predict_classify_components_keeps_what_the_classifier_accepts():
    """A logistic classifier on volume: score = sigmoid(log(volume) - log(10 mm3)), so components
    of at least 10 mm3 score >= 0.5. It then keeps what remove_small(10 mm3) keeps; a weight on
    max_probability alone decides by it."""
    faint, sure = np.zeros((8, 16, 16), bool), np.zeros((8, 16, 16), bool)
    faint[1:3, 1:3, 1:4] = True       # 12 voxels, probability 0.6
    sure[5:7, 10:12, 10:12] = True    # 8 voxels, probability ~1
    x = np.where(faint, -np.log(1.5) / 2, np.where(sure, -8.0, 5.0)).astype(np.float32)
    img = mk.Image(x)

    def labels(ops):
        meta = metadata(preprocessing=[], postprocessing=ops)
        return mk.Model(mk.write_model_metadata(pointwise_model(), meta)).predict(img).labels.array > 0

    by_volume = {"op": "classify_components", "features": ["log_volume_mm3"], "weights": [1.0],
                 "bias": -float(np.log(10.0))}
    np.testing.assert_array_equal(labels([by_volume]), faint)
    np.testing.assert_array_equal(labels([{"op": "remove_small", "min_volume_mm3": 10.0}]), faint)
    by_max = {"op": "classify_components", "features": ["max_probability"], "weights": [20.0], "bias": -15.0,
              "min_score": 0.9}
    np.testing.assert_array_equal(labels([by_max]), sure)
    np.testing.assert_array_equal(labels([dict(by_max, min_score=0.0)]), faint | sure)


def _shell_reference(components, labels, image, allowed, spacing, shell_mm):
    """Each component's shell from scipy's exact distance to it over the whole array."""
    rows = {}
    for c in range(1, components.max() + 1):
        distance = ndimage.distance_transform_edt(components != c, sampling=spacing)
        free = (labels == 0) & (True if allowed is None else allowed)
        shell, outer = free & (distance <= shell_mm), free & (distance > shell_mm) & (distance <= 2 * shell_mm)
        inside = image[components == c].astype(np.float64).mean()
        values, beyond = image[shell].astype(np.float64), image[outer].astype(np.float64)
        rows[c] = dict(mean_intensity=inside,
                       shell_mean_intensity=values.mean() if values.size else inside,
                       shell_p10_intensity=np.percentile(values, 10) if values.size else inside,
                       shell_p90_intensity=np.percentile(values, 90) if values.size else inside,
                       outer_shell_p90_intensity=np.percentile(beyond, 90) if beyond.size else inside)
    return rows


@pytest.mark.parametrize("shape, spacing, shell_mm", [((12, 14, 16), (2.0, 0.7, 0.5), 3.0),
                                                      ((12, 14, 16), (1.0, 1.0, 1.0), 1.5),
                                                      ((23, 21), (0.8, 1.3), 2.5)])
@pytest.mark.parametrize("masked", [False, True])
def test_intensity_features_match_scipy_shells(rng, shape, spacing, shell_mm, masked):
    """Mean intensity, the shell's mean and 10th and 90th percentiles and the outer shell's 90th
    percentile against shells from scipy.ndimage.distance_transform_edt over the whole array
    (sparse random components, some at the array's border, with and without a shell mask); a
    component whose shells the mask removes takes its own mean."""
    from medkern._segment import label as connected
    from medkern.inference._pipeline import component_features

    labels = ((rng.random(shape) > 0.93) * rng.integers(1, 3, shape)).astype(np.uint8)
    image = rng.normal(size=shape).astype(np.float32)
    allowed = rng.random(shape) > 0.3 if masked else None
    prob = rng.random(shape + (3,)).astype(np.float32)
    components, n = connected(labels)
    names = ["mean_intensity", "shell_mean_intensity", "shell_p10_intensity", "shell_p90_intensity",
             "outer_shell_p90_intensity"]
    got = component_features(components, labels, prob, spacing, names, 1, intensity=(image, allowed),
                             shell_mm=shell_mm)
    expected = _shell_reference(components, labels, image, allowed, np.array(spacing), shell_mm)
    assert n > 10
    for name in names:
        np.testing.assert_allclose(got[name][1:], [expected[c][name] for c in range(1, n + 1)], rtol=1e-6,
                                   atol=1e-6, err_msg=name)
    if masked:
        lonely = np.zeros(shape, bool)
        lonely[(slice(1, 3),) * len(shape)] = True
        one, _ = connected(lonely.astype(np.uint8))
        f = component_features(one, lonely.astype(np.uint8), prob, spacing, names, 1,
                               intensity=(image, lonely), shell_mm=shell_mm)
        own = image[lonely].mean(dtype=np.float64)
        np.testing.assert_allclose([f[k][1] for k in names], [own] * len(names), rtol=1e-6)
    with pytest.raises(ValueError, match="need the image"):
        component_features(components, labels, prob, spacing, ["volume_mm3", "shell_p10_intensity"], 1)


def test_postprocess_labels_with_shell_features_sees_beyond_the_labels_box(rng):
    """A classifier on the shell's mean keeps the blobs in bright surroundings and drops those in
    dark ones, blobs at the labels' bounding box included (their shells lie outside it): the same
    labels as the scipy-shell reference on the whole array."""
    from medkern._segment import label as connected
    from medkern.inference._pipeline import postprocess_labels

    shape, spacing = (20, 24, 22), (1.5, 1.0, 1.0)
    labels = np.zeros(shape, np.uint8)
    image = np.full(shape, 5.0, np.float32)
    for n, corner in enumerate([(5, 4, 4), (5, 14, 14), (12, 4, 15), (12, 15, 4)]):
        box = tuple(slice(c, c + 3) for c in corner)
        labels[box] = 1
        if n % 2:
            grown = tuple(slice(c - 3, c + 6) for c in corner)
            image[grown] = rng.uniform(-3.0, -1.0, image[grown].shape)
    prob = rng.uniform(0.6, 1.0, shape + (1,)).astype(np.float32)
    op = {"op": "classify_components", "features": ["shell_mean_intensity"], "weights": [1.0], "bias": 0.0,
          "min_score": 0.5, "shell_mm": 2.0}
    got = postprocess_labels(labels, prob, spacing, [op], first_channel=1, intensity=(image, None))
    components, n = connected(labels)
    reference = _shell_reference(components, labels, image, None, np.array(spacing), 2.0)
    keep = [c for c in range(1, n + 1) if reference[c]["shell_mean_intensity"] >= 0]
    np.testing.assert_array_equal(got > 0, np.isin(components, keep))
    assert len(keep) == 2
    with pytest.raises(ValueError, match="need the image"):
        postprocess_labels(labels, prob, spacing, [op], first_channel=1)
    with pytest.raises(ValueError, match="must share the grid"):
        postprocess_labels(labels, prob, spacing, [op], first_channel=1, intensity=(image[1:], None))


def test_outer_shell_feature_sees_a_vessel_beyond_the_component(rng):
    """A bright tube crossing the image, labelled over a short stretch only (a vessel seen in
    cross-section), and a bright blob of the same size in plain tissue: the tube goes on, bright,
    beyond its component, into its shells, so a classifier on the outer shell's 90th percentile
    drops it. The outer shell reaches 2 shell_mm past the labels' bounding box, which
    postprocess_labels grows by as much: it agrees with the scipy reference over the whole array."""
    from medkern._segment import label as connected
    from medkern.inference._pipeline import postprocess_labels

    shape, spacing, shell_mm = (40, 30, 30), (1.0, 1.0, 1.0), 1.5
    image = rng.normal(0.0, 0.1, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    image[:, 8:11, 8:11] = 3.0          # the tube along axis 0
    labels[18:21, 8:11, 8:11] = 1       # its labelled stretch: 3 voxels long
    image[18:21, 19:22, 19:22] = 3.0    # the blob
    labels[18:21, 19:22, 19:22] = 1
    prob = np.full(shape + (1,), 0.9, np.float32)
    op = {"op": "classify_components", "features": ["outer_shell_p90_intensity"], "weights": [-4.0],
          "bias": 2.0, "min_score": 0.5, "shell_mm": shell_mm}
    got = postprocess_labels(labels, prob, spacing, [op], first_channel=1, intensity=(image, None))
    components, n = connected(labels)
    reference = _shell_reference(components, labels, image, None, np.array(spacing), shell_mm)
    keep = [c for c in range(1, n + 1) if 2.0 - 4.0 * reference[c]["outer_shell_p90_intensity"] >= 0]
    np.testing.assert_array_equal(got > 0, np.isin(components, keep))
    tube, blob = int(components[19, 9, 9]), int(components[19, 20, 20])
    assert n == 2 and keep == [blob]
    assert reference[tube]["outer_shell_p90_intensity"] > 2.5 > 0.5 > reference[blob]["outer_shell_p90_intensity"]


def test_predict_shell_features_read_the_preprocessed_image_inside_the_brain():
    """Through predict: two equally sure blobs, one in a dark surround. The classifier reads the
    image as the model's z-score over the non-zero voxels (then scaled) leaves it, and the shell
    only inside those voxels: the kept blob touches the zeros (air), which would have dropped it."""
    from medkern._segment import label as connected
    from medkern.inference._pipeline import component_features, component_intensity

    x = np.full((10, 20, 20), 3.0, np.float32)
    x[:, :, 17:] = 0.0                           # outside the "brain"
    x[2:9, 7:16, 0:9] = 0.5                      # a dark surround
    blobs = np.zeros(x.shape, bool)
    blobs[5:7, 10:12, 3:5] = blobs[5:7, 10:12, 15:17] = True
    x[blobs] = 6.0
    # x' = 8 - 4 z: the network's class 1 where z > 2 (the blobs); tissue 7, dark surround 22, air 25.
    preprocessing = [{"op": "zscore", "mask": "nonzero"}, {"op": "scale", "scale": -4.0, "offset": 8.0}]
    op = {"op": "classify_components", "features": ["shell_mean_intensity"], "weights": [-1.0], "bias": 8.5,
          "shell_mm": 2.0}
    model = mk.Model(mk.write_model_metadata(pointwise_model(), metadata(preprocessing=preprocessing,
                                                                          postprocessing=[op])))
    np.testing.assert_array_equal(model.predict(mk.Image(x), postprocess=False).labels.array > 0, blobs)
    kept = np.zeros(x.shape, bool)
    kept[5:7, 10:12, 15:17] = True
    np.testing.assert_array_equal(model.predict(mk.Image(x)).labels.array > 0, kept)
    image, allowed = component_intensity(x, preprocessing)
    z = (x - x[x != 0].mean()) / x[x != 0].std()
    np.testing.assert_allclose(image, 8.0 - 4.0 * z, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(allowed, x != 0)
    assert component_intensity(x, [{"op": "zscore", "mask": "all"}])[1] is None
    # Without the mask the air enters the kept blob's shell and its score falls below 0.5.
    components, _ = connected(blobs.astype(np.uint8))
    prob = np.ones(x.shape + (2,), np.float32)
    unmasked = component_features(components, blobs.astype(np.uint8), prob, (1.0,) * 3, ["shell_mean_intensity"],
                                  intensity=(image, None), shell_mm=2.0)["shell_mean_intensity"]
    assert unmasked[components[kept][0]] > 8.5


@pytest.mark.parametrize("shape, box", [((16, 20, 22), (slice(3, 9), slice(11, 19), slice(0, 7))),
                                        ((30, 25), (slice(20, 30), slice(4, 12)))])
def test_postprocess_labels_in_a_corner_and_empty(rng, shape, box):
    """Labels only inside a sub-box touching one face (the work is cropped to their bounding
    box), in 3D and 2D: the same labels as on the whole array; an empty map comes back as it was."""
    from medkern.inference.model import postprocess_labels

    ops = [{"op": "remove_small", "min_volume_mm3": 2.0}, {"op": "keep_top", "n": 2, "by": "probability"}]
    labels = np.zeros(shape, np.uint8)
    labels[box] = (rng.random(labels[box].shape) > 0.6) * rng.integers(1, 3, labels[box].shape)
    prob = rng.random(shape + (3,)).astype(np.float32)
    spacing = (1.0,) * len(shape)
    expected = _postprocess_reference(labels, prob, spacing, ops, 0)
    np.testing.assert_array_equal(postprocess_labels(labels, prob, spacing, ops, 0), expected)
    assert (expected != labels).any()
    for dtype in (np.int16, np.uint32, np.int64):  # any integer labels, signed ones too
        got = postprocess_labels(labels.astype(dtype), prob, spacing, ops, 0)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, expected)
    # probabilities that are a view (channels-first memory) give the same labels
    channels_first = np.moveaxis(np.ascontiguousarray(np.moveaxis(prob, -1, 0)), 0, -1)
    np.testing.assert_array_equal(postprocess_labels(labels, channels_first, spacing, ops, 0), expected)
    empty = np.zeros(shape, np.uint8)
    np.testing.assert_array_equal(postprocess_labels(empty, prob, spacing, ops, 0), empty)


def test_predict_applies_the_declared_postprocessing():
    """A faint blob of 12 voxels (class probability 0.6, sum 7.2) and a sure one of 8 (sum ~8):
    remove_small(10 mm3) keeps the faint one, keep_top by probability the sure one, by volume the
    faint one; postprocess=False returns both."""
    faint, sure = np.zeros((8, 16, 16), bool), np.zeros((8, 16, 16), bool)
    faint[1:3, 1:3, 1:4] = True
    sure[5:7, 10:12, 10:12] = True
    # The pointwise model's class 1 is sigmoid(-2 x).
    x = np.where(faint, -np.log(1.5) / 2, np.where(sure, -8.0, 5.0)).astype(np.float32)
    img = mk.Image(x)

    def labels(ops, **kwargs):
        meta = metadata(preprocessing=[], postprocessing=ops)
        return mk.Model(mk.write_model_metadata(pointwise_model(), meta)).predict(img, **kwargs).labels.array > 0

    np.testing.assert_array_equal(labels([], postprocess=False), faint | sure)
    np.testing.assert_array_equal(labels([{"op": "remove_small", "min_volume_mm3": 10.0}]), faint)
    np.testing.assert_array_equal(labels([{"op": "keep_top", "n": 1, "by": "probability"}]), sure)
    np.testing.assert_array_equal(labels([{"op": "keep_top", "n": 1, "by": "volume"}]), faint)
    np.testing.assert_array_equal(labels([{"op": "remove_small", "min_volume_mm3": 10.0}], postprocess=False),
                                  faint | sure)


def test_predict_classification_scores(rng):
    meta = metadata(task="classification", output={"activation": "softmax", "labels": ["high", "low"]},
                    inference={"patch_size": [6, 10, 10]}, preprocessing=[])
    model = mk.Model(mk.write_model_metadata(classifier_model(), meta))
    img = mk.Image(rng.normal(0.3, 1, (8, 8, 14)).astype(np.float32))
    pred = model.predict(img)
    crop = np.zeros((6, 10, 10), np.float32)
    crop[:, 1:9, :] = img.array[1:7, :, 2:12]
    m = crop.mean(dtype=np.float64)
    assert pred.probabilities is None and pred.labels is None
    assert pred.scores["high"] == pytest.approx(1 / (1 + np.exp(-2 * m)), abs=1e-6)
    assert sum(pred.scores.values()) == pytest.approx(1, abs=1e-6)
    with pytest.raises(ValueError, match="class scores, not probability maps"):
        pred.probability("high")


def test_one_model_from_several_threads(seg_model, rng):
    images = [mk.Image(rng.normal(0, 100, (9 + n, 20, 17)).astype(np.float32)) for n in range(6)]
    serial = [seg_model.predict(img).probabilities.array for img in images]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(n):
        try:
            for _ in range(3):
                results[n] = seg_model.predict(images[n]).probabilities.array
        except BaseException as exc:  # reported below: a thread's exception would be lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for n, ref in enumerate(serial):
        np.testing.assert_array_equal(results[n], ref)


def test_reorient_is_exact_and_keeps_world_positions(rng):
    direction = random_direction(rng)
    img = mk.Image(rng.normal(size=(5, 6, 7)).astype(np.float32), (1.0, 2.0, 3.0), (1, 2, 3), direction)
    out = reorient(img, "SPL")
    assert sorted(out.shape) == sorted(img.shape)
    # Every voxel keeps its value and world position.
    idx = np.argwhere(np.ones(out.shape, bool))
    src = np.rint(img.world_to_index(out.index_to_world(idx))).astype(int)
    np.testing.assert_array_equal(out.array[tuple(idx.T)], img.array[tuple(src.T)])
    np.testing.assert_allclose(img.index_to_world(src), out.index_to_world(idx), atol=1e-9)
    default = mk.Image(np.zeros((2, 3, 4)))
    assert reorient(default, "SPL") is default


@pytest.mark.gpu
def test_cupy_input_uses_io_binding(seg_model):
    cupy = pytest.importorskip("cupy")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers() or not mk.backends()["cupy"]:
        pytest.skip("needs onnxruntime-gpu and a CUDA device")
    model = mk.Model(pointwise_model(), providers="cuda")
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8, 8)).astype(np.float32)
    out = model.run(cupy.asarray(x))[0]
    assert isinstance(out, cupy.ndarray)
    np.testing.assert_allclose(out.get(), model.run(x)[0], atol=1e-6)
    volume = np.random.default_rng(1).normal(size=(1, 1, 21, 30, 17)).astype(np.float32)
    on_gpu = mk.sliding_window(cupy.asarray(volume), model, (8, 16, 16), batch_size=3)
    assert isinstance(on_gpu, cupy.ndarray)
    np.testing.assert_allclose(on_gpu.get(), mk.sliding_window(volume, model, (8, 16, 16), batch_size=3),
                               rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- shipped models


def test_shipped_models_load_offline_with_full_metadata():
    assert mk.models.available() == ["brain-lesion", "sarcoma-ct", "sarcoma-petct"]
    for name in mk.models.available():
        path = mk.models.path(name)
        assert path.stat().st_size <= 5_000_000
        model = mk.models.load(name, providers="cpu")
        meta = model.metadata
        assert meta["name"] == name and meta["task"] == "segmentation"
        assert "research" in meta["intended_use"] and meta["licence"] and meta["training_data"]
        assert meta["input"]["spacing"] and meta["input"]["orientation"] == "SPL"
        assert meta["metrics"]["training"]["steps"] > 0
    assert "dice_median" in mk.models.load("brain-lesion").metadata["metrics"]
    for name in ("sarcoma-ct", "sarcoma-petct"):
        metrics = mk.models.load(name).metadata["metrics"]
        assert metrics["cross_validation"]["patients"] == 45 and len(metrics["fold_training"]) == 5
    assert mk.models.load("sarcoma-petct").metadata["input"]["modalities"] == ["CT", "PT"]
    with pytest.raises(ValueError, match="no shipped model named 'liver'"):
        mk.models.path("liver")


@pytest.mark.parametrize("name", ["sarcoma-ct", "sarcoma-petct"])
def test_sarcoma_models_reproduce_their_reference_case(shared_data, name):
    """The shipped model on the real patient recorded when it shipped (CT, PET on its own grid,
    GTV mask): the same Dice, so preprocessing and inference still give the model's output."""
    model = mk.models.load(name)
    reference = model.metadata["metrics"]["reference_case"]
    folder = shared_data / "ibsi" / "ibsi_validation" / "nifti" / reference["patient"]
    images = {"CT": mk.read(folder / "CT_image.nii.gz"), "PT": mk.read(folder / "PET_image.nii.gz")}
    images = {m: images[m] for m in model.metadata["input"]["modalities"]}
    gtv = mk.read(folder / "CT_mask.nii.gz").array > 0
    pred = model.predict(images, same_frame=True)
    assert pred.labels.same_geometry(images["CT"]) and pred.probability("gtv").shape == images["CT"].shape
    found = pred.labels.array == 1
    dice = 2 * (found & gtv).sum() / (found.sum() + gtv.sum())
    assert dice == pytest.approx(reference["dice"], abs=2e-3)


def test_brain_lesion_finds_lesions_in_the_mni152_template():
    """A simulated 3 T T1 (medkern.phantoms, a seed training never used) with lesions of 8 and
    12 mm: both found through predict, each within 2 mm of its diameter."""
    pytest.importorskip("nilearn.datasets")
    from medkern.analysis.location import mni_template
    from medkern.phantoms import simulate_brain_metastases

    case = simulate_brain_metastases(mni_template(), 424242, diameters_mm=(8.0, 12.0), acquisition="3T-3D-1mm")
    pred = mk.models.load("brain-lesion").predict(case.image)
    assert pred.labels.same_geometry(case.image)
    components, _ = ndimage.label(np.asarray(pred.labels.array) > 0, np.ones((3, 3, 3)))
    truth = np.asarray(case.lesions.array)
    for lesion in case.truth:
        hit = np.unique(components[truth == lesion.label])
        hit = hit[hit > 0]
        assert len(hit), f"the inserted {lesion.diameter_mm} mm lesion was missed"
        found = mk.regions(case.image.with_array(np.isin(components, hit).astype(np.uint8)))[0]
        assert abs(found.max_diameter_mm - lesion.diameter_mm) <= 2.0

def test_sarcoma_petct_reads_ct_with_pet_on_its_grid(shared_data):
    """The shipped CT + PET model on a real patient (NIfTI CT and SUV PET, one frame of reference):
    two inputs on one grid, labels back on the CT grid, and the tumour found. STS_038 is among the
    45 training patients of the shipped model, so this checks the pipeline, not generalisation
    (the cross-validated figures are in its metadata and card)."""
    folder = shared_data / "ibsi" / "ibsi_validation" / "nifti" / "STS_038"
    ct = mk.read(folder / "CT_image.nii.gz")
    pet = mk.resample_to(mk.read(folder / "PET_image.nii.gz"), ct)
    model = mk.models.load("sarcoma-petct")
    pred = model.predict(ct, pet)
    assert pred.labels.same_geometry(ct)
    found, gtv = pred.labels.array == 1, mk.read(folder / "CT_mask.nii.gz").array > 0
    assert 2 * (found & gtv).sum() / (found.sum() + gtv.sum()) > 0.8
    cv = model.metadata["metrics"]["cross_validation"]
    assert cv["per_patient"]["STS_038"]["fold"] == 2 and cv["dice_median"] > 0.7
    with pytest.raises(mk.ModelError, match=r"takes 2 channel image\(s\) \(CT, PT\), got 1"):
        model.predict(ct)
