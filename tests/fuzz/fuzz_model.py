"""Fuzz mk.Model on ONNX bytes: mutated medkern metadata, and mutated model bytes.

An input that starts with '{' or '[' (JSON) becomes the "medkern" metadata_props entry of a small
valid segmentation graph; any other input is handed to mk.Model as the model's bytes. A model that
loads with metadata is run on an 8x8x8 image.
"""

from __future__ import annotations

import json

import numpy as np

from _harness import DOCUMENTED, SilentWrong, main, mk

_IMAGE = None


def _image():
    global _IMAGE
    if _IMAGE is None:
        import _seeds as s

        _IMAGE = mk.Image(s.model_image()[0])
    return _IMAGE


def seeds() -> dict[str, bytes]:
    import _seeds as s

    meta = s.model_metadata()
    windowed = s.model_metadata(preprocessing=[{"op": "clip", "low": -1, "high": 1},
                                               {"op": "window", "center": 0, "width": 2},
                                               {"op": "percentile", "low": 1, "high": 99}],
                                postprocessing=[{"op": "remove_small", "min_volume_mm3": 2.0}])
    return {
        "meta.json": json.dumps(meta).encode(),
        "meta_windowed.json": json.dumps(windowed).encode(),
        "meta_spacing.json": json.dumps(s.model_metadata(input={**meta["input"], "spacing": [2.0, 1.0, 1.0],
                                                                "orientation": "SPL"})).encode(),
        "model.onnx": s.onnx_bytes(),
    }


def _model_bytes(data: bytes) -> bytes:
    import _seeds as s

    if data[:1] in (b"{", b"["):
        return s.onnx_model(data.decode("utf-8", "replace")).SerializeToString()
    return data


def one_input(data: bytes) -> None:
    try:
        model = mk.Model(_model_bytes(data), providers="cpu", threads=1)
    except DOCUMENTED:
        return
    if model.metadata is None:
        return
    try:
        pred = model.predict(_image())
    except DOCUMENTED:
        return
    labels = np.asarray(pred.labels.array)
    if labels.shape != _image().shape:
        raise SilentWrong(f"labels of shape {labels.shape} for an image of shape {_image().shape}")


if __name__ == "__main__":
    main(seeds, one_input)
