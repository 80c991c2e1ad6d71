"""Retrieval API bench (issue 20): a 1,000-patient cohort, pages of 100 rows after the first load, through the
real Airflow 2.11 web server, measured with the API's own client (:class:`kaapana_fhir.web.client.ExplorerClient`).
Goal: < 200 ms per page (p95). The cohort is the compact synthetic set of ``tests/support/cohort_data.py``
(25 resources per patient: 6 clinical values, 2 segments of 6 features), loaded with parallel transaction chunks
(one patient never split across chunks, so every reference resolves inside its transaction).

``make bench`` runs :func:`run` (``--quick``: 100 patients); standalone: ``python tests/bench/bench_web.py
--patients N`` with ``FHIR_BASE_URL`` set prints one JSON line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from kaapana_fhir.clients.fhir import FhirClient  # noqa: E402
from kaapana_fhir.core import bundle  # noqa: E402
from kaapana_fhir.web.client import ExplorerClient  # noqa: E402
from tests.browser.airflow_web import PASSWORD, USER, airflow_web  # noqa: E402
from tests.integration.test_web_api import cohort_dir, web_env  # noqa: E402
from tests.support.cohort_data import patient_resources  # noqa: E402

PATIENTS_PER_CHUNK = 20  # 500 resources per transaction
GOAL_MS = 200.0


def load_cohort(fhir_url: str, n: int, *, workers: int = 3) -> dict[str, Any]:
    """n compact synthetic patients under a fresh identifier system, written as parallel transactions."""
    system = f"urn:bench:web:{uuid.uuid4().hex[:10]}"
    groups = [[r for i in range(s, min(s + PATIENTS_PER_CHUNK, n))
               for r in patient_resources(system, f"B{i:04d}", n_clinical=6, n_features=6, n_segments=2,
                                          text_overrides={"stage": "IIIa"} if i % 4 == 0 else None)]
              for s in range(0, n, PATIENTS_PER_CHUNK)]
    client = FhirClient(fhir_url, timeout=(5.0, 600.0))

    def write(group: list[dict[str, Any]]) -> int:
        return client.write_entries([bundle.put_entry(r) for r in group], chunk_size=len(group)).entries

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        written = sum(pool.map(write, groups))
    return {"system": system, "resources": written, "seconds": time.perf_counter() - t}


def _ms(values: list[float], q: float) -> float:
    s = sorted(values)
    return 1000.0 * s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def measure(fhir_url: str, patients: int, pages: int = 50) -> dict[str, Any]:
    load = load_cohort(fhir_url, patients)
    cohorts = cohort_dir(Path(tempfile.mkdtemp(prefix="kf-bench-web-")), load["system"])
    # a long state TTL: the shared server is written by others, which would otherwise rebuild the cohort
    # (the first build of 1,000 patients can take minutes on a loaded machine: long client and worker timeouts)
    env = web_env(fhir_url, cohorts, load["system"]) | {"KAAPANA_FHIR_WEB_STATE_TTL": "600",
                                                         "AIRFLOW__WEBSERVER__WEB_SERVER_WORKER_TIMEOUT": "3600"}
    with airflow_web(Path(sys.executable).parent, env) as w:
        api = f"{w.url}/kaapana-fhir/api"
        clients = {"session": ExplorerClient(api, session=w.session(), timeout=3600),
                   "basic auth": ExplorerClient(api, auth=(USER, PASSWORD))}
        c = clients["session"]
        t = time.perf_counter()
        first = c.page("web", limit=100)
        first_s = time.perf_counter() - t
        build_s = float(c.summary("web")["build_seconds"])
        total = int(first["total"])
        out: dict[str, Any] = {"patients": patients, "resources": load["resources"],
                               "load_fhir_s": round(load["seconds"], 1),
                               "load_resources_per_s": round(load["resources"] / load["seconds"]),
                               "rows": total, "first_page_s": round(first_s, 2), "cohort_build_s": round(build_s, 2),
                               "n": pages, "goal_ms": GOAL_MS}
        for name, client in clients.items():
            times = []
            for i in range(pages):
                t = time.perf_counter()
                p = client.page("web", offset=(i * 100) % max(total, 1), limit=100)
                times.append(time.perf_counter() - t)
                if len(p["rows"]) != min(100, total - (i * 100) % max(total, 1)):
                    raise AssertionError(f"page {i}: {len(p['rows'])} rows")
            key = name.replace(" ", "_")
            out[f"page_ms_p50_{key}"] = round(_ms(times, 0.5), 1)
            out[f"page_ms_p95_{key}"] = round(_ms(times, 0.95), 1)
        filt = []
        for _ in range(max(5, pages // 5)):
            t = time.perf_counter()
            c.page("web", limit=100, filters=["Overall.Stage=IIIa"], segment_label="GTV-1")
            filt.append(time.perf_counter() - t)
        out["filtered_page_ms_p50"] = round(_ms(filt, 0.5), 1)
        out["filtered_page_ms_p95"] = round(_ms(filt, 0.95), 1)
    out["load_avg"] = round(os.getloadavg()[0], 1)
    return out


def run(ctx: Any) -> list[Any]:
    from run import Row

    n = 100 if ctx.quick else int(os.environ.get("KAAPANA_FHIR_BENCH_WEB_PATIENTS", "1000"))
    m = measure(ctx.stack().fhir_url, n)
    loaded = f"(loaded, load avg {m['load_avg']})"
    rows = [Row("web", f"load {n} patients ({m['resources']:,} resources, 3 parallel transactions) into HAPI",
                m["load_resources_per_s"], "resources/s", note=f"{m['load_fhir_s']} s {loaded}"),
            Row("web", f"first page after start (cohort build, {m['rows']} rows)", m["first_page_s"], "s",
                note=f"of which cohort build {m['cohort_build_s']} s {loaded}")]
    for key in ("session", "basic_auth"):
        rows.append(Row("web", f"page of 100 rows, p50, {key.replace('_', ' ')} (n={m['n']})",
                        m[f"page_ms_p50_{key}"], "ms", note=loaded))
        rows.append(Row("web", f"page of 100 rows, p95, {key.replace('_', ' ')} (n={m['n']})",
                        m[f"page_ms_p95_{key}"], "ms", m[f"page_ms_p95_{key}"] / GOAL_MS, "p95 / goal 200 ms",
                        loaded))
    rows.append(Row("web", "filtered page (2 filters), p50", m["filtered_page_ms_p50"], "ms", note=loaded))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--pages", type=int, default=50)
    ap.add_argument("--own-hapi", action="store_true",
                    help="start a private HAPI (in-memory H2) instead of FHIR_BASE_URL; stopped by PID at the end")
    a = ap.parse_args()
    if a.own_hapi:
        from kaapana_fhir.dev import stack as devstack

        hapi = devstack.start_hapi(Path(tempfile.mkdtemp(prefix="kf-bench-web-hapi-")), deadline_s=900)
        try:
            out = measure(hapi.url, a.patients, a.pages) | {"hapi": "private"}
        finally:
            devstack.stop_pid(hapi.pid)
    else:
        fhir = os.environ.get("FHIR_BASE_URL")
        if not fhir:
            sys.stderr.write("bench_web: set FHIR_BASE_URL (source /tmp/brief/stack.env) or use --own-hapi\n")
            return 2
        out = measure(fhir, a.patients, a.pages) | {"hapi": "shared"}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0 if out["page_ms_p95_session"] < GOAL_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
