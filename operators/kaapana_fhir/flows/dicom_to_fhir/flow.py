"""DICOM → FHIR on ingest and as a backfill: read studies from the PACS, map, validate, write (no Airflow).

Entry points
------------
* :func:`sync_studies` — PACS mode: series/study UIDs → all series of each touched study with **one** QIDO-RS
  series search per study (``includefield`` for everything the mapping needs) → Patient/ImagingStudy/Endpoint/
  Device (+ dose Observations). WADO-RS metadata is read only when the output needs an attribute that QIDO
  cannot give: a PACS that ignores ``includefield``, ``wado="always"``, the MII modality attributes of an image
  series the PACS did not return, a dose report's content, the instance level (``include_instances``).
* :func:`backfill` — a whole PACS or a date/modality window: QIDO-RS study search with ``limit``/``offset``
  paging, batches of studies through :func:`sync_studies`, a resumable cursor file (a re-started backfill skips
  the studies already written), progress with rate and ETA in the log.
* :func:`sync_files` — ``--files`` mode: DICOM files without a PACS; non-DICOM files (DICOMDIR, README,
  manifest.json) are skipped and listed as issues.

Studies are read and mapped concurrently by a bounded thread pool (``workers``). Patient demographics come from
every series of a study and from every study of the patient in the run; conflicts are issues. Writes go in
transactions of several studies through the one write strategy :func:`kaapana_fhir.flows.write.write_merged`:
Patients and ImagingStudies are read first (one batch of GETs per chunk), merged
(:mod:`~kaapana_fhir.core.dicom.merge`) and written with ``If-Match``; a version conflict (HAPI 409, others 412)
re-reads and merges the chunk again, and a concurrent create is merged back. Unchanged resources are not
written. All PACS reads of a :func:`sync_studies` call happen before its first write, so an unreachable PACS
writes nothing.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

from kaapana_fhir.clients.protocols import DicomWebApi, FhirApi
from kaapana_fhir.core import bundle as fb
from kaapana_fhir.core.dicom import dose as dd
from kaapana_fhir.core.dicom import mii
from kaapana_fhir.core.dicom import values as dv
from kaapana_fhir.core.dicom.files import dataset_to_json, group_instances
from kaapana_fhir.core.dicom.mapping import (
    MappingOptions,
    Profile,
    SeriesInput,
    StudyMapping,
    map_study,
    reconcile_patients,
)
from kaapana_fhir.core.dicom.merge import comparable, merge_imaging_study, merge_patient
from kaapana_fhir.core.ids import normalize_uid
from kaapana_fhir.core.validate import validate_resource
from kaapana_fhir.exceptions import ConfigError, DicomWebError, MappingError
from kaapana_fhir.flows.write import MergeCounts, Shared, with_lost, write_merged

log = logging.getLogger(__name__)

MAX_ISSUES_IN_RESULT = 200
DEFAULT_WORKERS = 4
#: Studies per FHIR transaction in :func:`sync_studies` (a conflict re-reads and merges the chunk again).
WRITE_CHUNK = 10
#: Series per request of a backfill's series listing (:func:`list_series`).
SERIES_PAGE = 250
#: Pages of a backfill's series listing asked for at once.
LISTING_CONCURRENCY = 3
#: Studies whose series are read with one series-level QIDO (UID list matching) in :func:`sync_studies`.
STUDY_GROUP = 20
#: Most series records a backfill holds for studies whose series are not all listed yet (bounded memory).
MAX_BUFFERED_SERIES = 50_000

#: Series attributes the mapping reads (QIDO-RS ``includefield``), core and MII.
SERIES_FIELDS = (
    "00080021", "00080031", "00080201", "00180015", "00200060", "00200062", "00082218", "00080070",
    "00081090", "00181000", "00081010", "00181020", "0008103E", "00200011", "00201209", "00080060",
    "00100010", "00100020", "00100021", "00100030", "00100040", "00080020", "00080030",
    "00080050", "00081030", "00080090", "00081032", "00401002", "00080005", "00080016", *mii.SERIES_TAGS,
)
#: Study-level QIDO keys of a backfill listing (NumberOfStudyRelatedSeries (0020,1206) tells when the series
#: listing has brought every series of a study).
STUDY_FIELDS = ("00080061", "00080062", "00100020", "00201206")
#: Keys a series-level QIDO answer never holds unless the PACS honours ``includefield``.
_INCLUDEFIELD_PROBES = ("00100020", "00080070", "00181000", "00081090", "00180015", "00080021")
_DOSE_CONTENT = "dose report content"
#: SOP Class UIDs of the Structured Report storage classes start with this
_SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


@dataclass
class SyncResult:
    """What :func:`sync_studies` / :func:`sync_files` did: studies and series mapped, the ids written, resources
    the server created/updated/left unchanged (``resources.conflicts``: re-reads after a version conflict),
    failed studies, issues (at most :data:`MAX_ISSUES_IN_RESULT` kept, ``issue_count`` counts all), files
    skipped as not DICOM, PACS requests and seconds per phase. ``bundle``: the transaction Bundle when nothing
    was written (``fhir=None``); it is not part of :meth:`as_dict`."""

    studies: int = 0
    series: int = 0
    study_uids: list[str] = field(default_factory=list)
    imaging_study_ids: list[str] = field(default_factory=list)
    patient_ids: list[str] = field(default_factory=list)
    observations: int = 0
    resources: MergeCounts = field(default_factory=MergeCounts)
    #: ``{"study": uid, "error": message}`` per study that could not be read or mapped
    failed: list[dict[str, Any]] = field(default_factory=list)
    issues: list[dict[str, Any]] = field(default_factory=list)
    issue_count: int = 0
    skipped_files: list[str] = field(default_factory=list)
    pacs_requests: int = 0
    #: seconds spent reading the PACS (``dicomweb_s``), mapping (``mapping_s``) and writing (``fhir_s``)
    timings: dict[str, float] = field(default_factory=dict)
    bundle: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def conflict_retries(self) -> int:
        """Re-reads and merges after a version conflict or a concurrent create."""
        return self.resources.conflicts

    def add_issue(self, issue: dict[str, Any]) -> None:
        """Count an issue; keep it while fewer than :data:`MAX_ISSUES_IN_RESULT` are kept."""
        self.issue_count += 1
        if len(self.issues) < MAX_ISSUES_IN_RESULT:
            self.issues.append(issue)

    def _more(self) -> dict[str, Any]:
        return {}

    def as_dict(self, max_issues: int | None = None) -> dict[str, Any]:
        """JSON-able form (CLI output, XCom, the Kaapana container's result); at most ``max_issues`` issues."""
        r = self.resources
        return {"studies": self.studies, "series": self.series, "study_uids": list(self.study_uids),
                "imaging_study_ids": list(self.imaging_study_ids), "patient_ids": list(self.patient_ids),
                "observations": self.observations,
                "resources": {"created": r.created, "updated": r.updated, "unchanged": r.unchanged},
                "conflict_retries": r.conflicts, "failed": list(self.failed),
                "issues": self.issues[:max_issues] if max_issues is not None else list(self.issues),
                "issue_count": self.issue_count, "skipped_files": list(self.skipped_files),
                "pacs_requests": self.pacs_requests, **self._more(),
                "timings": {k: round(v, 4) for k, v in self.timings.items()}}


@dataclass
class BackfillResult(SyncResult):
    """What :func:`backfill` did: the totals of its batches (:class:`SyncResult`), plus studies ``listed`` in
    the PACS, ``already_done`` by an earlier run (cursor), ``batches`` written and studies ``read_per_study``
    (not completed by a series listing). ``timings`` adds ``listing_s``."""

    listed: int = 0
    already_done: int = 0
    batches: int = 0
    read_per_study: int = 0

    def _more(self) -> dict[str, Any]:
        return {"listed": self.listed, "already_done": self.already_done, "batches": self.batches,
                "read_per_study": self.read_per_study}


class _Timer:
    def __init__(self) -> None:
        self.t = {"dicomweb_s": 0.0, "mapping_s": 0.0, "fhir_s": 0.0}
        self._lock = threading.Lock()

    def add(self, key: str, t0: float) -> None:
        with self._lock:
            self.t[key] += time.perf_counter() - t0


class _Pacs:
    """A :class:`DicomWebApi` that counts the requests of a run (the bench prints requests per study)."""

    def __init__(self, dicomweb: DicomWebApi) -> None:
        self.dw = dicomweb
        self.url = dicomweb.url
        self.wado_rs_base = dicomweb.wado_rs_base
        self.requests = 0
        self._lock = threading.Lock()

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.requests += 1
        return getattr(self.dw, name)(*args, **kwargs)

    def search_studies(self, filters: dict[str, Any] | None = None, *,
                       fields: Sequence[str] = ()) -> list[dict[str, Any]]:
        return self.call("search_studies", filters, fields=fields)

    def search_series(self, study_uid: str | None = None, filters: dict[str, Any] | None = None, *,
                      fields: Sequence[str] = SERIES_FIELDS) -> list[dict[str, Any]]:
        return self.call("search_series", study_uid, filters, fields=fields)

    def search_instances(self, study_uid: str, series_uid: str, *, fields: Sequence[str] = ()) -> list[dict[str, Any]]:
        return self.call("search_instances", study_uid, series_uid, fields=fields)

    def find_series(self, series_uid: str) -> dict[str, Any] | None:
        return self.call("find_series", series_uid)

    def series_metadata(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
        return self.call("series_metadata", study_uid, series_uid)

    def instance_metadata(self, study_uid: str, series_uid: str, sop_uid: str) -> dict[str, Any] | None:
        return self.call("instance_metadata", study_uid, series_uid, sop_uid)

    def retrieve_series(self, study_uid: str, series_uid: str) -> list[Any]:
        return self.call("retrieve_series", study_uid, series_uid)


# --------------------------------------------------------------------------- PACS side
def resolve_study_uids(dicomweb: DicomWebApi, study_uids: Iterable[str] = (), series_uids: Iterable[str] = (), *,
                       missing: str = "fail") -> list[str]:
    """Study UIDs touched by the given studies and series (QIDO-RS per SeriesInstanceUID (0020,000E)).

    ``missing="fail"`` raises :class:`DicomWebError` for series the PACS does not know (yet: Kaapana's
    auto-trigger can race the PACS upload, so the task should be retried); ``"skip"`` logs and skips.
    """
    out: list[str] = []
    for uid in study_uids:
        u = normalize_uid(uid, tag="StudyInstanceUID (0020,000D)")
        if u not in out:
            out.append(u)
    absent = []
    for uid in series_uids:
        u = normalize_uid(uid, tag="SeriesInstanceUID (0020,000E)")
        rec = dicomweb.find_series(u)
        study = dv.first_str(rec, "0020000D") if rec else None
        if not study:
            absent.append(u)
            continue
        if study not in out:
            out.append(study)
    if absent:
        msg = f"{len(absent)} series not found in the PACS at {dicomweb.url}: {', '.join(absent[:5])}"
        if missing == "fail":
            raise DicomWebError(msg + " (they may still be arriving; retry later or set missing='skip')")
        log.warning("%s; skipped", msg)
    return out


def _honours_includefield(records: list[dict[str, Any]]) -> bool:
    return any(k in rec for rec in records for k in _INCLUDEFIELD_PROBES)


def _sop_class(rec: dict[str, Any], study_sop_classes: Sequence[str]) -> str | None:
    """SOP Class UID (0008,0016) of a series: from its QIDO record (a series-level ``includefield`` that the PACS
    answers from one instance, as Orthanc does), else the study's only SR class among SOPClassesInStudy
    (0008,0062) when that settles it; None when unknown."""
    own = dv.first_str(rec, "00080016")
    if own:
        return own
    sr_classes = {c for c in study_sop_classes if c.startswith(_SR_CLASS_PREFIX)}
    return next(iter(sr_classes)) if len(sr_classes) == 1 else None


def _needs_metadata(rec: dict[str, Any], options: MappingOptions, wado: str, honoured: bool,
                    sop_class: str | None) -> str | None:
    """Why one instance's WADO-RS metadata is needed for this series (None: QIDO suffices).

    A dose report is recognised by its SOP Class UID, X-Ray Radiation Dose SR (never by the series
    description): ``sop_class`` from QIDO, or read from the instance level by :func:`series_inputs` first."""
    if wado == "always":
        return "wado=always"
    if wado == "never":
        return None
    if not honoured:
        return "the PACS ignored includefield"
    modality = (dv.first_str(rec, "00080060") or "").upper()
    if options.dose_reports and modality == "SR" and sop_class == dd.XRAY_DOSE_SR:
        return _DOSE_CONTENT
    if options.profile is Profile.MII:
        needed = mii.NEEDED_BY_MODALITY.get(modality, ())
        if needed and not any(k in rec for k in needed):
            return f"MII {modality} attributes not returned by QIDO"
    return None


def _merge_metadata(rec: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    attrs = dict(meta)
    attrs.update({k: v for k, v in rec.items() if isinstance(v, dict) and ("Value" in v or k not in meta)})
    return attrs


def read_study(dicomweb: DicomWebApi, study_uid: str, *, wado: str = "auto", include_instances: bool = False,
               options: MappingOptions | None = None, study_sop_classes: Sequence[str] = (),
               records: list[dict[str, Any]] | None = None) -> list[SeriesInput]:
    """All series of one study as :class:`SeriesInput`: one QIDO-RS series search (``includefield``) — or the
    study's ``records`` from a backfill's series listing, then no search — plus WADO-RS metadata only for the
    series that need it (see the module docstring)."""
    options = options or MappingOptions()
    pacs = dicomweb if isinstance(dicomweb, _Pacs) else _Pacs(dicomweb)
    series = records if records is not None else pacs.call("search_series", study_uid, fields=SERIES_FIELDS)
    honoured = _honours_includefield(series)
    if series and not honoured and wado == "auto":
        log.warning("study %s: the PACS at %s ignored QIDO-RS includefield; reading one instance's metadata per "
                    "series instead (slower)", study_uid, pacs.url)
    out: list[SeriesInput] = []
    for rec in series:
        series_uid = dv.first_str(rec, "0020000E")
        attrs = dict(rec)
        attrs.setdefault("0020000D", {"vr": "UI", "Value": [study_uid]})
        instances: list[dict[str, Any]] = []
        sop_class = _sop_class(rec, study_sop_classes)
        modality = (dv.first_str(rec, "00080060") or "").upper()
        if (series_uid and sop_class is None and modality == "SR" and options.dose_reports
                and wado == "auto" and honoured):
            # the PACS gave no SOP Class UID at series level: the instance level always has it (PS3.18 return key)
            instances = pacs.call("search_instances", study_uid, series_uid) or []
            sop_class = dv.first_str(instances[0], "00080016") if instances else None
        why = _needs_metadata(rec, options, wado, honoured, sop_class)
        metas: list[dict[str, Any]] = []
        if series_uid and why == _DOSE_CONTENT:
            metas = pacs.call("series_metadata", study_uid, series_uid) or []
        elif series_uid and (why or include_instances):
            if not instances:
                instances = pacs.call("search_instances", study_uid, series_uid) or []
            if why and instances:
                sop = dv.first_str(instances[0], "00080018")
                meta = pacs.call("instance_metadata", study_uid, series_uid, sop) if sop else None
                if isinstance(meta, list):
                    meta = meta[0] if meta else None
                metas = [meta] if meta else []
        if metas:
            attrs = _merge_metadata(rec, metas[0])
        count = len(instances) if instances else None
        dose_meta = bool(metas) and options.dose_reports and dv.first_str(metas[0], "00080016") == dd.XRAY_DOSE_SR
        keep = metas if why == _DOSE_CONTENT or dose_meta else (instances if include_instances else [])
        out.append(SeriesInput(attrs, keep, count, f"{pacs.url}#{series_uid}"))
    return out


def read_study_group(dicomweb: DicomWebApi, study_uids: Sequence[str], *, page_size: int = SERIES_PAGE,
                     counts: Mapping[str, int | None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The QIDO-RS series records of several studies with one series-level search using UID list matching
    (``/series?StudyInstanceUID=a,b,c&includefield=...``, PS3.18 §8.3.4.1), paged (a short page is confirmed by
    one more request, as some PACS cap pages below ``limit``, unless ``counts`` (NumberOfStudyRelatedSeries from
    a study listing) shows every study complete). Every series of a listed study matches, so each study
    in the answer is complete. Studies absent from the answer are left out (the caller reads them one by one); an
    answer holding a study that was not asked for means the PACS ignored the list: nothing is kept."""
    wanted = set(study_uids)
    found: dict[str, dict[str, dict[str, Any]]] = {}
    offset = 0
    while True:
        page = dicomweb.search_series(None, {"StudyInstanceUID": ",".join(study_uids), "limit": page_size,
                                             "offset": offset}, fields=SERIES_FIELDS)
        if not page:
            break
        for rec in page:
            study, series = dv.first_str(rec, "0020000D"), dv.first_str(rec, "0020000E")
            if study not in wanted:
                log.warning("the PACS at %s ignored UID list matching of StudyInstanceUID (answered study %s); "
                            "reading these %d studies one by one", getattr(dicomweb, "url", "?"), study,
                            len(study_uids))
                return {}
            if series:
                found.setdefault(study, {})[series] = rec
        offset += len(page)
        if len(page) < page_size and counts and all(
                counts.get(u) is not None and len(found.get(u, {})) >= (counts.get(u) or 0) for u in study_uids):
            break  # every study has the series its count says: the short page was the last
    return {u: list(v.values()) for u, v in found.items()}


# --------------------------------------------------------------------------- FHIR side
def _count_response(resp: dict[str, Any], counts: MergeCounts) -> None:
    for e in resp.get("entry", []):
        status = (e.get("response", {}).get("status") or "").split(" ")[0]
        codes = [c.get("code") for i in (e.get("response", {}).get("outcome") or {}).get("issue", [])
                 for c in (i.get("details") or {}).get("coding", [])]
        if status == "201":
            counts.created += 1
        elif "SUCCESSFUL_UPDATE_NO_CHANGE" in codes:
            counts.unchanged += 1
        else:
            counts.updated += 1


def _also(m: StudyMapping) -> list[dict[str, Any]]:
    return ([m.endpoint] if m.endpoint else []) + list(m.devices) + list(m.observations)


def write_study(fhir: FhirApi, m: StudyMapping, *, written: dict[str, str] | None = None, max_attempts: int = 8,
                lost: Sequence[dict[str, Any]] = (), lost_patients: Sequence[dict[str, Any]] = ()) -> MergeCounts:
    """Write one mapped study in one transaction with ``If-Match`` on Patient and ImagingStudy (the shared
    strategy of :func:`kaapana_fhir.flows.write.write_merged`).

    ``written`` caches Endpoint/Device/Observation contents already written in this call (skipped when unchanged).
    ``lost`` / ``lost_patients``: versions a concurrent writer created that an earlier write of ours replaced;
    they are merged back. Returns the :class:`~kaapana_fhir.flows.write.MergeCounts`.
    """
    shared = [Shared(m.patient, with_lost(merge_patient, lost_patients)),
              Shared(m.imaging_study, with_lost(merge_imaging_study, lost), validate=validate_resource)]
    return write_merged(fhir, shared, _also(m), written=written, max_attempts=max_attempts,
                        label=f"study {m.study_uid}")


def _patients_of(mapped: Sequence[StudyMapping]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for m in mapped:
        out.setdefault(m.patient["id"], []).append(m.patient)
    return out


def _fold_patients(patients: list[dict[str, Any]]) -> Callable[[dict[str, Any] | None, dict[str, Any]],
                                                               dict[str, Any]]:
    """Merge function of one Patient written for several studies: the server's version (or a version merged
    back) completed by each study's Patient in turn (:func:`~kaapana_fhir.core.dicom.merge.merge_patient`)."""
    def merge(cur: dict[str, Any] | None, _ours: dict[str, Any]) -> dict[str, Any]:
        out = cur
        for p in patients:
            out = merge_patient(out, p)
        return out if out is not None else _ours

    return merge


def write_chunk(fhir: FhirApi, mapped: Sequence[StudyMapping], *, written: dict[str, str]) -> MergeCounts:
    """Write several studies in one transaction through :func:`kaapana_fhir.flows.write.write_merged`: their
    Patients (one per patient, completed by every study of the chunk) and ImagingStudies are read with one batch
    request, merged and written with ``If-Match``; Endpoint/Device/Observations are plain PUTs (skipped when
    ``written`` holds the same content). A version conflict re-reads and merges the whole chunk again; a create
    that answered version > 1 (a concurrent writer created it) is merged back (see :mod:`~kaapana_fhir.flows.write`).
    Returns the :class:`~kaapana_fhir.flows.write.MergeCounts`."""
    shared = [Shared(patients[0], _fold_patients(patients)) for patients in _patients_of(mapped).values()]
    shared += [Shared(m.imaging_study, merge_imaging_study, validate=validate_resource) for m in mapped]
    also: dict[str, dict[str, Any]] = {}
    for m in mapped:
        for r in _also(m):
            also.setdefault(f"{r['resourceType']}/{r['id']}", r)
    label = f"{len(mapped)} studies ({mapped[0].study_uid}...)" if len(mapped) > 1 else f"study {mapped[0].study_uid}"
    return write_merged(fhir, shared, list(also.values()), written=written, batch_read=True, label=label)


# --------------------------------------------------------------------------- orchestration
def _map_one(study_uid: str, series: list[SeriesInput], options: MappingOptions,
             result: SyncResult) -> StudyMapping | None:
    try:
        m = map_study(series, options)
        for r in m.resources():
            validate_resource(r)
    except MappingError as exc:
        log.error("study %s failed: %s", study_uid or "?", exc)
        result.failed.append({"study": study_uid, "error": str(exc)})
        return None
    return m


def _record(mapped: list[StudyMapping], result: SyncResult) -> None:
    for m in mapped:
        result.studies += 1
        result.series += len(m.imaging_study.get("series", []))
        result.observations += len(m.observations)
        result.study_uids.append(m.study_uid)
        result.imaging_study_ids.append(m.imaging_study["id"])
        if m.patient["id"] not in result.patient_ids:
            result.patient_ids.append(m.patient["id"])
        for issue in m.issues:
            result.add_issue(issue)
            log.warning("study %s: %s %r: %s", issue["study"], issue["tag"], issue["value"], issue["rule"])


def _map_all(grouped: Iterable[tuple[str, list[SeriesInput]]], options: MappingOptions,
             result: SyncResult) -> list[StudyMapping]:
    mapped = [m for uid, series in grouped if (m := _map_one(uid, series, options, result)) is not None]
    reconcile_patients(mapped)
    for m in mapped:
        validate_resource(m.patient)
    _record(mapped, result)
    return mapped


def _write_all(fhir: FhirApi, mapped: list[StudyMapping], result: SyncResult, timer: _Timer,
               workers: int = 1) -> None:
    written: dict[str, str] = {}
    t0 = time.perf_counter()
    # every Patient is written by exactly one chunk: chunks group studies by patient
    by_patient: dict[str, list[StudyMapping]] = {}
    for m in mapped:
        by_patient.setdefault(m.patient["id"], []).append(m)
    chunks: list[list[StudyMapping]] = [[]]
    for group in by_patient.values():
        if chunks[-1] and len(chunks[-1]) + len(group) > WRITE_CHUNK:
            chunks.append([])
        chunks[-1].extend(group)
    chunks = [c for c in chunks if c]
    if len(chunks) > 1:  # Endpoint/Devices are shared by many studies: write each once, before the parallel chunks
        shared = {f"{r['resourceType']}/{r['id']}": r for m in mapped for r in _also(m)
                  if r["resourceType"] in ("Endpoint", "Device")}
        if shared:
            resp = fhir.transaction(fb.transaction([fb.put_entry(r) for r in shared.values()], sort=False))
            _count_response(resp, result.resources)
            written.update({k: comparable(r) for k, r in shared.items()})

    def run(chunk: list[StudyMapping]) -> MergeCounts:
        return write_chunk(fhir, chunk, written=written)

    if workers > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            all_counts = list(pool.map(run, chunks))
    else:
        all_counts = [run(c) for c in chunks]
    for c in all_counts:
        result.resources += c
    timer.add("fhir_s", t0)


def transaction_bundle(mapped: Sequence[StudyMapping]) -> dict[str, Any]:
    """One transaction Bundle (PUT entries) of all mapped studies, for ``--out`` (dry run / review)."""
    seen: set[str] = set()
    entries = []
    for m in mapped:
        for r in m.resources():
            key = f"{r['resourceType']}/{r['id']}"
            if key not in seen:
                seen.add(key)
                entries.append(fb.put_entry(r))
    return fb.transaction(entries)


def sync_studies(dicomweb: DicomWebApi, fhir: FhirApi | None, *, study_uids: Iterable[str] = (),
                 series_uids: Iterable[str] = (), options: MappingOptions | None = None, wado: str = "auto",
                 missing: str = "fail", workers: int = DEFAULT_WORKERS,
                 study_sop_classes: Mapping[str, Sequence[str]] | None = None,
                 known_patients: Sequence[StudyMapping] = (),
                 collect: list[StudyMapping] | None = None,
                 series_records: Mapping[str, list[dict[str, Any]]] | None = None,
                 group_size: int = STUDY_GROUP, series_counts: Mapping[str, int | None] | None = None
                 ) -> SyncResult:
    """Bring the studies touched by ``study_uids`` / ``series_uids`` from the PACS into FHIR.

    ``fhir=None`` maps without writing and returns the transaction Bundle as ``bundle``.
    ``options.endpoint_address`` defaults to the PACS's WADO-RS base. ``workers`` bounds the concurrent PACS
    reads and FHIR writes. ``study_sop_classes`` (study UID → SOPClassesInStudy (0008,0062), from a backfill
    listing) tells which studies hold a dose report. ``known_patients``: studies mapped earlier in the same run
    (a backfill's earlier batches) whose demographics complete or conflict with these; ``collect`` receives the
    mapped studies. ``series_records`` (study UID → its series' QIDO records, from a backfill's series listing): these
    studies are not searched again. The other studies are read ``group_size`` at a time with one series-level
    QIDO each (:func:`read_study_group`, ``series_counts`` from a study listing spare the request confirming the
    last page); a study that answer misses is searched on its own. Returns the :class:`SyncResult`
    (studies, series, ids, resources created/updated/unchanged, failed studies, issues, timings,
    ``pacs_requests``).
    """
    prepared = _prepare(dicomweb, study_uids=study_uids, series_uids=series_uids, options=options, wado=wado,
                        missing=missing, workers=workers, study_sop_classes=study_sop_classes,
                        known_patients=known_patients, collect=collect, series_records=series_records,
                        group_size=group_size, series_counts=series_counts)
    return _finish(fhir, prepared)


def _prepare(dicomweb: DicomWebApi, *, study_uids: Iterable[str], series_uids: Iterable[str],
             options: MappingOptions | None, wado: str, missing: str, workers: int,
             study_sop_classes: Mapping[str, Sequence[str]] | None, known_patients: Sequence[StudyMapping],
             collect: list[StudyMapping] | None, series_records: Mapping[str, list[dict[str, Any]]] | None,
             group_size: int, series_counts: Mapping[str, int | None] | None) -> _Prepared:
    """:func:`sync_studies` up to the writes: every PACS read and the mapping (a backfill writes a batch while it
    prepares the next)."""
    options = options or MappingOptions()
    if options.endpoint_address is None:
        options = replace(options, endpoint_address=dicomweb.wado_rs_base)
    if wado not in ("auto", "always", "never"):
        raise ConfigError(f"wado={wado!r}: expected auto, always or never")
    workers = max(1, int(workers))
    timer = _Timer()
    result = SyncResult()
    pacs = _Pacs(dicomweb)
    t0 = time.perf_counter()
    uids = resolve_study_uids(pacs, study_uids, series_uids, missing=missing)
    sop_classes = study_sop_classes or {}
    given = series_records or {}

    def read_and_map(uid: str, records: list[dict[str, Any]] | None = None) -> tuple[str, StudyMapping | None,
                                                                                   str | None]:
        """One study: its QIDO read (+ WADO where needed), then its mapping and validation in the same worker,
        so our code runs while other workers wait for the PACS."""
        series = read_study(pacs, uid, wado=wado, include_instances=options.include_instances, options=options,
                            study_sop_classes=sop_classes.get(uid, ()),
                            records=records if records is not None else given.get(uid))
        if not series:
            return uid, None, f"study {uid} has no series in the PACS at {pacs.url}"
        t_map = time.perf_counter()
        try:
            m = map_study(series, options)
            for r in m.resources():
                validate_resource(r)
        except MappingError as exc:
            return uid, None, str(exc)
        finally:
            timer.add("mapping_s", t_map)
        return uid, m, None

    to_read = [u for u in uids if u not in given]
    size = max(1, group_size)
    groups = [to_read[i:i + size] for i in range(0, len(to_read), size)] if size > 1 and len(to_read) > 1 else []
    groups += [[u] for u in uids if u in given or not groups]

    def read_group(group: list[str]) -> list[tuple[str, StudyMapping | None, str | None]]:
        listed: dict[str, list[dict[str, Any]]] = {}
        if len(group) > 1:
            try:
                listed = read_study_group(pacs, group, counts=series_counts)
            except DicomWebError as exc:  # refused (or PACS down: then the per-study search fails as well)
                log.warning("series search for %d studies at once failed (%s); reading them one by one",
                            len(group), exc)
        return [read_and_map(u, listed.get(u)) for u in group]

    if workers > 1 and len(groups) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            answers = list(pool.map(read_group, groups))
    else:
        answers = [read_group(g) for g in groups]
    by_uid = {o[0]: o for outs in answers for o in outs}
    outcomes = [by_uid[u] for u in uids]
    timer.add("dicomweb_s", t0)
    result.pacs_requests = pacs.requests
    mapped = []
    for uid, m, error in outcomes:
        if m is None:
            log.error("study %s failed: %s", uid, error)
            result.failed.append({"study": uid, "error": error})
        else:
            mapped.append(m)
    t0 = time.perf_counter()
    reconcile_patients([*known_patients, *mapped])
    for m in mapped:
        validate_resource(m.patient)
    _record(mapped, result)
    timer.add("mapping_s", t0)
    if collect is not None:
        collect.extend(mapped)
    return _Prepared(mapped, result, timer, workers)


@dataclass
class _Prepared:
    """Studies read and mapped by :func:`_prepare`, not yet written (a backfill writes them while it reads
    the next batch)."""

    mapped: list[StudyMapping]
    result: SyncResult
    timer: _Timer
    workers: int


def _finish(fhir: FhirApi | None, prepared: _Prepared) -> SyncResult:
    mapped, result, timer = prepared.mapped, prepared.result, prepared.timer
    if fhir is None:
        result.bundle = transaction_bundle(mapped)
    else:
        _write_all(fhir, mapped, result, timer, prepared.workers)
    result.timings = {k: round(v, 4) for k, v in timer.t.items()}
    log.info("dicom-to-fhir: %d studies, %d series, resources %s, %d failed, %d issues, %d PACS requests",
             result.studies, result.series, result.as_dict()["resources"], len(result.failed), result.issue_count,
             result.pacs_requests)
    return result


# --------------------------------------------------------------------------- backfill
def _da(value: str | date | None, what: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, date):
        return value.strftime("%Y%m%d")
    text = str(value).strip().replace("-", "")
    parsed, problem = dv.parse_da(text)
    if parsed is None:
        raise ConfigError(f"{what} {value!r} is not a date (expected YYYY-MM-DD or YYYYMMDD)")
    return parsed.strftime("%Y%m%d")


def study_filters(*, since: str | date | None = None, until: str | date | None = None) -> dict[str, str]:
    """QIDO-RS study filters of a backfill window: StudyDate range matching (``since-until``, both inclusive)."""
    lo, hi = _da(since, "--since"), _da(until, "--until")
    if lo and hi and lo > hi:
        raise ConfigError(f"--since {since} is after --until {until}")
    if lo or hi:
        return {"StudyDate": f"{lo or ''}-{hi or ''}"}
    return {}


def list_studies(dicomweb: DicomWebApi, *, since: str | date | None = None, until: str | date | None = None,
                 modalities: Sequence[str] = (), page_size: int = 500) -> Iterator[dict[str, Any]]:
    """Study records of the PACS (QIDO-RS, ``limit``/``offset`` paging), each study once.

    Paging ends at an empty page (a page shorter than ``limit`` is not taken as the last one, because some PACS
    cap the page size below the requested limit). ``modalities`` are matched here against ModalitiesInStudy
    (0008,0061) of each record, not sent to the PACS: Orthanc applies ``limit``/``offset`` before a
    ModalitiesInStudy filter, so its later pages come back empty. A record without (0008,0061) is kept.
    Duplicates across pages are dropped.
    """
    if page_size < 1:
        raise ConfigError(f"page size {page_size} must be positive")
    filters = study_filters(since=since, until=until)
    wanted = {m.strip().upper() for m in modalities if m.strip()}
    seen: set[str] = set()
    offset = 0
    while True:
        page = dicomweb.search_studies({**filters, "limit": page_size, "offset": offset}, fields=list(STUDY_FIELDS))
        if not page:
            return
        for rec in page:
            uid = dv.first_str(rec, "0020000D")
            if not uid or uid in seen:
                continue
            seen.add(uid)
            in_study = {m.upper() for m in dv.strings(rec, "00080061")}
            if wanted and in_study and not wanted & in_study:
                continue
            yield rec
        offset += len(page)  # a short page is not proof of the end: some PACS cap pages below our limit


def date_windows(since: str | date, until: str | date, days: int) -> list[dict[str, str]]:
    """``[since, until]`` cut into consecutive windows of ``days`` days (ISO dates, both ends inclusive), the
    fan-out of the ``dicom-backfill`` DAG (one mapped task per window)."""
    from datetime import datetime, timedelta

    lo, hi = _da(since, "since"), _da(until, "until")
    if not lo or not hi:
        raise ConfigError("a backfill fan-out needs both since and until (YYYY-MM-DD)")
    if days < 1:
        raise ConfigError(f"window of {days} days: must be at least 1")
    start, end = datetime.strptime(lo, "%Y%m%d").date(), datetime.strptime(hi, "%Y%m%d").date()
    if start > end:
        raise ConfigError(f"since {since} is after until {until}")
    out = []
    while start <= end:
        stop = min(end, start + timedelta(days=days - 1))
        out.append({"since": start.isoformat(), "until": stop.isoformat()})
        start = stop + timedelta(days=1)
    return out


class Cursor:
    """Resumable backfill position: a JSON-lines file, first line the query, then one StudyInstanceUID per line
    for every study written. Appends are flushed per batch, so a killed run loses at most the batch in flight.

    The file is state a user can edit or break, so it is read within bounds and every error names the file, the
    line and the rule: at most :attr:`MAX_BYTES`, line 1 bounded JSON (:mod:`kaapana_fhir.core.limits`) holding
    ``query``, every other line a DICOM UID (digits and dots, at most 64 characters). A last line without its
    newline (a write cut by a kill) is not counted; that study is simply written again. A UID that is not one is
    never appended (it could break the file); the next run retries that study."""

    #: largest cursor file read (about four million studies)
    MAX_BYTES = 256 * 1024 * 1024
    #: longest line 1 (the query as JSON)
    MAX_HEAD_BYTES = 64 * 1024
    RULE = "a backfill cursor holds the query as JSON on line 1, then one StudyInstanceUID per line"
    _UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")

    def __init__(self, path: str | Path | None, query: dict[str, Any]) -> None:
        self.path = Path(path) if path else None
        self.query = query
        self.done: set[str] = set()
        if self.path is None:
            return
        if self.path.exists():
            self.done = self._load(self.path, query)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"query": query}) + "\n", encoding="utf-8")

    @classmethod
    def is_uid(cls, uid: str) -> bool:
        return len(uid) <= 64 and cls._UID.fullmatch(uid) is not None

    @classmethod
    def _load(cls, path: Path, query: dict[str, Any]) -> set[str]:
        from kaapana_fhir.core import limits

        done: set[str] = set()
        try:
            limits.check_size(path.stat().st_size, f"cursor {path}", cls.MAX_BYTES)
            with path.open("rb") as fh:
                head = fh.readline(cls.MAX_HEAD_BYTES + 1)
                if not head.endswith(b"\n"):
                    raise ConfigError(f"cursor {path} line 1: {'empty' if not head else 'cut off or too long'} "
                                      f"(rule: {cls.RULE}, line 1 at most {cls.MAX_HEAD_BYTES} bytes); use another "
                                      f"--cursor file for {query}")
                doc = limits.loads_json(head, source=f"cursor {path} line 1", max_bytes=cls.MAX_HEAD_BYTES + 1)
                if not isinstance(doc, dict) or "query" not in doc:
                    raise ConfigError(f"cursor {path} line 1: no backfill query (rule: {cls.RULE}); use another "
                                      f"--cursor file for {query}")
                if doc["query"] != query:
                    raise ConfigError(f"cursor {path} belongs to another backfill ({doc['query']}); "
                                      f"use another --cursor file for {query}")
                for n, raw in enumerate(iter(lambda: fh.readline(66), b""), start=2):
                    if not raw.endswith(b"\n") and len(raw) <= 64:  # the last line, cut by a kill: not recorded
                        log.warning("cursor %s line %d: incomplete last line ignored (written again)", path, n)
                        break
                    uid = raw.strip().decode("ascii", errors="replace")
                    if not uid:
                        continue
                    if not cls.is_uid(uid):
                        raise ConfigError(f"cursor {path} line {n}: {uid[:70]!r} is not a DICOM UID (rule: {cls.RULE}; "
                                          "a UID is digits and dots, at most 64 characters)")
                    done.add(uid)
        except OSError as exc:
            raise ConfigError(f"cursor {path}: cannot be read ({exc.strerror or type(exc).__name__}) "
                              f"(rule: {cls.RULE})") from None
        return done

    def mark(self, uids: Iterable[str]) -> None:
        new = []
        for u in uids:
            if u in self.done:
                continue
            if not self.is_uid(u):
                log.warning("study %r is not recorded in the cursor (not a DICOM UID); the next run retries it",
                            u[:70])
                continue
            new.append(u)
        self.done.update(new)
        if self.path is not None and new:
            with self.path.open("a", encoding="utf-8") as f:
                f.write("".join(u + "\n" for u in new))


def _eta(done: int, total: int, elapsed: float) -> str:
    if done <= 0 or elapsed <= 0:
        return "?"
    secs = int((total - done) * elapsed / done)
    if secs >= 3600:
        return f"{secs // 3600}h{secs % 3600 // 60:02d}m{secs % 60:02d}s"
    return f"{secs // 60}m{secs % 60:02d}s"


def list_series(dicomweb: DicomWebApi, *, since: str | date | None = None, until: str | date | None = None,
                page_size: int = SERIES_PAGE, concurrency: int = 1) -> Iterator[list[dict[str, Any]]]:
    """Pages of series-level QIDO-RS records of a StudyDate window, without a study UID
    (``/series?StudyDate=a-b&limit=&offset=&includefield=...``): one request per page of series instead of one per
    study. Orthanc and dcm4chee both answer it. Paging ends at an empty page (a short page is not the end).

    ``concurrency`` > 1 asks for that many consecutive pages at once (a PACS answers each request on one thread);
    pages are yielded in order. A short page means the PACS caps pages below ``page_size`` (or the end): the pages
    asked for after it started at the wrong offsets, so they are dropped, and paging goes on from the right offset
    with the PACS's page size."""
    if page_size < 1:
        raise ConfigError(f"page size {page_size} must be positive")
    filters = study_filters(since=since, until=until)

    def page_at(offset: int, size: int) -> list[dict[str, Any]]:
        return dicomweb.search_series(None, {**filters, "limit": size, "offset": offset}, fields=SERIES_FIELDS)

    offset, size = 0, page_size
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        while True:
            asked = [pool.submit(page_at, offset + k * size, size) for k in range(max(1, concurrency))]
            try:
                for fut in asked:
                    page = fut.result()
                    if not page:
                        return
                    yield page
                    offset += len(page)
                    if len(page) < size:  # capped by the PACS (or the end): later offsets were wrong
                        size = len(page)
                        break
            finally:
                for fut in asked:
                    fut.cancel()


def _ahead(pages: Iterator[list[dict[str, Any]]], depth: int = 2) -> Generator[list[dict[str, Any]], None, None]:
    """``pages`` read by a background thread, at most ``depth`` pages ahead (the next page is read from the PACS
    while this one is mapped and written); its errors are raised here; stopping early stops the thread."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for page in pages:
                if not put(page):
                    return
            put(end)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put(exc)

    thread = threading.Thread(target=run, name="qido-series-listing", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _count(rec: dict[str, Any], tag: str) -> int | None:
    raw = dv.first_str(rec, tag)
    try:
        return int(str(raw).strip()) if raw is not None else None
    except ValueError:
        return None


class _SeriesGroups:
    """A series listing grouped by study. A study is complete when as many series as its
    NumberOfStudyRelatedSeries (0020,1206) (from the study listing) are listed, or when the listing has ended.
    At most ``max_buffered`` series records are held: past that, the studies waiting longest are read per study
    instead (their records are dropped), so memory stays bounded whatever the PACS's listing order."""

    def __init__(self, expected: Mapping[str, int | None], max_buffered: int) -> None:
        self.expected = expected
        self.max_buffered = max_buffered
        self.groups: dict[str, dict[str, dict[str, Any]]] = {}
        self.closed: set[str] = set()  # handed out as complete
        self.spilled: list[str] = []  # to be read per study
        self.buffered = 0

    def add(self, page: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
        ready: list[str] = []
        for rec in page:
            study, series = dv.first_str(rec, "0020000D"), dv.first_str(rec, "0020000E")
            if not study or not series or study not in self.expected or study in self.closed:
                continue
            group = self.groups.setdefault(study, {})
            if series not in group:
                group[series] = rec
                self.buffered += 1
            n = self.expected[study]
            if n is not None and len(group) >= n and study not in ready:
                ready.append(study)
        out = [(u, self._close(u)) for u in ready]
        while self.buffered > self.max_buffered and self.groups:
            oldest = next(iter(self.groups))
            self._close(oldest)
            self.spilled.append(oldest)
        return out

    def _close(self, study: str) -> list[dict[str, Any]]:
        self.closed.add(study)
        recs = list(self.groups.pop(study).values())
        self.buffered -= len(recs)
        return recs

    def finish(self) -> tuple[list[tuple[str, list[dict[str, Any]]]], list[str]]:
        """At the end of the listing: (studies complete from the listing, studies to read per study: spilled,
        listed with fewer series than their count, or not listed at all)."""
        complete, per_study = [], list(self.spilled)
        for study in list(self.groups):
            n = self.expected[study]
            recs = self._close(study)
            if n is not None and len(recs) < n:
                per_study.append(study)
            else:
                complete.append((study, recs))
        per_study += [u for u in self.expected if u not in self.closed]
        return complete, per_study


def backfill(dicomweb: DicomWebApi, fhir: FhirApi | None, *, since: str | date | None = None,
             until: str | date | None = None,
             modalities: Sequence[str] = (), cursor: str | Path | None = None, options: MappingOptions | None = None,
             wado: str = "auto", workers: int = DEFAULT_WORKERS, batch_size: int = 200, page_size: int = 500,
             progress: Callable[[dict[str, Any]], None] | None = None, series_listing: bool = False,
             series_page_size: int = SERIES_PAGE, max_buffered_series: int = MAX_BUFFERED_SERIES,
             listing_concurrency: int = LISTING_CONCURRENCY, group_size: int = STUDY_GROUP) -> BackfillResult:
    """Backfill every study of the PACS (or of a StudyDate window and modalities) into FHIR.

    1. The study list is read (QIDO-RS study level, ``limit``/``offset`` paging): what to do, the modality
       filter, each study's NumberOfStudyRelatedSeries and SOPClassesInStudy.
    2. By default the series are read ``group_size`` studies at a time, one series-level QIDO with UID list
       matching each (:func:`read_study_group`, in :func:`sync_studies`): every answer completes its studies, so
       they are mapped and written while the next groups are read.
       With ``series_listing``, instead the series of the whole window are listed with paged series-level
       QIDO-RS (:func:`list_series`, ``series_page_size`` series per request, ``listing_concurrency`` requests
       at once, read ahead of the mapping) and grouped by
       study: a study goes to mapping and writing as soon as all its series are listed, so PACS requests per
       study fall lowest. That suits a PACS that lists series in the order they arrived; Orthanc 1.10 lists them
       in a hash order, so most studies complete only with the last page and writing waits for the listing
       (measured slower there than the groups). Studies the listing does not complete (a PACS that refuses a
       series search without a study, answers it empty, or lists fewer series than the study has) are read as
       without ``series_listing``.
    3. Studies go through :func:`sync_studies` in batches of ``batch_size``, pipelined: a batch is written
       (one writer thread) while the next one is listed/read and mapped.

    With a ``cursor`` file, studies already written by an earlier run with the same query are skipped and every
    written batch is recorded, so a re-started backfill continues where it stopped and writes nothing twice;
    failed studies are not recorded (the next run retries them). Progress (done/total, rate, ETA) is logged after
    every batch and passed to ``progress``.
    """
    query = {"since": _da(since, "--since"), "until": _da(until, "--until"),
             "modalities": sorted({m.strip().upper() for m in modalities if m.strip()})}
    cur = Cursor(cursor, query)
    t_list = time.perf_counter()
    pacs = _Pacs(dicomweb)
    records = list(list_studies(pacs, since=since, until=until, modalities=modalities,
                                page_size=page_size))
    todo = [r for r in records if dv.first_str(r, "0020000D") not in cur.done]
    total = len(todo)
    log.info("backfill %s: %d studies in the PACS, %d already done, %d to do (listing %.1fs, %d requests)", query,
             len(records), len(records) - total, total, time.perf_counter() - t_list, pacs.requests)
    result = BackfillResult(listed=len(records), already_done=len(records) - total)
    timings = {"dicomweb_s": 0.0, "mapping_s": 0.0, "fhir_s": 0.0, "listing_s": time.perf_counter() - t_list}
    classes = {dv.first_str(r, "0020000D") or "": dv.strings(r, "00080062") for r in todo}
    expected = {dv.first_str(r, "0020000D") or "": _count(r, "00201206") for r in todo}
    known: dict[str, StudyMapping] = {}
    t0 = time.perf_counter()
    done = 0

    def settle(res: SyncResult, uids: list[str]) -> None:
        nonlocal done
        failed = {f["study"] for f in res.failed}
        cur.mark(u for u in uids if u not in failed)
        result.studies += res.studies
        result.series += res.series
        result.observations += res.observations
        result.issue_count += res.issue_count
        result.pacs_requests += res.pacs_requests
        result.resources += res.resources
        result.study_uids.extend(res.study_uids)
        result.imaging_study_ids.extend(res.imaging_study_ids)
        result.failed.extend(res.failed)
        result.patient_ids.extend(p for p in res.patient_ids if p not in result.patient_ids)
        result.issues.extend(res.issues[: max(0, MAX_ISSUES_IN_RESULT - len(result.issues))])
        for k, v in res.timings.items():
            timings[k] += v
        result.batches += 1
        done += len(uids)
        elapsed = time.perf_counter() - t0
        info = {"done": done, "total": total, "rate": done / elapsed if elapsed else 0.0,
                "eta": _eta(done, total, elapsed), "failed": len(result.failed)}
        log.info("backfill: %d/%d studies (%.0f%%), %.1f studies/s, ETA %s, %d failed", done, total,
                 100.0 * done / max(1, total), info["rate"], info["eta"], info["failed"])
        if progress:
            progress(info)

    # pipeline: batch k is written (one writer thread) while batch k+1 is listed/read and mapped
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: list[tuple[Any, list[str]]] = []

        def run_batch(uids: list[str], recs: dict[str, list[dict[str, Any]]] | None) -> None:
            mapped: list[StudyMapping] = []
            prepared = _prepare(dicomweb, study_uids=uids, series_uids=(), options=options, wado=wado,
                                workers=workers, study_sop_classes=classes, missing="skip",
                                known_patients=list(known.values()), collect=mapped, series_records=recs,
                                group_size=group_size, series_counts=expected)
            known.update((m.patient["id"], m) for m in mapped)
            if pending:
                settle(pending[0][0].result(), pending.pop(0)[1])
            pending.append((writer.submit(_finish, fhir, prepared), uids))

        per_study = [dv.first_str(r, "0020000D") or "" for r in todo]
        if series_listing and todo:
            per_study = _backfill_from_series_listing(pacs, since, until, expected, modalities, batch_size,
                                                      (series_page_size, listing_concurrency), max_buffered_series,
                                                      run_batch, timings)
            result.read_per_study = len(per_study)
        for start in range(0, len(per_study), max(1, batch_size)):
            run_batch(per_study[start:start + batch_size], None)
        while pending:
            settle(pending[0][0].result(), pending.pop(0)[1])
    result.pacs_requests += pacs.requests
    result.timings = {k: round(v, 4) for k, v in timings.items()}
    return result


def _backfill_from_series_listing(pacs: _Pacs, since: str | date | None, until: str | date | None,
                                  expected: Mapping[str, int | None], modalities: Sequence[str], batch_size: int,
                                  paging: tuple[int, int], max_buffered: int,
                                  run_batch: Callable[[list[str], dict[str, list[dict[str, Any]]] | None], None],
                                  timings: dict[str, float]) -> list[str]:
    """Step 2 of :func:`backfill`: complete studies from the series listing go to ``run_batch`` in batches; returns
    the studies to read per study."""
    wanted = {m.strip().upper() for m in modalities if m.strip()}
    groups = _SeriesGroups(expected, max_buffered)
    batch: dict[str, list[dict[str, Any]]] = {}

    def flush() -> None:
        run_batch(list(batch), dict(batch))
        batch.clear()

    def take(complete: list[tuple[str, list[dict[str, Any]]]], *, last: bool = False) -> None:
        for uid, recs in complete:
            if wanted and not wanted & {(dv.first_str(r, "00080060") or "").upper() for r in recs}:
                continue  # listed without ModalitiesInStudy; its series show it is not wanted
            batch[uid] = recs
            if len(batch) >= max(1, batch_size):
                flush()
        if batch and last:
            flush()

    pages = 0
    t = time.perf_counter()
    try:
        pages_in = list_series(pacs, since=since, until=until, page_size=paging[0], concurrency=paging[1])
        with closing(_ahead(pages_in)) as listing:
            for page in listing:
                pages += 1
                timings["listing_s"] += time.perf_counter() - t
                take(groups.add(page))
                t = time.perf_counter()
    except DicomWebError as exc:
        if pages:
            raise
        log.warning("backfill: the PACS at %s refused a series search without a study (%s); reading study by study",
                    pacs.url, exc)
    timings["listing_s"] += time.perf_counter() - t
    complete, per_study = groups.finish()
    take(complete, last=True)
    if per_study:
        log.info("backfill: %d studies not complete in the series listing (%d pages); reading them per study",
                 len(per_study), pages)
    return per_study


# --------------------------------------------------------------------------- files
#: Media Storage Directory Storage: a DICOMDIR is an index, not an image.
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


def _iter_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files.extend(sorted(f for f in path.rglob("*") if f.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise MappingError(f"{path}: no such file or directory (rule: --files takes DICOM files or folders)")
    return files


def _skip(result: SyncResult, path: Path, rule: str) -> None:
    result.skipped_files.append(str(path))
    result.add_issue({"tag": "file", "value": str(path), "rule": rule, "study": "", "source": str(path)})
    log.warning("%s: %s", path, rule)


def sync_files(paths: Iterable[str | Path], fhir: FhirApi | None, *, options: MappingOptions | None = None,
               workers: int = 1) -> SyncResult:
    """``--files`` mode: map DICOM files (no PACS) and write them (or return the ``bundle`` when ``fhir=None``).

    Files that are not DICOM (README, manifest.json) and DICOMDIR index files are skipped and listed in
    ``skipped_files`` and as issues; they do not fail the run (the CLI's ``--strict`` makes them fail).
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    options = options or MappingOptions()
    timer = _Timer()
    result = SyncResult()
    records: list[tuple[str, dict[str, Any]]] = []
    t0 = time.perf_counter()
    for f in _iter_files(paths):
        try:
            ds = dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, KeyError) as exc:
            _skip(result, f, f"not a DICOM file ({type(exc).__name__}); skipped")
            continue
        sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or
                        ds.get("SOPClassUID", ""))
        if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            _skip(result, f, "DICOMDIR (Media Storage Directory, an index of other files); skipped")
            continue
        rec, problems = dataset_to_json(ds)
        for pr in problems:
            pr.update({"study": dv.first_str(rec, "0020000D") or "", "source": str(f)})
            result.add_issue(pr)
        records.append((str(f), rec))
    grouped, failures = group_instances(records)
    result.failed.extend(failures)
    timer.add("dicomweb_s", t0)
    t0 = time.perf_counter()
    mapped = _map_all(grouped.items(), options, result)
    timer.add("mapping_s", t0)
    if fhir is None:
        result.bundle = transaction_bundle(mapped)
    else:
        _write_all(fhir, mapped, result, timer, workers)
    result.timings = {k: round(v, 4) for k, v in timer.t.items()}
    return result
