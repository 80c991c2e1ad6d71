"""Issue #5 bench: clinical table import into HAPI vs raw POSTs of the same Bundles; peak RSS by file size.

* throughput: N patients × 20 numeric columns (20 Observations + 1 Patient per row) through
  ``flows.table_import.import_table`` (read, validate all, build, chunked transactions) vs POSTing the
  same pre-built transaction Bundles (fresh ids, so both create) with plain ``requests`` in the same run;
* memory: peak RSS of the full pipeline (read → validate → entries → serialised 500-entry Bundles, sink
  without a server) in a fresh subprocess for two file sizes (10× apart).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.core.bundle import transaction
from kaapana_fhir.core.tables import TableMapper, iter_entries, load_mapping, open_table, scan
from kaapana_fhir.flows.tables.flow import import_table

COLUMNS = 20
CHUNK = 500


def mapping_text(system: str) -> str:
    obs = "".join(f"  - column: v{i:02d}\n    code: {{system: 'urn:bench', code: v{i:02d}}}\n"
                  f"    value: {{type: Quantity, unit: mg}}\n" for i in range(COLUMNS))
    return f"version: 1\nname: bench\npatient: {{key: pid, identifier_system: '{system}'}}\ncategory: laboratory\n" \
           f"observations:\n{obs}"


def write_table(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w") as fh:
        fh.write("pid," + ",".join(f"v{i:02d}" for i in range(COLUMNS)) + "\n")
        for p in range(n):
            fh.write(f"B{p:07d}," + ",".join(f"{rng.uniform(0, 100):.3f}" for _ in range(COLUMNS)) + "\n")


_RSS_CHILD = r"""
import json, resource, sys
from kaapana_fhir.core.bundle import chunked, transaction
from kaapana_fhir.core.tables import TableMapper, iter_entries, load_mapping, open_table, scan
sys.path.insert(0, sys.argv[3])
from bench_tables import mapping_text
m = load_mapping(mapping_text("urn:bench:rss"))
t = open_table(sys.argv[1], name="rss.csv")
mp = TableMapper(m)
s = scan(t, mp)
n = 0
for chunk in chunked(iter_entries(t, mp, s), int(sys.argv[2])):
    n += len(json.dumps(transaction(chunk, sort=False)))
# VmHWM is this process's own peak; ru_maxrss keeps the parent's peak across fork/exec on Linux.
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(json.dumps({"maxrss_kb": hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "rows": s.rows_read}))
"""


def _rss_mb(path: Path) -> float:
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path), str(CHUNK), str(Path(__file__).parent)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["maxrss_kb"] / 1024


def run(ctx):
    from run import Row

    url = ctx.stack().fhir_url
    n = 100 if ctx.quick else 10_000
    work = Path(ctx.workdir)
    src = work / "bench_table.csv"
    write_table(src, n)
    rows = []

    # ours: the whole import (read, validate, build, write)
    client = FhirClient(url)
    m = load_mapping(mapping_text(f"urn:bench:{uuid.uuid4().hex[:8]}"))
    t = time.perf_counter()
    rep = import_table(open_table(str(src), name=src.name), m, client=client, chunk_size=CHUNK)
    ours = time.perf_counter() - t
    total = sum(rep["resources_written"].values())

    # raw: the same resources (fresh ids) as pre-built Bundles, POSTed with plain requests
    m2 = load_mapping(mapping_text(f"urn:bench:{uuid.uuid4().hex[:8]}"))
    table = open_table(str(src), name=src.name)
    mapper = TableMapper(m2)
    entries = list(iter_entries(table, mapper, scan(table, mapper)))
    bundles = [transaction(entries[i:i + CHUNK], sort=False) for i in range(0, len(entries), CHUNK)]
    s = requests.Session()
    t = time.perf_counter()
    for b in bundles:
        r = s.post(url, json=b, headers={"Content-Type": "application/fhir+json"}, timeout=600)
        r.raise_for_status()
    raw = time.perf_counter() - t
    rows.append(Row("tables", f"import {n} patients x {COLUMNS} columns ({total} resources)", total / ours,
                    "resources/s", raw / ours, "raw requests POST of same Bundles"))

    # memory: two sizes 10x apart, each in a fresh process
    small, large = (2_000, 20_000) if ctx.quick else (10_000, 100_000)
    rss = {}
    for size in (small, large):
        p = work / f"rss_{size}.csv"
        write_table(p, size, seed=1)
        rss[size] = _rss_mb(p)
        rows.append(Row("tables", f"peak RSS, {size} rows x {COLUMNS} cols (no server)", rss[size], "MB",
                        note=f"file {p.stat().st_size / 1e6:.1f} MB"))
    rows[-1].ratio = rss[large] / rss[small]
    rows[-1].ratio_of = f"RSS at {small} rows"
    return rows
