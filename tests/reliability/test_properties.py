"""Property tests (hypothesis, no servers): the DICOM value parsers and the table value parsers turn ANY
input into a value or our typed error, never another exception (issue #11)."""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaapana_fhir.core.dicom import values as dv
from kaapana_fhir.core.tables import load_preset, open_table, scan
from kaapana_fhir.core.tables import values as V
from kaapana_fhir.core.tables.build import TableMapper
from kaapana_fhir.exceptions import ConfigError, MappingError

pytestmark = pytest.mark.reliability

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: DICOM-ish text: digits, separators, padding, signs, exponents, non-ASCII digits and arbitrary unicode
dicomish = st.one_of(
    st.text(alphabet=st.sampled_from("0123456789.:+-^=, \x00\\eE٣５"), max_size=24),
    st.text(max_size=40),
    st.from_regex(r"\A\d{8}\Z"), st.from_regex(r"\A\d{2,6}(\.\d{0,8})?\Z"), st.from_regex(r"\A[+-]\d{4}\Z"),
)
anything = st.one_of(st.none(), dicomish, st.integers(), st.floats(allow_nan=True), st.booleans(),
                     st.binary(max_size=16), st.lists(st.text(max_size=5), max_size=3),
                     st.dictionaries(st.sampled_from(["Alphabetic", "Ideographic", "Phonetic", "x"]),
                                     st.one_of(st.text(max_size=20), st.none(), st.integers()), max_size=3))


def _problem_ok(problem: Any) -> None:
    assert problem is None or (isinstance(problem, str) and problem)


@FAST
@given(anything)
def test_parse_da(raw: Any) -> None:
    value, problem = dv.parse_da(raw)
    _problem_ok(problem)
    assert value is None or isinstance(value, dt.date)
    assert value is None or problem is None


@FAST
@given(anything)
def test_parse_tm(raw: Any) -> None:
    value, problem = dv.parse_tm(raw)
    _problem_ok(problem)
    if value is not None:
        assert 0 <= value.hour <= 23 and 0 <= value.minute <= 59 and 0 <= value.second <= 59
        assert re.fullmatch(r"\d{2}:\d{2}:\d{2}(\.\d+)?", value.iso(), flags=re.ASCII) or not value.iso().isascii()


@FAST
@given(anything)
def test_parse_tz_offset(raw: Any) -> None:
    value, problem = dv.parse_tz_offset(raw)
    _problem_ok(problem)
    assert value is None or re.fullmatch(r"[+-]\d{2}:\d{2}", value)


@FAST
@given(anything, anything, anything, st.sampled_from([None, "Europe/Berlin", "UTC", "America/New_York"]))
def test_fhir_datetime(da: Any, tm: Any, tz: Any, zone: str | None) -> None:
    value, problems = dv.fhir_datetime(da, tm, tz, zone)
    assert isinstance(problems, list)
    if value is not None:  # a valid FHIR dateTime (date, or date + time + offset)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z))?", value), value


@FAST
@given(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 12, 31)).map(lambda d: d.strftime("%Y%m%d")),
       st.sampled_from(["Nowhere/Atlantis", "Europe/Berlin ", "Mars/Olympus_Mons", "UTC+1"]))
def test_unknown_zone_is_a_config_error(da: str, zone: str) -> None:
    """A zone that is needed (valid date and time, no offset in the data) and unknown is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="unknown time zone"):
        dv.fhir_datetime(da, "101010", None, zone)


@FAST
@given(anything, st.sampled_from(["Nowhere/Atlantis", "", "Europe/Berlin "]))
def test_any_date_with_any_zone_is_a_value_or_a_config_error(da: Any, zone: str) -> None:
    try:
        value, problems = dv.fhir_datetime(da, "101010", None, zone)
    except ConfigError as exc:
        assert zone.strip() and "unknown time zone" in str(exc)
        return
    assert value is None or isinstance(value, str)
    assert isinstance(problems, list)


@FAST
@given(anything)
def test_parse_is(raw: Any) -> None:
    value, problem = dv.parse_is(raw)
    _problem_ok(problem)
    assert value is None or (isinstance(value, int) and 0 <= value <= dv.UNSIGNED_INT_MAX)


@FAST
@given(anything)
def test_parse_ds(raw: Any) -> None:
    value, problem = dv.parse_ds(raw)
    _problem_ok(problem)
    assert value is None or (isinstance(value, float) and math.isfinite(value))


@FAST
@given(anything)
def test_pn(raw: Any) -> None:
    groups = dv.pn_groups(raw)
    assert set(groups) <= {"Alphabetic", "Ideographic", "Phonetic"}
    name = dv.human_name(raw)
    if name is not None:
        assert name["text"] and all(isinstance(g, str) and g for g in name.get("given", []))
        assert "family" not in name or (isinstance(name["family"], str) and "^" not in name["family"])


# ---------------------------------------------------------------------------- table cells
cells = st.one_of(st.text(max_size=30), st.from_regex(r"\A[+-]?\d{1,4}([.,]\d{0,3})?( ?(kg|g|mg|a|y))?\Z"),
                  st.from_regex(r"\A\d{1,2}[./]\d{1,2}[./]\d{2,4}\Z"),
                  st.from_regex(r"\A\d{4}(-\d{2}(-\d{2}([T ]\d{2}:\d{2}(:\d{2})?(Z|[+-]\d{2}:?\d{2})?)?)?)?\Z"),
                  st.sampled_from(["=1+1", "@SUM(A1)", "-3", "+4", "NaN", "inf", "1e5", "١٢٣", "1.234,5", "1,234.5"]))


def _typed(fn: Any, *args: Any, **kw: Any) -> Any:
    """Call a cell parser: a value or :class:`CellError` (the cell parsers' typed error) only."""
    try:
        return fn(*args, **kw)
    except V.CellError as exc:
        assert exc.rule
        return None


@FAST
@given(cells, st.sampled_from([None, "kg", "a"]))
def test_parse_decimal(raw: str, unit: str | None) -> None:
    value = _typed(V.parse_decimal, raw, unit=unit, aliases=("y",))
    assert value is None or (isinstance(value, Decimal) and value.is_finite())
    if value is not None:
        assert not raw.strip().startswith(("=", "@"))  # formula-like cells are never numbers


@FAST
@given(cells)
def test_parse_integer_and_boolean(raw: str) -> None:
    n = _typed(V.parse_integer, raw)
    assert n is None or isinstance(n, int)
    b = _typed(V.parse_boolean, raw)
    assert b is None or isinstance(b, bool)


@FAST
@given(st.one_of(cells, st.dates(), st.datetimes()), st.sampled_from(["dmy", "mdy"]))
def test_parse_date(raw: Any, order: str) -> None:
    value = _typed(V.parse_date, raw, date_order=order)
    if value is not None:
        assert re.fullmatch(r"\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}:\d{2}([+-]\d{2}:\d{2})?)?)?)?", value), value


@FAST
@given(cells)
def test_csv_escape(raw: str) -> None:
    out = V.escape_csv_cell(raw)
    assert not V.is_formula_like(out) and out.endswith(raw)


_LUNG1 = load_preset("lung1")
_HEADER = "PatientID,age,clinical.T.Stage,Clinical.N.Stage,Clinical.M.Stage,Overall.Stage,Histology,gender," \
          "Survival.time,deadstatus.event"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(cells, min_size=0, max_size=12), min_size=0, max_size=6))
def test_table_rows_map_or_reject(rows: list[list[str]]) -> None:
    """Whole Lung1 rows with hostile cells: scan gives a result (with row issues) or a MappingError."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    for r in rows:
        w.writerow(r)
    data = (_HEADER + "\n" + buf.getvalue()).encode("utf-8")
    try:
        res = scan(open_table(data, name="fuzz.csv"), TableMapper(_LUNG1, table_name="fuzz.csv"))
    except MappingError as exc:
        assert "fuzz.csv" in str(exc) or "row" in str(exc)
        return
    assert res.rows_read + res.empty_rows == len(rows)
    for issue in res.issues:
        assert issue.row >= 2 and issue.rule


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from(["x.csv", "x.tsv", "x.json", "x.txt"]))
def test_arbitrary_bytes_open_or_mapping_error(data: bytes, name: str) -> None:
    try:
        table = open_table(data, name=name)
        scan(table, TableMapper(_LUNG1, table_name=name))
    except MappingError:
        pass
