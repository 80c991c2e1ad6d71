"""REDCap API pull (PyCap) against a recorded API exchange, into real HAPI.

The REDCap side is :class:`tests.support.redcap_replay.RedcapReplay`: a local HTTP server answering REDCap's API
POSTs from recordings written to REDCap's documented answer shapes (``tests/data/tables/redcap/api``: the synthetic
LungImaging project of the file-export tests). The test checks the fields PyCap sends, the resources that land on
HAPI, and that the token appears nowhere but in the POST body to the API URL.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.core.ids import patient_id
from kaapana_fhir.core.tables.mapping import slug
from tests.support.redcap_replay import RedcapReplay

pytestmark = [pytest.mark.integration]

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "tables" / "redcap" / "api"
TOKEN = "0A1B2C3D4E5F60718293A4B5C6D7E8F9"


def _cli(*args: str) -> int:
    from kaapana_fhir.cli.main import main

    return main(list(args))


def test_redcap_api_pull_to_hapi(fhir: Any, fhir_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)  # requests/urllib3 debug lines included: the token must not be in any
    monkeypatch.setenv("KAAPANA_FHIR_REDCAP_TOKEN", TOKEN)
    project = f"LungApi{uuid.uuid4().hex[:6]}"
    report = tmp_path / "r.json"
    with RedcapReplay(RECORDINGS, TOKEN) as api:
        assert _cli("import-table", "--redcap-url", api.url, "--project", project, "--fhir", fhir_url,
                    "--report", str(report)) == 0
    # what PyCap sent: three form POSTs to the API URL, JSON, flat raw records, the token in the body
    assert [r["content"] for r in api.requests] == ["project", "metadata", "record"]
    for r in api.requests:
        assert r["__path__"] == "/redcap/api/" and r["format"] == "json" and r["token"] == TOKEN
        assert r["__content_type__"] == "application/x-www-form-urlencoded"
    rec = api.requests[2]
    assert (rec["type"], rec["rawOrLabel"], rec["rawOrLabelHeaders"]) == ("flat", "raw", "raw")
    fields = [v for k, v in rec.items() if k.startswith("fields[")]
    assert "record_id" in fields and "labs_complete" in fields  # PyCap names every field and form-complete field
    # what landed on HAPI: complete Patients and one coded Observation per lab measurement
    rep = json.loads(report.read_text())
    assert rep["status"] == "imported" and rep["file"] == f"{project}.redcap-api.json"
    system = f"urn:kaapana-fhir:redcap:{slug(project)}:record-id"
    pat = fhir.read("Patient", patient_id(system, "LI-002"))
    assert (pat["gender"], pat["birthDate"], pat["deceasedBoolean"]) == ("male", "1948-11-30", True)
    assert pat["_birthDate"]["extension"][0]["valueString"] == f"table:{project}.redcap-api.json"
    crp = list(fhir.search("Observation", {"code": "http://loinc.org|1988-5", "subject": f"Patient/{pat['id']}"}))
    assert len(crp) == 1 and crp[0]["valueQuantity"]["code"] == "mg/L" and crp[0]["effectiveDateTime"] == "2020-01-14"
    # the same project from the file export gives the same resources (only the recorded source differs)
    assert sum(rep["resources_written"].values()) > 10
    # the token never reaches a log line, the console or the report
    out = capsys.readouterr()
    assert TOKEN not in caplog.text and TOKEN not in out.out + out.err and TOKEN not in report.read_text()
    assert "REDCap API" in caplog.text


def test_wrong_token_and_redirect_fail_without_leaking_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture,
                                                                 fhir_url: str) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "F" * 32
    monkeypatch.setenv("KAAPANA_FHIR_REDCAP_TOKEN", wrong)
    with RedcapReplay(RECORDINGS, TOKEN) as api:
        assert _cli("import-table", "--redcap-url", api.url, "--fhir", fhir_url) == 1
    assert "HTTP 403" in caplog.text and "You do not have permissions" in caplog.text
    assert len(api.requests) == 1  # refused at the first call, nothing else tried
    # a redirect is not followed: the other address never sees the token
    monkeypatch.setenv("KAAPANA_FHIR_REDCAP_TOKEN", TOKEN)
    with RedcapReplay(RECORDINGS, TOKEN) as other, RedcapReplay(RECORDINGS, TOKEN) as api:
        api.redirect_to = other.url
        assert _cli("import-table", "--redcap-url", api.url, "--fhir", fhir_url) == 1
    assert len(api.requests) == 1 and other.requests == []
    assert "redirect (HTTP 307); not followed" in caplog.text
    assert TOKEN not in caplog.text and wrong not in caplog.text
    # a malformed token is refused before any request, without echoing it (PyCap's own check would print it)
    monkeypatch.setenv("KAAPANA_FHIR_REDCAP_TOKEN", "secret-but-short")
    with RedcapReplay(RECORDINGS, TOKEN) as api:
        assert _cli("import-table", "--redcap-url", api.url, "--fhir", fhir_url) == 1
    assert api.requests == [] and "not 32 hexadecimal characters" in caplog.text
    assert "secret-but-short" not in caplog.text


def test_token_from_an_airflow_connection(fhir_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("KAAPANA_FHIR_REDCAP_TOKEN", raising=False)
    out = tmp_path / "bundle.json"
    with RedcapReplay(RECORDINGS, TOKEN) as api:
        monkeypatch.setenv("AIRFLOW_CONN_REDCAP_REPLAY", json.dumps({"conn_type": "http", "host": api.url,
                                                                     "password": TOKEN}))
        assert _cli("import-table", "--redcap-token-conn", "redcap_replay", "--out", str(out)) == 0
    assert [r["token"] for r in api.requests] == [TOKEN] * 3
    bundle = json.loads(out.read_text())
    assert sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient") == 3
    assert TOKEN not in caplog.text

