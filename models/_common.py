"""Shared pieces of the training scripts (training-only: PyTorch is not a medkern dependency).

A small 3D U-Net (Ronneberger et al. 2015; Çiçek et al. 2016) with instance norm and leaky ReLU
as in nnU-Net (Isensee et al. 2021), Dice + cross-entropy loss, deterministic training, ONNX export
with medkern metadata, and the evaluation helpers the model cards report.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
# The scripts run against the installed medkern (`pip install -e .` or `pip install .`), never the
# source tree on its own: without its compiled kernels, medkern falls back to Numba where it can,
# whose float arithmetic differs in the last bits, so the training cases and hence the weights
# would no longer be the ones these scripts reproduce.
try:
    import medkern._core  # noqa: F401
except ImportError as exc:
    raise SystemExit(f"models/ needs medkern installed with its compiled kernels ({exc}); "
                     f"run `pip install -e .` in {REPO}") from exc
SHIPPED = REPO / "python" / "medkern" / "models"
SHARED_DATA = Path(os.environ.get("MEDKERN_SHARED_DATA", REPO.parent / "shared" / "data"))


def seed_everything(seed: int, threads: int = 1) -> np.random.Generator:
    """Same seed and thread count -> same weights, bit for bit (deterministic CPU kernels)."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    return np.random.default_rng(seed)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, stride=stride, padding=1),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.01),
        nn.Conv3d(cout, cout, 3, padding=1),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.01),
    )


class UNet(nn.Module):
    """U-Net with ``len(channels) - 1`` stride-2 levels; patch sizes must divide by 2**levels."""

    def __init__(self, in_channels: int, out_channels: int, channels: tuple[int, ...] = (8, 16, 32)):
        super().__init__()
        self.down = nn.ModuleList([_block(in_channels, channels[0])] +
                                  [_block(a, b, stride=2) for a, b in zip(channels, channels[1:])])
        self.upsample = nn.ModuleList([nn.ConvTranspose3d(b, a, 2, stride=2)
                                       for a, b in zip(channels, channels[1:])])
        self.up = nn.ModuleList([_block(2 * a, a) for a in channels[:-1]])
        self.head = nn.Conv3d(channels[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for level in reversed(range(len(self.up))):
            x = self.up[level](torch.cat([skips.pop(), self.upsample[level](x)], dim=1))
        return self.head(x)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """Soft Dice over the foreground plus (binary) cross-entropy, nnU-Net's default pairing."""
    if sigmoid:
        prob = torch.sigmoid(logits[:, 0])
        ce = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    else:
        prob = torch.softmax(logits, dim=1)[:, 1]
        ce = nn.functional.cross_entropy(logits, target.long())
    t = target.float()
    dice = (2 * (prob * t).sum() + 1) / (prob.sum() + t.sum() + 1)
    return ce + 1 - dice


def train(net: nn.Module, sample: Callable[[], tuple[np.ndarray, np.ndarray]], steps: int,
          sigmoid: bool, lr: float = 3e-3, checkpoint: Path | None = None, every: int = 250,
          sampler_state: tuple[Callable[[], Any], Callable[[Any], None]] | None = None,
          resume: bool = False) -> dict[str, Any]:
    """Adam with nnU-Net's poly learning-rate decay over a fixed number of steps (reproducible).

    With ``checkpoint``, the weights, optimiser, step, losses and random states (PyTorch's and,
    through ``sampler_state = (get, set)``, the sampler's) are saved there every ``every`` steps
    and training resumes from it when it exists: an interrupted run continues to the same weights.
    """
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses: list[float] = []
    first, spent = 1, 0.0
    if resume and checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["torch_rng"])
        if sampler_state is not None:
            sampler_state[1](state["sampler"])
        losses, first, spent = state["losses"], state["step"] + 1, state["seconds"]
        print(f"resumed at step {first} from {checkpoint}", flush=True)
    t0 = time.perf_counter() - spent
    for step in range(first, steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr * (1 - (step - 1) / steps) ** 0.9
        x, y = sample()
        loss = dice_ce_loss(net(torch.from_numpy(x)), torch.from_numpy(y), sigmoid)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            print(f"step {step}: loss {np.mean(losses[-50:]):.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if checkpoint is not None and (step % every == 0 or step == steps):
            state = {"net": net.state_dict(), "opt": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                     "sampler": sampler_state[0]() if sampler_state is not None else None,
                     "losses": losses, "step": step, "seconds": time.perf_counter() - t0}
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            # Written beside and renamed: a run killed while saving keeps the previous checkpoint.
            partial = checkpoint.with_suffix(".partial")
            torch.save(state, partial)
            os.replace(partial, checkpoint)
    return {"steps": steps, "seconds": round(time.perf_counter() - t0), "final_loss": float(np.mean(losses[-50:]))}


def crop_and_flip(x: np.ndarray, y: np.ndarray, patch: list[int], centre: Any,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A training patch around ``centre`` (kept inside the volume; None: uniformly random), with a
    random flip of each axis. ``x`` may carry leading channel axes; the last three are spatial."""
    if centre is None:
        lo = [int(rng.integers(0, n - p + 1)) for p, n in zip(patch, y.shape)]
    else:
        lo = [int(np.clip(c - p // 2, 0, n - p)) for c, p, n in zip(centre, patch, y.shape)]
    sl = tuple(slice(a, a + p) for a, p in zip(lo, patch))
    xs, ys = x[(..., *sl)], y[sl]
    for axis in range(3):
        if rng.random() < 0.5:
            xs, ys = np.flip(xs, axis - 3), np.flip(ys, axis)
    return xs, ys


def export(net: nn.Module, in_channels: int, patch: tuple[int, ...], metadata: dict[str, Any], name: str,
           out: Path | None = None) -> Path:
    """ONNX (opset 17, dynamic batch and spatial axes) with medkern metadata, into the package
    (or to ``out``, e.g. a candidate to evaluate before it replaces the shipped model)."""
    import medkern as mk

    net.eval()
    dummy = torch.zeros((1, in_channels, *patch))
    out = SHIPPED / f"{name}.onnx" if out is None else out
    tmp = REPO / "build" / f"{out.stem}.{os.getpid()}.raw.onnx"   # runs exporting side by side stay apart
    tmp.parent.mkdir(parents=True, exist_ok=True)
    axes = {0: "batch", 2: "z", 3: "y", 4: "x"}
    torch.onnx.export(net, (dummy,), str(tmp), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": axes, "logits": axes}, opset_version=17, dynamo=False)
    mk.write_model_metadata(tmp, metadata, out=out)
    tmp.unlink()
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    denom = a.sum() + b.sum()
    return float(2 * (a & b).sum() / denom) if denom else 1.0


def save_metrics(name: str, metrics: dict[str, Any], path: Path | None = None) -> None:
    """Record the measured metrics in the shipped model's metadata (or in the model at ``path``)."""
    import onnx

    import medkern as mk

    path = SHIPPED / f"{name}.onnx" if path is None else path
    meta = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["medkern"])
    meta["metrics"] = metrics
    mk.write_model_metadata(path, meta)


def write_card(name: str, card: str, metrics: dict[str, Any]) -> None:
    """models/<name>.md beside the training scripts."""
    (REPO / "models" / f"{name}.md").write_text(card)
    print(json.dumps(metrics, indent=1))


def main(doc: str, stage_train: Callable[..., None], stage_evaluate: Callable[[], Any],
         resumable: bool = False) -> None:
    """Command line of a training script; ``resumable`` scripts take ``--resume`` (passed to
    ``stage_train(resume=...)``): continue from the last checkpoint instead of starting over."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["all", "train", "evaluate"], default="all")
    if resumable:
        parser.add_argument("--resume", action="store_true",
                            help="continue from the last checkpoint (same seed: same final weights)")
    args = parser.parse_args()
    if args.stage in ("all", "train"):
        stage_train(resume=args.resume) if resumable else stage_train()
    if args.stage in ("all", "evaluate"):
        stage_evaluate()
