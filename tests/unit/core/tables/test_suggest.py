"""`mapping init` suggestions on tables the catalogue was not written for."""
from __future__ import annotations

from pathlib import Path

from kaapana_fhir.core.tables import open_table
from kaapana_fhir.core.tables.suggest import suggest_mapping


def _suggest(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    return suggest_mapping(open_table(path, name=path.name))


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
