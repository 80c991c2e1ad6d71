"""Security under hostile input (issue #11): secrets never leak into logs, XComs, reports or exceptions;
user-supplied search values and object keys are encoded; object keys cannot escape the work dir; TLS
verification is on by default; tables we write are spreadsheet-safe; the dashboard escapes data."""

from __future__ import annotations

import builtins
import csv
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from kaapana_fhir.clients.dicomweb import DicomWeb
from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.clients.s3 import ObjectStore
from kaapana_fhir.core.cohort.tables import spreadsheet_safe
from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM, patient_id, stable_id
from kaapana_fhir.dev.stack import free_port
from kaapana_fhir.exceptions import DicomWebError, FhirConnectionError, KaapanaFhirError
from kaapana_fhir.flows.cohort.flow import run_cohort
from kaapana_fhir.flows.cohort.report import report_job
from kaapana_fhir.flows.dicom_to_fhir.flow import sync_studies
from kaapana_fhir.flows.tables import watch as W
from kaapana_fhir.flows.tables.flow import import_object
from tests.reliability import outcomes
from tests.reliability.helpers import LONG_MAPPING, long_csv, store_studies
from tests.support.fault_proxy import FaultPlan, FaultProxy, RecordingServer

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
GUARDS = "leak"

#: URL metacharacters, a pre-encoded sequence, spaces and non-ASCII (FHIR's own search escapes for , | $ \\
#: are the search syntax, not URL encoding, and are left to the caller)
HOSTILE = "a&b=c?d#e/f g%20ü😀+;"


def _secrets(stack: Any) -> dict[str, str]:
    """Known secrets to grep for: fresh tokens, and the object store's real keys (MinIO, unlike moto, refuses
    keys it does not know, so the S3 secrets are the stack's own per-run credentials)."""
    h = uuid.uuid4().hex
    s3 = stack.services["s3"].extra
    return {"fhir_token": f"fhirTOKEN{h[:12]}", "dicomweb_token": f"dwTOKEN{h[12:24]}",
            "s3_access": str(s3["access_key"]), "s3_secret": str(s3["secret_key"])}


def _leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value in text]


def _record_leaks(records: list[logging.LogRecord], secrets: dict[str, str]) -> list[tuple[str, str]]:
    """(logger, secret name) of every record that shows a secret. Known third-party exception: botocore's own
    DEBUG dump of signed requests shows the S3 *access key id* (never the secret key) in the Authorization
    header; it is only emitted when botocore logs at DEBUG (Airflow logs at INFO)."""
    out = []
    for r in records:
        text = f"{r.getMessage()} {r.exc_text or ''}"
        for name in _leaks(text, secrets):
            if name == "s3_access" and r.name.startswith("botocore") and r.levelno < logging.INFO:
                continue
            out.append((r.name, name))
    return out


class _UrlLog:
    """A requests response hook recording every URL actually sent."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.urls.append(resp.request.url or "")


def _hooked(client_session: requests.Session) -> _UrlLog:
    log = _UrlLog()
    client_session.hooks["response"].append(log)
    return log


def test_flows_with_known_secrets_leak_nothing(fhir_url: str, dicomweb_url: str, stack: Any, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    sec = _secrets(stack)
    tag = uuid.uuid4().hex[:8]
    s3_url = stack.services["s3"].url
    fhir = FhirClient(fhir_url, token=sec["fhir_token"])
    dw = DicomWeb(dicomweb_url, token=sec["dicomweb_token"])
    store = ObjectStore(s3_url, sec["s3_access"], sec["s3_secret"])
    artefacts: list[str] = []
    with caplog.at_level(logging.DEBUG):
        studies = store_studies(dw, tag, 2)
        res = sync_studies(dw, fhir, study_uids=[s["study"] for s in studies])
        artefacts.append(json.dumps(res.as_dict(), default=str))
        bucket = f"kf-sec-{tag}"
        store.ensure_bucket(bucket)
        store.put_bytes(bucket, "fhir-import/t.csv", long_csv(tag, 20))
        store.put_bytes(bucket, "fhir-import/t.mapping.yaml", LONG_MAPPING.encode())
        confs = W.find_new_objects(store, bucket)
        artefacts.append(json.dumps(confs))
        rep = import_object(store, fhir, bucket, "fhir-import/t.csv", mapping_key=confs[0]["mapping_key"])
        artefacts.append(json.dumps(rep.as_dict(), default=str))
        pids = [patient_id(DEFAULT_PATIENT_SYSTEM, s["patient"]) for s in studies]
        summary = run_cohort(fhir, tmp_path / "cohort", patient_search=f"Patient?_id={','.join(pids)}",
                             store=store, bucket=bucket)
        artefacts.append(json.dumps(summary.as_dict(), default=str))
        info = report_job(tmp_path / "cohort", store=store, bucket=bucket)
        artefacts.append(json.dumps(info.as_dict(), default=str))
        # failures: the exceptions and their messages must not carry the secrets either
        dead = free_port()
        errors: list[BaseException] = []
        for call in (
            lambda: FhirClient(f"http://user:{sec['fhir_token']}@127.0.0.1:{dead}/fhir", token=sec["fhir_token"]
                               ).read("Patient", "x"),
            lambda: sync_studies(DicomWeb(f"http://127.0.0.1:{dead}/dicom-web", token=sec["dicomweb_token"]), fhir,
                                 study_uids=[studies[0]["study"]]),
            lambda: W.find_new_objects(ObjectStore(f"http://127.0.0.1:{dead}", sec["s3_access"], sec["s3_secret"]),
                                       bucket),
            lambda: store.get_bytes(bucket, "fhir-import/missing.csv"),
        ):
            with pytest.raises(KaapanaFhirError) as exc:
                call()
            errors.append(exc.value)
            logging.getLogger("test").error("failure: %s", exc.value, exc_info=exc.value)
    assert res.studies == 2 and rep.status == "imported" and summary.patients == 2
    assert isinstance(errors[0], FhirConnectionError) and isinstance(errors[1], DicomWebError)
    out = capsys.readouterr()
    assert _record_leaks(caplog.records, sec) == []
    info_text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records if r.levelno >= logging.INFO
                          or not r.name.startswith("botocore"))
    # once Airflow's logging is configured (an earlier DAG test), records are also echoed to stdout: drop the
    # botocore DEBUG request dumps there too (see _record_leaks); everything else on stdout is checked
    echoed = "\n".join(line for line in (out.out + out.err).splitlines()
                       if not re.search(r"\{endpoint\.py:\d+\} DEBUG - Sending http request", line))
    assert sec["s3_secret"] not in out.out + out.err
    texts = {"log records": info_text, "stdout/stderr": echoed, "results": "\n".join(artefacts),
             "exceptions": "\n".join(f"{e!s} {e!r} {getattr(e, 'url', '')}" for e in errors)}
    for f in sorted((tmp_path / "cohort").rglob("*")):
        if f.is_file():
            texts[f.name] = f.read_bytes().decode("utf-8", "replace")
    for key in (o.key for o in store.list(bucket)):
        texts[f"s3:{key}"] = store.get_bytes(bucket, key).decode("utf-8", "replace")
    assert len(caplog.records) > 20  # the check looked at real output
    assert {name: _leaks(text, sec) for name, text in texts.items() if _leaks(text, sec)} == {}


@pytest.mark.airflow
def test_dags_with_secret_connections_leak_nothing(airflow_home: Path, stack_env: dict[str, str], stack: Any,
                                                   dicomweb: DicomWeb, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from kaapana_fhir.dev import airflow_runner as airflow_runner

    sec = _secrets(stack)
    tag = uuid.uuid4().hex[:8]
    for k, v in stack_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("KAAPANA_FHIR_RUNTIME", "airflow")
    s3_url = stack.services["s3"].url
    monkeypatch.setenv("AIRFLOW_CONN_FHIR_DEFAULT", json.dumps(
        {"conn_type": "http", "host": stack.fhir_url, "extra": {"token": sec["fhir_token"]}}))
    monkeypatch.setenv("AIRFLOW_CONN_DICOMWEB_DEFAULT", json.dumps(
        {"conn_type": "http", "host": stack.dicomweb_url, "extra": {"token": sec["dicomweb_token"]}}))
    monkeypatch.setenv("AIRFLOW_CONN_S3_DEFAULT", json.dumps(
        {"conn_type": "aws", "login": sec["s3_access"], "password": sec["s3_secret"],
         "extra": {"endpoint_url": s3_url, "region_name": "us-east-1"}}))
    studies = store_studies(dicomweb, tag, 2)
    store = ObjectStore(s3_url, sec["s3_access"], sec["s3_secret"])
    bucket = f"kf-secdag-{tag}"
    store.ensure_bucket(bucket)
    store.put_bytes(bucket, "fhir-import/t.csv", long_csv(tag, 20))
    store.put_bytes(bucket, "fhir-import/t.mapping.yaml", LONG_MAPPING.encode())

    with caplog.at_level(logging.INFO):
        r1 = airflow_runner.run_dag("dicom-to-fhir", {"study_uids": [s["study"] for s in studies]})
        r2 = airflow_runner.run_dag("fhir-table-import", {"bucket": bucket, "object_key": "fhir-import/t.csv",
                                                          "mapping_key": "fhir-import/t.mapping.yaml"})
    assert r1.xcoms["summary"]["studies"] == 2
    assert r2.xcoms["import-table"]["status"] == "imported" and r2.xcoms["import-table"]["rows_read"] == 20
    out = capsys.readouterr()
    texts = {"log records": "\n".join(r.getMessage() for r in caplog.records), "log output": caplog.text,
             "stdout/stderr": out.out + out.err, "xcoms": json.dumps([r1.xcoms, r2.xcoms], default=str)}
    logs = airflow_home / "logs"
    log_files = [p for p in logs.rglob("*") if p.is_file()] if logs.exists() else []
    for p in log_files:
        texts[str(p.relative_to(airflow_home))] = p.read_text("utf-8", "replace")
    # the metadata DB holds XComs, rendered template fields and run confs: the secrets must not be there
    texts["airflow.db"] = (airflow_home / "airflow.db").read_bytes().decode("latin-1")
    # dag.test() sends the task logs to stdout: the check looked at the real task logs
    assert "synced 1 studies" in texts["stdout/stderr"] and "import of fhir-import/t.csv" in texts["stdout/stderr"]
    assert {name: _leaks(text, sec) for name, text in texts.items() if _leaks(text, sec)} == {}


def test_search_values_and_object_keys_are_encoded(fhir_url: str, dicomweb_url: str, s3: ObjectStore) -> None:
    tag = uuid.uuid4().hex[:8]
    value = f"{tag}-{HOSTILE}"
    fhir = FhirClient(fhir_url)
    sent = _hooked(fhir.session)
    pid = patient_id("urn:rel:hostile", value)
    fhir.update({"resourceType": "Patient", "id": pid, "identifier": [{"system": "urn:rel:hostile", "value": value}]})
    found = list(fhir.search("Patient", {"identifier": f"urn:rel:hostile|{value}"}))
    assert [p["id"] for p in found] == [pid]  # the value round-trips exactly: nothing was cut at & ? #
    url = sent.urls[-1]
    assert "#" not in url and "&b=c" not in url and " " not in url
    assert "a%26b%3Dc%3Fd%23e%2Ff+g%2520" in url or "a%26b%3Dc%3Fd%23e%2Ff%20g%2520" in url
    with pytest.raises(KaapanaFhirError):  # an id with / ? # is one encoded path segment, never a new path
        fhir.read("Patient", "../metadata?x=#")
    assert "..%2Fmetadata%3Fx%3D%23" in sent.urls[-1]

    # the cohort flow: a search given by the user (values URL-encoded in the text) reaches the server intact
    from urllib.parse import quote

    summary = run_cohort(fhir, Path(f"/tmp/kf-rel-cohort-{tag}"),
                         patient_search=f"Patient?identifier={quote('urn:rel:hostile|' + value, safe='')}")
    assert summary.patients == 1

    dw = DicomWeb(dicomweb_url)
    dsent = _hooked(dw.session)
    assert dw.search_studies({"PatientID": value}) == []
    assert "#" not in dsent.urls[-1] and "%26b%3Dc%3Fd%23e" in dsent.urls[-1]

    bucket = f"kf-keys-{tag}"
    s3.ensure_bucket(bucket)
    key = f"fhir-import/{HOSTILE}/ü ñ & #1.csv"
    s3.put_bytes(bucket, key, long_csv(tag, 10))
    s3.put_bytes(bucket, W.sidecars(key)["mapping"], LONG_MAPPING.encode())
    assert [o.key for o in s3.list(bucket) if o.key == key] == [key]
    confs = W.find_new_objects(s3, bucket)
    assert [c["object_key"] for c in confs] == [key]
    rep = import_object(s3, fhir, bucket, key, mapping_key=confs[0]["mapping_key"])
    assert rep.status == "imported" and rep.rows_read == 10
    assert s3.head(bucket, W.sidecars(key)["report"]) is not None


def test_watcher_and_import_write_no_local_files_for_hostile_keys(s3: ObjectStore, fhir: FhirClient,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """Nothing is ever written under a name taken from the bucket: an object is streamed to a fixed name
    (``table``) in a private temporary folder (constant memory), which is removed after the import."""
    tag = uuid.uuid4().hex[:8]
    bucket = f"kf-trav-{tag}"
    s3.ensure_bucket(bucket)
    keys = ["fhir-import/..%2F..%2Fevil.csv", "fhir-import/sub/..x/../evil2.csv", "fhir-import/abs//etc/evil3.csv",
            "fhir-import/sub%2F..%2F..%2Fevil4.csv"]
    stored = []
    for k in keys:
        try:  # MinIO and its client refuse '.'/'..' segments and '//' outright; keep the keys the store takes
            s3.put_bytes(bucket, k, long_csv(tag + k[-6:-4], 5))
            stored.append(k)
        except KaapanaFhirError:
            continue
    assert stored
    s3.put_bytes(bucket, "mappings/long.yaml", LONG_MAPPING.encode())
    writes: list[str] = []
    real_open = builtins.open

    def spy(file: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
        if any(c in mode for c in "wax+"):
            writes.append(str(file))
        return real_open(file, mode, *a, **kw)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(builtins, "open", spy)
    confs = W.find_new_objects(s3, bucket, default_preset="lung1")
    listed = sorted(o.key for o in s3.list(bucket) if W.is_data_key(o.key))
    assert len(confs) >= 1 and sorted(c["object_key"] for c in confs) == listed  # (servers may normalise '..')
    reports = [import_object(s3, fhir, bucket, c["object_key"], mapping_key="mappings/long.yaml") for c in confs]
    assert [r.status for r in reports] == ["imported"] * len(confs)
    tmp_root = Path(tempfile.gettempdir()).resolve()
    for w in writes:  # only the download (and the object store client's part file) in a private temp folder
        p = Path(w).resolve()
        assert p.parent.parent == tmp_root and p.parent.name.startswith("kaapana-fhir-import-"), w
        assert p.name == "table" or (p.name.startswith("table.") and p.name.endswith(".part.minio")), w
        assert not p.parent.exists(), f"{p.parent} left behind"
    assert len({Path(w).parent for w in writes}) == len(confs)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_tls_verification_is_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from kaapana_fhir.hooks.fhir import DicomWebHook, FhirHook, ObjectStoreHook

    assert FhirClient("https://fhir.example.org/fhir").session.verify is True
    assert DicomWeb("https://pacs.example.org/dicom-web").session.verify is True
    store = ObjectStore("https://minio.example.org", "a", "b")
    assert store._client._http.connection_pool_kw["cert_reqs"] == "CERT_REQUIRED"
    monkeypatch.setenv("AIRFLOW_CONN_FHIR_SECTEST", json.dumps({"conn_type": "http", "host": "https://f.example/fhir"}))
    monkeypatch.setenv("AIRFLOW_CONN_DW_SECTEST", json.dumps({"conn_type": "http", "host": "https://d.example/dw"}))
    monkeypatch.setenv("AIRFLOW_CONN_S3_SECTEST", json.dumps(
        {"conn_type": "aws", "login": "a", "password": "b", "extra": {"endpoint_url": "https://m.example"}}))
    assert FhirHook("fhir_sectest").get_conn().session.verify is True
    assert DicomWebHook("dw_sectest").get_conn().session.verify is True
    assert ObjectStoreHook("s3_sectest").get_conn()._client._http.connection_pool_kw["cert_reqs"] == "CERT_REQUIRED"
    # and it is only off when configured
    assert FhirClient("https://fhir.example.org/fhir", verify=False).session.verify is False


def _formula_cells(path: Path) -> list[str]:
    bad = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            for cell in row:
                if cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
                    try:
                        float(cell)
                    except ValueError:
                        bad.append(cell)
    return bad


def test_cohort_tables_are_spreadsheet_safe_and_dashboard_escapes(fhir_url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    fhir = FhirClient(fhir_url)
    hostile = ["=HYPERLINK(\"http://evil\",\"x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A2)",
               "<script>alert(1)</script>", "\t=1"]
    pids = []
    for i, v in enumerate(hostile):
        pid = stable_id("Patient", "rel-sec", tag, str(i))
        pids.append(pid)
        fhir.update({"resourceType": "Patient", "id": pid, "gender": "female",
                     "identifier": [{"system": "urn:rel:sec", "value": f"{v}{tag}"}]})
        fhir.update({"resourceType": "Observation", "id": stable_id("Observation", pid), "status": "final",
                     "code": {"text": "=evil()"}, "subject": {"reference": f"Patient/{pid}"}, "valueString": v})
    out = tmp_path / "cohort"
    summary = run_cohort(fhir, out, patient_search=f"Patient?_id={','.join(pids)}")
    assert summary.patients == len(hostile)
    csvs = sorted(out.glob("*.csv"))
    assert csvs and any(tag in p.read_text("utf-8") for p in csvs)  # the hostile rows are in the files
    assert {p.name: _formula_cells(p) for p in csvs if _formula_cells(p)} == {}
    assert spreadsheet_safe("=1") == "'=1" and spreadsheet_safe(-3) == -3

    info = report_job(out)
    html = Path(info.path).read_text("utf-8")
    assert "<script>alert(1)</script>" not in html
    assert "alert(1)" in html  # the value is shown (escaped), not dropped


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k not in ("FHIR_BASE_URL", "FHIR_TOKEN")}
    return subprocess.run([sys.executable, "-m", "kaapana_fhir.cli.main", "-v", *args], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[2], env={**e, **(env or {})})


def _userinfo(url: str, user: str, secret: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{secret}@{rest}"


@outcomes.guards("leak")
def test_url_userinfo_and_tokens_never_leak_through_the_cli(fhir_url: str, dicomweb_url: str, dicomweb: DicomWeb,
                                                             fhir: FhirClient, tmp_path: Path, stack: Any) -> None:
    """URL credentials and tokens, with DEBUG logging: not in a FHIR resource (Endpoint.address), a Bundle file,
    a log line, stdout or an error text; also on the failure paths (200 + OperationOutcome, HTML, cross-origin
    next link)."""
    sec = _secrets(stack)
    tag = uuid.uuid4().hex[:8]
    study = store_studies(dicomweb, tag, 1)[0]["study"]
    pacs = _userinfo(dicomweb_url, "alice", sec["dicomweb_token"])
    texts: dict[str, str] = {}

    out = tmp_path / "bundle.json"
    r = _cli("dicom-to-fhir", "--dicomweb", pacs, "--study", study, "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    texts["dicom --out"] = r.stdout + r.stderr + out.read_text()
    r = _cli("dicom-to-fhir", "--dicomweb", pacs, "--study", study, "--endpoint-address", pacs,
             "--fhir", _userinfo(fhir_url, "bob", sec["fhir_token"]))
    assert r.returncode == 0, r.stderr[-2000:]
    texts["dicom --fhir"] = r.stdout + r.stderr
    ep = fhir.read("ImagingStudy", stable_id("ImagingStudy", study))["endpoint"][0]["reference"].split("/")[1]
    address = fhir.read("Endpoint", ep)["address"]
    assert "@" not in address and address.endswith("/dicom-web")
    texts["Endpoint"] = json.dumps(fhir.read("Endpoint", ep))

    csv_file, mapping = tmp_path / "t.csv", tmp_path / "m.yaml"
    csv_file.write_bytes(long_csv(tag, 10))
    mapping.write_text(LONG_MAPPING)
    for mode in ("outcome200", "html200"):
        with FaultProxy(fhir_url, FaultPlan(mode=mode, only_methods=("POST",))) as proxy:
            r = _cli("import-table", str(csv_file), "--mapping", str(mapping),
                     "--fhir", _userinfo(proxy.url, "bob", sec["fhir_token"]))
        assert r.returncode == 1 and proxy.origin.split("://")[1] in r.stderr, r.stderr[-2000:]
        texts[f"import {mode}"] = r.stdout + r.stderr
    with RecordingServer() as foreign, FaultProxy(
            fhir_url, FaultPlan(mode="cross_origin_next", only_methods=("GET",), foreign_origin=foreign.origin)
    ) as proxy:
        r = _cli("cohort", "--fhir", proxy.url, "--patients", "Patient?_count=1", "--out", str(tmp_path / "c.csv"),
                 env={"FHIR_TOKEN": sec["fhir_token"]})
    assert r.returncode == 1 and foreign.received == []
    assert proxy.plan.received and all(a == f"Bearer {sec['fhir_token']}" for _, _, a, _ in proxy.plan.received)
    texts["cohort next"] = r.stdout + r.stderr
    assert sum(len(t) for t in texts.values()) > 2000 and "DEBUG" in texts["dicom --fhir"]  # real, verbose output
    assert {name: _leaks(text, sec) for name, text in texts.items() if _leaks(text, sec)} == {}
    outcomes.record("input", len(texts))
    outcomes.record("no_leak", len(texts))


@outcomes.guards("leak")
def test_object_store_keys_never_in_logs(stack: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Through the ObjectStore interface only (its implementation is another module's): with every logger at
    DEBUG, the access key, secret key and a URL password never appear in a log record or an error."""
    svc = stack.services["s3"]
    access, secret = svc.extra["access_key"], svc.extra["secret_key"]
    url_secret = f"urlpw{uuid.uuid4().hex[:10]}"
    tag = uuid.uuid4().hex[:8]
    errors: list[str] = []
    with caplog.at_level(logging.DEBUG):
        store = ObjectStore(svc.url, access, secret)
        bucket = f"kf-leak-{tag}"
        store.ensure_bucket(bucket)
        store.put_bytes(bucket, "a/b.csv", b"x,y\n1,2\n")
        assert store.get_bytes(bucket, "a/b.csv") == b"x,y\n1,2\n"
        list(store.list(bucket))
        for call in (lambda: store.get_bytes(bucket, "missing.csv"),
                     lambda: ObjectStore(svc.url, access, "wrong-" + secret).get_bytes(bucket, "a/b.csv"),
                     lambda: ObjectStore(_userinfo(svc.url, "u", url_secret), access, secret).get_bytes(
                         bucket, "a/b.csv")):
            try:
                call()
            except KaapanaFhirError as exc:
                errors.append(f"{exc!s} {exc!r}")
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records) + "\n".join(errors)
    assert len(errors) >= 2 and len(caplog.records) > 3
    leaked = [name for name, value in {"access": access, "secret": secret, "url password": url_secret}.items()
              if value in text]
    assert leaked == [], leaked
    outcomes.record("no_leak", 3)
