"""Cohort bench: flatten N patients from HAPI into the cohort table vs raw paging of the same searches;
dashboard size and render time for 1,000 patients.

Per patient (as in issue 7): 20 clinical Observations, 107 radiomics feature Observations (+ 1 group,
1 BodyStructure), 1 ImagingStudy, 1 Condition. ``--quick``: 50 patients (report: 200).
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.core import bundle
from kaapana_fhir.core.cohort import report as R
from kaapana_fhir.core.cohort import tables as C
from kaapana_fhir.core.cohort.views import load_view, run_view, shipped_views
from kaapana_fhir.flows.cohort.flow import RELATED, fetch_and_flatten, load_views
from tests.support.cohort_data import cohort_resources


def _raw_paging(url: str, system: str, count: int, batch: int) -> tuple[float, int]:
    """The same searches with plain requests (sequential, JSON decoded, no flattening)."""
    s = requests.Session()
    s.headers["Accept"] = "application/fhir+json"
    t = time.perf_counter()
    n = 0

    def pages(first_url: str, params: dict | None) -> list[dict]:
        nonlocal n
        out = []
        b = s.get(first_url, params=params, timeout=300).json()
        while True:
            entries = b.get("entry", [])
            n += len(entries)
            out.extend(e["resource"] for e in entries)
            nxt = next((lnk["url"] for lnk in b.get("link", []) if lnk.get("relation") == "next"), None)
            if not nxt:
                return out
            b = s.get(nxt, timeout=300).json()

    patients = pages(f"{url}/Patient", {"identifier": f"{system}|", "_count": count})
    refs = [f"Patient/{p['id']}" for p in patients]
    for rtype, param in RELATED:
        for i in range(0, len(refs), batch):
            pages(f"{url}/{rtype}", {param: ",".join(refs[i:i + batch]), "_count": count})
    return time.perf_counter() - t, n


_PYRATE = """
import json, sys, time
from fhir_pyrate import Pirate
url, system = sys.argv[1], sys.argv[2]
p = Pirate(base_url=url, auth=None, num_processes=1, silence_fhirpath_warning=True, default_count=1000)
t = time.perf_counter()
n = 0
for rtype, param, paths in (
        ("Patient", "identifier", [("id", "id"), ("gender", "gender"), ("birth", "birthDate")]),
        ("Observation", "subject:Patient.identifier", [("id", "id"), ("patient", "subject.reference"),
         ("code", "code.coding.first().code"), ("text", "code.text"), ("value", "valueQuantity.value"),
         ("unit", "valueQuantity.code"), ("segment", "focus.reference"), ("image_type", "method.coding.first().code")]),
        ("Condition", "subject:Patient.identifier", [("id", "id"), ("patient", "subject.reference"), ("text", "code.text")]),
        ("ImagingStudy", "subject:Patient.identifier", [("id", "id"), ("patient", "subject.reference"),
         ("series", "series.uid")]),
        ("BodyStructure", "patient:Patient.identifier", [("id", "id"), ("label", "description")])):
    df = p.steal_bundles_to_dataframe(resource_type=rtype, request_params={param: system + "|", "_count": 1000},
                                      fhir_paths=paths)
    n += len(df)
print(json.dumps({"seconds": time.perf_counter() - t, "rows": n}))
"""


def _pyrate(url: str, system: str) -> tuple[float, int] | None:
    """FHIR-PYrate (PyPI fhir-pyrate) on the same server: ``$FHIR_PYRATE_PYTHON`` (a venv with fhir-pyrate;
    kept out of the project venv) or this interpreter when fhir_pyrate imports."""
    import importlib.util
    import json
    import os
    import subprocess

    py = os.environ.get("FHIR_PYRATE_PYTHON") or (sys.executable if importlib.util.find_spec("fhir_pyrate") else "")
    if not py:
        return None
    res = subprocess.run([py, "-c", _PYRATE, url, system], capture_output=True, text=True, timeout=3600, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"fhir-pyrate run failed: {res.stderr[-800:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return float(out["seconds"]), int(out["rows"])


def run(ctx):
    from run import Row

    url = ctx.stack().fhir_url
    n = 50 if ctx.quick else 1000
    system = f"urn:bench:cohort:{uuid.uuid4().hex[:8]}"
    client = FhirClient(url)
    res = cohort_resources(system, n, n_clinical=20, n_features=107, n_segments=1)
    t = time.perf_counter()
    client.write_entries([bundle.put_entry(r) for r in res], chunk_size=500)
    load_s = time.perf_counter() - t
    views = load_views()
    search = f"Patient?identifier={system}|"
    # warm-up (JIT of HAPI's query plans), then measure both in the same run
    fetch_and_flatten(client, views, patient_search=search, count=1000)
    raw_s, raw_n = _raw_paging(url, system, 1000, 100)
    t = time.perf_counter()
    fetched, rows = fetch_and_flatten(FhirClient(url), views, patient_search=search, count=1000)
    cohort = C.build_cohort(rows)
    out = Path(tempfile.mkdtemp(prefix="kf-bench-cohort-"))
    C.write_table(cohort.table, out / "cohort.parquet")
    ours_s = time.perf_counter() - t
    nres = sum(fetched.count().values())
    assert nres == raw_n, (nres, raw_n)
    t = time.perf_counter()
    seq_rows = {name: run_view(load_view(name), (r for d in fetched.resources.values() for r in d.values()))
                for name in shipped_views()}
    flatten_s = time.perf_counter() - t
    assert len(seq_rows["radiomics_feature"]) == n * 107
    rows_out = [
        Row("cohort", f"load {n} patients ({len(res):,} resources) into HAPI", len(res) / load_s, "resources/s"),
        Row("cohort", f"HAPI → cohort table, {n} patients ({nres:,} resources)", ours_s, "s",
            raw_s / ours_s, "raw paging of the same searches / ours (goal >= 0.8)",
            f"table {cohort.table.shape[0]}x{cohort.table.shape[1]}"),
        Row("cohort", "ViewDefinition flattening only (7 views, fhirpathpy)", nres / flatten_s, "resources/s"),
    ]
    pyr = _pyrate(url, system)
    if pyr is None:
        rows_out.append(Row("cohort", "FHIR-PYrate comparison", float("nan"), "s",
                            note="fhir-pyrate not installed (set FHIR_PYRATE_PYTHON)"))
    else:
        rows_out.append(Row("cohort", f"FHIR-PYrate steal_bundles_to_dataframe, same data ({pyr[1]:,} rows)", pyr[0], "s",
                            pyr[0] / ours_s, "FHIR-PYrate time / ours (>1: ours faster)",
                            "chained subject:Patient.identifier searches, 1 process"))
    # dashboard for 1,000 patients (in-memory resources; quick: 200)
    m = 200 if ctx.quick else 1000
    big = cohort_resources(f"{system}:report", m, n_clinical=20, n_features=107, n_segments=1)
    rows_big = {name: run_view(load_view(name), big) for name in shipped_views()}
    big_cohort = C.build_cohort(rows_big)
    t = time.perf_counter()
    html = R.render_cohort(big_cohort, title="bench")
    render_s = time.perf_counter() - t
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    rows_out += [Row("cohort", f"report size, {m} patients", len(html.encode()) / 1e6, "MB"),
                 Row("cohort", f"report render (Python), {m} patients", render_s, "s")]
    try:
        from tests.support import browser

        if browser.available():
            with browser.chromium() as d:
                t = time.perf_counter()
                d.get(path.as_uri())
                d.execute_script("return document.querySelectorAll('div.plot .main-svg').length")
                rows_out.append(Row("cohort", f"report load+plot in Chromium, {m} patients",
                                    time.perf_counter() - t, "s"))
    except ImportError:
        rows_out.append(Row("cohort", "report load in Chromium", float("nan"), "s", note="selenium not installed"))
    return rows_out
