"""Property tests over every parser of user input (issue #15): radiomics results (pyradiomics JSON/CSV, Kaapana
JSON, MITK XML / xq JSON / CSV), table mappings (YAML), radiomics settings (YAML), tables (CSV/xlsx bytes),
DICOM JSON series records, and the bounded loaders. ANY input gives a value or our typed error
(:class:`KaapanaFhirError`) — never another exception (a crash), never a hang (deadline per example).
Crashes found by these properties are kept as explicit regression examples (``@example``)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kaapana_fhir.core import limits
from kaapana_fhir.core.dicom.mapping import SeriesInput, map_study
from kaapana_fhir.core.radiomics import results as R
from kaapana_fhir.core.tables import load_mapping, load_preset, open_table, scan
from kaapana_fhir.core.tables.build import TableMapper
from kaapana_fhir.exceptions import KaapanaFhirError
from kaapana_fhir.flows.radiomics.flow import load_settings
from tests.reliability import outcomes

pytestmark = pytest.mark.reliability

FUZZ = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)


def _typed(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Call a parser: a value, or a typed error with a message; count the input and the outcome."""
    outcomes.record("input")
    try:
        return fn(*args, **kw)
    except KaapanaFhirError as exc:
        assert str(exc).strip(), "an error without a message"
        outcomes.record("clear_error")
        return None


# ---------------------------------------------------------------------------------------------- building blocks
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10**60, max_value=10**60),
                    st.booleans(), st.none(), st.text(max_size=12),
                    st.sampled_from(["nan", "-nan", "inf", "1e309", "1,5", "", " ", "9" * 500, "0x10", "1_000"]))
FEATURE_KEYS = st.one_of(st.sampled_from(["original_firstorder_Mean", "original_shape_VoxelVolume",
                                          "wavelet-LLH_glcm_Contrast", "diagnostics_Mask-original_VoxelNum",
                                          "diagnostics_Versions_PyRadiomics", "Image", "Mask", "Label",
                                          "log-sigma-1-0-mm-3D_firstorder_Mean", "original_x", "a_b_c_d"]),
                         st.text(max_size=20))
JSONISH = st.recursive(st.one_of(NUMBERS, st.text(max_size=10)),
                       lambda inner: st.one_of(st.lists(inner, max_size=4),
                                               st.dictionaries(FEATURE_KEYS, inner, max_size=5)), max_leaves=20)


def _json_text(doc: Any) -> str:
    return json.dumps(doc, allow_nan=True, default=str)


# ---------------------------------------------------------------------------------------------- radiomics results
@FUZZ
@given(st.one_of(st.dictionaries(FEATURE_KEYS, NUMBERS, max_size=8),
                 st.lists(st.dictionaries(FEATURE_KEYS, NUMBERS, max_size=6), max_size=4),
                 st.dictionaries(st.text(max_size=30), st.one_of(st.none(), st.dictionaries(FEATURE_KEYS, NUMBERS,
                                                                                           max_size=4)), max_size=4),
                 JSONISH))
@example({"original_firstorder_Mean": 1, "diagnostics_Mask-original_VoxelNum": float("inf")})
@example({"original_firstorder_Mean": True})
@example({"Label": float("inf"), "original_firstorder_Mean": 1})  # found: OverflowError in the Label parser
@example([{"Label": 1, "Image": "a", "original_firstorder_Mean": 1}, {"Label": 1, "Image": "b",
                                                                      "original_firstorder_Mean": 2}])
def test_radiomics_json(doc: Any) -> None:
    _typed(R.parse_json, _json_text(doc), source="r.json")


@FUZZ
@given(st.lists(st.lists(st.one_of(NUMBERS.map(str), st.text(max_size=10)), max_size=7), max_size=5),
       st.lists(FEATURE_KEYS, min_size=1, max_size=7))
@example([["a", "m", "1", "inf", "1"]], ["Image", "Mask", "Label", "diagnostics_Mask-original_VoxelNum",
                                         "original_firstorder_Mean"])
@example([["x", "1e309"]], ["original_firstorder_Mean", "value"])
def test_radiomics_csv(rows: list[list[str]], header: list[str]) -> None:
    import csv

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow(r)
    _typed(R.parse_csv, buf.getvalue(), source="r.csv")
    _typed(R.parse_mitk_csv, buf.getvalue().replace(",", ";"), source="r.csv")


MITK = ("<mp:measurement xmlns:mp='http://www.mitk.org/Phenotyping'><mp:mask><mp:filePath>{mask}</mp:filePath>"
        "</mp:mask><mp:features>{features}</mp:features></mp:measurement>")


@FUZZ
@given(st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8), NUMBERS.map(str)), max_size=5),
       st.text(max_size=20), st.text(max_size=60))
@example([("First Order", "Mean", "inf")], "seg--1--liver.nrrd", "")
def test_radiomics_mitk_xml_and_xq_json(feats: list[tuple[str, str, str]], mask: str, junk: str) -> None:
    from xml.sax.saxutils import escape, quoteattr

    xml = MITK.format(mask=escape(mask), features="".join(
        f"<mp:feature name={quoteattr(n)} class={quoteattr(c)}>{escape(v)}</mp:feature>" for c, n, v in feats))
    _typed(R.parse_mitk_xml, xml, source="r.xml")
    _typed(R.parse_mitk_xml, junk, source="r.xml")
    xq = {"mp:measurement": {"mp:mask": {"mp:filePath": mask}, "mp:features": {"mp:feature": [
        {"@name": n, "@class": c, "#text": v} for c, n, v in feats]}}}
    _typed(R.parse_mitk_json, json.dumps(xq) + junk, source="r.json")


@FUZZ
@given(data=st.binary(max_size=400), name=st.sampled_from(["r.json", "r.csv", "r.xml", "r.txt"]))
def test_radiomics_result_file_bytes(data: bytes, name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    p = tmp_path_factory.mktemp("fuzz") / name
    p.write_bytes(data)
    _typed(R.parse_result_file, p)


# ------------------------------------------------------------------------------------- YAML: mappings, settings
YAML_SNIPPETS = st.sampled_from([
    "version: 1\n", "name: x\n", "patient: {key: pid}\n",
    "observations:\n  - column: w\n    code: {system: s, code: c}\n",
    "yes: true\n", "on: [off]\n", "&a [1]\n", "*a\n", "? [a]\n: 1\n", "!!python/object:os.system {}\n",
    "- - - -\n", "setting: {binWidth: 25}\n", "imageType: {Original: {}}\n", "featureClass: {glcm: [Contrast]}\n",
    "a: !!binary x\n",
    "2001-01-01: x\n", "1.0: y\n", "null: z\n", "\t", "'", "[", "{", "%YAML 1.1\n---\n", "map_file: ../../etc/passwd\n",
])


@FUZZ
@given(st.lists(YAML_SNIPPETS, max_size=6).map("".join), st.text(max_size=40))
@example("yes: true\nsetting: {}\n", "")
@example("\x1f", "")  # found: yaml ReaderError escaped (raised while the loader is built)
@example("version: 1\nname: x\npatient: {key: pid}\nyes: 1\n", "")
def test_yaml_mappings_and_settings(snippets: str, junk: str) -> None:
    for text in (snippets, snippets + junk, junk):
        _typed(load_mapping, text, source="m.yaml")
        _typed(load_settings, None, text)
        _typed(limits.loads_yaml, text, source="x.yaml")


# ---------------------------------------------------------------------------------------------- tables (CSV / xlsx)
_LUNG1 = load_preset("lung1")


def _xlsx(cells: list[list[str]]) -> bytes:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    for r in cells:
        ws.append(r)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


@settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.lists(st.lists(st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=8), max_size=5),
                max_size=5), st.binary(max_size=200))
def test_xlsx_and_zip_bytes(cells: list[list[str]], junk: bytes) -> None:
    def scan_bytes(data: bytes, name: str) -> Any:
        return scan(open_table(data, name=name), TableMapper(_LUNG1, table_name=name))

    _typed(scan_bytes, _xlsx([["PatientID", "age"], *cells]), "t.xlsx")
    _typed(scan_bytes, junk, "t.xlsx")
    buf = io.BytesIO()  # a zip that is not a workbook
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("xl/sharedStrings.xml", junk)
    _typed(scan_bytes, buf.getvalue(), "t.xlsx")


# ---------------------------------------------------------------------------------------------- DICOM JSON
TAGS = st.sampled_from(["0020000D", "0020000E", "00100020", "00100010", "00100030", "00100040", "00080060",
                        "00080020", "00080030", "00200011", "00201209", "00080021", "00080031", "00180015",
                        "00082218", "00080201", "0008103E", "00100021"])
VRS = st.sampled_from(["UI", "LO", "PN", "DA", "TM", "CS", "IS", "DS", "SQ", "SH", "XX"])
VALUES = st.one_of(st.none(), st.text(max_size=70), st.integers(), st.floats(allow_nan=True), st.booleans(),
                   st.dictionaries(st.sampled_from(["Alphabetic", "Ideographic", "x"]), st.text(max_size=10),
                                   max_size=2), st.sampled_from(["../../x?y#z", "1.2.3", "P\x00ID", "A" * 80]))
ELEMENT = st.one_of(st.fixed_dictionaries({"vr": VRS, "Value": st.lists(VALUES, max_size=3)}),
                    st.fixed_dictionaries({"vr": VRS}), VALUES)


@FUZZ
@given(st.lists(st.dictionaries(TAGS, ELEMENT, max_size=10), min_size=1, max_size=3))
@example([{"0020000D": {"vr": "UI", "Value": ["../../x?y#z"]}, "00100020": {"vr": "LO", "Value": ["P\x00ID"]}}])
def test_dicom_json_series_records(records: list[dict[str, Any]]) -> None:
    _typed(map_study, [SeriesInput(r, source=f"fuzz#{i}") for i, r in enumerate(records)])


# ---------------------------------------------------------------------------------------------- bounded loaders
@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                 JSONISH.map(_json_text)))
@example("\x1f")
def test_bounded_loaders(text: str) -> None:
    _typed(limits.loads_json, text, source="x.json")
    _typed(limits.loads_json, text, source="x.json", allow_nan=True)
    _typed(limits.loads_yaml, text, source="x.yaml")
    _typed(limits.parse_xml, text, source="x.xml")
    _typed(limits.finite_number, text, where="x.csv row 2")


# ------------------------------------------------------------------------------------ state and resource files
LINES = st.one_of(JSONISH.map(_json_text), st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
                  st.sampled_from(['{"resourceType": "Patient", "id": "p"}', '{"resourceType": "Bundle", "entry": '
                                   '[{"resource": {"resourceType": "Patient"}}, 1, null]}', "[" * 100, "1e309",
                                   '{"resourceType": 1}', "1.2.3", "", "\x00"]))


@FUZZ
@given(lines=st.lists(LINES, max_size=5), name=st.sampled_from(["r.ndjson", "r.json", "r.jsonl"]),
       raw=st.binary(max_size=60))
@example(lines=['{"resourceType": "Bundle", "entry": [{"resource": 1}]}'], name="r.json", raw=b"")
@example(lines=['{"resourceType": "Bundle", "entry": 5}'], name="r.ndjson", raw=b"")  # was a TypeError
def test_ndjson_and_json_resource_files(lines: list[str], name: str, raw: bytes,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    from kaapana_fhir.core.sof.io import iter_resources

    p = tmp_path_factory.mktemp("res") / name
    p.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + raw)
    _typed(lambda: list(iter_resources([p], max_line_bytes=500)))


@FUZZ
@given(lines=st.lists(LINES, max_size=6), raw=st.binary(max_size=60))
def test_backfill_cursor_files(lines: list[str], raw: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    from kaapana_fhir.flows.dicom_to_fhir.flow import Cursor

    p = tmp_path_factory.mktemp("cur") / "bf.cursor"
    head = ['{"query": {"since": null}}'] if lines[:1] == [""] else []
    p.write_bytes("\n".join(head + lines).encode("utf-8", "surrogatepass") + raw)
    _typed(lambda: Cursor(p, {"since": None}).done)
