"""PET standardized uptake values (SUV) from a DICOM PET series, vendor-neutrally.

``SUV = C * N / D``: ``C`` the activity concentration of a voxel (Bq/ml), ``D`` the injected
activity decayed to the time the voxel values refer to (Bq), and ``N`` the body size the activity
is spread over: the weight in g (SUVbw, g/ml), the lean body mass in g (SUVlbm / SUL, g/ml) or the
body surface area in cm2 (SUVbsa, cm2/ml).

The SUVbw scale factor follows the QIBA "Vendor-neutral pseudo-code for SUV calculation"
(Quantitative Imaging Biomarkers Alliance, FDG-PET/CT technical committee, QIBA wiki page
"Standardized Uptake Value (SUV)"; also the basis of the QIBA FDG-PET/CT profile's SUV):

* CorrectedImage (0028,0051) must contain ATTN and DECY, and DecayCorrection (0054,1102) must be
  START: the values are decay corrected to the scan start, one time for the whole series, so one
  decay factor serves all slices; the per-image DecayFactor (0054,1321) only restates that
  correction and is not applied. As an extension of the pseudo-code, ADMIN (decay corrected to the
  administration time, PS3.3 C.8.9.1.1) is accepted too: the dose then needs no decay. NONE
  (values at the time of each frame) raises: it needs frame-wise decay correction.
* Units (0054,1001) BQML: ``factor = PatientWeight * 1000 / decayed dose``. CNTS (Philips): the
  private SUV scale factor (7053,1000, creator "Philips PET Private Group") is the SUVbw factor;
  without it, (7053,1009) converts the values to Bq/ml and they are treated as BQML. GML: the
  values are SUVbw already (the pseudo-code assumes SUVType BW: another SUVType raises); the
  decay correction and times are then irrelevant.
* Scan time: SeriesDate/SeriesTime, unless that is after the earliest AcquisitionDate/Time of the
  series' images (a post-processed series whose series time is its creation time): then the GE
  private scan date-time (0009,100D, creator "GEMS_PETD_01"); without it the scan start is back
  computed from the earliest image, ``AcquisitionTime - FrameReferenceTime / 1000 + average
  count rate time within the frame`` (the pseudo-code's "reliable in all cases" branch) when
  FrameReferenceTime and ActualFrameDuration are positive, else the earliest AcquisitionTime.
  Without any AcquisitionTime the series time is used.
* Injection time: RadiopharmaceuticalStartDateTime (DT) when present; else
  RadiopharmaceuticalStartTime on the scan's date (the pseudo-code's "assume same as Series
  Date"), and on the day before when that time of day is after the scan ("consider spanning
  midnight") and the uptake so found is below 12 hours; otherwise the injection counts as after
  the scan and raises. A time zone offset in the DT is ignored (both times are taken as local).
* ``decayed dose = RadionuclideTotalDose * 2 ** (-(scan - injection) / RadionuclideHalfLife)``.
  The total dose is not corrected for residual activity in the syringe (DICOM does not record it).
* Rescale slope and intercept are applied per slice by the reader (GE varies the slope per slice).

Lean body mass and body surface area (weight W in kg, height H)
---------------------------------------------------------------
* ``"lbm"``: James (1976, "Research on obesity", HMSO), the classic SUVlbm of scanners and
  workstations: male ``1.10 W - 128 (W / H_cm)**2``, female ``1.07 W - 148 (W / H_cm)**2``. It
  falls with weight in severe obesity (and turns negative); a non-positive result raises.
* ``"lbm-janma"``: Janmahasatian et al. (Clin. Pharmacokinet. 44 (2005) 1051): male
  ``9270 W / (6680 + 216 BMI)``, female ``9270 W / (8780 + 244 BMI)``, ``BMI = W / H_m**2``. Tahari
  et al. (J. Nucl. Med. 55 (2014) 1481) showed that James-based SUL breaks down in obese patients
  and recommended this formula for SUL in PET: use it for PERCIST-style SUL.
* ``"bsa"``: Du Bois and Du Bois (Arch. Intern. Med. 17 (1916) 863):
  ``BSA_m2 = 0.007184 W**0.425 H_cm**0.725``; SUVbsa is in cm2/ml.

Plausibility (adult and paediatric human patients): weight 1..500 kg, height 0.3..2.5 m
(PatientSize is in metres; 170 means centimetres were written), injected activity 1 MBq..20 GBq,
uptake time 0..24 half-lives. Values outside raise :class:`medkern.DicomError` naming the tag.
"""

from __future__ import annotations

import datetime
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medkern.errors import DicomError
from medkern.image import Image
from medkern.io.dicom import DicomSeries

__all__ = ["suv", "SUV_KINDS", "lean_body_mass", "body_surface_area"]

SUV_KINDS = ("bw", "lbm", "lbm-janma", "bsa")
WEIGHT_RANGE_KG = (1.0, 500.0)
HEIGHT_RANGE_M = (0.3, 2.5)
DOSE_RANGE_BQ = (1e6, 2e10)
MAX_HALF_LIVES = 24
# A start time of day after the scan's is the evening before only when the uptake is shorter.
_MIDNIGHT_UPTAKE_LIMIT = datetime.timedelta(hours=12)
_GE_PRIVATE = (0x0009, "GEMS_PETD_01", 0x0D)  # scan date and time (DT)
_PHILIPS_PRIVATE = "Philips PET Private Group"
_PHILIPS_SUV_FACTOR = (0x7053, _PHILIPS_PRIVATE, 0x00)
_PHILIPS_ACTIVITY_FACTOR = (0x7053, _PHILIPS_PRIVATE, 0x09)


def lean_body_mass(weight_kg: float, height_m: float, sex: str, formula: str = "james") -> float:
    """Lean body mass in kg by James (1976) or Janmahasatian et al. (2005); see the module docstring."""
    if sex not in ("M", "F"):
        raise ValueError(f"sex must be 'M' or 'F' for a lean body mass, got {sex!r}")
    if formula == "james":
        a, b = (1.10, 128.0) if sex == "M" else (1.07, 148.0)
        return a * weight_kg - b * (weight_kg / (height_m * 100.0)) ** 2
    if formula == "janmahasatian":
        bmi = weight_kg / height_m ** 2
        return 9270.0 * weight_kg / ((6680.0 + 216.0 * bmi) if sex == "M" else (8780.0 + 244.0 * bmi))
    raise ValueError(f"formula must be 'james' or 'janmahasatian', got {formula!r}")


def body_surface_area(weight_kg: float, height_m: float) -> float:
    """Body surface area in m2 by Du Bois and Du Bois (1916)."""
    return 0.007184 * weight_kg ** 0.425 * (height_m * 100.0) ** 0.725


# ---------------------------------------------------------------------------------- header values
def _where(series: Any) -> str:
    return f"PET series {series.key}"


def _number(ds: Any, keyword: str, where: str, required: bool = True) -> float | None:
    value = ds.get(keyword)
    if value in (None, ""):
        if required:
            raise DicomError(f"{where}: {keyword} is missing; the SUV cannot be computed without it")
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DicomError(f"{where}: {keyword} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DicomError(f"{where}: {keyword} is {number}, not a finite number")
    return number


def _private(ds: Any, tag: tuple[int, str, int]) -> Any:
    group, creator, element = tag
    try:
        return ds.get_private_item(group, element, creator).value
    except KeyError:
        return None


def _datetime(date: Any, time: Any, what: str, where: str) -> datetime.datetime:
    from pydicom.valuerep import DA, TM

    if date in (None, "") or time in (None, ""):
        raise DicomError(f"{where}: {what} is missing; the SUV cannot be computed without it")
    try:
        day = DA(str(date).strip())
        moment = TM(str(time).strip())
    except ValueError:
        raise DicomError(f"{where}: {what} {str(date)!r} {str(time)!r} is not a valid DICOM date and time") from None
    return datetime.datetime.combine(day, moment)


def _dt(value: Any, what: str, where: str) -> datetime.datetime:
    from pydicom.valuerep import DT

    try:
        parsed = DT(str(value).strip())
    except ValueError:
        raise DicomError(f"{where}: {what} {str(value)!r} is not a valid DICOM date-time (DT)") from None
    return datetime.datetime(*parsed.timetuple()[:6], parsed.microsecond)  # local time: offset dropped


def _acquired(ds: Any, where: str) -> datetime.datetime | None:
    """When an image's acquisition started (AcquisitionDate/Time, else AcquisitionDateTime)."""
    if ds.get("AcquisitionTime"):
        return _datetime(ds.get("AcquisitionDate") or ds.get("SeriesDate"), ds.AcquisitionTime,
                         "AcquisitionDate/AcquisitionTime", where)
    if ds.get("AcquisitionDateTime"):
        return _dt(ds.AcquisitionDateTime, "AcquisitionDateTime", where)
    return None


def _scan_time(headers: list[Any], half_life: float, where: str) -> datetime.datetime:
    """The time the values are decay corrected to (DecayCorrection START), per the pseudo-code."""
    first = headers[0]
    series_time = _datetime(first.get("SeriesDate"), first.get("SeriesTime"), "SeriesDate/SeriesTime", where)
    acquired = [(t, ds) for ds in headers if (t := _acquired(ds, where)) is not None]
    if not acquired:
        return series_time
    earliest, image = min(acquired, key=lambda pair: pair[0])
    if series_time <= earliest:
        return series_time
    # A post-processed series: its series time is when it was made, not when it was acquired.
    ge = _private(first, _GE_PRIVATE)
    if ge:
        return _dt(ge, "GE private scan date and time (0009,100D)", where)
    reference = _number(image, "FrameReferenceTime", where, required=False)
    duration = _number(image, "ActualFrameDuration", where, required=False)
    if reference and duration and reference > 0 and duration > 0:
        decay = math.log(2.0) / half_life
        during = decay * duration / 1000.0
        mean_count_time = math.log(during / (1.0 - math.exp(-during))) / decay
        return earliest - datetime.timedelta(seconds=reference / 1000.0 - mean_count_time)
    return earliest


def _injection_time(drug: Any, scan: datetime.datetime, where: str) -> datetime.datetime:
    from pydicom.valuerep import TM

    if drug.get("RadiopharmaceuticalStartDateTime"):
        start = _dt(drug.RadiopharmaceuticalStartDateTime, "RadiopharmaceuticalStartDateTime", where)
        if start > scan:
            raise DicomError(f"{where}: RadiopharmaceuticalStartDateTime {start:%Y-%m-%d %H:%M:%S} is after the scan "
                             f"start {scan:%Y-%m-%d %H:%M:%S}: the injection cannot follow the acquisition")
        return start
    text = drug.get("RadiopharmaceuticalStartTime")
    if not text:
        raise DicomError(f"{where}: RadiopharmaceuticalStartDateTime and RadiopharmaceuticalStartTime are missing "
                         "from the RadiopharmaceuticalInformationSequence; the injection time is needed for the "
                         "decay correction")
    try:
        moment = TM(str(text).strip())
    except ValueError:
        raise DicomError(f"{where}: RadiopharmaceuticalStartTime {str(text)!r} is not a valid DICOM time") from None
    start = datetime.datetime.combine(scan.date(), moment)
    if start > scan:
        evening = start - datetime.timedelta(days=1)
        if scan - evening >= _MIDNIGHT_UPTAKE_LIMIT:
            raise DicomError(f"{where}: RadiopharmaceuticalStartTime {moment:%H:%M:%S} is after the scan start "
                             f"{scan:%H:%M:%S}, and taking it as the evening before gives {scan - evening} of "
                             "uptake: the injection cannot follow the acquisition")
        start = evening
    return start


def _decayed_dose(headers: list[Any], drug: Any, where: str) -> float:
    """The injected activity at the time the values refer to (Bq)."""
    dose = _number(drug, "RadionuclideTotalDose", f"{where} (RadiopharmaceuticalInformationSequence)")
    if not DOSE_RANGE_BQ[0] <= dose <= DOSE_RANGE_BQ[1]:
        raise DicomError(f"{where}: RadionuclideTotalDose {dose:g} Bq is implausible (expected "
                         f"{DOSE_RANGE_BQ[0]:g}..{DOSE_RANGE_BQ[1]:g} Bq; was it written in MBq or mCi?)")
    correction = str(headers[0].get("DecayCorrection", "")).strip().upper()
    if correction == "ADMIN":
        return dose
    if correction != "START":
        raise DicomError(f"{where}: DecayCorrection is {correction or 'missing'!r}; the SUV needs values decay "
                         "corrected to the scan start (START) or to the administration (ADMIN)")
    half_life = _number(drug, "RadionuclideHalfLife", f"{where} (RadiopharmaceuticalInformationSequence)")
    if half_life <= 0:
        raise DicomError(f"{where}: RadionuclideHalfLife {half_life:g} s is not positive")
    scan = _scan_time(headers, half_life, where)
    uptake = (scan - _injection_time(drug, scan, where)).total_seconds()
    if uptake > MAX_HALF_LIVES * half_life:
        raise DicomError(f"{where}: {uptake:.0f} s from injection to scan is more than {MAX_HALF_LIVES} half-lives "
                         f"({half_life:g} s): the injection or scan times are wrong")
    return dose * 2.0 ** (-uptake / half_life)


def _weight(ds: Any, where: str, override: float | None) -> float:
    if override is not None:
        return _in_range(override, WEIGHT_RANGE_KG, "weight_kg", "kg", ValueError)
    value = _number(ds, "PatientWeight", where)
    return _in_range(value, WEIGHT_RANGE_KG, f"{where}: PatientWeight", "kg", DicomError)


def _in_range(value: Any, bounds: tuple[float, float], name: str, unit: str, error: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise error(f"{name} must be a finite number in {unit}, got {value!r}")
    if not bounds[0] <= value <= bounds[1]:
        hint = " (PatientSize is in metres)" if unit == "m" and value > bounds[1] else ""
        raise error(f"{name} {value:g} {unit} is implausible: expected {bounds[0]:g}..{bounds[1]:g} {unit}{hint}")
    return float(value)


def _body_size(ds: Any, kind: str, weight: float, height_m: Any, sex: Any, where: str) -> float:
    """N of ``SUV = C * N / D``: g for bw and lbm, cm2 for bsa."""
    if kind == "bw":
        return weight * 1000.0
    if height_m is not None:
        height = _in_range(height_m, HEIGHT_RANGE_M, "height_m", "m", ValueError)
    else:
        height = _in_range(_number(ds, "PatientSize", where), HEIGHT_RANGE_M, f"{where}: PatientSize", "m", DicomError)
    if kind == "bsa":
        return body_surface_area(weight, height) * 1e4
    if sex is not None:
        if sex not in ("M", "F"):
            raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    else:
        sex = str(ds.get("PatientSex", "")).strip().upper()
        if sex not in ("M", "F"):
            raise DicomError(f"{where}: PatientSex is {sex or 'missing'!r}; the lean body mass formulas are defined "
                             "for M and F only (pass sex='M' or 'F')")
    lbm = lean_body_mass(weight, height, sex, "james" if kind == "lbm" else "janmahasatian")
    if lbm <= 0:
        raise DicomError(f"{where}: the James lean body mass of {weight:g} kg at {height:g} m is {lbm:.1f} kg: the "
                         "formula fails in severe obesity; use kind='lbm-janma'")
    return lbm * 1000.0


# ---------------------------------------------------------------------------------- series
def _pet_series(pet: Any, series_uid: str | None) -> Any:
    from medkern.io.dicom import DicomSeries, list_dicom_series
    from medkern.io.dicom._series import _choose

    if isinstance(pet, DicomSeries):
        series = pet
    elif isinstance(pet, (str, os.PathLike)):
        d = Path(pet)
        if not d.is_dir():
            raise ValueError(f"pet must be a DicomSeries, a DICOM directory or the series' files; "
                             f"{d} is not a directory")
        found = list_dicom_series(d)
        pets = [s for s in found if s.modality == "PT"]
        series = _choose(pets if series_uid is None and pets else found, series_uid, d)
    elif isinstance(pet, Sequence) and not isinstance(pet, (str, bytes)):
        from medkern.analysis.dicom_objects import _source_series

        series = _source_series(pet)[0]
    else:
        raise TypeError(f"pet must be a DicomSeries, a DICOM directory or the series' files, got {type(pet).__name__}"
                        " (a medkern Image does not keep the DICOM header the SUV needs)")
    if series.modality != "PT":
        raise DicomError(f"{_where(series)} is not a PET series (Modality {series.modality!r})")
    return series


def _slice_files(series: Any) -> list[Path] | None:
    """The file of each grid slice, or None when slices were interpolated."""
    layout = series._layout
    if layout.interpolation is not None or layout.shifts is not None:
        return None
    return [fr.file.path for fr in layout.frames]


def _factors(series: Any, headers: dict[Path, Any], kind: str, weight_kg: Any, height_m: Any, sex: Any
             ) -> dict[Path, float]:
    """The SUV scale factor of each file (values -> SUV of ``kind``)."""
    where = _where(series)
    ordered = list(headers.values())
    first = ordered[0]
    units = {str(ds.get("Units", "")).strip().upper() for ds in ordered}
    if len(units) > 1:
        raise DicomError(f"{where}: its images have different Units {sorted(units)}")
    (unit,) = units
    if unit == "GML":
        suv_type = str(first.get("SUVType", "")).strip().upper()
        if suv_type not in ("", "BW"):
            raise DicomError(f"{where}: Units GML with SUVType {suv_type}: the values are SUV{suv_type.lower()}, not "
                             "SUVbw, and cannot be converted")
        if kind == "bw" and weight_kg is None:
            return dict.fromkeys(headers, 1.0)
        recorded = _weight(first, where, None)  # the scanner's SUVbw used this weight
        weight = _weight(first, where, weight_kg)
        size = _body_size(first, kind, weight, height_m, sex, where)
        return dict.fromkeys(headers, size / (recorded * 1000.0))
    if unit not in ("BQML", "CNTS"):
        raise DicomError(f"{where}: Units is {unit or 'missing'!r}; the SUV needs BQML (Bq/ml), CNTS with the Philips "
                         "SUV or activity scale factor, or GML (already SUVbw)")
    corrected_image = first.get("CorrectedImage") or []
    corrected = {str(v).strip().upper() for v in ([corrected_image] if isinstance(corrected_image, str)
                                                  else corrected_image)}
    if not {"ATTN", "DECY"} <= corrected:
        raise DicomError(f"{where}: CorrectedImage {sorted(corrected)} lacks "
                         f"{' and '.join(sorted({'ATTN', 'DECY'} - corrected))}: the values are not attenuation and "
                         "decay corrected activity concentrations")
    drugs = first.get("RadiopharmaceuticalInformationSequence") or []
    if len(drugs) != 1:
        raise DicomError(f"{where}: RadiopharmaceuticalInformationSequence has {len(drugs)} items; the SUV needs "
                         "exactly one radiopharmaceutical")
    weight = _weight(first, where, weight_kg)
    size = _body_size(first, kind, weight, height_m, sex, where)
    if unit == "CNTS":
        philips = {p: _private(ds, _PHILIPS_SUV_FACTOR) for p, ds in headers.items()}
        if all(v not in (None, "") for v in philips.values()):
            recorded = _weight(first, where, None)
            return {p: float(v) * size / (recorded * 1000.0) for p, v in philips.items()}
        activity = {p: _private(ds, _PHILIPS_ACTIVITY_FACTOR) for p, ds in headers.items()}
        if not all(v not in (None, "") for v in activity.values()):
            raise DicomError(f"{where}: Units CNTS without the Philips private SUV scale factor (7053,1000) or "
                             "activity concentration scale factor (7053,1009) in every image")
        per_gram = size / _decayed_dose(ordered, drugs[0], where)
        return {p: float(v) * per_gram for p, v in activity.items()}
    return dict.fromkeys(headers, size / _decayed_dose(ordered, drugs[0], where))


def suv(pet: DicomSeries | str | os.PathLike[str] | Sequence[str | os.PathLike[str]], kind: str = "bw", *,
        series_uid: str | None = None, weight_kg: float | None = None, height_m: float | None = None,
        sex: str | None = None, allow_irregular: bool = False) -> Image:
    """Read a PET series in standardized uptake values (SUV), as a float32 Image on its grid.

    ``SUV = C * N / D``: ``C`` the activity concentration of a voxel (Bq/ml), ``D`` the injected
    activity decayed to the time the voxel values refer to (Bq), and ``N`` the body size: weight
    in g (SUVbw), lean body mass in g (SUVlbm / SUL) or body surface area in cm2 (SUVbsa). The
    SUVbw scale factor follows the QIBA vendor-neutral pseudo-code: CorrectedImage must contain
    ATTN and DECY and DecayCorrection be START (ADMIN accepted too; NONE raises); Units BQML,
    Philips CNTS (private SUV scale factor) or GML (already SUVbw); scan time from the series
    or, for a post-processed series, the GE private scan time or the earliest acquisition;
    injection time from RadiopharmaceuticalStartDateTime, or StartTime on the scan's date
    (spanning midnight when the uptake stays below 12 hours);
    ``decayed dose = RadionuclideTotalDose * 2 ** (-(scan - injection) / RadionuclideHalfLife)``.
    Rescale slope and intercept are applied per slice. Plausibility limits: weight 1..500 kg,
    height 0.3..2.5 m, injected activity 1 MBq..20 GBq, uptake 0..24 half-lives.

    Parameters
    ----------
    pet : DicomSeries, str, os.PathLike or list of path
        A :class:`~medkern.DicomSeries` of a PET series, a directory (its one PET series;
        ``series_uid`` picks one of several), or the list of the series' files.
    kind : {"bw", "lbm", "lbm-janma", "bsa"}, optional
        ``"bw"`` (body weight, g/ml; default), ``"lbm"`` (lean body mass by James 1976, g/ml),
        ``"lbm-janma"`` (lean body mass by Janmahasatian et al. 2005, the SUL recommended by
        Tahari et al. 2014 for PERCIST, g/ml) or ``"bsa"`` (body surface area by Du Bois 1916,
        cm2/ml).
    series_uid : str, optional
        Picks one of several PET series in a directory.
    weight_kg : float, optional
        Replaces PatientWeight (e.g. when the header lacks it).
    height_m : float, optional
        Replaces PatientSize; needed for lbm and bsa.
    sex : {"M", "F"}, optional
        Replaces PatientSex; needed for lbm.
    allow_irregular : bool, optional
        Read an irregular series onto a regular grid (see :func:`read_dicom_series`).

    Returns
    -------
    Image
        float32 SUV on the series' grid.

    Raises
    ------
    medkern.DicomError
        Missing or implausible header values (the message names the attribute), several
        radiopharmaceuticals, or per-image factors on an interpolated grid.
    ValueError
        An unknown kind, or bad arguments.
    TypeError
        Arguments of the wrong type.

    See Also
    --------
    read_dicom_series : The activity concentration as stored.
    list_dicom_series : Find the PET series of a study.

    Examples
    --------
    A PET series of 5000 Bq/ml everywhere: 370 MBq of F-18 injected at 10:00, scan at 11:00,
    75 kg:

    >>> import pydicom
    >>> from pydicom.dataset import Dataset
    >>> activity = mk.Image(np.full((2, 4, 4), 5000, np.int16), spacing=(3.0, 2.0, 2.0))
    >>> for f in mk.write_dicom_series(activity, "pet", modality="OT"):
    ...     ds = pydicom.dcmread(f)
    ...     ds.Modality, ds.SOPClassUID = "PT", pydicom.uid.PositronEmissionTomographyImageStorage
    ...     ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ...     ds.Units, ds.CorrectedImage, ds.DecayCorrection = "BQML", ["DECY", "ATTN"], "START"
    ...     ds.SeriesDate, ds.SeriesTime, ds.PatientWeight = "20240101", "110000", "75"
    ...     drug = Dataset()
    ...     drug.RadionuclideTotalDose, drug.RadionuclideHalfLife = "370000000", "6586.2"
    ...     drug.RadiopharmaceuticalStartTime = "100000"
    ...     ds.RadiopharmaceuticalInformationSequence = [drug]
    ...     ds.save_as(f, enforce_file_format=True)
    >>> suv = mk.suv("pet")
    >>> suv.dtype, round(float(suv.array.mean()), 3)       # 5000 * 75000 g / 253.3 MBq
    (dtype('float32'), 1.48)
    """
    from medkern.io.dicom_write import identifying_values, identity_redacted, source_header

    if kind not in SUV_KINDS:
        raise ValueError(f"kind must be one of {', '.join(SUV_KINDS)}, got {kind!r}")
    with identity_redacted() as secrets:
        series = _pet_series(pet, series_uid)
        headers = {p: source_header(p) for p in series.files}
        secrets.extend(identifying_values(next(iter(headers.values()))))
        factors = _factors(series, headers, kind, weight_kg, height_m, sex)
    img = series.read(allow_irregular=allow_irregular)
    values = np.asarray(img, dtype=np.float64)
    if len(set(factors.values())) == 1:
        scale: Any = next(iter(factors.values()))
    else:
        files = _slice_files(series)
        if files is None:
            raise DicomError(f"{_where(series)}: its images have different SUV scale factors and its slices were "
                             "interpolated onto a regular grid, so no factor belongs to a grid slice")
        scale = np.asarray([factors[p] for p in files])[:, None, None]
    return img.with_array((values * scale).astype(np.float32))
