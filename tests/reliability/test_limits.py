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

pytestmark = pytest.mark.reliability


def _refused(fn: Callable[..., object], *args: object, rule: str, expect: str = "", **kw: object) -> L.LimitError:
    """``fn(*args, **kw)`` raises a LimitError naming the source (``expect``, else ``kw['source']``) and rule."""
    source = expect or str(kw.get("source", kw.get("where", "")))
    t0 = time.perf_counter()
    with pytest.raises(L.LimitError) as exc:
        fn(*args, **kw)
    assert time.perf_counter() - t0 < 5, "bounded time"
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
