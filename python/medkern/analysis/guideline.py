"""Declarative clinical guidelines: cited rules over facts, evaluated without guessing.

    g = load_guideline("sarcoma-extremity")          # shipped, or a path to your own YAML/JSON
    result = g.evaluate({"patient": context, "findings": findings})
    result.to_dict()   # derived values, recommendations, missing inputs with their alternatives

A guideline file (format: ``schemas/guideline-v1.schema.json``, guide: ``docs/guidelines.md``) holds
*derived* rules, which decide a value (a T category, a stage) by ordered cases or a lookup table,
and *recommendation* rules, which apply when a condition holds, once per study or once per lesion.
Conditions come from a closed set (``all any not`` and the comparisons ``lt le gt ge eq ne in
not_in contains exists`` of one field against a literal); there is no expression language, so a
file cannot run code.

Missing inputs are never guessed. Conditions use three-valued logic: a comparison on an absent
field is *unknown*, ``all`` is false as soon as one part is false and ``any`` true as soon as one
part is true, so a rule is undetermined only when the absent field could change its outcome. For
each absent field the result lists the rules that need it and, for each value it could take,
what would change, found by evaluating the guideline again with that value.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from medkern.analysis.patient import describe_allowed, patient_schema, strict_json, validate_patient
from medkern.errors import MedkernError

__all__ = ["DISCLAIMER", "Guideline", "GuidelineError", "GuidelineResult", "available_guidelines",
           "load_guideline"]

DISCLAIMER = ("Research decision support, not a medical device; the recommendations restate the cited "
              "sources for the inputs shown and must be reviewed by a qualified clinician.")
GUIDELINE_FORMAT = 1
# A guideline is a few hundred rules at most. The caps make a hostile file (an alias bomb, a deep
# nest, a huge document) fail with a clear error instead of exhausting memory or the stack.
MAX_FILE_BYTES = 1 << 20
MAX_NODES = 50_000
MAX_DEPTH = 64
SUFFIXES = (".yaml", ".yml", ".json")

_HERE = Path(__file__).resolve().parent
_SHIPPED = _HERE / "guidelines"
_SCHEMA_FILE = _HERE / "schemas" / "guideline-v1.schema.json"

COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne", "in", "not_in", "contains", "exists")
NAMESPACES = ("patient", "findings", "derived", "lesion")
FINDINGS_FIELDS = {"lesion_count": "integer", "total_volume_cm3": "number", "max_diameter_mm": "number",
                   "lesions": "records"}
LESION_FIELDS = {"id": "integer", "max_diameter_mm": "number", "axial_diameter_mm": "number",
                 "volume_cm3": "number", "location": "text"}
_OPERATORS_BY_KIND = {
    "number": ("lt", "le", "gt", "ge", "eq", "ne", "in", "not_in", "exists"),
    "enum": ("eq", "ne", "in", "not_in", "exists"),
    "text": ("eq", "ne", "in", "not_in", "exists"),
    "list": ("contains", "exists"),
    "records": ("exists",),
}
# Identifying and free-text patient fields never decide anything: rules cannot read them.
_NOT_FOR_RULES = ("schema_version", "patient_id", "symptoms_free_text")
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*)\}")
# Integer fields with at most this many admissible values (ECOG, KPS) are tried value by value;
# wider or real-valued fields get one value per interval cut by the rule thresholds.
_ENUMERABLE_INTEGERS = 101


class GuidelineError(MedkernError, ValueError):
    """A guideline file or name that cannot be used; the message names the file and the place in it.

    It is also a ``ValueError``.

    See Also
    --------
    load_guideline : Raises it.

    Examples
    --------
    >>> from medkern.analysis.guideline import GuidelineError, load_guideline
    >>> try:
    ...     load_guideline("no-such-guideline")
    ... except GuidelineError as exc:
    ...     print(str(exc).split(";")[0])
    no shipped guideline named 'no-such-guideline'
    """


# ============================================================================= field kinds
@dataclass(frozen=True)
class _Kind:
    """What a field holds, enough to check literals and to enumerate its possible values."""

    name: str                          # number | enum | text | list | records
    values: tuple[Any, ...] = ()       # enum members, or the vocabulary of a list
    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None

    def label(self) -> str:
        if self.name == "enum":
            return "one of " + ", ".join(map(str, self.values))
        if self.name == "list":
            return "a list of " + ", ".join(map(str, self.values))
        return {"number": "a number", "text": "text", "records": "a list of records"}[self.name]


def _kind_from_schema(prop: dict[str, Any]) -> _Kind:
    if "enum" in prop:
        return _Kind("enum", tuple(prop["enum"]))
    if "const" in prop:
        return _Kind("enum", (prop["const"],))
    kind = prop.get("type")
    if kind in ("integer", "number"):
        return _Kind("number", integer=kind == "integer", minimum=prop.get("minimum"),
                     maximum=prop.get("maximum"), step=prop.get("multipleOf"))
    if kind == "array":
        items = prop["items"]
        return _Kind("list", tuple(items["enum"])) if "enum" in items else _Kind("records")
    return _Kind("text")


def _simple_kind(name: str, minimum: float | None = 0) -> _Kind:
    if name in ("integer", "number"):
        return _Kind("number", integer=name == "integer", minimum=minimum)
    return _Kind(name)


@lru_cache(maxsize=1)
def _input_kinds() -> dict[str, _Kind]:
    """Kinds of every patient.*, findings.* and lesion.* field (derived kinds come from the rules)."""
    kinds = {f"patient.{name}": _kind_from_schema(prop) for name, prop in patient_schema()["properties"].items()
             if name not in _NOT_FOR_RULES}
    kinds.update({f"findings.{name}": _simple_kind(kind) for name, kind in FINDINGS_FIELDS.items()})
    kinds.update({f"lesion.{name}": _simple_kind(kind, 1 if name == "id" else 0)
                  for name, kind in LESION_FIELDS.items()})
    return kinds


# ============================================================================= three-valued logic
@dataclass(frozen=True)
class _Truth:
    """A condition's outcome: True, False or None (unknown: it depends on a missing field).

    ``used`` holds the field values the outcome rests on; ``missing`` the absent fields that make
    it unknown; ``absent`` the fields an ``exists`` test found absent (they matter when the rule
    ends undetermined: giving them would decide it too).
    """

    value: bool | None
    used: dict[str, Any] = field(default_factory=dict)
    missing: frozenset[str] = frozenset()
    absent: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Lookup:
    status: str                        # present | missing | undetermined | not_applicable
    value: Any = None
    used: dict[str, Any] = field(default_factory=dict)
    missing: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _DerivedOutcome:
    status: str                        # value | not_applicable | undetermined
    value: Any
    inputs: dict[str, Any]
    missing: frozenset[str]
    rationale: str
    reference: dict[str, Any]


class _Scope:
    """The facts one rule sees: the inputs, the derived values so far and, per lesion, the lesion."""

    def __init__(self, facts: dict[str, Any], derived: dict[str, _DerivedOutcome], unknown: dict[str, tuple],
                 lesion: dict[str, Any] | None = None):
        self.facts, self.derived, self.unknown, self.lesion = facts, derived, unknown, lesion

    def lookup(self, path: str) -> _Lookup:
        namespace, name = path.split(".")
        if namespace == "derived":
            outcome = self.derived[name]
            if outcome.status == "undetermined":
                return _Lookup("undetermined", missing=outcome.missing)
            if outcome.status == "not_applicable":
                return _Lookup("not_applicable")
            return _Lookup("present", outcome.value, {path: outcome.value, **outcome.inputs})
        source = self.lesion if namespace == "lesion" else self.facts[namespace]
        value = (source or {}).get(name)
        if value is None or value in self.unknown.get(path, ()):
            return _Lookup("missing", missing=frozenset({path}))
        return _Lookup("present", value, {path: value})


def _compare(op: str, value: Any, literal: Any) -> bool:
    if op == "lt":
        return value < literal
    if op == "le":
        return value <= literal
    if op == "gt":
        return value > literal
    if op == "ge":
        return value >= literal
    if op == "eq":
        return value == literal
    if op == "ne":
        return value != literal
    if op == "in":
        return value in literal
    if op == "not_in":
        return value not in literal
    return literal in value            # contains


@dataclass(frozen=True)
class _Comparison:
    field: str
    op: str
    literal: Any

    def evaluate(self, scope: _Scope) -> _Truth:
        found = scope.lookup(self.field)
        if found.status == "undetermined" or (found.status == "missing" and self.op != "exists"):
            return _Truth(None, missing=found.missing)
        if self.op == "exists":
            absent = frozenset({self.field}) if found.status == "missing" else frozenset()
            return _Truth((found.status == "present") == self.literal, found.used, absent=absent)
        if found.status == "not_applicable":
            return _Truth(False)
        return _Truth(_compare(self.op, found.value, self.literal), found.used)

    def comparisons(self) -> Iterator[_Comparison]:
        yield self


def _merge(truths: list[_Truth]) -> dict[str, Any]:
    used: dict[str, Any] = {}
    for t in truths:
        used.update(t.used)
    return used


def _union(sets: Any) -> frozenset[str]:
    return frozenset().union(*sets)


@dataclass(frozen=True)
class _Junction:
    """``all`` (conjunction) or ``any`` (disjunction) in Kleene's three-valued logic."""

    conjunction: bool
    parts: tuple[Any, ...]

    def evaluate(self, scope: _Scope) -> _Truth:
        results = [p.evaluate(scope) for p in self.parts]
        absent = _union(r.absent for r in results)
        deciding = [r for r in results if r.value is (not self.conjunction)]
        if deciding:
            return _Truth(not self.conjunction, _merge(deciding), absent=absent)
        unknown = [r for r in results if r.value is None]
        if unknown:
            return _Truth(None, _merge(results), _union(r.missing for r in unknown), absent)
        return _Truth(self.conjunction, _merge(results), absent=absent)

    def comparisons(self) -> Iterator[_Comparison]:
        for part in self.parts:
            yield from part.comparisons()


@dataclass(frozen=True)
class _Not:
    part: Any

    def evaluate(self, scope: _Scope) -> _Truth:
        t = self.part.evaluate(scope)
        return _Truth(None if t.value is None else not t.value, t.used, t.missing, t.absent)

    def comparisons(self) -> Iterator[_Comparison]:
        yield from self.part.comparisons()


_ALWAYS = _Junction(True, ())


# ============================================================================= rules
def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{round(value, 2):g}"
    if isinstance(value, list):
        return ", ".join(_format(v) for v in value)
    return str(value)


def _render(template: str, scope: _Scope) -> tuple[str, dict[str, Any]]:
    used: dict[str, Any] = {}

    def fill(match: re.Match[str]) -> str:
        found = scope.lookup(match.group(1))
        if found.status != "present":
            return "not given"
        used[match.group(1)] = found.value
        return _format(found.value)

    return _PLACEHOLDER.sub(fill, template), used


@dataclass(frozen=True)
class _Case:
    when: Any
    value: Any = None
    value_from: str | None = None
    rationale: str | None = None
    reference: dict[str, Any] | None = None


_UNDECIDED = object()


@dataclass(frozen=True)
class _DerivedRule:
    id: str
    name: str
    rationale: str
    reference: dict[str, Any]
    cases: tuple[_Case, ...]
    otherwise: _Case | None

    def decide(self, scope: _Scope) -> _DerivedOutcome:
        """The first case that holds gives the value; an earlier unknown case leaves it undetermined
        unless every case that could hold gives that same value."""
        used: dict[str, Any] = {}
        missing: set[str] = set()
        absent: set[str] = set()
        possible: list[Any] = []
        chosen = self.otherwise
        for case in self.cases:
            t = case.when.evaluate(scope)
            absent |= t.absent
            if t.value is False:
                used.update(t.used)
                continue
            value, value_used, value_missing = self._value_of(case, scope)
            if t.value is None or value is _UNDECIDED:
                possible.append(value)
                missing |= t.missing | value_missing
                continue
            used.update(t.used)
            used.update(value_used)
            chosen = case
            break
        chosen_value = None if chosen is None else self._value_of(chosen, scope)[0]
        if any(v is _UNDECIDED or v != chosen_value for v in possible):
            needs = frozenset(missing | absent)
            return _DerivedOutcome("undetermined", None, {}, needs,
                                   f"undetermined: needs {', '.join(sorted(needs))} (see missing)", self.reference)
        if chosen is None:
            return _DerivedOutcome("not_applicable", None, used, frozenset(),
                                   "not applicable: no case of this rule matches the inputs", self.reference)
        text = " ".join(t for t in (chosen.rationale, self.rationale) if t)
        rationale, template_used = _render(text, scope)
        return _DerivedOutcome("value", chosen_value, {**used, **template_used}, frozenset(), rationale,
                               chosen.reference or self.reference)

    @staticmethod
    def _value_of(case: _Case, scope: _Scope) -> tuple[Any, dict[str, Any], frozenset[str]]:
        if case.value_from is None:
            return case.value, {}, frozenset()
        found = scope.lookup(case.value_from)
        if found.status != "present":
            return _UNDECIDED, {}, found.missing
        return found.value, found.used, frozenset()

    def conditions(self) -> Iterator[Any]:
        for case in self.cases:
            yield case.when


@dataclass(frozen=True)
class _Recommendation:
    id: str
    text: str
    rationale: str
    strength: str | None
    reference: dict[str, Any]
    when: Any
    per_lesion: bool

    def conditions(self) -> Iterator[Any]:
        yield self.when


@dataclass
class _Run:
    """One evaluation of every rule over one set of facts."""

    derived: dict[str, _DerivedOutcome]
    recommendations: list[dict[str, Any]]
    undetermined: dict[str, set[str]]      # rule id -> the missing fields it waits for


# ============================================================================= the guideline
class Guideline:
    """A loaded, validated clinical guideline: cited rules over facts, evaluated without guessing.

    A guideline (format ``guideline-v1.schema.json``; the guide is :doc:`../guidelines`) holds
    *derived* rules, which decide a value (a T category, a stage) by ordered cases or a lookup
    table, and *recommendation* rules, which apply when a condition holds, once per study or once
    per lesion. Conditions come from a closed set (``all any not`` and comparisons of one field
    against a literal); there is no expression language, so a file cannot run code. Missing
    inputs are never guessed: conditions use three-valued logic, and a rule is undetermined only
    when an absent field could change its outcome. Normally made by :func:`load_guideline`.

    Parameters
    ----------
    document : dict
        The parsed guideline file; validated against the schema and compiled rule by rule.
    path : pathlib.Path, optional
        The file it was read from (attribute ``path``), for messages and provenance.
    sha256 : str, optional
        The file's SHA-256 (attribute ``sha256``), for provenance.

    Raises
    ------
    GuidelineError
        The document breaks the schema or a rule is inconsistent; the message names the place.

    See Also
    --------
    load_guideline : Load a shipped guideline or a file.
    GuidelineResult : What ``evaluate`` returns.

    Examples
    --------
    >>> from medkern.analysis.guideline import load_guideline
    >>> g = load_guideline("sarcoma-extremity")
    >>> g
    <medkern Guideline sarcoma-extremity 1.0.0: 2 derived, 8 recommendation rules>
    """

    def __init__(self, document: dict[str, Any], path: Path | None = None, sha256: str | None = None):
        where = str(path) if path else "guideline"
        _check_plain(document, where)
        _validate_schema(document, where)
        document = copy.deepcopy(document)
        compiled = _Compiler(document, where).compile()
        self._document = document
        self._derived_rules, self._recommendation_rules, self._kinds = compiled
        self._unknown = {k: tuple(v) for k, v in document.get("unknown_values", {}).items()}
        self._sources = {s["id"]: s for s in document["sources"]}
        self.path = path
        self.sha256 = sha256

    # ------------------------------------------------------------------ description
    @property
    def name(self) -> str:
        """The guideline's name (a shipped guideline's file name)."""
        return self._document["name"]

    @property
    def version(self) -> str:
        """The guideline's version."""
        return self._document["version"]

    @property
    def title(self) -> str:
        """The guideline's title."""
        return self._document["title"]

    @property
    def applies_to(self) -> dict[str, Any]:
        """What the guideline applies to: ``models``, ``body_region``, ``description``."""
        return copy.deepcopy(self._document["applies_to"])

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The published sources its rules cite: ``id``, ``title``, ``year``, ``citation``..."""
        return copy.deepcopy(self._document["sources"])

    @property
    def disclaimer(self) -> str:
        """The disclaimer: medkern's followed by the guideline's own."""
        return f"{DISCLAIMER} {self._document['disclaimer']}"

    def __repr__(self) -> str:
        return (f"<medkern Guideline {self.name} {self.version}: {len(self._derived_rules)} derived, "
                f"{len(self._recommendation_rules)} recommendation rules>")

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, facts: dict[str, Any]) -> GuidelineResult:
        """Apply the guideline to a patient's context and the imaging findings.

        For each absent field that a rule needs, the result lists the rules waiting for it and,
        for each value it could take, what would change (found by evaluating the guideline
        again with that value).

        Parameters
        ----------
        facts : dict
            ``{"patient": {...}, "findings": {...}}``: the patient context (schema
            ``patient-v1``) and the findings as :func:`medkern.analyze` reports them (see
            :doc:`../guidelines`, "Facts: what a guideline sees").

        Returns
        -------
        GuidelineResult
            Derived values, recommendations with their sources and inputs, and missing inputs.

        Raises
        ------
        GuidelineError
            ``facts`` is malformed, or a value has the wrong type for its field.

        See Also
        --------
        medkern.analyze : Evaluates the guideline of a study.

        Examples
        --------
        >>> from medkern.analysis.guideline import load_guideline
        >>> g = load_guideline("sarcoma-extremity")
        >>> result = g.evaluate({"patient": {"n_status": "N0", "m_status": "M0"},
        ...                      "findings": {"max_diameter_mm": 62.0}})
        >>> result.derived     # the stage needs the grade, which is missing
        {'t_category': 'T2', 'stage': None}
        >>> [m["field"] for m in result.missing]
        ['patient.grade']
        """
        checked = _checked_facts(facts)
        run = self._run(checked)
        needed_by: dict[str, list[str]] = {}
        for rule_id, fields in run.undetermined.items():
            for name in sorted(fields):
                needed_by.setdefault(name, []).append(rule_id)
        missing = []
        for name in sorted(needed_by):
            entry: dict[str, Any] = {"field": name, "needed_by": needed_by[name]}
            given = self._given_unknown(checked, name)
            if given is not None:
                entry["given"] = given
            entry["alternatives"] = self._alternatives(checked, run, name, needed_by[name])
            missing.append(entry)
        derived = []
        for rule in self._derived_rules:
            outcome = run.derived[rule.id]
            derived.append({"id": rule.id, "name": rule.name, "value": outcome.value,
                            "rationale": outcome.rationale, "inputs": _sorted(outcome.inputs),
                            "reference": self._reference(outcome.reference)})
        return GuidelineResult({
            "name": self.name, "version": self.version, "title": self.title, "sources": self.sources,
            "derived": derived, "recommendations": run.recommendations, "missing": missing,
            "disclaimer": self.disclaimer})

    def _run(self, facts: dict[str, Any]) -> _Run:
        derived: dict[str, _DerivedOutcome] = {}
        undetermined: dict[str, set[str]] = {}
        for rule in self._derived_rules:
            outcome = rule.decide(_Scope(facts, derived, self._unknown))
            derived[rule.id] = outcome
            if outcome.status == "undetermined":
                undetermined[rule.id] = set(outcome.missing)
        emitted: list[dict[str, Any]] = []
        for rule in self._recommendation_rules:
            lesions = (facts["findings"].get("lesions") or []) if rule.per_lesion else [None]
            for lesion in lesions:
                scope = _Scope(facts, derived, self._unknown, lesion)
                t = rule.when.evaluate(scope)
                if t.value is None:
                    undetermined.setdefault(rule.id, set()).update(t.missing | t.absent)
                elif t.value:
                    emitted.append(self._emit(rule, scope, t, lesion))
        return _Run(derived, emitted, undetermined)

    def _emit(self, rule: _Recommendation, scope: _Scope, truth: _Truth,
              lesion: dict[str, Any] | None) -> dict[str, Any]:
        text, text_used = _render(rule.text, scope)
        rationale, rationale_used = _render(rule.rationale, scope)
        entry: dict[str, Any] = {"id": rule.id, "text": text, "rationale": rationale}
        if rule.strength:
            entry["strength"] = rule.strength
        entry["inputs"] = _sorted({**truth.used, **text_used, **rationale_used})
        entry["reference"] = self._reference(rule.reference)
        if lesion is not None:
            entry["lesion_id"] = lesion["id"]
        return entry

    def _reference(self, reference: dict[str, Any]) -> dict[str, Any]:
        source = self._sources[reference["source"]]
        out: dict[str, Any] = {"title": source["title"], "year": source["year"]}
        if "section" in reference:
            out["section"] = reference["section"]
        if "url" in source:
            out["url"] = source["url"]
        return out

    def _given_unknown(self, facts: dict[str, Any], name: str) -> Any:
        namespace, key = name.split(".")
        value = facts.get(namespace, {}).get(key) if namespace in ("patient", "findings") else None
        return value if value is not None and value in self._unknown.get(name, ()) else None

    # ------------------------------------------------------------------ alternatives
    def _alternatives(self, facts: dict[str, Any], base: _Run, name: str, rules: list[str]) -> list[dict[str, Any]]:
        namespace, key = name.split(".")
        if namespace not in ("patient", "findings"):
            return []      # per-lesion measurements come from the image; there is nothing to choose
        kind = self._kinds[name]

        def outcome(value: Any) -> list[str]:
            trial = copy.deepcopy(facts)
            trial[namespace][key] = value
            return self._changes(base, self._run(trial), name, rules)

        if kind.name == "number":
            return self._number_alternatives(name, kind, outcome)
        return [{"value": v, "outcome": outcome(v)} for v in self._choices(name, kind)]

    def _choices(self, name: str, kind: _Kind) -> list[Any]:
        """Every enum member; for a list field, each item the rules ask about alone and one they
        do not; for free text, the literals the rules compare it with."""
        unknown = self._unknown.get(name, ())
        if kind.name == "enum":
            return [v for v in kind.values if v not in unknown]
        literals: list[Any] = []
        for c in self._comparisons(name):
            for v in (c.literal if c.op in ("in", "not_in") else [c.literal]):
                if c.op != "exists" and v not in literals:
                    literals.append(v)
        if kind.name == "list":
            others = [v for v in kind.values if v not in literals]
            return [[v] for v in literals + others[:1]]
        return literals if kind.name == "text" else []

    def _comparisons(self, name: str) -> Iterator[_Comparison]:
        for rule in (*self._derived_rules, *self._recommendation_rules):
            for condition in rule.conditions():
                for c in condition.comparisons():
                    if c.field == name:
                        yield c

    def _thresholds(self, name: str, seen: frozenset[str] = frozenset()) -> set[float]:
        """The numbers the rules compare a field with, following derived values copied from it."""
        found: set[float] = set()
        for c in self._comparisons(name):
            for v in (c.literal if c.op in ("in", "not_in") else [c.literal]):
                if c.op != "exists" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    found.add(float(v))
        for rule in self._derived_rules:
            copies = any(case.value_from == name for case in rule.cases)
            if copies and f"derived.{rule.id}" not in seen:
                found |= self._thresholds(f"derived.{rule.id}", seen | {name})
        return found

    def _number_alternatives(self, name: str, kind: _Kind, outcome: Any) -> list[dict[str, Any]]:
        pieces = _pieces(kind, self._thresholds(name))
        groups: list[tuple[list[_Piece], list[str]]] = []
        for piece in pieces:
            result = outcome(piece.representative)
            if groups and groups[-1][1] == result:
                groups[-1][0].append(piece)
            else:
                groups.append(([piece], result))
        return [{"value": members[0].representative, "range": _describe_range(members), "outcome": result}
                for members, result in groups]

    def _changes(self, base: _Run, trial: _Run, name: str, rules: list[str]) -> list[str]:
        """What giving ``name`` a value changes, in words, compared with the result without it."""
        changes: list[str] = []
        for rule in self._derived_rules:
            before, after = base.derived[rule.id], trial.derived[rule.id]
            if (before.status, before.value) == (after.status, after.value):
                continue
            if after.status == "value":
                changes.append(f"{rule.name}: {_format(after.value)}")
            elif after.status == "not_applicable":
                changes.append(f"{rule.name}: not applicable")

        def key(entry: dict[str, Any]) -> tuple[str, Any]:
            return entry["id"], entry.get("lesion_id")

        before_keys = {key(e) for e in base.recommendations}
        after_keys = {key(e) for e in trial.recommendations}
        for entry in trial.recommendations:
            if key(entry) not in before_keys:
                changes.append(f"recommendation {_label(entry)}: {entry['text']}")
        for entry in base.recommendations:
            if key(entry) not in after_keys:
                changes.append(f"no longer recommended: {_label(entry)}")
        waiting: dict[tuple[str, ...], list[str]] = {}
        for rule_id in rules:
            if rule_id in trial.undetermined:
                waiting.setdefault(tuple(sorted(trial.undetermined[rule_id] - {name})), []).append(rule_id)
        for others, rule_ids in waiting.items():
            changes.append(f"still undetermined: {', '.join(rule_ids)}"
                           + (f" (also needs {', '.join(others)})" if others else ""))
        return changes or ["no change to the derived values or recommendations"]


def _label(entry: dict[str, Any]) -> str:
    return entry["id"] + (f" (lesion {entry['lesion_id']})" if "lesion_id" in entry else "")


def _sorted(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(inputs[k]) for k in sorted(inputs)}


# ============================================================================= numeric alternatives
@dataclass(frozen=True)
class _Piece:
    """A stretch of a numeric field's admissible values on which every rule threshold agrees
    (``single``: one integer value of a field that is tried value by value)."""

    low: float
    low_closed: bool
    high: float
    high_closed: bool
    representative: float
    single: bool = False


def _pieces(kind: _Kind, thresholds: set[float]) -> list[_Piece]:
    low = -math.inf if kind.minimum is None else float(kind.minimum)
    high = math.inf if kind.maximum is None else float(kind.maximum)
    if kind.integer:
        step = float(kind.step or 1)
        start = low if math.isfinite(low) else math.floor(min(thresholds, default=0.0)) - step
        stop = high if math.isfinite(high) else max(thresholds, default=start) + step
        if (stop - start) / step < _ENUMERABLE_INTEGERS:
            values = [start + i * step for i in range(int(round((stop - start) / step)) + 1)]
            return [_Piece(v, True, v, True, _number(v, kind), True) for v in values[:-1]] + \
                   [_Piece(values[-1], True, high, True, _number(values[-1], kind), True)]
    cuts = sorted(t for t in thresholds if low <= t <= high)
    bounds = [(low, True)] + [(t, False) for t in cuts]
    spans: list[tuple[float, bool, float, bool]] = []
    for (a, a_closed), b in zip(bounds, cuts + [None]):
        if b is None:
            spans.append((a, a_closed, high, True))
        else:
            spans.append((a, a_closed, b, False))
            spans.append((b, True, b, True))
    pieces = []
    for a, a_closed, b, b_closed in spans:
        representative = _inside(a, a_closed, b, b_closed, kind)
        if representative is not None:
            pieces.append(_Piece(a, a_closed, b, b_closed, representative))
    return pieces


def _number(value: float, kind: _Kind) -> float | int:
    return int(value) if kind.integer else value


def _inside(a: float, a_closed: bool, b: float, b_closed: bool, kind: _Kind) -> float | int | None:
    """An admissible value of the field between a and b (honouring open ends), or None."""
    if a == b:
        return _number(a, kind) if a_closed and b_closed and (not kind.integer or float(a).is_integer()) else None
    if kind.integer:
        if math.isfinite(a):
            candidate = a if a_closed and float(a).is_integer() else math.floor(a) + 1
        elif math.isfinite(b):
            candidate = b if b_closed and float(b).is_integer() else math.ceil(b) - 1
        else:
            candidate = 0
        return int(candidate) if candidate < b or (b_closed and candidate == b) else None
    if not math.isfinite(a) and not math.isfinite(b):
        return 0.0
    if not math.isfinite(a):
        return b - 1.0
    if not math.isfinite(b):
        return a + 1.0
    return (a + b) / 2.0


def _describe_range(members: list[_Piece]) -> str:
    first, last = members[0], members[-1]
    if first.single:
        low = _format(float(first.low))
        if not math.isfinite(last.high):
            return f"≥ {low}"
        return low if first.low == last.high else f"{low}-{_format(float(last.high))}"
    lower = None if not math.isfinite(first.low) else f"{'≥' if first.low_closed else '>'} {_format(first.low)}"
    upper = None if not math.isfinite(last.high) else f"{'≤' if last.high_closed else '<'} {_format(last.high)}"
    if first.low == last.high:
        return f"= {_format(first.low)}"
    return " and ".join(p for p in (lower, upper) if p) or "any value"


# ============================================================================= facts
def _checked_facts(facts: Any) -> dict[str, Any]:
    if not isinstance(facts, dict):
        raise TypeError(f"facts must be a dict with 'patient' and 'findings', got {type(facts).__name__}")
    extra = sorted(set(facts) - {"patient", "findings"})
    if extra:
        raise ValueError(f"facts: unknown key(s) {', '.join(map(str, extra))}; facts hold 'patient' and 'findings'")
    patient = facts.get("patient") or {}
    if not isinstance(patient, dict):
        raise TypeError(f"facts['patient'] must be a dict (validate_patient's result), got {type(patient).__name__}")
    if patient:
        patient = validate_patient({"schema_version": 1, **patient})
    findings = facts.get("findings")
    if not isinstance(findings, dict):
        raise TypeError("facts['findings'] must be a dict with lesion_count, total_volume_cm3, max_diameter_mm "
                        f"and lesions, got {type(findings).__name__}")
    checked = {name: _checked_value(findings.get(name), kind, f"findings.{name}")
               for name, kind in FINDINGS_FIELDS.items() if kind != "records"}
    lesions = findings.get("lesions")
    if lesions is not None and not isinstance(lesions, (list, tuple)):
        raise TypeError(f"findings.lesions must be a list of lesion dicts, got {type(lesions).__name__}")
    checked["lesions"] = []
    for i, lesion in enumerate(lesions or []):
        if not isinstance(lesion, dict) or lesion.get("id") is None:
            raise ValueError(f"findings.lesions[{i}] must be a dict with at least an integer id")
        checked["lesions"].append({name: _checked_value(lesion.get(name), kind, f"findings.lesions[{i}].{name}")
                                   for name, kind in LESION_FIELDS.items()})
    return {"patient": {k: v for k, v in patient.items() if k != "schema_version"}, "findings": checked}


def _checked_value(value: Any, kind: str, where: str) -> Any:
    if value is None:
        return None
    if kind == "text":
        if not isinstance(value, str):
            raise TypeError(f"{where} must be text or None, got {type(value).__name__}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{where} must be a finite number or None, got {value!r}")
    if kind == "integer":
        if not float(value).is_integer():
            raise ValueError(f"{where} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


# ============================================================================= compiling a document
class _Compiler:
    """Checks what the JSON Schema cannot (fields, operators against field kinds, rule order,
    sources) and turns the document into rule objects; every problem names its place."""

    def __init__(self, document: dict[str, Any], where: str):
        self.document, self.where = document, where
        self.problems: list[str] = []
        self.kinds: dict[str, _Kind] = dict(_input_kinds())
        self.defined: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def compile(self) -> tuple[list[_DerivedRule], list[_Recommendation], dict[str, _Kind]]:
        doc = self.document
        source_ids = [s["id"] for s in doc["sources"]]
        self._unique(source_ids, "sources", "source id")
        self.sources = set(source_ids)
        rule_ids = [r["id"] for r in doc.get("derived", [])] + [r["id"] for r in doc["recommendations"]]
        self._unique(rule_ids, "rules", "rule id")
        for name, values in doc.get("unknown_values", {}).items():
            path = f"unknown_values.{name}"
            if name.split(".")[0] not in ("patient", "findings"):
                self.problem(path, f"{name}: unknown_values name patient.* or findings.* fields")
            elif self._kind(path, name, per_lesion=False) is not None:
                for v in values:
                    self._literal(path, name, "eq", v)
        derived = [self._derived(f"derived[{i}]", rule) for i, rule in enumerate(doc.get("derived", []))]
        recommendations = [self._recommendation(f"recommendations[{i}]", rule)
                           for i, rule in enumerate(doc["recommendations"])]
        if self.problems:
            shown = self.problems[:20]
            more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
            raise GuidelineError(f"{self.where}: guideline rules are not usable:\n  " + "\n  ".join(shown) + more)
        return derived, recommendations, self.kinds

    def _unique(self, ids: list[str], path: str, what: str) -> None:
        for repeated in sorted({i for i in ids if ids.count(i) > 1}):
            self.problem(path, f"{what} '{repeated}' is used more than once; ids must be unique")

    def _reference(self, path: str, reference: dict[str, Any]) -> dict[str, Any]:
        if reference["source"] not in self.sources:
            self.problem(f"{path}.source", f"'{reference['source']}' is not a source id of this file; "
                                           f"sources: {', '.join(sorted(self.sources))}")
        return reference

    def _kind(self, path: str, name: str, per_lesion: bool) -> _Kind | None:
        namespace, key = name.split(".")
        if namespace not in NAMESPACES:
            self.problem(path, f"unknown field namespace '{namespace}' in '{name}'; fields start with "
                               + ", ".join(f"{n}." for n in NAMESPACES))
            return None
        if namespace == "lesion" and not per_lesion:
            self.problem(path, f"{name}: lesion.* fields exist only in recommendations with for_each: findings.lesions")
            return None
        if namespace == "derived" and key not in self.defined:
            self.problem(path, f"{name} is not defined by an earlier derived rule (rules run in order; defined "
                               f"so far: {', '.join(self.defined) or 'none'})")
            return None
        if name not in self.kinds:
            known = sorted(k.split(".")[1] for k in self.kinds if k.startswith(namespace + "."))
            self.problem(path, f"{name} is not a {namespace} field; {namespace} fields: {', '.join(known)}")
            return None
        return self.kinds[name]

    def _literal(self, path: str, name: str, op: str, literal: Any) -> None:
        kind = self.kinds[name]
        if op not in _OPERATORS_BY_KIND[kind.name]:
            self.problem(path, f"operator {op} does not apply to {name} ({kind.label()}); use one of "
                               + ", ".join(_OPERATORS_BY_KIND[kind.name]))
            return
        if op == "exists":
            return
        for value in (literal if op in ("in", "not_in") else [literal]):
            if isinstance(value, float) and not math.isfinite(value):
                self.problem(path, f"{value} is not a usable literal; give a finite number")
            elif kind.name == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                self.problem(path, f"{name} is a number; {op} needs a number, got {value!r}")
            elif kind.name in ("enum", "list") and kind.values and value not in kind.values:
                allowed = describe_allowed({"enum": list(kind.values)})
                self.problem(path, f"{value!r} is not a value of {name}; allowed: {allowed}")

    def _condition(self, path: str, node: dict[str, Any], per_lesion: bool) -> Any:
        if "all" in node or "any" in node:
            key = "all" if "all" in node else "any"
            parts = tuple(self._condition(f"{path}.{key}[{i}]", part, per_lesion) for i, part in enumerate(node[key]))
            return _Junction(key == "all", parts)
        if "not" in node:
            return _Not(self._condition(f"{path}.not", node["not"], per_lesion))
        (op, literal), = ((k, v) for k, v in node.items() if k != "field")
        name = node["field"]
        if self._kind(f"{path}.field", name, per_lesion) is not None:
            self._literal(f"{path}.{op}", name, op, literal)
        return _Comparison(name, op, tuple(literal) if isinstance(literal, list) else literal)

    def _text(self, path: str, template: str, per_lesion: bool) -> str:
        for name in _PLACEHOLDER.findall(template):
            self._kind(path, name, per_lesion)
        return template

    def _derived(self, path: str, rule: dict[str, Any]) -> _DerivedRule:
        reference = self._reference(f"{path}.reference", rule["reference"])
        if "table" in rule:
            cases = self._table(f"{path}.table", rule["table"])
        else:
            cases = []
            for i, case in enumerate(rule["cases"]):
                where = f"{path}.cases[{i}]"
                if "value_from" in case:
                    self._kind(f"{where}.value_from", case["value_from"], per_lesion=False)
                own = self._reference(f"{where}.reference", case["reference"]) if "reference" in case else None
                cases.append(_Case(self._condition(f"{where}.when", case["when"], per_lesion=False),
                                   case.get("value"), case.get("value_from"),
                                   self._text(f"{where}.rationale", case.get("rationale", ""), False) or None, own))
        otherwise = None
        if "otherwise" in rule:
            otherwise = _Case(_ALWAYS, rule["otherwise"]["value"], None, rule["otherwise"].get("rationale"))
        self._text(f"{path}.rationale", rule["rationale"], False)
        self.kinds[f"derived.{rule['id']}"] = self._derived_kind(cases + ([otherwise] if otherwise else []))
        self.defined.append(rule["id"])
        return _DerivedRule(rule["id"], rule["name"], rule["rationale"], reference, tuple(cases), otherwise)

    def _table(self, path: str, table: dict[str, Any]) -> list[_Case]:
        columns = table["columns"]
        for i, name in enumerate(columns):
            self._kind(f"{path}.columns[{i}]", name, per_lesion=False)
        cases = []
        for r, row in enumerate(table["rows"]):
            where = f"{path}.rows[{r}]"
            if len(row["match"]) != len(columns):
                self.problem(f"{where}.match", f"{len(row['match'])} entries for {len(columns)} columns "
                                               f"({', '.join(columns)}); use \"*\" for any value")
            parts = []
            for name, entry in zip(columns, row["match"]):
                if entry == "*" or name not in self.kinds:
                    continue
                op = "in" if isinstance(entry, list) else "eq"
                self._literal(f"{where}.match", name, op, entry)
                parts.append(_Comparison(name, op, tuple(entry) if isinstance(entry, list) else entry))
            cases.append(_Case(_Junction(True, tuple(parts)), row["value"], None,
                               self._text(f"{where}.rationale", row.get("rationale", ""), False) or None))
        return cases

    def _derived_kind(self, cases: list[_Case]) -> _Kind:
        literals = [c.value for c in cases if c.value_from is None]
        copied = [self.kinds.get(c.value_from) for c in cases if c.value_from is not None]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in literals)
        if numeric and all(k is not None and k.name == "number" for k in copied):
            return _Kind("number", integer=all(isinstance(v, int) for v in literals) and all(k.integer for k in copied))
        if not copied and all(isinstance(v, str) for v in literals):
            return _Kind("enum", tuple(dict.fromkeys(literals)))
        return _Kind("text")

    def _recommendation(self, path: str, rule: dict[str, Any]) -> _Recommendation:
        per_lesion = rule.get("for_each") == "findings.lesions"
        when = self._condition(f"{path}.when", rule["when"], per_lesion) if "when" in rule else _ALWAYS
        return _Recommendation(rule["id"], self._text(f"{path}.text", rule["text"], per_lesion),
                               self._text(f"{path}.rationale", rule["rationale"], per_lesion), rule.get("strength"),
                               self._reference(f"{path}.reference", rule["reference"]), when, per_lesion)


# ============================================================================= reading files
def _read_document(path: Path) -> tuple[dict[str, Any], str]:
    """Parse a guideline file into plain data, safely; ``Guideline`` validates it."""
    if path.suffix.lower() not in SUFFIXES:
        raise GuidelineError(f"{path}: a guideline file ends in {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise GuidelineError(f"{path}: guideline file not found")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise GuidelineError(f"{path}: {size} bytes; a guideline file is at most {MAX_FILE_BYTES} bytes")
    with open(path, "rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise GuidelineError(f"{path}: more than {MAX_FILE_BYTES} bytes; a guideline file is at most that")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GuidelineError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); "
                             "is it a YAML/JSON file?") from None
    document = _parse_json(text, path) if path.suffix.lower() == ".json" else _parse_yaml(text, path)
    return document, hashlib.sha256(raw).hexdigest()


def _parse_json(text: str, path: Path) -> Any:
    try:
        return strict_json(text)
    except json.JSONDecodeError as e:
        raise GuidelineError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON: {e.msg}") from None
    except RecursionError:
        raise GuidelineError(f"{path}: nesting deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise GuidelineError(f"{path}: not valid JSON: {e}") from None


_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")}


@lru_cache(maxsize=1)
def _loader_class() -> type:
    import yaml

    class GuardedLoader(yaml.SafeLoader):
        """SafeLoader that also refuses what plain data never needs: tags other than the core
        scalars and collections, merge keys, duplicate keys, deep nesting and alias expansions
        past ``MAX_NODES`` nodes (a 'billion laughs' file is refused before it is built)."""

        def __init__(self, stream: str):
            super().__init__(stream)
            self._depth = 0
            self._nodes = 0
            self._sizes: dict[int, int] = {}

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                node = super().compose_node(parent, index)
                self._count(self._expanded(node), event.start_mark)
                return node
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _YamlLimit(f"nesting deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            try:
                node = super().compose_node(parent, index)
            finally:
                self._depth -= 1
            if node.tag not in _PLAIN_TAGS:
                tag = node.tag.replace("tag:yaml.org,2002:", "!!")
                raise _YamlLimit(f"tag {tag} is not allowed: guideline files hold plain data (text, numbers, "
                                 "true/false, lists, mappings)", node.start_mark)
            if isinstance(node, yaml.MappingNode):
                keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
                for k, _ in node.value:
                    if keys.count(k.value) > 1:
                        raise _YamlLimit(f"key '{k.value}' appears twice in one mapping", k.start_mark)
            self._count(1, node.start_mark)
            return node

        def _count(self, n: int, mark: Any) -> None:
            self._nodes += n
            if self._nodes > MAX_NODES:
                raise _YamlLimit(f"more than {MAX_NODES} nodes once aliases are expanded; a guideline is far "
                                 "smaller (is this an alias bomb?)", mark)

        def _expanded(self, node: Any) -> int:
            """Nodes an alias stands for once expanded (memoised, so shared anchors cost once)."""
            if id(node) not in self._sizes:
                if isinstance(node, yaml.MappingNode):
                    children = [c for pair in node.value for c in pair]
                elif isinstance(node, yaml.SequenceNode):
                    children = node.value
                else:
                    children = []
                self._sizes[id(node)] = 1 + sum(self._expanded(c) for c in children)
            return self._sizes[id(node)]

    # Dates stay text: a guideline never needs datetime objects, and they are not JSON.
    GuardedLoader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    return GuardedLoader


class _YamlLimit(Exception):
    def __init__(self, message: str, mark: Any):
        super().__init__(message)
        self.message, self.mark = message, mark


def _parse_yaml(text: str, path: Path) -> Any:
    import yaml

    loader = _loader_class()(text)
    try:
        return loader.get_single_data()
    except _YamlLimit as e:
        raise GuidelineError(f"{path}: line {e.mark.line + 1}, column {e.mark.column + 1}: {e.message}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise GuidelineError(f"{path}: {where}not valid YAML: {e.problem or e.context}") from None
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise GuidelineError(f"{path}: not valid YAML: {e}") from None
    finally:
        loader.dispose()


def _check_plain(document: Any, path: str) -> None:
    """Bound and type-check the parsed data without recursion: string keys, finite numbers."""
    if not isinstance(document, dict):
        raise GuidelineError(f"{path}: a guideline file is a mapping of keys (guideline_format, name, ...), "
                             f"got {type(document).__name__}")
    stack: list[tuple[Any, str, int]] = [(document, "", 1)]
    nodes = 0
    while stack:
        node, where, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise GuidelineError(f"{path}: more than {MAX_NODES} values; a guideline is far smaller")
        if depth > MAX_DEPTH:
            raise GuidelineError(f"{path}: {where or '(top)'}: nesting deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise GuidelineError(f"{path}: {where or '(top)'}: key {key!r} is not text; quote it")
                stack.append((value, f"{where}.{key}" if where else key, depth + 1))
        elif isinstance(node, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(node))
        elif isinstance(node, float) and not math.isfinite(node):
            raise GuidelineError(f"{path}: {where}: {node} is not a usable number; give a finite number")


@lru_cache(maxsize=1)
def _file_schema_validator() -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(_SCHEMA_FILE.read_text(encoding="utf-8")))


def _validate_schema(document: dict[str, Any], path: str) -> None:
    errors = sorted(_file_schema_validator().iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return
    lines = list(dict.fromkeys(f"{_where(e.absolute_path)}: {_schema_message(e)}" for e in errors))
    more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
    lines = lines[:20]
    raise GuidelineError(f"{path} does not follow guideline-v{GUIDELINE_FORMAT}.schema.json:\n  "
                         + "\n  ".join(lines) + more)


def _where(parts: Any) -> str:
    where = ""
    for part in parts:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    return where or "(top)"


def _schema_message(error: Any) -> str:
    title = error.schema.get("title") if isinstance(error.schema, dict) else None
    instance = error.instance
    if error.validator == "additionalProperties" and title in ("comparison", "all", "any", "not"):
        extra = sorted(set(instance) - {"field"} - set(error.schema.get("properties", {})))
        return (f"unknown operator {', '.join(map(repr, extra))}; a condition is all, any, not or "
                f"{{field: <namespace.name>, <operator>: <literal>}} with one operator from {', '.join(COMPARISONS)}")
    if error.validator in ("minProperties", "maxProperties") and title == "comparison":
        return ("a comparison holds its field and exactly one operator "
                f"({', '.join(COMPARISONS)}), e.g. {{field: patient.grade, eq: G3}}")
    if error.validator == "required" and title == "comparison":
        return "a condition is all, any, not or a comparison with a field, e.g. {field: patient.grade, eq: G3}"
    if error.validator == "additionalProperties":
        extra = sorted(set(instance) - set(error.schema.get("properties", {})))
        return f"unknown key(s) {', '.join(map(repr, extra))}; allowed: {', '.join(error.schema.get('properties', {}))}"
    if error.validator in ("oneOf", "anyOf") and "description" in error.schema:
        return error.schema["description"]
    if error.validator == "pattern" and "description" in error.schema:
        return f"{instance!r} is not {error.schema['description']}"
    return error.message


# ============================================================================= public loading
@lru_cache(maxsize=32)
def _load(path: str, mtime_ns: int, size: int) -> Guideline:
    document, sha256 = _read_document(Path(path))
    return Guideline(document, Path(path), sha256)


def _load_path(path: Path) -> Guideline:
    if not path.is_file():
        _read_document(path)      # raises the clear error for a wrong suffix or an absent file
    stat = path.stat()
    return _load(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def load_guideline(name_or_path: str | os.PathLike) -> Guideline:
    """Load a shipped guideline by name or a guideline file (YAML or JSON) by path.

    A user's file is parsed with ``yaml.safe_load`` semantics plus limits on size, nodes (aliases
    expanded) and depth, then validated against ``guideline-v1.schema.json`` and checked rule by
    rule. Loaded files are cached by path, modification time and size.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        The name of a shipped guideline (:func:`available_guidelines`), or a path (anything
        with a path separator or a ``.yaml``/``.yml``/``.json`` suffix).

    Returns
    -------
    Guideline
        The validated guideline.

    Raises
    ------
    GuidelineError
        No shipped guideline has that name, or the file breaks the format; the message names
        the file and the place in it.
    TypeError
        ``name_or_path`` is neither a str nor a path.

    See Also
    --------
    available_guidelines : The shipped guidelines.
    medkern.analyze : ``guideline=`` takes the same names and paths.

    Examples
    --------
    >>> from medkern.analysis.guideline import load_guideline
    >>> g = load_guideline("sarcoma-extremity")
    >>> g.name, g.version
    ('sarcoma-extremity', '1.0.0')
    >>> [s["year"] for s in g.sources]
    [2017, 2018, 2021]
    """
    if isinstance(name_or_path, os.PathLike):
        return _load_path(Path(name_or_path))
    if not isinstance(name_or_path, str):
        raise TypeError(f"guideline must be a shipped name or a path, got {type(name_or_path).__name__}")
    if os.sep in name_or_path or "/" in name_or_path or name_or_path.lower().endswith(SUFFIXES):
        return _load_path(Path(name_or_path))
    shipped = _SHIPPED / f"{name_or_path}.yaml"
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name_or_path) or not shipped.is_file():
        names = ", ".join(e["name"] for e in available_guidelines())
        raise GuidelineError(f"no shipped guideline named {name_or_path!r}; shipped: {names}; "
                             "or give the path of a .yaml/.json guideline file")
    guideline = _load_path(shipped)
    if guideline.name != name_or_path:
        raise GuidelineError(f"{shipped}: name is {guideline.name!r}, expected {name_or_path!r} (the file name)")
    return guideline


def available_guidelines() -> list[dict[str, Any]]:
    """List the guidelines that ship with medkern.

    Returns
    -------
    list of dict
        One dict per guideline, sorted by name: ``name``, ``title``, ``version`` and
        ``applies_to``.

    See Also
    --------
    load_guideline : Load one.

    Examples
    --------
    >>> from medkern.analysis.guideline import available_guidelines
    >>> [(g["name"], g["applies_to"]["body_region"]) for g in available_guidelines()]
    [('brain-metastases', 'brain'), ('sarcoma-extremity', 'extremity/trunk')]
    """
    out = []
    for path in sorted(_SHIPPED.glob("*.yaml")):
        g = _load_path(path)
        out.append({"name": g.name, "title": g.title, "version": g.version, "applies_to": g.applies_to})
    return out


# ============================================================================= result
class GuidelineResult:
    """The outcome of :meth:`Guideline.evaluate`; ``to_dict()`` gives the JSON-able result.

    Parameters
    ----------
    data : dict
        ``name, version, title, sources, derived, recommendations, missing, disclaimer``.

    See Also
    --------
    Guideline.evaluate : Makes one.

    Examples
    --------
    >>> from medkern.analysis.guideline import load_guideline
    >>> g = load_guideline("sarcoma-extremity")
    >>> result = g.evaluate({"patient": {"n_status": "N0", "m_status": "M0"},
    ...                      "findings": {"max_diameter_mm": 62.0}})
    >>> result.derived["t_category"]
    'T2'
    """

    def __init__(self, data: dict[str, Any]):
        self._data = data

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-able dict (a deep copy).

        Returns
        -------
        dict
            ``name, version, title, sources, derived, recommendations, missing, disclaimer``.

        See Also
        --------
        derived, recommendations, missing

        Examples
        --------
        >>> from medkern.analysis.guideline import load_guideline
        >>> g = load_guideline("sarcoma-extremity")
        >>> result = g.evaluate({"patient": {"n_status": "N0", "m_status": "M0"},
        ...                      "findings": {"max_diameter_mm": 62.0}})
        >>> list(result.to_dict())
        ['name', 'version', 'title', 'sources', 'derived', 'recommendations', 'missing', 'disclaimer']
        """
        return copy.deepcopy(self._data)

    @property
    def derived(self) -> dict[str, Any]:
        """Derived values by rule id (None where undetermined or not applicable)."""
        return {d["id"]: d["value"] for d in self._data["derived"]}

    @property
    def recommendations(self) -> list[dict[str, Any]]:
        """The recommendations that apply: ``id``, ``text``, ``rationale``, ``strength``, ``inputs``, ``reference``."""
        return copy.deepcopy(self._data["recommendations"])

    @property
    def missing(self) -> list[dict[str, Any]]:
        """The absent inputs: ``field``, the rules that need it, and what each value would change."""
        return copy.deepcopy(self._data["missing"])

    def __repr__(self) -> str:
        d = self._data
        lines = [f"<medkern GuidelineResult {d['name']} {d['version']}>"]
        lines += [f"  {item['name']}: {_format(item['value']) if item['value'] is not None else 'not determined'}"
                  for item in d["derived"]]
        lines += [f"  - {_label(r)}: {r['text']}" for r in d["recommendations"]]
        lines += [f"  missing {m['field']} (needed by {', '.join(m['needed_by'])})" for m in d["missing"]]
        return "\n".join(lines)
