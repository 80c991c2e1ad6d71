"""Cohort bench: HAPI → cohort table vs raw paging; ViewDefinition flattening of the same resources by our
SQL-on-FHIR runner, fhirpathpy per-path evaluation and FHIR-PYrate; peak memory of a cohort build; dashboard
size and render time.

Per patient (as in issue 7): 20 clinical Observations, 107 radiomics feature Observations (+ 1 group,
1 BodyStructure), 1 ImagingStudy, 1 Condition = 132 resources. Patients loaded into HAPI (a project partition of
its own): ``$KAAPANA_FHIR_BENCH_COHORT_PATIENTS``, default 200 (26,400 resources), ``--quick`` 50 (report: 200).

What a full run costs (measured on the shared 2-core machine, issue 19):

* the issue's 1,000 patients (132,000 resources): loading alone took 29-39 min (37-75 resources/s with 2-3
  parallel loaders; HAPI resolves every transaction's ids with an OR query that H2 answers by scanning
  HFJ_RESOURCE, so loading slows down as the partition fills). Load once and measure again with
  ``KAAPANA_FHIR_BENCH_COHORT_TAG``. The in-memory H2 holds all of it in HAPI's heap: with the stack's
  ``-Xmx2g`` HAPI spent its time in full GCs, so start a HAPI of your own with a larger heap,
  ``_JAVA_OPTIONS=-Xmx8g kaapana-fhir stack up --state-dir DIR --services hapi``, and point
  ``FHIR_BASE_URL`` at it (``DICOMWEB_URL``, ``ORTHANC_URL``, ``S3_ENDPOINT_URL`` must be set too for
  ``run.py`` to use the environment's servers; this bench only uses HAPI).
* Each size fetches everything 4 times by paging (warm-up, raw, ours, the peak-RSS process) and 3 times by
  ``$export`` (warm-up, raw, ours), then Pathling starts Spark once. At 1,000 patients one paging fetch took
  72 s (161 requests) and one ``$export`` 1,109 s, of which 1,099 s was HAPI's job (its expand step looks
  resources up by ``_id`` with the same OR query as loading), so the three exports need about an hour.
* HAPI's dev app ships H2 2.4.240: with H2 2.3.232 a 1,000-entry page cost 130 s at 132k stored resources
  (its planner scanned HFJ_RES_VER for every resource loaded by ``(RES_ID, PARTITION_ID) IN (...)``).

HAPI → cohort is measured twice, each against the raw transfer of the same data in the same run: paging
searches vs the same searches with plain requests, and ``$export`` (``cohort --bulk``) vs kick-off, polling
and downloading the same export with plain requests (both poll every second). Where Pathling is installed
(``.ci/install-pathling.sh``) the exported NDJSON is also flattened by Pathling, next to our runner.

FHIR-PYrate (PyPI ``fhir-pyrate``) runs in a venv of its own that this bench creates on first use
(``$XDG_CACHE_HOME/kaapana-fhir/bench/fhir-pyrate-<version>``), so its pins never touch the project venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from kaapana_fhir.clients.fhir import FhirClient  # noqa: E402 - after the sys.path entry above
from kaapana_fhir.clients.fhir_bulk import ExportPolicy  # noqa: E402
from kaapana_fhir.core import bundle  # noqa: E402
from kaapana_fhir.core.cohort import report as R  # noqa: E402
from kaapana_fhir.core.cohort import tables as C  # noqa: E402
from kaapana_fhir.core.cohort.views import load_view, run_view, shipped_views  # noqa: E402
from kaapana_fhir.core.sof import compile_view  # noqa: E402
from kaapana_fhir.flows.cohort.flow import RELATED, build_cohort, load_views  # noqa: E402
from tests.support.cohort_data import cohort_resources  # noqa: E402

PYRATE_VERSION = "0.2.6"
#: resources of this many patients are flattened by all three engines (the slow ones set the size)
COMPARE_PATIENTS = 20
#: read timeout of the bench's FHIR clients: a busy shared HAPI can take minutes for a 1,000-entry page
TIMEOUT = (5.0, 900.0)


def _raw_paging(url: str, system: str, count: int, batch: int) -> tuple[float, int, int]:
    """The same searches with plain requests (sequential, JSON decoded, no flattening).
    Returns (seconds, resources, requests)."""
    s = requests.Session()
    s.headers["Accept"] = "application/fhir+json"
    t = time.perf_counter()
    n = 0
    reqs = 0

    def pages(first_url: str, params: dict | None) -> list[dict]:
        nonlocal n, reqs
        out = []
        b = s.get(first_url, params=params, timeout=900).json()
        reqs += 1
        while True:
            entries = b.get("entry", [])
            n += len(entries)
            out.extend(e["resource"] for e in entries)
            nxt = next((lnk["url"] for lnk in b.get("link", []) if lnk.get("relation") == "next"), None)
            if not nxt:
                return out
            b = s.get(nxt, timeout=900).json()
            reqs += 1

    patients = pages(f"{url}/Patient", {"identifier": f"{system}|", "_count": count})
    refs = [f"Patient/{p['id']}" for p in patients]
    for rtype, param in RELATED:
        for i in range(0, len(refs), batch):
            pages(f"{url}/{rtype}", {param: ",".join(refs[i:i + batch]), "_count": count})
    return time.perf_counter() - t, n, reqs


def _raw_export(url: str, types: list[str], poll_s: float = 1.0) -> tuple[float, float, int]:
    """``$export`` with plain requests: kick-off, poll every ``poll_s``, download and JSON-decode every line.
    Returns (seconds in all, seconds until the manifest, resources)."""
    s = requests.Session()
    t = time.perf_counter()
    r = s.get(f"{url}/$export", params={"_type": ",".join(types), "_outputFormat": "application/fhir+ndjson"},
              headers={"Prefer": "respond-async", "Accept": "application/fhir+json"}, timeout=900)
    r.raise_for_status()
    status = r.headers["Content-Location"]
    while True:
        r = s.get(status, headers={"Accept": "application/json"}, timeout=900)
        if r.status_code == 200:
            break
        r.raise_for_status()
        time.sleep(poll_s)
    job_s = time.perf_counter() - t
    n = 0
    for item in r.json()["output"]:
        with s.get(item["url"], headers={"Accept": "application/fhir+ndjson"}, stream=True, timeout=900) as f:
            f.raise_for_status()
            for line in f.iter_lines():
                if line.strip():
                    json.loads(line)
                    n += 1
    return time.perf_counter() - t, job_s, n


def _flatten_rate(resources: list[dict[str, Any]], engine: str) -> tuple[float, int, float]:
    """(resources/s wall clock, rows, resources/s of this process's CPU time) of the shipped views over
    ``resources`` (rows as tuples, as the cohort flow keeps them). The CPU-time rate is what the code does
    when it has a core to itself; on a busy machine the wall-clock rate is much lower."""
    views = [compile_view(load_view(n), engine=engine) for n in shipped_views()]  # type: ignore[arg-type]
    by_type: dict[str, list[Any]] = {}
    for v in views:
        by_type.setdefault(v.resource, []).append(v)
    t = time.perf_counter()
    c = time.process_time()
    rows = 0
    for r in resources:
        for v in by_type.get(r["resourceType"], ()):
            rows += len(v.tuples(r))
    cpu = time.process_time() - c
    return len(resources) / (time.perf_counter() - t), rows, len(resources) / max(cpu, 1e-9)


# FHIR-PYrate: the same columns as our views (per type), from Bundles in memory (no server)
_PYRATE = """
import json, sys, time
from fhir_pyrate import Pirate
from fhir_pyrate.util.fhirobj import FHIRObj
res = json.load(open(sys.argv[1]))
paths = {
 "Patient": [("id", "id"), ("identifier_system", "identifier.first().system"),
             ("patient_id", "identifier.first().value"), ("gender", "gender"), ("birth_date", "birthDate"),
             ("deceased", "deceasedBoolean")],
 "Observation": [("id", "id"), ("patient", "subject.reference"), ("code", "code.coding.first().code"),
                 ("system", "code.coding.first().system"), ("text", "code.text"), ("value", "valueQuantity.value"),
                 ("unit", "valueQuantity.code"), ("segment", "focus.reference"), ("study", "derivedFrom.reference"),
                 ("image_type", "method.coding.first().code"), ("status", "status"),
                 ("category", "category.coding.code.first()")],
 "Condition": [("id", "id"), ("patient", "subject.reference"), ("text", "code.text"),
               ("code", "code.coding.first().code"), ("onset", "onsetDateTime")],
 "ImagingStudy": [("id", "id"), ("patient", "subject.reference"), ("series", "series.uid"),
                  ("modality", "series.modality.code")],
 "BodyStructure": [("id", "id"), ("patient", "patient.reference"), ("label", "description")],
}
p = Pirate(base_url="http://localhost/fhir", auth=None, num_processes=1, silence_fhirpath_warning=True)
by_type = {}
for r in res:
    by_type.setdefault(r["resourceType"], []).append(r)
t = time.perf_counter()
n = 0
for rtype, items in by_type.items():
    bundles = [FHIRObj(**{"resourceType": "Bundle", "type": "searchset",
                          "entry": [{"resource": r} for r in items[i:i + 1000]]})
               for i in range(0, len(items), 1000)]
    df = p.bundles_to_dataframe(bundles, fhir_paths=paths[rtype])
    n += len(df)
print(json.dumps({"seconds": time.perf_counter() - t, "rows": n}))
"""


def _pyrate_python() -> tuple[str | None, str]:
    """The interpreter of FHIR-PYrate's own venv (created and filled with pip on first use)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kaapana-fhir" / "bench"
    venv = cache / f"fhir-pyrate-{PYRATE_VERSION}"
    py = venv / "bin" / "python"
    if py.is_file() and subprocess.run([str(py), "-c", "import fhir_pyrate"], capture_output=True,
                                       check=False).returncode == 0:
        return str(py), ""
    cache.mkdir(parents=True, exist_ok=True)
    steps = ([sys.executable, "-m", "venv", "--clear", str(venv)],
             [str(py), "-m", "pip", "install", "-q", f"fhir-pyrate=={PYRATE_VERSION}"])
    for cmd in steps:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        if res.returncode != 0:
            return None, f"{' '.join(cmd[:4])} failed: {res.stderr.strip()[-300:]}"
    return str(py), ""


def _pyrate_rate(resources: list[dict[str, Any]], workdir: Path) -> tuple[float | None, str]:
    py, why = _pyrate_python()
    if py is None:
        return None, why
    src = workdir / "pyrate-resources.json"
    src.write_text(json.dumps(resources), encoding="utf-8")
    res = subprocess.run([py, "-c", _PYRATE, str(src)], capture_output=True, text=True, timeout=3600, check=False)
    if res.returncode != 0:
        return None, f"fhir-pyrate run failed: {res.stderr.strip()[-300:]}"
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return len(resources) / float(out["seconds"]), f"{out['rows']:,} rows"


_RSS_CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.core.cohort import tables as C
from kaapana_fhir.flows.cohort.flow import build_cohort
t = time.perf_counter()
b = build_cohort(FhirClient(sys.argv[1], timeout=(5.0, 900.0)), patient_search=sys.argv[2], count=1000)
C.write_table(b.cohort.table, sys.argv[4])
secs = time.perf_counter() - t
# VmHWM is this process's own peak; ru_maxrss keeps the parent's peak across fork/exec on Linux.
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(json.dumps({"maxrss_kb": hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": secs, "patients": len(b.cohort.patients),
                  "resources": sum(b.fetched.count().values())}))
"""


_OFFLINE_CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
from kaapana_fhir.core.cohort import tables as C
from kaapana_fhir.flows.cohort.flow import _Flattener, load_views
from tests.support.cohort_data import patient_resources
n = int(sys.argv[1])
flat = _Flattener(load_views())
t = time.perf_counter()
page = []
for i in range(n):  # resources arrive page by page (1,000 a page), as from a FHIR search or NDJSON
    page.extend(patient_resources("urn:bench:offline", f"P{i:04d}", n_clinical=20, n_features=107, n_segments=1))
    if len(page) >= 1000:
        flat.feed(page)
        page = []
flat.feed(page)
cohort = C.build_cohort(flat.rows)
C.write_table(cohort.table, sys.argv[3])
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(json.dumps({"maxrss_kb": hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": time.perf_counter() - t, "flatten_seconds": flat.seconds,
                  "flatten_cpu_seconds": flat.cpu_seconds,
                  "resources": flat.resources, "patients": len(cohort.patients)}))
"""


def offline_peak(n: int, out: Path) -> dict[str, Any]:
    """Peak RSS (own process) of flatten + join + Parquet for ``n`` synthetic patients streamed in pages
    (no server: what the cohort code itself holds)."""
    res = subprocess.run([sys.executable, "-c", _OFFLINE_CHILD, str(n), str(HERE.parents[1]), str(out)],
                         capture_output=True, text=True, timeout=3600, check=True)
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def _cohort_peak(url: str, search: str, out: Path) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-c", _RSS_CHILD, url, search, str(HERE.parents[1]), str(out)],
                         capture_output=True, text=True, timeout=3600, check=True)
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def run(ctx):
    from run import Row

    root = ctx.stack().fhir_url
    n = 50 if ctx.quick else int(os.environ.get("KAAPANA_FHIR_BENCH_COHORT_PATIENTS") or 200)
    tag = uuid.uuid4().hex[:8]
    # KAAPANA_FHIR_BENCH_COHORT_TAG: measure data an earlier run (or a loader) left in partition
    # bench-cohort-<tag> with system urn:bench:cohort:<tag> and the same size, instead of loading it again
    reuse = os.environ.get("KAAPANA_FHIR_BENCH_COHORT_TAG", "")
    tag = reuse or tag
    system = f"urn:bench:cohort:{tag}"
    client = FhirClient(root, timeout=TIMEOUT).for_project(f"bench-cohort-{tag}")
    url = client.base_url  # a partition of its own: $export takes exactly the bench's data
    res = cohort_resources(system, n, n_clinical=20, n_features=107, n_segments=1)
    t = time.perf_counter()
    if not reuse:
        client.write_entries([bundle.put_entry(r) for r in res], chunk_size=500)
    load_s = time.perf_counter() - t
    views = load_views()
    search = f"Patient?identifier={system}|"
    # warm-up (JIT of HAPI's query plans), then measure both in the same run
    build_cohort(client, views=views, patient_search=search, count=1000)
    raw_s, raw_n, raw_reqs = _raw_paging(url, system, 1000, 100)
    out = Path(tempfile.mkdtemp(prefix="kf-bench-cohort-"))
    t = time.perf_counter()
    built = build_cohort(FhirClient(url, timeout=TIMEOUT), views=views, patient_search=search, count=1000)
    C.write_table(built.cohort.table, out / "cohort.parquet")
    ours_s = time.perf_counter() - t
    nres = sum(built.fetched.count().values())
    assert nres == raw_n, (nres, raw_n)
    table = built.cohort.table
    n = len(built.cohort.patients)  # reused data: the patients that are there
    rows_out = [] if reuse else [
        Row("cohort", f"load {n} patients ({len(res):,} resources) into HAPI", len(res) / load_s, "resources/s")]
    rows_out += [
        Row("cohort", f"HAPI → cohort table by paging, {n} patients ({nres:,} resources)", ours_s, "s",
            raw_s / ours_s, "raw paging of the same searches / ours (goal >= 0.9)",
            f"table {table.shape[0]}x{table.shape[1]}; raw {raw_s:.1f}s in {raw_reqs} requests "
            f"({raw_s / max(raw_reqs, 1):.2f}s each); load avg {os.getloadavg()[0]:.1f}"),
    ]
    # $export: raw (plain requests) vs cohort --bulk, same polling cadence, one warm-up export first
    types = sorted({str(v.resource) for v in views.values()})
    policy = ExportPolicy(min_poll_interval=1.0, max_poll_interval=1.0, deadline=3600)
    build_cohort(FhirClient(url, timeout=TIMEOUT), views=views, bulk_folder=out / "export-warmup",
                 bulk_policy=policy)
    raw_bulk_s, raw_job_s, raw_bulk_n = _raw_export(url, types)
    t = time.perf_counter()
    bulk = build_cohort(FhirClient(url, timeout=TIMEOUT), views=views, bulk_folder=out / "export",
                        bulk_policy=policy)
    C.write_table(bulk.cohort.table, out / "cohort-bulk.parquet")
    bulk_s = time.perf_counter() - t
    bulk_n = sum(bulk.fetched.count().values())
    assert bulk_n == raw_bulk_n == nres, (bulk_n, raw_bulk_n, nres)
    rows_out.append(Row("cohort", f"HAPI → cohort table by $export (cohort --bulk), {n} patients ({bulk_n:,} "
                                  "resources)", bulk_s, "s", raw_bulk_s / bulk_s,
                        "raw $export (kick-off, poll, download, decode) / ours (goal >= 0.9)",
                        f"raw {raw_bulk_s:.1f}s of which {raw_job_s:.1f}s HAPI's export job; "
                        f"paging/$export time {ours_s / bulk_s:.2f}; load avg {os.getloadavg()[0]:.1f}"))
    # the same exported NDJSON flattened by our runner and by Pathling (Spark, own venv), when installed
    from kaapana_fhir.flows.cohort.flow import flatten_ndjson
    from kaapana_fhir.flows.cohort.pathling_engine import PathlingHome, PathlingUnavailable

    t = time.perf_counter()
    flatten_ndjson(out / "export", views)
    nd_ours_s = time.perf_counter() - t
    try:
        PathlingHome.find()
        t = time.perf_counter()
        flatten_ndjson(out / "export", views, engine="pathling")
        pl_s = time.perf_counter() - t
        rows_out.append(Row("cohort", f"flatten exported NDJSON ({bulk_n:,} resources), Pathling 9.4 on Spark "
                                      "(local[2], incl. JVM start)", bulk_n / pl_s, "resources/s", pl_s / nd_ours_s,
                            "Pathling seconds / ours (>1: ours faster)",
                            f"ours {bulk_n / nd_ours_s:,.0f}/s incl. NDJSON parsing; Pathling {pl_s:.1f}s"))
    except PathlingUnavailable as exc:
        rows_out.append(Row("cohort", "flatten exported NDJSON, Pathling", float("nan"), "resources/s",
                            note=str(exc)[:120]))
    peak = _cohort_peak(url, search, out / "peak.parquet")
    rows_out.append(Row("cohort", f"peak RSS of a cohort build, {peak['patients']} patients "
                                  f"({peak['resources']:,} resources)", peak["maxrss_kb"] / 1024, "MB",
                        note=f"separate process (VmHWM), {peak['seconds']:.1f}s; goal <= 400 MB"))
    off = offline_peak(n, out / "offline.parquet")
    rows_out.append(Row("cohort", f"peak RSS, flatten + join + Parquet of {off['patients']} patients streamed in "
                                  f"pages ({off['resources']:,} resources, no server)", off["maxrss_kb"] / 1024, "MB",
                        note=f"flattening {off['resources'] / off['flatten_seconds']:,.0f} resources/s wall clock, "
                             f"{off['resources'] / off['flatten_cpu_seconds']:,.0f}/s of CPU time; goal <= 400 MB"))
    # flattening only: our compiled runner over every resource, then all three engines on the same sample
    load = os.getloadavg()[0]
    ours_rate, nrows, ours_cpu = _flatten_rate(res, "auto")
    rows_out.append(Row("cohort", f"flatten, SQL-on-FHIR runner (compiled), {len(res):,} resources", ours_rate,
                        "resources/s", note=f"{len(shipped_views())} views, {nrows:,} rows; {ours_cpu:,.0f}/s of CPU "
                                            f"time; load avg {load:.1f}; goal >= 50,000"))
    per_patient = len(res) // n
    sample = res[: per_patient * min(n, COMPARE_PATIENTS)]
    ours_s_rate, _, ours_s_cpu = _flatten_rate(sample, "auto")
    fp_rate, _, fp_cpu = _flatten_rate(sample, "fhirpathpy")
    rows_out += [
        Row("cohort", f"flatten, SQL-on-FHIR runner (compiled), {len(sample):,} resources", ours_s_rate,
            "resources/s"),
        Row("cohort", f"flatten, fhirpathpy per path, same {len(sample):,} resources", fp_rate, "resources/s",
            ours_s_rate / fp_rate, "ours / fhirpathpy", f"CPU time: ours {ours_s_cpu:,.0f}/s, fhirpathpy "
                                                        f"{fp_cpu:,.0f}/s"),
    ]
    pyr_rate, note = _pyrate_rate(sample, out)
    if pyr_rate is None:
        rows_out.append(Row("cohort", "flatten, FHIR-PYrate", float("nan"), "resources/s", note=note))
    else:
        rows_out.append(Row("cohort", f"flatten, FHIR-PYrate {PYRATE_VERSION} bundles_to_dataframe, same "
                                      f"{len(sample):,} resources", pyr_rate, "resources/s",
                            ours_s_rate / pyr_rate, "ours / FHIR-PYrate", note))
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
