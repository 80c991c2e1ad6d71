"""Reliability bench (issue #11, load): peak RSS per input size, each size measured in its own subprocess.

Rows:
* table import of N rows (long format, 10 rows per patient) into a sink FHIR client that accepts and drops
  transactions: our process's memory only; N = 10k / 50k / 100k (quick: 5k / 20k). The ratio is the peak
  RSS growth (above the interpreter + imports) of the largest size vs the smallest: ~1 means streaming.
* the same import into the real HAPI at one size (rows/s on this machine); ``KF_BENCH_FULL_HAPI=1`` also
  writes the full 100k rows to HAPI (slow on a shared 2-core box: HAPI writes ~100-300 resources/s).
* DICOM backfill of N studies from Orthanc into HAPI: one ``sync_studies`` call for all N (100 / 300 /
  1,000; quick: 30 / 100), which reads every study before the first write, so its memory grows with N;
  and the DAG's way, one study per call (what each mapped ``dicom-to-fhir`` task does), at the largest N.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _rss_mb() -> float:
    """This process's own peak RSS (MiB). VmHWM, since ru_maxrss keeps the parent's peak across fork/exec."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _worker(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh interpreter: the measured job; returns base/peak RSS (MiB) and seconds."""
    from kaapana_fhir.clients.dicomweb import DicomWeb
    from kaapana_fhir.clients.fhir import FhirClient
    from kaapana_fhir.core.tables import open_table
    from kaapana_fhir.flows.dicom_to_fhir.flow import sync_studies
    from kaapana_fhir.flows.tables.flow import import_table
    from tests.reliability.helpers import SinkFhir, long_csv, long_mapping

    mapping = long_mapping(source="bench")
    out: dict[str, Any] = {}
    if kind.startswith("table"):
        import_table(open_table(long_csv("warm", 100), name="w.csv"), mapping, client=SinkFhir())  # warm-up
        data = Path(args["file"])  # read from disk by the streaming reader: the input is not held in memory
        client: Any = SinkFhir() if kind == "table-sink" else FhirClient(args["fhir"])
        base = _rss_mb()
        t0 = time.perf_counter()
        rep = import_table(open_table(data, name="bench.csv"), mapping, client=client, chunk_size=500)
        out["seconds"] = time.perf_counter() - t0
        out["resources"] = sum((rep.resources_written or {}).values())
    else:
        dw, fhir = DicomWeb(args["dicomweb"]), FhirClient(args["fhir"])
        base = _rss_mb()
        t0 = time.perf_counter()
        if kind == "dicom-batch":
            res = sync_studies(dw, fhir, study_uids=args["uids"])
            out["studies"] = res.studies
        else:  # one study per call, as one mapped Airflow task
            out["studies"] = sum(sync_studies(dw, fhir, study_uids=[u]).studies for u in args["uids"])
        out["seconds"] = time.perf_counter() - t0
    out.update(base_mb=base, peak_mb=_rss_mb())
    return out


def _table_file(workdir: Path, tag: str, rows: int) -> str:
    from tests.reliability.helpers import long_csv

    path = workdir / f"table-{tag}.csv"
    path.write_bytes(long_csv(tag, rows))
    return str(path)


def _measure(kind: str, args: dict[str, Any], workdir: Path) -> dict[str, Any]:
    arg_file = workdir / f"args-{uuid.uuid4().hex[:8]}.json"
    arg_file.write_text(json.dumps(args))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, __file__, "worker", kind, str(arg_file)], capture_output=True, text=True,
                         check=False, env=env, cwd=str(REPO), timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"bench worker {kind} failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(ctx):
    from run import Row

    from kaapana_fhir.clients.dicomweb import DicomWeb
    from tests.reliability.helpers import store_studies

    st = ctx.stack()
    rows: list[Row] = []
    tag = uuid.uuid4().hex[:6]

    sizes = (5_000, 20_000) if ctx.quick else (10_000, 50_000, 100_000)
    table = {}
    for n in sizes:
        r = _measure("table-sink", {"file": _table_file(ctx.workdir, f"{tag}s{n}", n)}, ctx.workdir)
        table[n] = r
        rows.append(Row("reliability", f"table import {n:,} rows (sink): peak RSS", r["peak_mb"], "MiB",
                        note=f"growth {r['peak_mb'] - r['base_mb']:.1f} MiB, {n / r['seconds']:,.0f} rows/s"))
    lo, hi = table[sizes[0]], table[sizes[-1]]
    growth = (hi["peak_mb"] - hi["base_mb"] + 1) / (lo["peak_mb"] - lo["base_mb"] + 1)
    rows.append(Row("reliability", f"table import RSS growth {sizes[-1]:,} vs {sizes[0]:,} rows", growth, "x",
                    ratio=growth, ratio_of=f"{sizes[-1] // sizes[0]}x the rows", note="~1 = streaming"))

    hapi_sizes = [2_000 if ctx.quick else 10_000]
    if os.environ.get("KF_BENCH_FULL_HAPI") == "1" and not ctx.quick:
        hapi_sizes.append(100_000)
    for n in hapi_sizes:
        r = _measure("table-hapi", {"file": _table_file(ctx.workdir, f"{tag}h{n}", n), "fhir": st.fhir_url},
                     ctx.workdir)
        rows.append(Row("reliability", f"table import {n:,} rows into HAPI", r["seconds"], "s",
                        note=f"{r['resources'] / r['seconds']:,.0f} resources/s, peak RSS {r['peak_mb']:.0f} MiB"))

    dw = DicomWeb(st.dicomweb_url)
    dsizes = (30, 100) if ctx.quick else (100, 300, 1_000)
    batch = {}
    for n in dsizes:
        uids = [s["study"] for s in store_studies(dw, f"{tag}b{n}", n, series_per_study=1)]
        r = _measure("dicom-batch", {"uids": uids, "fhir": st.fhir_url, "dicomweb": st.dicomweb_url}, ctx.workdir)
        batch[n] = r
        rows.append(Row("reliability", f"DICOM backfill {n:,} studies, one call: peak RSS", r["peak_mb"], "MiB",
                        note=f"growth {r['peak_mb'] - r['base_mb']:.1f} MiB, {n / r['seconds']:.1f} studies/s"))
    n = dsizes[-1]
    uids = [s["study"] for s in store_studies(dw, f"{tag}p{n}", n, series_per_study=1)]
    r = _measure("dicom-per-study", {"uids": uids, "fhir": st.fhir_url, "dicomweb": st.dicomweb_url}, ctx.workdir)
    per_growth = r["peak_mb"] - r["base_mb"]
    b = batch[n]
    rows.append(Row("reliability", f"DICOM backfill {n:,} studies, one study per call (DAG task): peak RSS",
                    r["peak_mb"], "MiB", ratio=(per_growth + 1) / (b["peak_mb"] - b["base_mb"] + 1),
                    ratio_of="growth vs one call",
                    note=f"growth {per_growth:.1f} MiB, {n / r['seconds']:.1f} studies/s"))
    return rows


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "worker":
    import logging

    logging.basicConfig(level=logging.WARNING)
    sys.stdout.write(json.dumps(_worker(sys.argv[2], json.loads(Path(sys.argv[3]).read_text()))) + "\n")
