"""ONNX Runtime's OpenVINO execution provider against its CPU provider, on the benchmark networks.

``onnxruntime-openvino`` replaces the ``onnxruntime`` module, so this runs in its own virtual
environment (no system site-packages) with only numpy, onnx and onnxruntime-openvino; it does not
import medkern::

    python -m venv /tmp/ovenv && /tmp/ovenv/bin/pip install numpy onnx onnxruntime-openvino
    python benchmarks/inference_openvino.py --export /tmp/ov     # with torch + monai: writes the ONNX files
    /tmp/ovenv/bin/python benchmarks/inference_openvino.py /tmp/ov/*.onnx

The work timed is the network part of the sliding window of ``inference_levers.py``: the 18
patches of 96^3 of a 128x192x192 volume (overlap 0.5), in batches of 4, all cores, providers
alternating, median of 3. Agreement is the share of voxels whose argmax equals the CPU
provider's FP32 output.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROI = (96, 96, 96)
BF16_HINT = '{"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}'
PATCHES, BATCH = 18, 4


def export(folder: Path) -> None:
    """FP32 ONNX of the three nets (medkern's graph rewrites applied, as mk.Model loads them) and
    their INT8 copies from mk.inference.quantize; run with the main environment."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import onnx
    from inference_levers import int8_model
    from inference_nets import NETS, build, export_onnx

    from medkern.inference.graph import optimize_graph

    folder.mkdir(parents=True, exist_ok=True)
    for name in NETS:
        path = export_onnx(build(name), folder / f"{name}.onnx")
        proto = onnx.load(str(path))
        optimize_graph(proto)
        onnx.save(proto, str(path))
        int8_model(path)


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    threads = len(__import__("os").sched_getaffinity(0))
    x = np.random.default_rng(0).normal(size=(PATCHES, 1, *ROI)).astype(np.float32)
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}, {threads} threads")
    print("| model | provider | network time, 18 patches (s) | vs CPU EP FP32 | argmax agreement |")
    print("|---|---|---|---|---|")
    fp32_ref: dict[str, np.ndarray] = {}
    for path in sorted(args.models, key=lambda p: ("int8" in p.stem, p.stem)):
        if path.stem.endswith("_meta"):
            continue
        net = path.stem.split("_")[0]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        sessions = {"CPU EP": ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])}
        for label, extra in (("OpenVINO EP FP32", {"precision": "FP32"}),
                             ("OpenVINO EP ACCURACY", {"precision": "ACCURACY"}),
                             ("OpenVINO EP bf16 hint", {"load_config": BF16_HINT})):
            try:
                sessions[label] = ort.InferenceSession(
                    str(path), options, providers=[("OpenVINOExecutionProvider",
                                                    {"device_type": "CPU", "num_of_threads": str(threads), **extra})])
            except Exception as exc:  # an option this build does not take
                print(f"| {path.stem} | {label} | failed: {' '.join(str(exc).split())[:120]} | | |")

        def run(session):
            return np.concatenate([session.run(None, {"image": x[i:i + BATCH]})[0] for i in range(0, PATCHES, BATCH)])

        outputs = {k: run(s) for k, s in sessions.items()}  # warm-up
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(args.repeats):
            for k, s in sessions.items():
                t0 = time.perf_counter()
                run(s)
                times[k].append(time.perf_counter() - t0)
        ref = fp32_ref.setdefault(net, outputs["CPU EP"].argmax(1))
        base = float(np.median(times["CPU EP"])) if "int8" not in path.stem else None
        fp32_ref.setdefault(net + "_time", base)
        t_ref = fp32_ref[net + "_time"]
        for k in sessions:
            t = float(np.median(times[k]))
            agree = float(np.mean(outputs[k].argmax(1) == ref))
            print(f"| {path.stem} | {k} | {t:.2f} | {t_ref / t:.2f}x | {agree:.4f} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--export":
        export(Path(sys.argv[2]))
    else:
        main()
