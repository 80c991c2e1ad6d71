"""REDCap and CDISC ODM exports with real-world quirks (synthetic data under tests/data/tables/), mapping checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.core.ids import patient_id
from kaapana_fhir.core.tables import TableMapper, iter_entries, load_mapping, open_table, scan
from kaapana_fhir.core.tables.engine import MappingIncomplete, check_ready
from kaapana_fhir.core.tables.mapping import _with_defaults, validate_mapping
from kaapana_fhir.core.tables.odm import derive_mapping as derive_odm
from kaapana_fhir.core.tables.odm import read_odm
from kaapana_fhir.core.tables.redcap import derive_mapping, read_dictionary
from kaapana_fhir.core.validate import validate_resource
from kaapana_fhir.exceptions import ConfigError, MappingError
from kaapana_fhir.flows.tables.flow import resolve_mapping

DATA = Path(__file__).resolve().parents[3] / "data" / "tables"
DICT = DATA / "redcap" / "LungImaging_DataDictionary_2026-05-04.csv"
EXPORT = DATA / "redcap" / "LungImaging_DATA_2026-05-04_1200.csv"
ODM = DATA / "odm" / "lung_study.odm.xml"
REDCAP_ODM = DATA / "odm" / "redcap_export.odm.xml"


def _run(table: Any, mapping: dict[str, Any]) -> list[dict[str, Any]]:
    mapper = TableMapper(mapping, table_name=table.name)
    s = scan(table, mapper)
    assert s.issue_count == 0, s.issues
    res = [e["resource"] for e in iter_entries(table, mapper, s)]
    for r in res:
        validate_resource(r)
    return res


def _redcap_resources() -> list[dict[str, Any]]:
    table = open_table(EXPORT.read_bytes(), name=EXPORT.name)
    mapping = resolve_mapping(header=table.header, preset="redcap", dictionary_text=DICT.read_text("utf-8"),
                              table_name=EXPORT.name)
    return _run(table, mapping)


# ------------------------------------------------------------------------------------------------ REDCap
def test_dictionary_with_garbled_and_renamed_headers_and_a_ragged_row() -> None:
    dd = read_dictionary(DICT.read_text("utf-8"), name=DICT.name)
    names = [f.name for f in dd.fields]
    assert names[0] == "record_id" and "comment" in names
    comment = next(f for f in dd.fields if f.name == "comment")
    assert "see SOP v2" in comment.get("field_annotation")  # the extra cell is kept, not a crash
    assert any("header '1' not recognised" in n for n in dd.notes)
    assert any("Field Label (English)" in n for n in dd.notes)
    assert any("row 24: 19 cells for 18" in n for n in dd.notes)


def test_dictionary_missing_required_columns_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="Variable / Field Name"):
        read_dictionary("a,b\n1,2\n")


def test_redcap_patient_demographics_from_coded_fields_and_project_identifier_system() -> None:
    res = _redcap_resources()
    pats = {p["identifier"][0]["value"]: p for p in res if p["resourceType"] == "Patient"}
    system = "urn:kaapana-fhir:redcap:lungimaging:record-id"
    assert pats["LI-001"]["identifier"] == [{"system": system, "value": "LI-001"}]
    assert pats["LI-001"]["id"] == patient_id(system, "LI-001")
    assert (pats["LI-001"]["gender"], pats["LI-001"]["birthDate"]) == ("female", "1955-03-14")
    assert (pats["LI-002"]["gender"], pats["LI-002"]["deceasedBoolean"]) == ("male", True)
    assert pats["LI-003"]["gender"] == "unknown" and "deceasedBoolean" not in pats["LI-003"]
    assert not any("Muster" in str(r) or "John Doe" in str(r) for r in res)  # identifier fields never written


def test_redcap_measurement_is_one_observation_with_code_unit_and_date() -> None:
    res = _redcap_resources()
    labs = [r for r in res if r["resourceType"] == "Observation" and r["code"]["coding"][0]["system"]
            == "http://loinc.org" and r["code"]["coding"][0]["code"] in ("718-7", "2160-0", "1988-5")]
    assert len(labs) == 3
    hb = next(r for r in labs if r["code"]["coding"][0]["code"] == "718-7")
    assert hb["valueQuantity"] == {"value": 12.9, "unit": "g/dL", "system": "http://unitsofmeasure.org",
                                   "code": "g/dL"}
    assert hb["effectiveDateTime"] == "2021-06-01" and hb["code"]["text"] == "Hemoglobin"
    # no separate Observations for the test, unit and date fields of the measurement
    texts = {r["code"].get("text") for r in res if r["resourceType"] == "Observation"}
    assert not texts & {"lab_test", "lab_unit", "lab_date"}


def test_redcap_dictionary_codes_are_used() -> None:
    res = [r for r in _redcap_resources() if r["resourceType"] == "Observation"]
    by_text: dict[str, dict[str, Any]] = {r["code"]["text"]: r for r in reversed(res)}
    assert by_text["weight"]["code"]["coding"][0] == {"system": "http://loinc.org", "code": "29463-7",
                                                      "display": "Body weight"}
    assert by_text["weight"]["valueQuantity"]["code"] == "kg"  # unit from the field note
    assert by_text["height"]["valueQuantity"]["code"] == "cm"  # unit from the label "(cm)"
    assert by_text["bmi"]["valueQuantity"]["code"] == "kg/m2"  # UCUM: in the annotation
    icd = by_text["icd_code"]["valueCodeableConcept"]["coding"][0]
    assert icd["system"] == "http://hl7.org/fhir/sid/icd-10-cm" and icd["code"].startswith("C34")
    histo = by_text["histology"]["valueCodeableConcept"]["coding"][0]
    assert histo["system"] == "urn:kaapana-fhir:redcap:lungimaging:histology"  # choices split on line breaks
    assert by_text["histology"]["effectiveDateTime"] == by_text["diag_date"]["valueDateTime"]


def test_redcap_init_marks_guesses_for_review_and_import_refuses_them() -> None:
    m = derive_mapping(DICT.read_text("utf-8"), header=open_table(EXPORT.read_bytes(), name="x.csv").header,
                       name="LungImaging", review=True)
    m.pop("x_notes")
    assert validate_mapping(m) == []
    with pytest.raises(MappingIncomplete) as exc:
        check_ready(_with_defaults(m, "m", None))
    assert any("observations[0].review" in i for i in exc.value.items)


# ------------------------------------------------------------------------------------------------ ODM
@pytest.mark.parametrize("path", [ODM, REDCAP_ODM], ids=["odm-1.3.2", "redcap-odm-export"])
def test_odm_import_gives_coded_observations_and_complete_patients(path: Path) -> None:
    table = read_odm(path, name=path.name)
    mapping = resolve_mapping(header=table.header, preset="odm", table_name=path.name, data=path)
    res = _run(table, mapping)
    pats = [r for r in res if r["resourceType"] == "Patient"]
    assert len(pats) == 2 and all(p.get("gender") in ("male", "female") and p.get("birthDate") for p in pats)
    hgb = [r for r in res if any(c["code"] == "718-7" for c in r.get("code", {}).get("coding", []))]
    assert hgb and all(r["valueQuantity"]["code"] == "g/dL" and r.get("effectiveDateTime") for r in hgb)
    assert len({r["id"] for r in hgb}) == len(hgb)  # repeats are separate resources


def test_odm_codelist_alias_codes_answers() -> None:
    table = read_odm(ODM, name=ODM.name)
    res = _run(table, resolve_mapping(header=table.header, preset="odm", table_name=ODM.name, data=ODM))
    smoke = next(r for r in res if r.get("code", {}).get("text") == "I.SMOKE")
    assert smoke["valueCodeableConcept"]["coding"][0] == {"system": "http://loinc.org", "code": "LA15920-4",
                                                          "display": "Former smoker"}


def _odm_variant(old: str, new: str) -> bytes:
    text = ODM.read_text("utf-8")
    assert old in text
    return text.replace(old, new, 1).encode()


def test_odm_undeclared_item_oid_is_an_error_naming_it() -> None:
    data = _odm_variant('<ItemData ItemOID="I.HISTO" Value="ADENO"/>', '<ItemData ItemOID="I.NOPE" Value="x"/>')
    table = read_odm(data, name="bad.xml")
    with pytest.raises(MappingError, match="ItemOID 'I.NOPE' is not declared"):
        list(table.rows())


def test_odm_codelist_value_not_in_list_is_a_cell_error() -> None:
    data = _odm_variant('<ItemData ItemOID="I.HISTO" Value="ADENO"/>', '<ItemData ItemOID="I.HISTO" Value="OAT"/>')
    table = read_odm(data, name="bad.xml")
    mapper = TableMapper(_with_defaults(derive_odm(data, name="bad.xml"), "odm", None), table_name="bad.xml")
    s = scan(table, mapper)
    assert [(i.column, i.value) for i in s.issues] == [("I.HISTO", "OAT")]
    assert "not in value map" in s.issues[0].rule


def test_odm_with_doctype_is_refused() -> None:
    data = ODM.read_bytes().replace(b"<ODM ", b'<!DOCTYPE ODM [<!ENTITY x "boom">]>\n<ODM ', 1)
    with pytest.raises(MappingError, match="DTD|DOCTYPE"):
        read_odm(data, name="dtd.xml")


# ------------------------------------------------------------------------------------------------ checks
BASE = "version: 1\npatient: {key: id}\n"


def _table(csv_text: str) -> Any:
    return open_table(csv_text.encode(), name="t.csv")


def test_unit_typo_is_refused_by_the_ucum_check() -> None:
    with pytest.raises(ConfigError, match="'kcals' is not a valid UCUM code"):
        load_mapping(BASE + "observations: [{column: e, code: {code: x}, value: {type: Quantity, unit: kcals}}]\n")


def test_unit_column_values_are_ucum_checked_per_cell() -> None:
    m = load_mapping(BASE + "observations: [{column: v, code: {code: x}, value: {type: Quantity, unit_column: u}}]\n")
    s = scan(_table("id,v,u\n1,3,kg\n2,4,kgs\n"), TableMapper(m))
    assert [(i.row, i.column, i.value) for i in s.issues] == [(3, "u", "kgs")]


def test_future_and_ancient_dates_are_rejected_with_row_and_column() -> None:
    m = load_mapping(BASE + "observations: [{column: d, code: {code: x}, value: {type: dateTime}}]\n")
    s = scan(_table("id,d\n1,2020-01-01\n2,2099-05-01\n3,1850-01-01\n"), TableMapper(m))
    assert [(i.row, i.column) for i in s.issues] == [(3, "d"), (4, "d")]
    assert "checks.date_max" in s.issues[0].rule and "checks.date_min" in s.issues[1].rule
    m2 = load_mapping(BASE + "checks: {date_min: '1800-01-01'}\n"
                      "observations: [{column: d, code: {code: x}, value: {type: dateTime}}]\n")
    assert [i.row for i in scan(_table("id,d\n3,1850-01-01\n"), TableMapper(m2)).issues] == []


def test_one_error_per_cell_even_when_several_resources_read_it() -> None:
    m = load_mapping(BASE + "observations:\n"
                     "  - {column: a, code: {code: x}, value: {type: decimal}, effective: {column: d}}\n"
                     "  - {column: b, code: {code: y}, value: {type: decimal}, effective: {column: d}}\n")
    s = scan(_table("id,a,b,d\n1,1,2,not-a-date\n"), TableMapper(m))
    assert [(i.row, i.column) for i in s.issues] == [(2, "d")]


def test_yaml_booleans_as_map_keys_stay_strings() -> None:
    m = load_mapping(BASE + "observations: [{column: s, code: {code: x}, value: {type: CodeableConcept, "
                     "map: {yes: {code: Y}, no: {code: N}, on: {code: O}}}}]\n")
    assert set(m["observations"][0]["value"]["map"]) == {"yes", "no", "on"}
    res = _run(_table("id,s\n1,yes\n2,no\n"), m)
    assert sorted(r["valueCodeableConcept"]["coding"][0]["code"] for r in res if r["resourceType"] ==
                  "Observation") == ["N", "Y"]


def test_mapping_with_todo_is_refused_listing_what_to_fill() -> None:
    m = load_mapping(BASE + "observations: [{column: s, code: {system: TODO, code: TODO}, value: {type: string}}]\n")
    with pytest.raises(MappingIncomplete, match="observations\\[0\\].code.system") as exc:
        scan(_table("id,s\n1,a\n"), TableMapper(m))
    assert len(exc.value.items) == 2


def test_table_without_unique_column_gets_an_explicit_generated_key() -> None:
    from kaapana_fhir.core.tables.init import init_mapping

    csv_text = "centre,treatment,age\nA,chemo,61\nA,radio,70\nB,chemo,61\nB,chemo,58\n"
    res = init_mapping(csv_text.encode(), name="survival.csv")
    pat = res.mapping["patient"]
    assert pat.get("key_generated") == "row-number" and "review" in pat and "key" not in pat
    assert "centre" in res.report and "missing" in res.report
    pat.pop("review")
    for o in res.mapping["observations"]:
        o.pop("review", None)
        if o["code"].get("code") == "TODO":
            o["code"] = {"system": "urn:x", "code": o["column"]}
        if o["value"].get("system") == "TODO":
            o["value"] = {"type": "string"}
    m = _with_defaults(res.mapping, "m", None)
    out = _run(_table(csv_text), m)
    pats = [r for r in out if r["resourceType"] == "Patient"]
    assert len(pats) == 4 and pats[0]["identifier"][0]["system"] == "urn:kaapana-fhir:table:survival:row-number"


def test_composite_key_columns() -> None:
    m = load_mapping("version: 1\npatient: {key_columns: [site, nr]}\n"
                     "observations: [{column: v, code: {code: x}, value: {type: decimal}}]\n")
    res = _run(_table("site,nr,v\nA,1,3\nB,1,4\n"), m)
    assert sorted(p["identifier"][0]["value"] for p in res if p["resourceType"] == "Patient") == ["A|1", "B|1"]


def test_format_csv_on_an_xlsx_is_a_clear_error() -> None:
    with pytest.raises(MappingError, match="Excel workbook"):
        open_table(b"PK\x03\x04" + b"\x00" * 100, name="x.xlsx", fmt="csv")


def test_xlsx_zip_bomb_limits_checked_before_parsing(tmp_path: Path) -> None:
    import zipfile

    from kaapana_fhir.core.tables.reader import check_xlsx_limits

    p = tmp_path / "bomb.xlsx"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("xl/worksheets/sheet1.xml", '<worksheet><dimension ref="A1:B5000000"/></worksheet>')
        z.writestr("xl/big.bin", b"\x00" * (20 * 1024 * 1024))
    with pytest.raises(MappingError, match="compression ratio"):
        check_xlsx_limits(str(p), name="bomb.xlsx")
    with pytest.raises(MappingError, match="uncompressed size"):
        check_xlsx_limits(str(p), name="bomb.xlsx", max_uncompressed=1024)
    q = tmp_path / "rows.xlsx"
    with zipfile.ZipFile(q, "w") as z:
        z.writestr("xl/worksheets/sheet1.xml", '<worksheet><dimension ref="A1:B5000000"/></worksheet>')
    with pytest.raises(MappingError, match="declares 5000000 rows"):
        check_xlsx_limits(str(q), name="rows.xlsx")


def test_redcap_api_metadata_json_gives_the_same_mapping_as_the_csv_dictionary() -> None:
    import csv
    import io
    import json

    from kaapana_fhir.core.tables.redcap import COLUMNS

    rows = list(csv.reader(io.StringIO(DICT.read_text("utf-8"))))
    records = [dict(zip(COLUMNS, (r + [""] * 18)[:18], strict=True)) for r in rows[1:]]
    records[-1]["field_annotation"] = "see SOP v2"  # the CSV's extra cell, as the API would carry it
    header = open_table(EXPORT.read_bytes(), name="x.csv").header
    from_csv = derive_mapping(DICT.read_text("utf-8"), header=header, name="LungImaging")
    from_json = derive_mapping(json.dumps(records), header=header, name="LungImaging")
    assert from_json["observations"] == from_csv["observations"] and from_json["patient"] == from_csv["patient"]
