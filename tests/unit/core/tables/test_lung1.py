"""The shipped Lung1 preset on synthetic Lung1-schema rows; deterministic ids shared with DICOM."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from kaapana_fhir.clients.fhir import WriteResult
from kaapana_fhir.core import codes
from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM, patient_id
from kaapana_fhir.core.tables import TableMapper, iter_entries, load_preset, open_table, scan
from kaapana_fhir.core.validate import validate_resource
from kaapana_fhir.dev.synthetic_tables import LUNG1_COLUMNS, lung1_ids, synthetic_lung1_csv

ROW = "LUNG1-001,68.5,2,0,0,IIIa,squamous cell carcinoma,male,500,1\n"


def _resources(text: str) -> list[dict]:
    table = open_table(text.encode(), name="lung1.csv")
    mapper = TableMapper(load_preset("lung1"), table_name="lung1.csv")
    s = scan(table, mapper)
    assert s.issue_count == 0, s.issues
    return [e["resource"] for e in iter_entries(table, mapper, s)]


def _by_text(res: list[dict], text: str) -> dict:
    return next(r for r in res if r["resourceType"] == "Observation" and r["code"]["text"] == text)


def test_synthetic_generator_is_reproducible_and_has_lung1_columns() -> None:
    a = synthetic_lung1_csv(lung1_ids(30), seed=5)
    assert a == synthetic_lung1_csv(lung1_ids(30), seed=5) != synthetic_lung1_csv(lung1_ids(30), seed=6)
    rows = list(csv.reader(io.StringIO(a)))
    assert tuple(rows[0]) == LUNG1_COLUMNS and len(rows) == 31 and rows[1][0] == "LUNG1-001"


def test_lung1_row_maps_to_coded_resources() -> None:
    res = _resources(",".join(LUNG1_COLUMNS) + "\n" + ROW)
    pat = res[0]
    assert pat["resourceType"] == "Patient"
    assert pat["id"] == patient_id(DEFAULT_PATIENT_SYSTEM, "LUNG1-001")
    assert pat["identifier"] == [{"system": DEFAULT_PATIENT_SYSTEM, "value": "LUNG1-001"}]
    assert pat["gender"] == "male" and pat["deceasedBoolean"] is True
    age = _by_text(res, "age")
    assert age["code"]["coding"][0] == {"system": codes.LOINC, "code": "30525-0", "display": "Age"}
    assert age["valueQuantity"] == {"value": 68.5, "unit": "a", "system": codes.UCUM, "code": "a"}
    t = _by_text(res, "clinical.T.Stage")
    assert t["code"]["coding"][0]["code"] == "399504009"
    assert t["valueCodeableConcept"]["coding"][0] == {"system": codes.SNOMED, "code": "67673008",
                                                      "display": "T2 category"}
    stage = _by_text(res, "Overall.Stage")
    assert stage["valueCodeableConcept"]["coding"][0]["code"] == "261638004"
    surv = _by_text(res, "Survival.time")
    assert surv["valueQuantity"]["unit"] == "d" and surv["component"][0]["valueBoolean"] is True
    cond = next(r for r in res if r["resourceType"] == "Condition")
    assert cond["code"]["coding"][0]["code"] == "254637007"
    assert cond["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "28899001"
    assert cond["stage"][0]["summary"]["coding"][0]["code"] == "261638004"
    for r in res:
        assert {"system": codes.TAG_SOURCE, "code": "clinical-table"} in r["meta"]["tag"]
        if r["resourceType"] != "Patient":
            assert r["subject"] == {"reference": f"Patient/{pat['id']}"}
        validate_resource(r)


def test_censored_patient_has_no_deceased_and_t5_is_data_absent() -> None:
    row = "LUNG1-002,NA,5,1,0,NA,nos,female,900,0\n"
    res = _resources(",".join(LUNG1_COLUMNS) + "\n" + row)
    assert "deceasedBoolean" not in res[0]
    assert not [r for r in res if r["resourceType"] == "Observation" and r["code"]["text"] == "age"]  # NA -> none
    t = _by_text(res, "clinical.T.Stage")
    assert "valueCodeableConcept" not in t and t["dataAbsentReason"]["coding"][0]["code"] == "unknown"
    cond = next(r for r in res if r["resourceType"] == "Condition")
    assert "extension" not in cond and "stage" not in cond


def test_column_names_match_case_insensitively() -> None:
    header = ",".join(c.lower() for c in LUNG1_COLUMNS)
    res = _resources(header + "\n" + ROW)
    assert _by_text(res, "Clinical.N.Stage")["valueCodeableConcept"]["coding"][0]["code"] == "62455006"


def test_ids_are_deterministic_and_change_only_for_changed_cells() -> None:
    text = synthetic_lung1_csv(lung1_ids(10), seed=1)
    a, b = _resources(text), _resources(text)
    assert a == b
    changed = text.replace("LUNG1-003,", "LUNG1-003,", 1)
    lines = changed.splitlines()
    cells = lines[3].split(",")
    cells[8] = str(int(cells[8]) + 1)  # Survival.time of LUNG1-003
    lines[3] = ",".join(cells)
    c = _resources("\n".join(lines) + "\n")
    assert [r["id"] for r in a] == [r["id"] for r in c]
    diff = [x["id"] for x, y in zip(a, c, strict=True) if x != y]
    assert len(diff) == 1 and _by_text([x for x in c if x["id"] == diff[0]], "Survival.time")


def test_identifier_system_is_configurable() -> None:
    m = load_preset("lung1", identifier_system="https://example.org/pid")
    table = open_table((",".join(LUNG1_COLUMNS) + "\n" + ROW).encode(), name="x.csv")
    mapper = TableMapper(m)
    res = [e["resource"] for e in iter_entries(table, mapper, scan(table, mapper))]
    assert res[0]["id"] == patient_id("https://example.org/pid", "LUNG1-001") != patient_id(None, "LUNG1-001")


def test_cli_import_table_writes_bundle(tmp_path: Path) -> None:
    from kaapana_fhir.cli.main import main

    src = tmp_path / "lung1.csv"
    src.write_text(synthetic_lung1_csv(lung1_ids(12), seed=2))
    out, rep = tmp_path / "b.json", tmp_path / "r.json"
    assert main(["import-table", str(src), "--preset", "lung1", "--out", str(out), "--report", str(rep)]) == 0
    bundle = json.loads(out.read_text())
    assert bundle["type"] == "transaction"
    assert sum(e["resource"]["resourceType"] == "Patient" for e in bundle["entry"]) == 12
    assert json.loads(rep.read_text())["rows_read"] == 12
    assert main(["import-table", str(src), "--preset", "nope", "--out", str(out)]) == 1


def test_cli_mapping_init_writes_a_valid_mapping(tmp_path: Path) -> None:
    from kaapana_fhir.cli.main import main
    from kaapana_fhir.core.tables import load_mapping

    src = tmp_path / "t.csv"
    src.write_text(synthetic_lung1_csv(lung1_ids(15), seed=3))
    out = tmp_path / "m.yaml"
    assert main(["mapping", "init", str(src), "-o", str(out)]) == 0
    m = load_mapping(out.read_text())
    assert m["patient"]["key"] == "PatientID"
    assert m["patient"]["gender"]["map"] == {"female": "female", "male": "male"}
    obs = {o["column"]: o for o in m["observations"]}
    # catalogue suggestions (LOINC/UCUM) are marked for review, unknown columns keep TODO placeholders
    assert obs["Survival.time"]["code"]["code"] == "survival-time" and "review" in obs["Survival.time"]
    assert obs["age"]["code"] == {"system": "http://loinc.org", "code": "30525-0", "display": "Age"}
    assert obs["age"]["value"]["unit"] == "a" and "review" in obs["age"]
    assert obs["Overall.Stage"]["code"]["code"] == "21908-9"
    assert "review" in m["patient"]["gender"]
    # never silently final: the import refuses it and lists what to do
    from kaapana_fhir.core.tables.engine import MappingIncomplete, check_ready
    with pytest.raises(MappingIncomplete, match="review"):
        check_ready(m)


def test_existing_dicom_patient_is_merged_not_replaced() -> None:
    from kaapana_fhir.flows.tables.flow import write_chunks

    pid = patient_id(DEFAULT_PATIENT_SYSTEM, "LUNG1-001")
    existing = {"resourceType": "Patient", "id": pid, "meta": {"versionId": "3", "tag": [
        {"system": codes.TAG_SOURCE, "code": "dicom"}]}, "name": [{"family": "Anon"}],
        "identifier": [{"system": DEFAULT_PATIENT_SYSTEM, "value": "LUNG1-001"}], "gender": "unknown"}

    class Client:
        def __init__(self) -> None:
            self.written: list[dict] = []

        def search(self, rtype: str, params: dict) -> list[dict]:
            assert rtype == "Patient" and pid in params["_id"].split(",")
            return [existing]

        def write_entries(self, entries: list[dict], **kw: object) -> WriteResult:
            self.written.extend(entries)
            return WriteResult(statuses={"200": len(entries)}, entries=len(entries), chunks=1)

    table = open_table((",".join(LUNG1_COLUMNS) + "\n" + ROW).encode(), name="x.csv")
    mapper = TableMapper(load_preset("lung1"))
    c = Client()
    counts = write_chunks(c, iter_entries(table, mapper, scan(table, mapper)))
    assert counts.chunks == 1 and counts.statuses == {"200": len(c.written)}
    pat = c.written[0]["resource"]
    assert pat["name"] == [{"family": "Anon"}] and pat["gender"] == "male"
    assert {t["code"] for t in pat["meta"]["tag"]} == {"dicom", "clinical-table"}
    assert pat["identifier"] == existing["identifier"] and "versionId" not in pat["meta"]
