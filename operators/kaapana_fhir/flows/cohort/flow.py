"""FHIR → cohort tables: fetch with FHIR searches, flatten with ViewDefinitions, join, write (no Airflow).

Fetching (:func:`fetch`):

* explicit searches (``"Observation?code=http://loinc.org|30525-0&_include=Observation:subject"``): any
  type and parameters, ``_include`` / ``_revinclude``, chained (``subject:Patient.gender=female``) and
  ``_has`` (``Patient?_has:Condition:subject:code=35917007``) parameters are passed through; requests
  encodes them; every page is followed (``link[relation=next]``); included resources are kept;
* or a patient search (default: all Patients) followed by the related resources of the selected
  patients: ``Observation`` / ``Condition`` / ``ImagingStudy`` by ``subject``, ``BodyStructure`` by
  ``patient``, in batches of patient references (``subject=Patient/a,Patient/b,...``).

Searches run on a few threads; each page is flattened as it arrives (in the calling thread), so flattening
overlaps the server's response time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.clients.protocols import FhirApi, ObjectStoreApi
from kaapana_fhir.core.cohort import tables as C
from kaapana_fhir.core.cohort.views import CompiledView, coalesce_tables, compile_view, load_view, shipped_views
from kaapana_fhir.core.sof.table import ViewTable
from kaapana_fhir.exceptions import ConfigError
from kaapana_fhir.flows.cohort.params import CohortEngine

log = logging.getLogger(__name__)

#: related resource type → search parameter that points at the Patient
RELATED = (("Observation", "subject"), ("Condition", "subject"), ("ImagingStudy", "subject"),
           ("BodyStructure", "patient"))


@dataclass
class Search:
    resource_type: str
    params: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return self.resource_type + ("?" + "&".join(f"{k}={v}" for k, v in self.params) if self.params else "")


def parse_search(text: str) -> Search:
    """``Type?a=1&b=2`` (values may be URL-encoded) → :class:`Search`; the type must be a FHIR type name."""
    text = (text or "").strip().lstrip("/")
    if not text:
        raise ConfigError("empty FHIR search (rule: '<ResourceType>?param=value&...')")
    rtype, _, query = text.partition("?")
    if not rtype.isalpha() or not rtype[0].isupper():
        raise ConfigError(f"FHIR search {text!r}: {rtype!r} is not a resource type (rule: '<ResourceType>?...')")
    return Search(rtype, parse_qsl(query, keep_blank_values=True))


@dataclass
class FetchResult:
    """What was fetched: resource ids per type (for de-duplication of ``_include``-d resources and counts);
    the resources themselves only with ``keep_resources=True`` (memory: the flattened rows are what is kept)."""
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # type → id → resource
    requests: int = 0
    seconds: float = 0.0
    keep_resources: bool = False
    seen: dict[str, set[str]] = field(default_factory=dict)
    #: resources per type counted without ids (an engine that reads the files itself: Pathling)
    counted: dict[str, int] = field(default_factory=dict)

    def add(self, res: dict[str, Any]) -> bool:
        rtype, rid = res.get("resourceType"), res.get("id")
        if not rtype or not rid:
            return False
        ids = self.seen.setdefault(rtype, set())
        new = rid not in ids
        ids.add(rid)
        if self.keep_resources:
            self.resources.setdefault(rtype, {})[rid] = res
        return new

    def count(self) -> dict[str, int]:
        out = {k: len(v) for k, v in self.seen.items()}
        for k, n in self.counted.items():
            out[k] = out.get(k, 0) + n
        return dict(sorted(out.items()))


def _with_count(params: Sequence[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    p = list(params)
    if not any(k == "_count" for k, _ in p):
        p.append(("_count", str(count)))
    return p


class _Flattener:
    """Runs the compiled views over resources as they arrive; rows are kept as tuples (:class:`ViewTable`)."""

    def __init__(self, views: dict[str, CompiledView]) -> None:
        self.views = views
        self.by_type: dict[str, list[tuple[ViewTable, CompiledView]]] = {}
        self.rows: dict[str, ViewTable] = {name: ViewTable(v.columns) for name, v in views.items()}
        for name, v in views.items():
            self.by_type.setdefault(str(v.resource), []).append((self.rows[name], v))
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.resources = 0

    def feed(self, resources: Iterable[dict[str, Any]]) -> None:
        t = time.perf_counter()
        c = time.process_time()
        for res in resources:
            self.resources += 1
            for table, v in self.by_type.get(res.get("resourceType", ""), ()):
                table.tuples.extend(v.tuples(res))
        self.seconds += time.perf_counter() - t
        self.cpu_seconds += time.process_time() - c


def load_views(extra: Sequence[str | Path] = (), *, only: Sequence[str] | None = None) -> dict[str, CompiledView]:
    """The shipped views (or ``only`` those) plus extra ViewDefinition files (same name replaces)."""
    out = {n: compile_view(load_view(n)) for n in (only or shipped_views())}
    for p in extra:
        v = compile_view(load_view(p))
        out[v.name] = v
    return out


def _pages(client: FhirApi, search: Search, count: int) -> list[dict[str, Any]]:
    return list(client.search(search.resource_type, _with_count(search.params, count), include_mode="all"))


def _stream(client: FhirApi, search: Search, count: int, out: queue.Queue) -> None:
    """Put each page's resources (matches and includes) into ``out``; then ``None``; errors as the exception."""
    try:
        for page in client.search_pages(search.resource_type, _with_count(search.params, count)):
            out.put([e["resource"] for e in page.get("entry", []) if "resource" in e])
    except Exception as exc:  # noqa: BLE001 - handed to the consuming thread, which re-raises it
        out.put(exc)
        return
    out.put(None)


def _run_streams(client: FhirApi, searches: list[Search], count: int, workers: int,
                 consume: Any) -> None:
    """Run ``searches`` on ``workers`` threads; ``consume`` every page in this thread as it arrives, so the
    flattening overlaps the server's work."""
    q: queue.Queue = queue.Queue(maxsize=8)  # bounded: at most a few pages in memory
    pending = list(reversed(searches))
    running = 0
    threads = []

    def start() -> None:
        nonlocal running
        s = pending.pop()
        t = threading.Thread(target=_stream, args=(client, s, count, q), daemon=True,
                             name=f"fhir-search-{s.resource_type}")
        t.start()
        threads.append(t)
        running += 1

    while pending and running < max(1, workers):
        start()
    while running:
        item = q.get()
        if item is None or isinstance(item, Exception):
            running -= 1
            if isinstance(item, Exception):
                raise item
            if pending:
                start()
            continue
        consume(item)
    for t in threads:
        t.join()


def fetch_and_flatten(client: FhirApi, views: dict[str, CompiledView], *, searches: Sequence[str] = (),
                      patient_search: str | None = None, count: int = 1000, batch: int = 100,
                      workers: int = 3, keep_resources: bool = False) -> tuple[FetchResult, dict[str, ViewTable]]:
    """Fetch (see module doc) and flatten page by page; resources seen twice (includes) are flattened once.
    Rows come back per view as :class:`ViewTable` (a sequence of dicts stored as tuples); the resources
    themselves are dropped after flattening unless ``keep_resources``."""
    result = FetchResult(keep_resources=keep_resources)
    flat = _Flattener(views)
    t0 = time.perf_counter()
    req0 = client.stats.requests

    def consume(resources: list[dict[str, Any]]) -> None:
        flat.feed([r for r in resources if result.add(r)])

    if searches:
        _run_streams(client, [parse_search(s) for s in searches], count, workers, consume)
    else:
        ps = parse_search(patient_search or "Patient")
        if ps.resource_type != "Patient":
            raise ConfigError(f"patient search {patient_search!r} must search Patient")
        patients = [r for r in _pages(client, ps, count) if r.get("resourceType") == "Patient"]
        consume(patients)
        refs = [f"Patient/{p['id']}" for p in patients]
        related = []
        for rtype, param in RELATED:
            if any(v.resource == rtype for v in views.values()):
                related += [Search(rtype, [(param, ",".join(refs[i:i + batch]))]) for i in range(0, len(refs), batch)]
        _run_streams(client, related, count, workers, consume)
    result.seconds = time.perf_counter() - t0
    result.requests = client.stats.requests - req0
    log.info("fetched %s in %.1fs (%d requests); flattening took %.1fs", result.count(), result.seconds,
             result.requests, flat.seconds)
    return result, coalesce_tables(flat.rows)


ENGINES = tuple(e.value for e in CohortEngine)
#: polling of the cohort's ``$export``: HAPI always answers ``Retry-After: 120`` while most cohort exports finish
#: in seconds, so poll at most every 5 s (fhir_bulk.ExportPolicy caps Retry-After at max_poll_interval)
BULK_POLL_SECONDS = (1.0, 5.0)


def _check_engine(engine: str) -> CohortEngine:
    try:
        return CohortEngine(str(engine).strip().lower())
    except ValueError:
        raise ConfigError(f"engine {engine!r}: use one of {', '.join(ENGINES)}") from None


def _count_lines(folder: Path) -> dict[str, int]:
    """Resources per type in a folder of NDJSON files (``000-Patient.ndjson`` or ``Patient.ndjson``): lines."""
    out: dict[str, int] = {}
    for f in sorted(folder.glob("*.ndjson")):
        rtype = f.name.split(".", 1)[0].rsplit("-", 1)[-1]
        with f.open("rb") as fh:
            n = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        out[rtype] = out.get(rtype, 0) + n
    return out


def flatten_ndjson(folder: str | Path, views: dict[str, CompiledView], *, engine: str = "ours",
                   view_json: dict[str, dict[str, Any]] | None = None) -> tuple[FetchResult, dict[str, ViewTable]]:
    """Flatten a folder of NDJSON files (a Bulk Data export, or any ``<Type>.ndjson``) with our runner (line by
    line) or with Pathling (``engine="pathling"``: Spark in its own venv, :mod:`.pathling_engine`; the views'
    JSON in ``view_json``, default: the shipped/loaded views' source)."""
    from kaapana_fhir.clients.fhir_bulk import iter_ndjson

    _check_engine(engine)
    src = Path(folder)
    files = sorted(src.glob("*.ndjson"))
    if not files:
        raise ConfigError(f"{src}: no .ndjson files (rule: a folder of NDJSON files, e.g. a Bulk Data export)")
    result = FetchResult()
    t0 = time.perf_counter()
    if engine == "pathling":
        from kaapana_fhir.flows.cohort.pathling_engine import run_views

        sources = view_json if view_json is not None else {n: dict(v.view) for n, v in views.items()}
        rows = run_views(src, sources)
        result.counted = _count_lines(src)
        result.seconds = time.perf_counter() - t0
        return result, coalesce_tables(rows)
    flat = _Flattener(views)
    for f in files:
        flat.feed(r for r in iter_ndjson(f) if result.add(r))
    result.seconds = time.perf_counter() - t0
    log.info("flattened %s from %d NDJSON files in %.1fs", result.count(), len(files), flat.seconds)
    return result, coalesce_tables(flat.rows)


def fetch_bulk_and_flatten(client: FhirClient, views: dict[str, CompiledView], folder: str | Path, *,
                           policy: Any = None, engine: str = "ours") -> tuple[FetchResult, dict[str, ViewTable]]:
    """FHIR Bulk Data ``$export`` (system level, the view resource types) into ``folder`` (resumable: a re-run
    with the same folder continues the job), then flatten the NDJSON files line by line (or with Pathling)."""
    from kaapana_fhir.clients.fhir_bulk import BulkExporter, ExportPolicy, iter_ndjson

    _check_engine(engine)
    if policy is None:
        policy = ExportPolicy(min_poll_interval=BULK_POLL_SECONDS[0], max_poll_interval=BULK_POLL_SECONDS[1])
    types = sorted({str(v.resource) for v in views.values()})
    t0 = time.perf_counter()
    req0 = client.stats.requests
    exported = BulkExporter(client, policy).export(folder, "system", types=types)
    if engine == "pathling":
        result, rows = flatten_ndjson(folder, views, engine=engine)
        result.seconds = time.perf_counter() - t0
        result.requests = client.stats.requests - req0
        return result, rows
    result = FetchResult()
    flat = _Flattener(views)
    for f in exported.files:
        flat.feed(r for r in iter_ndjson(f.path) if result.add(r))
    result.seconds = time.perf_counter() - t0
    result.requests = client.stats.requests - req0
    log.info("bulk export: %s in %.1fs (waiting %.1fs, downloading %.1fs); flattening took %.1fs",
             result.count(), result.seconds, exported.seconds_waiting, exported.seconds_downloading, flat.seconds)
    return result, coalesce_tables(flat.rows)


def write_outputs(cohort: C.Cohort, out_dir: str | Path, *, extra_tables: dict[str, Any] | None = None,
                  dataset: dict[str, Any] | None = None, formats: Sequence[str] = ("parquet", "csv")) -> list[Path]:
    """Write ``cohort.*``, ``patients.*``, ``radiomics_long.*``, ``radiomics_wide.*``, ``series.*``, ``studies.*``,
    ``data_dictionary.*`` (+ extra view tables), ``cohort_meta.json`` (variables, features, labels, units,
    dropped resources) and ``dataset.json`` into ``out_dir``. Parquet fields carry their label (display text)
    as field metadata and ``cohort.parquet`` the data dictionary as schema metadata."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dictionary = cohort.dictionary
    frames = {"cohort": cohort.table, "patients": cohort.patients, "radiomics_long": cohort.radiomics_long,
              "radiomics_wide": cohort.radiomics_wide, "series": cohort.series, "studies": cohort.studies,
              "data_dictionary": dictionary}
    for name, rows in (extra_tables or {}).items():
        frames.setdefault(name, rows.frame() if hasattr(rows, "frame") else pd.DataFrame(rows))
    labels = dict(zip(dictionary["column"], dictionary["label"], strict=True))
    meta_doc = {"clinical_variables": cohort.clinical_variables, "feature_columns": cohort.feature_columns,
                "labels": cohort.labels, "units": cohort.units, "dropped": cohort.dropped}
    for name in ("cohort", "patients", "radiomics_wide"):
        frames[name].attrs = {"labels": {c: labels[c] for c in frames[name].columns if c in labels},
                              "units": cohort.units}
    frames["cohort"].attrs["kaapana_fhir"] = {**meta_doc, "dictionary": dictionary.to_dict(orient="records")}
    written = []
    for name, df in frames.items():
        for fmt in formats:
            written.append(C.write_table(df, out / f"{name}.{fmt}"))
    meta = out / "cohort_meta.json"
    meta.write_text(json.dumps(meta_doc, indent=1, default=str), encoding="utf-8")
    written.append(meta)
    if dataset is not None:
        p = out / "dataset.json"
        p.write_text(json.dumps(dataset, indent=1), encoding="utf-8")
        written.append(p)
    return written


def upload(store: ObjectStoreApi, bucket: str, prefix: str, paths: Sequence[Path]) -> list[str]:
    """Put the files into ``bucket`` under ``prefix/``; returns the object keys."""
    store.ensure_bucket(bucket)
    keys = []
    for p in paths:
        key = f"{prefix.strip('/')}/{p.name}" if prefix.strip("/") else p.name
        store.put_file(bucket, key, p)
        keys.append(key)
    return keys


@dataclass
class CohortBuild:
    """A cohort built from a FHIR server: all patients (:attr:`cohort`), the filtered ones (:attr:`selected`),
    the data dictionary, dropped-resource counts, the view rows and the fetch statistics."""
    cohort: C.Cohort
    selected: C.Cohort
    rows: dict[str, ViewTable]
    fetched: FetchResult
    join_seconds: float = 0.0

    @property
    def dictionary(self) -> Any:
        """One row per column of the cohort table (label, source, code, unit, ...): a DataFrame."""
        return self.selected.dictionary

    @property
    def dropped(self) -> dict[str, int]:
        """Resources that could not be joined to a patient, by type and reason."""
        return self.cohort.dropped


def build_cohort(client: FhirApi | None, *, searches: Sequence[str] = (), patient_search: str | None = None,
                 view_files: Sequence[str | Path] = (), filters: Sequence[str] = (), count: int = 1000,
                 views: dict[str, CompiledView] | None = None, bulk_folder: str | Path | None = None,
                 ndjson_folder: str | Path | None = None, engine: str = CohortEngine.OURS,
                 bulk_policy: Any = None) -> CohortBuild:
    """Fetch (searches or a patient search + their data; or, with ``bulk_folder``, a Bulk Data ``$export`` of
    all resources of the views' types into that folder), flatten with the views as pages/lines arrive, join
    and filter (``filters``: conditions, ``;``-separated allowed). No files are written besides the export.
    ``ndjson_folder``: NDJSON files already on disk instead of a server. ``engine``: ``"ours"`` (the SQL-on-FHIR
    runner in this process) or ``"pathling"`` (Spark; needs ``bulk_folder`` or ``ndjson_folder``, and Pathling
    installed: :class:`~kaapana_fhir.flows.cohort.pathling_engine.PathlingUnavailable` before anything is
    fetched otherwise)."""
    engine = _check_engine(engine)
    views = views if views is not None else load_views(view_files)
    if (bulk_folder is not None or ndjson_folder is not None) and (searches or patient_search):
        raise ConfigError("a bulk export / NDJSON folder takes all patients: use --where filters instead of searches")
    if engine is CohortEngine.PATHLING:
        if bulk_folder is None and ndjson_folder is None:
            raise ConfigError("engine 'pathling' reads NDJSON: give --bulk FOLDER (export first) or --ndjson FOLDER")
        from kaapana_fhir.flows.cohort.pathling_engine import PathlingHome

        PathlingHome.find()  # not installed: a clear error now, not after a long export
    if ndjson_folder is not None:
        fetched, rows = flatten_ndjson(ndjson_folder, views, engine=engine)
    elif bulk_folder is not None:
        if not isinstance(client, FhirClient):
            raise ConfigError("a Bulk Data export needs the HTTP FhirClient (kaapana_fhir.clients.fhir)")
        fetched, rows = fetch_bulk_and_flatten(client, views, bulk_folder, engine=engine, policy=bulk_policy)
    else:
        if client is None:
            raise ConfigError("a FHIR server (--fhir URL) or an NDJSON folder (--ndjson) is required")
        fetched, rows = fetch_and_flatten(client, views, searches=searches, patient_search=patient_search,
                                          count=count)
    t = time.perf_counter()
    cohort = C.build_cohort(rows)
    selected = C.apply_filters(cohort, list(filters))
    return CohortBuild(cohort, selected, rows, fetched, time.perf_counter() - t)


@dataclass
class CohortSummary:
    """What :func:`run_cohort` did: resources fetched per type, requests and seconds, view rows, dropped resources,
    patients (all and selected), the filters, the dataset's series, the files written and uploaded."""

    resources: dict[str, int]
    requests: int
    fetch_seconds: float
    join_seconds: float
    rows: dict[str, int]
    dropped: dict[str, int]
    patients: int
    selected_patients: int
    filters: list[str]
    series_uids: int
    out_dir: str
    files: list[str]
    #: the bucket the files were uploaded to (None: not uploaded)
    bucket: str | None
    object_keys: list[str]
    #: the Kaapana dataset of the selected series: ``{"data_form": {"dataset_name", "identifiers"}}``
    dataset: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (XCom, the Kaapana container's result): the fields in declaration order."""
        return asdict(self)


def run_cohort(client: FhirApi | None, out_dir: str | Path, *, searches: Sequence[str] = (),
               patient_search: str | None = None, view_files: Sequence[str | Path] = (),
               filters: Sequence[str] = (), modality: str | None = "CT", dataset_name: str = "fhir-cohort",
               store: ObjectStoreApi | None = None, bucket: str | None = None, prefix: str = "fhir-cohort",
               formats: Sequence[str] = ("parquet", "csv"), count: int = 1000,
               bulk_folder: str | Path | None = None, ndjson_folder: str | Path | None = None,
               engine: str = CohortEngine.OURS) -> CohortSummary:
    """The whole job; returns a small summary (counts, paths, object keys, timings, dropped).
    ``bulk_folder``: read the data with a Bulk Data ``$export`` (NDJSON kept in that folder) instead of searches.
    ``engine="pathling"`` without a folder exports into a temporary folder, removed afterwards (the Airflow
    operator and the Kaapana container have no folder option)."""
    with contextlib.ExitStack() as scratch:
        if _check_engine(engine) is CohortEngine.PATHLING and bulk_folder is None and ndjson_folder is None:
            bulk_folder = scratch.enter_context(tempfile.TemporaryDirectory(prefix="kaapana-fhir-export-"))
        built = build_cohort(client, searches=searches, patient_search=patient_search, view_files=view_files,
                             filters=filters, count=count, bulk_folder=bulk_folder, ndjson_folder=ndjson_folder,
                             engine=engine)
    t = time.perf_counter() - built.join_seconds
    fetched, rows, cohort, selected = built.fetched, built.rows, built.cohort, built.selected
    dataset = C.series_dataset(selected, modality=modality, dataset_name=dataset_name)
    extra = {k: v for k, v in rows.items() if k not in C.VIEW_NAMES}
    paths = write_outputs(selected, out_dir, extra_tables=extra, dataset=dataset, formats=formats)
    keys: list[str] = []
    if store is not None and bucket:
        keys = upload(store, bucket, prefix, paths)
    summary = CohortSummary(
        resources=fetched.count(), requests=fetched.requests, fetch_seconds=round(fetched.seconds, 3),
        join_seconds=round(time.perf_counter() - t, 3),
        rows={k: len(v) for k, v in rows.items()}, dropped=cohort.dropped,
        patients=len(cohort.patients), selected_patients=len(selected.patients),
        filters=C.split_filters(list(filters)), series_uids=len(dataset["data_form"]["identifiers"]),
        out_dir=str(out_dir), files=[p.name for p in paths], bucket=bucket if keys else None,
        object_keys=keys, dataset=dataset,
    )
    log.info("cohort: %d of %d patients selected, %d series for the dataset", summary.selected_patients,
             summary.patients, summary.series_uids)
    return summary
