"""The ``medkern`` command line. Each sub-command is one function registered in ``COMMANDS``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, configure: Callable[[argparse.ArgumentParser], None]):
    def deco(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (configure, fn)
        return fn

    return deco


def image_summary(img: Any) -> dict[str, Any]:
    return {
        "shape": list(img.shape),
        "dtype": str(img.dtype),
        "spacing": [round(float(s), 6) for s in img.spacing],
        "origin": [round(float(o), 6) for o in img.origin],
        "direction": np.round(img.direction, 6).tolist(),
    }


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="DICOM directory or file, or NIfTI file")
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("info", _info_args)
def info(args: argparse.Namespace) -> int:
    """List the DICOM series under PATH with their geometry, or describe one image file."""
    import medkern as mk

    path = Path(args.path)
    if path.is_dir():
        entries = [s.summary() for s in mk.list_dicom_series(path)]
    else:
        entries = [{"path": str(path), **image_summary(mk.read(path))}]
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        for e in entries:
            print("\n".join(f"{k:>18}: {v}" for k, v in e.items()))
            print()
    return 0


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="DICOM directory or file, or NIfTI file")
    p.add_argument("output", help="output file (.nii or .nii.gz), written atomically")
    p.add_argument("--series-uid", help="which DICOM series, when the directory holds several")
    p.add_argument("--allow-irregular", action="store_true",
                   help="recover irregular DICOM series (duplicates, gaps, tilt) instead of failing")


@command("convert", _convert_args)
def convert(args: argparse.Namespace) -> int:
    """Convert a DICOM series or file, or a NIfTI file, to NIfTI (written atomically)."""
    import medkern as mk

    kwargs: dict[str, Any] = {"series_uid": args.series_uid} if args.series_uid else {}
    if args.allow_irregular:
        kwargs["allow_irregular"] = True
    img = mk.read(args.input, **kwargs)
    mk.write(img, args.output)
    print(f"wrote {args.output}: shape {img.shape}, spacing {tuple(round(s, 4) for s in img.spacing)}")
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="medkern-demo", help="output directory (default: ./medkern-demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated patient")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


@command("demo", _demo_args)
def demo(args: argparse.Namespace) -> int:
    """Run the whole pipeline on a simulated brain-metastasis study (data shipped with the deps)."""
    from medkern.demo import run_demo

    report = run_demo(args.out, seed=args.seed, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"input  {report['input']}  (simulated: {len(report['inserted_lesions'])} lesions inserted)")
    print(f"model  {report['model']}")
    print(f"{'lesion':>6} {'volume mm3':>11} {'max diam mm':>12} {'RECIST mm':>10}  centroid LPS mm     match")
    for f in report["findings"]:
        c = ", ".join(f"{v:.0f}" for v in f["centroid_lps_mm"])
        print(f"{f['label']:>6} {f['volume_mm3']:>11.1f} {f['max_diameter_mm']:>12.1f} "
              f"{f['axial_diameter_mm']:>10.1f}  ({c}){'':<6} {'yes' if f['matches_inserted_lesion'] else 'no'}")
    print(f"sensitivity {report['sensitivity']:.2f}, false-positive components "
          f"{report['false_positive_components']}; {sum(report['seconds'].values()):.1f} s in all")
    print("outputs: " + ", ".join(report["outputs"]))
    print(report["note"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medkern", description="medkern medical-imaging kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (configure, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else None)
        configure(p)
        p.set_defaults(func=fn)
    args = parser.parse_args(argv)
    from medkern.errors import MedkernError

    try:
        return args.func(args)
    except (MedkernError, ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        print(f"medkern {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
