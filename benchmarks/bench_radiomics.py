"""IBSI 1 radiomics (every family) on a real soft-tissue sarcoma CT ROI vs MIRP, the IBSI
reference implementation (benchmark-only dependency: ``pip install mirp``).

Both run end to end from the NIfTI files (IBSI validation data, Vallières et al. 2015, CC BY 3.0)
with the same settings: re-segmentation [-1000, 400] HU, fixed bin size 25 HU, 3D texture,
GLCM/NGTDM/NGLDM distance 1, IVH on the integer HU. Before timing, the two feature sets are
compared feature by feature and the agreement is reported in the case's target column.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

import medkern as mk

from _harness import Case

DATA = Path(os.environ.get("MEDKERN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PATIENT = DATA / "ibsi" / "ibsi_validation" / "nifti" / "STS_003"

# MIRP column prefix -> medkern family; texture columns are in IBSI order in both.
_PREFIX = {"stat": "statistics", "ih": "histogram", "cm": "glcm", "rlm": "glrlm", "szm": "glszm",
           "dzm": "gldzm", "ngt": "ngtdm", "ngl": "ngldm"}
_NAMED = {
    "morph_volume": "Volume (mesh)", "morph_vol_approx": "Volume (voxel counting)",
    "morph_area_mesh": "Surface area (mesh)", "morph_av": "Surface to volume ratio",
    "morph_comp_1": "Compactness 1", "morph_comp_2": "Compactness 2",
    "morph_sph_dispr": "Spherical disproportion", "morph_sphericity": "Sphericity",
    "morph_asphericity": "Asphericity", "morph_com": "Centre of mass shift",
    "morph_integ_int": "Integrated intensity", "morph_diam": "Maximum 3D diameter",
    "morph_vol_dens_conv_hull": "Volume density (convex hull)",
    "morph_area_dens_conv_hull": "Area density (convex hull)",
    "morph_vol_dens_aabb": "Volume density (axis-aligned bounding box)",
    "morph_area_dens_aabb": "Area density (axis-aligned bounding box)",
    "morph_pca_maj_axis": "Major axis length", "morph_pca_min_axis": "Minor axis length",
    "morph_pca_least_axis": "Least axis length", "morph_pca_elongation": "Elongation",
    "morph_pca_flatness": "Flatness",
    "morph_vol_dens_aee": "Volume density (approximate enclosing ellipsoid)",
    "morph_area_dens_aee": "Area density (approximate enclosing ellipsoid)",
    "morph_moran_i": "Moran’s I index", "morph_geary_c": "Geary’s C measure",
    "loc_peak_loc": "Local intensity peak", "loc_peak_glob": "Global intensity peak",
    "ivh_v10": "Volume at intensity fraction 10%", "ivh_v90": "Volume at intensity fraction 90%",
    "ivh_i10": "Intensity at volume fraction 10%", "ivh_i90": "Intensity at volume fraction 90%",
    "ivh_diff_v10_v90": "Volume fraction difference between intensity fractions 10% and 90%",
    "ivh_diff_i10_i90": "Intensity fraction difference between volume fractions 10% and 90%",
}


def _medkern():
    img = mk.read(PATIENT / "CT_image.nii.gz")
    mask = mk.read(PATIENT / "CT_mask.nii.gz")
    return mk.radiomics(img, mask, resegment_range=(-1000, 400), bin_width=25, texture_dims="3D")


def _mirp():
    from mirp import extract_features

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return extract_features(
            image=str(PATIENT / "CT_image.nii.gz"), mask=str(PATIENT / "CT_mask.nii.gz"),
            base_discretisation_method="fixed_bin_size", base_discretisation_bin_width=25.0,
            resegmentation_intensity_range=[-1000.0, 400.0], ivh_discretisation_method="none",
            image_modality="CT", by_slice=False, ibsi_compliant=True, no_approximation=True)[0]


def agreement(ours, mirp_table, rtol: float = 1e-5) -> tuple[int, int, list[str]]:
    """Features of both within ``rtol`` (MIRP keeps some intermediates in float32)."""
    pairs = []
    by_family: dict[str, list] = {}
    for f in ours.features:
        if f.aggregation in (None, "3D, merged", "3D"):
            by_family.setdefault(f.family, []).append(f)
    for prefix, family in _PREFIX.items():
        cols = [c for c in mirp_table.columns if c.startswith(prefix + "_")]
        pairs += [(c, f.value) for c, f in zip(cols, by_family[family])]
    named = {f.name: f.value for f in ours.features if f.family in ("morphology", "local_intensity", "ivh")}
    pairs += [(c, named[n]) for c, n in _NAMED.items()]
    bad = [c for c, v in pairs if not np.isclose(float(mirp_table[c].iloc[0]), v, rtol=rtol, atol=1e-12)]
    return len(pairs) - len(bad), len(pairs), bad


def cases(quick: bool) -> list[Case]:
    if not PATIENT.is_dir():
        print(f"radiomics: {PATIENT} not found (set MEDKERN_SHARED_DATA); skipped")
        return []
    ours = _medkern()
    n_voxels = int(np.count_nonzero(mk.read(PATIENT / "CT_mask.nii.gz").array))
    references = {}
    target = ">= 10x MIRP"
    try:
        import mirp  # noqa: F401
    except ImportError:
        print("radiomics: MIRP is not installed (pip install mirp); timing medkern alone")
    else:
        logging.getLogger("mirp").setLevel(logging.WARNING)
        good, total, bad = agreement(ours, _mirp())
        target += f"; {good}/{total} features equal to MIRP's (rtol 1e-5)"
        if bad:
            target += f", differing: {', '.join(bad)}"
        references["MIRP 2 (extract_features)"] = _mirp
    return [Case(f"IBSI full feature set, STS_003 CT ROI ({n_voxels} voxels), 3D", _medkern,
                 references, target=target, repeats=2 if quick else 3)]
