"""The README's demo command, end to end on a fresh state dir, run twice (no duplicates), then stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kaapana_fhir.dev import stack as devstack

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

REPO = Path(__file__).resolve().parents[2]


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


def test_demo_down_leaves_nothing_listening(demo_runs) -> None:
    state, *_ = demo_runs
    stack = devstack.Stack.load(state / "stack")
    assert stack is not None
    ports = [s.port for s in stack.services.values()]
    _run_demo(state, "--down")
    assert not any(devstack.port_open(p) for p in ports)
