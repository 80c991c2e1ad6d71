"""DICOM value parsers (DA/TM/offsets/IS/DS/PN) and the shipped code tables of the DICOM mapping."""

from __future__ import annotations

import csv
from importlib import resources

import pytest

from kaapana_fhir.core.dicom import codes as dc
from kaapana_fhir.core.dicom import values as dv
from kaapana_fhir.exceptions import ConfigError


@pytest.mark.parametrize("raw,expected,problem", [
    ("20030201", "2003-02-01", False), ("2003.02.01", "2003-02-01", False), (" 20030201 ", "2003-02-01", False),
    ("00000000", None, True), ("20030230", None, True), ("2003", None, True), ("", None, False), (None, None, False),
])
def test_parse_da(raw, expected, problem) -> None:
    d, p = dv.parse_da(raw)
    assert (d.isoformat() if d else None) == expected
    assert bool(p) is problem


@pytest.mark.parametrize("raw,expected", [
    ("10", "10:00:00"), ("1011", "10:11:00"), ("101112", "10:11:12"), ("101112.120000", "10:11:12.12"),
    ("10:11:12", "10:11:12"), ("235960", "23:59:59"),
])
def test_parse_tm_valid(raw, expected) -> None:
    t, p = dv.parse_tm(raw)
    assert p is None and t is not None and t.iso() == expected


@pytest.mark.parametrize("raw", ["10034+", "2500", "1061", "ab", "10.5.3"])
def test_parse_tm_invalid(raw) -> None:
    t, p = dv.parse_tm(raw)
    assert t is None and "TM" in p


@pytest.mark.parametrize("raw,expected", [("+0100", "+01:00"), ("-0530", "-05:30"), ("+1400", "+14:00"),
                                          ("-1300", None), ("0100", None), ("+0170", None)])
def test_parse_tz(raw, expected) -> None:
    assert dv.parse_tz_offset(raw)[0] == expected


def test_fhir_datetime_rules() -> None:
    assert dv.fhir_datetime("20200102", "1000", "+0000", None)[0] == "2020-01-02T10:00:00+00:00"
    assert dv.fhir_datetime("20200329", "030000", None, "Europe/Berlin")[0] == "2020-03-29T03:00:00+02:00"
    value, problems = dv.fhir_datetime("20200102", "1000", None, None)
    assert value == "2020-01-02" and problems[0][0] == "time"
    assert dv.fhir_datetime("garbage", "1000", "+0100", None)[0] is None


def test_unknown_zone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        dv.zone("Mars/Olympus")


@pytest.mark.parametrize("raw,expected,problem", [
    ("1.0E+00", 1, False), (" 3", 3, False), ("0", 0, False), (7, 7, False), ("-1", None, True),
    ("2147483648", None, True), ("1.5", None, True), ("x", None, True), ("", None, False), (True, None, True),
])
def test_parse_is(raw, expected, problem) -> None:
    n, p = dv.parse_is(raw)
    assert n == expected and bool(p) is problem


@pytest.mark.parametrize("raw,expected,note", [("1,5", 1.5, True), ("1.5", 1.5, False), (" 2 ", 2.0, False),
                                               ("1,5,6", None, True), ("nan", None, True), (3, 3.0, False)])
def test_parse_ds(raw, expected, note) -> None:
    f, p = dv.parse_ds(raw)
    assert f == expected and bool(p) is note


def test_human_name_groups() -> None:
    assert dv.human_name("Yamada^Tarou=山田^太郎=やまだ^たろう")["family"] == "Yamada"
    assert dv.human_name("=山田^太郎")["family"] == "山田"
    assert dv.human_name("^^^^") is None and dv.human_name("") is None and dv.human_name(None) is None


def test_body_part_table_matches_dicom_dictionary() -> None:
    """Every shipped Annex L row carries the SNOMED code/meaning of DICOM's own dictionary (via pydicom)."""
    from pydicom.sr._concepts_dict import concepts

    by_code: dict[str, set[str]] = {}
    for _kw, entries in concepts["SCT"].items():
        for code, (meaning, _cids) in entries.items():
            by_code.setdefault(code, set()).add(meaning)
    table = dc.body_part_table()
    assert len(table) >= 100
    for term, (code, display) in table.items():
        assert term == term.upper() and " " not in term
        assert code in by_code, f"{term}: SNOMED {code} not in the DICOM dictionary"
        assert display in by_code[code], f"{term}: {display!r} is not a DICOM meaning of {code}"


def test_aliases_point_to_table_terms() -> None:
    table = dc.body_part_table()
    for alias, term in dc.body_part_aliases().items():
        assert term in table, f"alias {alias} → unknown term {term}"
        assert alias == dc.normalize_body_part(alias)


def test_laterality_and_designators() -> None:
    assert dc.laterality_coding("R")[0]["code"] == "24028007"
    assert dc.laterality_coding("B")[0]["code"] == "51440002"
    assert dc.laterality_coding(" u ") == (None, None)
    assert dc.designator_system("SCT") == "http://snomed.info/sct"
    assert dc.designator_system("99PYRADIOMICS") == "urn:kaapana-fhir:CodingScheme:99PYRADIOMICS"
    assert dc.designator_system("LOCAL") is None


def test_shipped_csvs_have_headers() -> None:
    folder = resources.files("kaapana_fhir").joinpath("data", "dicom")
    for name in ("body_part_snomed.csv", "body_part_aliases.csv", "laterality_snomed.csv", "coding_schemes.csv"):
        rows = list(csv.reader(folder.joinpath(name).read_text(encoding="utf-8").splitlines()))
        assert len(rows) > 1 and all(len(r) == len(rows[0]) for r in rows), name
