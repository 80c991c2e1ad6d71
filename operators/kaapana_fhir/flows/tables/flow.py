"""Import a clinical table (file or S3 object) into FHIR: read → validate all → write in chunks.

* :func:`resolve_mapping` picks the mapping: a YAML text, a shipped preset (``lung1``) or ``redcap``
  derived from a data dictionary.
* :func:`import_table` validates the whole file first (:func:`kaapana_fhir.core.tables.scan`); with invalid
  cells it raises :class:`~kaapana_fhir.core.tables.TableRejected` unless ``skip_invalid_rows``; then it
  streams ``PUT`` entries in transaction chunks (each chunk atomic; a failure mid-file leaves complete
  chunks only, and a retry finishes the file without duplicates because ids are deterministic).
  Patients that already exist (e.g. written by the DICOM flow) are merged, not replaced: the table sets
  identifier, gender, birthDate and deceased and keeps the other elements. Each demographic value records the
  file it came from; a value another source set differently is a conflict, handled by the mapping's
  ``patient_conflicts`` (``keep`` by default, ``replace``, ``fail``: refused before any write) and reported with
  both values and sources; a value the same file set earlier is a correction (:mod:`kaapana_fhir.core.patient`).
  ``workers`` may be an :class:`AutoWorkers`, which chooses the parallel streams from the server's rate.
* :func:`import_object` does the same for an S3 object and writes ``<name>.import-report.json`` beside it
  and the watcher state (see :mod:`kaapana_fhir.flows.tables.watch`).

Policy: rows that disappear from a later version of a file (and cells that become NA) are **not**
deleted from the FHIR server; delete such resources explicitly if needed.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kaapana_fhir.clients.fhir import WriteResult
from kaapana_fhir.clients.protocols import FhirApi, ObjectStoreApi
from kaapana_fhir.core import patient
from kaapana_fhir.core.bundle import DEFAULT_CHUNK_SIZE, chunked
from kaapana_fhir.core.tables import (
    TableMapper,
    TableRejected,
    derive_mapping,
    iter_entries,
    iter_patient_entries,
    load_mapping,
    load_preset,
    open_table,
    report_of,
    scan,
)
from kaapana_fhir.core.tables.engine import RETRACT
from kaapana_fhir.core.tables.mapping import _with_defaults, validate_mapping
from kaapana_fhir.core.tables.reader import Table
from kaapana_fhir.exceptions import ConfigError, FhirServerError, MappingError, ObjectStoreError
from kaapana_fhir.flows.tables import watch as W

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ImportReport:
    """The import report of one table (``<name>.import-report.json`` beside an S3 object, the CLI's
    ``--report``, the XCom). Its JSON keys are a documented contract: :meth:`as_dict` writes the fields in this
    order and leaves out those that are None (a report of an object that was gone, or rejected before its
    mapping could be read, has only ``file``, ``status``, a few counts and ``error``)."""

    file: str
    mapping: str | None = None
    #: ``imported``, ``imported-with-rejections``, ``imported-with-conflicts``, ``rejected``, ``failed``, ``gone``,
    #: ``planned``
    status: str
    skip_invalid_rows: bool | None = None
    rows_read: int | None = None
    empty_rows: int | None = None
    rows_rejected: int | None = None
    #: resources written per type
    resources_written: dict[str, int] | None = None
    #: invalid cells (row, column, value, rule), at most the scan's limit (``rejected_truncated``: there were more)
    rejected: list[dict[str, Any]] | None = None
    issue_count: int | None = None
    duration_s: float | None = None
    policy: str | None = None
    rejected_truncated: bool | None = None
    #: transaction chunks written and Observations retracted (``empty_cells: retract``)
    chunks: int | None = None
    retracted: int | None = None
    workers: int | None = None
    workers_auto: dict[str, Any] | None = None
    patient_conflicts_policy: str | None = None
    patient_corrections: int | None = None
    patient_conflicts: list[dict[str, Any]] | None = None
    #: the S3 object (:func:`import_object`)
    object_key: str | None = None
    bucket: str | None = None
    etag_signature: str | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, rep: dict[str, Any]) -> ImportReport:
        """From the report dict of :func:`kaapana_fhir.core.tables.report_of` (also ``TableRejected.report``)."""
        return cls(**rep)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form: the fields that are set, in declaration order."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}


def resolve_mapping(*, header: list[str], mapping_text: str | None = None, mapping_name: str = "mapping",
                    preset: str | None = None, dictionary_text: str | None = None,
                    read_file: Any = None, table_name: str = "", data: Any = None,
                    project: str | None = None) -> dict[str, Any]:
    """The mapping for a table with ``header``: YAML text, preset ``lung1``, ``redcap`` + dictionary (project
    name from ``table_name``, e.g. ``LungImaging_DATA_2026-05-04_1200.csv`` → ``LungImaging``), or ``odm``
    (derived from the ODM file ``data`` itself). ``project`` overrides the REDCap project name (API pulls)."""
    if mapping_text is not None:
        return load_mapping(mapping_text, source=mapping_name, read_file=read_file)
    if not preset:
        raise ConfigError("no mapping: give a mapping YAML or a preset (rule: mapping or preset required)")
    preset = preset.strip().lower()
    if preset == "redcap":
        if not dictionary_text:
            raise ConfigError("preset 'redcap' needs the project's data dictionary (rule: --dictionary / "
                              "<name>.dictionary.csv beside the export)")
        from kaapana_fhir.core.tables.redcap import project_name_of

        project = project or (project_name_of(table_name) if table_name else "redcap")
        derived = derive_mapping(dictionary_text, header=header, name=project, project=project)
        errors = validate_mapping(derived, source="preset:redcap")
        if errors:
            raise ConfigError("; ".join(errors))
        return _with_defaults(derived, "preset:redcap", None)
    if preset == "odm":
        from kaapana_fhir.core.tables.odm import derive_mapping as derive_odm

        if data is None:
            raise ConfigError("preset 'odm' derives the mapping from the ODM file itself (rule: pass the file)")
        derived = derive_odm(data, name=table_name or "odm", header=header)
        errors = validate_mapping(derived, source="preset:odm")
        if errors:
            raise ConfigError("; ".join(errors))
        return _with_defaults(derived, "preset:odm", None)
    return load_preset(preset)


#: ids per ``_id`` search: 40 ids of ~48 characters keep the URL under 2 KB (servers refuse long URLs, HTTP 400/414)
IDS_PER_SEARCH = 40


def search_ids(client: Any, rtype: str, ids: list[str], extra: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The resources of ``rtype`` with these ids that exist, in ``_id`` searches of :data:`IDS_PER_SEARCH` ids."""
    out: list[dict[str, Any]] = []
    for i in range(0, len(ids), IDS_PER_SEARCH):
        part = ids[i:i + IDS_PER_SEARCH]
        out.extend(client.search(rtype, {"_id": ",".join(part), "_count": str(len(part)), **(extra or {})}))
    return out


@dataclass
class PatientConflicts:
    """What the Patient merges of one import found: conflicts (another source) and corrections (same source).

    ``policy`` is the mapping's ``patient_conflicts``; the merges run in the writer threads, hence the lock.
    """

    policy: patient.ConflictPolicy = patient.ConflictPolicy.KEEP
    found: list[dict[str, Any]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    corrected: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, pid: str, merge: patient.PatientMerge) -> None:
        with self._lock:
            self.corrected += len(merge.corrected)
            for conflict in merge.conflicts:
                log.warning("%s", conflict.message(pid))
                if len(self.found) < MAX_REPORTED_CONFLICTS:
                    self.found.append(conflict.as_dict(pid))
                    self.messages.append(conflict.message(pid))


def _source_of(resource: dict[str, Any]) -> str | None:
    return next((s for k in patient.DEMOGRAPHICS if (s := patient.source_of(resource, k))), None)


def merge_with_server(resource: dict[str, Any], current: dict[str, Any] | None,
                      policy: patient.ConflictPolicy = patient.ConflictPolicy.KEEP) -> patient.PatientMerge:
    """The one Patient merge for a table's Patient: source-aware (the table's file, recorded on the resource)."""
    return patient.merge_patient(current, resource, patient.Precedence.INCOMING, source=_source_of(resource),
                                 policy=policy)


def _merge_patients(client: FhirApi, chunk: list[dict[str, Any]],
                    conflicts: PatientConflicts | None = None) -> list[dict[str, Any]]:
    """Keep elements of Patients that already exist (one search per chunk); a demographic value another source
    set is kept or replaced by the policy and reported, one this file set is corrected."""
    ids = [e["resource"]["id"] for e in chunk if e["resource"]["resourceType"] == "Patient"]
    if not ids:
        return chunk
    existing = {r["id"]: r for r in search_ids(client, "Patient", ids)}
    if not existing:
        return chunk
    policy = conflicts.policy if conflicts is not None else patient.ConflictPolicy.KEEP
    out = []
    for e in chunk:
        r = e["resource"]
        old = existing.get(r["id"]) if r["resourceType"] == "Patient" else None
        if old:
            merge = merge_with_server(r, old, policy)
            if conflicts is not None:
                conflicts.add(r["id"], merge)
            else:
                for conflict in merge.conflicts:
                    log.warning("%s", conflict.message(r["id"]))
            e = {**e, "resource": merge.resource}
        out.append(e)
    return out


def find_patient_conflicts(client: FhirApi, patients: Iterable[dict[str, Any]],
                           policy: patient.ConflictPolicy) -> PatientConflicts:
    """Compare the table's Patients with the server without writing (``--plan``, ``patient_conflicts: fail``)."""
    found = PatientConflicts(policy)
    for chunk in chunked((e["resource"] for e in patients), IDS_PER_SEARCH):
        current = {r["id"]: r for r in search_ids(client, "Patient", [r["id"] for r in chunk])}
        for r in chunk:
            if r["id"] in current:
                found.add(r["id"], merge_with_server(r, current[r["id"]], policy))
    return found


#: attempts of one chunk that collides with a concurrent writer of the same ids (HAPI: HTTP 409, HAPI-0550)
CONFLICT_ATTEMPTS = 5


def _keep_retractions(client: FhirApi, chunk: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Drop the retraction marker; keep a retraction only if its Observation exists and is not yet retracted."""
    ids = [e["resource"]["id"] for e in chunk if e.get(RETRACT)]
    if not ids:
        return chunk, 0
    live = {r["id"] for r in search_ids(client, "Observation", ids, {"_elements": "status"})
            if r.get("status") != "entered-in-error"}
    out = [{k: v for k, v in e.items() if k != RETRACT} for e in chunk
           if not e.get(RETRACT) or e["resource"]["id"] in live]
    return out, len(live)


def _write_chunk(client: FhirApi, chunk: list[dict[str, Any]], merge_patients: bool,
                 conflicts: PatientConflicts | None = None) -> WriteResult:
    """One transaction; on 409 (an overlapping import upserting the same ids) re-read and re-send it: the
    entries are idempotent ``PUT``s with deterministic ids, so re-sending cannot duplicate anything."""
    chunk, retracted = _keep_retractions(client, chunk)
    if not chunk:
        return WriteResult()
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            result = client.write_entries(_merge_patients(client, chunk, conflicts) if merge_patients else chunk,
                                          chunk_size=len(chunk))
            result.retracted += retracted
            return result
        except FhirServerError as exc:
            if exc.status_code != 409 or attempt == CONFLICT_ATTEMPTS:
                raise
            log.info("chunk collided with a concurrent write of the same resources (HTTP 409); retrying (%d/%d)",
                     attempt, CONFLICT_ATTEMPTS)
            time.sleep(random.uniform(0.05, 0.3) * attempt)
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


#: progress is logged at least this often while writing (seconds)
PROGRESS_EVERY_S = 10.0


@dataclass
class AutoWorkers:
    """``--workers auto``: the number of parallel transaction streams chosen from the server's own answers.

    The first chunks are written as a probe: ``chunks_per_step × n`` chunks at each stream count ``n`` of
    ``steps`` (1, 2, 4, 8), each step drained before the next so its rate (entries per second, wall clock) is its
    own. The probe stops at the first step that is not ``gain`` (10 %) faster than the best so far, which covers a
    server that answers 429/503 (our client waits and retries, so the rate drops) or whose latency grows with
    load; the fewest streams within 10 % of the fastest rate measured are used for the rest. A file too small to
    finish the probe keeps what was measured. ``chosen`` and ``rates`` go into the import report and the log.
    """

    steps: tuple[int, ...] = (1, 2, 4, 8)
    chunks_per_step: int = 2
    gain: float = 1.1
    rates: dict[int, float] = field(default_factory=dict)
    chosen: int | None = None
    #: the probe's clock (seconds); tests give a deterministic one
    clock: Callable[[], float] = field(default=time.perf_counter, repr=False)

    @property
    def best(self) -> int:
        """The fewest streams within ``gain`` of the fastest rate measured (as fast, kinder to a shared server)."""
        if not self.rates:
            return self.steps[0]
        top = max(self.rates.values())
        return min(n for n, r in self.rates.items() if r * self.gain >= top)

    def as_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen or self.best, "rates": {str(n): round(r, 1) for n, r in self.rates.items()},
                "steps": list(self.steps)}


def _probe_workers(auto: AutoWorkers, chunks: Iterator[list[dict[str, Any]]],
                   write: Callable[[list[dict[str, Any]]], WriteResult],
                   add: Callable[[WriteResult], None]) -> int:
    """Write the probe chunks of :class:`AutoWorkers` from ``chunks``; the stream count to go on with."""
    from concurrent.futures import ThreadPoolExecutor

    if auto.chosen is not None:
        return auto.chosen
    for n in auto.steps:
        batch = list(itertools.islice(chunks, n * auto.chunks_per_step))
        if not batch:
            return auto.best  # a small file: what was measured decides (the next call goes on probing)
        t = auto.clock()
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="fhir-probe") as pool:
            results = list(pool.map(write, batch))
        elapsed = max(auto.clock() - t, 1e-6)
        for r in results:
            add(r)
        rate = sum(len(c) for c in batch) / elapsed
        best = max(auto.rates.values(), default=0.0)
        auto.rates[n] = rate
        log.info("--workers auto: %d stream(s): %.0f entries/s", n, rate)
        if len(batch) < n * auto.chunks_per_step:
            return auto.best
        if best and rate < best * auto.gain:
            break
    auto.chosen = auto.best
    log.info("--workers auto: chose %d stream(s) (entries/s by streams: %s)", auto.chosen,
             {k: round(v) for k, v in auto.rates.items()})
    return auto.chosen


def write_chunks(client: FhirApi, entries: Iterable[dict[str, Any]], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 merge_patients: bool = True, workers: int | AutoWorkers = 1,
                 conflicts: PatientConflicts | None = None) -> WriteResult:
    """Write entries as transaction chunks, ``workers`` at a time (or chosen by :class:`AutoWorkers`); returns
    what the server confirmed.

    With several workers at most ``2 * workers`` chunks are in memory; each chunk is one atomic transaction.
    """
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    total = WriteResult()
    t0 = last = time.monotonic()
    lock = threading.Lock()

    def add(result: WriteResult) -> None:
        nonlocal last, total
        with lock:
            total += result
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S:
                last = now
                log.info("progress: %d chunks written in %.0f s (%s)", total.chunks, now - t0, total.types)

    def write(chunk: list[dict[str, Any]]) -> WriteResult:
        return _write_chunk(client, chunk, merge_patients, conflicts)

    chunks = iter(chunked(entries, chunk_size))
    if isinstance(workers, AutoWorkers):
        workers = _probe_workers(workers, chunks, write, add)
    if workers <= 1:
        for chunk in chunks:
            add(write(chunk))
        return total
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fhir-write") as pool:
        pending: set[Future[WriteResult]] = set()
        for chunk in chunks:
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    add(f.result())
            pending.add(pool.submit(write, chunk))
        for f in pending:
            add(f.result())
    return total


def import_table(table: Table, mapping: dict[str, Any], *, client: FhirApi | None = None,
                 out_path: str | Path | None = None, skip_invalid_rows: bool = False,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, workers: int | AutoWorkers = 1) -> ImportReport:
    """Validate the whole table, then write it to ``client`` (or a Bundle file ``out_path``); the report.

    ``workers``: parallel transaction chunks, or an :class:`AutoWorkers` that chooses them from the server (the
    Patients are written with the probe's best count so far, the probe itself runs on the other resources).

    Raises :class:`TableRejected` (report attached) when cells are invalid and ``skip_invalid_rows`` is
    off, :class:`MappingError` for structural problems (missing key column, empty file).
    """
    t0 = time.perf_counter()
    mapper = TableMapper(mapping, table_name=table.name)
    scanned = scan(table, mapper)
    name = mapping.get("name", "mapping")
    if scanned.issue_count and not skip_invalid_rows:
        refused = report_of(table.name, name, scanned, status="rejected", duration_s=time.perf_counter() - t0)
        first = scanned.issues[0]
        raise TableRejected(f"{table.name}: {scanned.issue_count} invalid cell(s) in {scanned.rows_rejected} row(s); "
                            f"first: row {first.row}, column {first.column!r}, value {first.value[:60]!r}: "
                            f"{first.rule} (nothing written; use skip-invalid-rows to import the valid rows)", refused)
    conflicts = PatientConflicts(patient.ConflictPolicy(mapping.get("patient_conflicts", "keep")))
    if client is not None and out_path is None and conflicts.policy is patient.ConflictPolicy.FAIL:
        found = find_patient_conflicts(client, iter_patient_entries(mapper, scanned), conflicts.policy)
        if found.found:
            refused = report_of(table.name, name, scanned, status="rejected", duration_s=time.perf_counter() - t0)
            refused["patient_conflicts"] = found.found
            raise TableRejected(f"{table.name}: {len(found.found)} Patient value(s) differ from what another source "
                                f"wrote; first: {found.messages[0]} (rule: patient_conflicts: fail; nothing "
                                "written)", refused)
    if out_path is not None:
        written = write_bundle_file(out_path, (e for e in iter_entries(table, mapper, scanned, skip_invalid_rows=True)
                                               if not e.get(RETRACT)))
    elif client is not None:
        # all Patients first (merged with existing ones, one search per chunk), then the other resources without
        # any read: parallel chunks never reference a missing Patient and the write path has no searches
        # with auto, each phase probes on its own (a Patient chunk also searches, so its rate is not comparable)
        pat_workers = AutoWorkers(workers.steps, workers.chunks_per_step, workers.gain, clock=workers.clock) \
            if isinstance(workers, AutoWorkers) else workers
        written = write_chunks(client, iter_patient_entries(mapper, scanned), chunk_size=chunk_size,
                               workers=pat_workers, conflicts=conflicts)
        written += write_chunks(client, iter_entries(table, mapper, scanned, skip_invalid_rows=True, patients=False),
                                chunk_size=chunk_size, workers=workers, merge_patients=False)
        if isinstance(workers, AutoWorkers) and not workers.rates and isinstance(pat_workers, AutoWorkers):
            workers = pat_workers  # a table of Patients only: their probe decided
    else:
        raise ConfigError("import_table needs a FHIR client or an output path (rule: --fhir or --out)")
    status = "imported" if not scanned.issue_count else "imported-with-rejections"
    rep = ImportReport.from_dict(report_of(table.name, name, scanned, status=status, written=written.types,
                                           duration_s=time.perf_counter() - t0, skip_invalid_rows=skip_invalid_rows))
    rep.chunks = written.chunks
    rep.retracted = written.retracted
    if isinstance(workers, AutoWorkers):
        rep.workers = workers.chosen or workers.best
        rep.workers_auto = workers.as_dict()
    else:
        rep.workers = workers
    rep.patient_conflicts_policy = conflicts.policy.value
    rep.patient_corrections = conflicts.corrected
    if conflicts.found:
        rep.patient_conflicts = conflicts.found
        rep.status = "imported-with-conflicts"
    log.info("imported %s: %d rows, %s", table.name, scanned.rows_read, rep.resources_written)
    return rep


MAX_REPORTED_CONFLICTS = 200


def write_bundle_file(out_path: str | Path, entries: Iterable[dict[str, Any]]) -> WriteResult:
    """Stream entries into one transaction Bundle JSON file (constant memory); what was written, per type."""
    written = WriteResult(chunks=1)
    with open(out_path, "w", encoding="utf-8") as fh:
        fh.write('{"resourceType": "Bundle", "type": "transaction", "entry": [')
        first = True
        for e in entries:
            fh.write(("\n" if first else ",\n") + json.dumps(e, separators=(",", ":")))
            first = False
            rtype = e["resource"]["resourceType"]
            written.types[rtype] = written.types.get(rtype, 0) + 1
            written.entries += 1
        fh.write("\n]}\n")
    return written


def import_object(store: ObjectStoreApi, client: FhirApi, bucket: str, key: str, *, mapping_key: str | None = None,
                  preset: str | None = None, skip_invalid_rows: bool = False, signature: str | None = None,
                  chunk_size: int = DEFAULT_CHUNK_SIZE) -> ImportReport:
    """Import one S3 object; writes ``<name>.import-report.json`` and the watcher state, returns the report.

    The mapping comes from ``mapping_key``, else ``<name>.mapping.yaml`` beside the object, else
    ``preset``, else the preset named in ``<name>.preset``. Outcomes recorded in the state: ``imported``,
    ``rejected`` (invalid data: not retried for the same ETag), ``gone`` (deleted before reading),
    ``failed`` (server or store error: the watcher retries it on its next run; the error is re-raised).
    """
    t0 = time.perf_counter()
    side = W.sidecars(key)
    sig = signature or W.signature_of(store, bucket, key)
    # the object is streamed to a temporary file and the table read from there: constant memory for any size
    with tempfile.TemporaryDirectory(prefix="kaapana-fhir-import-") as tmp:
        local = Path(tmp) / "table"  # a fixed name: nothing on disk is named after the (untrusted) key
        try:
            store.get_file(bucket, key, local)
        except ObjectStoreError as exc:
            if store.head(bucket, key) is None:
                log.warning("object %s was deleted before it could be read; nothing imported", key)
                rep = ImportReport(file=key, status="gone", error=str(exc),
                                   duration_s=round(time.perf_counter() - t0, 3))
                W.write_state(store, bucket, key, sig, "gone")
                return rep
            W.write_state(store, bucket, key, sig, "failed", error=str(exc))
            raise
        return _import_local(store, client, bucket, key, local, side=side, sig=sig, t0=t0, mapping_key=mapping_key,
                             preset=preset, skip_invalid_rows=skip_invalid_rows, chunk_size=chunk_size)


def _import_local(store: ObjectStoreApi, client: FhirApi, bucket: str, key: str, local: Path, *,
                  side: dict[str, str], sig: str, t0: float, mapping_key: str | None, preset: str | None,
                  skip_invalid_rows: bool, chunk_size: int) -> ImportReport:
    """The import of an object already downloaded to ``local``; writes its report and the watcher state."""
    status, error = "failed", None
    try:
        mapping_text, mapping_name, dictionary_text = _fetch_mapping(store, bucket, side, mapping_key, preset)
        if mapping_text is None and not preset:
            has_preset = store.head(bucket, side["preset"]) is not None
            preset = W.preset_name(W.read_text(store, bucket, side["preset"])) if has_preset else None
        src = load_mapping(mapping_text, source=mapping_name).get("source", {}) if mapping_text else {}
        table = open_table(local, name=key, fmt=src.get("format", "auto"), delimiter=src.get("delimiter"),
                           encoding=src.get("encoding"), sheet=src.get("sheet"))
        mapping = resolve_mapping(header=table.header, mapping_text=mapping_text, mapping_name=mapping_name,
                                  preset=preset, dictionary_text=dictionary_text, table_name=key, data=local)
        rep = import_table(table, mapping, client=client, skip_invalid_rows=skip_invalid_rows, chunk_size=chunk_size,
                           workers=AutoWorkers())  # parallel chunks, as many as the server's answers show help
        status = "imported"
    except TableRejected as exc:
        rep, status, error = ImportReport.from_dict(exc.report), "rejected", str(exc)
    except (MappingError, ConfigError) as exc:
        rep = ImportReport(file=key, status="rejected", rows_read=0, resources_written={}, rejected=[])
        status, error = "rejected", str(exc)
    except Exception as exc:  # server/store failure: record it for the watcher's retry, then re-raise
        failed = ImportReport(file=key, status="failed", error=str(exc), duration_s=round(time.perf_counter() - t0, 3))
        _safe_put_report(store, bucket, side["report"], failed)
        W.write_state(store, bucket, key, sig, "failed", error=str(exc))
        raise
    rep.status = status if status != "imported" else (rep.status or "imported")
    rep.duration_s = round(time.perf_counter() - t0, 3)
    rep.object_key, rep.bucket, rep.etag_signature = key, bucket, sig
    if error:
        rep.error = error
    _safe_put_report(store, bucket, side["report"], rep)
    W.write_state(store, bucket, key, sig, status, error=error)
    return rep


def _fetch_mapping(store: ObjectStoreApi, bucket: str, side: dict[str, str], mapping_key: str | None,
                   preset: str | None) -> tuple[str | None, str, str | None]:
    mkey = mapping_key
    if not mkey and not preset:
        mkey = next((k for k in (side["mapping"], side["mapping_yml"]) if store.head(bucket, k)), None)
    text = W.read_text(store, bucket, mkey) if mkey else None
    dictionary = W.read_text(store, bucket, side["dictionary"]) if store.head(bucket, side["dictionary"]) else None
    return text, (mkey or f"preset:{preset}"), dictionary


def _safe_put_report(store: ObjectStoreApi, bucket: str, key: str, rep: ImportReport) -> None:
    store.put_bytes(bucket, key, json.dumps(rep.as_dict(), indent=1, default=str).encode("utf-8"),
                    "application/json")
