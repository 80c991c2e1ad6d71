"""Retrieval API of the plugin, served by the real Airflow 2.11 web server (plugins/ folder, temp AIRFLOW_HOME)
against the real HAPI server: authentication, paging, filters, segment labels, formats, cache invalidation,
links, and schemathesis against the shipped OpenAPI spec."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests

from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.clients.s3 import ObjectStore
from kaapana_fhir.core import bundle
from kaapana_fhir.web import survival
from tests.browser.airflow_web import PASSWORD, USER, AirflowWeb, airflow_web
from tests.browser.kaapana_backend_fake import FakeBackend, fake_backend
from tests.support.cohort_data import patient_resources

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "operators" / "kaapana_fhir" / "web" / "openapi.yaml"
N = 16
XSS = ['<script>alert("x")</script>', '"><img src=x onerror=alert(1)>']


def _hostile_bodies() -> dict[str, tuple[bytes, str, int, str]]:
    """name -> (body, content type, expected status, words of the expected message)."""
    js = "application/json"
    return {
        "deep nesting": (b"[" * 100_000 + b"]" * 100_000, js, 400, "nesting at most 16"),
        "deep object": (b'{"filter":' * 40 + b'"x"' + b"}" * 40, js, 400, "nesting at most 16"),
        "huge int": (b'{"dataset_name": ' + b"9" * 5000 + b"}", js, 400, "at most 40 digits"),
        "NaN": (b'{"dataset_name": NaN}', js, 400, "finite numbers"),
        "1e999": (b'{"dataset_name": 1e999}', js, 400, "finite numbers"),
        "not UTF-8": (b'{"dataset_name": "\xff\xfe"}', js, 400, "UTF-8"),
        "truncated": (b'{"dataset_name": "a', js, 400, "well-formed JSON"),
        "not an object": (b'["a"]', js, 400, "a JSON object"),
        "unknown key": (b'{"dataset_namex": "a"}', js, 400, "unknown key"),
        "wrong type": (b'{"dataset_name": {"a": 1}}', js, 400, "must be a string"),
        "too many filters": (json.dumps({"filter": ["a=1"] * 101}).encode(), js, 400, "at most 100"),
        "JSON over 1 MiB": (json.dumps({"dataset_name": "a" * 1_100_000}).encode(), js, 413, "JSON body size"),
        "form post": (b"dataset_name=x", "application/x-www-form-urlencoded", 415, "send application/json"),
        "oversize": (b" " * (MAX_BODY + 10), js, 413, "request body size"),
    }


def web_cohort(fhir_url: str, n: int = N) -> dict[str, Any]:
    """n synthetic patients (2 segments each) under a fresh identifier system; a few carry XSS payloads in
    their histology text and segment label."""
    system = f"urn:test:web:{uuid.uuid4().hex[:10]}"
    res: list[dict[str, Any]] = []
    for i in range(n):
        ov = {"stage": "IIIa"} if i < 5 else {"stage": "I"}
        if i == 0:
            ov["histology"] = XSS[1]
        if i == 1:
            ov["segment_label"] = XSS[0]
        res.extend(patient_resources(system, f"W{i:03d}", n_clinical=6, n_features=6, n_segments=2,
                                     text_overrides=ov))
    FhirClient(fhir_url).write_entries([bundle.put_entry(r) for r in res], chunk_size=400)
    return {"system": system, "resources": res, "n": n}


def cohort_dir(tmp: Path, system: str) -> Path:
    d = tmp / "cohorts"
    d.mkdir(parents=True, exist_ok=True)
    (d / "web.json").write_text(json.dumps({
        "id": "web", "title": 'Web test <script>alert("t")</script>',
        "patient_search": f"Patient?identifier={system}|"}))
    (d / "web-iiia.json").write_text(json.dumps({
        "id": "web-iiia", "title": "Stage IIIa", "patient_search": f"Patient?identifier={system}|",
        "filters": ["Overall.Stage=IIIa"]}))
    return d


def web_env(fhir_url: str, cohorts: Path, system: str) -> dict[str, str]:
    return {"FHIR_BASE_URL": fhir_url, "KAAPANA_FHIR_COHORTS_DIR": str(cohorts),
            "KAAPANA_FHIR_DEFAULT_PATIENT_SEARCH": f"Patient?identifier={system}|",
            "KAAPANA_FHIR_WEB_STATE_TTL": "10", "KAAPANA_FHIR_PUBLIC_DICOMWEB_URL": "http://dicomweb.example/dicom-web",
            "KAAPANA_FHIR_PROJECTS": "admin"}


@pytest.fixture(scope="module")
def data(fhir_url: str) -> dict[str, Any]:
    return web_cohort(fhir_url)


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeBackend]:
    with fake_backend() as b:
        yield b


@pytest.fixture(scope="module")
def web(fhir_url: str, data: dict[str, Any], backend: FakeBackend, stack: Any, stack_env: dict[str, str],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowWeb]:
    cohorts = cohort_dir(tmp_path_factory.mktemp("web"), data["system"])
    # the mapping editor's endpoints work on the stack's MinIO, in a bucket of this module (schemathesis uploads)
    editor = f"kf-webapi-{uuid.uuid4().hex[:8]}-{{project}}"
    svc = stack.services["s3"]
    ObjectStore(svc.url, svc.extra["access_key"], svc.extra["secret_key"]).ensure_bucket(
        editor.replace("{project}", "admin"))
    env = dict(stack_env) | web_env(fhir_url, cohorts, data["system"]) | {
        "KAAPANA_FHIR_EDITOR_BUCKET": editor,
        "KAAPANA_BACKEND_URL": backend.url, "KAAPANA_FHIR_WEB_MAX_BODY_BYTES": str(MAX_BODY),
        "KAAPANA_FHIR_PROJECT_OBJECTS": json.dumps({"admin": {"id": "p-admin", "name": "admin"}})}
    with airflow_web(Path(sys.executable).parent, env) as w:
        yield w


@pytest.fixture(scope="module")
def api(web: AirflowWeb) -> str:
    return f"{web.url}/kaapana-fhir/api"


AUTH = (USER, PASSWORD)
MAX_BODY = 2_000_000  # the web server's KAAPANA_FHIR_WEB_MAX_BODY_BYTES in these tests


def test_api_and_page_need_airflow_login(web: AirflowWeb, api: str) -> None:
    assert requests.get(f"{api}/cohorts", timeout=30).status_code == 401
    assert requests.get(f"{api}/cohorts", auth=(USER, "wrong"), timeout=30).status_code == 401
    page = requests.get(f"{web.url}/kaapana-fhir/", allow_redirects=False, timeout=30)
    assert page.status_code == 302 and "login" in page.headers["Location"]
    s = web.session()
    r = s.get(f"{web.url}/kaapana-fhir/", timeout=30)
    assert r.status_code == 200 and "Cohort explorer" in r.text
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert s.get(f"{api}/cohorts", timeout=30).status_code == 200
    assert s.get(f"{web.url}/kaapana-fhir/static/plotly.min.js", timeout=30).status_code == 200
    assert s.get(f"{web.url}/kaapana-fhir/static/..%2Fapi.py", timeout=30).status_code == 404


def test_paging_covers_every_row_once(api: str, data: dict[str, Any]) -> None:
    seen: list[tuple[str, str]] = []
    offset: int | None = 0
    while offset is not None:
        p = requests.get(f"{api}/cohorts/web/rows", params={"offset": offset, "limit": 7}, auth=AUTH,
                         timeout=600).json()  # the first request builds the cohort: slow on a busy shared HAPI
        assert p["total"] == 2 * data["n"]
        seen += [(r["patient_key"], r["segment_key"]) for r in p["rows"]]
        offset = p["next_offset"]
    assert len(seen) == len(set(seen)) == 2 * data["n"]


def test_filters_segment_label_and_saved_definition(api: str, data: dict[str, Any]) -> None:
    iiia = requests.get(f"{api}/cohorts/web/rows", params={"filter": "Overall.Stage=IIIa", "limit": 1000},
                        auth=AUTH, timeout=300).json()
    assert {r["Overall.Stage"] for r in iiia["rows"]} == {"IIIa"} and iiia["total"] == 2 * 5
    saved = requests.get(f"{api}/cohorts/web-iiia/rows", params={"limit": 1000}, auth=AUTH, timeout=300).json()
    assert saved["total"] == iiia["total"]
    two = requests.get(f"{api}/cohorts/web/rows", auth=AUTH, timeout=300, params=[
        ("filter", "Overall.Stage=IIIa"), ("filter", "age>=0"), ("segment_label", "Lung-Left"),
        ("limit", "1000")]).json()
    # patients 0-4 are IIIa; patient 1's segments carry the XSS label instead of GTV-1 / Lung-Left
    assert two["total"] == 4 and {r["segment_label"] for r in two["rows"]} == {"Lung-Left"}
    bad = requests.get(f"{api}/cohorts/web/rows", params={"filter": "nope=1"}, auth=AUTH, timeout=300)
    assert bad.status_code == 400 and "nope" in bad.json()["error"]
    d = requests.get(f"{api}/cohorts/web", params={"filter": "age>=60", "segment_label": "GTV-1"}, auth=AUTH,
                     timeout=300).json()
    assert d["id"] == "web-custom" and d["filters"] == ["age>=60"] and d["segment_label"] == "GTV-1"
    other = requests.get(f"{api}/cohorts/web/rows", params={"project": "other"}, auth=AUTH, timeout=300)
    assert other.status_code == 404


def test_csv_and_parquet_equal_the_json_rows(api: str) -> None:
    params = {"filter": "Overall.Stage=I", "limit": 1000}
    js = requests.get(f"{api}/cohorts/web/rows", params=params, auth=AUTH, timeout=300).json()
    csv = requests.get(f"{api}/cohorts/web/rows", params={**params, "format": "csv"}, auth=AUTH, timeout=300)
    assert csv.headers["Content-Type"].startswith("text/csv") and csv.headers["X-Total-Count"] == str(js["total"])
    pq = requests.get(f"{api}/cohorts/web/rows", params={**params, "format": "parquet"}, auth=AUTH, timeout=300)
    a = pd.DataFrame(js["rows"], columns=js["columns"]).sort_values(["patient_key", "segment_key"])
    a = a.reset_index(drop=True)
    for other in (pd.read_csv(io.BytesIO(csv.content)), pd.read_parquet(io.BytesIO(pq.content))):
        b = other.sort_values(["patient_key", "segment_key"]).reset_index(drop=True)
        assert list(b.columns) == js["columns"] and len(b) == len(a)
        for col in ("patient_id", "Overall.Stage", "segment_label"):
            assert a[col].astype(str).tolist() == b[col].astype(str).tolist(), col
        for col in ("age", "shape_MeshVolume"):
            assert a[col].astype(float).round(6).tolist() == b[col].astype(float).round(6).tolist(), col


def test_km_matches_the_module_on_the_same_rows(api: str) -> None:
    k = requests.get(f"{api}/cohorts/web/km", params={"time": "Survival.time", "group": "Overall.Stage"},
                     auth=AUTH, timeout=300).json()
    assert k["unit"] == "d" and k["n"] == N and sum(c["n"] for c in k["curves"]) == N
    rows = requests.get(f"{api}/cohorts/web/rows", params={"limit": 1000}, auth=AUTH, timeout=300).json()["rows"]
    pts = {r["patient_key"]: r for r in rows}.values()
    groups = {}
    for r in pts:
        groups.setdefault(r["Overall.Stage"], ([], []))
        groups[r["Overall.Stage"]][0].append(r["Survival.time"])
        groups[r["Overall.Stage"]][1].append(bool(r["deceased"]))
    lr = survival.logrank([groups[g] for g in sorted(groups)])
    assert lr is not None and k["logrank"]["p_value"] == pytest.approx(lr.p_value)


def test_series_links_have_kaapana_shapes(api: str, data: dict[str, Any]) -> None:
    s = requests.get(f"{api}/cohorts/web/series", params={"limit": 1000}, auth=AUTH, timeout=300).json()
    assert s["total"] == 2 * data["n"]
    r = next(r for r in s["rows"] if r["modality"] == "CT")
    assert r["ohif_url"] == (f"/ohif/viewer?StudyInstanceUIDs={r['study_uid']}"
                             f"&initialSeriesInstanceUID={r['series_uid']}")
    assert r["dicomweb_url"] == (f"http://dicomweb.example/dicom-web/studies/{r['study_uid']}/series/"
                                 f"{r['series_uid']}")
    fhir = requests.get(r["fhir_imaging_study_url"], timeout=30)
    assert fhir.status_code == 200 and fhir.json()["resourceType"] == "ImagingStudy"


def test_cache_is_reused_and_rebuilt_after_a_write(api: str, fhir_url: str, data: dict[str, Any]) -> None:
    # back-to-back requests within the state TTL reuse the cached cohort (another client's write to the
    # shared server may force one rebuild in between: try a few pairs)
    for _ in range(4):
        s1 = requests.get(f"{api}/cohorts/web/summary", auth=AUTH, timeout=300).json()
        s2 = requests.get(f"{api}/cohorts/web/summary", auth=AUTH, timeout=300).json()
        if s1["built_at"] == s2["built_at"]:
            break
    assert s1["built_at"] == s2["built_at"]
    stage = {c["name"]: c for c in s1["columns"]}["Overall.Stage"]
    assert stage["n"] + stage["missing"] == N
    extra = patient_resources(data["system"], "W999", n_clinical=6, n_features=6, n_segments=2)
    FhirClient(fhir_url).write_entries([bundle.put_entry(r) for r in extra])
    time.sleep(10.5)  # the state TTL: the next request checks the server again
    s3 = requests.get(f"{api}/cohorts/web/summary", auth=AUTH, timeout=300).json()
    assert s3["built_at"] > s1["built_at"] and s3["patients"] == N + 1


def test_cache_is_kept_for_other_patients_and_rebuilt_for_a_members_observation(
        api: str, fhir_url: str, data: dict[str, Any]) -> None:
    client = FhirClient(fhir_url)

    def summary() -> dict[str, Any]:
        return dict(requests.get(f"{api}/cohorts/web/summary", auth=AUTH, timeout=300).json())

    kept = False
    for attempt in range(3):  # a burst of > 1,000 writes by others on the shared server rebuilds: retry
        s1 = summary()
        other = patient_resources(f"urn:test:web-other:{uuid.uuid4().hex[:8]}", f"X{attempt}", n_clinical=2,
                                  n_features=2)
        client.write_entries([bundle.put_entry(r) for r in other])
        time.sleep(10.5)  # the state TTL: the next request sees the server changed
        if summary()["built_at"] == s1["built_at"]:
            kept = True
            break
    assert kept, "writes of patients outside the cohort keep the cached cohort"
    s1 = summary()
    obs = next(r for r in data["resources"] if r["resourceType"] == "Observation" and "valueQuantity" in r
               and r["subject"]["reference"].endswith(data["resources"][0]["id"]))
    client.write_entries([bundle.put_entry({**obs, "note": [{"text": f"touched {time.time()}"}]})])
    time.sleep(10.5)
    assert summary()["built_at"] > s1["built_at"], "a changed Observation of a member rebuilds the cohort"


def test_views_list_and_rows(api: str, data: dict[str, Any]) -> None:
    views = requests.get(f"{api}/views", auth=AUTH, timeout=300).json()["views"]
    assert {"patient", "segment", "radiomics_feature"} <= {v["name"] for v in views}
    p = requests.get(f"{api}/views/patient/rows", params={"limit": 5}, auth=AUTH, timeout=120).json()
    assert p["total"] >= data["n"] and len(p["rows"]) == 5
    assert requests.get(f"{api}/views/nope/rows", auth=AUTH, timeout=300).status_code == 404


def test_send_to_kaapana_creates_dataset_and_starts_workflow(web: AirflowWeb, api: str, backend: FakeBackend,
                                                             data: dict[str, Any]) -> None:
    url = f"{api}/cohorts/web/send-to-kaapana"
    params = {"filter": "Overall.Stage=IIIa", "dataset_name": "fhir-iiia", "dag_id": "radiomics-dcmseg"}
    assert requests.post(url, params=params, auth=AUTH, timeout=300).status_code == 403  # no X-Requested-By
    assert requests.post(url, params=params, headers={"X-Requested-By": "kaapana-fhir"}, timeout=300).status_code == 401
    hdr = {"X-Requested-By": "kaapana-fhir"}
    r = requests.post(url, params=params, headers=hdr, auth=AUTH, timeout=300)
    assert r.status_code == 200, r.text
    ds = backend.datasets[("p-admin", "fhir-iiia")]
    iiia = {r["patient_key"] for r in requests.get(f"{api}/cohorts/web/rows", params={
        "filter": "Overall.Stage=IIIa", "limit": 1000}, auth=AUTH, timeout=300).json()["rows"]}
    ct = sorted(s["uid"] for res in data["resources"] if res["resourceType"] == "ImagingStudy"
                and res["subject"]["reference"].split("/")[1] in iiia for s in res["series"]
                if s["modality"]["code"] == "CT")
    assert ds["identifiers"] == ct and len(ct) == 5 and ds["username"] == USER and ds["project"]["name"] == "admin"
    wf = backend.workflows[-1]
    assert wf["dag_id"] == "radiomics-dcmseg" and wf["conf_data"]["data_form"] == {
        "dataset_name": "fhir-iiia", "identifiers": ct}
    again = requests.post(url, params=params, headers=hdr, auth=AUTH, timeout=300)
    assert again.status_code == 409 and "already exists" in again.json()["error"]
    bad = requests.post(url, params={**params, "dataset_name": "<script>"}, headers=hdr, auth=AUTH, timeout=300)
    assert bad.status_code == 400
    assert requests.get(url, auth=AUTH, timeout=300).status_code == 405


def test_send_to_kaapana_takes_its_parameters_as_a_json_body(api: str, backend: FakeBackend) -> None:
    url = f"{api}/cohorts/web/send-to-kaapana"
    hdr = {"X-Requested-By": "kaapana-fhir"}
    r = requests.post(url, params={"dataset_name": "overridden"}, headers=hdr, auth=AUTH, timeout=300,
                      json={"dataset_name": "fhir-body", "filter": ["Overall.Stage=IIIa"], "modality": "CT"})
    assert r.status_code == 200, r.text
    assert r.json()["series"] == 5 and ("p-admin", "fhir-body") in backend.datasets


@pytest.mark.parametrize("name", sorted(_hostile_bodies()))
def test_hostile_request_bodies_get_400_or_413_with_the_rule(api: str, backend: FakeBackend, name: str) -> None:
    body, ctype, status, words = _hostile_bodies()[name]
    before = len(backend.datasets)
    r = requests.post(f"{api}/cohorts/web/send-to-kaapana", params={"dataset_name": f"hostile-{len(body)}"},
                      data=body, headers={"X-Requested-By": "kaapana-fhir", "Content-Type": ctype}, auth=AUTH,
                      timeout=300)
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    assert r.headers["Content-Type"].startswith("application/json")
    assert words in r.json()["error"] and r.json()["status"] == status
    assert len(backend.datasets) == before, "a refused body creates nothing"


def test_request_body_limits_hold_for_chunked_and_get_requests(web: AirflowWeb, api: str) -> None:
    hdr = {"X-Requested-By": "kaapana-fhir", "Content-Type": "application/json"}
    sent = {"n": 0}

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must stop reading at the limit
        for _ in range(64):
            sent["n"] += 1
            yield b" " * 65536

    r = requests.post(f"{api}/cohorts/web/send-to-kaapana", params={"dataset_name": "chunked"}, data=chunks(),
                      headers=hdr, auth=AUTH, timeout=300)
    assert r.status_code == 413 and "request body size" in r.json()["error"]
    big = requests.request("GET", f"{web.url}/kaapana-fhir/static/explorer.css", data=b"x" * (MAX_BODY + 1),
                           auth=AUTH, timeout=300)
    assert big.status_code == 413, "every route of the view refuses a declared oversize body"
    get = requests.request("GET", f"{api}/cohorts", data=b'{"a": 1}', headers=hdr, auth=AUTH, timeout=300)
    assert get.status_code == 400 and "takes no request body" in get.json()["error"]
    assert requests.get(f"{api}/health", auth=AUTH, timeout=60).status_code == 200, "the server is still fine"


def test_body_helpers_within_limits() -> None:
    from kaapana_fhir.web import api as A

    assert A.read_body(None, lambda n: b"abc", 3) == b"abc"
    with pytest.raises(A.ApiError) as e:
        A.read_body(None, lambda n: b"x" * n, 3)
    assert e.value.status == 413
    calls: list[int] = []
    with pytest.raises(A.ApiError):
        A.read_body(10, lambda n: calls.append(n) or b"", 3)
    assert calls == [], "a declared oversize body is not read"
    assert A.read_body(0, lambda n: b"never", 3) == b""
    assert A.body_params(b'{"filter": ["a=1", "b=2"], "project": "admin"}', "application/json; charset=utf-8") == [
        ("filter", "a=1"), ("filter", "b=2"), ("project", "admin")]
    for name, (body, ctype, status, words) in _hostile_bodies().items():
        if name == "oversize":
            continue  # the adapter's limit (read_body), tested above
        with pytest.raises(A.ApiError) as e:
            A.body_params(body, ctype)
        assert (e.value.status, words in e.value.message) == (status, True), (name, e.value.message)


def test_schemathesis_against_the_shipped_spec(api: str, tmp_path: Path) -> None:
    """Every documented operation, generated inputs: no 5xx, documented status codes, content types and
    response schemas."""
    res = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", str(SPEC), "--url", api,
         "--auth", f"{USER}:{PASSWORD}", "-H", "X-Requested-By: kaapana-fhir",
         "--max-examples", "15", "--phases", "examples,fuzzing", "--request-timeout", "300",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_schema_conformance,response_headers_conformance",
         "--report", "junit", "--report-dir", str(tmp_path), "--no-color", "--seed", "1"],
        capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
