"""The patient's clinical context: a versioned JSON Schema and its validation.

    context = validate_patient("patient.json")            # or a dict, or JSON text
    context = validate_patient({"schema_version": 1, "ecog": 1, "grade": "G3"})

Every field except ``schema_version`` is optional. A field that is absent stays absent: guideline
rules that need it report it as missing (with what each possible value would change) instead of
assuming a value. The fields and their allowed values are documented in ``docs/guidelines.md``
and in ``schemas/patient-v1.schema.json`` (draft 2020-12), which this module validates against.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from medkern.errors import MedkernError

__all__ = ["PATIENT_SCHEMA_VERSION", "PatientError", "patient_schema", "validate_patient"]

PATIENT_SCHEMA_VERSION = 1
# A patient context is a few hundred bytes; the cap only stops a wrong path (an image, a log)
# from being read into memory whole.
MAX_PATIENT_FILE_BYTES = 1 << 20
_SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "patient-v1.schema.json"


class PatientError(MedkernError, ValueError):
    """A patient context that does not follow the patient schema; ``problems`` lists each one."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [message])


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return json.loads(_SCHEMA_FILE.read_text(encoding="utf-8"))


def patient_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the patient context, as a new dict."""
    return copy.deepcopy(_schema())


def validate_patient(data: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """Validate a patient context and return a deep copy of it.

    ``data`` is a dict, JSON text (a string starting with ``{``) or the path of a JSON file.
    Raises ``PatientError`` listing every invalid field by its path (``patient.ecog``) with the
    values allowed there, or naming the line and column of malformed JSON.
    """
    if isinstance(data, dict):
        source, document = "patient", _plain(data, "patient")
    elif isinstance(data, (str, os.PathLike)):
        text, source = _read_text(data)
        document = _parse_json(text, source)
    else:
        raise TypeError(f"patient must be a dict, JSON text or a path to a JSON file, got {type(data).__name__}")
    if not isinstance(document, dict):
        raise PatientError(f"{source}: a patient context is a JSON object ({{...}}), got {type(document).__name__}")
    problems = _problems(document)
    if problems:
        raise PatientError(f"{source} does not follow patient-v{PATIENT_SCHEMA_VERSION}.schema.json:\n  "
                           + "\n  ".join(problems), problems)
    return copy.deepcopy(document)


# ----------------------------------------------------------------------------- reading
def _read_text(data: str | os.PathLike) -> tuple[str, str]:
    if isinstance(data, str) and data.lstrip().startswith(("{", "[")):
        return data, "patient JSON"
    path = Path(data)
    if not path.is_file():
        raise PatientError(f"patient file {path} does not exist (give a dict, JSON text or a path to a .json file)")
    size = path.stat().st_size
    if size > MAX_PATIENT_FILE_BYTES:
        raise PatientError(f"patient file {path} is {size} bytes; a patient context is at most "
                           f"{MAX_PATIENT_FILE_BYTES} bytes")
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError as e:
        raise PatientError(f"patient file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses NaN/Infinity and a key given twice in one object (plain
    ``json`` keeps the last one silently, so a typo'd duplicate would change a field unseen)."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"key {', '.join(repeated)} is given twice in one object")
        return dict(pairs)

    return json.loads(text, parse_constant=no_constant, object_pairs_hook=unique_keys)


def _parse_json(text: str, source: str) -> Any:
    try:
        return strict_json(text)
    except json.JSONDecodeError as e:
        raise PatientError(f"{source} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except ValueError as e:
        raise PatientError(f"{source} is not valid JSON: {e}") from None


def _plain(value: Any, where: str) -> Any:
    """Python numbers for numpy scalars and lists for tuples, so that the copy is JSON-able."""
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise PatientError(f"{where}: field names are strings, got {key!r}")
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


# ----------------------------------------------------------------------------- validation
def _validator() -> Any:
    import jsonschema

    def finite_number(checker: Any, instance: Any) -> bool:
        return isinstance(instance, (int, float)) and not isinstance(instance, bool) and math.isfinite(instance)

    def finite_integer(checker: Any, instance: Any) -> bool:
        return finite_number(checker, instance) and float(instance).is_integer()

    # NaN and infinity pass every minimum/maximum test, so they are refused as numbers outright.
    checker = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"number": finite_number, "integer": finite_integer})
    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=checker)
    return cls(_schema())


def _problems(document: dict[str, Any]) -> list[str]:
    errors = sorted(_validator().iter_errors(document), key=lambda e: (_json_path(e.absolute_path), e.validator))
    problems: list[str] = []
    for error in errors:
        text = _describe(error)
        if text not in problems:
            problems.append(text)
    return problems


def _json_path(parts: Any) -> str:
    path = "patient"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _describe(error: Any) -> str:
    path = _json_path(error.absolute_path)
    schema, value, kind = error.schema, error.instance, error.validator
    if kind == "additionalProperties":
        known = ", ".join(schema.get("properties", {}))
        extra = sorted(set(value) - set(schema.get("properties", {})))
        return "; ".join(f"{path}.{name}: unknown field; allowed fields: {known}" for name in extra)
    if kind == "required":
        missing = [name for name in schema["required"] if name not in value]
        return "; ".join(f"{path}.{name}: missing; allowed: {describe_allowed(schema['properties'][name])}"
                         for name in missing)
    if kind == "maxItems" and "none" in value:
        return f"{path}: 'none' cannot be combined with other symptoms ({_show(value)})"
    if kind == "uniqueItems":
        return f"{path}: {_show(value)} repeats an entry; allowed: {describe_allowed(schema)}"
    if kind == "minItems":
        return f"{path}: the list is empty; give [\"none\"] to state that there are none"
    field_schema = _field_schema(error)
    if path.startswith("patient.symptoms["):
        return f"{path}: {_show(value)} is not in the symptom vocabulary; allowed: {describe_allowed(field_schema)}"
    return f"{path}: {_show(value)} is not allowed; allowed: {describe_allowed(field_schema)}"


def _field_schema(error: Any) -> dict[str, Any]:
    """The whole schema of the field an error is about (not only the keyword that failed)."""
    node: Any = _schema()
    for part in error.absolute_path:
        node = node["items"] if isinstance(part, int) else node["properties"][part]
    return node


def _show(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def describe_allowed(schema: dict[str, Any]) -> str:
    """What a patient-schema field admits, in words: 'integer 0-5', 'one of G1, G2, G3, GX'."""
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"])
    kind = schema.get("type")
    if kind in ("integer", "number"):
        low, high = schema.get("minimum"), schema.get("maximum")
        text = kind if low is None and high is None else f"{kind} {low if low is not None else '-inf'}-" \
                                                        f"{high if high is not None else 'inf'}"
        return text + (f" in steps of {schema['multipleOf']}" if "multipleOf" in schema else "")
    if kind == "array":
        text = f"list of {describe_allowed(schema['items'])}"
        return text + (", each at most once" if schema.get("uniqueItems") else "")
    if kind == "object":
        return "object with fields " + ", ".join(schema.get("properties", {}))
    if kind == "string":
        if "pattern" in schema:
            return schema.get("description", f"text matching {schema['pattern']}")
        return f"text of at most {schema['maxLength']} characters" if "maxLength" in schema else "text"
    return json.dumps(schema)
