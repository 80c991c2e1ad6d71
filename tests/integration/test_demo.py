"""The README's demo command, end to end on a fresh state dir, run twice (no duplicates); the printed explorer
and API URLs answer on the demo data with the printed login; then stopped, with nothing left listening."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from kaapana_fhir.dev import demo_web
from kaapana_fhir.dev import stack as devstack

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

REPO = Path(__file__).resolve().parents[2]
_STDOUT: dict[str, str] = {}  # state dir -> stdout of the second demo run


def _last_stdout(state: Path) -> str:
    return _STDOUT[str(state)]


def _run_demo(state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FHIR_BASE_URL", "DICOMWEB_URL",
                                                                     "S3_", "ORTHANC_URL"))}
    return subprocess.run([sys.executable, "-m", "kaapana_fhir.dev.demo", "--state-dir", str(state), *extra],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=1200)


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory, artifacts_dir: Path):
    state = tmp_path_factory.mktemp("demo")
    try:
        first = _run_demo(state)
        (artifacts_dir / "demo-first-run.txt").write_text(first.stdout + "\n--- stderr ---\n" + first.stderr)
        assert first.returncode == 0, first.stderr[-3000:]
        s1 = json.loads((state / "summary.json").read_text())
        second = _run_demo(state)
        assert second.returncode == 0, second.stderr[-3000:]
        _STDOUT[str(state)] = second.stdout
        s2 = json.loads((state / "summary.json").read_text())
        yield state, first, s1, s2
    finally:
        _run_demo(state, "--down")


def test_demo_summary_counts(demo_runs) -> None:
    _, first, s1, _ = demo_runs
    r = s1["resources"]
    assert r["Patient"] == 5 and r["ImagingStudy"] == 5 and r["Endpoint"] == 1
    assert r["Observation (radiomics)"] >= 5 * 107, "one 107-feature group per segment at least"
    assert r["Observation (clinical)"] >= 5 and r["Condition"] >= 5
    assert s1["cohort_rows"] >= 5 and s1["dataset_series"] == 5
    assert all(run["state"].endswith("success") for run in s1["dag_runs"])
    dag_ids = {run["dag_id"] for run in s1["dag_runs"]}
    assert dag_ids == {"dicom-to-fhir", "radiomics-to-fhir", "fhir-import-watcher", "fhir-table-import", "fhir-cohort"}
    out = first.stdout
    for needle in ("summary", "FHIR resources on the server", "dashboard:", "make demo-down", "cohort table:"):
        assert needle in out
    # the demo's sources agree: DICOM headers carry the clinical table's sex, so no Patient shows a conflict
    assert "differs" not in first.stdout + first.stderr


def test_demo_twice_gives_same_fhir_content(demo_runs) -> None:
    _, _, s1, s2 = demo_runs
    assert s2["resources"] == s1["resources"]
    assert s2["cohort_rows"] == s1["cohort_rows"]


def test_demo_dashboard_exists_and_is_self_contained(demo_runs) -> None:
    _, _, s1, _ = demo_runs
    html = Path(s1["report_html"]).read_text(encoding="utf-8")
    assert "<html" in html.lower() and "LUNG1-001" in html
    import re

    assert not re.search(r"<script[^>]+src=[\"']?https?:", html), "scripts must be inlined"
    assert not re.search(r"<link[^>]+href=[\"']?https?:", html), "styles must be inlined"


def _printed(out: str) -> dict[str, str]:
    explorer = re.search(r"^cohort explorer: (http://127\.0\.0\.1:\d+/kaapana-fhir/)$", out, re.M)
    api = re.search(r"^retrieval API:\s+(http://127\.0\.0\.1:\d+/kaapana-fhir/api)/cohorts/all/rows", out, re.M)
    login = re.search(r"login .*: user (\S+)\s+password (\S+)$", out, re.M)
    assert explorer and api and login, out[-2000:]
    return {"explorer": explorer.group(1), "api": api.group(1), "user": login.group(1), "password": login.group(2)}


def test_demo_prints_explorer_and_api_urls_that_answer(demo_runs) -> None:
    state, first, s1, s2 = demo_runs
    p = _printed(first.stdout)
    assert p["password"] not in json.dumps(s1), "the password is printed, not written to summary.json"
    assert s1["web_check"]["explorer_status"] == 200 and s1["web_check"]["api_rows"] >= 5
    # the second run reused the running server and printed the same login
    assert s2["web_pid"] == s1["web_pid"] and _printed(_last_stdout(state)) == p
    web = demo_web.running(state / "web")
    assert web is not None and web.explorer_url == p["explorer"]
    # explorer page: login required, 200 after login
    anon = requests.get(p["explorer"], allow_redirects=False, timeout=60)
    assert anon.status_code == 302 and "login" in anon.headers["Location"]
    session = web.session()
    assert web.password == p["password"]
    page = session.get(p["explorer"], timeout=60)
    assert page.status_code == 200 and "Cohort explorer" in page.text
    # API: the demo cohort's rows, with the printed login as HTTP basic auth (as a notebook or Grafana calls it)
    assert requests.get(f"{p['api']}/cohorts/all/rows", timeout=60).status_code == 401
    r = requests.get(f"{p['api']}/cohorts/all/rows", params={"limit": 100}, auth=(p["user"], p["password"]),
                     timeout=300)
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert body["total"] == s1["cohort_rows"]
    assert {row["patient_id"] for row in body["rows"]} == {f"LUNG1-{i:03d}" for i in range(1, 6)}
    assert any(row.get("shape_MeshVolume") for row in body["rows"]), "radiomics features joined"
    spec = requests.get(f"{p['api']}/openapi.yaml", auth=(p["user"], p["password"]), timeout=60)
    assert spec.status_code == 200 and "openapi" in spec.text


def test_demo_down_leaves_nothing_listening(demo_runs) -> None:
    state, *_ = demo_runs
    stack = devstack.Stack.load(state / "stack")
    web = demo_web.AirflowWeb.load(state / "web")
    assert stack is not None and web is not None
    ports = [s.port for s in stack.services.values()] + [web.port]
    _run_demo(state, "--down")
    assert not any(devstack.port_open(p) for p in ports)
    assert not Path(f"/proc/{web.pid}").exists(), "the web server's process is gone"
