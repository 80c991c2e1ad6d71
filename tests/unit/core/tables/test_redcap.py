"""REDCap: mapping derived from a data dictionary; CSV and JSON exports with repeating instruments."""

from __future__ import annotations

import json

import pytest

from kaapana_fhir.core.ids import patient_id
from kaapana_fhir.core.tables import TableMapper, iter_entries, open_table, scan
from kaapana_fhir.core.tables.redcap import CS_REDCAP_FIELD, derive_mapping, parse_choices
from kaapana_fhir.core.validate import validate_resource
from kaapana_fhir.exceptions import ConfigError
from kaapana_fhir.flows.tables.flow import resolve_mapping

DICTIONARY = '''"Variable / Field Name","Form Name","Section Header","Field Type","Field Label",\
"Choices, Calculations, OR Slider Labels","Field Note","Text Validation Type OR Show Slider Number",\
"Text Validation Min","Text Validation Max"
record_id,demographics,,text,Record ID,,,,,
sex,demographics,,radio,Sex,"1, Male | 2, Female",,,,
dob,demographics,,text,Date of birth,,,date_ymd,,
smoker,demographics,,yesno,<b>Smoker</b>,,,,,
ecog,demographics,,dropdown,ECOG,"0, Fully active | 1, Restricted | 2, Ambulatory",,,,
symptoms,demographics,,checkbox,Symptoms,"1, Cough | 2, Dyspnea",,,,
info,demographics,,descriptive,Some text,,,,,
visit_date,visits,,text,Visit date,,,date_dmy,,
weight,visits,,text,Weight (kg),,,number,,
pack_years,visits,,text,Pack years,,,integer,,
comment,visits,,notes,Comment,,,,,
'''
HEADER = ("record_id,redcap_repeat_instrument,redcap_repeat_instance,sex,dob,smoker,ecog,symptoms___1,symptoms___2,"
          "demographics_complete,visit_date,weight,pack_years,comment,visits_complete")
EXPORT = HEADER + """
R1,,,1,1960-05-01,1,2,1,0,2,,,,,
R1,visits,1,,,,,,,,01.02.2020,70.5,20,"first, visit",2
R1,visits,2,,,,,,,,01.03.2020,69.0,20,=cmd,2
R2,,,2,1971-12-31,0,0,0,1,2,,,,,
"""


def _resources(data: bytes, name: str) -> list[dict]:
    table = open_table(data, name=name)
    mapping = resolve_mapping(header=table.header, preset="redcap", dictionary_text=DICTIONARY)
    mapper = TableMapper(mapping, table_name=name)
    s = scan(table, mapper)
    assert s.issue_count == 0, s.issues
    return [e["resource"] for e in iter_entries(table, mapper, s)]


def test_parse_choices() -> None:
    assert parse_choices("1, Male | 2, Female") == [("1", "Male"), ("2", "Female")]
    assert parse_choices("a, Label, with comma|b,B") == [("a", "Label, with comma"), ("b", "B")]
    with pytest.raises(ConfigError, match="not 'code, label'"):
        parse_choices("1 Male", field="sex")


def test_dictionary_derivation() -> None:
    m = derive_mapping(DICTIONARY, header=HEADER.split(","))
    assert m["patient"]["key"] == "record_id"
    assert m["patient"]["gender"] == {"column": "sex", "map": {"1": "male", "2": "female"}}
    assert m["patient"]["birth_date"] == {"column": "dob"}
    assert m["instance_columns"] == ["redcap_repeat_instrument", "redcap_repeat_instance"]
    types = {o["column"]: o["value"]["type"] for o in m["observations"]}
    assert types == {"smoker": "boolean", "ecog": "CodeableConcept", "symptoms___1": "boolean",
                     "symptoms___2": "boolean", "visit_date": "dateTime", "weight": "Quantity",
                     "pack_years": "integer", "comment": "string"}
    ecog = next(o for o in m["observations"] if o["column"] == "ecog")
    assert ecog["value"]["map"]["1"] == {"code": "1", "display": "Restricted"}
    assert next(o for o in m["observations"] if o["column"] == "smoker")["code"][-1]["display"] == "Smoker"
    assert m["source"]["date_order"] == "dmy"


def test_dictionary_without_required_columns() -> None:
    with pytest.raises(ConfigError, match="Variable / Field Name"):
        derive_mapping("a,b\n1,2\n")


def test_redcap_preset_needs_dictionary() -> None:
    with pytest.raises(ConfigError, match="needs the project's data dictionary"):
        resolve_mapping(header=["record_id"], preset="redcap")


def test_csv_export_with_repeating_instruments() -> None:
    res = _resources(EXPORT.encode(), "export.csv")
    pats = [r for r in res if r["resourceType"] == "Patient"]
    system = "urn:kaapana-fhir:redcap:redcap:record-id"  # one identifier system per REDCap project
    assert [p["id"] for p in pats] == [patient_id(system, "R1"), patient_id(system, "R2")]
    assert pats[0]["gender"] == "male" and pats[0]["birthDate"] == "1960-05-01"
    weights = [r for r in res if r["resourceType"] == "Observation" and r["code"]["text"] == "weight"]
    assert sorted(w["valueQuantity"]["value"] for w in weights) == [69, 70.5]
    assert len({w["id"] for w in weights}) == 2  # one id per repeat instance
    visits = sorted(r["valueDateTime"] for r in res if r["resourceType"] == "Observation"
                    and r["code"]["text"] == "visit_date")
    assert visits == ["2020-02-01", "2020-03-01"]
    comments = {r["valueString"] for r in res if r.get("code", {}).get("text") == "comment"}
    assert comments == {"first, visit", "=cmd"}
    ecog = next(r for r in res if r.get("code", {}).get("text") == "ecog" and r["subject"]["reference"].endswith(
        pats[0]["id"]))
    assert ecog["valueCodeableConcept"]["coding"][0] == {"system": "urn:kaapana-fhir:redcap:redcap:ecog", "code": "2",
                                                        "display": "Ambulatory"}
    assert ecog["code"]["coding"][-1]["system"] == CS_REDCAP_FIELD
    for r in res:
        validate_resource(r)


def test_json_export_gives_the_same_resources_as_csv() -> None:
    import csv
    import io

    records = list(csv.DictReader(io.StringIO(EXPORT.strip() + "\n")))
    from_csv = _resources(EXPORT.encode(), "export.csv")
    from_json = _resources(json.dumps(records).encode(), "export.json")
    assert json.dumps(from_json).replace("table:export.json", "table:export.csv") == json.dumps(from_csv)
    assert "table:export.json" in json.dumps(from_json)  # each file is recorded as the source of its demographics
