"""Guideline engine and the shipped guidelines: every rule at its boundaries against hand-made
tables from the cited sources, missing inputs with their alternatives, hostile or broken files,
and a user's own guideline file."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

import medkern as mk
from medkern.analysis.guideline import (
    DISCLAIMER,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    Guideline,
    GuidelineError,
    available_guidelines,
    load_guideline,
)
from medkern.analysis.patient import PatientError
from medkern.errors import MedkernError

SHIPPED = Path(mk.__file__).resolve().parent / "analysis" / "guidelines"
REPORT_SCHEMA = Path(mk.__file__).resolve().parent / "analysis" / "schemas" / "report-v1.schema.json"


def _findings(*diameters: float) -> dict:
    lesions = [{"id": i + 1, "max_diameter_mm": d, "axial_diameter_mm": d * 0.9, "volume_cm3": 0.5, "location": None}
               for i, d in enumerate(diameters)]
    return {"lesion_count": len(lesions), "total_volume_cm3": 0.5 * len(lesions),
            "max_diameter_mm": max(diameters, default=None), "lesions": lesions}


def _evaluate(name: str, patient: dict, *diameters: float) -> dict:
    return load_guideline(name).evaluate({"patient": patient, "findings": _findings(*diameters)}).to_dict()


def _derived(result: dict, rule_id: str) -> dict:
    return next(d for d in result["derived"] if d["id"] == rule_id)


def _recommended(result: dict) -> list[tuple[str, int | None]]:
    return [(r["id"], r.get("lesion_id")) for r in result["recommendations"]]


def _missing(result: dict, field: str) -> dict:
    return next(m for m in result["missing"] if m["field"] == field)


# ============================================================================= sarcoma: AJCC 8th, chapter 41
@pytest.mark.parametrize("diameter, t", [
    (1.0, "T1"), (50.0, "T1"), (50.1, "T2"), (100.0, "T2"), (100.1, "T3"), (150.0, "T3"), (150.1, "T4"), (400.0, "T4"),
])
def test_t_category_boundaries(diameter, t):
    # AJCC 8th ch. 41: T1 <= 5 cm, T2 > 5 <= 10 cm, T3 > 10 <= 15 cm, T4 > 15 cm; measured in mm.
    item = _derived(_evaluate("sarcoma-extremity", {}, diameter), "t_category")
    assert item["value"] == t
    assert item["inputs"] == {"findings.max_diameter_mm": diameter}
    assert item["reference"]["title"] == "AJCC Cancer Staging Manual, 8th edition" and item["reference"]["year"] == 2017
    assert "Chapter 41" in item["reference"]["section"]


# Stage groups for N0 (or NX, which the chapter counts as N0) and M0, written out from the chapter's table.
AJCC8_STAGE_N0_M0 = {
    ("T1", "G1"): "IA", ("T1", "GX"): "IA", ("T1", "G2"): "II", ("T1", "G3"): "II",
    ("T2", "G1"): "IB", ("T2", "GX"): "IB", ("T2", "G2"): "IIIA", ("T2", "G3"): "IIIA",
    ("T3", "G1"): "IB", ("T3", "GX"): "IB", ("T3", "G2"): "IIIB", ("T3", "G3"): "IIIB",
    ("T4", "G1"): "IB", ("T4", "GX"): "IB", ("T4", "G2"): "IIIB", ("T4", "G3"): "IIIB",
}
DIAMETER_OF = {"T1": 40.0, "T2": 62.0, "T3": 120.0, "T4": 180.0}


@pytest.mark.parametrize("n", ["N0", "NX"])
@pytest.mark.parametrize("t, grade", sorted(AJCC8_STAGE_N0_M0))
def test_every_localized_stage_cell(t, grade, n):
    result = _evaluate("sarcoma-extremity", {"grade": grade, "n_status": n, "m_status": "M0"}, DIAMETER_OF[t])
    stage = _derived(result, "stage")
    assert stage["value"] == AJCC8_STAGE_N0_M0[(t, grade)]
    assert stage["inputs"] == {"derived.t_category": t, "findings.max_diameter_mm": DIAMETER_OF[t],
                               "patient.grade": grade, "patient.m_status": "M0", "patient.n_status": n}
    assert result["missing"] == []


@pytest.mark.parametrize("t", sorted(DIAMETER_OF))
@pytest.mark.parametrize("grade", ["G1", "G2", "G3", "GX"])
@pytest.mark.parametrize("n, m", [("N1", "M0"), ("N0", "M1"), ("N1", "M1"), ("NX", "M1")])
def test_every_stage_iv_cell(t, grade, n, m):
    result = _evaluate("sarcoma-extremity", {"grade": grade, "n_status": n, "m_status": m}, DIAMETER_OF[t])
    assert _derived(result, "stage")["value"] == "IV"
    assert _recommended(result) == [("stage_iv_management", None)]


def test_stage_iv_needs_neither_grade_nor_size_when_m1_or_n1():
    # Missing inputs that cannot change the outcome are not asked for: M1 is stage IV whatever else.
    for patient in ({"m_status": "M1"}, {"n_status": "N1"}, {"n_status": "N1", "m_status": "MX"}):
        result = load_guideline("sarcoma-extremity").evaluate(
            {"patient": patient, "findings": _findings()}).to_dict()
        assert _derived(result, "stage")["value"] == "IV"
        assert [m["field"] for m in result["missing"]] == ["findings.max_diameter_mm"]
        assert _missing(result, "findings.max_diameter_mm")["needed_by"] == ["t_category"]


STAGE_RECOMMENDATIONS = {
    "IA": ["multidisciplinary_review", "surgery_stage_i", "follow_up_stage_i"],
    "IB": ["multidisciplinary_review", "surgery_stage_i", "follow_up_stage_i"],
    "II": ["multidisciplinary_review", "surgery_with_radiotherapy_stage_ii_iii", "preoperative_radiotherapy",
           "chemotherapy_consideration_stage_ii_iii", "follow_up_stage_ii_iii"],
}
STAGE_RECOMMENDATIONS["IIIA"] = STAGE_RECOMMENDATIONS["IIIB"] = STAGE_RECOMMENDATIONS["II"]


@pytest.mark.parametrize("diameter, grade, stage", [
    (40.0, "G1", "IA"), (62.0, "G1", "IB"), (40.0, "G2", "II"), (62.0, "G3", "IIIA"), (120.0, "G2", "IIIB"),
])
def test_treatment_options_per_stage(diameter, grade, stage):
    result = _evaluate("sarcoma-extremity", {"grade": grade, "n_status": "N0", "m_status": "M0"}, diameter)
    assert _derived(result, "stage")["value"] == stage
    assert [r["id"] for r in result["recommendations"]] == STAGE_RECOMMENDATIONS[stage]
    for rec in result["recommendations"]:
        assert rec["reference"]["title"] and rec["reference"]["year"] in (2018, 2021) and rec["reference"]["section"]
        assert rec["inputs"]["derived.stage"] == stage and rec["inputs"]["patient.grade"] == grade
        assert f"stage {stage.lower()}" in rec["rationale"].lower()
    strengths = {r["id"]: r.get("strength") for r in result["recommendations"]}
    # ASTRO 2021 states a strength; the NCCN options here carry none of their own.
    assert strengths["multidisciplinary_review"] == "Strong; quality of evidence: low"
    assert all(s is None for rid, s in strengths.items() if rid not in ("multidisciplinary_review",
                                                                         "preoperative_radiotherapy"))
    if "preoperative_radiotherapy" in strengths:
        assert strengths["preoperative_radiotherapy"] == "Strong; quality of evidence: moderate"


def test_missing_grade_lists_each_grade_with_its_stage():
    result = _evaluate("sarcoma-extremity", {"n_status": "N0", "m_status": "M0"}, 62.0)
    assert _derived(result, "t_category")["value"] == "T2"
    stage = _derived(result, "stage")
    assert stage["value"] is None and stage["rationale"] == "undetermined: needs patient.grade (see missing)"
    assert result["recommendations"] == []
    assert [m["field"] for m in result["missing"]] == ["patient.grade"]
    missing = result["missing"][0]
    assert missing["needed_by"][0] == "stage" and "surgery_stage_i" in missing["needed_by"]
    stage_of = {alt["value"]: alt["outcome"][0] for alt in missing["alternatives"]}
    assert stage_of == {"G1": "Stage group (AJCC 8th, trunk and extremities): IB",
                        "G2": "Stage group (AJCC 8th, trunk and extremities): IIIA",
                        "G3": "Stage group (AJCC 8th, trunk and extremities): IIIA",
                        "GX": "Stage group (AJCC 8th, trunk and extremities): IB"}
    g1 = next(a["outcome"] for a in missing["alternatives"] if a["value"] == "G1")
    assert any(line.startswith("recommendation surgery_stage_i: Surgery") for line in g1)


def test_mx_counts_as_missing_and_says_what_was_given():
    result = _evaluate("sarcoma-extremity", {"grade": "G2", "n_status": "N0", "m_status": "MX"}, 62.0)
    assert _derived(result, "stage")["value"] is None
    missing = _missing(result, "patient.m_status")
    assert missing["given"] == "MX"
    assert [(a["value"], a["outcome"][0]) for a in missing["alternatives"]] == [
        ("M0", "Stage group (AJCC 8th, trunk and extremities): IIIA"),
        ("M1", "Stage group (AJCC 8th, trunk and extremities): IV")]


def test_missing_size_gives_one_alternative_per_t_interval():
    result = _evaluate("sarcoma-extremity", {"grade": "G3", "n_status": "N0", "m_status": "M0"})
    missing = _missing(result, "findings.max_diameter_mm")
    assert [(a["range"], a["value"], a["outcome"][:2]) for a in missing["alternatives"]] == [
        ("≥ 0 and ≤ 50", 25.0, ["T category (AJCC 8th, trunk and extremities): T1",
                                "Stage group (AJCC 8th, trunk and extremities): II"]),
        ("> 50 and ≤ 100", 75.0, ["T category (AJCC 8th, trunk and extremities): T2",
                                  "Stage group (AJCC 8th, trunk and extremities): IIIA"]),
        ("> 100 and ≤ 150", 125.0, ["T category (AJCC 8th, trunk and extremities): T3",
                                    "Stage group (AJCC 8th, trunk and extremities): IIIB"]),
        ("> 150", 151.0, ["T category (AJCC 8th, trunk and extremities): T4",
                          "Stage group (AJCC 8th, trunk and extremities): IIIB"])]


def test_two_missing_fields_each_say_what_else_is_needed():
    result = _evaluate("sarcoma-extremity", {"m_status": "M0"}, 62.0)
    assert [m["field"] for m in result["missing"]] == ["patient.grade", "patient.n_status"]
    g1 = _missing(result, "patient.grade")["alternatives"][0]
    assert g1["value"] == "G1"
    assert g1["outcome"][0].startswith("still undetermined: stage, ") and g1["outcome"][0].endswith(
        "(also needs patient.n_status)")
    n1 = next(a for a in _missing(result, "patient.n_status")["alternatives"] if a["value"] == "N1")
    assert n1["outcome"][0] == "Stage group (AJCC 8th, trunk and extremities): IV"


# ============================================================================= brain metastases
RTOG_CLASS = [  # RTOG 90-05 (Shaw et al. 2000): <= 20 mm 24 Gy, 21-30 mm 18 Gy, 31-40 mm 15 Gy, > 40 mm none
    (20.0, "rtog_9005_dose_up_to_20mm", "24 Gy"),
    (20.4, "rtog_9005_dose_21_to_30mm", "18 Gy"),   # between 20 and 21 mm: the lower-dose class
    (20.5, "rtog_9005_dose_21_to_30mm", "18 Gy"),
    (21.0, "rtog_9005_dose_21_to_30mm", "18 Gy"),
    (30.0, "rtog_9005_dose_21_to_30mm", "18 Gy"),
    (30.5, "rtog_9005_dose_31_to_40mm", "15 Gy"),
    (31.0, "rtog_9005_dose_31_to_40mm", "15 Gy"),
    (40.0, "rtog_9005_dose_31_to_40mm", "15 Gy"),
    (41.0, "rtog_9005_outside_table", "outside the RTOG 90-05 dose table"),
]


@pytest.mark.parametrize("diameter, rule, dose", RTOG_CLASS)
def test_rtog_9005_dose_class_per_lesion(diameter, rule, dose):
    result = _evaluate("brain-metastases", {"ecog": 1, "symptoms": ["none"]}, 8.0, diameter)
    rtog = [r for r in result["recommendations"] if r["id"].startswith("rtog_9005")]
    # Rule order, then lesion order: the 8 mm lesion 1 always sits in the first class.
    assert [(r["id"], r["lesion_id"]) for r in rtog] == [("rtog_9005_dose_up_to_20mm", 1), (rule, 2)]
    lesion2 = next(r for r in rtog if r["lesion_id"] == 2)
    assert lesion2["id"] == rule and dose in lesion2["text"]
    assert lesion2["text"].startswith(f"Lesion 2 ({diameter:g} mm)")
    assert lesion2["inputs"] == {"lesion.id": 2, "lesion.max_diameter_mm": diameter}
    assert lesion2["reference"]["year"] == 2000 and "RTOG protocol 90-05" in lesion2["reference"]["title"]


# ASTRO 2022: < 2 cm 20-24 Gy; >= 2 to < 3 cm 18 Gy or multifraction; >= 3 to 4 cm multifraction; > 4 cm surgery
ASTRO_SIZE = [
    (19.9, "astro_dose_under_20mm", "Strong; quality of evidence: moderate"),
    (20.0, "astro_dose_20_to_30mm", "Conditional; quality of evidence: low"),
    (29.9, "astro_dose_20_to_30mm", "Conditional; quality of evidence: low"),
    (30.0, "astro_dose_30_to_40mm", "Conditional; quality of evidence: low"),
    (40.0, "astro_dose_30_to_40mm", "Conditional; quality of evidence: low"),
    (40.1, "astro_surgery_over_40mm", "Conditional; quality of evidence: low"),
]


@pytest.mark.parametrize("diameter, rule, strength", ASTRO_SIZE)
def test_astro_size_class_per_lesion(diameter, rule, strength):
    result = _evaluate("brain-metastases", {"ecog": 0, "symptoms": ["none"]}, diameter)
    astro = [r for r in result["recommendations"] if r["id"].startswith("astro_")]
    assert [(r["id"], r["lesion_id"], r["strength"]) for r in astro] == [(rule, 1, strength)]
    assert astro[0]["reference"]["title"] == ("Radiation Therapy for Brain Metastases: "
                                              "An ASTRO Clinical Practice Guideline")


# ASTRO 2022: ECOG 0-2 with up to 4 intact metastases: SRS recommended; 5-10: conditionally; otherwise outside.
def _astro_expected(count: int, ecog: int) -> str:
    if ecog > 2 or count > 10:
        return "srs_outside_recommendations"
    return "srs_up_to_4_metastases" if count <= 4 else "srs_5_to_10_metastases"


@pytest.mark.parametrize("count", [1, 4, 5, 10, 11])
@pytest.mark.parametrize("status, ecog", [
    ({"ecog": 0}, 0), ({"ecog": 2}, 2), ({"ecog": 3}, 3), ({"ecog": 4}, 4),
    ({"kps": 100}, 0), ({"kps": 70}, 2), ({"kps": 60}, 2), ({"kps": 50}, 3), ({"kps": 40}, 3), ({"kps": 30}, 4),
    ({"ecog": 3, "kps": 90}, 3),  # the recorded ECOG wins over a converted KPS
])
def test_astro_srs_by_count_and_performance_status(count, status, ecog):
    result = _evaluate("brain-metastases", dict(status, symptoms=["none"]), *([10.0] * count))
    assert _derived(result, "ecog_equivalent")["value"] == ecog
    srs = [r for r in result["recommendations"] if r["id"].startswith("srs_")]
    assert [r["id"] for r in srs] == [_astro_expected(count, ecog)]
    assert srs[0]["inputs"]["findings.lesion_count"] == count
    assert srs[0]["inputs"]["derived.ecog_equivalent"] == ecog
    assert result["missing"] == []


@pytest.mark.parametrize("kps, ecog", [(100, 0), (90, 1), (80, 1), (70, 2), (60, 2), (50, 3), (40, 3), (30, 4),
                                       (20, 4), (10, 4)])
def test_kps_to_ecog_categories(kps, ecog):
    # Ma et al. 2010: KPS 100 = ECOG 0, 80-90 = 1, 60-70 = 2, 40-50 = 3, 10-30 = 4
    item = _derived(_evaluate("brain-metastases", {"kps": kps}, 10.0), "ecog_equivalent")
    assert item["value"] == ecog and item["inputs"] == {"patient.kps": kps}
    assert item["reference"]["year"] == 2010


def test_kps_zero_has_no_ecog_category_and_no_srs_rule():
    result = _evaluate("brain-metastases", {"kps": 0, "symptoms": ["none"]}, 10.0)
    item = _derived(result, "ecog_equivalent")
    assert item["value"] is None and item["rationale"].startswith("not applicable")
    assert not any(r["id"].startswith("srs_") for r in result["recommendations"]) and result["missing"] == []


def test_missing_performance_status_lists_ecog_and_kps():
    result = _evaluate("brain-metastases", {"symptoms": ["none"]}, 12.0, 15.0)
    assert [m["field"] for m in result["missing"]] == ["patient.ecog", "patient.kps"]
    ecog = _missing(result, "patient.ecog")
    assert ecog["needed_by"] == ["ecog_equivalent", "srs_up_to_4_metastases", "srs_outside_recommendations"]
    assert [(a["value"], a["range"]) for a in ecog["alternatives"]] == [(v, str(v)) for v in range(6)]
    assert "recommendation srs_up_to_4_metastases: Stereotactic radiosurgery (SRS) is recommended." in \
        ecog["alternatives"][2]["outcome"]
    ecog_3 = ecog["alternatives"][3]["outcome"]
    assert any(line.startswith("recommendation srs_outside_recommendations") for line in ecog_3)
    kps = _missing(result, "patient.kps")
    assert [(a["value"], a["range"]) for a in kps["alternatives"]] == [
        (0, "0"), (10, "10-30"), (40, "40-50"), (60, "60-70"), (80, "80-90"), (100, "100")]
    assert kps["alternatives"][3]["outcome"] == [
        "Performance status (ECOG, or the ECOG category of the KPS): 2",
        "recommendation srs_up_to_4_metastases: Stereotactic radiosurgery (SRS) is recommended."]
    # Per-lesion measurements need nothing from the patient.
    assert sorted(_recommended(result)) == sorted([
        ("rtog_9005_dose_up_to_20mm", 1), ("rtog_9005_dose_up_to_20mm", 2), ("astro_dose_under_20mm", 1),
        ("astro_dose_under_20mm", 2), ("steroids_asymptomatic", None)])


@pytest.mark.parametrize("symptoms, expected", [
    (["headache"], ["local_therapy_symptomatic", "surgery_mass_effect", "steroids_mass_effect"]),
    (["raised_intracranial_pressure", "nausea_vomiting"],
     ["local_therapy_symptomatic", "surgery_mass_effect", "steroids_mass_effect",
      "steroids_raised_intracranial_pressure"]),
    (["seizure"], ["local_therapy_symptomatic"]),
    (["none"], ["steroids_asymptomatic"]),
    (["fatigue", "weight_loss"], ["steroids_asymptomatic"]),
])
def test_symptom_rules(symptoms, expected):
    result = _evaluate("brain-metastases", {"ecog": 1, "symptoms": symptoms}, 12.0)
    patient_level = [r["id"] for r in result["recommendations"]
                     if "lesion_id" not in r and not r["id"].startswith("srs_")]
    assert patient_level == expected
    for rec in result["recommendations"]:
        if rec["id"].startswith("steroids"):
            assert rec["reference"]["year"] == 2019 and "Steroids" in rec["reference"]["title"]


def test_missing_symptoms_offer_each_asked_symptom_and_one_other():
    result = _evaluate("brain-metastases", {"ecog": 1}, 12.0)
    missing = _missing(result, "patient.symptoms")
    assert missing["needed_by"][0] == "neurological_symptoms"
    values = [a["value"] for a in missing["alternatives"]]
    assert values == [["headache"], ["nausea_vomiting"], ["raised_intracranial_pressure"],
                      ["focal_neurological_deficit"], ["cognitive_impairment"], ["visual_disturbance"], ["seizure"],
                      ["none"]]
    assert missing["alternatives"][-1]["outcome"][0] == "Neurological symptoms: none"


def test_no_lesion_no_brain_recommendation():
    result = _evaluate("brain-metastases", {"ecog": 1, "symptoms": ["headache"]})
    assert result["recommendations"] == [] and result["missing"] == []


# ============================================================================= result format
def test_result_has_exactly_the_documented_keys_and_is_deterministic():
    facts = {"patient": {"grade": "G3", "n_status": "N0", "m_status": "M0"}, "findings": _findings(62.0)}
    g = load_guideline("sarcoma-extremity")
    first, second = g.evaluate(facts).to_dict(), g.evaluate(copy.deepcopy(facts)).to_dict()
    assert list(first) == ["name", "version", "title", "sources", "derived", "recommendations", "missing", "disclaimer"]
    assert json.dumps(first) == json.dumps(second)
    assert first["disclaimer"].startswith("Research decision support, not a medical device;")
    assert first["disclaimer"].startswith(DISCLAIMER)
    for item in first["derived"]:
        assert list(item) == ["id", "name", "value", "rationale", "inputs", "reference"]
    for rec in first["recommendations"]:
        assert set(rec) <= {"id", "text", "rationale", "strength", "inputs", "reference", "lesion_id"}
        assert set(rec["reference"]) <= {"title", "year", "section", "url"}
    assert [s["id"] for s in first["sources"]] == ["ajcc8", "nccn_sts", "astro_sts"]


def test_result_fits_the_report_schema():
    import jsonschema

    if not REPORT_SCHEMA.is_file():
        pytest.skip("the report schema is not in this checkout")
    schema = json.loads(REPORT_SCHEMA.read_text(encoding="utf-8"))
    guideline_schema = dict(schema["properties"]["guideline"], **{"$defs": schema["$defs"]})
    for name, patient, diameters in [("sarcoma-extremity", {}, (62.0,)),
                                     ("brain-metastases", {"symptoms": ["headache"]}, (12.0, 25.0, 45.0))]:
        jsonschema.validate(_evaluate(name, patient, *diameters), guideline_schema,
                            cls=jsonschema.Draft202012Validator)


def test_shipped_guidelines_are_listed_and_apply_to_shipped_models():
    entries = available_guidelines()
    assert [e["name"] for e in entries] == ["brain-metastases", "sarcoma-extremity"]
    assert entries[1]["applies_to"]["models"] == ["sarcoma-petct", "sarcoma-ct"]
    assert entries[1]["applies_to"]["body_region"] == "extremity/trunk"
    assert entries[0]["applies_to"]["models"] == ["brain-lesion"]
    for e in entries:
        assert set(e) == {"name", "title", "version", "applies_to"}
        assert set(e["applies_to"]["models"]) <= set(mk.models.available())


def test_every_shipped_rule_cites_a_source_with_title_year_and_section():
    for path in SHIPPED.glob("*.yaml"):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        sources = {s["id"]: s for s in document["sources"]}
        for rule in document.get("derived", []) + document["recommendations"]:
            assert rule["reference"]["source"] in sources and rule["reference"]["section"], rule["id"]
        for source in sources.values():
            assert source["title"] and 1990 < source["year"] <= 2025 and source["citation"]


def test_guideline_attributes():
    g = load_guideline("sarcoma-extremity")
    assert (g.name, g.version) == ("sarcoma-extremity", "1.0.0")
    assert g.sha256 == hashlib.sha256((SHIPPED / "sarcoma-extremity.yaml").read_bytes()).hexdigest()
    g.applies_to["models"].append("other")
    assert g.applies_to["models"] == ["sarcoma-petct", "sarcoma-ct"]
    assert g.disclaimer.startswith(DISCLAIMER) and "multidisciplinary sarcoma team" in g.disclaimer
    assert load_guideline(SHIPPED / "sarcoma-extremity.yaml").name == "sarcoma-extremity"


# ============================================================================= facts
def test_bad_facts():
    g = load_guideline("sarcoma-extremity")
    with pytest.raises(TypeError, match="facts must be a dict"):
        g.evaluate([])
    with pytest.raises(ValueError, match="unknown key\\(s\\) labs"):
        g.evaluate({"patient": {}, "findings": _findings(10.0), "labs": {}})
    with pytest.raises(TypeError, match="facts\\['findings'\\] must be a dict"):
        g.evaluate({"patient": {}})
    with pytest.raises(ValueError, match="findings.max_diameter_mm must be a finite number"):
        g.evaluate({"patient": {}, "findings": dict(_findings(10.0), max_diameter_mm=float("nan"))})
    with pytest.raises(ValueError, match="findings.lesions\\[0\\] must be a dict with at least an integer id"):
        g.evaluate({"patient": {}, "findings": dict(_findings(10.0), lesions=[{"max_diameter_mm": 3.0}])})
    with pytest.raises(PatientError, match="patient.grade: 'G4' is not allowed"):
        g.evaluate({"patient": {"grade": "G4"}, "findings": _findings(10.0)})


# ============================================================================= loading: names and paths
def test_unknown_name_lists_the_shipped_ones(tmp_path):
    with pytest.raises(GuidelineError, match="no shipped guideline named 'lung'; shipped: brain-metastases, "
                                             "sarcoma-extremity"):
        load_guideline("lung")
    with pytest.raises(GuidelineError, match="guideline file not found"):
        load_guideline(tmp_path / "absent.yaml")
    (tmp_path / "rules.txt").write_text("name: x\n")
    with pytest.raises(GuidelineError, match="a guideline file ends in .yaml, .yml, .json"):
        load_guideline(tmp_path / "rules.txt")
    with pytest.raises(TypeError, match="guideline must be a shipped name or a path"):
        load_guideline(3)
    assert issubclass(GuidelineError, MedkernError) and issubclass(GuidelineError, ValueError)


INSTITUTIONAL = """\
# Our tumour board's listing rule, on top of the shipped staging.
guideline_format: 1
name: board-listing
version: "2024.1"
title: Tumour board listing for large soft-tissue tumours
applies_to: {models: [sarcoma-ct], body_region: extremity/trunk}
disclaimer: Institutional rule of the sarcoma board; not a published guideline.
sources:
  - {id: sop, title: Sarcoma board standard operating procedure, year: 2024}
derived:
  - id: size_class
    name: Size class
    rationale: Size classes of the board's procedure.
    reference: {source: sop, section: "2.1"}
    cases:
      - when: {field: findings.max_diameter_mm, gt: 80}
        value: large
        rationale: "Larger than 80 mm ({findings.max_diameter_mm} mm)."
    otherwise: {value: small}
recommendations:
  - id: fast_track_listing
    when:
      all:
        - {field: derived.size_class, eq: large}
        - {field: patient.age, lt: 70}
    text: List for the sarcoma board within 7 days.
    rationale: "Tumour of {findings.max_diameter_mm} mm at age {patient.age}."
    strength: local standard
    reference: {source: sop, section: "3"}
"""


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_institutional_guideline_by_path(tmp_path, suffix):
    path = tmp_path / f"board{suffix}"
    text = json.dumps(yaml.safe_load(INSTITUTIONAL)) if suffix == ".json" else INSTITUTIONAL
    path.write_text(text, encoding="utf-8")
    g = load_guideline(str(path))
    assert (g.name, g.version, g.sources[0]["year"]) == ("board-listing", "2024.1", 2024)
    listed = g.evaluate({"patient": {"age": 64}, "findings": _findings(92.0)}).to_dict()
    assert _derived(listed, "size_class")["value"] == "large"
    assert listed["recommendations"] == [{
        "id": "fast_track_listing", "text": "List for the sarcoma board within 7 days.",
        "rationale": "Tumour of 92 mm at age 64.", "strength": "local standard",
        "inputs": {"derived.size_class": "large", "findings.max_diameter_mm": 92.0, "patient.age": 64},
        "reference": {"title": "Sarcoma board standard operating procedure", "year": 2024, "section": "3"}}]
    assert g.evaluate({"patient": {"age": 64}, "findings": _findings(80.0)}).to_dict()["recommendations"] == []
    unknown_age = g.evaluate({"patient": {}, "findings": _findings(92.0)}).to_dict()
    assert _missing(unknown_age, "patient.age")["alternatives"] == [
        {"value": 35.0, "range": "≥ 0 and < 70",
         "outcome": ["recommendation fast_track_listing: List for the sarcoma board within 7 days."]},
        {"value": 70.0, "range": "≥ 70 and ≤ 130",
         "outcome": ["no change to the derived values or recommendations"]}]
    small = g.evaluate({"patient": {}, "findings": _findings(50.0)}).to_dict()
    assert small["missing"] == [] and _derived(small, "size_class")["value"] == "small"


def test_a_guideline_can_be_built_from_a_dict():
    g = Guideline(yaml.safe_load(INSTITUTIONAL))
    assert g.path is None and g.sha256 is None and g.name == "board-listing"
    with pytest.raises(GuidelineError, match="guideline does not follow guideline-v1.schema.json"):
        Guideline({"name": "x"})


# ============================================================================= hostile and broken files
def _bomb() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


HOSTILE = [
    ("python_tag.yaml", "!!python/object/apply:os.system ['echo owned']\n",
     "line 1, column 1: tag !!python/object/apply:os.system is not allowed"),
    ("python_name.yaml", "name: !!python/name:os.system\n", "tag !!python/name:os.system is not allowed"),
    ("alias_bomb.yaml", _bomb(), f"more than {MAX_NODES} nodes once aliases are expanded"),
    ("deep.yaml", "x: " + "[" * 2000 + "]" * 2000 + "\n", f"nesting deeper than {MAX_DEPTH} levels"),
    ("deep.json", '{"x": ' + "[" * 100000 + "]" * 100000 + "}", f"nesting deeper than {MAX_DEPTH} levels"),
    ("merge.yaml", "a: &x {k: 1}\nb:\n  <<: *x\n", "tag !!merge is not allowed"),
    ("duplicate.yaml", "name: a\nname: b\n", "key 'name' appears twice in one mapping"),
    ("not_yaml.yaml", "name: [unclosed\n  - : :\n", "line 2, column 5: not valid YAML"),
    ("not_json.json", '{"name": "x",}', "line 1, column 14: not valid JSON"),
    ("scalar.yaml", "just a sentence\n", "a guideline file is a mapping of keys"),
    ("nan.yaml", "a: .nan\n", "a: nan is not a usable number"),
    ("int_key.yaml", "1: a\n", "key 1 is not text"),
]


@pytest.mark.parametrize("name, text, problem", HOSTILE)
def test_hostile_or_broken_files_fail_cleanly(tmp_path, name, text, problem):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(GuidelineError) as info:
        load_guideline(path)
    assert str(info.value).startswith(str(path)) and problem in str(info.value)


def test_huge_and_binary_files_fail_cleanly(tmp_path):
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"# " + b"x" * MAX_FILE_BYTES + b"\n")
    with pytest.raises(GuidelineError, match=f"a guideline file is at most {MAX_FILE_BYTES} bytes"):
        load_guideline(huge)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(GuidelineError, match="not UTF-8 text"):
        load_guideline(binary)


def _mutated(mutate) -> str:
    document = yaml.safe_load(INSTITUTIONAL)
    mutate(document)
    return yaml.safe_dump(document)


def _when(document: dict) -> list:
    return document["recommendations"][0]["when"]["all"]


OPERATORS = "lt, le, gt, ge, eq, ne, in, not_in, contains, exists"
BROKEN_RULES = [
    ("unknown operator", lambda d: _when(d).__setitem__(1, {"field": "patient.age", "between": [18, 70]}),
     f"recommendations[0].when.all[1]: unknown operator 'between'; a condition is all, any, not or "
     f"{{field: <namespace.name>, <operator>: <literal>}} with one operator from {OPERATORS}"),
    ("two operators", lambda d: _when(d)[1].update({"gt": 18}),
     "recommendations[0].when.all[1]: a comparison holds its field and exactly one operator"),
    ("unknown namespace", lambda d: _when(d)[1].update({"field": "labs.creatinine"}),
     "recommendations[0].when.all[1].field: unknown field namespace 'labs' in 'labs.creatinine'; fields start with "
     "patient., findings., derived., lesion."),
    ("unknown patient field", lambda d: _when(d)[1].update({"field": "patient.weight"}),
     "recommendations[0].when.all[1].field: patient.weight is not a patient field; patient fields: age, ecog"),
    ("identifying field", lambda d: _when(d).__setitem__(1, {"field": "patient.patient_id", "eq": "A"}),
     "patient.patient_id is not a patient field"),
    ("number expected", lambda d: _when(d)[1].update({"lt": "seventy"}),
     "recommendations[0].when.all[1].lt: 'seventy' is not of type 'number'"),
    ("enum literal", lambda d: _when(d).append({"field": "patient.grade", "eq": "G4"}),
     "recommendations[0].when.all[2].eq: 'G4' is not a value of patient.grade; allowed: one of G1, G2, G3, GX"),
    ("symptom literal", lambda d: _when(d).append({"field": "patient.symptoms", "contains": "fever"}),
     "'fever' is not a value of patient.symptoms; allowed: one of none, headache"),
    ("derived literal", lambda d: _when(d)[0].update({"eq": "huge"}),
     "'huge' is not a value of derived.size_class; allowed: one of large, small"),
    ("operator for kind", lambda d: _when(d).append({"field": "patient.grade", "lt": 3}),
     "operator lt does not apply to patient.grade (one of G1, G2, G3, GX); use one of eq, ne, in, not_in, exists"),
    ("lesion field outside for_each", lambda d: _when(d).append({"field": "lesion.volume_cm3", "lt": 3}),
     "lesion.* fields exist only in recommendations with for_each: findings.lesions"),
    ("derived used before defined", lambda d: _when(d).append({"field": "derived.stage", "eq": "IV"}),
     "derived.stage is not defined by an earlier derived rule (rules run in order; defined so far: size_class)"),
    ("unknown source", lambda d: d["recommendations"][0]["reference"].update({"source": "nccn"}),
     "recommendations[0].reference.source: 'nccn' is not a source id of this file; sources: sop"),
    ("duplicate rule id", lambda d: d["recommendations"].append(copy.deepcopy(d["recommendations"][0])),
     "rule id 'fast_track_listing' is used more than once"),
    ("missing rationale", lambda d: d["recommendations"][0].pop("rationale"),
     "recommendations[0]: 'rationale' is a required property"),
    ("unknown key", lambda d: d["recommendations"][0].update({"python": "os.system('x')"}),
     "recommendations[0]: unknown key(s) 'python'; allowed: id, when, for_each, text"),
    ("value and value_from", lambda d: d["derived"][0]["cases"][0].update({"value_from": "findings.max_diameter_mm"}),
     "derived[0].cases[0]: a case gives exactly one of value (a literal) or value_from (a field)"),
    ("placeholder field", lambda d: d["recommendations"][0].update({"text": "Weight {patient.weight} kg"}),
     "recommendations[0].text: patient.weight is not a patient field"),
    ("condition as text", lambda d: d["recommendations"][0].update({"when": "patient.age < 70"}),
     "recommendations[0].when: 'patient.age < 70' is not of type 'object'"),
    ("table width", lambda d: d["derived"][0].pop("cases") and d["derived"][0].update(
        {"table": {"columns": ["patient.grade", "patient.n_status"], "rows": [{"match": ["G1"], "value": "x"}]}}),
     "derived[0].table.rows[0].match: 1 entries for 2 columns (patient.grade, patient.n_status)"),
    ("format version", lambda d: d.update({"guideline_format": 2}), "guideline_format: 1 was expected"),
    ("unknown_values on derived", lambda d: d.update({"unknown_values": {"derived.size_class": ["small"]}}),
     "unknown_values.derived.size_class: derived.size_class: unknown_values name patient.* or findings.* fields"),
]


@pytest.mark.parametrize("label, mutate, problem", BROKEN_RULES, ids=[b[0] for b in BROKEN_RULES])
def test_broken_rules_are_named_by_place(tmp_path, label, mutate, problem):
    path = tmp_path / "board.yaml"
    path.write_text(_mutated(mutate), encoding="utf-8")
    with pytest.raises(GuidelineError) as info:
        load_guideline(path)
    message = str(info.value)
    assert message.startswith(str(path)) and problem in message, message


def test_every_problem_is_listed_at_once(tmp_path):
    def two_problems(d):
        _when(d)[1].update({"field": "labs.creatinine"})
        d["recommendations"][0]["reference"].update({"source": "nccn"})

    path = tmp_path / "board.yaml"
    path.write_text(_mutated(two_problems), encoding="utf-8")
    with pytest.raises(GuidelineError) as info:
        load_guideline(path)
    assert len(re.findall(r"^  recommendations\[0\]", str(info.value), flags=re.M)) == 2
