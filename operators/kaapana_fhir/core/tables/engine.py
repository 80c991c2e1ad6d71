"""Two-pass table import (pure): validate the whole file, then stream transaction entries.

Pass 1 (:func:`scan`) maps every row, collects cell issues (row, column, value, rule) and detects
duplicate patient rows with conflicting values; nothing is written. Pass 2 (:func:`iter_entries`) maps
the rows again and yields ``PUT`` entries (Patient first, then its Observations/Conditions) so memory is
bounded by the write chunk: the per-patient bookkeeping (merged Patient fields, first row, which
Patients were emitted) lives in a private temporary SQLite file (:class:`PatientIndex`), not in memory.

Policy: by default any invalid cell rejects the whole file (:class:`TableRejected` with the report);
with ``skip_invalid_rows`` the valid rows are imported and the rejected rows are reported. Rows that
disappear from a later version of a file are **not** deleted from the server (see :mod:`.build`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kaapana_fhir.core.bundle import put_entry
from kaapana_fhir.core.tables.build import RowIssue, TableMapper, is_empty_row
from kaapana_fhir.core.tables.mapping import pending_edits
from kaapana_fhir.core.tables.reader import Table
from kaapana_fhir.core.validate import validate_resource
from kaapana_fhir.exceptions import ConfigError, MappingError

#: key marking an entry that retracts an Observation whose cell became empty (removed before writing)
RETRACT = "x-retract"

log = logging.getLogger(__name__)

#: a progress line is logged at least this often while reading and writing a table (seconds)
PROGRESS_EVERY_S = 10.0

#: At most this many issues are kept in a report (the count is always exact).
MAX_REPORTED_ISSUES = 1000


class _Progress:
    """Logs ``<what>: row N (R rows/s)`` when a pass starts and then at least every :data:`PROGRESS_EVERY_S`
    seconds (checked every 256 rows)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.t0 = self.last = time.monotonic()
        log.info("%s: row 1 (start)", what)

    def tick(self, row: int) -> None:
        if row & 255:
            return
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S * 0.9:
            self.last = now
            log.info("%s: row %d (%.0f rows/s)", self.what, row, row / max(now - self.t0, 1e-9))


class PatientIndex:
    """Per-file bookkeeping on disk (SQLite temp file, 2 MB cache): duplicate-row digests and Patients."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("")  # "" = private temporary on-disk database, removed on close
        self.db.execute("PRAGMA cache_size=-2000")
        self.db.execute("CREATE TABLE seen (k INTEGER PRIMARY KEY, row INTEGER, digest INTEGER)")
        self.db.execute("CREATE TABLE pat (k TEXT PRIMARY KEY, row INTEGER, fields TEXT, emitted INTEGER)")

    @staticmethod
    def _int(b: bytes) -> int:
        return int.from_bytes(b, "big", signed=True)

    def seen_row(self, key: bytes, row: int, digest: bytes) -> tuple[int, bool] | None:
        """None if new; else (first row, same digest)."""
        k, d = self._int(key), self._int(digest)
        hit = self.db.execute("SELECT row, digest FROM seen WHERE k=?", (k,)).fetchone()
        if hit is None:
            self.db.execute("INSERT INTO seen VALUES (?,?,?)", (k, row, d))
            return None
        return hit[0], hit[1] == d

    def patient(self, key: str) -> tuple[int, dict[str, Any], bool] | None:
        hit = self.db.execute("SELECT row, fields, emitted FROM pat WHERE k=?", (key,)).fetchone()
        return None if hit is None else (hit[0], json.loads(hit[1]), bool(hit[2]))

    def put_patient(self, key: str, row: int, fields: dict[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO pat VALUES (?,?,?,0)", (key, row, json.dumps(fields)))

    def mark_emitted(self, key: str) -> None:
        self.db.execute("UPDATE pat SET emitted=1 WHERE k=?", (key,))

    def reset_emitted(self) -> None:
        self.db.execute("UPDATE pat SET emitted=0")

    def patient_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM pat").fetchone()[0])


@dataclass
class ScanResult:
    rows_read: int = 0
    empty_rows: int = 0
    issue_count: int = 0
    issues: list[RowIssue] = field(default_factory=list)
    bad_rows: set[int] = field(default_factory=set)
    duplicate_rows: set[int] = field(default_factory=set)
    index: PatientIndex = field(default_factory=PatientIndex)
    resources: Counter[str] = field(default_factory=Counter)

    @property
    def rows_rejected(self) -> int:
        return len(self.bad_rows)

    def add(self, issue: RowIssue) -> None:
        self.issue_count += 1
        self.bad_rows.add(issue.row)
        if len(self.issues) < MAX_REPORTED_ISSUES:
            self.issues.append(issue)


class TableRejected(MappingError):
    """The file has invalid cells and ``skip_invalid_rows`` is off; ``report`` lists them."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


class MappingIncomplete(ConfigError):
    """The mapping still has ``TODO`` placeholders or ``review`` markers; ``items`` lists them."""

    def __init__(self, name: str, items: list[str]) -> None:
        shown = "".join(f"\n  - {i}" for i in items[:30]) + (f"\n  ... {len(items) - 30} more" if len(items) > 30
                                                               else "")
        super().__init__(f"mapping {name}: {len(items)} item(s) to fill in or confirm before any import "
                         f"(rule: no TODO placeholders or review markers; nothing was written):{shown}")
        self.items = items


def check_ready(mapping: dict[str, Any]) -> None:
    """Refuse a mapping that still holds ``TODO`` placeholders or ``review`` markers (generated, untouched)."""
    items = pending_edits({k: v for k, v in mapping.items() if k != "value_maps"}) + pending_edits(
        mapping.get("value_maps") or {}, "value_maps")
    if items:
        raise MappingIncomplete(str(mapping.get("name", "mapping")), items)


def scan(table: Table, mapper: TableMapper, *, validate_kinds: bool = True, require_ready: bool = True) -> ScanResult:
    """Validate every row of ``table`` (pass 1). Structural problems raise :class:`MappingError`; a mapping
    with ``TODO``/``review`` items raises :class:`MappingIncomplete` before any row is read."""
    if require_ready:
        check_ready(mapper.m)
    mapper.bind(table.header, delimiter=table.delimiter)
    res = ScanResult()
    kinds: set[tuple[str, str]] = set()
    progress = _Progress(f"{table.name}: validating")
    for n, row in table.rows():
        progress.tick(n)
        if is_empty_row(row):
            res.empty_rows += 1
            continue
        res.rows_read += 1
        mapped, issues = mapper.map_row(n, row)
        for i in issues:
            res.add(i)
        if mapped is None:
            continue
        # duplicate rows for one patient (and instance) must agree
        k = hashlib.blake2b(f"{mapped.patient_id}|{mapped.instance}".encode(), digest_size=8).digest()
        prev = res.index.seen_row(k, n, mapped.digest)
        if prev and not prev[1]:
            res.add(RowIssue(n, mapper.key_label, mapped.patient_key,
                             f"duplicate patient row with conflicting values (first at row {prev[0]})"))
            continue
        if prev:  # an identical repeat of an earlier row: nothing new to write
            res.duplicate_rows.add(n)
            continue
        known = res.index.patient(mapped.patient_key)
        if known is None:
            res.index.put_patient(mapped.patient_key, n, mapped.patient_fields)
        else:
            first_row, merged, _ = known
            conflict = [f for f, v in mapped.patient_fields.items() if f in merged and merged[f] != v]
            if conflict:
                res.add(RowIssue(n, mapper.key_label, mapped.patient_key,
                                 f"duplicate patient row with conflicting {', '.join(conflict)} "
                                 f"(first at row {first_row})"))
                continue
            if any(f not in merged for f in mapped.patient_fields):
                res.index.put_patient(mapped.patient_key, first_row, {**merged, **mapped.patient_fields})
        for r in mapped.resources:
            res.resources[r["resourceType"]] += 1
            kind = (r["resourceType"], r["code"].get("text", ""))
            if validate_kinds and kind not in kinds:
                kinds.add(kind)
                try:
                    validate_resource(r)
                except MappingError as exc:
                    res.add(RowIssue(n, kind[1], "", f"mapped resource is not valid FHIR R4: {exc}"))
    if res.rows_read == 0:
        raise MappingError(f"{table.name}: no data rows (header only or only empty rows) "
                           "(rule: a table needs at least one data row)")
    res.resources["Patient"] = res.index.patient_count()
    return res


def iter_patient_entries(mapper: TableMapper, scanned: ScanResult) -> Iterator[dict[str, Any]]:
    """``PUT`` entries of every Patient of the scanned file (from the on-disk index; constant memory)."""
    cur = scanned.index.db.execute("SELECT k, fields FROM pat ORDER BY row")
    while True:
        batch = cur.fetchmany(1000)
        if not batch:
            return
        for key, fields in batch:
            yield put_entry(mapper.patient(key, json.loads(fields)))


def iter_entries(table: Table, mapper: TableMapper, scanned: ScanResult, *,
                 skip_invalid_rows: bool = False, patients: bool = True) -> Iterator[dict[str, Any]]:
    """Transaction ``PUT`` entries of all valid rows (pass 2); Patient before its resources (``patients=False``:
    no Patients, for writers that wrote them all first with :func:`iter_patient_entries`)."""
    if scanned.issue_count and not skip_invalid_rows:
        raise MappingError("refusing to write a file with invalid rows (rule: skip_invalid_rows is off)")
    scanned.index.reset_emitted()
    progress = _Progress(f"{table.name}: building resources")
    for n, row in table.rows():
        progress.tick(n)
        if n in scanned.bad_rows or n in scanned.duplicate_rows or is_empty_row(row):
            continue
        mapped, issues = mapper.map_row(n, row)
        if mapped is None or issues:
            continue
        known = scanned.index.patient(mapped.patient_key) if patients else None
        if known is not None and not known[2]:
            scanned.index.mark_emitted(mapped.patient_key)
            yield put_entry(mapper.patient(mapped.patient_key, known[1]))
        for r in mapped.resources:
            yield put_entry(r)
        for r in mapped.retractions:  # empty_cells: retract; the writer keeps only those that exist
            yield {**put_entry(r), RETRACT: True}


def report_of(table_name: str, mapping_name: str, scanned: ScanResult | None, *, status: str,
              written: dict[str, int] | None = None, duration_s: float = 0.0, error: str | None = None,
              skip_invalid_rows: bool = False) -> dict[str, Any]:
    """The import report (``<name>.import-report.json``)."""
    rep: dict[str, Any] = {
        "file": table_name, "mapping": mapping_name, "status": status, "skip_invalid_rows": skip_invalid_rows,
        "rows_read": scanned.rows_read if scanned else 0, "empty_rows": scanned.empty_rows if scanned else 0,
        "rows_rejected": scanned.rows_rejected if scanned else 0,
        "resources_written": {k: v for k, v in (written or {}).items() if k[:1].isupper()},
        "rejected": [i.as_dict() for i in scanned.issues] if scanned else [],
        "issue_count": scanned.issue_count if scanned else 0,
        "duration_s": round(duration_s, 3),
        "policy": "rows that disappear from a later version of the file are not deleted from the server; cells "
                  "that became empty are kept, or retracted (status entered-in-error) with empty_cells: retract",
    }
    if scanned and scanned.issue_count > len(scanned.issues):
        rep["rejected_truncated"] = True
    if error:
        rep["error"] = error
    return rep
