"""Run ViewDefinitions with Pathling (Spark) over a folder of NDJSON files; one Parquet folder per view.

This file is executed by the Python of the Pathling venv (``.ci/install-pathling.sh``), never imported by
kaapana_fhir: it needs only the standard library and ``pathling``. :mod:`kaapana_fhir.flows.cohort.pathling`
starts it as a subprocess::

    python pathling_worker.py REQUEST.json

``REQUEST.json``: ``{"ndjson": folder, "out": folder, "views": {name: ViewDefinition}, "jars": [Pathling's
library-runtime jar], "memory": "2g", "cores": 2}``. NDJSON file names carry the resource type as the part
after the last ``-`` and before the first ``.`` (``000-Patient.ndjson`` as our ``$export`` client writes
them, or ``Patient.ndjson``). For each view the rows are written to ``out/<name>/`` (Spark's Parquet folder);
the last line on stdout is a JSON summary ``{"views": {name: {"rows": n, "columns": [...]}},
"errors": {name: message}, "seconds": ...}``; exit code 2 when a view failed (every view is tried).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def _resource_type(name: str) -> list[str]:
    base = Path(name).name
    stem = base.split(".", 1)[0]
    return [stem.rsplit("-", 1)[-1]]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: pathling_worker.py REQUEST.json\n")
        return 2
    req: dict[str, Any] = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    from pathling import PathlingContext  # type: ignore[import-not-found]  # only in the Pathling venv
    from pyspark.sql import SparkSession  # type: ignore[import-not-found]

    spark = (SparkSession.builder.master(f"local[{int(req.get('cores', 2))}]")
             .appName("kaapana-fhir-cohort")
             .config("spark.driver.memory", str(req.get("memory", "2g")))
             .config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "4")
             # Spark 4.0.x: nested schema pruning below Pathling's generate(inline(...)) drops columns when two
             # columns read fields of one element (value.ofType(Quantity).value and .code): 0 rows from collect(),
             # "length of provided names doesn't match" from a write. Off, both are right.
             .config("spark.sql.optimizer.nestedSchemaPruning.enabled", "false")
             .config("spark.jars", ",".join(req["jars"]))
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    pc = PathlingContext.create(spark, enable_extensions=True, enable_terminology=False)
    data = pc.read.ndjson(str(req["ndjson"]), file_name_mapper=_resource_type)
    out = Path(req["out"])
    summary: dict[str, Any] = {"views": {}, "errors": {}}
    for name, view in req["views"].items():
        try:
            df = data.view(resource=view["resource"], json=json.dumps(view))
            df.write.mode("overwrite").parquet(str(out / name))
            summary["views"][name] = {"rows": spark.read.parquet(str(out / name)).count(), "columns": df.columns}
        except Exception as exc:  # noqa: BLE001 - reported to the caller in the summary, with the view's name
            lines = [ln for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("\tat ")]
            msg = next((ln for ln in lines if "Error" in ln or "Exception" in ln), lines[0] if lines else repr(exc))
            summary["errors"][name] = msg.strip(": ").strip()[:2000]
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    sys.stdout.write(json.dumps(summary) + "\n")
    return 2 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
