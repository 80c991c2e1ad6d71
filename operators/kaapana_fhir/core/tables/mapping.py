"""The declarative table mapping (YAML, ``version: 1``), its JSON schema and loader.

A mapping names the patient key column and identifier system, Patient fields (gender, birth date,
deceased), one Observation per mapped column (code, value type, unit, value map, effective date),
Condition rows (code, stage/histology via value maps, onset) and NA values. See
``data/mappings/lung1.yaml`` for a complete example. Errors name the key path and the broken rule::

    mapping lung1.yaml: key 'observations[0].valu': additional key not allowed (did you mean 'value'?)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

import jsonschema

from kaapana_fhir.core.codes import UCUM
from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM
from kaapana_fhir.core.limits import LimitError, loads_yaml
from kaapana_fhir.core.tables.reference import annotate
from kaapana_fhir.core.tables.units import ucum_problem
from kaapana_fhir.exceptions import ConfigError

PRESETS = ("lung1", "redcap")
VALUE_TYPES = ("Quantity", "decimal", "integer", "boolean", "string", "CodeableConcept", "dateTime")

_REVIEW = {"type": "string", "description": "a suggestion to check; the import refuses the mapping while any "
           "'review' key remains (delete the key once the entry is right)"}
_CODING = {"type": "object", "additionalProperties": False, "required": ["code"],
           "properties": {"system": {"type": "string"}, "code": {"type": ["string", "integer"]},
                          "display": {"type": "string"}, "review": _REVIEW}}
_CODE = {"oneOf": [_CODING, {"type": "array", "minItems": 1, "items": _CODING}]}
_MAP = {"type": "object", "additionalProperties": {
    "oneOf": [{"type": ["string", "boolean", "null", "integer"]}, _CODING]}}
_WHEN = {"type": "object", "additionalProperties": False,
         "properties": {"column": {"type": "string"}, "date": {"type": "string"}}}
_UNMAPPED = {"enum": ["error", "text", "absent", "code"]}
_VALUE = {"type": "object", "additionalProperties": False, "required": ["type"], "properties": {
    "type": {"enum": list(VALUE_TYPES)}, "unit": {"type": "string"}, "unit_system": {"type": "string"},
    "unit_code": {"type": "string"}, "unit_aliases": {"type": "array", "items": {"type": "string"}},
    "unit_column": {"type": "string"}, "unit_map": {"type": "object", "additionalProperties": {"type": "string"}},
    "min": {"type": "number"}, "max": {"type": "number"}, "map": _MAP, "map_ref": {"type": "string"},
    "map_file": {"type": "string"}, "system": {"type": "string"},
    "unmapped": _UNMAPPED, "review": _REVIEW}}
_COLUMN_MAP = {"type": "object", "additionalProperties": False, "required": ["column"],
               "properties": {"column": {"type": "string"}, "map": _MAP, "map_ref": {"type": "string"},
                              "system": {"type": "string"}, "unmapped": _UNMAPPED, "review": _REVIEW}}
_OBS = {"type": "object", "additionalProperties": False, "required": ["column", "value"],
        "anyOf": [{"required": ["code"]}, {"required": ["code_from"]}], "properties": {
    "column": {"type": "string"}, "code": _CODE, "code_from": _COLUMN_MAP, "value": _VALUE,
    "category": {"type": "string"}, "effective": _WHEN, "required": {"type": "boolean"},
    "empty_cells": {"enum": ["keep", "retract"]}, "review": _REVIEW,
    "components": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["column", "code", "value"],
        "properties": {"column": {"type": "string"}, "code": _CODE, "value": _VALUE, "review": _REVIEW}}}}}
_COND = {"type": "object", "additionalProperties": False, "required": ["name", "code"], "properties": {
    "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"}, "code": _CODE,
    "when_column": {"type": "string"}, "onset": _WHEN, "stage": _COLUMN_MAP, "histology": _COLUMN_MAP,
    "clinical_status": {"enum": ["active", "recurrence", "relapse", "inactive", "remission", "resolved"]},
    "category": {"enum": ["problem-list-item", "encounter-diagnosis"]}, "review": _REVIEW}}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "kaapana-fhir table mapping", "type": "object", "additionalProperties": False,
    "required": ["version", "patient"],
    "properties": {
        "version": {"const": 1}, "name": {"type": "string"}, "description": {"type": "string"},
        "review": _REVIEW,
        "source": {"type": "object", "additionalProperties": False, "properties": {
            "format": {"enum": ["auto", "csv", "xlsx", "redcap-csv", "redcap-json", "json", "odm"]},
            "delimiter": {"enum": [",", ";", "\t", "|"]}, "encoding": {"type": "string"},
            "sheet": {"type": "string"}, "na_values": {"type": "array", "items": {"type": "string"}},
            "date_order": {"enum": ["dmy", "mdy"]}}},
        "checks": {"type": "object", "additionalProperties": False, "properties": {
            "date_min": {"type": "string", "pattern": "^(\\d{4}-\\d{2}-\\d{2}|today)$"},
            "date_max": {"type": "string", "pattern": "^(\\d{4}-\\d{2}-\\d{2}|today)$"}}},
        "empty_cells": {"enum": ["keep", "retract"]},
        "patient_conflicts": {"enum": ["keep", "replace", "fail"]},
        "patient": {"type": "object", "additionalProperties": False,
                    "oneOf": [{"required": ["key"]}, {"required": ["key_columns"]}, {"required": ["key_generated"]}],
                    "properties": {
            "key": {"type": "string"}, "key_columns": {"type": "array", "minItems": 2, "items": {"type": "string"}},
            "key_generated": {"enum": ["row-number"]},
            "identifier_system": {"type": "string", "minLength": 1}, "review": _REVIEW,
            "gender": _COLUMN_MAP, "birth_date": {"type": "object", "additionalProperties": False,
                                                  "required": ["column"], "properties": {
                                                      "column": {"type": "string"}, "review": _REVIEW}},
            "deceased": _COLUMN_MAP}},
        "instance_columns": {"type": "array", "items": {"type": "string"}},
        "effective": _WHEN, "category": {"type": "string"},
        "value_maps": {"type": "object", "additionalProperties": _MAP},
        "observations": {"type": "array", "items": _OBS},
        "conditions": {"type": "array", "items": _COND},
    },
}

#: schema keys without a description (tests require none; docs/mapping-reference.md is generated from SCHEMA)
UNDOCUMENTED = annotate(SCHEMA)
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _path(error: jsonschema.ValidationError) -> str:
    out = ""
    for p in error.absolute_path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _allowed_keys(error: jsonschema.ValidationError) -> list[str]:
    return list((error.schema or {}).get("properties", {}).keys()) if isinstance(error.schema, dict) else []


def _describe(error: jsonschema.ValidationError) -> str:
    path = _path(error)
    v = error.validator
    if v == "additionalProperties" and isinstance(error.instance, dict):
        allowed = _allowed_keys(error)
        extra = [k for k in error.instance if k not in allowed]
        parts = []
        for k in extra:
            hint = difflib.get_close_matches(str(k), allowed, n=1)
            where = f"{path}.{k}" if path != "(top level)" else str(k)
            parts.append(f"key '{where}': unknown key (rule: additionalProperties; "
                         + (f"did you mean '{hint[0]}'?)" if hint else f"allowed: {', '.join(allowed)})"))
        return "; ".join(parts)
    if v == "required":
        return f"key '{path}': {error.message} (rule: required)"
    if v == "enum":
        return f"key '{path}': {error.instance!r} is not one of {error.validator_value} (rule: enum)"
    if v == "oneOf":
        return f"key '{path}': {error.instance!r} is neither a code string nor a {{system, code, display}} object " \
               "(rule: oneOf)"
    return f"key '{path}': {error.message} (rule: {v})"


def validate_mapping(data: Any, *, source: str = "mapping") -> list[str]:
    """All problems of a parsed mapping: schema errors, then semantic rules. Empty list = valid."""
    if not isinstance(data, dict):
        return [f"mapping {source}: top level must be a mapping object (rule: type object)"]
    errors = [f"mapping {source}: {_describe(e)}" for e in sorted(_VALIDATOR.iter_errors(data), key=lambda e: list(
        map(str, e.absolute_path)))]
    if errors:
        return errors
    maps = data.get("value_maps", {})
    seen: set[str] = set()
    for i, obs in enumerate(data.get("observations", [])):
        key = f"observations[{i}]"
        col = obs["column"].lower()
        if col in seen:
            errors.append(f"mapping {source}: key '{key}.column': column {obs['column']!r} mapped twice "
                          "(rule: one Observation per column)")
        seen.add(col)
        for j, spec in enumerate([obs["value"]] + [c["value"] for c in obs.get("components", [])]):
            vkey = f"{key}.value" if j == 0 else f"{key}.components[{j - 1}].value"
            errors.extend(f"mapping {source}: {e}" for e in _check_value(spec, vkey, maps))
    for i, obs in enumerate(data.get("observations", [])):
        ref = (obs.get("code_from") or {}).get("map_ref")
        if ref and ref not in maps:
            errors.append(f"mapping {source}: key 'observations[{i}].code_from.map_ref': value map {ref!r} "
                          "is not defined in value_maps (rule: map_ref)")
    for i, cond in enumerate(data.get("conditions", [])):
        for part in ("stage", "histology"):
            ref = (cond.get(part) or {}).get("map_ref")
            if ref and ref not in maps:
                errors.append(f"mapping {source}: key 'conditions[{i}].{part}.map_ref': value map {ref!r} "
                              "is not defined in value_maps (rule: map_ref)")
    return errors


def _check_value(spec: dict[str, Any], key: str, maps: dict[str, Any]) -> list[str]:
    out = []
    t = spec["type"]
    if t == "Quantity" and not spec.get("unit") and not spec.get("unit_column"):
        out.append(f"key '{key}.unit': a Quantity needs a UCUM unit (rule: Quantity requires unit) or a unit_column")
    if spec.get("unit_system", UCUM) == UCUM:
        for k in ("unit_code", "unit") if spec.get("unit_code") else ("unit",):
            problem = ucum_problem(spec[k]) if spec.get(k) else None
            if problem:
                out.append(f"key '{key}.{k}': {problem}")
                break
        for src, code in (spec.get("unit_map") or {}).items():
            problem = ucum_problem(code)
            if problem:
                out.append(f"key '{key}.unit_map.{src}': {problem}")
    if t == "CodeableConcept" and not (spec.get("map") or spec.get("map_ref") or spec.get("map_file")) \
            and spec.get("unmapped") not in ("text", "code"):
        out.append(f"key '{key}.map': a CodeableConcept needs a value map or unmapped: text / code "
                   "(rule: CodeableConcept requires map)")
    if spec.get("unmapped") == "code" and not spec.get("system"):
        out.append(f"key '{key}.system': unmapped: code takes the cell as a code of 'system', which is missing "
                   "(rule: unmapped code requires system)")
    ref = spec.get("map_ref")
    if ref and ref not in maps:
        out.append(f"key '{key}.map_ref': value map {ref!r} is not defined in value_maps (rule: map_ref)")
    return out


def load_mapping(text: str | bytes, *, source: str = "mapping",
                 read_file: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Parse YAML text, validate it and return the mapping with defaults applied.

    ``read_file(relative_path)`` loads ``map_file`` value maps (CSV ``source,code[,display[,system]]``);
    without it, a ``map_file`` is a :class:`ConfigError`.
    """
    try:
        data = loads_yaml(text, source=f"mapping {source}")
    except LimitError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from None
    errors = validate_mapping(data, source=source)
    if errors:
        raise ConfigError("; ".join(errors))
    return _with_defaults(data, source, read_file)


def _with_defaults(data: dict[str, Any], source: str, read_file: Callable[[str], str] | None) -> dict[str, Any]:
    m = dict(data)
    m.setdefault("name", source)
    m["source"] = {"format": "auto", "date_order": "dmy", **(m.get("source") or {})}
    default_system = DEFAULT_PATIENT_SYSTEM
    if m["patient"].get("key_generated"):
        default_system = f"urn:kaapana-fhir:table:{slug(str(m['name']))}:row-number"
    elif m["patient"].get("key_columns"):
        default_system = f"urn:kaapana-fhir:table:{slug(str(m['name']))}:" + "+".join(
            slug(c) for c in m["patient"]["key_columns"])
    m["patient"] = {"identifier_system": default_system, **m["patient"]}
    m["checks"] = {"date_min": "1900-01-01", "date_max": "today", **(m.get("checks") or {})}
    m.setdefault("empty_cells", "keep")
    m.setdefault("patient_conflicts", "keep")
    m.setdefault("observations", [])
    m.setdefault("conditions", [])
    m.setdefault("instance_columns", [])
    maps = dict(m.get("value_maps") or {})
    specs = [o["value"] for o in m["observations"]] + [c["value"] for o in m["observations"]
                                                       for c in o.get("components", [])]
    specs += [c[p] for c in m["conditions"] for p in ("stage", "histology") if c.get(p)]
    specs += [o["code_from"] for o in m["observations"] if o.get("code_from")]
    for k in ("gender", "deceased"):
        if m["patient"].get(k):
            specs.append(m["patient"][k])
    for spec in specs:
        if spec.get("type") == "Quantity":
            spec.setdefault("unit_system", UCUM)
        if spec.get("map_file"):
            if read_file is None:
                raise ConfigError(f"mapping {source}: map_file {spec['map_file']!r} cannot be read here "
                                  "(rule: map_file needs a mapping loaded from a file)")
            spec["map"] = {**parse_map_csv(read_file(spec["map_file"]), spec["map_file"]), **(spec.get("map") or {})}
        if spec.get("map_ref"):
            spec["map"] = {**maps[spec["map_ref"]], **(spec.get("map") or {})}
    m["value_maps"] = maps
    return m


def slug(text: str) -> str:
    """A lower-case ``[a-z0-9-]`` slug for identifier-system URNs (``My Project 2`` → ``my-project-2``)."""
    out = re.sub(r"[^a-z0-9]+", "-", text.strip().lower()).strip("-")
    return out[:60] or "table"


def pending_edits(data: Any, path: str = "") -> list[str]:
    """Key paths a user still has to fill in: ``TODO`` placeholders and remaining ``review`` markers.

    The import refuses a mapping while this list is not empty (``mapping init`` output is never silently
    final). Returns ``"key 'observations[2].code.code': placeholder TODO"`` style texts.
    """
    out: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            p = f"{path}.{k}" if path else str(k)
            if k == "review":
                out.append(f"key '{p}': check, then delete this line: {' '.join(str(v).split())[:220]}")
            else:
                out.extend(pending_edits(v, p))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out.extend(pending_edits(v, f"{path}[{i}]"))
    elif isinstance(data, str) and data.strip().upper() in ("TODO", "FIXME", "TBD"):
        out.append(f"key '{path}': placeholder {data.strip()!r} (fill in a real value)")
    return out


def parse_map_csv(text: str, name: str) -> dict[str, Any]:
    """A local ConceptMap as CSV: ``source,code[,display[,system]]`` per line (header optional)."""
    import csv
    import io

    out: dict[str, Any] = {}
    for i, rec in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not rec or (i == 1 and rec[0].strip().lower() == "source"):
            continue
        if len(rec) < 2:
            raise ConfigError(f"value map {name}: row {i}: needs at least 'source,code' (rule: map_file columns)")
        coding = {"code": rec[1].strip()}
        if len(rec) > 2 and rec[2].strip():
            coding["display"] = rec[2].strip()
        if len(rec) > 3 and rec[3].strip():
            coding["system"] = rec[3].strip()
        out[rec[0].strip()] = coding if coding["code"] else None
    return out


def preset_text(name: str) -> str:
    """The YAML text of a shipped preset (``data/mappings/<name>.yaml``)."""
    if name not in PRESETS or name == "redcap":
        raise ConfigError(f"unknown preset {name!r} (rule: preset in {', '.join(p for p in PRESETS if p != 'redcap')}"
                          "; 'redcap' needs a data dictionary)" if name != "redcap" else
                          "preset 'redcap' is derived from a data dictionary (rule: pass the dictionary)")
    return resources.files("kaapana_fhir").joinpath("data", "mappings", f"{name}.yaml").read_text("utf-8")


def load_preset(name: str, *, identifier_system: str | None = None) -> dict[str, Any]:
    """A shipped preset mapping, optionally with another patient identifier system."""
    m = load_mapping(preset_text(name), source=f"preset:{name}")
    if identifier_system:
        m["patient"]["identifier_system"] = identifier_system
    return m
