"""Every inference lever, measured on the three MONAI networks against MONAI + PyTorch CPU.

    python benchmarks/inference_levers.py [UNet DynUNet SegResNet] [--repeats 3]

One process per network: MONAI ``sliding_window_inference`` and ``mk.sliding_window`` with each
lever run in alternation, median of ``--repeats``; peak RSS increase of each in a fresh
subprocess (from just before the call to its end, imports and weights excluded). Input
1x1x128x192x192 (array order), roi 96^3, overlap 0.5, Gaussian, the same patch batch size on
both sides unless the lever changes it, the same number of threads. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import inference_nets  # noqa: E402

SHAPE = (128, 192, 192)
ROI = inference_nets.ROI
BATCH = 4

# lever -> (SESSION_SETTINGS overrides, batch size, patches on parallel single-threaded lanes, int8)
LEVERS: dict[str, tuple[dict, int, bool, bool]] = {
    "default (ORT_ENABLE_ALL, arena, no mem pattern, lanes)": ({}, BATCH, True, False),
    "ORT_ENABLE_EXTENDED": ({"graph_optimization_level": "ORT_ENABLE_EXTENDED"}, BATCH, True, False),
    "ORT_ENABLE_BASIC": ({"graph_optimization_level": "ORT_ENABLE_BASIC"}, BATCH, True, False),
    "enable_mem_pattern": ({"enable_mem_pattern": True}, BATCH, True, False),
    "no CPU arena": ({"enable_cpu_mem_arena": False}, BATCH, True, False),
    "one run, intra_op threads = cores (no lanes)": ({}, BATCH, False, False),
    "batch 2": ({}, 2, True, False),
    "INT8 static QDQ (mk.inference.quantize)": ({}, BATCH, True, True),
}


def volume() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(1, 1, *SHAPE)).astype(np.float32)


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def int8_model(onnx_path: Path) -> Path:
    """The benchmark network quantised by medkern (calibrated on 8 patches of the input)."""
    import medkern as mk

    out = onnx_path.with_name(onnx_path.stem + "_int8.onnx")
    if not out.is_file():
        meta = {"schema_version": 1, "name": onnx_path.stem, "task": "segmentation",
                "input": {"modalities": ["CT"], "spatial_dims": 3},
                "inference": {"patch_size": list(ROI), "batch_size": BATCH},
                "output": {"activation": "softmax", "labels": ["background", "foreground"]}}
        with_meta = mk.write_model_metadata(onnx_path, meta, out=onnx_path.with_name(onnx_path.stem + "_meta.onnx"))
        mk.inference.quantize(with_meta, [volume()[0]], out, patches_per_image=8)
    return out


def medkern_runner(lever: str, onnx_path: Path):
    import medkern as mk
    from medkern.inference import _session

    settings, batch, lanes, int8 = LEVERS[lever]
    saved = dict(_session.SESSION_SETTINGS)
    _session.SESSION_SETTINGS.update(settings)
    try:
        model = mk.Model(int8_model(onnx_path) if int8 else onnx_path, providers="cpu")
        if lanes:
            model._single_threaded()  # created now, with these settings
    finally:
        _session.SESSION_SETTINGS.clear()
        _session.SESSION_SETTINGS.update(saved)
    fn = model if lanes else (lambda b: model(b))
    x = volume()
    return lambda: mk.sliding_window(x, fn, ROI, 0.5, "gaussian", 0.125, batch)


def monai_runner(net_name: str):
    import torch
    from monai.inferers import sliding_window_inference

    net = inference_nets.build(net_name)
    t = torch.from_numpy(volume())

    def run():
        with torch.no_grad():
            return sliding_window_inference(t, ROI, BATCH, net, overlap=0.5, mode="gaussian",
                                            sigma_scale=0.125).numpy()
    return run


def _rss_child(net_name: str, lever: str, onnx_path: str) -> None:
    run = monai_runner(net_name) if lever == "MONAI" else medkern_runner(lever, Path(onnx_path))
    before = _peak_rss_mb()
    run()
    print(json.dumps({"increase_mb": _peak_rss_mb() - before}))


def peak_rss_increase(net_name: str, lever: str, onnx_path: Path) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "python"), str(HERE)]))
    out = subprocess.run([sys.executable, __file__, "--rss", net_name, lever, str(onnx_path)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["increase_mb"]


def measure(net_name: str, repeats: int, levers: list[str], folder: Path) -> list[dict]:
    import torch

    onnx_path = inference_nets.export_onnx(inference_nets.build(net_name), folder / f"{net_name}.onnx")
    runners = {"MONAI": monai_runner(net_name)}
    runners.update({lever: medkern_runner(lever, onnx_path) for lever in levers})
    ref = runners["MONAI"]()
    outputs = {name: run() for name, run in runners.items()}  # also the warm-up
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    rss = {name: peak_rss_increase(net_name, name, onnx_path) for name in runners}
    rows = []
    t_ref = float(np.median(times["MONAI"]))
    for name in runners:
        out = outputs[name]
        agree = float(np.mean(out.argmax(1) == ref.argmax(1)))
        rows.append({"net": net_name, "lever": name if name != "MONAI" else
                     f"MONAI sliding_window_inference (torch {torch.__version__}, {torch.get_num_threads()} threads)",
                     "seconds": float(np.median(times[name])), "speedup": t_ref / float(np.median(times[name])),
                     "rss_mb": rss[name], "rss_ratio": rss[name] / rss["MONAI"],
                     "max_abs_diff": float(np.abs(out - ref).max()), "argmax_agreement": agree})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("nets", nargs="*", default=list(inference_nets.NETS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--levers", nargs="*", default=list(LEVERS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="medkern_levers_"))
    rows = []
    print("| net | lever | time (s) | speed-up vs MONAI | peak RSS increase (MB) | RSS vs MONAI | "
          "max abs diff | argmax agreement |\n|---|---|---|---|---|---|---|---|", flush=True)
    for net_name in args.nets:
        for row in measure(net_name, args.repeats, args.levers, folder):
            rows.append(row)
            print(f"| {net_name} | {row['lever']} | {row['seconds']:.2f} | {row['speedup']:.2f}x | "
                  f"{row['rss_mb']:.0f} | {row['rss_ratio']:.2f}x | {row['max_abs_diff']:.1e} | "
                  f"{row['argmax_agreement']:.4f} |", flush=True)
    for net_name in args.nets:
        print(f"\n{net_name}: {inference_nets.NETS[net_name][0]}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--rss":
        _rss_child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
