"""FHIR Bulk Data ``$export`` client (kick-off, status polling, NDJSON download).

The flow follows the FHIR Bulk Data Access IG (v2), as HAPI FHIR 8.8 serves it:

1. **kick-off** ``GET [base]/$export`` (system), ``[base]/Patient/$export`` or ``[base]/Group/<id>/$export``
   with ``Prefer: respond-async``; the server answers ``202`` and the status URL in ``Content-Location``;
2. **poll** the status URL: ``202`` (with ``Retry-After`` and ``X-Progress``) while the job runs, ``200`` and
   a JSON manifest (``output``: one URL per file and resource type) when it is done, an error status with an
   OperationOutcome when it failed, ``404`` when the job was cancelled, expired or never existed;
3. **download** every output file (``application/fhir+ndjson``, one resource per line), streamed to disk.

Waits honour ``Retry-After`` but are capped at :attr:`ExportPolicy.max_poll_interval` (HAPI 8.8 always answers
a fixed 120 s, while small exports finish in seconds) and never run past :attr:`ExportPolicy.deadline`.

Failures are explicit: :class:`BulkExportFailed` (the server reports the job failed),
:class:`BulkExportGone` (job or output file no longer exists: cancelled, expired after the server's
retention, HAPI's default is 2 h, or the server restarted), :class:`BulkExportTimeout` (deadline passed; the job
keeps running and :meth:`BulkExporter.export` with the same folder resumes it) and
:class:`BulkExportDownloadError` (a file broke off mid-way after every retry; files already complete stay, a
re-run downloads only the missing ones). Each names the status or file URL.

Resume: :meth:`BulkExporter.export` keeps its state in ``<folder>/export-state.json`` (status URL, manifest,
finished files). A re-run with the same folder continues the same job instead of starting a new one.

Credentials stay in the client's session and go only to the FHIR server's origin: a status or file URL on
another origin is refused (:class:`BulkExportCrossOrigin`).

Bounds (:mod:`kaapana_fhir.core.limits`): the state file and the manifest are read as bounded JSON
(:data:`MAX_STATE_BYTES`, nesting, number rules), a manifest lists at most :data:`MAX_EXPORT_FILES` files, and
every NDJSON line is read with at most :data:`MAX_NDJSON_LINE_BYTES` bytes and parsed with the same JSON rules;
a breach is a :class:`BulkExportError` naming the file (and line) and the rule.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from kaapana_fhir.clients.fhir import FhirClient, redact_url
from kaapana_fhir.core import limits
from kaapana_fhir.exceptions import FhirServerError, ResourceNotFound

log = logging.getLogger(__name__)

NDJSON = "application/fhir+ndjson"
STATE_FILE = "export-state.json"
_LEVELS = ("system", "patient", "group")
#: largest export-state file / manifest (bytes); a manifest of 10,000 files is about 2 MB
MAX_STATE_BYTES = 8 * 1024 * 1024
#: most output files a manifest may list
MAX_EXPORT_FILES = 10_000
#: longest NDJSON line (one resource) read from an export file (bytes)
MAX_NDJSON_LINE_BYTES = limits.MAX_DOCUMENT_BYTES


class BulkExportError(FhirServerError):
    """Base of the bulk export errors; ``url`` is the status or file URL concerned."""


class BulkExportCrossOrigin(BulkExportError):
    """A status or file URL points to another origin than the FHIR server; nothing is sent there."""


class BulkExportFailed(BulkExportError):
    """The server reports that the export job failed (its OperationOutcome is in ``outcome``)."""


class BulkExportGone(BulkExportError):
    """The export job or one of its files no longer exists (cancelled, expired, never existed, server restart)."""


class BulkExportTimeout(BulkExportError):
    """The job did not finish before the deadline; it keeps running on the server."""


class BulkExportDownloadError(BulkExportError):
    """An output file could not be downloaded completely after every attempt."""


@dataclass(frozen=True)
class ExportPolicy:
    """Polling and download limits.

    :param deadline: seconds from the first poll until :class:`BulkExportTimeout`.
    :param min_poll_interval: shortest wait between two polls (also used when the server sends no Retry-After).
    :param max_poll_interval: longest wait between two polls (caps the server's Retry-After).
    :param download_attempts: attempts per output file when the connection breaks off mid-way.
    :param chunk_size: bytes per streamed read.
    """

    deadline: float = 3600.0
    min_poll_interval: float = 1.0
    max_poll_interval: float = 30.0
    download_attempts: int = 3
    chunk_size: int = 1 << 16


@dataclass(frozen=True)
class ExportFile:
    """One entry of the manifest's ``output`` (or ``error``) list."""

    type: str
    url: str
    count: int | None = None


@dataclass(frozen=True)
class ExportManifest:
    """The completed job's manifest."""

    transaction_time: str
    request: str
    output: tuple[ExportFile, ...]
    error: tuple[ExportFile, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, body: Any, url: str) -> ExportManifest:
        if not isinstance(body, dict) or not isinstance(body.get("output"), list):
            raise BulkExportError(f"bulk export status {url}: the completed answer is not a manifest (rule: a "
                                  "JSON object with an 'output' list)", url=url)
        n = len(body["output"]) + len(body.get("error") or [])
        if n > MAX_EXPORT_FILES:
            raise BulkExportError(f"bulk export status {url}: the manifest lists {n} files (rule: at most "
                                  f"{MAX_EXPORT_FILES}; export fewer types or use _since / a Group)", url=url)

        def files(key: str) -> tuple[ExportFile, ...]:
            out = []
            for i, item in enumerate(body.get(key) or []):
                if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                    raise BulkExportError(f"bulk export status {url}: manifest {key}[{i}] has no 'url'", url=url)
                count = item.get("count")
                out.append(ExportFile(str(item.get("type") or ""), item["url"],
                                      count if isinstance(count, int) else None))
            return tuple(out)

        return cls(str(body.get("transactionTime") or ""), str(body.get("request") or ""), files("output"),
                   files("error"), body)


@dataclass(frozen=True)
class ExportJob:
    """A kicked-off job: its status URL."""

    status_url: str


@dataclass(frozen=True)
class DownloadedFile:
    type: str
    url: str
    path: Path
    resources: int
    bytes: int


@dataclass
class ExportResult:
    job: ExportJob
    manifest: ExportManifest
    files: list[DownloadedFile]
    seconds_waiting: float = 0.0
    seconds_downloading: float = 0.0

    def counts(self) -> dict[str, int]:
        """Resources per resource type over all downloaded files."""
        out: dict[str, int] = {}
        for f in self.files:
            out[f.type] = out.get(f.type, 0) + f.resources
        return out


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme, 0)


def kickoff_path(level: str = "system", group_id: str | None = None) -> str:
    """Relative path of the kick-off request for ``level`` (``system``, ``patient`` or ``group``)."""
    if level not in _LEVELS:
        raise ValueError(f"bulk export level {level!r}: use one of {', '.join(_LEVELS)}")
    if level == "group":
        if not group_id:
            raise ValueError("bulk export level 'group' needs group_id")
        return f"Group/{group_id}/$export"
    return "Patient/$export" if level == "patient" else "$export"


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds or HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def iter_ndjson(path: str | Path, *, max_line_bytes: int = MAX_NDJSON_LINE_BYTES) -> Iterator[dict[str, Any]]:
    """Resources of a downloaded NDJSON file, one at a time (blank lines skipped). Each line is bounded
    (``max_line_bytes``, read without holding more) and parsed with :mod:`kaapana_fhir.core.limits`' JSON rules
    (nesting depth, integer digits, no NaN/Infinity)."""
    decoder = limits.json_decoder(str(path))
    with open(path, "rb") as fh:
        lineno = 0
        while True:
            raw = fh.readline(max_line_bytes + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > max_line_bytes:
                raise BulkExportError(f"{path}: line {lineno} is longer than {max_line_bytes} bytes (rule: one FHIR "
                                      "resource per line, each within the size limit)", url=str(path))
            if not raw.strip():
                continue
            where = f"{path}: line {lineno}"
            try:
                text = raw.decode("utf-8")
                limits.check_json_depth(text, where)
                res = decoder.decode(text)
            except UnicodeDecodeError as exc:
                raise BulkExportError(f"{where} is not UTF-8 at byte {exc.start}", url=str(path)) from None
            except limits.LimitError as exc:
                detail = str(exc).removeprefix(f"{path}: ").removeprefix(f"{where}: ")
                raise BulkExportError(f"{where}: {detail}", url=str(path)) from None
            except ValueError:
                raise BulkExportError(f"{where} is not JSON (rule: one FHIR resource per line)",
                                      url=str(path)) from None
            if not isinstance(res, dict) or "resourceType" not in res:
                raise BulkExportError(f"{where} is not a FHIR resource (no resourceType)", url=str(path))
            yield res


class BulkExporter:
    """Bulk Data ``$export`` against one FHIR base (use ``FhirClient.for_project(...)`` for a project).

    ``sleep`` and ``clock`` are injectable for tests.
    """

    def __init__(self, client: FhirClient, policy: ExportPolicy | None = None, *,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.policy = policy or ExportPolicy()
        self._sleep = sleep
        self._clock = clock

    # ------------------------------------------------------------------ helpers
    def _same_origin(self, url: str, what: str) -> str:
        url = urljoin(self.client.base_url + "/", url)
        if _origin(url) != _origin(self.client.base_url):
            raise BulkExportCrossOrigin(f"bulk export {what} {redact_url(url)} is not on the FHIR server's origin; "
                                     "refused (rule: credentials are only sent to the configured server)",
                                     url=redact_url(url))
        return url

    # ------------------------------------------------------------------ kick-off
    def kick_off(self, level: str = "system", *, group_id: str | None = None, types: Sequence[str] = (),
                 since: str | None = None, type_filters: Sequence[str] = ()) -> ExportJob:
        """Start an export; returns the job with its status URL."""
        params: list[tuple[str, str]] = [("_outputFormat", NDJSON)]
        if types:
            params.append(("_type", ",".join(types)))
        if since:
            params.append(("_since", since))
        params.extend(("_typeFilter", t) for t in type_filters)
        path = kickoff_path(level, group_id)
        resp = self.client.request("GET", path, params=params, ok=(202,),
                                   headers={"Prefer": "respond-async", "Accept": "application/fhir+json"})
        loc = resp.headers.get("Content-Location")
        if not loc:
            raise BulkExportError(f"bulk export kick-off {self.client.base_url}/{path} answered 202 without "
                                  "Content-Location (rule: the status URL)", status_code=202,
                                  url=f"{self.client.base_url}/{path}")
        job = ExportJob(self._same_origin(loc, "status URL"))
        log.info("bulk export started: %s (status %s)", path, redact_url(job.status_url))
        return job

    # ------------------------------------------------------------------ status
    def status(self, job: ExportJob) -> tuple[ExportManifest | None, float | None, str]:
        """One poll: ``(manifest, None, "")`` when done, ``(None, retry_after, progress)`` while running."""
        url = job.status_url
        try:
            resp = self.client.request("GET", url, ok=(200, 202), headers={"Accept": "application/json"})
        except ResourceNotFound as exc:
            raise BulkExportGone(f"bulk export job {redact_url(url)} no longer exists (cancelled, expired after the "
                                 f"server's retention, or the server restarted): {exc.diagnostics or exc}; start a "
                                 "new export", status_code=exc.status_code, url=redact_url(url),
                                 outcome=exc.outcome) from None
        except FhirServerError as exc:
            if isinstance(exc, BulkExportError) or exc.status_code < 400:
                raise
            raise BulkExportFailed(f"bulk export job {redact_url(url)} failed on the server (HTTP "
                                   f"{exc.status_code}): {exc.diagnostics or exc}", status_code=exc.status_code,
                                   url=redact_url(url), outcome=exc.outcome) from None
        if resp.status_code == 202:
            return None, retry_after_seconds(resp.headers.get("Retry-After")), resp.headers.get("X-Progress", "")
        try:
            body = limits.loads_json(resp.content, source=f"bulk export status {redact_url(url)}",
                                     max_bytes=MAX_STATE_BYTES)
        except limits.LimitError as exc:
            raise BulkExportError(f"bulk export status {redact_url(url)} answered 200 without a readable JSON "
                                  f"manifest: {exc}", status_code=200, url=redact_url(url)) from None
        return ExportManifest.from_json(body, redact_url(url)), None, ""

    def wait(self, job: ExportJob) -> ExportManifest:
        """Poll until the job is done (honouring Retry-After within the policy's bounds and deadline)."""
        p = self.policy
        end = self._clock() + p.deadline
        polls = 0
        while True:
            manifest, retry_after, progress = self.status(job)
            polls += 1
            if manifest is not None:
                log.info("bulk export done after %d polls: %d files", polls, len(manifest.output))
                return manifest
            left = end - self._clock()
            if left <= 0:
                raise BulkExportTimeout(f"bulk export job {redact_url(job.status_url)} not finished after "
                                        f"{p.deadline:.0f}s ({polls} polls, last progress: {progress or 'none'}); "
                                        "it keeps running on the server: run again with the same folder to resume, "
                                        "or cancel it", url=redact_url(job.status_url))
            pause = retry_after if retry_after is not None else p.min_poll_interval
            pause = min(max(pause, p.min_poll_interval), p.max_poll_interval, left)
            log.debug("bulk export running (%s); next poll in %.1fs", progress, pause)
            self._sleep(pause)

    def cancel(self, job: ExportJob) -> None:
        """Ask the server to cancel the job (DELETE on the status URL)."""
        self.client.request("DELETE", job.status_url, ok=(200, 202, 204))

    # ------------------------------------------------------------------ download
    def download_file(self, item: ExportFile, dest: Path) -> DownloadedFile:
        """Stream one output file to ``dest`` (via ``dest.part``; renamed when complete)."""
        url = self._same_origin(item.url, "file URL")
        safe = redact_url(url)
        part = dest.with_name(dest.name + ".part")
        last: str = ""
        for attempt in range(1, self.policy.download_attempts + 1):
            received = 0
            lines = 0
            tail = b"\n"
            try:
                with self.client.session.get(url, stream=True, timeout=self.client.timeout,
                                             headers={"Accept": NDJSON}, allow_redirects=False) as resp:
                    if resp.status_code in (404, 410):
                        raise BulkExportGone(f"bulk export file {safe} ({item.type}) is gone (HTTP "
                                             f"{resp.status_code}): the server deletes export files after its "
                                             "retention period (HAPI default 2 h); start a new export",
                                             status_code=resp.status_code, url=safe)
                    if resp.status_code != 200:
                        raise BulkExportDownloadError(f"bulk export file {safe} ({item.type}): HTTP "
                                                      f"{resp.status_code}", status_code=resp.status_code, url=safe)
                    expected = resp.headers.get("Content-Length")
                    with open(part, "wb") as out:
                        for chunk in resp.iter_content(self.policy.chunk_size):
                            if not chunk:
                                continue
                            out.write(chunk)
                            received += len(chunk)
                            lines += chunk.count(b"\n")
                            tail = chunk[-1:]
                    if expected and expected.isdigit() and int(expected) != received:
                        raise requests.exceptions.ChunkedEncodingError(
                            f"{received} of {expected} bytes")  # treated like a dropped connection below
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                last = f"{type(exc).__name__} after {received} bytes"
                log.warning("bulk export file %s broke off (attempt %d/%d): %s", safe, attempt,
                            self.policy.download_attempts, last)
                continue
            if tail != b"\n" and received:
                lines += 1  # last line without a newline
            os.replace(part, dest)
            return DownloadedFile(item.type, item.url, dest, lines, received)
        part.unlink(missing_ok=True)
        raise BulkExportDownloadError(f"bulk export file {safe} ({item.type}) could not be downloaded in "
                                      f"{self.policy.download_attempts} attempts (last: {last}); files already "
                                      "downloaded are kept, run again with the same folder to fetch the rest",
                                      url=safe)

    def download(self, manifest: ExportManifest, folder: str | Path,
                 done: dict[str, DownloadedFile] | None = None,
                 on_file: Callable[[DownloadedFile], None] | None = None) -> list[DownloadedFile]:
        """Download every output file into ``folder`` as ``<nnn>-<Type>.ndjson``; files in ``done`` (by URL)
        whose file still has its size are skipped."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out: list[DownloadedFile] = []
        for i, item in enumerate(manifest.output):
            prev = (done or {}).get(item.url)
            if prev is not None and prev.path.is_file() and prev.path.stat().st_size == prev.bytes:
                out.append(prev)
                continue
            got = self.download_file(item, folder / f"{i:03d}-{item.type or 'resources'}.ndjson")
            out.append(got)
            if on_file is not None:
                on_file(got)
        return out

    # ------------------------------------------------------------------ all in one, resumable
    def export(self, folder: str | Path, level: str = "system", *, group_id: str | None = None,
               types: Sequence[str] = (), since: str | None = None, type_filters: Sequence[str] = (),
               resume: bool = True) -> ExportResult:
        """Kick off (or resume), wait, download into ``folder``; state in ``folder/export-state.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state_path = folder / STATE_FILE
        request = {"base": self.client.base_url, "level": level, "group_id": group_id, "types": list(types),
                   "since": since, "type_filters": list(type_filters)}
        state: dict[str, Any] = {}
        if resume and state_path.is_file():
            try:
                state = limits.load_json(state_path, max_bytes=MAX_STATE_BYTES)
            except limits.LimitError as exc:
                raise BulkExportError(f"{state_path}: unreadable export state ({exc}); delete it to start a new "
                                      "export", url=str(state_path)) from None
            if not isinstance(state, dict):
                raise BulkExportError(f"{state_path}: unreadable export state (rule: a JSON object); delete it to "
                                      "start a new export", url=str(state_path))
            if state.get("request") != request:
                raise BulkExportError(f"{state_path}: belongs to another export ({state.get('request')}); use "
                                      "another folder or delete the file", url=str(state_path))

        def save() -> None:
            tmp = state_path.with_name(state_path.name + ".tmp")
            tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
            os.replace(tmp, state_path)

        t0 = self._clock()
        if state.get("status_url"):
            job = ExportJob(self._same_origin(state["status_url"], "status URL"))
            log.info("bulk export: resuming job %s", redact_url(job.status_url))
        else:
            job = self.kick_off(level, group_id=group_id, types=types, since=since, type_filters=type_filters)
            state = {"request": request, "status_url": job.status_url, "files": {}}
            save()
        if state.get("manifest"):
            manifest = ExportManifest.from_json(state["manifest"], redact_url(job.status_url))
        else:
            manifest = self.wait(job)
            state["manifest"] = manifest.raw
            save()
        t1 = self._clock()
        done = {url: DownloadedFile(d["type"], url, Path(d["path"]), int(d["resources"]), int(d["bytes"]))
                for url, d in (state.get("files") or {}).items()}

        def record(f: DownloadedFile) -> None:
            state.setdefault("files", {})[f.url] = {"type": f.type, "path": str(f.path), "resources": f.resources,
                                                    "bytes": f.bytes}
            save()

        files = self.download(manifest, folder, done, on_file=record)
        return ExportResult(job, manifest, files, t1 - t0, self._clock() - t1)
