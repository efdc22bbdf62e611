"""Sliding-window inference: medkern (ONNX Runtime + C++ blending) vs MONAI (PyTorch CPU).

Same network (a monai UNet exported to ONNX), same 192x192x128 volume, roi 96^3, overlap 0.5,
Gaussian blending, same patch batch size. Peak RSS increase is measured in fresh subprocesses
(one per library) from just before the call to its end, so imports and weights do not count.
Needs torch and monai (benchmark/test-only dependencies).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import medkern as mk

from _harness import Case

SHAPE = (128, 192, 192)
ROI = (96, 96, 96)
BATCH = 2
HERE = Path(__file__).resolve().parent


def build_unet():
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32, 64), strides=(2, 2, 2),
                num_res_units=1).eval()


def export_onnx(net, path: Path) -> None:
    import torch

    axes = {0: "b", 2: "z", 3: "y", 4: "x"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, *ROI),), str(path), input_names=["image"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"image": axes, "logits": axes})


def volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(1, 1, *SHAPE)).astype(np.float32)


def ct_phantom(shape: tuple[int, int, int], seed: int = 1) -> np.ndarray:
    """A chest-like CT in HU (int16): air, an elliptic body, two lungs with a nodule each, a spine,
    and scanner noise, so the predicted label map has the structure of a real one."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    ct = np.full(shape, -1000.0)
    ct[(y / 0.75) ** 2 + (x / 0.95) ** 2 < 1] = 40
    for side in (-1, 1):
        ct[((x - side * 0.45) / 0.33) ** 2 + (y / 0.5) ** 2 + (z / 1.3) ** 2 < 1] = -850
        ct[(x - side * 0.4) ** 2 + (y + 0.1) ** 2 + (z - side * 0.2) ** 2 < 0.12 ** 2] = 30
    ct[(y - 0.55) ** 2 + x ** 2 < 0.1 ** 2] = 700
    return (ct + rng.normal(0, 15, shape)).astype(np.int16)


def _peak_rss_mb() -> float:
    """VmHWM: this process image's peak RSS (getrusage's ru_maxrss would include the forking parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# Run in a subprocess: `python bench_inference.py rss medkern|monai MODEL.onnx`.
def _rss_child(which: str, onnx_path: str) -> None:
    x = volume()
    if which == "medkern":
        model = mk.Model(onnx_path)
        before = _peak_rss_mb()
        mk.sliding_window(x, model, ROI, 0.5, "gaussian", 0.125, BATCH)
    else:
        import torch
        from monai.inferers import sliding_window_inference

        net = build_unet()
        t = torch.from_numpy(x)
        before = _peak_rss_mb()
        with torch.no_grad():
            sliding_window_inference(t, ROI, BATCH, net, overlap=0.5, mode="gaussian", sigma_scale=0.125)
    after = _peak_rss_mb()
    print(json.dumps({"increase_mb": after - before}))


def peak_rss_increase(which: str, onnx_path: Path) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "python"), str(HERE)]))
    out = subprocess.run([sys.executable, __file__, "rss", which, str(onnx_path)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["increase_mb"]


def cases(quick: bool) -> list[Case]:
    import torch
    from monai.inferers import sliding_window_inference

    net = build_unet()
    tmp = Path(tempfile.mkdtemp(prefix="medkern_bench_"))
    onnx_path = tmp / "unet.onnx"
    export_onnx(net, onnx_path)
    model = mk.Model(onnx_path)
    x = volume()
    t = torch.from_numpy(x)

    def monai_run():
        with torch.no_grad():
            return sliding_window_inference(t, ROI, BATCH, net, overlap=0.5, mode="gaussian", sigma_scale=0.125)

    mk_mb, monai_mb = peak_rss_increase("medkern", onnx_path), peak_rss_increase("monai", onnx_path)
    ref = monai_run().numpy()
    err = float(np.abs(mk.sliding_window(x, model, ROI, 0.5, "gaussian", 0.125, BATCH) - ref).max())
    name = (f"sliding_window UNet {SHAPE} roi 96^3 ov 0.5 gaussian, batch {BATCH} "
            f"(max |diff| {err:.1e}; peak RSS increase {mk_mb:.0f} MB vs MONAI {monai_mb:.0f} MB "
            f"= {mk_mb / monai_mb:.2f}x)")
    out = [Case(name, lambda: mk.sliding_window(x, model, ROI, 0.5, "gaussian", 0.125, BATCH),
                {f"MONAI sliding_window_inference (torch {torch.__version__}, {torch.get_num_threads()} threads)":
                 monai_run}, target=">= 1.5x, RSS <= 0.5x", repeats=2 if quick else 3)]
    out += predict_cases(onnx_path, tmp)
    return out


def predict_overhead(model: mk.Model, image: mk.Image, runs: int = 3) -> tuple[float, float]:
    """(median share of model.predict's time spent outside the network, median total seconds).

    Network time is the union of the intervals in which any ONNX Runtime session of the model
    runs (batch items run concurrently on single-threaded sessions); everything else (reorient,
    resample, preprocess, patch gathering and blending, activation, labels, resampling back)
    is overhead. The first call is a warm-up: thread pools and the runtime's arena are set up.
    """
    spans: list[tuple[float, float]] = []

    class Timed:
        def __init__(self, session):
            self.session = session

        def run(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return self.session.run(*args, **kwargs)
            finally:
                spans.append((t0, time.perf_counter()))

    model._session = Timed(model._session)
    model._single = Timed(model._single_threaded())
    model.predict(image)
    shares, totals = [], []
    for _ in range(runs):
        spans.clear()
        t0 = time.perf_counter()
        model.predict(image)
        totals.append(time.perf_counter() - t0)
        network, reach = 0.0, -np.inf
        for s0, s1 in sorted(spans):
            network += max(0.0, s1 - max(s0, reach))
            reach = max(reach, s1)
        shares.append(1 - network / totals[-1])
    return float(np.median(shares)), float(np.median(totals))


def predict_cases(onnx_path: Path, tmp: Path) -> list[Case]:
    """model.predict on images that need reorientation and resampling: the benchmark UNet (random
    weights, so its label map is voxel noise: the worst case for label resampling) on a chest-like
    phantom, and the shipped brain-lesion model on the real MNI152 T1 template (nilearn)."""
    meta = {"schema_version": 1, "name": "bench-unet", "task": "segmentation",
            "input": {"modalities": ["CT"], "spatial_dims": 3, "spacing": [1.5, 1.5, 1.5], "orientation": "SPL"},
            "preprocessing": [{"op": "window", "center": 40, "width": 400}],
            "inference": {"patch_size": list(ROI), "overlap": 0.5, "batch_size": BATCH},
            "output": {"activation": "softmax", "labels": ["background", "foreground"]}}
    model = mk.Model(mk.write_model_metadata(onnx_path, meta, out=tmp / "unet_meta.onnx"))
    # 1.2 mm in-plane, 2 mm slices, flipped rows: resampled to 1.5 mm isotropic, 192x192x128-ish.
    ct = mk.Image(ct_phantom((96, 240, 240)), (2.0, 1.2, 1.2), direction=np.diag([1.0, -1.0, 1.0])[:, ::-1])
    share, total = predict_overhead(model, ct)
    out = [Case(f"model.predict UNet, CT phantom {ct.shape} -> 1.5 mm, window, sliding window, back "
                f"(overhead beyond the network {share:.1%} of {total:.1f} s)",
                lambda: model.predict(ct), target="overhead <= 10%", repeats=1)]
    try:
        from nilearn.datasets import load_mni152_template
    except ImportError:
        return out
    template = load_mni152_template(resolution=1)
    t1 = mk.Image.from_nibabel(template)
    brain = mk.Model(Path(mk.__file__).parent / "models" / "brain-lesion.onnx")
    share, total = predict_overhead(brain, t1)
    out.append(Case(f"model.predict brain-lesion (shipped), MNI152 T1 {t1.shape} 1 mm -> 2 mm, z-score, "
                    f"sliding window 32^3, back (overhead beyond the network {share:.1%} of {total:.1f} s)",
                    lambda: brain.predict(t1), target="overhead <= 10%", repeats=1))
    return out


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "rss":
    _rss_child(sys.argv[2], sys.argv[3])
