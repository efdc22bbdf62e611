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
    p.add_argument("input", help="DICOM directory or file, or NIfTI, NRRD (.nrrd/.nhdr/.seg.nrrd) or MetaImage "
                                 "(.mha/.mhd) file")
    p.add_argument("output", help="output file (.nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd), written atomically")
    p.add_argument("--series-uid", help="which DICOM series, when the directory holds several")
    p.add_argument("--allow-irregular", action="store_true",
                   help="recover irregular DICOM series (duplicates, gaps, tilt) instead of failing")


@command("convert", _convert_args)
def convert(args: argparse.Namespace) -> int:
    """Convert a DICOM series or file, or a NIfTI, NRRD or MetaImage file, to NIfTI, NRRD or MetaImage."""
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
    """Simulate a brain-metastasis patient as a DICOM study and analyse it end to end."""
    from medkern.demo import run_demo

    report = run_demo(args.out, seed=args.seed, progress=not args.json and sys.stderr.isatty())
    score = json.loads((Path(args.out) / "truth.json").read_text())
    if args.json:
        print(json.dumps({"report": report.to_dict(), "truth": score}, indent=2))
        return 0
    _print_report(report, False)
    for row in score["inserted"]:
        found = (f"found as lesion {row['found_lesion']}, {row['found_max_diameter_mm']:.1f} mm"
                 if row["found_lesion"] is not None else "MISSED")
        print(f"inserted {row['diameter_mm']:.0f} mm lesion: {found}")
    print(f"false lesions: {len(score['false_lesions'])}; open {Path(args.out) / 'report' / 'report.html'}")
    print(score["note"])
    return 0


def _analyze_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="DICOM folder (one or several series), DICOM file or NIfTI file")
    p.add_argument("--patient", help="patient context JSON (see docs/guidelines.md for the schema)")
    p.add_argument("--model", help="shipped model name or ONNX path (default: chosen by the study's modality)")
    p.add_argument("--guideline", help="shipped guideline name, a guideline YAML/JSON path, or 'none' "
                                       "(default: the shipped guideline for the model)")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--include-identifiers", action="store_true",
                   help="copy identifying DICOM fields and the patient_id into the report")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


@command("analyze", _analyze_args)
def analyze(args: argparse.Namespace) -> int:
    """Findings, stage and guideline-based treatment options for one study (research use)."""
    import medkern as mk

    report = mk.analyze(args.study, patient=args.patient, model=args.model, guideline=args.guideline,
                        out_dir=args.out, include_identifiers=args.include_identifiers,
                        progress=not args.json and sys.stderr.isatty())
    _print_report(report, args.json)
    return 0


def _print_report(report: Any, as_json: bool) -> None:
    if as_json:
        print(report.to_json())
        return
    print(repr(report))
    outputs = report.to_dict()["outputs"]
    if outputs:
        print("outputs: " + ", ".join(v for k, v in outputs.items() if k != "dicom_not_written"))


def _guidelines_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("guidelines", _guidelines_args)
def guidelines(args: argparse.Namespace) -> int:
    """List the shipped clinical guidelines (name, version, what they apply to)."""
    from medkern.analysis.guideline import available_guidelines

    entries = available_guidelines()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    for e in entries:
        applies = ", ".join(f"{k}: {v if isinstance(v, str) else ', '.join(map(str, v))}"
                            for k, v in (e.get("applies_to") or {}).items())
        print(f"{e['name']:<22} {e['version']:<10} {e['title']}" + (f"  ({applies})" if applies else ""))
    return 0


def _batch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="study folders, NIfTI files, or folders whose sub-folders are studies "
                        "(DICOM series are grouped per study by StudyInstanceUID)")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per study, summary tables)")
    p.add_argument("--patients", help="patient records: a CSV (column 'study' plus patient-schema fields) or JSON")
    p.add_argument("--scheduler", default="local",
                   help="'local' (a LocalCluster on this machine, the default) or a scheduler address, "
                        "e.g. tcp://host:8786")
    p.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
    p.add_argument("--threads", type=int, help="threads per study (default: cores / studies running at once)")
    p.add_argument("--model", action="append",
                   help="shipped model name or ONNX path; repeat to give several (the first that reads a "
                        "study's modality runs); default: the shipped models")
    p.add_argument("--guideline", help="shipped guideline name, a guideline file, or 'none'")
    p.add_argument("--retry-failed", action="store_true", help="run again the studies that failed before")
    p.add_argument("--include-identifiers", action="store_true",
                   help="copy identifying DICOM fields and the patient_id into the reports")
    p.add_argument("--json", action="store_true", help="print the study table as JSON")


@command("batch", _batch_args)
def batch(args: argparse.Namespace) -> int:
    """Analyse many studies on a Dask cluster (resumable; failures recorded, never fatal)."""
    from medkern.batch import analyze_many

    model = None if not args.model else (args.model[0] if len(args.model) == 1 else args.model)
    result = analyze_many(args.inputs, args.out, patients=args.patients, model=model, guideline=args.guideline,
                          scheduler=args.scheduler, workers=args.workers, threads=args.threads,
                          retry_failed=args.retry_failed, include_identifiers=args.include_identifiers,
                          progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps({"studies": result.studies, "files": {k: str(v) for k, v in result.files.items()}},
                         indent=2, default=str))
    else:
        print(repr(result))
        for row in result.failed:
            print(f"failed: {row['study']} ({row.get('failed_stage')}): {row.get('error_type')}: {row.get('error')}")
        print(f"open {result.files['index_html']}")
    return 1 if result.failed else 0


def _ibsi_compliance_args(p: argparse.ArgumentParser) -> None:
    from medkern._radiomics.compliance import add_arguments

    add_arguments(p)


@command("ibsi-compliance", _ibsi_compliance_args)
def ibsi_compliance(args: argparse.Namespace) -> int:
    """Compare the radiomics features with the IBSI 1 reference values and write the table."""
    from medkern._radiomics.compliance import generate

    return generate(args)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _show_warning(command: str):
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"medkern {command}: warning: {_one_line(message)}", file=sys.stderr if file is None else file)

    return show


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command. A failure is one line on stderr (``medkern CMD: error: ...``) and exit
    status 1, never a traceback (set ``MEDKERN_DEBUG=1`` to see one); Ctrl-C exits with 130.
    Usage errors are argparse's (exit status 2)."""
    import os
    import warnings

    parser = argparse.ArgumentParser(prog="medkern", description="medkern medical-imaging kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (configure, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else None)
        configure(p)
        p.set_defaults(func=fn)
    args = parser.parse_args(argv)
    from medkern.errors import MedkernError

    debug = os.environ.get("MEDKERN_DEBUG", "") not in ("", "0")
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning(args.command)
            return args.func(args)
    except KeyboardInterrupt:
        print(f"medkern {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`medkern info ... | head`): nothing more to say.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:  # noqa: BLE001 - the command line reports every failure as one line
        if debug:
            raise
        detail = _one_line(exc) or type(exc).__name__
        if isinstance(exc, MemoryError):
            detail = f"out of memory ({detail})"
        elif not isinstance(exc, (MedkernError, ValueError, OSError)):
            detail = f"{type(exc).__name__}: {detail}"  # not a message written for users: say what it is
        print(f"medkern {args.command}: error: {detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
