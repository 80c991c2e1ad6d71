"""One merge-and-write strategy for resources that several flows write (no Airflow).

Patient and ImagingStudy are shared: the DICOM flow writes them in full, the radiomics flow needs them to
exist, the table flow fills the Patient. Kaapana triggers ``dicom-to-fhir`` and ``radiomics-to-fhir`` on the
same incoming series at the same time, so every writer of a shared resource goes through :func:`write_merged`:

1. read the current version (and its ETag) of every shared resource;
2. compute what to write: ``merge(current, ours)`` for a :class:`Shared` item with a merge function, or — for a
   **create-only** item (``merge=None``, e.g. the radiomics flow's Patient/ImagingStudy stubs) — ours only when
   the resource is absent; an existing resource is left to its owner and never replaced;
3. write everything in one transaction, ``If-Match: <ETag>`` on every shared resource that existed, so a
   concurrent change answers 409/412 → re-read, merge again, retry (bounded, with jitter);
4. a shared resource that was absent when read but whose write answered version > 1 was created concurrently
   by another writer between our read and our write (FHIR has no "create only" PUT that every server honours):
   its previous version is read from ``_history`` and merged back (create-only: restored), under ``If-Match``.

The answer of every write is checked by the client (:meth:`FhirClient.transaction`). Unchanged resources are not
written (no new versions on re-runs).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from kaapana_fhir.clients.protocols import FhirApi
from kaapana_fhir.core import bundle as fb
from kaapana_fhir.core.dicom.merge import comparable, same_content
from kaapana_fhir.exceptions import FhirServerError, ResourceNotFound

log = logging.getLogger(__name__)

CONFLICT = (409, 412)
_VERSION_RE = re.compile(r"/_history/(\d+)")

Merge = Callable[[dict[str, Any] | None, dict[str, Any]], dict[str, Any]]


@dataclass
class MergeCounts:
    """What :func:`write_merged` did: entries the server ``created``, ``updated`` or left ``unchanged`` (also
    resources we did not send because they were unchanged, and create-only ones that existed), and
    ``conflicts``: re-reads after 409/412 or after a concurrent create. Counts of several writes add up with
    ``+=``."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    conflicts: int = 0

    def __iadd__(self, other: MergeCounts) -> MergeCounts:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.conflicts += other.conflicts
        return self

    def as_dict(self) -> dict[str, int]:
        """JSON-able form (XCom, CLI)."""
        return asdict(self)


@dataclass
class Shared:
    """A resource shared with other writers.

    ``merge(current, ours) -> to write``; ``None`` means create-only: written only when absent, never replacing.
    ``validate``: run on a merged resource (one that existed, or with versions merged back) before it is written.
    """

    resource: dict[str, Any]
    merge: Merge | None = None
    validate: Callable[[dict[str, Any]], Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.resource['resourceType']}/{self.resource['id']}"


def _read(fhir: FhirApi, rtype: str, rid: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        res, etag = fhir.read_with_etag(rtype, rid)
        return res, etag
    except ResourceNotFound:
        return None, None


def read_many(fhir: FhirApi, keys: Sequence[tuple[str, str]]) -> dict[str, tuple[dict[str, Any], str | None]]:
    """Current versions (with ETag) of ``keys`` (``(type, id)``) with one ``batch`` of GETs; absent keys are left out.

    Reads by id, not a search (HAPI would persist a search result per call); a 404/410 entry means absent. The
    client checks the batch-response (type, one entry per request).
    """
    if not keys:
        return {}
    bundle = {"resourceType": "Bundle", "type": "batch",
              "entry": [{"request": {"method": "GET", "url": f"{t}/{i}"}} for t, i in keys]}
    answer = fhir.transaction(bundle)
    entries = answer.get("entry", []) if isinstance(answer, dict) else []
    if not isinstance(answer, dict) or answer.get("type") != "batch-response" or len(entries) != len(keys):
        kind = answer.get("type") if isinstance(answer, dict) else type(answer).__name__
        raise FhirServerError(f"FHIR batch read of {len(keys)} resources: unexpected answer "
                              f"(type {kind!r}, {len(entries)} entries)")
    out: dict[str, tuple[dict[str, Any], str | None]] = {}
    for (rtype, rid), e in zip(keys, entries, strict=True):
        status = str((e.get("response") or {}).get("status") or "").split(" ")[0]
        res = e.get("resource")
        if status.startswith("2") and isinstance(res, dict) and res.get("resourceType") == rtype:
            vid = (res.get("meta") or {}).get("versionId")
            out[f"{rtype}/{rid}"] = (res, f'W/"{vid}"' if vid else None)
        elif status not in ("404", "410"):
            raise FhirServerError(f"FHIR batch read of {rtype}/{rid} answered {status or 'no status'}",
                                  status_code=int(status) if status.isdigit() else 0)
    return out


def _version(entry: dict[str, Any]) -> int:
    m = _VERSION_RE.search(str((entry.get("response") or {}).get("location") or ""))
    return int(m.group(1)) if m else 0


def _outcome_codes(entry: dict[str, Any]) -> list[str]:
    outcome = (entry.get("response") or {}).get("outcome") or {}
    return [str(c.get("code")) for i in outcome.get("issue", []) for c in (i.get("details") or {}).get("coding", [])]


def with_lost(merge: Merge, lost: Sequence[dict[str, Any]]) -> Merge:
    """``merge`` that also merges back ``lost`` versions (created by a concurrent writer, replaced by us)."""
    if not lost:
        return merge

    def merged(cur: dict[str, Any] | None, ours: dict[str, Any]) -> dict[str, Any]:
        out = merge(cur, ours)
        for old in lost:
            out = merge(old, out)
        return out

    return merged


def write_merged(fhir: FhirApi, shared: Sequence[Shared], also: Sequence[dict[str, Any]] = (), *,
                 written: dict[str, str] | None = None, max_attempts: int = 8, label: str = "",
                 batch_read: bool = False) -> MergeCounts:
    """Write ``shared`` (merged, ``If-Match``) and ``also`` (plain idempotent PUTs) in one transaction.

    ``written`` caches ``also`` resources already written in this process (skipped when unchanged).
    ``batch_read``: read the shared resources with one ``batch`` request (:func:`read_many`) instead of one GET
    each: the DICOM flow writes several studies (Patients and ImagingStudies) per transaction.
    Returns the :class:`MergeCounts`.
    """
    written = written if written is not None else {}
    counts = MergeCounts()
    lost: dict[str, list[dict[str, Any]]] = {s.key: [] for s in shared}
    restore: dict[str, dict[str, Any]] = {}
    for attempt in range(1, max_attempts + 1):
        entries: list[dict[str, Any]] = []
        absent: dict[int, Shared] = {}  # entry index → shared item that did not exist when read
        skipped = kept = 0
        current = read_many(fhir, [(s.resource["resourceType"], s.resource["id"]) for s in shared]) \
            if batch_read else None
        for item in shared:
            rtype, rid = item.resource["resourceType"], item.resource["id"]
            cur, etag = current.get(item.key, (None, None)) if current is not None else _read(fhir, rtype, rid)
            if item.key in restore:  # we replaced a concurrent create-only resource: put its content back
                if cur is None or same_content(cur, restore[item.key]):
                    restore.pop(item.key)
                    kept += 1
                    continue
                entries.append(fb.put_entry(restore[item.key], if_match=etag))
                continue
            if item.merge is None:
                if cur is not None:
                    kept += 1
                    continue
                desired = item.resource
            else:
                desired = item.merge(cur, item.resource)
                for old in lost[item.key]:
                    desired = item.merge(old, desired)
                if same_content(cur, desired):
                    skipped += 1
                    continue
            if item.validate is not None and (cur is not None or lost.get(item.key)):
                item.validate(desired)
            if cur is None:
                absent[len(entries)] = item
            entries.append(fb.put_entry(desired, if_match=etag if cur is not None else None))
        for r in also:
            key = f"{r['resourceType']}/{r['id']}"
            if written.get(key) == comparable(r):
                skipped += 1
                continue
            entries.append(fb.put_entry(r))
        if not entries:
            counts.unchanged += skipped + kept
            return counts
        try:
            resp = fhir.transaction(fb.transaction(entries, sort=False))
        except FhirServerError as exc:
            if exc.status_code not in CONFLICT or attempt == max_attempts:
                raise
            counts.conflicts += 1
            log.info("%s: version conflict (HTTP %s), re-reading and retrying (%d/%d)", label or "write",
                     exc.status_code, attempt, max_attempts)
            time.sleep(random.uniform(0.05, 0.2) * attempt)
            continue
        for r in also:
            written[f"{r['resourceType']}/{r['id']}"] = comparable(r)
        again = False
        for i, e in enumerate(resp.get("entry", [])):
            status = str((e.get("response") or {}).get("status") or "").split(" ")[0]
            if status == "201":
                counts.created += 1
            elif "SUCCESSFUL_UPDATE_NO_CHANGE" in _outcome_codes(e):
                counts.unchanged += 1
            else:
                counts.updated += 1
            created = absent.get(i)
            version = _version(e)
            if created is not None and version > 1:  # created concurrently between our read and our write
                rtype, rid = created.resource["resourceType"], created.resource["id"]
                try:
                    prev = fhir.request("GET", f"{rtype}/{rid}/_history/{version - 1}").json()
                except ResourceNotFound:
                    continue
                counts.conflicts += 1
                log.info("%s: %s was created concurrently; merging its version %d back", label or "write",
                         created.key, version - 1)
                if created.merge is None:
                    restore[created.key] = prev
                else:
                    lost[created.key].append(prev)
                again = True
        counts.unchanged += skipped + kept
        if not again:
            return counts
        also = ()  # written; only the shared resources are merged again
    return counts
