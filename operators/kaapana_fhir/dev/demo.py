"""The demo: one command from a fresh machine to a joined multimodal cohort (``make demo``).

1. start the local stack (HAPI FHIR on a file-backed H2, Orthanc, S3) under ``--state-dir``;
2. derive the demo dataset (CT + tumour SEG per patient from pyradiomics' lung1 crop; synthetic Lung1 CSV);
3. run the real DAGs in Airflow as the platform would trigger them: DICOM stored in Orthanc → Kaapana
   trigger rules → ``dicom-to-fhir`` and ``radiomics-to-fhir``; the CSV put into the bucket → ``fhir-import-watcher``
   → ``fhir-table-import``; then ``fhir-cohort`` → cohort table + dashboard;
4. start the Airflow 2.11 web server with our plugin (cohort explorer and retrieval API) on 127.0.0.1 with a demo
   login generated per demo, check that both answer on the demo data, and leave it running like the stack;
5. print a summary with both URLs and the login. ``--down`` stops everything the demo started (by PID).

Running it twice gives the same FHIR content (deterministic ids; PUT upserts).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from kaapana_fhir.dev import stack as devstack
from kaapana_fhir.exceptions import KaapanaFhirError

log = logging.getLogger("kaapana_fhir.dev.demo")

BUCKET = "project-admin"
DEMO_TIMEZONE = "Europe/Berlin"
PREFIX = "fhir-import/"
SUMMARY_TYPES = ("Patient", "ImagingStudy", "Endpoint", "Device", "BodyStructure", "Observation", "Condition")


def _dags_folder() -> Path:
    env = os.environ.get("KAAPANA_FHIR_DAGS")
    if env:
        return Path(env)
    return devstack.repo_root() / "dags"


class Progress:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.steps: list[tuple[str, float]] = []

    def step(self, name: str) -> _Step:
        return _Step(self, name)


class _Step:
    def __init__(self, p: Progress, name: str) -> None:
        self.p, self.name = p, name

    def __enter__(self) -> _Step:
        self.t = time.perf_counter()
        log.info("==> %s", self.name)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        secs = time.perf_counter() - self.t
        self.p.steps.append((self.name, secs))
        if exc is None:
            log.info("<== %s done in %.1fs", self.name, secs)


def connections(stack: devstack.Stack) -> dict[str, str]:
    s3 = stack.services["s3"]
    return {
        "AIRFLOW_CONN_FHIR_DEFAULT": json.dumps({"conn_type": "http", "host": stack.fhir_url}),
        "AIRFLOW_CONN_DICOMWEB_DEFAULT": json.dumps({"conn_type": "http", "host": stack.dicomweb_url}),
        "AIRFLOW_CONN_S3_DEFAULT": json.dumps({"conn_type": "aws", "login": s3.extra["access_key"],
                                               "password": s3.extra["secret_key"],
                                               "extra": {"endpoint_url": s3.url, "region_name": "us-east-1"}}),
    }


def run(state_dir: Path, n_patients: int = 5, out: Any = sys.stdout) -> dict[str, Any]:
    """Run the whole demo; returns the summary dict (also printed)."""
    prog = Progress()
    state_dir = state_dir.resolve()
    with prog.step("start the local stack (HAPI FHIR, Orthanc, S3)"):
        stack = devstack.up(state_dir / "stack", persistent=True, progress=lambda m: log.info("    %s", m))
    os.environ["AIRFLOW_WORKFLOW_DIR"] = str(state_dir / "workflows")
    for k, v in stack.env().items():
        os.environ[k] = v
    # the web server starts meanwhile (its own process and SQLite DB; needs only the stack's URLs)
    from concurrent.futures import ThreadPoolExecutor

    web_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="demo-web")
    web_started = web_pool.submit(web_server, state_dir, stack, dict(os.environ))
    web_pool.shutdown(wait=False)
    with prog.step("prepare Airflow (SQLite under the demo dir)"):
        from kaapana_fhir.dev import airflow_runner as airflow_runner

        airflow_runner.configure(state_dir / "airflow", _dags_folder(), connections(stack))
        airflow_runner.dagbag()

    from kaapana_fhir.clients.dicomweb import DicomWeb
    from kaapana_fhir.clients.fhir import FhirClient
    from kaapana_fhir.clients.s3 import ObjectStore
    from kaapana_fhir.dev.demo_data import make_demo_dataset
    from kaapana_fhir.dev.synthetic_tables import synthetic_lung1_csv
    from kaapana_fhir.kaapana.trigger_rules import build_confs, load_rules

    fhir = FhirClient(stack.fhir_url)
    pacs = DicomWeb(stack.dicomweb_url)
    s3svc = stack.services["s3"]
    store = ObjectStore(s3svc.url, s3svc.extra["access_key"], s3svc.extra["secret_key"])

    with prog.step(f"derive the demo dataset ({n_patients} patients: CT + SEG, clinical CSV)"):
        manifest = make_demo_dataset(state_dir / "data", n_patients=n_patients)
        patient_ids = [p["patient_id"] for p in manifest["patients"]]
        csv_text = synthetic_lung1_csv(patient_ids, seed=0)
        # the scanner knows the same sex as the clinical table (else every Patient shows a source conflict)
        dicom_sex = {r["PatientID"]: {"male": "M", "female": "F"}.get(r["gender"], "O")
                     for r in csv.DictReader(io.StringIO(csv_text))}

    with prog.step("send DICOM to Orthanc (STOW-RS), as a modality would send to Kaapana"):
        import pydicom

        n_inst = 0
        for p in manifest["patients"]:
            files = sorted(Path(p["ct_dir"]).glob("*.dcm")) + [Path(p["seg_file"])]
            datasets = [pydicom.dcmread(f) for f in files]
            for ds in datasets:
                ds.PatientSex = dicom_sex.get(p["patient_id"], "O")
            pacs.store(datasets)
            n_inst += len(files)
        log.info("    %d instances stored", n_inst)

    with prog.step("auto-trigger: match the shipped trigger rules against the incoming series"):
        rules = load_rules(sorted(_dags_folder().glob("*trigger_rule.json")))
        incoming = []
        for p in manifest["patients"]:
            incoming.extend(pacs.search_series(p["study_uid"], fields=("00080060",)))
        confs = build_confs(rules, incoming)
        log.info("    %d series → %s", len(incoming), {k: len(v) for k, v in confs.items()})

    for confs_of_dag in confs.values():  # site setting: the time zone of the (demo) modalities, which
        for conf in confs_of_dag:          # send no TimezoneOffsetFromUTC (0008,0201)
            conf.setdefault("workflow_form", {})["timezone"] = DEMO_TIMEZONE
    runs: list[Any] = []
    with prog.step("DAG dicom-to-fhir (Patient, ImagingStudy, Endpoint, Device)"):
        for conf in confs.get("dicom-to-fhir", []):
            runs.append(airflow_runner.run_dag("dicom-to-fhir", conf))
    with prog.step("DAG radiomics-to-fhir (pyradiomics per SEG segment → Observations)"):
        for conf in confs.get("radiomics-to-fhir", []):
            runs.append(airflow_runner.run_dag("radiomics-to-fhir", conf))

    with prog.step("upload the clinical CSV to the bucket; DAG fhir-import-watcher → fhir-table-import"):
        store.ensure_bucket(BUCKET)
        store.put_bytes(BUCKET, PREFIX + "lung1_clinical.csv", csv_text.encode("utf-8"), "text/csv")
        store.put_bytes(BUCKET, PREFIX + "lung1_clinical.preset", b"lung1\n", "text/plain")
        runs.append(airflow_runner.run_dag("fhir-import-watcher", {"bucket": BUCKET, "prefix": PREFIX}))
        runs.extend(airflow_runner.drain_triggered(["fhir-table-import"]))
        report_key = PREFIX + "lung1_clinical.import-report.json"
        info = store.head(BUCKET, report_key)
        if info is not None:
            rep = json.loads(store.get_bytes(BUCKET, report_key))
            log.info("    import report: %s", {k: rep.get(k) for k in ("rows_read", "resources") if k in rep})

    with prog.step("DAG fhir-cohort (views → cohort table → dataset → dashboard)"):
        cohort_run = airflow_runner.run_dag("fhir-cohort", {"bucket": BUCKET, "modality": "CT",
                                                            "dataset_name": "demo-cohort"})
        runs.append(cohort_run)
    query_x = next((v for k, v in cohort_run.xcoms.items() if k.startswith("fhir-query")), {}) or {}
    report_x = next((v for k, v in cohort_run.xcoms.items() if k.startswith("cohort-report")), {}) or {}

    counts = {t: fhir.count(t) for t in SUMMARY_TYPES}
    counts["Observation (radiomics)"] = fhir.count("Observation", {"_tag": "urn:kaapana-fhir:source|radiomics"})
    counts["Observation (clinical)"] = fhir.count("Observation", {"_tag": "urn:kaapana-fhir:source|clinical-table"})
    out_dir = Path(query_x.get("out_dir", "")) if query_x.get("out_dir") else None
    cohort_file = out_dir / "cohort.parquet" if out_dir else None
    head, rows = "", 0
    if cohort_file and cohort_file.is_file():
        import pandas as pd

        df = pd.read_parquet(cohort_file)
        rows = len(df)
        wanted = ("patient_id", "segment_label", "Histology", "Overall.Stage", "Survival.time",
                  "shape_MeshVolume", "firstorder_Mean")
        cols = [c for c in wanted if c in df.columns] or list(df.columns[:6])
        head = df[cols].head(8).to_string(index=False, float_format=lambda v: f"{v:.4g}")
    report_html = report_x.get("report") or (str(out_dir / "report.html") if out_dir else "")
    with prog.step("Airflow web server (started with the stack): explorer and API answer on the demo data"):
        web = web_started.result()
        web_check = check_web(web)
    total = time.perf_counter() - prog.t0
    summary = {
        "resources": counts, "cohort_rows": rows, "cohort_file": str(cohort_file or ""),
        "dataset_series": len(query_x.get("series_uids") or []) if isinstance(query_x.get("series_uids"), list)
        else query_x.get("series_uids"),
        "report_html": report_html, "fhir_url": stack.fhir_url,
        "orthanc_url": stack.services["orthanc"].extra["rest"], "seconds": round(total, 1),
        "explorer_url": web.explorer_url, "api_url": web.api_url, "web_user": web.user, "web_pid": web.pid,
        "web_check": web_check,
        "dag_runs": [{"dag_id": r.dag_id, "state": r.state, "seconds": round(r.seconds, 1)} for r in runs],
        "steps": [{"step": n, "seconds": round(s, 1)} for n, s in prog.steps],
    }
    (state_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary, head, state_dir, out, web.password)
    return summary


WEB_USER = "demo"


def web_env(stack: devstack.Stack) -> dict[str, str]:
    """What the explorer's API reads: the demo's HAPI (no partitions: the DAG runs wrote the default partition),
    project ``admin``, and DICOMweb links to the demo's Orthanc."""
    return {"FHIR_BASE_URL": stack.fhir_url, "KAAPANA_FHIR_PARTITIONING": "none", "KAAPANA_FHIR_PROJECTS": "admin",
            "KAAPANA_FHIR_PUBLIC_DICOMWEB_URL": stack.dicomweb_url}


def web_server(state_dir: Path, stack: devstack.Stack, base_env: dict[str, str]) -> Any:
    """The Airflow web server of the demo: reused when it still runs with the same FHIR server, else started with
    a new random password (``base_env``: a snapshot of the environment, as this runs on its own thread)."""
    import secrets

    from kaapana_fhir.dev import demo_web

    home = state_dir / "web"
    web = demo_web.running(home)
    if web is not None and (home / "fhir-url").is_file() and (home / "fhir-url").read_text() == stack.fhir_url:
        log.info("    reusing the web server at %s (pid %d)", web.url, web.pid)
        return web
    demo_web.stop(home)
    web = demo_web.start(Path(sys.executable).parent, home, web_env(stack), user=WEB_USER,
                         password=secrets.token_urlsafe(12), base_env=base_env)
    (home / "fhir-url").write_text(stack.fhir_url)
    log.info("    web server up at %s (pid %d)", web.url, web.pid)
    return web


def check_web(web: Any) -> dict[str, Any]:
    """Explorer page (logged in) and the ``all`` cohort's first page through the API (basic auth, as a notebook or
    Grafana would call it); raises :class:`~kaapana_fhir.exceptions.KaapanaFhirError` when either fails."""
    import requests

    from kaapana_fhir.dev.demo_web import WebError

    t = time.perf_counter()
    try:
        page = web.session().get(web.explorer_url, timeout=60)
        if page.status_code != 200 or "Cohort explorer" not in page.text:
            raise WebError(f"explorer page {web.explorer_url}: HTTP {page.status_code}; see {web.log}")
        r = requests.get(f"{web.api_url}/cohorts/all/rows", params={"limit": 100}, auth=(web.user, web.password),
                         timeout=600)
    except requests.RequestException as exc:
        raise WebError(f"web server {web.url}: {type(exc).__name__}; see {web.log}") from None
    if r.status_code != 200:
        raise WebError(f"API {web.api_url}/cohorts/all/rows: HTTP {r.status_code} {r.text[:300]}; see {web.log}")
    body = r.json()
    return {"explorer_status": page.status_code, "api_rows": body["total"],
            "api_patients": len({row.get("patient_id") for row in body["rows"]}),
            "seconds": round(time.perf_counter() - t, 1)}


def _print_summary(s: dict[str, Any], head: str, state_dir: Path, out: Any, web_password: str) -> None:
    w = out.write
    w("\n================ kaapana_fhir demo: summary ================\n")
    w(f"finished in {s['seconds']}s; DAG runs: " +
      ", ".join(f"{r['dag_id']} {r['state']} ({r['seconds']}s)" for r in s["dag_runs"]) + "\n\n")
    w("FHIR resources on the server:\n")
    for k, v in s["resources"].items():
        w(f"  {k:<26} {v:>6}\n")
    w(f"\ncohort table: {s['cohort_rows']} rows  ({s['cohort_file']})\n")
    if head:
        w(head + "\n")
    w(f"series for the next Kaapana workflow (data_form.identifiers): {s['dataset_series']}\n")
    w(f"\ncohort explorer: {s['explorer_url']}\n")
    w(f"retrieval API:   {s['api_url']}/cohorts/all/rows?limit=100   (spec: {s['api_url']}/openapi.yaml)\n")
    w(f"  login (both; the API also takes HTTP basic auth): user {s['web_user']}  password {web_password}\n")
    w(f"\ndashboard:      {s['report_html']}\n")
    w(f"FHIR server:    {s['fhir_url']}  (try {s['fhir_url']}/Patient?_count=10)\n")
    w(f"Orthanc:        {s['orthanc_url']}/app/explorer.html\n")
    w(f"summary JSON:   {state_dir / 'summary.json'}\n")
    w("stop everything: make demo-down   (or: python -m kaapana_fhir.dev.demo --down)\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kaapana_fhir.dev.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--state-dir", default=".demo-data", help="where the demo keeps its servers and data")
    ap.add_argument("--patients", type=int, default=5)
    ap.add_argument("--down", action="store_true", help="stop the servers the demo started")
    ap.add_argument("-v", "--verbose", action="store_true", help="show Airflow's and the libraries' logs too")
    args = ap.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    if not args.verbose:  # progress lines only; Airflow's task logs stay in its log files
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
        for name in ("highdicom", "dicomweb_client", "radiomics", "kaapana_fhir"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("radiomics.glcm").setLevel(logging.ERROR)  # a per-run note, not a problem
        import warnings

        warnings.filterwarnings("ignore", module="airflow")
    else:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    state = Path(args.state_dir)
    if args.down:
        from kaapana_fhir.dev import demo_web

        web_stopped = demo_web.stop(state / "web")
        stopped = devstack.down(state / "stack")
        log.info("demo web server %s", "stopped" if web_stopped else "was not running")
        log.info("demo stack %s", "stopped" if stopped else "was not running")
        return 0
    try:
        run(state, args.patients)
    except KaapanaFhirError as exc:
        log.error("demo failed: %s", exc)
        log.error("logs of the servers are in %s; stop them with `make demo-down`", state / "stack")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
