"""PET SUV: generated PET series with hand-computed SUVbw, SUL (James, Janmahasatian) and SUVbsa,
the QIBA scan-time rules (post-processed series, GE private time, frame back-computation), midnight
crossing, vendor units (GML, Philips CNTS), the IBSI patients' PET against the IBSI's own SUV
NIfTI, and every missing or implausible header value.

pydicom's and pydicom-data's test files hold no PET (PT) image, so the series are generated.
"""

from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

import medkern as mk
from medkern._pet import body_surface_area

from _helpers import write_dicom_slices

# The reference case: 370 MBq of F-18 (half-life 6586.2 s) injected at 10:00, scan at 11:00
# (3600 s uptake), 75 kg, 1.80 m. Voxels hold 5000 Bq/ml (and 1000 Bq/ml outside a block).
DOSE, HALF_LIFE, UPTAKE, WEIGHT, HEIGHT = 370e6, 6586.2, 3600.0, 75.0, 1.80
DECAYED = DOSE * 2 ** (-UPTAKE / HALF_LIFE)  # 253314180.2 Bq
SLOPES = (0.5, 0.25, 1.0)  # per slice, as GE writes them: the reader applies each slice's own


def activity() -> np.ndarray:
    a = np.full((3, 6, 7), 1000.0)
    a[:, 2:5, 2:6] = 5000.0
    return a


def write_pet(directory, values=None, slopes=SLOPES, drug=None, per_slice=None, private=None,
              **attributes):
    """A PET series (stored = values / slope per slice, exact); ``attributes`` / ``drug`` override
    the header and the radiopharmaceutical item (None removes); ``per_slice`` sets a keyword per
    slice; ``private`` adds private elements {(group, creator, element): (VR, values per slice)}."""
    values = activity() if values is None else values
    item = {"RadionuclideTotalDose": "370000000", "RadionuclideHalfLife": "6586.2",
            "RadiopharmaceuticalStartTime": "100000"}
    item.update(drug or {})
    header = {"Units": "BQML", "CorrectedImage": ["DECY", "ATTN", "SCAT"], "DecayCorrection": "START",
              "SeriesDate": "20240101", "SeriesTime": "110000", "AcquisitionDate": "20240101",
              "AcquisitionTime": "110000", "PatientWeight": "75", "PatientSize": "1.80", "PatientSex": "M"}
    header.update(attributes)
    stored = [np.round(v / s).astype(np.uint16) for v, s in zip(values, slopes)]
    positions = [(0.0, 0.0, 3.0 * k) for k in range(len(stored))]
    paths = write_dicom_slices(directory, stored, positions, modality="PT", slope=list(slopes), intercept=0.0)
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.PositronEmissionTomographyImageStorage
        for key, value in header.items():
            if value is not None:
                setattr(ds, key, value)
        drug_item = Dataset()
        for key, value in item.items():
            if value is not None:
                setattr(drug_item, key, value)
        ds.RadiopharmaceuticalInformationSequence = [drug_item]
        for key, value in (per_slice or {}).items():
            setattr(ds, key, value[k])
        for (group, creator, element), (vr, per) in (private or {}).items():
            ds.private_block(group, creator, create=True).add_new(element, vr, per[k])
        ds.save_as(p, enforce_file_format=True)
    return directory


def suv_of(values, factor):
    return (values * factor).astype(np.float32)


def test_hand_computed_suv_bw_lbm_bsa(tmp_path):
    d = write_pet(tmp_path / "pet")
    a = activity()
    bw = mk.suv(d)
    assert bw.dtype == np.float32 and bw.same_geometry(mk.read(d))
    np.testing.assert_allclose(bw.array, a * 75000 / DECAYED, rtol=1e-6)
    assert bw.array.max() == pytest.approx(1.48037508, rel=1e-6)  # 5000 * 75000 / 253314180.24
    james = 1.10 * 75 - 128 * (75 / 180) ** 2  # 60.2778 kg (male)
    np.testing.assert_allclose(mk.suv(d, "lbm").array, a * james * 1000 / DECAYED, rtol=1e-6)
    assert mk.suv(d, "lbm").array.max() == pytest.approx(1.18978294, rel=1e-6)
    janma = 9270 * 75 / (6680 + 216 * 75 / 1.80 ** 2)  # 59.5248 kg (male)
    assert mk.suv(d, kind="lbm-janma").array.max() == pytest.approx(5000 * janma * 1000 / DECAYED, rel=1e-6)
    assert mk.suv(d, kind="lbm-janma").array.max() == pytest.approx(1.17492098, rel=1e-6)
    bsa = 0.007184 * 75 ** 0.425 * 180 ** 0.725  # 1.94241 m2
    assert mk.suv(d, kind="bsa").array.max() == pytest.approx(5000 * bsa * 1e4 / DECAYED, rel=1e-6)
    assert mk.suv(d, kind="bsa").array.max() == pytest.approx(0.38339852, rel=1e-6)
    assert body_surface_area(75, 1.8) == pytest.approx(1.9424056, rel=1e-6)


def test_female_lean_body_mass_and_overrides(tmp_path):
    d = write_pet(tmp_path / "pet", PatientSex="F", PatientSize=None)
    james_f = 1.07 * 75 - 148 * (75 / 180) ** 2  # 54.5556 kg
    janma_f = 9270 * 75 / (8780 + 244 * 75 / 1.80 ** 2)  # 48.1871 kg
    assert mk.suv(d, "lbm", height_m=1.8).array.max() == pytest.approx(1.07683580, rel=1e-6)
    assert mk.suv(d, "lbm", height_m=1.8).array.max() == pytest.approx(5000 * james_f * 1000 / DECAYED, rel=1e-6)
    assert mk.suv(d, "lbm-janma", height_m=1.8).array.max() == pytest.approx(5000 * janma_f * 1000 / DECAYED,
                                                                              rel=1e-6)
    # The male formula when sex is given; the weight given replaces PatientWeight.
    james_m = 1.10 * 75 - 128 * (75 / 180) ** 2
    assert mk.suv(d, "lbm", height_m=1.8, sex="M").array.max() == pytest.approx(1.18978294, rel=1e-6)
    assert mk.suv(d, "lbm", height_m=1.8, sex="M").array.max() == pytest.approx(
        5000 * james_m * 1000 / DECAYED, rel=1e-6)
    assert mk.suv(d, weight_kg=60).array.max() == pytest.approx(5000 * 60000 / DECAYED, rel=1e-6)


def test_midnight_crossing_and_start_datetime_preferred(tmp_path):
    # Injection 23:50, scan 00:40 the next day (SeriesDate): 50 min of uptake.
    after_midnight = {"SeriesDate": "20240102", "SeriesTime": "004000", "AcquisitionDate": "20240102",
                      "AcquisitionTime": "004000"}
    d = write_pet(tmp_path / "tm", drug={"RadiopharmaceuticalStartTime": "235000"}, **after_midnight)
    expected = 5000 * 75000 / (370e6 * 2 ** (-3000 / 6586.2))
    assert expected == pytest.approx(1.38978642, rel=1e-6)
    assert mk.suv(d).array.max() == pytest.approx(expected, rel=1e-6)
    d = write_pet(tmp_path / "dt", drug={"RadiopharmaceuticalStartTime": None,
                                                  "RadiopharmaceuticalStartDateTime": "20240101235000"},
                  **after_midnight)
    assert mk.suv(d).array.max() == pytest.approx(expected, rel=1e-6)
    # RadiopharmaceuticalStartDateTime wins over a contradicting StartTime (09:30 would be 90 min).
    d = write_pet(tmp_path / "both", drug={"RadiopharmaceuticalStartDateTime": "20240101100000",
                                                    "RadiopharmaceuticalStartTime": "093000"})
    assert mk.suv(d).array.max() == pytest.approx(1.48037508, rel=1e-6)


def test_post_processed_series_scan_time(tmp_path):
    """SeriesTime after the earliest AcquisitionTime (a series made later): the earliest
    acquisition, the GE private scan time, or the frame back-computation gives the scan start."""
    later = {"SeriesTime": "150000", "per_slice": {"AcquisitionTime": ["110300", "110000", "110600"]}}
    d = write_pet(tmp_path / "earliest", **later)
    assert mk.suv(d).array.max() == pytest.approx(1.48037508, rel=1e-6)  # 11:00, 60 min
    ge = {(0x0009, "GEMS_PETD_01", 0x0D): ("DT", ["20240101110500"] * 3)}
    d = write_pet(tmp_path / "ge", private=ge, **later)
    assert mk.suv(d).array.max() == pytest.approx(5000 * 75000 / (370e6 * 2 ** (-3900 / 6586.2)), rel=1e-6)
    # Back computed from the earliest image's frame: start 11:00, 180 s frame, reference time 120 s.
    framed = dict(later, per_slice=dict(later["per_slice"], FrameReferenceTime=["0", "120000", "0"],
                                        ActualFrameDuration=["180000"] * 3))
    d = write_pet(tmp_path / "frame", **framed)
    decay = math.log(2) / 6586.2
    mean_count_time = math.log(decay * 180 / (1 - math.exp(-decay * 180))) / decay
    assert abs(mean_count_time - 90) < 1  # the mean count time of a short frame is near its middle
    uptake = 3600 - 120 + mean_count_time
    assert mk.suv(d).array.max() == pytest.approx(5000 * 75000 / (370e6 * 2 ** (-uptake / 6586.2)), rel=1e-6)


def test_admin_decay_correction_gml_and_philips_units(tmp_path):
    a = activity()
    d = write_pet(tmp_path / "admin", DecayCorrection="ADMIN")
    np.testing.assert_allclose(mk.suv(d).array, a * 75000 / 370e6, rtol=1e-6)  # no decay: 1.01351 at 5000
    # GML: already SUVbw; no radiopharmaceutical data needed. SUL rescales by LBM / weight.
    suv_values = np.full((3, 6, 7), 2.5)
    d = write_pet(tmp_path / "gml", values=suv_values, slopes=(0.001,) * 3, Units="GML",
                  drug={"RadionuclideTotalDose": None, "RadionuclideHalfLife": None})
    np.testing.assert_allclose(mk.suv(d).array, 2.5, rtol=1e-6)
    james = 1.10 * 75 - 128 * (75 / 180) ** 2
    np.testing.assert_allclose(mk.suv(d, "lbm").array, 2.5 * james / 75, rtol=1e-6)
    # Philips CNTS: the private SUV scale factor per image (after the rescale slope).
    factors = ["0.0001", "0.0002", "0.0003"]
    d = write_pet(tmp_path / "philips", Units="CNTS",
                  private={(0x7053, "Philips PET Private Group", 0x00): ("DS", factors)})
    expect = a * np.asarray([1e-4, 2e-4, 3e-4])[:, None, None]
    np.testing.assert_allclose(mk.suv(d).array, expect, rtol=1e-6)
    np.testing.assert_allclose(mk.suv(d, "lbm").array, expect * james / 75, rtol=1e-6)
    # Without it, the activity concentration factor scales to Bq/ml, then as BQML.
    d = write_pet(tmp_path / "philips_bqml", Units="CNTS",
                  private={(0x7053, "Philips PET Private Group", 0x09): ("DS", ["2.0"] * 3)})
    np.testing.assert_allclose(mk.suv(d).array, 2 * a * 75000 / DECAYED, rtol=1e-6)


def test_directory_with_ct_and_pet_and_file_list(tmp_path):
    d = write_pet(tmp_path / "study" / "pet")
    write_dicom_slices(tmp_path / "study" / "ct", [np.zeros((4, 4), np.uint16)] * 2,
                               [(0, 0, 0), (0, 0, 2)], modality="CT")
    assert mk.suv(tmp_path / "study").array.max() == pytest.approx(1.48037508, rel=1e-6)
    (series,) = mk.list_dicom_series(d)
    assert mk.suv(list(series.files)).array.max() == pytest.approx(1.48037508, rel=1e-6)
    assert mk.suv(series).array.max() == pytest.approx(1.48037508, rel=1e-6)
    with pytest.raises(mk.DicomError, match=r"is not a PET series \(Modality 'CT'\)"):
        mk.suv(tmp_path / "study" / "ct")


IBSI_BODY = {"STS_001": (71.0, 1.63, "M"), "STS_002": (99.0, 1.74, "M"), "STS_003": (80.0, 1.63, "F"),
             "STS_004": (71.0, 1.70, "F")}


@pytest.mark.parametrize("patient", sorted(IBSI_BODY))
def test_ibsi_pet_equals_the_ibsi_suv(shared_data, patient):
    """The IBSI PET series are GE SUVbw (Units GML); the IBSI's NIfTI holds the same SUV."""
    base = shared_data / "ibsi" / "ibsi_validation"
    directory = base / "dicom" / patient / "PET" / "image"
    bw = mk.suv(directory)
    reference = mk.read(base / "nifti" / patient / "PET_image.nii.gz")
    assert bw.same_geometry(reference, atol=1e-3)
    np.testing.assert_allclose(bw.array, reference.array, rtol=1e-6, atol=1e-5)
    weight, height, sex = IBSI_BODY[patient]
    a, b = (1.10, 128) if sex == "M" else (1.07, 148)
    james = a * weight - b * (weight / (height * 100)) ** 2
    np.testing.assert_allclose(mk.suv(directory, "lbm").array, bw.array * james / weight, rtol=1e-6, atol=1e-6)


ERRORS = [
    ({"drug": {"RadionuclideTotalDose": None}}, "bw", "RadionuclideTotalDose is missing"),
    ({"drug": {"RadionuclideTotalDose": "370"}}, "bw", r"RadionuclideTotalDose 370 Bq is implausible.*MBq"),
    ({"drug": {"RadionuclideHalfLife": None}}, "bw", "RadionuclideHalfLife is missing"),
    ({"drug": {"RadionuclideHalfLife": "0"}}, "bw", "RadionuclideHalfLife 0 s is not positive"),
    ({"PatientWeight": None}, "bw", "PatientWeight is missing"),
    ({"PatientWeight": "0.5"}, "bw", r"PatientWeight 0\.5 kg is implausible: expected 1\.\.500 kg"),
    ({"PatientWeight": "600"}, "bw", "PatientWeight 600 kg is implausible"),
    ({"PatientSize": None}, "lbm", "PatientSize is missing"),
    ({"PatientSize": "180"}, "bsa", r"PatientSize 180 m is implausible.*\(PatientSize is in metres\)"),
    ({"PatientSex": "O"}, "lbm-janma", "PatientSex is 'O'; the lean body mass formulas"),
    ({"PatientWeight": "300", "PatientSize": "1.5"}, "lbm", "James lean body mass .* fails in severe obesity"),
    ({"SeriesTime": None}, "bw", "SeriesDate/SeriesTime is missing"),
    pytest.param({"SeriesTime": "256100"}, "bw", "is not a valid DICOM date and time",
                 marks=pytest.mark.filterwarnings("ignore:Invalid value for VR TM")),
    ({"drug": {"RadiopharmaceuticalStartTime": None}}, "bw",
     "RadiopharmaceuticalStartDateTime and RadiopharmaceuticalStartTime are missing"),
    ({"drug": {"RadiopharmaceuticalStartDateTime": "20240101113000"}}, "bw",
     "RadiopharmaceuticalStartDateTime 2024-01-01 11:30:00 is after the scan start"),
    ({"drug": {"RadiopharmaceuticalStartTime": "140000"}}, "bw",
     r"StartTime 14:00:00 is after the scan start 11:00:00, and taking it as the evening before gives 21:00:00"),
    ({"drug": {"RadiopharmaceuticalStartDateTime": "20231228110000"}}, "bw", "more than 24 half-lives"),
    ({"Units": None}, "bw", "Units is 'missing'"),
    ({"Units": "PROPCNTS"}, "bw", "Units is 'PROPCNTS'"),
    ({"Units": "CNTS"}, "bw", r"Units CNTS without the Philips private SUV scale factor \(7053,1000\)"),
    ({"Units": "GML", "SUVType": "LBM"}, "bw", "Units GML with SUVType LBM"),
    ({"CorrectedImage": ["ATTN"]}, "bw", r"CorrectedImage \['ATTN'\] lacks DECY"),
    ({"DecayCorrection": "NONE"}, "bw", "DecayCorrection is 'NONE'"),
    ({"per_slice": {"Units": ["BQML", "BQML", "GML"]}}, "bw", r"different Units \['BQML', 'GML'\]"),
]


@pytest.mark.parametrize("case, kind, message", ERRORS)
def test_missing_and_implausible_header_values(tmp_path, case, kind, message):
    d = write_pet(tmp_path / "pet", **case)
    with pytest.raises(mk.DicomError, match=message):
        mk.suv(d, kind)


def test_argument_errors_and_two_radiopharmaceuticals(tmp_path):
    d = write_pet(tmp_path / "pet")
    with pytest.raises(ValueError, match="kind must be one of bw, lbm, lbm-janma, bsa, got 'sul'"):
        mk.suv(d, "sul")
    with pytest.raises(TypeError, match="does not keep the DICOM header the SUV needs"):
        mk.suv(mk.read(d))
    with pytest.raises(ValueError, match="weight_kg -1 kg is implausible"):
        mk.suv(d, weight_kg=-1)
    with pytest.raises(ValueError, match="height_m 3 m is implausible"):
        mk.suv(d, "bsa", height_m=3)
    with pytest.raises(ValueError, match="sex must be 'M' or 'F', got 'X'"):
        mk.suv(d, "lbm", sex="X")
    with pytest.raises(ValueError, match="is not a directory"):
        mk.suv(next(d.iterdir()))
    for p in d.iterdir():
        ds = pydicom.dcmread(p)
        ds.RadiopharmaceuticalInformationSequence.append(ds.RadiopharmaceuticalInformationSequence[0])
        ds.save_as(p)
    with pytest.raises(mk.DicomError, match="RadiopharmaceuticalInformationSequence has 2 items"):
        mk.suv(d)


def test_per_image_factors_on_an_interpolated_grid_raise(tmp_path):
    """Philips factors differ per image; a recovered (interpolated) grid has slices no image owns."""
    values = np.full((4, 5, 5), 1000.0)
    factors = ["0.0001", "0.0002", "0.0003", "0.0004"]
    d = write_pet(tmp_path / "pet", values=values, slopes=(1.0,) * 4, Units="CNTS",
                  private={(0x7053, "Philips PET Private Group", 0x00): ("DS", factors)})
    (series,) = mk.list_dicom_series(d)
    third = sorted(series.files, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))[2]
    third.unlink()  # slices at 0, 3, 9 mm: one missing
    with pytest.raises(mk.DicomError, match="different SUV scale factors and its slices were interpolated"):
        mk.suv(d, allow_irregular=True)
    equal = write_pet(tmp_path / "equal", values=values, slopes=(1.0,) * 4, Units="CNTS",
                      private={(0x7053, "Philips PET Private Group", 0x00): ("DS", ["0.0001"] * 4)})
    (series,) = mk.list_dicom_series(equal)
    sorted(series.files, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))[2].unlink()
    recovered = mk.suv(equal, allow_irregular=True)
    np.testing.assert_allclose(recovered.array, 0.1, rtol=1e-6)
    assert recovered.shape[0] == 4


def test_analysis_gives_models_pet_in_suv(tmp_path):
    """mk.analyze hands a model's PT input over in SUVbw, never in the stored Bq/ml."""
    from medkern.analysis.analyze import _in_model_units
    from medkern.analysis.study import choose, load_candidates

    d = write_pet(tmp_path / "pet")
    chosen = _in_model_units(choose(load_candidates(d), "PT"))
    np.testing.assert_allclose(chosen.image.array, activity() * 75000 / DECAYED, rtol=1e-6)
    assert "SUVbw" in chosen.reason
    unweighed = write_pet(tmp_path / "unweighed", PatientWeight=None)
    with pytest.raises(mk.DicomError, match="PatientWeight"):
        _in_model_units(choose(load_candidates(unweighed), "PT"))
