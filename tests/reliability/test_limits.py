"""Bounded loaders (issue #15): hostile JSON, YAML and XML end in a LimitError naming the file and the rule,
in bounded time and memory (no servers)."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kaapana_fhir.core import limits as L
from kaapana_fhir.exceptions import MappingError
from tests.reliability import outcomes
from tests.reliability.helpers import refused_within

pytestmark = pytest.mark.reliability


def _refused(fn: Callable[..., object], *args: object, rule: str, expect: str = "", **kw: object) -> L.LimitError:
    """``fn(*args, **kw)`` raises a LimitError naming the source (``expect``, else ``kw['source']``) and rule."""
    source = expect or str(kw.get("source", kw.get("where", "")))
    with refused_within(L.LimitError) as exc:
        fn(*args, **kw)
    assert source in str(exc.value) and rule in str(exc.value), str(exc.value)
    assert isinstance(exc.value, MappingError)
    outcomes.record("clear_error")
    return exc.value


@pytest.mark.parametrize("doc", ["[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000])
def test_json_nested_100k_deep(doc: str) -> None:
    _refused(L.loads_json, doc, source="f.json", rule="nesting")


def test_json_brackets_inside_strings_do_not_count() -> None:
    assert L.loads_json('{"a": "[[[[[[[[" , "b": ["\\"[[["]}', source="f.json", max_depth=2) == {
        "a": "[[[[[[[[", "b": ['"[[[']}


@pytest.mark.parametrize("digits", [400, 5000])
def test_json_huge_integers(digits: int) -> None:
    _refused(L.loads_json, '{"v": ' + "9" * digits + "}", source="f.json", rule="digits")


@pytest.mark.parametrize("num", ["1e309", "-1e309", "NaN", "Infinity", "-Infinity"])
def test_json_non_finite(num: str) -> None:
    _refused(L.loads_json, '{"v": ' + num + '}', source="f.json", rule="finite")


def test_json_size_limit_checked_before_parsing(tmp_path: Path) -> None:
    p = tmp_path / "big.json"
    p.write_bytes(b"[" + b"1," * 600_000 + b"1]")
    _refused(L.load_json, p, max_bytes=1_000_000, expect="big.json", rule="at most 1000000 bytes")
    assert L.load_json(p)[-1] == 1  # within the default limit


def test_json_malformed_names_line() -> None:
    err = _refused(L.loads_json, '{"a": 1,\n "b": }', source="x.json", rule="well-formed JSON")
    assert "line 2" in str(err)


@pytest.mark.parametrize("value", [True, False, float("inf"), float("nan"), "inf", "-Infinity", "nan", "1e309",
                                   10 ** 400, "9" * 500, "abc", [], {}])
def test_finite_number_refuses(value: object) -> None:
    _refused(L.finite_number, value, where="r.csv row 2 column original_shape_Volume", rule="finite number")


@pytest.mark.parametrize(("value", "expected"), [(1, 1.0), (2.5, 2.5), (" 3.25 ", 3.25), ("1e3", 1000.0),
                                                 (-0.0, 0.0), ("-7", -7.0)])
def test_finite_number_accepts(value: object, expected: float) -> None:
    assert L.finite_number(value, where="x") == expected


def test_finite_number_empty() -> None:
    assert L.finite_number("", where="x", allow_none=True) is None
    _refused(L.finite_number, None, where="x.csv row 3", rule="finite number")


ALIAS_BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_yaml_alias_bomb_refused_in_bounded_memory() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _refused(L.loads_yaml, ALIAS_BOMB, source="m.yaml", rule="no YAML aliases")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


def test_yaml_plain_alias_refused_with_line() -> None:
    err = _refused(L.loads_yaml, "x: 1\nbase: &b {k: 1}\nother: *b\n", source="s.yaml", rule="aliases")
    assert "line 2" in str(err)


def test_yaml_keys_are_strings() -> None:
    doc = L.loads_yaml("yes: true\nno: 1\non: [off]\n1.0: x\n2: y\nnull: z\n~: w\n2001-01-01: d\n", source="k.yaml")
    assert doc == {"yes": True, "no": 1, "on": [False], "1.0": "x", "2": "y", "null": "z", "~": "w",
                   "2001-01-01": "d"}
    assert all(isinstance(k, str) for k in doc)


def test_yaml_complex_key_refused() -> None:
    _refused(L.loads_yaml, "? [a, b]\n: 1\n", source="k.yaml", rule="mapping keys are plain text")


def test_yaml_deep_nesting_and_malformed() -> None:
    _refused(L.loads_yaml, "[" * 10_000 + "]" * 10_000, source="d.yaml", rule="nesting")
    _refused(L.loads_yaml, "a: [1, 2\nb: 3", source="d.yaml", rule="well-formed YAML")
    _refused(L.loads_yaml, "a: 1\n" * 300_000, source="d.yaml", rule="bytes")


def test_yaml_file(tmp_path: Path) -> None:
    p = tmp_path / "settings.yaml"
    p.write_text("binWidth: 25\nyes: 1\n")
    assert L.load_yaml(p) == {"binWidth": 25, "yes": 1}
    _refused(L.load_yaml, tmp_path / "missing.yaml", expect="missing.yaml", rule="readable file")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<lolz>&lol3;</lolz>"""
XXE = """<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"""


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, XXE])
def test_xml_entities_refused(doc: str) -> None:
    _refused(L.parse_xml, doc, source="r.xml", rule="without DTD")


def test_xml_malformed_deep_and_ok() -> None:
    _refused(L.parse_xml, "<a><b></a>", source="r.xml", rule="well-formed XML")
    _refused(L.parse_xml, "", source="r.xml", rule="well-formed XML")
    _refused(L.parse_xml, "<a>" * 5000 + "</a>" * 5000, source="r.xml", rule="nesting")
    assert L.parse_xml(b"<m x='1'><f>2</f></m>", source="r.xml").find("f").text == "2"


# ------------------------------------------------------------------ files named by a mapping (map_file)
def _mapping_with_map_file(tmp_path: Path, map_file: str) -> Path:
    folder = tmp_path / "mappings"
    folder.mkdir()
    (folder / "maps").mkdir()
    (folder / "maps" / "stage.csv").write_text("source,code\nIIIa,IIIA\n", encoding="utf-8")
    (tmp_path / "secret.csv").write_text("source,code\nx,y\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("rel", ["../secret.csv", "maps/../../secret.csv", "/etc/passwd", "maps/\x00x.csv"])
def test_map_file_outside_the_mapping_folder_is_refused_by_name(tmp_path: Path, rel: str) -> None:
    from kaapana_fhir.core.limits import read_beside
    from kaapana_fhir.exceptions import ConfigError

    folder = _mapping_with_map_file(tmp_path, rel)
    with pytest.raises(ConfigError, match="map_file .*(rule: files named by a mapping stay in its folder)"):
        read_beside(folder, rel, what="map_file")


def test_map_file_link_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    from kaapana_fhir.core.limits import read_beside
    from kaapana_fhir.exceptions import ConfigError

    folder = _mapping_with_map_file(tmp_path, "")
    (folder / "maps" / "link.csv").symlink_to(tmp_path / "secret.csv")
    assert read_beside(folder, "maps/stage.csv", what="map_file").startswith("source,code")
    with pytest.raises(ConfigError, match="outside"):
        read_beside(folder, "maps/link.csv", what="map_file")


def test_cli_import_refuses_a_mapping_whose_map_file_escapes(tmp_path: Path) -> None:
    """Through the real CLI: exit code != 0 and the message names map_file and the rule."""
    import subprocess
    import sys

    folder = _mapping_with_map_file(tmp_path, "")
    (tmp_path / "t.csv").write_text("pid,stage\nA,IIIa\n", encoding="utf-8")
    (folder / "t.mapping.yaml").write_text(
        "version: 1\n"
        "patient: {key: pid}\n"
        "observations:\n"
        "  - column: stage\n"
        "    code: {system: 'http://loinc.org', code: '21908-9', display: Stage group}\n"
        "    value: {type: CodeableConcept, system: 'urn:test:stage', map_file: '../secret.csv'}\n",
        encoding="utf-8")
    res = subprocess.run([sys.executable, "-m", "kaapana_fhir.cli.main", "import-table", str(tmp_path / "t.csv"),
                          "--mapping", str(folder / "t.mapping.yaml"), "--out", str(tmp_path / "b.json")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "map_file" in res.stderr and "stay in its folder" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "b.json").exists()


# ------------------------------------------------------------------ NDJSON / resource files (core/sof/io.py)
PATIENT_LINE = b'{"resourceType": "Patient", "id": "p1", "gender": "female"}\n'


def _resources(path: Path, **kw: int) -> list[dict[str, object]]:
    from kaapana_fhir.core.sof.io import iter_resources

    return list(iter_resources([path], **kw))


@pytest.mark.parametrize(("name", "line", "rule"), [
    ("deep", b"[" * 100_000 + b"]" * 100_000, "nesting"),
    ("digits", b'{"resourceType": "Observation", "valueInteger": ' + b"9" * 5000 + b"}", "digits"),
    ("inf", b'{"resourceType": "Observation", "valueDecimal": 1e309}', "finite"),
    ("nan", b'{"resourceType": "Observation", "valueDecimal": NaN}', "finite"),
    ("broken", b'{"resourceType": "Patient", ', "well-formed JSON"),
    ("latin1", b'{"resourceType": "Patient", "id": "\xe9"}', "UTF-8"),
])
def test_ndjson_hostile_line_names_file_line_and_rule(tmp_path: Path, name: str, line: bytes, rule: str) -> None:
    p = tmp_path / f"{name}.ndjson"
    p.write_bytes(PATIENT_LINE + b"\n" + line + b"\n" + PATIENT_LINE)
    _refused(_resources, p, expect=f"{p} line 3", rule=rule)


def test_ndjson_long_line_refused_without_reading_it_whole(tmp_path: Path) -> None:
    p = tmp_path / "long.ndjson"
    p.write_bytes(PATIENT_LINE + b'{"resourceType": "Patient", "id": "' + b"x" * 3_000_000 + b'"}\n')
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _refused(_resources, p, max_line_bytes=100_000, expect=f"{p} line 2", rule="NDJSON lines of at most 100000 bytes")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 20_000  # KiB: the line was not read
    assert len(_resources(p)) == 2  # within the default line limit


def test_ndjson_gzip_corrupt_and_good(tmp_path: Path) -> None:
    import gzip

    good = tmp_path / "ok.ndjson.gz"
    good.write_bytes(gzip.compress(PATIENT_LINE * 3))
    assert [r["id"] for r in _resources(good)] == ["p1"] * 3
    bad = tmp_path / "cut.ndjson.gz"
    bad.write_bytes(gzip.compress(PATIENT_LINE * 500)[:40])
    with pytest.raises(MappingError, match=r"cut\.ndjson\.gz line 1: cannot be read .*rule: a readable NDJSON"):
        _resources(bad)
    outcomes.record("clear_error")


def test_whole_json_resource_file_bounded(tmp_path: Path) -> None:
    import gzip

    deep = tmp_path / "deep.json"
    deep.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    _refused(_resources, deep, expect=str(deep), rule="nesting")
    bomb = tmp_path / "bomb.json.gz"  # 40 MB of JSON in a small gzip: refused after max_file_bytes + 1 bytes
    bomb.write_bytes(gzip.compress(b"[" + b"0," * 20_000_000 + b"0]"))
    _refused(_resources, bomb, max_file_bytes=1_000_000, expect=str(bomb), rule="larger: NDJSON")
    bundle = tmp_path / "b.json"
    bundle.write_text('{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": '
                      '{"resourceType": "Patient", "id": "a"}}]}', encoding="utf-8")
    assert [r["id"] for r in _resources(bundle)] == ["a"]


def test_view_cli_refuses_a_hostile_ndjson_line_with_exit_1(tmp_path: Path) -> None:
    """Through the real CLI process: exit code 1, no traceback, the message names the file, the line, the rule."""
    import subprocess
    import sys

    p = tmp_path / "r.ndjson"
    p.write_bytes(PATIENT_LINE + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    res = subprocess.run([sys.executable, "-m", "kaapana_fhir.cli.main", "view", "run", "patient", str(p),
                          "--out", str(tmp_path / "rows.csv")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and f"{p} line 2" in res.stderr and "nesting" in res.stderr, res.stderr
    outcomes.record("clear_error")


# ------------------------------------------------------------------ backfill cursor (flows/dicom_to_fhir)
QUERY = {"since": "20240101", "until": "20241231", "modalities": ["CT"]}
HEAD = b'{"query": {"since": "20240101", "until": "20241231", "modalities": ["CT"]}}\n'


def _cursor(path: Path) -> set[str]:
    from kaapana_fhir.flows.dicom_to_fhir.flow import Cursor

    return Cursor(path, QUERY).done


@pytest.mark.parametrize(("content", "where", "rule"), [
    (b"", "line 1: empty", "backfill cursor holds the query"),
    (b"[" * 30_000 + b"]" * 30_000 + b"\n", "line 1", "nesting"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", "line 1: cut off or too long", "at most 65536 bytes"),
    (b'{"query": ' + b"9" * 5000 + b"}\n", "line 1", "digits"),
    (b'"just text"\n', "line 1: no backfill query", "backfill cursor holds the query"),
    (b"{" + b" " * 70_000 + b"}\n", "line 1: cut off or too long", "at most 65536 bytes"),
    (HEAD + b"1.2.3\n../../etc/passwd\n", "line 3", "not a DICOM UID"),
    (HEAD + b"1.2.3\n" + b"1." * 200 + b"1\n", "line 3", "at most 64 characters"),
    (HEAD + b"1.2.3\x00\n", "line 2", "not a DICOM UID"),
])
def test_hostile_backfill_cursor_is_refused_by_line(tmp_path: Path, content: bytes, where: str, rule: str) -> None:
    from kaapana_fhir.exceptions import KaapanaFhirError

    p = tmp_path / "bf.cursor"
    p.write_bytes(content)
    with refused_within(KaapanaFhirError) as exc:
        _cursor(p)
    text = str(exc.value)
    assert f"cursor {p} {where}" in text and rule in text, text
    outcomes.record("clear_error")


def test_cursor_survives_a_cut_last_line_and_never_records_a_non_uid(tmp_path: Path) -> None:
    from kaapana_fhir.flows.dicom_to_fhir.flow import Cursor

    p = tmp_path / "bf.cursor"
    p.write_bytes(HEAD + b"1.2.3\n1.2.4\n1.2.")  # killed mid-append
    assert _cursor(p) == {"1.2.3", "1.2.4"}
    fresh = tmp_path / "new.cursor"
    cur = Cursor(fresh, QUERY)
    cur.mark(["1.2.5", "1.2\n../x", "9" * 65, "1.2.6"])
    assert _cursor(fresh) == {"1.2.5", "1.2.6"}
    p.write_bytes(HEAD.replace(b"CT", b"MR"))
    with pytest.raises(Exception, match="belongs to another backfill"):
        _cursor(p)


def test_backfill_cli_with_a_hostile_cursor_exits_1(tmp_path: Path) -> None:
    import subprocess
    import sys

    p = tmp_path / "bf.cursor"
    p.write_bytes(b"[" * 30_000 + b"]" * 30_000 + b"\n")
    res = subprocess.run([sys.executable, "-m", "kaapana_fhir.cli.main", "dicom-to-fhir", "--dicomweb",
                          "http://127.0.0.1:9/dicom-web", "--all", "--cursor", str(p), "--out",
                          str(tmp_path / "b.json")], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"cursor {p} line 1" in res.stderr and "nesting" in res.stderr, res.stderr[-2000:]
    outcomes.record("clear_error")


# ------------------------------------------------------------------ other loaders of user/state input
def test_kaapana_workflow_form_value_deep_nesting_stays_text() -> None:
    from kaapana_fhir.kaapana.env import parse_env_value

    deep = "[" * 100_000 + "]" * 100_000
    t0 = time.perf_counter()
    assert parse_env_value(deep) == deep
    assert parse_env_value('{"a": ' + "9" * 5000 + "}").startswith('{"a": 999')  # stays text, not an int
    assert time.perf_counter() - t0 < 5
    assert parse_env_value("['a', 'b']") == ["a", "b"] and parse_env_value('{"k": null}') == {"k": None}


def test_cohort_report_refuses_a_hostile_cohort_meta(tmp_path: Path) -> None:
    from kaapana_fhir.exceptions import ConfigError
    from kaapana_fhir.flows.cohort.report import data_from_table

    (tmp_path / "cohort.csv").write_text("patient_id,gender\na,female\n", encoding="utf-8")
    meta = tmp_path / "cohort_meta.json"
    for doc, rule in ((b"[" * 100_000 + b"]" * 100_000, "nesting"), (b"[1, 2]", "must be a JSON object"),
                      (b'{"n": ' + b"9" * 500 + b"}", "digits")):
        meta.write_bytes(doc)
        with pytest.raises(ConfigError, match=rule) as exc:
            data_from_table(tmp_path / "cohort.csv")
        assert str(meta) in str(exc.value)
        outcomes.record("clear_error")


def test_cli_import_of_a_deeply_nested_redcap_json_export_exits_1(tmp_path: Path) -> None:
    import subprocess
    import sys

    p = tmp_path / "export.json"
    p.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    res = subprocess.run([sys.executable, "-m", "kaapana_fhir.cli.main", "import-table", str(p), "--preset", "lung1",
                          "--out", str(tmp_path / "b.json")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-1500:]
    assert "export.json" in res.stderr and "nesting" in res.stderr, res.stderr[-1500:]
    outcomes.record("clear_error")


def test_cohort_filter_over_a_deeply_nested_cell_keeps_the_text() -> None:
    """A FHIR string (e.g. a Condition's text) that looks like a 100,000-deep JSON list reaches a cohort cell;
    ``--where 'conditions ~ a'`` must treat it as text, not crash."""
    import pandas as pd

    from kaapana_fhir.core.cohort.tables import Condition

    df = pd.DataFrame({"conditions": ["[" * 100_000 + "]" * 100_000, '["a"]']})
    assert Condition("conditions", "~", "a").mask(df).tolist() == [False, True]
