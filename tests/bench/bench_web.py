"""Retrieval API bench: a 1,000-patient cohort, page of 100 rows, after the first load, through the real
Airflow 2.11 web server, measured with the API's own client (:class:`kaapana_fhir.web.client.ExplorerClient`).
Goal (issue 20): < 200 ms per page. ``--patients N`` to change the size. Needs FHIR_BASE_URL (a running HAPI)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from kaapana_fhir.web.client import ExplorerClient  # noqa: E402
from tests.browser.airflow_web import PASSWORD, USER, airflow_web  # noqa: E402
from tests.integration.test_web_api import cohort_dir, web_cohort, web_env  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--pages", type=int, default=30)
    a = ap.parse_args()
    fhir = os.environ.get("FHIR_BASE_URL")
    if not fhir:
        sys.stderr.write("bench_web: set FHIR_BASE_URL (source /tmp/brief/stack.env or make stack-up)\n")
        return 2
    t = time.perf_counter()
    data = web_cohort(fhir, a.patients)
    load_s = time.perf_counter() - t
    cohorts = cohort_dir(Path(tempfile.mkdtemp(prefix="kf-bench-web-")), data["system"])
    env = web_env(fhir, cohorts, data["system"]) | {"KAAPANA_FHIR_WEB_STATE_TTL": "5"}
    with airflow_web(Path(sys.executable).parent, env) as w:
        c = ExplorerClient(f"{w.url}/kaapana-fhir/api", auth=(USER, PASSWORD))
        t = time.perf_counter()
        first = c.page("web", limit=100)
        first_s = time.perf_counter() - t
        times = []
        for i in range(a.pages):
            t = time.perf_counter()
            p = c.page("web", offset=(i * 100) % max(first["total"], 1), limit=100)
            times.append(time.perf_counter() - t)
            assert len(p["rows"]) <= 100
        filt = []
        for _ in range(10):
            t = time.perf_counter()
            c.page("web", limit=100, filters=["Overall.Stage=IIIa"], segment_label="GTV-1")
            filt.append(time.perf_counter() - t)
    out = {"patients": a.patients, "rows": first["total"], "load_fhir_s": round(load_s, 1),
           "first_page_s": round(first_s, 2), "page_ms_median": round(1000 * statistics.median(times), 1),
           "page_ms_p95": round(1000 * sorted(times)[int(0.95 * len(times)) - 1], 1),
           "filtered_page_ms_median": round(1000 * statistics.median(filt), 1), "goal_ms": 200}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0 if out["page_ms_p95"] < 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
