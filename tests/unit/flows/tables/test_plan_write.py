"""--plan classification, retraction filtering and parallel chunk writing with a fake FHIR client (no server)."""

from __future__ import annotations

import threading
from typing import Any

from kaapana_fhir.clients.fhir import WriteResult
from kaapana_fhir.core.tables import load_mapping, open_table
from kaapana_fhir.flows.tables.flow import import_table
from kaapana_fhir.flows.tables.plan import classify, plan_table

MAPPING = ("version: 1\npatient: {key: id, birth_date: {column: dob}}\nempty_cells: retract\n"
           "observations: [{column: w, code: {system: 'http://loinc.org', code: 29463-7}, "
           "value: {type: Quantity, unit: kg}}]\n")


class FakeFhir:
    """Stores what transactions PUT; answers _id searches; records the order of writes."""

    def __init__(self) -> None:
        self.db: dict[tuple[str, str], dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.writes: list[list[str]] = []

    def search(self, rtype: str, params: dict[str, str]) -> list[dict[str, Any]]:
        ids = params.get("_id", "").split(",")
        assert len(ids) <= 40, "long _id searches are refused by real servers (URL length)"
        return [self.db[(rtype, i)] for i in ids if (rtype, i) in self.db]

    def write_entries(self, entries: list[dict[str, Any]], *, chunk_size: int = 500) -> WriteResult:
        counts: dict[str, int] = {}
        with self.lock:
            for e in entries:
                r = e["resource"]
                if r["resourceType"] == "Observation":  # referential integrity, as HAPI checks it
                    assert ("Patient", r["subject"]["reference"].split("/")[1]) in self.db, "Patient not written yet"
                self.db[(r["resourceType"], r["id"])] = r
                counts[r["resourceType"]] = counts.get(r["resourceType"], 0) + 1
            self.writes.append([e["resource"]["resourceType"] for e in entries])
        return WriteResult(statuses={"200": len(entries)}, types=counts, entries=len(entries), chunks=1)


def _table(text: str) -> Any:
    return open_table(text.encode(), name="t.csv")


def test_classify() -> None:
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "valueQuantity": {"value": 1}}
    assert classify(obs, None) == "create"
    assert classify(obs, {**obs, "meta": {"versionId": "3"}}) == "unchanged"
    assert classify(obs, {**obs, "valueQuantity": {"value": 2}}) == "update"
    pat = {"resourceType": "Patient", "id": "p", "identifier": [{"system": "s", "value": "1"}], "birthDate": "1950"}
    assert classify(pat, {**pat, "name": [{"family": "from DICOM"}]}) == "unchanged"  # other elements are kept
    assert classify(pat, {**pat, "birthDate": "1951"}) == "update"


def test_plan_then_import_then_plan_unchanged_and_retract() -> None:
    fhir = FakeFhir()
    m = load_mapping(MAPPING)
    first = "id,dob,w\nP1,1950-01-01,70\nP2,1960-01-01,80\n"
    plan = plan_table(_table(first), m, fhir).as_dict()["plan"]  # type: ignore[arg-type]
    assert plan["Patient"]["create"] == 2 and plan["Observation"]["create"] == 2 and not fhir.db
    assert list(plan_table(_table(first), m, fhir).as_dict()) == [  # type: ignore[arg-type]
        "file", "mapping", "status", "skip_invalid_rows", "rows_read", "empty_rows", "rows_rejected",
        "resources_written", "rejected", "issue_count", "duration_s", "policy", "plan", "patient_conflicts_policy",
        "patient_corrections"]
    import_table(_table(first), m, client=fhir)  # type: ignore[arg-type]
    again = plan_table(_table(first), m, fhir).as_dict()["plan"]  # type: ignore[arg-type]
    assert again["Observation"] == {"create": 0, "update": 0, "unchanged": 2, "retract": 0}
    emptied = "id,dob,w\nP1,1950-01-01,\nP2,1960-01-01,81\n"
    p = plan_table(_table(emptied), m, fhir).as_dict()["plan"]  # type: ignore[arg-type]
    assert p["Observation"]["retract"] == 1 and p["Observation"]["update"] == 1
    rep = import_table(_table(emptied), m, client=fhir)  # type: ignore[arg-type]
    assert rep.retracted == 1
    statuses = sorted(r["status"] for (t, _), r in fhir.db.items() if t == "Observation")
    assert statuses == ["entered-in-error", "final"]
    # a cell that was never filled is not "retracted" (nothing to retract), and a retraction is written once
    assert plan_table(_table(emptied), m, fhir).as_dict()["plan"]["Observation"]["retract"] == 0  # type: ignore[arg-type]


def test_keep_policy_leaves_old_observation() -> None:
    fhir = FakeFhir()
    m = load_mapping(MAPPING.replace("empty_cells: retract\n", ""))
    import_table(_table("id,dob,w\nP1,1950-01-01,70\n"), m, client=fhir)  # type: ignore[arg-type]
    rep = import_table(_table("id,dob,w\nP1,1950-01-01,\n"), m, client=fhir)  # type: ignore[arg-type]
    assert rep.retracted == 0
    assert [r["status"] for (t, _), r in fhir.db.items() if t == "Observation"] == ["final"]


def test_parallel_workers_write_patients_first_and_everything_once() -> None:
    fhir = FakeFhir()
    m = load_mapping(MAPPING)
    rows = "".join(f"P{i},1950-01-01,{50 + i % 40}\n" for i in range(300))
    rep = import_table(_table("id,dob,w\n" + rows), m, client=fhir, chunk_size=7, workers=4)  # type: ignore[arg-type]
    assert rep.resources_written == {"Patient": 300, "Observation": 300}
    assert len([k for k in fhir.db if k[0] == "Patient"]) == 300
    first_obs = next(i for i, w in enumerate(fhir.writes) if "Observation" in w)
    assert all(set(w) == {"Patient"} for w in fhir.writes[:first_obs])
    assert all("Patient" not in w for w in fhir.writes[first_obs:])
