"""Mapping editor in headless Chromium (Debian chromium + chromedriver, selenium) on the real Airflow 2.11 web server
with the real MinIO and HAPI: upload a table, accept a suggestion, change a unit, preview, save the mapping beside
the table; then the real watcher DAG finds it and the import DAG writes the Patients and Observations to HAPI.
Column names and values carry XSS payloads (shown as text, never run); no console errors, no failed requests;
screenshots to test-artifacts/."""

from __future__ import annotations

import csv
import io
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM, patient_id
from tests.browser.airflow_web import AirflowWeb, airflow_web, login
from tests.support import browser
from tests.support.table_dags import load_table_dags, run_import, run_watcher

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.airflow]

XSS = ['<script>alert("x")</script>', '"><img src=x onerror=alert(1)>']
TAG = uuid.uuid4().hex[:8]
PROJECT = "admin"
BUCKET = f"kf-editor-{TAG}-{PROJECT}"
IDS = [f"ED-{TAG}-{i}" for i in range(1, 5)]


def _table() -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["PatientID", "Alter (Jahre)", "Gewicht", XSS[0]])
    for i, pid in enumerate(IDS):
        w.writerow([pid, 50 + i, 150 + 10 * i, XSS[1] if i % 2 else "plain"])
    return buf.getvalue().encode()


@pytest.fixture(scope="module")
def web(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowWeb]:
    if not browser.available():
        pytest.skip("chromium/chromedriver not installed")
    # the web server reads the object store through Airflow's s3_default connection, as the watcher does
    env = dict(stack_env) | {"KAAPANA_FHIR_PROJECTS": PROJECT, "KAAPANA_FHIR_IMPORT_PREFIX": "fhir-import/",
                             "KAAPANA_FHIR_EDITOR_BUCKET": f"kf-editor-{TAG}-{{project}}"}
    with airflow_web(Path(sys.executable).parent, env) as w:
        yield w


@pytest.fixture()
def import_dags(airflow_home: Path, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The watcher and import DAGs, run in this process against the shared stack (as the table-import tests do)."""
    for k, v in stack_env.items():
        monkeypatch.setenv(k, v)
    return load_table_dags()


TIMEOUT_SHOT = Path(__file__).resolve().parents[2] / "test-artifacts" / "mapping-editor-timeout.png"


def _wait(driver: Any, cond: Any, what: str) -> Any:
    return browser.wait_for(driver, cond, what, timeout=300.0, screenshot=TIMEOUT_SHOT, poll=0.2)


def _rev(d: Any) -> int:
    return int(d.find_element("id", "status").get_attribute("data-rev") or 0)


def _after(d: Any, action: Any, what: str) -> None:
    """Run ``action`` and wait until the page rendered the server's answer to it."""
    before = _rev(d)
    action()
    _wait(d, lambda: _rev(d) > before, what)
    assert "error" not in d.find_element("id", "status").text, d.find_element("id", "status").text


def _obs_row(d: Any, column: str) -> Any:
    for tr in d.find_elements("css selector", "#obs tbody tr"):
        if tr.find_element("css selector", ".colname").text == column:
            return tr
    raise AssertionError(f"no observation row for {column!r}")


@pytest.mark.timeout(1500)
def test_edit_preview_save_and_the_watcher_imports_it(web: AirflowWeb, import_dags: dict[str, Any], s3: Any, fhir: Any,
                                                      artifacts_dir: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    s3.ensure_bucket(BUCKET)
    table = tmp_path / "clinical.csv"
    table.write_bytes(_table())
    # Airflow's login guards the page and the API
    anon = requests.get(f"{web.url}/kaapana-fhir/mapping/", allow_redirects=False, timeout=60)
    assert anon.status_code in (302, 303) and "login" in anon.headers["location"]
    assert requests.get(f"{web.url}/kaapana-fhir/api/mapping/tables", timeout=60).status_code == 401
    assert requests.post(f"{web.url}/kaapana-fhir/api/mapping/upload", params={"name": "x.csv"}, data=b"a\n1\n",
                         headers={"X-Requested-By": "kaapana-fhir"}, timeout=60).status_code == 401
    with browser.chromium() as d:
        login(d, web, TIMEOUT_SHOT)
        # Airflow's menu links the editor (built by Flask under Airflow's base URL)
        assert d.find_elements("css selector", "a[href$='/kaapana-fhir/mapping/']")
        d.get(f"{web.url}/kaapana-fhir/mapping/")
        _wait(d, lambda: _rev(d) >= 1, "the page to start")
        # upload: the table is stored under the watcher's prefix, profiled, and a mapping is generated
        d.find_element("id", "file").send_keys(str(table))
        _after(d, lambda: d.find_element("id", "upload").click(), "upload and profile")
        assert s3.get_bytes(BUCKET, "fhir-import/clinical.csv") == table.read_bytes()
        assert d.find_element("id", "profile-rows").text == "4"
        # XSS payloads in a column name and a value: text on the page, never markup
        assert XSS[0] in [td.text.replace(" (unique)", "") for td in d.find_elements("css selector", "#profile td")]
        assert XSS[1] in d.find_element("id", "profile").text
        assert d.execute_script("return document.querySelectorAll('img[src=x], script:not([src])').length") == 0
        assert _obs_row(d, XSS[0]) is not None
        assert "Ready to save" not in d.find_element("id", "verdict").text
        d.save_screenshot(str(artifacts_dir / "mapping-editor-generated.png"))
        # accept a suggestion (the catalogue's age code)
        age = _obs_row(d, "Alter (Jahre)")
        assert age.find_element("css selector", "input[data-path*='\"code\"'][data-path$='\"code\"]']") \
            .get_attribute("value") == "30525-0"
        _after(d, lambda: age.find_element("css selector", "button.accept").click(), "accept age")
        assert not _obs_row(d, "Alter (Jahre)").find_elements("css selector", "button.accept")
        assert "observations[0].review" not in d.find_element("id", "pending").text
        # change a unit: the weight was assumed in kg, this table has pounds
        unit = _obs_row(d, "Gewicht").find_element("css selector", "input.unit")
        assert unit.get_attribute("value") == "kg"
        unit.send_keys(Keys.CONTROL, "a")
        unit.send_keys("[lb_av]")
        _after(d, lambda: unit.send_keys(Keys.TAB), "unit change")  # leaving the field commits it (change event)
        assert "[lb_av]" in d.find_element("id", "yaml").get_attribute("value")
        # the XSS column has no code: not imported
        _after(d, lambda: _obs_row(d, XSS[0]).find_element("css selector", "td:last-child button").click(),
               "drop column")
        # accept the remaining suggestions (patient key, weight)
        while d.find_elements("css selector", "button.accept"):
            btn = d.find_elements("css selector", "button.accept")[0]
            _after(d, btn.click, "accept")
        # preview and validation: ready, and the resources of the first rows carry the new unit
        _wait(d, lambda: d.find_element("id", "verdict").text.startswith("Ready to save"), "ready")
        preview = d.find_element("id", "preview").text
        assert '"unit": "[lb_av]"' in preview and IDS[0] in preview and '"code": "30525-0"' in preview
        assert "4 Patient" in d.find_element("id", "counts").text
        yaml_text = d.find_element("id", "yaml").get_attribute("value")
        assert yaml_text.startswith("# kaapana-fhir table mapping")  # the generated comments survive the edits
        d.save_screenshot(str(artifacts_dir / "mapping-editor.png"))
        # save: the mapping lands beside the table
        _after(d, lambda: d.find_element("id", "save").click(), "save")
        _wait(d, lambda: d.find_element("id", "save-result").text.startswith("Saved"), "saved")
        saved = s3.get_bytes(BUCKET, "fhir-import/clinical.mapping.yaml").decode()
        assert saved == yaml_text

        # the real watcher DAG finds table + mapping, the import DAG writes HAPI
        _, confs = run_watcher(import_dags["watcher"], BUCKET)
        assert [(c["object_key"], c.get("mapping_key")) for c in confs] == [
            ("fhir-import/clinical.csv", "fhir-import/clinical.mapping.yaml")]
        run_import(import_dags["import"], confs[0])
        for i, pid in enumerate(IDS):
            pat = fhir.read("Patient", patient_id(DEFAULT_PATIENT_SYSTEM, pid))
            assert pat["identifier"][0]["value"] == pid
            obs = list(fhir.search("Observation", {"subject": f"Patient/{pat['id']}", "_count": "20"}))
            by_text = {o["code"]["text"]: o for o in obs}
            assert set(by_text) == {"Alter (Jahre)", "Gewicht"}
            assert by_text["Gewicht"]["valueQuantity"] == {"value": 150 + 10 * i, "unit": "[lb_av]",
                                                           "system": "http://unitsofmeasure.org", "code": "[lb_av]"}
            assert by_text["Alter (Jahre)"]["code"]["coding"][0]["code"] == "30525-0"
        report = json.loads(s3.get_bytes(BUCKET, "fhir-import/clinical.import-report.json"))
        assert report["status"] == "imported" and report["resources_written"]["Patient"] == 4
        # the page shows the import report
        _after(d, lambda: d.find_element("id", "import-status").click(), "import status")
        assert ": imported" in d.find_element("id", "report").text
        d.save_screenshot(str(artifacts_dir / "mapping-editor-imported.png"))
        # console and network of our page
        assert browser.page_errors(d) == ([], [])
