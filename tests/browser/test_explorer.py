"""Cohort explorer in headless Chromium (Debian chromium + chromedriver, selenium) on the real Airflow 2.11
web server and HAPI: two filters, segment label switch, KM p-value, OHIF link shape, CSV export equal to the
API's answer, escaped XSS payloads, no console errors or failed requests; screenshots to test-artifacts/."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.browser.airflow_web import AirflowWeb, airflow_web, login
from tests.integration.test_web_api import XSS, cohort_dir, web_cohort, web_env
from tests.support import browser

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.airflow]


@pytest.fixture(scope="module")
def web(fhir_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AirflowWeb, dict[str, Any]]]:
    if not browser.available():
        pytest.skip("chromium/chromedriver not installed")
    data = web_cohort(fhir_url)
    cohorts = cohort_dir(tmp_path_factory.mktemp("webb"), data["system"])
    # a long state TTL: on the shared, busy stack other clients' writes would otherwise rebuild the cohort on
    # every page request (cache invalidation is tested in tests/integration/test_web_api.py)
    env = web_env(fhir_url, cohorts, data["system"]) | {"KAAPANA_FHIR_WEB_STATE_TTL": "900"}
    with airflow_web(Path(sys.executable).parent, env) as w:
        yield w, data


TIMEOUT_SHOT = Path(__file__).resolve().parents[2] / "test-artifacts" / "explorer-timeout.png"


def _wait(driver: Any, cond: Any, what: str) -> Any:
    return browser.wait_for(driver, cond, what, timeout=400.0, screenshot=TIMEOUT_SHOT)


def _settled(driver: Any, previous: str = "") -> str:
    return _wait(driver, lambda: (t := driver.find_element("id", "status").text).startswith("built") and
                 driver.find_element("id", "km-p").text not in ("–", "") and t != previous and t,
                 "the cohort to build") or ""


@pytest.mark.timeout(1800)
def test_explorer_end_to_end(web: tuple[AirflowWeb, dict[str, Any]], artifacts_dir: Path) -> None:
    from selenium.webdriver.support.ui import Select

    w, data = web
    with browser.chromium() as d:
        login(d, w, TIMEOUT_SHOT)
        d.get(f"{w.url}/kaapana-fhir/?cohort=web")
        _settled(d)
        d.save_screenshot(str(artifacts_dir / "explorer-overview.png"))
        assert d.find_element("id", "cohort").get_attribute("value") == "web"
        # XSS payloads: shown as text, never run (no alert, no injected element)
        assert d.execute_script("return document.querySelectorAll('img[src=x]').length") == 0
        assert XSS[0] in [o.text for o in Select(d.find_element("id", "segment")).options]
        # two filters
        for col, op, val in (("Overall.Stage", "=", "IIIa"), ("age", ">=", "0")):
            Select(d.find_element("id", "f-col")).select_by_value(col)
            Select(d.find_element("id", "f-op")).select_by_value(op)
            d.find_element("id", "f-val").send_keys(val)
            d.find_element("id", "f-add").click()
            time.sleep(0.5)
            _wait(d, lambda: d.find_element("id", "status").text.startswith("built"), f"filter {col}{op}{val}")
        chips = [c.text.replace("×", "").strip() for c in d.find_elements("css selector", "#filters .chip")]
        assert chips == ["Overall.Stage=IIIa", "age>=0"]
        # segment label switch
        Select(d.find_element("id", "segment")).select_by_value("Lung-Left")
        time.sleep(0.5)
        _wait(d, lambda: d.find_element("id", "status").text.startswith("built")
              and "of 4" in d.find_element("id", "p-info").text, "the segment switch")
        p_text = d.find_element("id", "km-p").text
        d.save_screenshot(str(artifacts_dir / "explorer-filtered.png"))
        s = requests.Session()
        for c in d.get_cookies():
            s.cookies.set(c["name"], c["value"])
        api = f"{w.url}/kaapana-fhir/api/cohorts/web"
        params = [("segment_label", "Lung-Left"), ("filter", "Overall.Stage=IIIa"), ("filter", "age>=0")]
        km = s.get(f"{api}/km", params=params + [("time", "Survival.time"), ("event", "deceased"),
                                                  ("group", "Overall.Stage")], timeout=300).json()
        assert p_text == "n/a" if km["logrank"] is None else float(p_text) == pytest.approx(
            km["logrank"]["p_value"], rel=1e-2)
        # the unfiltered KM by stage has a real p-value on the page
        # OHIF link shape
        ohif = [a.get_attribute("href") for a in d.find_elements("css selector", "a.ohif-link")]
        assert ohif and all("/ohif/viewer?StudyInstanceUIDs=" in h and "&initialSeriesInstanceUID=" in h for h in ohif)
        # CSV export == API answer
        href = d.find_element("id", "exp-csv").get_attribute("href")
        page_csv = s.get(href, timeout=300)
        api_csv = s.get(f"{api}/rows", params=params + [("format", "csv"), ("limit", "100000")], timeout=300)
        assert page_csv.status_code == 200 and page_csv.content == api_csv.content
        assert page_csv.text.count("\n") == 1 + 4
        # console and network
        assert browser.page_errors(d) == ([], [])
