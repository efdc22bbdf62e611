"""IBSI 1 compliance: medkern's features against the published reference values.

    medkern ibsi-compliance [--data ../shared/data] [--out docs/radiomics_compliance.md]

(or ``python -m medkern._radiomics.compliance``, same arguments; ``--data`` defaults to
$MEDKERN_SHARED_DATA, else ../shared/data beside the checkout)

reads the IBSI 1 reference values (``ibsi/ibsi_1_reference_values.json``: feature, code, data set,
aggregation, value, tolerance), computes the digital phantom and the CT radiomics phantom
configurations with the settings of the IBSI reference manual (chapter "Reference data sets"),
and writes the table feature / code / data set / reference / ours / within tolerance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from medkern._radiomics import _MODULES, RadiomicsResult, radiomics
from medkern.image import Image
from medkern.io import read

REFERENCE = Path("ibsi") / "ibsi_1_reference_values.json"

# IBSI reference manual, chapter 5 ("Reference data sets"): the processing of each data set.
# The digital phantom needs none: fixed bin size 1 leaves its grey levels as they are.
CONFIGS: dict[str, dict[str, Any]] = {
    "dig. phantom": dict(bin_width=1.0, texture_dims=("2D", "2.5D", "3D")),
    "config. A": dict(round_intensities=True, resegment_range=(-500.0, 400.0), bin_width=25.0,
                      texture_dims=("2D", "2.5D")),
    "config. B": dict(resample_spacing=(None, 2.0, 2.0), round_intensities=True,
                      resegment_range=(-500.0, 400.0), bin_count=32, texture_dims=("2D", "2.5D")),
    "config. C": dict(resample_spacing=2.0, round_intensities=True, resegment_range=(-1000.0, 400.0),
                      bin_width=25.0, ivh_bin_width=2.5, texture_dims="3D"),
    "config. D": dict(resample_spacing=2.0, round_intensities=True, outlier_sigma=3.0, bin_count=32,
                      texture_dims="3D"),
    "config. E": dict(resample_spacing=2.0, interpolation="cubic", round_intensities=True,
                      resegment_range=(-1000.0, 400.0), outlier_sigma=3.0, bin_count=32,
                      ivh_bin_count=1000, texture_dims="3D"),
}
_FAMILY_BY_TITLE = {m.TITLE: fam for fam, m in _MODULES.items()}
# Reference rows that appear twice under one name: the 10% row comes first, then the 90% row.
_SPLIT = {
    "Volume at intensity fraction": ("Volume at intensity fraction 10%", "Volume at intensity fraction 90%"),
    "Intensity at volume fraction": ("Intensity at volume fraction 10%", "Intensity at volume fraction 90%"),
}
_RENAME = {
    "Volume fraction difference between intensity fractions":
        "Volume fraction difference between intensity fractions 10% and 90%",
    "Intensity fraction difference between volume fractions":
        "Intensity fraction difference between volume fractions 10% and 90%",
}


class Row(NamedTuple):
    family: str
    name: str
    code: str | None
    data: str
    aggregation: str | None
    reference: float
    tolerance: float
    ours: float | None

    @property
    def within(self) -> bool:
        if self.ours is None or not math.isfinite(self.ours):
            return False
        return abs(self.ours - self.reference) <= allowed_deviation(self.reference, self.tolerance)


def allowed_deviation(reference: float, tolerance: float) -> float:
    """The published tolerance; a zero tolerance (exact digital phantom values, printed to three
    significant digits) allows the rounding of the printed value."""
    if tolerance > 0:
        return tolerance
    if reference == 0:
        return 1e-12
    return 0.5 * 10.0 ** (math.floor(math.log10(abs(reference))) - 2) * (1 + 1e-9)


def reference_rows(path: Path) -> list[dict]:
    """The reference rows with medkern family ids and feature names."""
    rows = json.loads(Path(path).read_text())
    seen: dict[tuple, int] = {}
    out = []
    for r in rows:
        fam = _FAMILY_BY_TITLE.get(r["family"])
        if fam is None:
            continue  # families not implemented (morphology) are not listed
        name = re.sub(r"\\ :sup:`(\w+)`", r"\1", r["feature"])
        if name in _SPLIT:
            k = (r["data"], name)
            name = _SPLIT[name][seen.get(k, 0)]
            seen[k] = seen.get(k, 0) + 1
        out.append(dict(r, family=fam, feature=_RENAME.get(name, name)))
    return out


def _nifti(folder: Path) -> Path:
    path = next(folder.glob("*.nii*"), None)
    if path is None:
        raise FileNotFoundError(f"IBSI data incomplete: no NIfTI file in {folder}")
    return path


def load_phantom(data: Path, name: str) -> tuple[Image, Image]:
    base = Path(data) / "ibsi" / name / "nifti"
    return read(_nifti(base / "image")), read(_nifti(base / "mask"))


def compute(data: Path, config: str) -> RadiomicsResult:
    phantom = "ibsi_1_digital_phantom" if config == "dig. phantom" else "ibsi_1_ct_radiomics_phantom"
    img, mask = load_phantom(data, phantom)
    return radiomics(img, mask, **CONFIGS[config])


def compare(rows: list[dict], result: RadiomicsResult) -> list[Row]:
    out = []
    for r in rows:
        key = f"{r['family']}/{r['feature']}"
        if r["aggregation"] is not None:
            key += f" [{r['aggregation']}]"
        ours = result[key] if key in result else None
        # medkern's code: the transcribed table repeats or omits a few (e.g. the histogram
        # percentiles, small zone emphasis, the 10%/90% IVH rows).
        code = result.code(key) if key in result else r["code"]
        out.append(Row(r["family"], r["feature"], code, r["data"], r["aggregation"],
                       r["value"], r["tol"], ours))
    return out


def run(data: Path) -> list[Row]:
    refs = reference_rows(Path(data) / REFERENCE)
    out = []
    for config in CONFIGS:
        result = compute(data, config)
        out.extend(compare([r for r in refs if r["data"] == config], result))
    return out


def _fmt(v) -> str:
    if v is None:
        return "—"
    if v == 0:
        return "0"
    # Four significant digits; scientific notation outside [1e-3, 1e5).
    return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.3e}"


def markdown(rows: list[Row]) -> str:
    lines = ["# IBSI 1 compliance", "",
             "Generated by `medkern ibsi-compliance`. Reference values and",
             "tolerances: IBSI reference manual (Zwanenburg et al., Radiology 295 (2020) 328;",
             "arXiv:1612.07003). Data: IBSI 1 digital phantom (CC BY 4.0) and CT radiomics",
             "phantom (Lambin P., CancerData 2016, DOI 10.17195/candat.2016.08.1, CC BY-NC 3.0).",
             "A zero tolerance (digital phantom) allows the rounding of the printed three-digit value.",
             "", "| data set | features | within tolerance |", "|---|---|---|"]
    for config in CONFIGS:
        sub = [r for r in rows if r.data == config]
        lines.append(f"| {config} | {len(sub)} | {sum(r.within for r in sub)} |")
    lines += ["", "| feature | family | code | data set | aggregation | reference | tolerance | ours | within |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.family} | {r.code or '—'} | {r.data} | {r.aggregation or '—'} | "
                     f"{_fmt(r.reference)} | {_fmt(r.tolerance)} | {_fmt(r.ours)} | "
                     f"{'yes' if r.within else '**no**'} |")
    return "\n".join(lines) + "\n"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The generator's arguments, shared by ``medkern ibsi-compliance`` and ``python -m``."""
    ap.description = __doc__.splitlines()[0]
    default = os.environ.get("MEDKERN_SHARED_DATA",
                             str(Path(__file__).resolve().parents[3].parent / "shared" / "data"))
    ap.add_argument("--data", default=default,
                    help="the shared data folder holding ibsi/ (default: $MEDKERN_SHARED_DATA, else "
                         "../shared/data beside the checkout: %(default)s)")
    ap.add_argument("--out", default="docs/radiomics_compliance.md",
                    help="the Markdown table to write (default: %(default)s)")


def generate(args: argparse.Namespace) -> int:
    """Compute every configuration, write the table to ``args.out`` and print the counts."""
    data = Path(args.data)
    if not (data / REFERENCE).is_file():
        # Checked before any computing, so a wrong --data fails at once rather than after minutes.
        raise FileNotFoundError(f"IBSI data not found: no {REFERENCE} in {data}; pass --data (the shared "
                                "data folder holding ibsi/) or set MEDKERN_SHARED_DATA")
    rows = run(data)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows))
    for config in CONFIGS:
        sub = [r for r in rows if r.data == config]
        print(f"{config}: {sum(r.within for r in sub)}/{len(sub)} within tolerance")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medkern._radiomics.compliance")
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return generate(args)
    except FileNotFoundError as exc:
        ap.exit(1, f"{ap.prog}: error: {exc}\n")


if __name__ == "__main__":
    raise SystemExit(main())
