"""Mapping editor backend (web/mapping_editor.py): YAML round trip, edits, the import's validation, the endpoints
on an in-memory object store, key and size rules, and what the watcher sees after a save."""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.clients.s3 import ObjectInfo
from kaapana_fhir.core.limits import loads_yaml
from kaapana_fhir.core.tables.mapping import preset_text
from kaapana_fhir.flows.tables.watch import find_new_objects
from kaapana_fhir.web import mapping_editor as ME
from kaapana_fhir.web.api import ApiError
from kaapana_fhir.web.settings import WebSettings

XSS = ['<script>alert("x")</script>', '"><img src=x onerror=alert(1)>']
XCOL = XSS[1]  # a column named like an HTML injection (the page must show it as text)


def _csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


HEADER = ["pid", "Alter (Jahre)", "Gewicht [kg]", "Geschlecht", "Status", XCOL]
CSV = _csv([HEADER, ["P1", "50", "70", "m", "alive", "a"], ["P2", "60", "80", "w", "dead", "b"],
            ["P3", "70", "90", "m", "alive", "c"]])
HDR = {"X-Requested-By": "kaapana-fhir"}


class MemoryStore:
    """An in-memory stand-in for the object store (unit tests only; the browser test uses MinIO)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.puts: list[tuple[str, str]] = []

    def ensure_bucket(self, bucket: str) -> None:
        return None

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self.objects[(bucket, key)] = bytes(data)
        self.puts.append((bucket, key))
        return hashlib.md5(data).hexdigest()  # noqa: S324 - an ETag, as S3 computes it

    def put_file(self, bucket: str, key: str, path: str | os.PathLike[str]) -> str:
        return self.put_bytes(bucket, key, Path(path).read_bytes())

    def get_bytes(self, bucket: str, key: str) -> bytes:
        return self.objects[(bucket, key)]

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        d = self.objects.get((bucket, key))
        return None if d is None else ObjectInfo(key, hashlib.md5(d).hexdigest(), len(d))  # noqa: S324

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        for (b, k), d in sorted(self.objects.items()):
            if b == bucket and k.startswith(prefix):
                yield ObjectInfo(k, hashlib.md5(d).hexdigest(), len(d))  # noqa: S324


ST = WebSettings(fhir_url="http://fhir.invalid/fhir", projects=("admin", "other"))
ES = ME.EditorSettings(max_bytes=64 * 1024)
BUCKET = "project-admin"


@pytest.fixture()
def store() -> MemoryStore:
    return MemoryStore()


def call(store: MemoryStore, method: str, path: str, query: dict[str, Any] | None = None, body: Any = b"",
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = ME.handle(method, path, query or {}, raw, headers=HDR if headers is None else headers, st=ST, es=ES,
                  store=store)
    return r.status, r.json()


def accept_all(mapping: dict[str, Any]) -> list[dict[str, Any]]:
    """The edits the page sends when every suggestion is accepted (delete each review key)."""
    edits: list[dict[str, Any]] = []

    def walk(node: Any, path: list[Any]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "review":
                    edits.append({"op": "delete", "path": [*path, k]})
                else:
                    walk(v, [*path, k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, [*path, i])

    walk(mapping, [])
    return edits


# ---------------------------------------------------------------------- YAML round trip
def test_round_trip_without_edits_is_byte_identical_and_accept_removes_only_the_review_line() -> None:
    text = ME.profile(CSV, "fhir-import/t.csv")["generated_yaml"]
    assert ME.apply_edits(text, []) == text
    edited = ME.apply_edits(text, [{"op": "delete", "path": ["observations", 0, "review"]}])
    removed = [ln for ln in difflib.ndiff(text.splitlines(), edited.splitlines()) if ln.startswith(("- ", "+ "))]
    assert removed == ["-   review: catalogue suggestion 'age' (matched by column name)"]
    # the profile comments at the top stay
    assert edited.splitlines()[:8] == text.splitlines()[:8] and "#   profile of 3 data rows:" in edited


def test_round_trip_of_a_hand_written_mapping_keeps_comments_flow_style_and_meaning() -> None:
    text = preset_text("lung1")
    edited = ME.apply_edits(text, [{"op": "set", "path": ["observations", 0, "value", "unit"], "value": "mo"}])
    before, after = loads_yaml(text), loads_yaml(edited)
    assert after["observations"][0]["value"]["unit"] == "mo"
    after["observations"][0]["value"]["unit"] = "a"
    assert after == before  # nothing else changed in meaning
    comments = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("#")]
    assert comments and all(c in edited for c in comments)
    assert '"5": null        # occurs in Lung1' in edited  # trailing comment and quoted key kept
    assert "code: {system: \"http://loinc.org\", code: 30525-0, display: Age}" in edited  # flow style kept


def test_edits_set_nested_values_delete_list_items_and_refuse_bad_paths() -> None:
    text = ME.profile(CSV, "fhir-import/t.csv")["generated_yaml"]
    m = loads_yaml(ME.apply_edits(text, [
        {"op": "set", "path": ["checks", "date_max"], "value": "2030-01-01"},
        {"op": "set", "path": ["observations", 1, "code"], "value": {"system": "http://loinc.org", "code": "3141-9"}},
        {"op": "delete", "path": ["observations", 0]},
        {"op": "delete", "path": ["not", "there"]}]))
    assert m["checks"] == {"date_max": "2030-01-01"}
    assert m["observations"][0]["code"] == {"system": "http://loinc.org", "code": "3141-9"}
    assert m["observations"][0]["column"] == "Gewicht [kg]"
    for bad in ([{"op": "set", "path": ["version", "x"], "value": 1}],
                [{"op": "set", "path": ["observations", 99, "code"], "value": 1}],
                [{"op": "set", "path": [], "value": 1}],
                [{"op": "rename", "path": ["name"]}],
                [{"op": "delete", "path": ["observations", "x"]}],
                [{"op": "set", "path": ["name"], "value": {"a": object()}}],
                [{"op": "set", "path": ["name"], "value": "x"}] * (ME.MAX_EDITS + 1)):
        with pytest.raises(ApiError) as exc:
            ME.apply_edits(text, bad)
        assert exc.value.status == 400
    # strings stay strings for the import's YAML 1.1 reader (keys too)
    typed = loads_yaml(ME.apply_edits(text, [
        {"op": "set", "path": ["patient", "gender", "map", "yes"], "value": "no"},
        {"op": "set", "path": ["observations", 0, "code", "code"], "value": "0x1F"},
        {"op": "set", "path": ["observations", 1, "value", "map"], "value": {"on": "2020-01-01", "n": "1_000"}}]))
    assert typed["patient"]["gender"]["map"]["yes"] == "no"
    assert typed["observations"][0]["code"]["code"] == "0x1F"
    assert typed["observations"][1]["value"]["map"] == {"on": "2020-01-01", "n": "1_000"}
    with pytest.raises(ApiError, match="does not parse|YAML"):
        ME.apply_edits("a: [1,\n", [{"op": "set", "path": ["a"], "value": 1}])


# ---------------------------------------------------------------------- the import's validation
def test_check_reports_todo_review_ucum_date_window_and_missing_columns() -> None:
    key = "fhir-import/t.csv"
    text = ME.profile(CSV, key)["generated_yaml"]
    r = ME.check(text, CSV, key)
    assert r["schema_errors"] == [] and r["fatal"] is None and not r["ready"]
    assert any("observations[0].review" in p for p in r["pending"])
    assert any("placeholder 'TODO'" in p for p in r["pending"])  # the XSS-named column has no catalogue code
    # every review marker with the path "Accept" deletes: the same set the import refuses
    assert len(r["reviews"]) == sum("check, then delete this line" in p for p in r["pending"])
    assert {"path": ["observations", 0, "review"], "text": "catalogue suggestion 'age' (matched by column name)"} \
        in r["reviews"]
    assert r["resources"] == {"Observation": 9, "Patient": 3} and len(r["preview"]) == 3
    assert [e["path"] for e in accept_all(r["mapping"])] == [rv["path"] for rv in r["reviews"]]
    ready = ME.apply_edits(text, [*accept_all(r["mapping"]),
                                  {"op": "delete", "path": ["observations", 2]}])
    ok = ME.check(ready, CSV, key)
    assert ok["ready"] and ok["pending"] == [] and ok["issue_count"] == 0
    pat = ok["preview"][0]["resources"][0]
    assert pat["resourceType"] == "Patient" and pat["identifier"][0]["value"] == "P1" and pat["gender"] == "male"
    obs = ok["preview"][0]["resources"][1]
    assert obs["valueQuantity"] == {"value": 50, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}
    # a unit that is not UCUM: a schema error naming the key
    bad_unit = ME.check(ME.apply_edits(ready, [{"op": "set", "path": ["observations", 1, "value", "unit"],
                                                "value": "kilo"}]), CSV, key)
    assert not bad_unit["ready"] and any("observations[1].value.unit" in e for e in bad_unit["schema_errors"])
    # the date window: a 2099 birth date is an invalid cell (row and column named)
    dated = _csv([[*HEADER, "Geburtsdatum"], ["P1", "50", "70", "m", "alive", "a", "2099-01-01"],
                  ["P2", "60", "80", "w", "dead", "b", "1950-02-02"],
                  ["P3", "70", "90", "m", "alive", "c", "1960-03-03"]])
    with_date = ME.apply_edits(ready, [{"op": "set", "path": ["patient", "birth_date"],
                                        "value": {"column": "Geburtsdatum"}}])
    win = ME.check(with_date, dated, key)
    assert not win["ready"] and win["issue_count"] == 1
    assert win["issues"][0]["row"] == 2 and win["issues"][0]["column"] == "Geburtsdatum"
    # a mapped column missing from the header: fatal, named
    gone = ME.check(ME.apply_edits(ready, [{"op": "set", "path": ["observations", 0, "column"], "value": "Alter"}]),
                    CSV, key)
    assert gone["fatal"] and "'Alter'" in gone["fatal"] and not gone["ready"]


# ---------------------------------------------------------------------- endpoints
def test_upload_draft_preview_save_then_the_watcher_picks_it_up(store: MemoryStore) -> None:
    status, up = call(store, "POST", "mapping/upload", {"name": "clinical.csv"}, CSV)
    assert status == 201 and up["key"] == "fhir-import/clinical.csv" and up["bucket"] == BUCKET
    assert store.objects[(BUCKET, "fhir-import/clinical.csv")] == CSV
    # the watcher waits: a table without a mapping is not imported
    assert find_new_objects(store, BUCKET, "fhir-import/") == []
    status, tables = call(store, "GET", "mapping/tables")
    assert status == 200 and [t["key"] for t in tables["tables"]] == ["fhir-import/clinical.csv"]
    assert tables["tables"][0]["mapping_key"] is None
    status, draft = call(store, "GET", "mapping/draft", {"key": "fhir-import/clinical.csv"})
    assert status == 200 and draft["source"] == "generated" and draft["mapping_etag"] == ""
    assert draft["mapping_key"] == "fhir-import/clinical.mapping.yaml"
    assert [c["column"] for c in draft["profile"]["columns"]][:2] == ["pid", "Alter (Jahre)"]
    assert XCOL in [c["column"] for c in draft["profile"]["columns"]]
    edits = [*accept_all(draft["mapping"]), {"op": "delete", "path": ["observations", 2]},
             {"op": "set", "path": ["observations", 1, "value", "unit"], "value": "g"}]
    status, prev = call(store, "POST", "mapping/preview", {"key": "fhir-import/clinical.csv"},
                        {"yaml": draft["yaml"], "edits": edits})
    assert status == 200 and prev["ready"] and prev["mapping"]["observations"][1]["value"]["unit"] == "g"
    assert (BUCKET, "fhir-import/clinical.mapping.yaml") not in store.objects  # preview writes nothing
    # save refuses what the import would refuse
    status, refused = call(store, "POST", "mapping/save", {"key": "fhir-import/clinical.csv"},
                           {"yaml": draft["yaml"], "edits": [], "base_etag": ""})
    assert status == 409 and not refused["saved"] and "TODO/review" in refused["error"]
    status, saved = call(store, "POST", "mapping/save", {"key": "fhir-import/clinical.csv"},
                         {"yaml": prev["yaml"], "edits": [], "base_etag": ""})
    assert status == 200 and saved["saved"] and saved["watcher"]["dag_id"] == "fhir-import-watcher"
    assert store.objects[(BUCKET, "fhir-import/clinical.mapping.yaml")].decode() == prev["yaml"]
    confs = find_new_objects(store, BUCKET, "fhir-import/")
    assert [(c["object_key"], c["mapping_key"]) for c in confs] == [("fhir-import/clinical.csv",
                                                                       "fhir-import/clinical.mapping.yaml")]
    # the saved YAML is what the editor loads next time (single source of truth), and a stale base ETag is refused
    status, again = call(store, "GET", "mapping/draft", {"key": "fhir-import/clinical.csv"})
    assert again["source"] == "saved" and again["yaml"] == prev["yaml"] and again["ready"]
    assert again["mapping_etag"] == saved["mapping_etag"]
    status, stale = call(store, "POST", "mapping/save", {"key": "fhir-import/clinical.csv"},
                         {"yaml": prev["yaml"], "base_etag": ""})
    assert status == 409 and "changed since it was loaded" in stale["error"]


def test_previews_check_the_first_rows_and_save_checks_the_whole_file(store: MemoryStore) -> None:
    es = ME.EditorSettings(max_bytes=64 * 1024, check_rows=2)
    bad = _csv([HEADER, ["P1", "50", "70", "m", "alive", "a"], ["P2", "60", "80", "w", "dead", "b"],
                ["P3", "70", "ninety", "m", "alive", "c"]])
    store.put_bytes(BUCKET, "fhir-import/t.csv", bad)

    def go(method: str, path: str, body: Any = b"") -> tuple[int, Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = ME.handle(method, path, {"key": "fhir-import/t.csv"}, raw, headers=HDR, st=ST, es=es, store=store)
        return r.status, r.json()

    _, draft = go("GET", "mapping/draft")
    assert draft["rows_read"] == 2 and not draft["complete"]
    edits = [*accept_all(draft["mapping"]), {"op": "delete", "path": ["observations", 2]}]
    _, prev = go("POST", "mapping/preview", {"yaml": draft["yaml"], "edits": edits})
    assert prev["ready"] and not prev["complete"] and prev["issue_count"] == 0  # row 4 is beyond the sample
    status, refused = go("POST", "mapping/save", {"yaml": prev["yaml"], "base_etag": ""})
    assert status == 409 and refused["complete"] and refused["issue_count"] == 1 and "invalid cell" in refused["error"]
    assert refused["issues"][0]["row"] == 4 and refused["issues"][0]["column"] == "Gewicht [kg]"
    assert (BUCKET, "fhir-import/t.mapping.yaml") not in store.objects


def test_keys_names_sizes_projects_and_the_post_header_are_checked(store: MemoryStore) -> None:
    store.put_bytes(BUCKET, "fhir-import/t.csv", CSV)
    for key in ("fhir-import/../secret.csv", "fhir-import/./t.csv", "other/t.csv", "/fhir-import/t.csv",
                "fhir-import/t.mapping.yaml", "fhir-import/t.import-report.json", "fhir-import//t.csv",
                "fhir-import/t\\..\\x.csv", "fhir-import/t.csv\x00", "fhir-import/t\r\nX-Amz: 1.csv"):
        status, body = call(store, "GET", "mapping/draft", {"key": key})
        assert status == 400, (key, body)
    for name in ("../x.csv", "a/b.csv", "x.exe", ".hidden.csv", "x.mapping.yaml", "", "a..csv"):
        status, _ = call(store, "POST", "mapping/upload", {"name": name}, CSV)
        assert status == 400, name
    status, body = call(store, "POST", "mapping/upload", {"name": "big.csv"}, b"a,b\n" + b"1,2\n" * 20000)
    assert status == 413 and (BUCKET, "fhir-import/big.csv") not in store.objects
    status, _ = call(store, "POST", "mapping/upload", {"name": "t.csv"}, CSV)
    assert status == 409  # exists; replace=true overwrites
    assert call(store, "POST", "mapping/upload", {"name": "t.csv", "replace": "true"}, CSV)[0] == 201
    status, body = call(store, "POST", "mapping/upload", {"name": "bin.xlsx"}, b"\x00\x01 not a workbook")
    assert status == 400 and "not a readable table" in body["error"]
    assert call(store, "POST", "mapping/upload", {"name": "n.csv"}, CSV, headers={})[0] == 403
    assert call(store, "GET", "mapping/tables", {"project": "nope"})[0] == 404
    assert call(store, "GET", "mapping/draft", {"key": "fhir-import/none.csv"})[0] == 404
    assert call(store, "DELETE", "mapping/save")[0] == 405
    assert call(store, "GET", "mapping/nothing")[0] == 404
    # the bucket comes from the project, never from the request
    status, body = call(store, "GET", "mapping/tables", {"project": "other", "bucket": "project-admin"})
    assert status == 200 and body["bucket"] == "project-other" and body["tables"] == []
    for bad_body in (b"[]", b"{\"yaml\": 3}", b"{\"yaml\": \"a: 1\", \"edits\": {}}", b"not json"):
        assert call(store, "POST", "mapping/preview", {"key": "fhir-import/t.csv"}, bad_body)[0] == 400
    with pytest.raises(ApiError):
        ME.EditorSettings(bucket_template="../{project}").bucket("admin")


def test_import_report_catalogue_and_store_errors(store: MemoryStore) -> None:
    from kaapana_fhir.exceptions import BucketNotFound, ConfigError, ObjectStoreError

    store.put_bytes(BUCKET, "fhir-import/t.csv", CSV)
    assert call(store, "GET", "mapping/report", {"key": "fhir-import/t.csv"})[1]["report"] is None
    store.put_bytes(BUCKET, "fhir-import/t.import-report.json", json.dumps({"status": "imported"}).encode())
    assert call(store, "GET", "mapping/report", {"key": "fhir-import/t.csv"})[1]["report"] == {"status": "imported"}
    cat = call(store, "GET", "mapping/catalogue")[1]["entries"]
    assert any(e["id"] == "age" and e["code"]["code"] == "30525-0" for e in cat)

    def broken(_es: Any) -> Any:
        raise ConfigError("no Airflow connection 's3_default' and no S3_ENDPOINT_URL/MINIO_URL set")

    r = ME.handle("GET", "mapping/tables", {}, st=ST, es=ES, store_factory=broken)
    assert r.status == 503 and "not configured" in r.json()["error"]

    class Down(MemoryStore):
        def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
            raise ObjectStoreError("S3 list_objects at http://minio failed: InternalError")

    r = ME.handle("GET", "mapping/tables", {}, st=ST, es=ES, store=Down())
    assert r.status == 502 and "InternalError" in r.json()["error"]

    class NoBucket(MemoryStore):  # the project's bucket does not exist: a configuration matter (404), not a 502
        def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
            raise BucketNotFound("bucket 'project-admin' does not exist at http://minio")

    r = ME.handle("GET", "mapping/tables", {}, st=ST, es=ES, store=NoBucket())
    assert r.status == 404 and "project-admin" in r.json()["error"]


def test_settings_follow_the_watcher_prefix_and_bound_the_size() -> None:
    es = ME.load_settings({"KAAPANA_FHIR_IMPORT_PREFIX": "imports", "KAAPANA_FHIR_EDITOR_BUCKET": "kf-{project}",
                           "KAAPANA_FHIR_EDITOR_MAX_BYTES": str(10**12), "KAAPANA_FHIR_EDITOR_CHECK_ROWS": "5"})
    assert es.prefix == "imports/" and es.bucket("Admin") == "kf-admin" and es.max_bytes == 16 * 1024 * 1024
    assert es.check_rows == 5 and ME.load_settings({}).check_rows == 2000
    with pytest.raises(Exception, match="segments"):
        ME.load_settings({"KAAPANA_FHIR_IMPORT_PREFIX": "../x/"})


def test_page_is_local_only_and_never_injects_html() -> None:
    page = ME.page()
    assert page.status == 200 and "script-src 'self'" in page.headers["Content-Security-Policy"]
    html = page.body.decode()
    assert "http://" not in html and "https://" not in html  # no CDN
    js = ME.static("mapping.js").body.decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, sink
    assert ME.static("../mapping_editor.py").status == 404 and ME.static("mapping.css").status == 200


def test_draft_with_local_codes_needs_only_the_suggestions_accepted(store: MemoryStore) -> None:
    call(store, "POST", "mapping/upload", {"name": "clinical.csv"}, CSV)
    _, plain = call(store, "GET", "mapping/draft", {"key": "fhir-import/clinical.csv"})
    status, local = call(store, "GET", "mapping/draft", {"key": "fhir-import/clinical.csv", "local_codes": "1"})
    assert status == 200 and local["source"] == "generated"
    assert ": TODO" in plain["yaml"] and ": TODO" not in local["yaml"]
    assert "urn:kaapana-fhir:CodeSystem:local:clinical" in local["yaml"]
    status, prev = call(store, "POST", "mapping/preview", {"key": "fhir-import/clinical.csv"},
                        {"yaml": local["yaml"], "edits": accept_all(local["mapping"])})
    assert status == 200 and prev["ready"], prev.get("pending")
