"""The streaming shared-strings table of the xlsx reader: same cells as openpyxl, spilled to SQLite when large."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import openpyxl
import pytest

from kaapana_fhir.core.tables import reader
from kaapana_fhir.core.tables.reader import SharedStrings, open_table
from tests.bench.bench_tables import write_xlsx_rows


def _workbook(path: Path, n: int) -> None:
    rows = [[f"P{i:05d}", f"Bemerkung {i} äöü", dt.datetime(2020, 1, 1 + i % 28), i * 1.5, "=D2*2"] for i in range(n)]
    write_xlsx_rows(path, ["pid", "text", "when", "num", "formula"], rows)


def test_shared_strings_spill_to_sqlite_and_read_back() -> None:
    s = SharedStrings(in_memory=3)
    for i in range(25_005):
        s.append(f"v{i}")
    s.finish()
    assert s.spilled
    assert len(s) == 25_005
    assert s[0] == "v0" and s[2] == "v2" and s[3] == "v3" and s[25_004] == "v25004" and s[-1] == "v25004"
    assert list(s[10:13]) == ["v10", "v11", "v12"]
    with pytest.raises(IndexError):
        s[25_005]
    s.close()


def test_small_table_stays_in_memory() -> None:
    s = SharedStrings(in_memory=10)
    for i in range(10):
        s.append(str(i))
    s.finish()
    assert not s.spilled and s[9] == "9"


@pytest.mark.parametrize("in_memory", [1_000_000, 7])
def test_xlsx_rows_equal_openpyxl_with_and_without_spill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture, in_memory: int) -> None:
    monkeypatch.setattr(reader, "SHARED_STRINGS_IN_MEMORY", in_memory)
    caplog.set_level("INFO", logger="kaapana_fhir.core.tables.reader")
    path = tmp_path / "t.xlsx"
    _workbook(path, 40)
    table = open_table(str(path), name="t.xlsx")
    assert table.header == ["pid", "text", "when", "num", "formula"]
    got = list(table.rows())
    assert list(table.rows()) == got  # a second pass (scan, then write) reads the same cells
    wb = openpyxl.load_workbook(path, read_only=True)
    want = list(wb.worksheets[0].iter_rows(values_only=True))[1:]
    wb.close()
    assert len(got) == 40
    for (_n, row), ref in zip(got, want, strict=True):
        assert row["pid"] == ref[0] and row["text"] == ref[1]
        assert row["when"] == ref[2] and isinstance(row["when"], dt.datetime)
        assert row["num"] == reader._cell(ref[3])
        assert row["formula"] == "=D2*2"
    assert ("temporary SQLite" in caplog.text) is (in_memory < 80)
    assert got[0][0] == 2 and got[-1][1]["text"] == "Bemerkung 39 äöü"


def _rewrite(path: Path, member: str, text: str) -> Path:
    import zipfile

    out = path.with_name("bad.xlsx")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, text if info.filename == member else src.read(info))
    return out


@pytest.mark.parametrize(("member", "text", "rule"), [
    ("xl/sharedStrings.xml", '<?xml version="1.0"?><!DOCTYPE sst [<!ENTITY e "x">]><sst xmlns="http://schemas.'
     'openxmlformats.org/spreadsheetml/2006/main"><si><t>&e;</t></si></sst>', "no DTDs or entities"),
    ("xl/sharedStrings.xml", "<sst><si><t>unclosed", "unreadable XML"),
    ("xl/worksheets/sheet1.xml", '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
     '<sheetData><row r="1"><c r="A1" t="s"><v>0</v></c></row><row r="2"><c r="A2" t="s"><v>999</v></c></row>'
     "</sheetData></worksheet>", "row 2: unreadable worksheet"),
])
def test_broken_workbook_xml_is_a_mapping_error(tmp_path: Path, member: str, text: str, rule: str) -> None:
    from kaapana_fhir.exceptions import MappingError

    path = tmp_path / "t.xlsx"
    _workbook(path, 3)
    with pytest.raises(MappingError, match=rule):
        table = open_table(str(_rewrite(path, member, text)), name="t.xlsx")
        list(table.rows())
