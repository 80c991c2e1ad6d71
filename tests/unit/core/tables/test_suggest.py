"""`mapping init` suggestions on tables the catalogue was not written for."""
from __future__ import annotations

from pathlib import Path

import pytest

from kaapana_fhir.core.tables import open_table
from kaapana_fhir.core.tables.reader import Table
from kaapana_fhir.core.tables.suggest import suggest_mapping


def _table(tmp_path: Path, text: str, name: str = "t.csv") -> Table:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return open_table(path, name=path.name)


def _suggest(tmp_path: Path, text: str, *, local_codes: bool = False) -> dict:
    return suggest_mapping(_table(tmp_path, text), local_codes=local_codes)


def test_a_yes_no_column_is_not_taken_for_vital_status_by_its_values(tmp_path: Path) -> None:
    # the German Breast Cancer Study Group table's columns: horTh = hormonal therapy (yes/no)
    m = _suggest(tmp_path, "horTh,age,menostat\nno,70,Post\nyes,56,Post\nyes,58,Pre\n")
    assert "deceased" not in m["patient"]
    assert [o["column"] for o in m["observations"]] == ["horTh", "age", "menostat"]


def test_a_status_column_holding_alive_and_dead_is_vital_status(tmp_path: Path) -> None:
    m = _suggest(tmp_path, "id,Status\n1,alive\n2,dead\n3,alive\n")
    assert m["patient"]["deceased"]["column"] == "Status"
    assert m["patient"]["deceased"]["map"] == {"alive": None, "dead": True}


def test_a_yes_no_column_named_deceased_is_vital_status(tmp_path: Path) -> None:
    m = _suggest(tmp_path, "id,deceased\n1,yes\n2,no\n")
    assert m["patient"]["deceased"]["column"] == "deceased"
    assert m["patient"]["deceased"]["map"] == {"no": None, "yes": True}


GBSG_LIKE = ("pid,horTh,age,tgrade,tsize,Tumor Size,cens\n"
             "p1,no,70,II,21,21,1\np2,yes,56,II,12,12,1\np3,yes,58,III,35,35,0\np4,no,59,I,17,17,0\n")


def _drop_reviews(node: object) -> object:
    if isinstance(node, dict):
        return {k: _drop_reviews(v) for k, v in node.items() if k != "review"}
    if isinstance(node, list):
        return [_drop_reviews(v) for v in node]
    return node


def test_local_codes_leave_only_the_catalogue_suggestions_to_review(tmp_path: Path) -> None:
    from kaapana_fhir.core.tables import TableMapper, iter_entries, load_mapping, scan
    from kaapana_fhir.core.tables.engine import MappingIncomplete, check_ready
    from kaapana_fhir.core.tables.mapping import pending_edits
    from kaapana_fhir.core.tables.suggest import local_system, to_yaml

    table = _table(tmp_path, GBSG_LIKE, "gbsg.csv")
    m = suggest_mapping(table, local_codes=True)
    todo = [p for p in pending_edits(m) if "TODO" in p]
    assert todo == []
    obs = {o["column"]: o for o in m["observations"]}
    assert obs["horTh"]["code"] == {"system": local_system("gbsg"), "code": "horth", "display": "horTh"}
    # two columns with the same slug get different codes
    assert obs["tsize"]["code"]["code"] == "tsize"
    assert obs["Tumor Size"]["code"]["code"] == "tumor-size"
    assert obs["tgrade"]["value"]["system"] == local_system("gbsg", "tgrade")
    assert obs["tgrade"]["value"]["map"]["III"] == {"code": "III", "display": "III"}
    # the catalogue's own suggestion (age, LOINC) still waits for the user's review
    with pytest.raises(MappingIncomplete, match="review"):
        check_ready(m)
    reviewed = load_mapping(to_yaml(_drop_reviews(m)))  # type: ignore[arg-type]
    check_ready(reviewed)
    mapper = TableMapper(reviewed, table_name=table.name)
    s = scan(table, mapper)
    assert s.issue_count == 0, s.issues
    res = [e["resource"] for e in iter_entries(table, mapper, s)]
    grades = sorted(r["valueCodeableConcept"]["coding"][0]["code"] for r in res
                    if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "tgrade")
    assert grades == ["I", "II", "II", "III"]


def test_local_code_collisions_are_numbered(tmp_path: Path) -> None:
    m = _suggest(tmp_path, "id,a b,a_b,A-B\n1,x,y,z\n2,x,y,w\n", local_codes=True)
    assert [o["code"]["code"] for o in m["observations"]] == ["a-b", "a-b-2", "a-b-3"]


def test_replacing_a_local_code_later_keeps_the_resource_ids(tmp_path: Path) -> None:
    from kaapana_fhir.core.tables import TableMapper, iter_entries, load_mapping, scan
    from kaapana_fhir.core.tables.suggest import to_yaml

    table = _table(tmp_path, GBSG_LIKE, "gbsg.csv")
    first = _drop_reviews(suggest_mapping(table, local_codes=True))
    later = _drop_reviews(suggest_mapping(table, local_codes=True))
    obs = next(o for o in later["observations"] if o["column"] == "tsize")  # type: ignore[index]
    obs["code"] = {"system": "http://loinc.org", "code": "21889-1", "display": "Size Tumor"}

    def ids(m: object) -> list[str]:
        mapper = TableMapper(load_mapping(to_yaml(m)), table_name=table.name)  # type: ignore[arg-type]
        s = scan(table, mapper)
        return sorted(e["resource"]["id"] for e in iter_entries(table, mapper, s))

    assert ids(first) == ids(later)
