"""Patient context: schema, validation of dicts, JSON text and files, and the error messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from medkern.analysis.patient import (
    MAX_PATIENT_FILE_BYTES,
    PATIENT_SCHEMA_VERSION,
    PatientError,
    patient_schema,
    validate_patient,
)
from medkern.errors import MedkernError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "guidelines.md"
SYMPTOMS = ("none, headache, seizure, focal_neurological_deficit, cognitive_impairment, nausea_vomiting, "
            "raised_intracranial_pressure, visual_disturbance, pain, palpable_mass, swelling, limb_dysfunction, "
            "weight_loss, fatigue")
FULL = {
    "schema_version": 1, "patient_id": "STS-002-RESEARCH", "age": 58.5, "sex": "male", "ecog": 1, "kps": 80,
    "symptoms": ["palpable_mass", "pain"], "symptoms_free_text": "painless swelling for three months",
    "histology": "undifferentiated pleomorphic sarcoma", "primary_site": "other", "grade": "G3",
    "n_status": "N0", "m_status": "M0",
    "prior_treatment": [{"type": "surgery", "date": "2023-04", "details": "unplanned excision"},
                        {"type": "radiotherapy", "date": "2023"}],
    "extracranial_disease": "none",
}


def _problems(data):
    with pytest.raises(PatientError) as info:
        validate_patient(data)
    return info.value.problems


# ----------------------------------------------------------------------------- valid input
def test_schema_is_draft_2020_12_and_versioned():
    import jsonschema

    schema = patient_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["schema_version"]["const"] == PATIENT_SCHEMA_VERSION
    assert schema["additionalProperties"] is False and schema["required"] == ["schema_version"]
    schema["properties"].clear()  # a copy: the next caller still gets the whole schema
    assert "ecog" in patient_schema()["properties"]


def test_full_context_round_trips_as_a_deep_copy():
    result = validate_patient(FULL)
    assert result == FULL and result is not FULL
    result["prior_treatment"][0]["type"] = "other"
    assert FULL["prior_treatment"][0]["type"] == "surgery"


def test_only_schema_version_is_required():
    assert validate_patient({"schema_version": 1}) == {"schema_version": 1}


def test_json_text_path_and_pathlike_give_the_same_context(tmp_path):
    path = tmp_path / "patient.json"
    path.write_text(json.dumps(FULL), encoding="utf-8")
    assert validate_patient(json.dumps(FULL)) == FULL
    assert validate_patient(path) == FULL
    assert validate_patient(str(path)) == FULL


def test_numpy_scalars_become_python_numbers():
    result = validate_patient({"schema_version": np.int64(1), "ecog": np.int32(2), "age": np.float32(61.5),
                               "symptoms": ("headache",)})
    assert result == {"schema_version": 1, "ecog": 2, "age": 61.5, "symptoms": ["headache"]}
    assert type(result["ecog"]) is int and type(result["age"]) is float
    json.dumps(result)


@pytest.mark.parametrize("kps", range(0, 101, 10))
def test_every_kps_step_is_accepted(kps):
    assert validate_patient({"schema_version": 1, "kps": kps})["kps"] == kps


# ----------------------------------------------------------------------------- one bad field, its allowed values
@pytest.mark.parametrize("field, value, expected", [
    ("ecog", 7, "patient.ecog: 7 is not allowed; allowed: integer 0-5"),
    ("ecog", -1, "patient.ecog: -1 is not allowed; allowed: integer 0-5"),
    ("ecog", 1.5, "patient.ecog: 1.5 is not allowed; allowed: integer 0-5"),
    ("ecog", True, "patient.ecog: true is not allowed; allowed: integer 0-5"),
    ("ecog", "1", "patient.ecog: '1' is not allowed; allowed: integer 0-5"),
    ("kps", 55, "patient.kps: 55 is not allowed; allowed: integer 0-100 in steps of 10"),
    ("kps", 110, "patient.kps: 110 is not allowed; allowed: integer 0-100 in steps of 10"),
    ("age", -1, "patient.age: -1 is not allowed; allowed: number 0-130"),
    ("age", float("nan"), "patient.age: nan is not allowed; allowed: number 0-130"),
    ("age", float("inf"), "patient.age: inf is not allowed; allowed: number 0-130"),
    ("sex", "f", "patient.sex: 'f' is not allowed; allowed: one of female, male, other, unknown"),
    ("grade", "G4", "patient.grade: 'G4' is not allowed; allowed: one of G1, G2, G3, GX"),
    ("n_status", "N2", "patient.n_status: 'N2' is not allowed; allowed: one of N0, N1, NX"),
    ("m_status", "M1a", "patient.m_status: 'M1a' is not allowed; allowed: one of M0, M1, MX"),
    ("primary_site", "lung", "patient.primary_site: 'lung' is not allowed; allowed: one of nsclc, sclc, breast, "
                             "melanoma, renal, colorectal, other, unknown"),
    ("extracranial_disease", "yes", "patient.extracranial_disease: 'yes' is not allowed; allowed: one of none, "
                                    "stable, progressive, unknown"),
    ("histology", "", "patient.histology: '' is not allowed; allowed: text of at most 200 characters"),
    ("patient_id", 17, "patient.patient_id: 17 is not allowed; allowed: text of at most 128 characters"),
    ("symptoms", "headache", "patient.symptoms: 'headache' is not allowed; allowed: list of one of " + SYMPTOMS
                             + ", each at most once"),
])
def test_a_bad_field_is_named_with_its_allowed_values(field, value, expected):
    assert _problems({"schema_version": 1, field: value}) == [expected]


def test_every_bad_field_is_listed_in_one_error():
    bad = {"schema_version": 1, "ecog": 9, "grade": "G4", "kps": 45, "symptoms": ["fever", "headache"], "weight": 80}
    with pytest.raises(PatientError) as info:
        validate_patient(bad)
    message = str(info.value)
    assert message.startswith("patient does not follow patient-v1.schema.json:")
    expected = ["patient.weight: unknown field; allowed fields: schema_version, patient_id, age, sex, ecog, kps, "
                "symptoms, symptoms_free_text, histology, primary_site, grade, n_status, m_status, prior_treatment, "
                "extracranial_disease",
                "patient.ecog: 9 is not allowed; allowed: integer 0-5",
                "patient.grade: 'G4' is not allowed; allowed: one of G1, G2, G3, GX",
                "patient.kps: 45 is not allowed; allowed: integer 0-100 in steps of 10",
                f"patient.symptoms[0]: 'fever' is not in the symptom vocabulary; allowed: one of {SYMPTOMS}"]
    assert info.value.problems == expected
    for line in expected:
        assert line in message


def test_symptom_rules():
    assert _problems({"schema_version": 1, "symptoms": ["none", "headache"]}) == [
        "patient.symptoms: 'none' cannot be combined with other symptoms ([\"none\", \"headache\"])"]
    assert _problems({"schema_version": 1, "symptoms": []}) == [
        "patient.symptoms: the list is empty; give [\"none\"] to state that there are none"]
    repeated = _problems({"schema_version": 1, "symptoms": ["pain", "pain"]})
    assert repeated == [f"patient.symptoms: [\"pain\", \"pain\"] repeats an entry; allowed: list of one of {SYMPTOMS}, "
                        "each at most once"]


def test_schema_version_is_required_and_checked():
    assert _problems({"ecog": 1}) == ["patient.schema_version: missing; allowed: 1"]
    assert _problems({"schema_version": 2}) == ["patient.schema_version: 2 is not allowed; allowed: 1"]


def test_prior_treatment_entries_are_checked_one_by_one():
    problems = _problems({"schema_version": 1, "prior_treatment": [
        {"date": "2020/01/01"}, {"type": "srs", "dose": "20 Gy"}, "surgery", {"type": "proton"}]})
    assert problems == [
        "patient.prior_treatment[0].type: missing; allowed: one of surgery, radiotherapy, srs, wbrt, chemotherapy, "
        "immunotherapy, targeted_therapy, other",
        "patient.prior_treatment[0].date: '2020/01/01' is not allowed; allowed: YYYY, YYYY-MM or YYYY-MM-DD",
        "patient.prior_treatment[1].dose: unknown field; allowed fields: type, date, details",
        "patient.prior_treatment[2]: 'surgery' is not allowed; allowed: object with fields type, date, details",
        "patient.prior_treatment[3].type: 'proton' is not allowed; allowed: one of surgery, radiotherapy, srs, wbrt, "
        "chemotherapy, immunotherapy, targeted_therapy, other"]


# ----------------------------------------------------------------------------- malformed input
def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "patient.json"
    path.write_text('{\n  "schema_version": 1,\n  "ecog": \n}\n', encoding="utf-8")
    with pytest.raises(PatientError, match=re.escape(f"{path} is not valid JSON: Expecting value at line 4, column 1")):
        validate_patient(path)
    # column 30 is the "1" where the ':' after "ecog" should be
    with pytest.raises(PatientError, match="not valid JSON: Expecting ':' delimiter at line 1, column 30"):
        validate_patient('{"schema_version": 1, "ecog" 1}')


@pytest.mark.parametrize("text, problem", [
    ('{"schema_version": 1, "age": NaN}', "NaN is not a JSON number"),
    ('{"schema_version": 1, "ecog": 1, "ecog": 3}', "key ecog is given twice in one object"),
    ('[{"schema_version": 1}]', "a patient context is a JSON object"),
])
def test_json_that_parses_loosely_is_refused(text, problem):
    with pytest.raises(PatientError, match=re.escape(problem)):
        validate_patient(text)


def test_file_problems_are_patient_errors(tmp_path):
    with pytest.raises(PatientError, match="does not exist"):
        validate_patient(tmp_path / "absent.json")
    binary = tmp_path / "image.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(PatientError, match="is not UTF-8 text"):
        validate_patient(binary)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_PATIENT_FILE_BYTES + 1))
    with pytest.raises(PatientError, match=f"a patient context is at most {MAX_PATIENT_FILE_BYTES} bytes"):
        validate_patient(big)


def test_wrong_argument_type_is_a_type_error():
    with pytest.raises(TypeError, match="patient must be a dict, JSON text or a path"):
        validate_patient(42)


def test_patient_error_is_a_medkern_and_value_error():
    assert issubclass(PatientError, MedkernError) and issubclass(PatientError, ValueError)


def test_every_field_is_documented():
    if not DOCS.is_file():
        pytest.skip(f"{DOCS} is not in this checkout")
    text = DOCS.read_text(encoding="utf-8")
    schema = patient_schema()
    for name, prop in schema["properties"].items():
        assert f"`{name}`" in text, f"patient field {name} is not documented in docs/guidelines.md"
        for value in prop.get("enum", []) + prop.get("items", {}).get("enum", []):
            assert f"`{value}`" in text, f"{name} value {value} is not documented in docs/guidelines.md"
