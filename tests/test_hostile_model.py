"""Hostile models: external data that would read local files, outputs with NaN or infinity, absurd
metadata numbers, corrupt files. Each is a ModelError naming the model (file) and the field, or
the exact right answer; nothing crashes, hangs or allocates what the file merely claims."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import medkern as mk

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def finish(graph) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def scaled_model(weight: float = 1.0, spatial_dims: int = 3) -> bytes:
    """logits = [w x, -w x]: a 1x1 convolution whose weight can be NaN or infinite."""
    w = np.zeros((2, 1) + (1,) * spatial_dims, np.float32)
    w[0], w[1] = weight, -weight
    rank = spatial_dims + 2
    return finish(helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"])], "scaled",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", 1] + [None] * (rank - 2))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 2] + [None] * (rank - 2))],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())]))


def log_model() -> bytes:
    """logits = [log x, -log x]: NaN where x < 0, -inf where x == 0 (the input decides)."""
    return finish(helper.make_graph(
        [helper.make_node("Log", ["image"], ["l"]), helper.make_node("Neg", ["l"], ["n"]),
         helper.make_node("Concat", ["l", "n"], ["logits"], axis=1)], "log",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", 1, None, None, None])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 2, None, None, None])]))


def classifier(weight: float) -> bytes:
    w = np.array([[weight], [-weight]], np.float32)
    return finish(helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1)], "classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", 1, None, None, None])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())]))


def metadata(**changes) -> dict:
    meta = {
        "schema_version": 1, "name": "hostile", "task": "segmentation",
        "input": {"modalities": ["CT"], "spatial_dims": 3, "spacing": None, "orientation": "SPL"},
        "preprocessing": [],
        "inference": {"patch_size": [4, 8, 8], "overlap": 0.5, "batch_size": 2},
        "output": {"activation": "softmax", "labels": ["background", "object"]},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            meta[section][field] = value
        else:
            meta[section] = value
    return meta


def with_raw_metadata(raw: bytes, text: str) -> bytes:
    proto = onnx.load_model_from_string(raw)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "medkern", text
    return proto.SerializeToString()


@pytest.fixture
def image(rng) -> mk.Image:
    return mk.Image(rng.normal(0, 1, (6, 12, 10)).astype(np.float32), spacing=(2.0, 1.0, 1.0))


def run_isolated(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------ external data
def external_model(location: str) -> bytes:
    """y = x + w, with w's 4 floats stored in the external file ``location``."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], np.zeros(4, np.float32))
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return finish(helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w]))


def test_model_bytes_with_external_data_are_refused(tmp_path, monkeypatch):
    secret = np.array([1.5, 2.5, 3.5, 4.5], np.float32)
    (tmp_path / "secret.bin").write_bytes(secret.tobytes())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(mk.ModelError, match=r"model bytes: the model keeps 1 weight tensor\(s\) in external data "
                                            r"files \(e.g. 'w'\).*refused"):
        mk.Model(external_model("secret.bin"))


def test_external_data_hidden_in_a_subgraph_is_found(tmp_path, monkeypatch):
    inner = onnx.load_model_from_string(external_model("secret.bin")).graph
    inner.ClearField("input")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    then = helper.make_graph(list(inner.node), "then", [], [y], list(inner.initializer))
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "else", [],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])])
    raw = finish(helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "outer",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])]))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(mk.ModelError, match="model bytes: the model keeps 1 weight tensor"):
        mk.Model(raw)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname", "sub/../../secret.bin"])
def test_model_file_external_data_outside_its_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    path = folder / "m.onnx"
    path.write_bytes(external_model(location))
    with pytest.raises(mk.ModelError, match=r"m.onnx: weight tensor 'w' names external data .*outside the model's "
                                            r"folder"):
        mk.Model(path)


def test_model_file_external_data_beside_it_runs(tmp_path):
    weights = np.array([1.5, 2.5, 3.5, 4.5], np.float32)
    (tmp_path / "w.bin").write_bytes(weights.tobytes())
    path = tmp_path / "m.onnx"
    path.write_bytes(external_model("w.bin"))
    (y,) = mk.Model(path, providers="cpu").run(np.ones(4, np.float32))
    np.testing.assert_array_equal(y, weights + 1)


# ------------------------------------------------------------------ non-finite outputs
@pytest.mark.parametrize("weight", [float("nan"), float("inf")])
def test_non_finite_segmentation_output_is_a_model_error(image, weight):
    model = mk.Model(mk.write_model_metadata(scaled_model(weight), metadata()), providers="cpu")
    with pytest.raises(mk.ModelError, match=r"model bytes: model 'hostile' produced \d+ non-finite value\(s\) "
                                            r"\(NaN or infinity\) among the \d+ values of its output 'logits'"):
        model.predict(image)


def test_non_finite_count_is_exact(image):
    # log(x): NaN exactly where x < 0 (both channels), -inf / +inf where x == 0.
    x = np.abs(image.array) + 0.5
    x[0, 0, :3] = -1.0
    x[1, 2, 2] = 0.0
    model = mk.Model(mk.write_model_metadata(log_model(), metadata(inference={"patch_size": [6, 12, 10]})),
                     providers="cpu")
    with pytest.raises(mk.ModelError, match=r"produced 8 non-finite value\(s\) .* among the 1440 values"):
        model.predict(image.with_array(x))
    # A finite output gives labels (and no error) as before.
    pred = model.predict(image.with_array(np.abs(image.array) + 0.5))
    assert np.all(np.isfinite(pred.probabilities.array))


def test_non_finite_classification_output_is_a_model_error(image):
    meta = metadata(task="classification", inference={"patch_size": [6, 12, 10]})
    model = mk.Model(mk.write_model_metadata(classifier(float("nan")), meta), providers="cpu")
    with pytest.raises(mk.ModelError, match=r"model 'hostile' produced 2 non-finite value\(s\)"):
        model.predict(image)


def test_non_finite_input_is_named(image):
    model = mk.Model(mk.write_model_metadata(scaled_model(), metadata()), providers="cpu")
    x = image.array.copy()
    x[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"channel 0 \(CT\) holds 1 non-finite value\(s\)"):
        model.predict(image.with_array(x))


def test_finite_predictions_unchanged(image):
    model = mk.Model(mk.write_model_metadata(scaled_model(), metadata()), providers="cpu")
    pred = model.predict(image)
    # softmax([x, -x])[1] = sigmoid(-2x), exact to float32 rounding; label 1 where x < 0.
    np.testing.assert_allclose(pred.probability("object").array, 1 / (1 + np.exp(2 * image.array)), atol=1e-6)
    np.testing.assert_array_equal(pred.labels.array, (image.array < 0).astype(np.uint8))


# ------------------------------------------------------------------ absurd metadata
@pytest.mark.parametrize("meta, field", [
    (metadata(inference={"patch_size": [100000, 8, 8]}), r"inference.patch_size\[0\] must be an integer <= 2048"),
    (metadata(inference={"patch_size": [2048, 2048, 2048]}), "inference.patch_size .* voxels; at most"),
    (metadata(inference={"patch_size": [4, 8, 8], "batch_size": 10**9}), "inference.batch_size must be an integer <="),
    (metadata(inference={"patch_size": [256, 256, 256], "batch_size": 64}), "inference.batch_size 64 patches"),
    (metadata(inference={"patch_size": [4, 8, 8], "sigma_scale": 1e-300}), "inference.sigma_scale must be at least"),
    (metadata(inference={"patch_size": [4, 8, 8], "sigma_scale": 1e300}), "inference.sigma_scale must be at most"),
    (metadata(inference={"patch_size": [4, 8, 8], "overlap": 10**400}), "inference.overlap must be a finite number"),
    (metadata(input__spacing=[1e-9, 1.0, 1.0]), r"input.spacing\[0\] must be at least 0.001"),
    (metadata(input__spacing=[1.0, 1e9, 1.0]), r"input.spacing\[1\] must be at most 10000"),
    (metadata(input__modalities=["CT"] * 100, input__channels=100), "input.modalities names 100 channels"),
    (metadata(output={"activation": "softmax", "labels": [f"l{i}" for i in range(300)]}),
     "output.labels names 300 outputs"),
    (metadata(preprocessing=[{"op": "scale", "scale": 1e300}]), r"preprocessing\[0\].scale must be within"),
    (metadata(preprocessing=[{"op": "scale", "scale": 1.0, "offset": -1e300}]), r"preprocessing\[0\].offset"),
    (metadata(preprocessing=[{"op": "clip", "low": -10**400, "high": 1}]), r"preprocessing\[0\].low must be a fin"),
    (metadata(preprocessing=[{"op": "window", "center": 0, "width": 1, "output_range": [1, 0]}]),
     r"preprocessing\[0\].output_range needs low < high"),
    (metadata(preprocessing=[{"op": "window", "center": 0, "width": 1, "output_range": "x"}]),
     r"preprocessing\[0\].output_range must be a list of 2"),
    (metadata(preprocessing=[{"op": "window", "center": 0, "width": 1, "output_range": [0, float("inf")]}]),
     r"preprocessing\[0\].output_range\[1\] must be a finite number"),
    (metadata(postprocessing=[{"op": "remove_small", "min_volume_mm3": 1e300}]),
     r"postprocessing\[0\].min_volume_mm3 must be within"),
    (metadata(postprocessing=[{"op": "keep_top", "n": 10**12}]), r"postprocessing\[0\].n must be an integer <="),
    (metadata(postprocessing=[{"op": "classify_components", "features": ["volume_mm3"], "weights": [1e300],
                               "bias": 0}]), r"postprocessing\[0\].weights\[0\] must be within"),
    (metadata(postprocessing=[{"op": "classify_components", "features": [["volume_mm3"]], "weights": [1],
                               "bias": 0}]), r"postprocessing\[0\].features\[0\] must be one of"),
])
def test_absurd_metadata_numbers(meta, field):
    with pytest.raises(mk.ModelError, match=field):
        mk.validate_metadata(meta)
    # In a model file too: the error names the model.
    raw = with_raw_metadata(scaled_model(), json.dumps(meta))
    with pytest.raises(mk.ModelError, match="model bytes: medkern model metadata: " + field):
        mk.Model(raw)


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000, '{"schema_version": 1' + "0" * 5000 + "}",
                                  '{"schema_version": NaN}'])
def test_metadata_json_that_breaks_the_parser(text):
    with pytest.raises(mk.ModelError, match="model bytes: medkern model metadata"):
        mk.Model(with_raw_metadata(scaled_model(), text))


def test_predict_bounds_the_model_grid_and_the_window_count(image):
    meta = metadata(input__spacing=[0.001, 0.001, 0.001])
    model = mk.Model(mk.write_model_metadata(scaled_model(), meta), providers="cpu")
    with pytest.raises(mk.ModelError, match=r"input.spacing \[0.001, 0.001, 0.001\] would resample the \(6, 12, 10\) "
                                            r"image .* more than the \d+ medkern runs a model on"):
        model.predict(image)
    big = mk.Image(np.zeros((40, 400, 400), np.float32))
    meta = metadata(inference={"patch_size": [1, 1, 1], "overlap": 0.0})
    model = mk.Model(mk.write_model_metadata(scaled_model(), meta), providers="cpu")
    with pytest.raises(mk.ModelError, match=r"inference.patch_size \[1, 1, 1\] with inference.overlap 0.0 gives "
                                            r"6400000 network passes"):
        model.predict(big)


# ------------------------------------------------------------------ corrupt model files
def test_corrupt_model_files_name_the_path(tmp_path):
    good = mk.write_model_metadata(scaled_model(), metadata())
    rng = np.random.default_rng(7)
    cases = {
        "truncated.onnx": good[: len(good) // 2],
        "random.onnx": rng.bytes(4096),
        "tensor.onnx": helper.make_tensor("t", TensorProto.FLOAT, [2], [1.0, 2.0]).SerializeToString(),
        "empty_graph.onnx": onnx.ModelProto(ir_version=8).SerializeToString(),
        "wrong_rank.onnx": with_raw_metadata(scaled_model(spatial_dims=2), json.dumps(metadata())),
        "no_inputs.onnx": finish(helper.make_graph(
            [helper.make_node("Constant", [], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))],
            "const", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])),
        "identity_without_input.onnx": finish(helper.make_graph(
            [helper.make_node("Identity", [], ["y"])], "broken",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])),
    }
    for bits in range(3):  # bit flips of a good model
        flipped = bytearray(good)
        for pos in rng.integers(0, len(good), 8):
            flipped[pos] ^= 1 << int(rng.integers(0, 8))
        cases[f"flipped{bits}.onnx"] = bytes(flipped)
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    done = run_isolated(f"""
        import json, os, warnings
        warnings.simplefilter("error")
        import medkern as mk
        out = {{}}
        for name in sorted(os.listdir({str(tmp_path)!r})):
            path = os.path.join({str(tmp_path)!r}, name)
            try:
                mk.Model(path, providers="cpu")
                out[name] = "loaded"
            except mk.ModelError as exc:
                out[name] = str(exc)
        print(json.dumps(out))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # ONNX Runtime logs nothing: the error carries its message
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name in cases:
        if name.startswith("flipped") and result[name] == "loaded":
            continue  # a flip in a float weight leaves a valid model
        assert result[name].startswith(str(tmp_path / name)), (name, result[name])
    assert "has rank 4, but the metadata describes 3D images" in result["wrong_rank.onnx"]
    assert "the graph has 0 input(s)" in result["no_inputs.onnx"]


def test_metadata_that_is_not_utf8_names_the_file(tmp_path):
    raw = with_raw_metadata(scaled_model(), '{"name": "QQQQ"}')
    path = tmp_path / "latin.onnx"
    path.write_bytes(raw.replace(b"QQQQ", b"\xff\xfe\xc0\xaf"))
    with pytest.raises(mk.ModelError, match=r"latin.onnx: the model's names or metadata are corrupt "
                                            r"\(UnicodeDecodeError"):
        mk.Model(path, providers="cpu")


# ------------------------------------------------------------------ graphs that break at run time
IMAGE_IN = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", 1, None, None, None])
ANY_OUT = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)


@pytest.mark.parametrize("nodes, inits, match", [
    ([helper.make_node("Concat", ["image", "image"], ["c"], axis=1),
      helper.make_node("MaxPool", ["c"], ["logits"], kernel_shape=[2, 2, 2], strides=[2, 2, 2])], [],
     r"does not fit its metadata: sliding_window: fn returned shape"),
    ([helper.make_node("Flatten", ["image"], ["logits"])], [], r"does not fit its metadata: sliding_window: fn "),
    ([helper.make_node("Reshape", ["image", "s"], ["logits"])],
     [helper.make_tensor("s", TensorProto.INT64, [2], [7, -1])], r"ONNX Runtime failed to run the model on input"),
    ([helper.make_node("Identity", ["image"], ["logits"])], [], r"produced 1 output channel\(s\), but its metadata"),
])
def test_graph_that_breaks_at_run_time(image, nodes, inits, match):
    raw = finish(helper.make_graph(nodes, "broken", [IMAGE_IN], [ANY_OUT], inits))
    model = mk.Model(mk.write_model_metadata(raw, metadata()), providers="cpu", threads=2)
    with pytest.raises(mk.ModelError, match="model bytes: .*" + match):
        model.predict(image)


def test_run_failure_of_a_bare_graph_is_a_model_error(tmp_path):
    path = tmp_path / "reshape.onnx"
    path.write_bytes(finish(helper.make_graph(
        [helper.make_node("Reshape", ["image", "s"], ["logits"])], "broken", [IMAGE_IN], [ANY_OUT],
        [helper.make_tensor("s", TensorProto.INT64, [2], [7, -1])])))
    model = mk.Model(path, providers="cpu")
    with pytest.raises(mk.ModelError, match=r"reshape.onnx: ONNX Runtime failed to run the model on input\(s\) of "
                                            r"shape \[\(1, 1, 2, 3, 4\)\]"):
        model.run(np.zeros((1, 1, 2, 3, 4), np.float32))
