"""Mapping schema errors (key + rule) and cell value parsing."""

from __future__ import annotations

import pytest

from kaapana_fhir.core.tables import load_mapping, validate_mapping
from kaapana_fhir.core.tables import values as V
from kaapana_fhir.core.tables.mapping import parse_map_csv
from kaapana_fhir.exceptions import ConfigError

BASE = {"version": 1, "patient": {"key": "pid"},
        "observations": [{"column": "w", "code": {"code": "x"}, "value": {"type": "Quantity", "unit": "kg"}}]}


def _with(**kw: object) -> dict:
    import copy

    d = copy.deepcopy(BASE)
    d.update(kw)
    return d


def test_valid_minimal_mapping_gets_defaults() -> None:
    assert validate_mapping(BASE) == []
    m = load_mapping("version: 1\npatient: {key: pid}\n")
    assert m["patient"]["identifier_system"] == "urn:kaapana-fhir:patient-id"
    assert m["observations"] == [] and m["source"]["date_order"] == "dmy"


@pytest.mark.parametrize(("data", "expected"), [
    ({"version": 2, "patient": {"key": "p"}}, "key 'version'"),
    ({"version": 1}, "key '(top level)': 'patient' is a required property (rule: required)"),
    ({"version": 1, "patient": {"kye": "p"}},
     "key 'patient.kye': unknown key (rule: additionalProperties; did you mean 'key'?)"),
    (_with(observations=[{"column": "w", "code": {"code": "x"}, "value": {"type": "Float"}}]),
     "key 'observations[0].value.type': 'Float' is not one of"),
    (_with(observations=[{"column": "w", "code": {"code": "x"}, "value": {"type": "Quantity"}}]),
     "key 'observations[0].value.unit': a Quantity needs a UCUM unit (rule: Quantity requires unit)"),
    (_with(observations=[{"column": "w", "code": {"code": "x"}, "value": {"type": "CodeableConcept"}}]),
     "rule: CodeableConcept requires map"),
    (_with(observations=[{"column": "w", "code": {"code": "x"}, "value": {"type": "string", "map_ref": "m"}}]),
     "value map 'm' is not defined in value_maps (rule: map_ref)"),
    (_with(observations=BASE["observations"] * 2), "mapped twice (rule: one Observation per column)"),
    (_with(conditions=[{"name": "bad name!", "code": {"code": "1"}}]), "key 'conditions[0].name'"),
    (_with(observations=[{"column": "w", "code": "x", "value": {"type": "string"}}]), "rule: oneOf"),
])
def test_schema_errors_name_key_and_rule(data: dict, expected: str) -> None:
    errors = validate_mapping(data, source="m.yaml")
    assert errors and any(expected in e for e in errors), errors
    assert all(e.startswith("mapping m.yaml: ") for e in errors)


def test_yaml_syntax_error() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_mapping("version: 1\npatient: {key: [\n")


def test_map_file_requires_a_reader_and_is_loaded_with_one() -> None:
    text = ("version: 1\npatient: {key: p}\nobservations:\n - column: g\n   code: {code: g}\n"
            "   value: {type: CodeableConcept, system: 'urn:s', map_file: maps/g.csv}\n")
    with pytest.raises(ConfigError, match="map_file 'maps/g.csv' cannot be read here"):
        load_mapping(text)
    m = load_mapping(text, read_file=lambda rel: "source,code,display\nI,1,One\nII,2,Two\n")
    assert m["observations"][0]["value"]["map"] == {"I": {"code": "1", "display": "One"},
                                                   "II": {"code": "2", "display": "Two"}}
    assert parse_map_csv("a,\n", "x") == {"a": None}


@pytest.mark.parametrize(("raw", "value"), [("72", 72), ("72,5", 72.5), ("1.234,5", 1234.5), ("1,234.5", 1234.5),
                                            ("-3", -3), (" 72 kg ", 72), ("72kg", 72)])
def test_parse_decimal(raw: str, value: float) -> None:
    assert float(V.parse_decimal(raw, unit="kg")) == value


@pytest.mark.parametrize(("raw", "rule"), [("abc", "not a number"), ("1,2,3", "ambiguous"), ("=1", "formula"),
                                           ("70 lb", "unit 'lb'"), ("nan", "not a number"), ("1.2.3", "ambiguous")])
def test_parse_decimal_errors(raw: str, rule: str) -> None:
    with pytest.raises(V.CellError, match=rule):
        V.parse_decimal(raw, unit="kg")


@pytest.mark.parametrize(("raw", "order", "iso"), [("2020-02-29", "dmy", "2020-02-29"), ("2020-02", "dmy", "2020-02"),
                                                   ("2020", "dmy", "2020"), ("03/04/2020", "mdy", "2020-03-04"),
                                                   ("03/04/2020", "dmy", "2020-04-03"),
                                                   ("2020-01-02T03:04:05Z", "dmy", "2020-01-02T03:04:05+00:00")])
def test_parse_date(raw: str, order: str, iso: str) -> None:
    assert V.parse_date(raw, date_order=order) == iso


@pytest.mark.parametrize("raw", ["2021-02-29", "31.04.2020", "2020-13", "13/13/2020", "yesterday"])
def test_parse_date_errors(raw: str) -> None:
    with pytest.raises(V.CellError):
        V.parse_date(raw)


def test_booleans_and_formula_escape() -> None:
    assert V.parse_boolean("Yes") is True and V.parse_boolean("0") is False
    with pytest.raises(V.CellError, match="not a boolean"):
        V.parse_boolean("maybe")
    assert V.escape_csv_cell("=A1") == "'=A1" and V.escape_csv_cell("ok") == "ok"
    assert V.parse_integer("3.0") == 3
    with pytest.raises(V.CellError, match="not an integer"):
        V.parse_integer("3.5")
