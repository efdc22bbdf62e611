"""Sliding-window inference: medkern (ONNX Runtime + C++ blending) vs MONAI (PyTorch CPU).

The three MONAI 3D segmentation networks of ``inference_nets.py`` (UNet, DynUNet nnU-Net-style,
SegResNet; fixed-seed random weights, each named with its config in its row), exported to ONNX;
same 128x192x192 volume, roi 96^3, overlap 0.5, Gaussian blending, patch batch 4 on both sides,
the same threads. Peak RSS increase is measured in fresh subprocesses (one per library) from just
before the call to its end, so imports and weights do not count. Then ``model.predict`` on each
network and on the shipped models, with the share of its time spent outside the network. The
other levers (ONNX Runtime settings, batch size, INT8) are ``inference_levers.py``; OpenVINO is
``inference_openvino.py``. Needs torch and monai (benchmark/test-only dependencies).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from inference_nets import NETS, ROI, build, export_onnx

import medkern as mk

from _harness import Case

SHAPE = (128, 192, 192)
BATCH = 4
HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("MEDKERN_SHARED_DATA", HERE.parent.parent / "shared" / "data"))


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


# Run in a subprocess: `python bench_inference.py rss medkern|monai NET MODEL.onnx PROVIDERS PRECISION`.
def _rss_child(which: str, net_name: str, onnx_path: str, providers: str, precision: str) -> None:
    x = volume()
    if which == "medkern":
        model = mk.Model(onnx_path, providers=providers, precision=precision)
        before = _peak_rss_mb()
        mk.sliding_window(x, model, ROI, 0.5, "gaussian", 0.125, BATCH)
    else:
        import torch
        from monai.inferers import sliding_window_inference

        net = build(net_name)
        t = torch.from_numpy(x)
        before = _peak_rss_mb()
        with torch.no_grad():
            sliding_window_inference(t, ROI, BATCH, net, overlap=0.5, mode="gaussian", sigma_scale=0.125)
    after = _peak_rss_mb()
    print(json.dumps({"increase_mb": after - before}))


def peak_rss_increase(which: str, net_name: str, onnx_path: Path, providers: str = "auto",
                      precision: str = "fp32") -> float:
    # A PYTHONPATH already set (another build of medkern) comes first.
    paths = [os.environ.get("PYTHONPATH", ""), str(HERE.parent / "python"), str(HERE)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    out = subprocess.run([sys.executable, __file__, "rss", which, net_name, str(onnx_path), providers, precision],
                         env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["increase_mb"]


def net_cases(net_name: str, tmp: Path, quick: bool) -> tuple[list[Case], Path]:
    """mk.sliding_window with mk.Model against MONAI + PyTorch on one network: with ONNX
    Runtime's CPU provider, and also with its OpenVINO provider (``providers="openvino"``), in
    float32 and in bfloat16, where the installed onnxruntime has it (the ``onnxruntime-openvino``
    package)."""
    import onnxruntime as ort
    import torch
    from monai.inferers import sliding_window_inference

    net = build(net_name)
    onnx_path = export_onnx(net, tmp / f"{net_name}.onnx")
    x = volume()
    t = torch.from_numpy(x)

    def monai_run():
        with torch.no_grad():
            return sliding_window_inference(t, ROI, BATCH, net, overlap=0.5, mode="gaussian", sigma_scale=0.125)

    monai_mb = peak_rss_increase("monai", net_name, onnx_path)
    ref = monai_run().numpy()
    reference = {f"MONAI sliding_window_inference (torch {torch.__version__}, {torch.get_num_threads()} threads)":
                 monai_run}
    settings = [("cpu", "fp32")]
    if "OpenVINOExecutionProvider" in ort.get_available_providers():
        settings += [("openvino", "fp32"), ("openvino", "bf16")]
    out = []
    for provider, precision in settings:
        model = mk.Model(onnx_path, providers=provider, precision=precision)
        err = float(np.abs(mk.sliding_window(x, model, ROI, 0.5, "gaussian", 0.125, BATCH) - ref).max())
        mk_mb = peak_rss_increase("medkern", net_name, onnx_path, provider, precision)
        memory = (f"; peak RSS increase {mk_mb:.0f} MB vs MONAI {monai_mb:.0f} MB = {mk_mb / monai_mb:.2f}x"
                  + ("" if provider == "cpu" else f"; ONNX Runtime {ort.__version__}"))
        chosen = f"providers={provider!r}" + ("" if precision == "fp32" else f", precision={precision!r}")
        name = (f"sliding_window {NETS[net_name][0]}, {SHAPE} roi 96^3 ov 0.5 gaussian, batch {BATCH}, "
                f"{chosen} (max |diff| {err:.1e}{memory})")
        out.append(Case(name, lambda model=model: mk.sliding_window(x, model, ROI, 0.5, "gaussian", 0.125, BATCH),
                        reference, target=">= 2x, RSS <= 0.5x", repeats=2 if quick else 3))
    return out, onnx_path


def cases(quick: bool) -> list[Case]:
    tmp = Path(tempfile.mkdtemp(prefix="medkern_bench_"))
    out, paths = [], {}
    for net_name in (["UNet"] if quick else NETS):
        net_out, paths[net_name] = net_cases(net_name, tmp, quick)
        out.extend(net_out)
    out += predict_cases(paths, tmp)
    return out


def predict_overhead(model: mk.Model, *images: Any, runs: int = 3, **predict_kw: Any) -> tuple[float, float]:
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
    model.predict(*images, **predict_kw)
    shares, totals = [], []
    for _ in range(runs):
        spans.clear()
        t0 = time.perf_counter()
        model.predict(*images, **predict_kw)
        totals.append(time.perf_counter() - t0)
        network, reach = 0.0, -np.inf
        for s0, s1 in sorted(spans):
            network += max(0.0, s1 - max(s0, reach))
            reach = max(reach, s1)
        shares.append(1 - network / totals[-1])
    return float(np.median(shares)), float(np.median(totals))


def predict_cases(paths: dict[str, Path], tmp: Path) -> list[Case]:
    """model.predict on images that need reorientation and resampling: each benchmark network
    (random weights, so its label map is voxel noise: the worst case for label resampling) on a
    chest-like phantom; the shipped sarcoma models on an IBSI soft-tissue-sarcoma patient (when
    ../shared/data is there); the shipped brain-lesion model on the real MNI152 T1 template."""
    out = []
    # 1.2 mm in-plane, 2 mm slices, flipped rows: resampled to 1.5 mm isotropic, 192x192x128-ish.
    ct = mk.Image(ct_phantom((96, 240, 240)), (2.0, 1.2, 1.2), direction=np.diag([1.0, -1.0, 1.0])[:, ::-1])
    for net_name, onnx_path in paths.items():
        meta = {"schema_version": 1, "name": f"bench-{net_name}", "task": "segmentation",
                "input": {"modalities": ["CT"], "spatial_dims": 3, "spacing": [1.5, 1.5, 1.5],
                          "orientation": "SPL"},
                "preprocessing": [{"op": "window", "center": 40, "width": 400}],
                "inference": {"patch_size": list(ROI), "overlap": 0.5, "batch_size": BATCH},
                "output": {"activation": "softmax", "labels": ["background", "foreground"]}}
        model = mk.Model(mk.write_model_metadata(onnx_path, meta, out=tmp / f"{net_name}_meta.onnx"))
        share, total = predict_overhead(model, ct)
        out.append(Case(f"model.predict {net_name}, CT phantom {ct.shape} -> 1.5 mm, window, sliding window, "
                        f"back (overhead beyond the network {share:.1%} of {total:.1f} s)",
                        lambda model=model: model.predict(ct), target="overhead <= 10%", repeats=1))
    sts = SHARED / "ibsi" / "ibsi_validation" / "nifti" / "STS_004"
    if sts.is_dir():
        ct_sts = mk.read(sts / "CT_image.nii.gz")
        # the PET on its own grid, as a user passes it: resampled once, onto the model grid
        pet = {"CT": ct_sts, "PT": mk.read(sts / "PET_image.nii.gz")}
        for name, images in (("sarcoma-ct", (ct_sts,)), ("sarcoma-petct", (pet,))):
            model = mk.models.load(name)
            share, total = predict_overhead(model, *images, same_frame=True)
            to = model.metadata["input"]["spacing"][0]
            with_pet = " + PET" if name.endswith("petct") else ""
            out.append(Case(f"model.predict {name} (shipped), IBSI STS_004 {ct_sts.shape} "
                            f"{tuple(round(v, 2) for v in ct_sts.spacing)} mm{with_pet} -> {to:g} mm, "
                            f"window, sliding window, back "
                            f"(overhead beyond the network {share:.1%} of {total:.2f} s)",
                            lambda model=model, images=images: model.predict(*images, same_frame=True),
                            target="overhead <= 10%", repeats=3))
    try:
        from nilearn.datasets import load_mni152_template
    except ImportError:
        return out
    template = load_mni152_template(resolution=1)
    t1 = mk.Image.from_nibabel(template)
    brain = mk.models.load("brain-lesion")
    share, total = predict_overhead(brain, t1)
    grid = brain.metadata["input"]["spacing"][0]
    patch = brain.metadata["inference"]["patch_size"][0]
    out.append(Case(f"model.predict brain-lesion (shipped), MNI152 T1 {t1.shape} 1 mm -> {grid:g} mm, z-score, "
                    f"sliding window {patch}^3, back, declared post-processing "
                    f"(overhead beyond the network {share:.1%} of {total:.1f} s)",
                    lambda: brain.predict(t1), target="overhead <= 10%", repeats=1))
    return out


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "rss":
    _rss_child(*sys.argv[2:7])
