"""Inference: Keras models exported with tf2onnx give Keras's own outputs through mk.Model.

The Keras part of the exported-model parity spec (PyTorch and scikit-learn are in
test_inference.py). Keras is channels-last, and tf2onnx keeps the graph input channels-last, so
the arrays go to ``Model.run`` exactly as they go to Keras. Measured with TensorFlow 2.20 (Keras 3)
and ONNX Runtime 1.32 on CPU: max abs difference ~8e-7 for the 3D network (float32 rounding of a
different convolution algorithm), hence 1e-5; 1.2e-7 (one float32 ulp below 1) for the dense
classifier's probabilities, hence 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest

import medkern as mk

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
tf = pytest.importorskip(
    "tensorflow", reason="TensorFlow is not installed: Keras export parity runs where it is "
                         "(pip install tensorflow-cpu tf2onnx)")
tf2onnx = pytest.importorskip(
    "tf2onnx", reason="tf2onnx is not installed: Keras export parity runs where it is "
                      "(pip install tensorflow-cpu tf2onnx)")
keras = tf.keras


def export(net, input_shape: tuple[int | None, ...]) -> bytes:
    """ONNX bytes of a functional Keras model (opset 17), its batch axis and any None axis dynamic.

    tf2onnx 1.17 with Keras 3: ``from_keras`` fails on a Sequential model (KeyError
    'keras_tensor_N'), and ``from_function`` leaves constants such as an adapted Normalization's
    mean and variance as extra graph inputs; ``from_keras`` on a functional model does neither.
    """
    spec = (tf.TensorSpec((None,) + input_shape, tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(net, input_signature=spec, opset=17)
    return proto.SerializeToString()


def test_keras_export_parity_3d_segmentation(rng):
    """A small channels-last 3D U-Net (Conv3D 'same', BatchNorm with non-trivial running stats in
    inference mode, LeakyReLU/ReLU, strided Conv3D down, Conv3DTranspose stride 2 up, concatenated
    skip, 1x1x1 Conv3D to 2 channels) runs through mk.Model to Keras's output within 1e-5, on a
    random batch with spatial sizes the graph leaves dynamic. Measured: 7.7e-7.
    """
    keras.utils.set_random_seed(0)
    layers = keras.layers
    image = keras.Input((None, None, None, 1))
    skip = layers.LeakyReLU(0.1)(layers.BatchNormalization()(layers.Conv3D(8, 3, padding="same")(image)))
    down = layers.ReLU()(layers.BatchNormalization()(layers.Conv3D(16, 3, strides=2, padding="same")(skip)))
    up = layers.Conv3DTranspose(8, 2, strides=2, padding="same")(down)
    merged = layers.Conv3D(8, 3, padding="same", activation="relu")(layers.Concatenate()([skip, up]))
    net = keras.Model(image, layers.Conv3D(2, 1)(merged))
    stats = np.random.default_rng(1)
    for layer in net.layers:  # running statistics a trained network would have, not the 0/1 defaults
        if isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([stats.uniform(0.5, 1.5, n), stats.normal(0, 0.1, n),
                               stats.normal(0, 0.1, n), stats.uniform(0.5, 2.0, n)])

    model = mk.Model(export(net, (None, None, None, 1)), providers="cpu")
    x = rng.normal(size=(2, 16, 24, 20, 1)).astype(np.float32)
    got = model.run(x)[0]
    ref = net(x, training=False).numpy()
    assert got.shape == ref.shape == (2, 16, 24, 20, 2)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_keras_export_dense_classifier_predict(rng):
    """A dense classifier on 10 radiomics-like features (Normalization adapted to the data, Dense
    ReLU, Dropout, softmax over 3 classes), trained a few epochs, gives ``predict``'s probabilities
    within 1e-6 through mk.Model, and the same argmax class. Measured: 1.2e-7.
    """
    keras.utils.set_random_seed(0)
    label = rng.integers(0, 3, 200)
    scale = np.array([1e3, 50, 20, 5, 1, 0.5, 10, 100, 2, 0.1])  # volumes, intensities, textures, shapes
    x = (scale * (rng.normal(size=(200, 10)) + 0.8 * label[:, None] * rng.normal(size=10))).astype(np.float32)
    norm = keras.layers.Normalization()
    norm.adapt(x[:150])
    features = keras.Input((10,))
    hidden = keras.layers.Dropout(0.2)(keras.layers.Dense(16, activation="relu")(norm(features)))
    net = keras.Model(features, keras.layers.Dense(3, activation="softmax")(hidden))
    net.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    net.fit(x[:150], label[:150], epochs=20, batch_size=32, verbose=0)

    model = mk.Model(export(net, (10,)), providers="cpu")
    proba = model.run(x[150:])[0]
    ref = net.predict(x[150:], verbose=0)
    np.testing.assert_allclose(proba, ref, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(proba.argmax(1), ref.argmax(1))
