"""Bad-input corpus of the clinical-table import (issue #5): one test per case, with its expected outcome."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM, patient_id
from kaapana_fhir.core.tables import TableRejected, load_mapping, open_table
from kaapana_fhir.core.tables.reader import MAX_FIELD_CHARS
from kaapana_fhir.exceptions import ConfigError, MappingError
from kaapana_fhir.flows.tables.flow import import_table, resolve_mapping

MAPPING = """
version: 1
name: corpus
source: {delimiter: ","}
patient:
  key: pid
  gender: {column: sex, map: {m: male, w: female, "männlich": male, "weiblich": female}}
  birth_date: {column: dob}
observations:
  - column: weight
    code: {system: "http://loinc.org", code: 29463-7, display: Body weight}
    value: {type: Quantity, unit: kg}
  - column: note
    code: {system: "urn:test", code: note}
    value: {type: string}
  - column: grade
    code: {system: "urn:test", code: grade}
    value: {type: CodeableConcept, system: "urn:test:grade", map: {"1": G1, "2": G2}}
"""
HEADER = "pid,sex,dob,weight,note,grade\n"


def _mapping(text: str = MAPPING, **source: str) -> dict:
    m = load_mapping(text, source="corpus.yaml")
    m["source"].update(source)
    return m


def _run(data: bytes, tmp_path: Path, *, mapping: dict | None = None, skip: bool = False) -> tuple[dict, list[dict]]:
    m = mapping or _mapping()
    src = m["source"]
    table = open_table(data, name="t.csv", fmt=src.get("format", "auto"), delimiter=src.get("delimiter"),
                       encoding=src.get("encoding"))
    out = tmp_path / "bundle.json"
    rep = import_table(table, m, out_path=out, skip_invalid_rows=skip)
    return rep, [e["resource"] for e in json.loads(out.read_text())["entry"]]


def _obs(resources: list[dict], col: str) -> list[dict]:
    return [r for r in resources if r["resourceType"] == "Observation" and r["code"]["text"] == col]


def test_wrong_delimiter_names_column_and_delimiter(tmp_path: Path) -> None:
    data = (HEADER + "P1,m,1970-01-01,72,ok,1\n").replace(",", ";").encode()
    with pytest.raises(MappingError, match=r"column 'pid'.*not found.*wrong delimiter ','") as exc:
        _run(data, tmp_path)
    assert "rule:" in str(exc.value)


def test_semicolon_file_is_detected_when_mapping_does_not_fix_delimiter(tmp_path: Path) -> None:
    m = _mapping()
    m["source"].pop("delimiter")
    data = (HEADER + "P1,m,1970-01-01,\"72,5\",ok,1\n").replace(",", ";").replace('"72;5"', '"72,5"').encode()
    rep, res = _run(data, tmp_path, mapping=m)
    assert rep.rows_read == 1
    assert _obs(res, "weight")[0]["valueQuantity"]["value"] == 72.5


def test_missing_patient_key_column(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match=r"column 'pid' \(patient.key\) not found"):
        _run(b"id,sex,dob,weight,note,grade\nP1,m,1970-01-01,72,ok,1\n", tmp_path)


def test_duplicate_patient_rows_with_conflicting_values_are_rejected(tmp_path: Path) -> None:
    data = (HEADER + "P1,m,1970-01-01,72,ok,1\nP1,m,1970-01-01,80,ok,1\nP2,w,1980-02-02,60,x,2\n").encode()
    with pytest.raises(TableRejected) as exc:
        _run(data, tmp_path)
    bad = exc.value.report["rejected"]
    assert [(b["row"], b["column"]) for b in bad] == [(3, "pid")]
    assert "conflicting values (first at row 2)" in bad[0]["rule"]
    rep, res = _run(data, tmp_path, skip=True)  # keeps the first row and P2
    assert rep.rows_rejected == 1 and _obs(res, "weight")[0]["valueQuantity"]["value"] == 72


def test_identical_duplicate_rows_are_accepted_once(tmp_path: Path) -> None:
    rep, res = _run((HEADER + "P1,m,1970-01-01,72,ok,1\nP1,m,1970-01-01,72,ok,1\n").encode(), tmp_path)
    assert rep.rows_rejected == 0
    assert len([r for r in res if r["resourceType"] == "Patient"]) == 1
    assert len(_obs(res, "weight")) == 1


@pytest.mark.parametrize("cell", ["1970-03-04", "04.03.1970", "04/03/1970", "1970-03-04T10:00:00"])
def test_dates_in_several_formats(tmp_path: Path, cell: str) -> None:
    _, res = _run((HEADER + f"P1,m,{cell},72,ok,1\n").encode(), tmp_path)
    assert next(r for r in res if r["resourceType"] == "Patient")["birthDate"] == "1970-03-04"


def test_impossible_date_is_reported_with_row_column_value_rule(tmp_path: Path) -> None:
    with pytest.raises(TableRejected) as exc:
        _run((HEADER + "P1,m,1970-02-30,72,ok,1\n").encode(), tmp_path)
    assert exc.value.report["rejected"] == [
        {"row": 2, "column": "dob", "value": "1970-02-30", "rule": "impossible date"}]


def test_comma_decimals(tmp_path: Path) -> None:
    _, res = _run((HEADER + 'P1,m,1970-01-01,"72,5",ok,1\nP2,m,1970-01-01,"1.072,25",ok,1\n').encode(), tmp_path)
    assert sorted(o["valueQuantity"]["value"] for o in _obs(res, "weight")) == [72.5, 1072.25]


def test_units_inside_cells(tmp_path: Path) -> None:
    _, res = _run((HEADER + "P1,m,1970-01-01,72 kg,ok,1\n").encode(), tmp_path)
    assert _obs(res, "weight")[0]["valueQuantity"] == {"value": 72, "unit": "kg",
                                                      "system": "http://unitsofmeasure.org", "code": "kg"}
    with pytest.raises(TableRejected, match="unit 'lb' in cell does not match the mapping unit"):
        _run((HEADER + "P1,m,1970-01-01,160 lb,ok,1\n").encode(), tmp_path)


def test_empty_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    rep, res = _run((HEADER + "\n,,,,,\nP1,m,1970-01-01,72,ok,1\n\n").encode(), tmp_path)
    assert rep.rows_read == 1 and rep.empty_rows >= 2
    assert len(_obs(res, "weight")) == 1


@pytest.mark.parametrize("cell", ["=1+2", "+SUM(A1)", "-2+3", "@cmd", "=HYPERLINK(\"http://x\")"])
def test_formula_like_cells_are_stored_as_text_never_evaluated(tmp_path: Path, cell: str) -> None:
    quoted = '"' + cell.replace('"', '""') + '"'
    _, res = _run((HEADER + f"P1,m,1970-01-01,72,{quoted},1\n").encode(), tmp_path)
    assert _obs(res, "note")[0]["valueString"] == cell


def test_formula_in_numeric_column_is_rejected_and_escaped_in_rejected_csv(tmp_path: Path) -> None:
    from kaapana_fhir.cli.tables_cmd import write_rejected_csv

    with pytest.raises(TableRejected) as exc:
        _run((HEADER + "P1,m,1970-01-01,=1+2,ok,1\n").encode(), tmp_path)
    rej = exc.value.report["rejected"]
    assert rej[0]["value"] == "=1+2" and "formula" in rej[0]["rule"]
    out = tmp_path / "rej.csv"
    write_rejected_csv(str(out), rej)
    assert "'=1+2" in out.read_text() and "\n2,weight,=1+2" not in out.read_text()


def test_latin1_file(tmp_path: Path) -> None:
    data = (HEADER + "P1,männlich,1970-01-01,72,Größe ok,1\n").encode("latin-1")
    _, res = _run(data, tmp_path)
    assert next(r for r in res if r["resourceType"] == "Patient")["gender"] == "male"
    assert _obs(res, "note")[0]["valueString"] == "Größe ok"


def test_utf8_bom_file_matches_first_header_column(tmp_path: Path) -> None:
    _, res = _run(b"\xef\xbb\xbf" + (HEADER + "P1,w,1970-01-01,72,ok,1\n").encode(), tmp_path)
    pat = next(r for r in res if r["resourceType"] == "Patient")
    assert pat["id"] == patient_id(DEFAULT_PATIENT_SYSTEM, "P1")


def test_quoted_newlines_stay_in_one_cell(tmp_path: Path) -> None:
    _, res = _run((HEADER + 'P1,m,1970-01-01,72,"line1\nline2, with comma",1\nP2,w,1970-01-01,60,x,2\n').encode(),
                  tmp_path)
    assert _obs(res, "note")[0]["valueString"] == "line1\nline2, with comma"
    assert len(_obs(res, "weight")) == 2


def test_zero_byte_file(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match=r"file is empty \(0 bytes\)"):
        _run(b"", tmp_path)


def test_header_only(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="no data rows"):
        _run(HEADER.encode(), tmp_path)


def test_very_long_line(tmp_path: Path) -> None:
    long_text = "x" * 200_000
    _, res = _run((HEADER + f"P1,m,1970-01-01,72,{long_text},1\n").encode(), tmp_path)
    assert len(_obs(res, "note")[0]["valueString"]) == 200_000
    too_long = "y" * (MAX_FIELD_CHARS + 10)
    with pytest.raises(MappingError, match=r"row 2: unreadable CSV record.*field"):
        _run((HEADER + f"P1,m,1970-01-01,72,{too_long},1\n").encode(), tmp_path)


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'lung2'"):
        resolve_mapping(header=["PatientID"], preset="lung2")


def test_mapping_key_typo_names_key_and_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"key 'observations\[0\]\.valeu': unknown key .*did you mean 'value'"):
        load_mapping(MAPPING.replace("value: {type: Quantity", "valeu: {type: Quantity"), source="corpus.yaml")


def test_value_not_in_value_map(tmp_path: Path) -> None:
    data = (HEADER + "P1,m,1970-01-01,72,ok,7\nP2,w,1970-01-01,60,ok,2\n").encode()
    with pytest.raises(TableRejected) as exc:
        _run(data, tmp_path)
    assert exc.value.report["rejected"] == [{"row": 2, "column": "grade", "value": "7",
                                            "rule": "value not in value map (allowed: 1, 2)"}]
    rep, res = _run(data, tmp_path, skip=True)
    assert rep.rows_rejected == 1 and rep.status == "imported-with-rejections"
    assert [o["valueCodeableConcept"]["coding"][0]["code"] for o in _obs(res, "grade")] == ["G2"]


def test_row_with_more_cells_than_header(tmp_path: Path) -> None:
    with pytest.raises(TableRejected, match="more cells than header columns"):
        _run((HEADER + "P1,m,1970-01-01,72,ok,1,extra\n").encode(), tmp_path)


def test_missing_patient_key_value_in_a_row(tmp_path: Path) -> None:
    with pytest.raises(TableRejected, match="patient key is missing"):
        _run((HEADER + ",m,1970-01-01,72,ok,1\n").encode(), tmp_path)


def test_xlsx_sheet_and_formula_kept_as_text(tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    wb.active.title = "other"
    ws = wb.create_sheet("clinical")
    ws.append(["pid", "sex", "dob", "weight", "note", "grade"])
    import datetime as dt

    ws.append(["P1", "w", dt.datetime(1970, 3, 4), 72.5, "=1+2", 2])
    path = tmp_path / "t.xlsx"
    wb.save(path)
    m = _mapping()
    m["source"].update(format="xlsx", sheet="clinical")
    table = open_table(str(path), name="t.xlsx", fmt="xlsx", sheet="clinical")
    out = tmp_path / "b.json"
    import_table(table, m, out_path=out)
    res = [e["resource"] for e in json.loads(out.read_text())["entry"]]
    assert next(r for r in res if r["resourceType"] == "Patient")["birthDate"] == "1970-03-04"
    assert _obs(res, "weight")[0]["valueQuantity"]["value"] == 72.5
    assert _obs(res, "note")[0]["valueString"] == "=1+2"
