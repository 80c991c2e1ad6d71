"""The cohort dashboard in a real browser: headless Debian Chromium driven by Selenium + chromedriver."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.core import bundle
from kaapana_fhir.core.cohort import report as R
from kaapana_fhir.core.cohort import tables as C
from kaapana_fhir.core.cohort.views import load_view, run_view, shipped_views
from kaapana_fhir.flows.cohort.report import data_from_fhir, write_report
from tests.support import browser
from tests.support.cohort_data import cohort_resources, patient_resources

pytestmark = [pytest.mark.integration, pytest.mark.browser]

XSS_SCRIPT = "<script>window.__pwned = 1</script>"
XSS_IMG = '"><img src=x onerror="window.__pwned = 2">'


@pytest.fixture(scope="module")
def driver() -> Any:
    if not browser.available():
        pytest.fail("Debian chromium / chromium-driver are not installed (/usr/bin/chromium, /usr/bin/chromedriver)")
    with browser.chromium() as d:
        yield d


def _cohort(resources: list[dict[str, Any]]) -> C.Cohort:
    return C.build_cohort({n: run_view(load_view(n), resources) for n in shipped_views()})


def _open(driver: Any, path: Path) -> dict[str, Any]:
    """Load the file; return console errors, requests and failures, plot counts and load time."""
    driver.get("about:blank")
    driver.get_log("browser")
    driver.get_log("performance")
    t = time.perf_counter()
    driver.get(path.resolve().as_uri())
    for _ in range(100):
        if driver.execute_script("return document.readyState") == "complete":
            break
        time.sleep(0.1)
    seconds = time.perf_counter() - t
    console = [e for e in driver.get_log("browser") if e.get("level") in ("SEVERE", "WARNING")]
    requested, failed = browser.network_events(driver)
    return {"console": console, "requested": requested, "failed": failed, "seconds": seconds,
            "plots": driver.execute_script("return document.querySelectorAll('div.plot[data-fig]').length"),
            "rendered": driver.execute_script("return document.querySelectorAll('div.plot .main-svg').length"),
            "empty": driver.execute_script(
                "return Array.from(document.querySelectorAll('div.plot[data-fig]'))"
                ".filter(function(d){return !d.querySelector('svg.main-svg, canvas')}).length")}


def _assert_clean(page: dict[str, Any], path: Path) -> None:
    assert page["console"] == [], page["console"]
    assert page["failed"] == [], page["failed"]
    foreign = [u for u in page["requested"] if not u.startswith(("file://", "data:", "about:"))]
    assert foreign == [], f"network fetches: {foreign}"
    assert page["empty"] == 0, "every plot container has an SVG/canvas"


def test_demo_report_renders_offline_and_screenshot(driver: Any, fhir: FhirClient, tmp_path: Path,
                                                    artifacts_dir: Path) -> None:
    system = f"urn:test:report:{uuid.uuid4().hex[:8]}"
    res = cohort_resources(system, 40, n_clinical=7, n_features=30, n_segments=2)
    fhir.write_entries([bundle.put_entry(r) for r in res], chunk_size=500)
    data = data_from_fhir(fhir, patient_search=f"Patient?identifier={system}|", title="Demo cohort (synthetic)")
    out = tmp_path / "report.html"
    info = write_report(data, out, group_by="Overall.Stage")
    page = _open(driver, out)
    _assert_clean(page, out)
    assert page["plots"] >= 10 and page["rendered"] >= page["plots"]
    text = driver.find_element("tag name", "body").text
    for heading in ("Cohort counts", "Clinical variables", "Radiomics features", "DICOM data completeness",
                    "Feature by Overall.Stage", "Feature vs Survival.time"):
        assert heading in text
    assert "No data" not in text
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(height + 200, 16000))
    time.sleep(0.8)
    shot = artifacts_dir / "cohort_report.png"
    driver.save_screenshot(str(shot))
    driver.set_window_size(1400, 1000)
    # the feature menu switches the box plot to another feature
    idx = _box_index(driver)
    visible = ("var g=document.querySelectorAll('div.plot[data-fig]')[arguments[0]];"
               "return g.data.findIndex(function(t){return t.visible===true})")
    before = driver.execute_script(visible, idx)
    driver.execute_script("var g=document.querySelectorAll('div.plot[data-fig]')[arguments[0]];"
                          "Plotly.restyle(g, {visible: g.data.map(function(t,i){return i===1})})", idx)
    after = driver.execute_script(visible, idx)
    assert (before, after) == (0, 1)
    assert shot.stat().st_size > 10_000 and info.bytes < 15_000_000


def _box_index(driver: Any) -> int:
    return int(driver.execute_script(
        "return Array.from(document.querySelectorAll('div.plot[data-fig]'))"
        ".findIndex(function(g){return g.data && g.data[0] && g.data[0].type==='box'})"))


def test_data_text_is_escaped_and_nothing_executes(driver: Any, tmp_path: Path, artifacts_dir: Path) -> None:
    res = patient_resources("urn:test:xss", XSS_SCRIPT, n_features=4,
                            text_overrides={"histology": XSS_IMG, "stage": XSS_SCRIPT, "series_description": XSS_IMG,
                                            "study_description": XSS_SCRIPT, "segment_label": XSS_IMG})
    res += patient_resources("urn:test:xss", XSS_IMG, n_features=4, text_overrides={"histology": XSS_SCRIPT})
    out = tmp_path / "xss.html"
    out.write_text(R.render_cohort(_cohort(res), title=XSS_IMG, source=XSS_SCRIPT), encoding="utf-8")
    page = _open(driver, out)
    _assert_clean(page, out)
    assert driver.execute_script("return typeof window.__pwned") == "undefined"
    assert driver.execute_script("return document.querySelectorAll('img').length") == 0
    scripts = driver.execute_script("return Array.from(document.scripts).map(function(s){return s.type||'js'})")
    assert scripts.count("js") == 2, "only plotly.js and the boot script are executable scripts"
    body = driver.find_element("tag name", "body").text
    assert XSS_IMG in body or XSS_IMG in driver.title, "the values are shown as text"
    labels = driver.execute_script("return Array.from(document.querySelectorAll('.main-svg text'))"
                                   ".map(function(t){return t.textContent}).join('\\n')")
    assert XSS_SCRIPT in labels and XSS_IMG in labels, "plot labels show the literal text"
    driver.save_screenshot(str(artifacts_dir / "cohort_report_escaping.png"))


@pytest.mark.parametrize("case", ["one-patient", "no-radiomics", "no-clinical"])
def test_small_and_partial_cohorts(driver: Any, tmp_path: Path, case: str) -> None:
    if case == "one-patient":
        res = patient_resources("urn:test:small", "ONE", n_features=5)
    elif case == "no-radiomics":
        res = [r for r in cohort_resources("urn:test:small", 5)
               if r["resourceType"] != "BodyStructure" and "radiomics" not in str(r.get("meta"))]
    else:
        res = [r for r in cohort_resources("urn:test:small", 5, n_features=5)
               if r["resourceType"] in ("Patient", "ImagingStudy", "BodyStructure")
               or "radiomics" in str(r.get("meta"))]
    out = tmp_path / f"{case}.html"
    out.write_text(R.render_cohort(_cohort(res)), encoding="utf-8")
    page = _open(driver, out)
    _assert_clean(page, out)
    text = driver.find_element("tag name", "body").text
    assert page["rendered"] >= page["plots"] >= 2
    if case == "no-radiomics":
        assert "No data: no radiomics feature Observations" in text
    if case == "no-clinical":
        assert "No data: no clinical variables" in text
    if case == "one-patient":
        assert "Patients" in text and "No data: fewer than 3 segments" in text
