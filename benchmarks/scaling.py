"""How time and peak memory grow with volume size, against this machine's memory-bandwidth floor.

    python benchmarks/scaling.py                  # 64^3 ... 512^3 and a 512 x 512 x 1000 CT
    python benchmarks/scaling.py --quick          # 64^3 ... 256^3, fewer repeats
    python benchmarks/scaling.py --max-size 384   # cubes up to 384^3, no CT
    python benchmarks/scaling.py --no-write       # print only
    python benchmarks/scaling.py --raw r.json     # also keep the measurements; --render r.json
                                                  # rewrites the .md and .png from them

Kernels: ``resample`` (CT 2.5 x 0.7 x 0.7 mm -> 1 mm, linear), ``gaussian`` (sigma 2 mm),
``label`` (26-connectivity, a thresholded random-blob mask), ``distance_transform`` (exact EDT,
anisotropic), ``radiomics`` (morphology, statistics, histogram and 3D GLCM with a 25 HU bin width,
on an ellipsoid ROI of 1 % of the volume) and ``Model.predict`` (a small UNet exported to ONNX,
1.5 mm model grid, 96^3 sliding window; sizes above the one whose estimate passes 60 s are left
out). Every volume has the spacing 2.5 x 0.7 x 0.7 mm (z, y, x) of a thick-slice CT, so each
kernel does the same work per voxel at every size.

Each (kernel, size) runs in a fresh subprocess: the inputs are made there, a warm-up call on a
64^3 input of the same kind sets up thread pools and sessions, then a first full-size call
measures peak memory and the timed calls follow (median of up to 5, fewer for big sizes). Peak
memory is the peak RSS increase of that first call: freed heap memory is handed back and the
process's peak-RSS mark is reset (``/proc/self/clear_refs``) just before it, and the increase is
the peak during the call less the RSS just before it, so the inputs are not counted but the
outputs and every temporary are. The memory floor is measured in the parent process first.

Writes benchmarks/SCALING.md and benchmarks/scaling.png. Needs matplotlib; ``predict`` needs
torch and monai (benchmark/test-only dependencies) to build the UNet.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import copy_bandwidth_gbs, cpu_name  # noqa: E402

SPACING = (2.5, 0.7, 0.7)
CUBES = (64, 128, 256, 384, 512)
CT_SHAPE = (1000, 512, 512)
KERNELS = ("resample", "gaussian", "label", "distance_transform", "radiomics", "predict")
ROI_FRACTION = 0.01
RADIOMICS_FAMILIES = ("morphology", "statistics", "histogram", "glcm")
PREDICT_LIMIT_S = 60.0
PATCH = (96, 96, 96)
MD = HERE / "SCALING.md"
PNG = HERE / "scaling.png"


# ---------------------------------------------------------------------------------------------
# Inputs, made chunk by chunk along z so that a 1000-slice CT needs no full-size float64 temporaries.

def ct_volume(shape: tuple[int, int, int], seed: int = 1) -> np.ndarray:
    """A chest-like CT in HU (int16): air, an elliptic body, two lungs with a nodule each, a spine
    and scanner noise (sigma 15 HU), the phantom of bench_inference at any size."""
    nz, ny, nx = shape
    out = np.empty(shape, np.int16)
    y = np.linspace(-1, 1, ny, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, :]
    zs = np.linspace(-1, 1, nz, dtype=np.float32)
    body = (y / 0.75) ** 2 + (x / 0.95) ** 2 < 1
    spine = (y - 0.55) ** 2 + x ** 2 < 0.1 ** 2
    step = max(1, 2 ** 22 // (ny * nx))
    for z0 in range(0, nz, step):
        rng = np.random.default_rng((seed, z0))
        z = zs[z0:z0 + step, None, None]
        ct = np.where(body, np.float32(40), np.float32(-1000))[None].repeat(len(z), axis=0)
        for side in (-1, 1):
            ct[((x - side * 0.45) / 0.33) ** 2 + (y / 0.5) ** 2 + (z / 1.3) ** 2 < 1] = -850
            ct[(x - side * 0.4) ** 2 + (y + 0.1) ** 2 + (z - side * 0.2) ** 2 < 0.12 ** 2] = 30
        ct[np.broadcast_to(spine, ct.shape)] = 700
        ct += rng.normal(0, 15, ct.shape).astype(np.float32)
        out[z0:z0 + step] = ct
    return out


def blob_mask(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Thresholded smoothed noise (sigma 2 voxels): many components, holes and tunnels, as in
    bench_segment."""
    import medkern as mk

    noise = np.random.default_rng(seed).random(shape, dtype=np.float32)
    smooth = mk.gaussian(noise, sigma_vox=2.0)
    del noise
    return smooth > 0.5


def roi_mask(shape: tuple[int, int, int], fraction: float = ROI_FRACTION) -> np.ndarray:
    """A centred ellipsoid (in mm) holding ``fraction`` of the volume's voxels, inside the body."""
    extent = np.array(shape) * np.array(SPACING)
    # Semi-axes proportional to the extent: volume fraction = (4/3) pi a b c / (X Y Z) with a = k X.
    k = (fraction * 3 / (4 * np.pi)) ** (1 / 3)
    grids = [((np.arange(n) + 0.5) * s - e / 2) / (k * e)
             for n, s, e in zip(shape, SPACING, extent)]
    z, y, x = grids
    mask = np.empty(shape, bool)
    yx = y[:, None] ** 2 + x[None, :] ** 2
    for i, zz in enumerate(z):
        np.less(yx + zz ** 2, 1.0, out=mask[i])
    return mask


# ---------------------------------------------------------------------------------------------
# The kernels: make(shape) -> (call, input bytes), all inputs made before the call.

def _model_path() -> Path:
    """A small MONAI UNet (channels 8-64, fixed-seed random weights) exported to ONNX, with
    metadata: 1.5 mm model grid, window 40/400, 96^3 sliding windows, overlap 0.5, batch 2."""
    import warnings

    import torch
    from monai.networks.nets import UNet

    import medkern as mk

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32, 64), strides=(2, 2, 2),
               num_res_units=1).eval()
    tmp = Path(tempfile.mkdtemp(prefix="medkern_scaling_"))
    axes = {0: "b", 2: "z", 3: "y", 4: "x"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, *PATCH),), str(tmp / "unet.onnx"), input_names=["image"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"image": axes, "logits": axes})
    meta = {"schema_version": 1, "name": "scaling-unet", "task": "segmentation",
            "input": {"modalities": ["CT"], "spatial_dims": 3, "spacing": [1.5, 1.5, 1.5],
                      "orientation": "SPL"},
            "preprocessing": [{"op": "window", "center": 40, "width": 400}],
            "inference": {"patch_size": list(PATCH), "overlap": 0.5, "batch_size": 2},
            "output": {"activation": "softmax", "labels": ["background", "foreground"]}}
    return mk.write_model_metadata(tmp / "unet.onnx", meta, out=tmp / "unet_meta.onnx")


def make(kernel: str, shape: tuple[int, int, int], model=None):
    """(zero-argument call, input bytes, note) for one kernel on one size."""
    import medkern as mk

    if kernel == "resample":
        img = mk.Image(ct_volume(shape), SPACING)
        return (lambda: mk.resample(img, 1.0, "linear")), img.array.nbytes, "int16 in, float32 out"
    if kernel == "gaussian":
        img = mk.Image(ct_volume(shape), SPACING)
        return (lambda: mk.gaussian(img, 2.0)), img.array.nbytes, "int16 in, float32 out"
    if kernel == "label":
        mask = blob_mask(shape)
        return (lambda: mk.label(mask, 26)), mask.nbytes, "bool in, int32 out"
    if kernel == "distance_transform":
        ct = ct_volume(shape)
        mask = mk.Image(ct > -500, SPACING)  # the body without the lungs
        del ct
        return (lambda: mk.distance_transform(mask)), mask.array.nbytes, "bool in, float32 out"
    if kernel == "radiomics":
        img = mk.Image(ct_volume(shape), SPACING)
        roi = mk.Image(roi_mask(shape), SPACING)
        n_roi = int(np.count_nonzero(roi.array))
        return ((lambda: mk.radiomics(img, roi, RADIOMICS_FAMILIES, bin_width=25)),
                img.array.nbytes + roi.array.nbytes, f"ROI {n_roi} voxels")
    if kernel == "predict":
        img = mk.Image(ct_volume(shape), SPACING)
        return (lambda: model.predict(img)), img.array.nbytes, "int16 in, float32 x 2 + uint8 out"
    raise ValueError(kernel)


def _output_bytes(result) -> int:
    """Bytes of the arrays a call returned (its minimum writes)."""
    if isinstance(result, tuple):
        return sum(_output_bytes(r) for r in result)
    if hasattr(result, "label_names"):  # a Prediction
        return sum(_output_bytes(a) for a in (result.probabilities, result.labels) if a is not None)
    array = getattr(result, "array", result)
    return int(array.nbytes) if isinstance(array, np.ndarray) else 0


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Hand freed heap memory back to the system, then reset this process's peak RSS mark to its
    current RSS (Linux >= 4.0). Without the trim, memory a previous call freed but the allocator
    kept would be resident already and the next call's reuse of it would not count."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(kernel: str, shape: tuple[int, int, int], repeats: int, budget_s: float) -> dict:
    """Time one kernel on one size in this (fresh) process; returns the measurements."""
    model = None
    if kernel == "predict":
        import medkern as mk

        model = mk.Model(_model_path())
    warm, _, _ = make(kernel, (64, 64, 64), model)
    warm()
    del warm
    call, in_bytes, note = make(kernel, shape, model)
    gc.collect()
    # The first call measures the peak memory (after a heap trim, see _reset_peak) and warms up
    # on the full size; the timed calls follow without a trim, in the steady state of a process
    # that calls the kernel repeatedly. A first call over a third of the budget is the only timing.
    exact = _reset_peak()
    before = _rss_kb("VmRSS") if exact else _rss_kb("VmHWM")
    t0 = time.perf_counter()
    result = call()
    first = time.perf_counter() - t0
    peak = (_rss_kb("VmHWM") - before) * 1024
    out_bytes = _output_bytes(result)
    del result
    times = [first] if first > budget_s / 3 else []
    while len(times) < repeats and sum(times) + (times[-1] if times else first) <= budget_s:
        gc.collect()
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {"kernel": kernel, "shape": list(shape), "voxels": int(np.prod(shape)), "times": times,
            "time": statistics.median(times), "peak_bytes": peak, "peak_exact": exact,
            "in_bytes": in_bytes, "out_bytes": out_bytes, "note": note}


def run_child(kernel: str, shape: tuple[int, int, int], repeats: int, budget_s: float) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE.parent / "python"), str(HERE), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, __file__, "--child", kernel, *map(str, shape), str(repeats), str(budget_s)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kernel} {shape} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# The floor.

def _median_time(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def floor_bandwidths() -> dict[str, float]:
    """GB/s (read + write bytes / time) of pure streams over 256 MiB float32 arrays."""
    import medkern as mk

    n = os.cpu_count() or 1
    single = copy_bandwidth_gbs()
    src = np.ones((256, 512, 512), np.float32)
    dst = np.zeros_like(src)
    parts = np.array_split(np.arange(src.shape[0]), n)
    with ThreadPoolExecutor(n) as pool:  # numpy releases the GIL while it copies
        def threaded():
            list(pool.map(lambda p: np.copyto(dst[p[0]:p[-1] + 1], src[p[0]:p[-1] + 1]), parts))
        multi = 2 * src.nbytes / _median_time(threaded) / 1e9
    fresh = 2 * src.nbytes / _median_time(lambda: src.copy()) / 1e9
    window = 2 * src.nbytes / _median_time(lambda: mk.window(src, 0.5, 1.0)) / 1e9
    return {"copy_1": single, "copy_n": multi, "copy_alloc": fresh, "window": window,
            "floor": max(single, multi), "threads": n}


# ---------------------------------------------------------------------------------------------
# Report.

def _shape_name(shape) -> str:
    if len(set(shape)) == 1:
        return f"{shape[0]}³"
    return f"{shape[2]}×{shape[1]}×{shape[0]} CT"


def _mb(b: float) -> str:
    return f"{b / 2**20:,.0f}" if b >= 2**20 else f"{b / 2**20:.2f}"


def plot(rows: list[dict], floor: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10.5, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    per_voxel = []
    for i, kernel in enumerate(KERNELS):
        mine = sorted((r for r in rows if r["kernel"] == kernel), key=lambda r: r["voxels"])
        if not mine:
            continue
        v = np.array([r["voxels"] for r in mine], float)
        label = "Model.predict" if kernel == "predict" else kernel
        ax_t.loglog(v, [r["time"] for r in mine], "o-", color=colors[i], label=label, ms=4)
        ax_m.loglog(v, [r["peak_bytes"] / r["voxels"] for r in mine], "o-", color=colors[i],
                      label=label, ms=4)
        if kernel != "radiomics":
            per_voxel.append(np.median([(r["in_bytes"] + r["out_bytes"]) / r["voxels"] for r in mine]))
    v = np.geomspace(min(r["voxels"] for r in rows), max(r["voxels"] for r in rows), 50)
    lo, hi = min(per_voxel), max(per_voxel)
    ax_t.fill_between(v, lo * v / (floor * 1e9), hi * v / (floor * 1e9), color="0.6", alpha=0.5,
                      lw=0, label=f"floor: pure stream of {lo:.0f}–{hi:.0f} B/voxel at {floor:.0f} GB/s")
    ax_t.set_xlabel("voxels")
    ax_t.set_ylabel("time (s), median")
    ax_t.set_title("Time")
    ax_t.grid(True, which="major", alpha=0.3)

    ax_m.set_xlabel("voxels")
    ax_m.set_ylabel("peak RSS increase / voxel (bytes)")
    ax_m.set_title("Peak memory of one call")
    ax_m.yaxis.set_major_locator(matplotlib.ticker.FixedLocator([2, 3, 4, 6, 8, 10, 15, 20, 30, 50, 80, 120]))
    ax_m.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax_m.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax_m.grid(True, which="major", alpha=0.3)
    handles, labels = ax_t.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_md(rows: list[dict], fl: dict, machine: str, command: str, elapsed: float,
             skipped: list[str], loads: list[float], date: str) -> None:
    floor = fl["floor"]
    lines = [
        "# Scaling with volume size",
        "",
        f"Written by `{command}` on {date}, {elapsed / 60:.0f} min. Machine: {machine}.",
        "Figures come from a **2-core machine**; its 1-minute load average went "
        + " → ".join(f"{x:.1f}" for x in loads)
        + " from start to end (about 2 means the benchmark alone): read the trends, not the last digit.",
        "",
        "## Memory-bandwidth floor (same run)",
        "",
        "Read + write bytes / time over 256 MiB float32 arrays, median of 5 after a warm-up:",
        "",
        "| stream | GB/s |",
        "|---|---|",
        f"| numpy copy into an allocated, touched array, 1 thread | {fl['copy_1']:.1f} |",
        f"| numpy copy into an allocated, touched array, {fl['threads']} threads (GIL released) | {fl['copy_n']:.1f} |",
        f"| numpy copy into a new array (page faults on the output included) | {fl['copy_alloc']:.1f} |",
        f"| `mk.window` float32 → new float32 ({fl['threads']} threads; one read + one write per voxel) "
        f"| {fl['window']:.1f} |",
        "",
        f"**The floor is the faster of the two copies into a touched array: {floor:.1f} GB/s.** A kernel that",
        "returns a new array also pays the first-touch page faults of its output, which the streaming",
        f"`mk.window` row includes: {fl['window'] / floor:.0%} of the floor is what a perfect streaming kernel",
        "that allocates its output reaches here.",
        "",
        "## Per kernel",
        "",
        "Effective bandwidth = (bytes of the inputs + bytes of the returned arrays) / median time, the",
        "minimum traffic of a kernel that reads its input once and writes its output once; *of floor* is",
        "that over the floor; ns/voxel, GB/s and *of floor* use the median. Time: median (and best) of",
        "the timed runs, which follow an untimed full-size call (a call over 15 s is itself the only",
        "run). Peak = peak RSS increase during that first call (inputs excluded, outputs and",
        "temporaries included); B/voxel divides it by the input voxels.",
        f"All volumes have spacing {' × '.join(map(str, SPACING))} mm (z, y, x); the CT is 512 × 512 × 1000",
        "(x × y × slices), int16.",
        "",
        "| kernel | size | voxels | time (s) | best (s) | runs | ns/voxel | peak (MiB) | B/voxel | GB/s "
        "| of floor | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kernel in KERNELS:
        for r in sorted((r for r in rows if r["kernel"] == kernel), key=lambda r: r["voxels"]):
            gbs = (r["in_bytes"] + r["out_bytes"]) / r["time"] / 1e9
            name = "Model.predict" if kernel == "predict" else kernel
            lines.append(
                f"| {name} | {_shape_name(r['shape'])} | {r['voxels']:,} | {r['time']:.3f} | {min(r['times']):.3f} | "
                f"{len(r['times'])} | "
                f"{r['time'] / r['voxels'] * 1e9:.2f} | {_mb(r['peak_bytes'])} | {r['peak_bytes'] / r['voxels']:.1f} | "
                f"{gbs:.2f} | {gbs / floor:.1%} | {r['note']} |")
    lines += [
        "",
        "What the work scales with:",
        "",
        "- `resample` (linear, 2.5 × 0.7 × 0.7 → 1 mm, antialiasing on): output voxels = 1.225 × input",
        "  voxels at every size; time and memory per voxel are constant (the output is float32).",
        "- `gaussian` (σ = 2 mm, separable FIR): linear in voxels; float32 output.",
        "- `label` (26-connectivity): linear in voxels; the blob mask's component count grows with the volume.",
        "- `distance_transform` (exact, separable): linear in voxels, whatever the mask.",
        f"- `radiomics`: the ROI is a centred ellipsoid of {ROI_FRACTION:.0%} of the volume, so ROI voxels grow",
        "  with the volume too. The features (morphology, statistics, histogram, 3D GLCM, 25 HU bins)",
        "  cost in proportion to the ROI (mesh and hull: to its surface), on a crop to the ROI's bounding",
        "  box. Before the crop, the input checks convert the whole image to float64 and compare the",
        "  whole mask with 0, and re-segmentation copies the mask: about 11 B per volume voxel (8 for",
        "  the float64 image, 1 per mask) that every family pays, ROI or not, so a fixed-size ROI in a",
        "  bigger volume would still cost time and memory in proportion to the volume. Morphology adds",
        "  the FFTs of Moran's I and Geary's C over the ROI's zero-padded bounding box (complex128),",
        "  which grow with the ROI and are most of the rest of the peak here. The GB/s column counts",
        "  the image and mask read once; radiomics is compute-bound and far from the floor by design.",
        "- `Model.predict` (UNet, 96³ windows, overlap 0.5, at 1.5 mm): network time grows with the",
        "  number of windows on the 1.5 mm grid (0.36 × the input voxels); reorientation, resampling",
        "  there and back, softmax and labels are linear in voxels. Its returned arrays are two float32",
        "  probability maps and a uint8 label map on the input grid.",
    ]
    lines += [
        "",
        "On a loaded machine the small sizes measure scheduling, not the kernel: a parallel call ends",
        "when its last thread does, and with more runnable processes than cores (the load average above)",
        "a `nice`d worker thread can wait a time slice (tens of ms) for its core. That is the 30–60 ms",
        "floor of the 64³ and 128³ rows, best runs included: a separate check on the same machine under",
        "the same load timed `mk.gaussian` on the 64³ CT at a median of 44 ms (best 0.7 ms) with 2",
        "threads and 1.2 ms with `mk.set_num_threads(1)`. From 256³ up the per-call work dominates and the",
        "per-voxel figures settle; the rows with one run are single calls. The absolute times are also",
        "several times those of a quiet machine (compare the 256³ Gaussian and EDT rows of",
        "[RESULTS.md](RESULTS.md)); the shape of the curves, the peak memory (which load does not",
        "change) and the fractions of a floor measured under the same load are what this file is for.",
    ]
    if skipped:
        lines += ["", "Left out: " + "; ".join(skipped) + "."]
    lines += ["", "![time and peak memory against volume size](scaling.png)", ""]
    MD.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="cubes up to 256^3, at most 2 timed runs")
    parser.add_argument("--max-size", type=int, default=None,
                        help="largest cube edge (default 512); the 1000-slice CT runs only when it is >= 512")
    parser.add_argument("--kernels", nargs="*", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--no-write", action="store_true", help="print only; write neither file")
    parser.add_argument("--raw", type=Path, help="also save the raw measurements to this JSON file")
    parser.add_argument("--render", type=Path, metavar="RAW",
                        help="measure nothing: rewrite SCALING.md and scaling.png from a --raw file")
    args = parser.parse_args(argv)
    if args.render:
        render(**json.loads(args.render.read_text()))
        return 0
    import medkern as mk

    max_size = args.max_size or (256 if args.quick else 512)
    shapes = [(n, n, n) for n in CUBES if n <= max_size]
    if max_size >= 512:
        shapes.append(CT_SHAPE)
    t_start = time.perf_counter()
    loads = [os.getloadavg()[0]]
    fl = floor_bandwidths()
    machine = (f"{cpu_name()}, {os.cpu_count()} cores, medkern threads {mk.get_num_threads()}, "
               f"numpy {np.__version__}, medkern {mk.__version__}")
    print(machine)
    print("floor " + ", ".join(f"{k} {v:.1f}" for k, v in fl.items()), flush=True)
    rows, skipped = [], []
    for kernel in args.kernels:
        last = None
        for shape in shapes:
            voxels = int(np.prod(shape))
            if kernel == "predict" and last is not None:
                estimate = last["time"] * voxels / last["voxels"]
                if estimate > PREDICT_LIMIT_S:
                    skipped.append(f"`Model.predict` on {_shape_name(shape)} (estimated {estimate:.0f} s "
                                   f"> {PREDICT_LIMIT_S:.0f} s)")
                    print(skipped[-1], flush=True)
                    continue
            repeats = 2 if args.quick else (5 if voxels <= 256 ** 3 else 3 if voxels <= 512 ** 3 else 2)
            t0 = time.perf_counter()
            try:
                r = run_child(kernel, shape, repeats, budget_s=20.0 if args.quick else 45.0)
            except RuntimeError as e:
                print(e, flush=True)
                skipped.append(f"`{kernel}` on {_shape_name(shape)} failed: {str(e).splitlines()[-1]}")
                break
            rows.append(r)
            last = r
            gbs = (r["in_bytes"] + r["out_bytes"]) / r["time"] / 1e9
            print(f"{kernel:18s} {_shape_name(shape):16s} {r['time']:9.3f} s  "
                  f"{r['time'] / voxels * 1e9:7.2f} ns/vox  peak {_mb(r['peak_bytes']):>7s} MiB "
                  f"({r['peak_bytes'] / voxels:5.1f} B/vox)  {gbs:6.2f} GB/s ({gbs / fl['floor']:.1%})  "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    elapsed = time.perf_counter() - t_start
    loads.append(os.getloadavg()[0])
    print(f"total {elapsed:.0f} s")
    given = list(argv if argv is not None else sys.argv[1:])
    if "--raw" in given:  # where the raw file went is no part of the measurement
        del given[given.index("--raw"):given.index("--raw") + 2]
    command = "python benchmarks/scaling.py " + " ".join(given)
    raw = {"rows": rows, "fl": fl, "machine": machine, "command": command.strip(), "elapsed": elapsed,
           "skipped": skipped, "loads": loads, "date": dt.date.today().isoformat()}
    if args.raw:
        args.raw.write_text(json.dumps(raw, indent=1))
    if not args.no_write:
        render(**raw)
    return 0


def render(rows, fl, machine, command, elapsed, skipped, loads, date) -> None:
    write_md(rows, fl, machine, command, elapsed, skipped, loads, date)
    plot(rows, fl["floor"], PNG)
    print(f"wrote {MD} and {PNG} ({PNG.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--child":
        _, _, k, z, y, x, reps, budget = sys.argv
        print(json.dumps(child(k, (int(z), int(y), int(x)), int(reps), float(budget))))
        raise SystemExit(0)
    raise SystemExit(main())
