"""The same patient in two sources: a correction from the same file is applied, a conflict with another file or
the DICOM flow follows ``patient_conflicts`` (keep / replace / fail) and is reported with both values and sources."""

from __future__ import annotations

from typing import Any

import pytest

from kaapana_fhir.clients.fhir import WriteResult
from kaapana_fhir.core.patient import SOURCE_EXT, ConflictPolicy, Precedence, merge_patient, source_of, with_sources
from kaapana_fhir.core.tables import TableRejected, load_mapping, open_table
from kaapana_fhir.flows.tables.flow import import_table
from kaapana_fhir.flows.tables.plan import format_plan, plan_table

BASE = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:t", "value": "P1"}]}


def _pat(source: str | None, **demo: Any) -> dict[str, Any]:
    r = {**BASE, **demo}
    return with_sources(r, source) if source else r


def test_same_source_is_a_correction() -> None:
    out = merge_patient(_pat("table:a.csv", birthDate="1950-01-01"), _pat(None, birthDate="1951-01-01"),
                        Precedence.INCOMING, source="table:a.csv")
    assert out.resource["birthDate"] == "1951-01-01" and not out.conflicts and out.corrected == ["birthDate"]
    assert source_of(out.resource, "birthDate") == "table:a.csv"


@pytest.mark.parametrize(("policy", "kept", "value", "src"), [
    (ConflictPolicy.KEEP, "existing", "1950-01-01", "table:a.csv"),
    (ConflictPolicy.FAIL, "existing", "1950-01-01", "table:a.csv"),
    (ConflictPolicy.REPLACE, "incoming", "1951-01-01", "table:b.csv"),
])
def test_other_file_is_a_conflict_following_the_policy(policy: ConflictPolicy, kept: str, value: str,
                                                        src: str) -> None:
    out = merge_patient(_pat("table:a.csv", birthDate="1950-01-01", gender="female"),
                        _pat(None, birthDate="1951-01-01", gender="female"), Precedence.INCOMING,
                        source="table:b.csv", policy=policy)
    assert out.resource["birthDate"] == value and source_of(out.resource, "birthDate") == src
    assert len(out.conflicts) == 1
    c = out.conflicts[0]
    assert (c.element, c.existing, c.incoming, c.kept) == ("birthDate", "1950-01-01", "1951-01-01", kept)
    assert (c.existing_source, c.incoming_source) == ("table:a.csv", "table:b.csv")
    msg = c.message("p1")
    assert "'1950-01-01' from table:a.csv" in msg and "'1951-01-01' from table:b.csv" in msg


def test_dicom_value_without_source_is_another_source_but_unknown_gender_is_filled() -> None:
    dicom = _pat(None, birthDate="1950-01-01", gender="unknown")
    out = merge_patient(dicom, _pat(None, birthDate="1950-02-02", gender="male"), Precedence.INCOMING,
                        source="table:a.csv")
    assert out.resource["birthDate"] == "1950-01-01" and out.resource["gender"] == "male"
    assert [c.element for c in out.conflicts] == ["birthDate"] and out.conflicts[0].existing_source is None
    assert "another source (DICOM or an earlier import)" in out.conflicts[0].message("p1")


def test_deceased_choice_variants_are_one_element() -> None:
    out = merge_patient(_pat("table:a.csv", deceasedDateTime="2020-01-01"), _pat(None, deceasedBoolean=False),
                        Precedence.INCOMING, source="table:a.csv")
    assert "deceasedDateTime" not in out.resource and "_deceasedDateTime" not in out.resource
    assert out.resource["deceasedBoolean"] is False and out.corrected == ["deceasedBoolean"]


def test_without_source_the_precedence_decides_as_before() -> None:
    out = merge_patient(_pat("table:a.csv", gender="female"), _pat(None, gender="male"), Precedence.EXISTING)
    assert out.resource["gender"] == "female" and out.conflicts[0].kept == "existing"
    assert out.resource["_gender"]["extension"][0]["url"] == SOURCE_EXT


class Server:
    """A FHIR server fake: Patients by id, ``_id`` search, transaction writes (unit test only)."""

    def __init__(self) -> None:
        self.store: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes = 0

    def search(self, rtype: str, params: dict[str, str]) -> list[dict[str, Any]]:
        return [self.store[(rtype, i)] for i in params["_id"].split(",") if (rtype, i) in self.store]

    def write_entries(self, entries: list[dict[str, Any]], **kw: object) -> WriteResult:
        self.writes += 1
        types: dict[str, int] = {}
        for e in entries:
            r = e["resource"]
            self.store[(r["resourceType"], r["id"])] = r
            types[r["resourceType"]] = types.get(r["resourceType"], 0) + 1
        return WriteResult(statuses={"200": len(entries)}, types=types, entries=len(entries), chunks=1)


def _mapping(policy: str | None = None) -> dict[str, Any]:
    extra = f"patient_conflicts: {policy}\n" if policy else ""
    return load_mapping("version: 1\npatient: {key: id, identifier_system: 'urn:t', birth_date: {column: dob}}\n"
                        + extra + "observations: [{column: w, code: {system: 'http://loinc.org', code: 29463-7}, "
                        "value: {type: Quantity, unit: kg}}]\n")


def _table(name: str, dob: str) -> Any:
    return open_table(f"id,dob,w\nP1,{dob},70\n".encode(), name=name)


def _birth(server: Server) -> str:
    return next(r["birthDate"] for (t, _), r in server.store.items() if t == "Patient")


def test_import_keeps_and_reports_a_conflict_and_applies_a_correction() -> None:
    server = Server()
    import_table(_table("a.csv", "1950-01-01"), _mapping(), client=server)
    rep = import_table(_table("b.csv", "1951-01-01"), _mapping(), client=server)
    assert _birth(server) == "1950-01-01"
    assert rep.status == "imported-with-conflicts" and rep.patient_conflicts_policy == "keep"
    [c] = rep.patient_conflicts
    assert (c["element"], c["existing"], c["existing_source"], c["incoming"], c["incoming_source"]) == (
        "birthDate", "1950-01-01", "table:a.csv", "1951-01-01", "table:b.csv")
    rep = import_table(_table("a.csv", "1949-12-31"), _mapping(), client=server)
    assert _birth(server) == "1949-12-31" and rep.status == "imported" and rep.patient_corrections == 1


def test_replace_policy_and_fail_policy_writes_nothing() -> None:
    server = Server()
    import_table(_table("a.csv", "1950-01-01"), _mapping(), client=server)
    writes = server.writes
    with pytest.raises(TableRejected, match="patient_conflicts: fail") as exc:
        import_table(_table("b.csv", "1951-01-01"), _mapping("fail"), client=server)
    assert server.writes == writes and _birth(server) == "1950-01-01"
    assert exc.value.report["patient_conflicts"][0]["incoming_source"] == "table:b.csv"
    import_table(_table("b.csv", "1951-01-01"), _mapping("replace"), client=server)
    assert _birth(server) == "1951-01-01"


def test_plan_names_patient_field_both_values_both_sources_and_the_policy() -> None:
    server = Server()
    import_table(_table("a.csv", "1950-01-01"), _mapping(), client=server)
    rep = plan_table(_table("b.csv", "1951-01-01"), _mapping(), server)
    assert rep.plan["Patient"].unchanged == 1  # keep: the server's value stays
    text = format_plan(rep)
    assert "patient_conflicts: keep" in text
    assert "(P1): birthDate '1950-01-01' from table:a.csv, '1951-01-01' from table:b.csv" in text
    assert "corrected" in format_plan(plan_table(_table("a.csv", "1949-01-01"), _mapping(), server))
