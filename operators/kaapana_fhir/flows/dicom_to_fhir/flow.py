"""DICOM → FHIR on ingest: read every touched study from the PACS, map, validate, write (no Airflow).

Entry points
------------
* :func:`sync_studies` — PACS mode: series/study UIDs → all series of each touched study via QIDO-RS
  (``includefield``) + WADO-RS metadata of one instance per series where QIDO lacks attributes
  (AnatomicRegionSequence (0008,2218), BodyPartExamined (0018,0015)) → Patient/ImagingStudy/Endpoint/Device.
* :func:`sync_files` — ``--files`` mode: DICOM files without a PACS.

Concurrency: each study is rebuilt from the PACS and written in one transaction; Patient and ImagingStudy
are read first and written with ``If-Match`` (HAPI answers a stale version with 409, others with 412),
retried after re-reading; series present on the server but missing from this run's PACS read are kept
(:func:`~kaapana_fhir.core.dicom.merge.merge_imaging_study`), and a create that overwrote a concurrent
create is detected from the returned version and merged back. Unchanged resources are not written.
All PACS reads of a call happen before the first write, so an unreachable PACS writes nothing.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from kaapana_fhir.core import bundle as fb
from kaapana_fhir.core.dicom import values as dv
from kaapana_fhir.core.dicom.files import dataset_to_json, group_instances
from kaapana_fhir.core.dicom.mapping import MappingOptions, SeriesInput, StudyMapping, map_study
from kaapana_fhir.core.dicom.merge import comparable, merge_imaging_study, merge_patient, same_content
from kaapana_fhir.core.ids import normalize_uid
from kaapana_fhir.core.validate import validate_resource
from kaapana_fhir.exceptions import DicomWebError, FhirServerError, MappingError, ResourceNotFound

log = logging.getLogger(__name__)

#: QIDO-RS series attributes whose absence makes ``wado="auto"`` fetch one instance's WADO-RS metadata.
WADO_WHEN_MISSING = ("00082218", "00180015")
MAX_ISSUES_IN_RESULT = 200
_CONFLICT = (409, 412)
_VERSION_RE = re.compile(r"/_history/(\d+)")


class _Timer:
    def __init__(self) -> None:
        self.t = {"dicomweb_s": 0.0, "mapping_s": 0.0, "fhir_s": 0.0}

    def add(self, key: str, t0: float) -> None:
        self.t[key] += time.perf_counter() - t0


# --------------------------------------------------------------------------- PACS side
def resolve_study_uids(dicomweb: Any, study_uids: Iterable[str] = (), series_uids: Iterable[str] = (), *,
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


def read_study(dicomweb: Any, study_uid: str, *, wado: str = "auto",
               include_instances: bool = False) -> list[SeriesInput]:
    """All series of one study as :class:`SeriesInput` (QIDO-RS + optional WADO-RS metadata)."""
    series = dicomweb.search_series(study_uid)
    out: list[SeriesInput] = []
    for rec in series:
        series_uid = dv.first_str(rec, "0020000E")
        attrs = dict(rec)
        attrs.setdefault("0020000D", {"vr": "UI", "Value": [study_uid]})
        need_wado = wado == "always" or (wado == "auto" and any(k not in rec for k in WADO_WHEN_MISSING))
        instances: list[dict[str, Any]] = []
        if series_uid and (need_wado or include_instances):
            instances = dicomweb.search_instances(study_uid, series_uid)
        if need_wado and instances:
            sop = dv.first_str(instances[0], "00080018")
            meta = dicomweb.instance_metadata(study_uid, series_uid, sop) if sop else None
            if isinstance(meta, list):
                meta = meta[0] if meta else None
            if meta:
                attrs = dict(meta)
                attrs.update({k: v for k, v in rec.items() if isinstance(v, dict) and ("Value" in v or k not in meta)})
        count = len(instances) if instances else None
        out.append(SeriesInput(attrs, instances if include_instances else [], count, f"{dicomweb.url}#{series_uid}"))
    return out


# --------------------------------------------------------------------------- FHIR side
def _read(fhir: Any, rtype: str, rid: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return fhir.read_with_etag(rtype, rid)
    except ResourceNotFound:
        return None, None


def _is_conflict(exc: FhirServerError) -> bool:
    return exc.status_code in _CONFLICT


def write_study(fhir: Any, m: StudyMapping, *, written: dict[str, str] | None = None,
                max_attempts: int = 8) -> dict[str, int]:
    """Write one mapped study in one transaction with ``If-Match`` on Patient and ImagingStudy.

    ``written`` caches Endpoint/Device ids already written in this call (skip duplicates across studies).
    Returns counts ``created``, ``updated``, ``unchanged``, ``conflicts``.
    """
    written = written if written is not None else {}
    counts = {"created": 0, "updated": 0, "unchanged": 0, "conflicts": 0}
    lost: list[dict[str, Any]] = []
    shared = ([m.endpoint] if m.endpoint else []) + list(m.devices)
    for attempt in range(1, max_attempts + 1):
        cur_p, etag_p = _read(fhir, "Patient", m.patient["id"])
        cur_s, etag_s = _read(fhir, "ImagingStudy", m.imaging_study["id"])
        patient = merge_patient(cur_p, m.patient)
        study = merge_imaging_study(cur_s, m.imaging_study)
        for old in lost:
            study = merge_imaging_study(old, study)
        entries = []
        skipped = 0
        for r in shared:
            key = f"{r['resourceType']}/{r['id']}"
            if written.get(key) != comparable(r):
                entries.append(fb.put_entry(r))
            else:
                skipped += 1
        if not same_content(cur_p, patient):
            entries.append(fb.put_entry(patient, if_match=etag_p if cur_p else None))
        else:
            skipped += 1
        if not same_content(cur_s, study):
            validate_resource(study)
            entries.append(fb.put_entry(study, if_match=etag_s if cur_s else None))
        else:
            skipped += 1
        if not entries:
            counts["unchanged"] += skipped
            return counts
        try:
            resp = fhir.transaction(fb.transaction(entries, sort=False))
        except FhirServerError as exc:
            if not _is_conflict(exc) or attempt == max_attempts:
                raise
            counts["conflicts"] += 1
            log.info("study %s: version conflict (%s), re-reading and retrying (%d/%d)", m.study_uid,
                     exc.status_code, attempt, max_attempts)
            time.sleep(random.uniform(0.05, 0.2) * attempt)
            continue
        for r in shared:
            written[f"{r['resourceType']}/{r['id']}"] = comparable(r)
        overwrote = None
        for e, req in zip(resp.get("entry", []), entries):
            status = (e.get("response", {}).get("status") or "").split(" ")[0]
            codes = [c.get("code") for i in (e.get("response", {}).get("outcome") or {}).get("issue", [])
                     for c in (i.get("details") or {}).get("coding", [])]
            if status == "201":
                counts["created"] += 1
            elif "SUCCESSFUL_UPDATE_NO_CHANGE" in codes:
                counts["unchanged"] += 1
            else:
                counts["updated"] += 1
            if req["resource"]["resourceType"] == "ImagingStudy" and cur_s is None and status == "200":
                overwrote = e.get("response", {}).get("location", "")
        counts["unchanged"] += skipped
        if overwrote:
            match = _VERSION_RE.search(overwrote)
            version = int(match.group(1)) if match else 0
            if version > 1:  # a concurrent run created it between our read and our write: merge its series back
                prev = fhir.request("GET", f"ImagingStudy/{m.imaging_study['id']}/_history/{version - 1}").json()
                if not same_content(merge_imaging_study(prev, study), study):
                    counts["conflicts"] += 1
                    lost.append(prev)
                    continue
        return counts
    return counts  # pragma: no cover - loop always returns or raises


# --------------------------------------------------------------------------- orchestration
def _empty_result() -> dict[str, Any]:
    return {"studies": 0, "series": 0, "study_uids": [], "imaging_study_ids": [], "patient_ids": [],
            "resources": {"created": 0, "updated": 0, "unchanged": 0}, "conflict_retries": 0,
            "failed": [], "issues": [], "issue_count": 0}


def _map_all(grouped: Iterable[tuple[str, list[SeriesInput]]], options: MappingOptions,
             result: dict[str, Any]) -> list[StudyMapping]:
    mapped = []
    for study_uid, series in grouped:
        try:
            m = map_study(series, options)
            for r in m.resources():
                validate_resource(r)
        except MappingError as exc:
            log.error("study %s failed: %s", study_uid or "?", exc)
            result["failed"].append({"study": study_uid, "error": str(exc)})
            continue
        mapped.append(m)
        result["studies"] += 1
        result["series"] += len(m.imaging_study.get("series", []))
        result["study_uids"].append(m.study_uid)
        result["imaging_study_ids"].append(m.imaging_study["id"])
        if m.patient["id"] not in result["patient_ids"]:
            result["patient_ids"].append(m.patient["id"])
        result["issue_count"] += len(m.issues)
        for issue in m.issues:
            if len(result["issues"]) < MAX_ISSUES_IN_RESULT:
                result["issues"].append(issue)
            log.warning("study %s: %s %r: %s", issue["study"], issue["tag"], issue["value"], issue["rule"])
    return mapped


def _write_all(fhir: Any, mapped: list[StudyMapping], result: dict[str, Any], timer: _Timer) -> None:
    written: dict[str, str] = {}
    t0 = time.perf_counter()
    for m in mapped:
        c = write_study(fhir, m, written=written)
        for k in ("created", "updated", "unchanged"):
            result["resources"][k] += c[k]
        result["conflict_retries"] += c["conflicts"]
    timer.add("fhir_s", t0)


def transaction_bundle(mapped: Sequence[StudyMapping]) -> dict[str, Any]:
    """One transaction Bundle (PUT entries) of all mapped studies, for ``--out`` (dry run / review)."""
    entries = [fb.put_entry(r) for m in mapped for r in m.resources()]
    return fb.transaction(entries)


def sync_studies(dicomweb: Any, fhir: Any | None, *, study_uids: Iterable[str] = (),
                 series_uids: Iterable[str] = (), options: MappingOptions | None = None, wado: str = "auto",
                 missing: str = "fail") -> dict[str, Any]:
    """Bring the studies touched by ``study_uids`` / ``series_uids`` from the PACS into FHIR.

    ``fhir=None`` maps without writing and returns the transaction Bundle under ``"bundle"``.
    ``options.endpoint_address`` defaults to the PACS's WADO-RS base. Returns the result dict
    (studies, series, ids, resources created/updated/unchanged, failed studies, issues, timings).
    """
    options = options or MappingOptions()
    if options.endpoint_address is None:
        options = MappingOptions(**{**options.__dict__, "endpoint_address": dicomweb.wado_rs_base})
    timer = _Timer()
    result = _empty_result()
    t0 = time.perf_counter()
    uids = resolve_study_uids(dicomweb, study_uids, series_uids, missing=missing)
    studies = []
    for uid in uids:
        series = read_study(dicomweb, uid, wado=wado, include_instances=options.include_instances)
        if not series:
            result["failed"].append({"study": uid, "error": f"study {uid} has no series in the PACS at {dicomweb.url}"})
            continue
        studies.append((uid, series))
    timer.add("dicomweb_s", t0)
    t0 = time.perf_counter()
    mapped = _map_all(studies, options, result)
    timer.add("mapping_s", t0)
    if fhir is None:
        result["bundle"] = transaction_bundle(mapped)
    else:
        _write_all(fhir, mapped, result, timer)
    result["timings"] = {k: round(v, 4) for k, v in timer.t.items()}
    log.info("dicom-to-fhir: %d studies, %d series, resources %s, %d failed, %d issues", result["studies"],
             result["series"], result["resources"], len(result["failed"]), result["issue_count"])
    return result


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


def sync_files(paths: Iterable[str | Path], fhir: Any | None, *,
               options: MappingOptions | None = None) -> dict[str, Any]:
    """``--files`` mode: map DICOM files (no PACS) and write them (or return ``"bundle"`` when ``fhir=None``)."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    options = options or MappingOptions()
    timer = _Timer()
    result = _empty_result()
    records: list[tuple[str, dict[str, Any]]] = []
    t0 = time.perf_counter()
    for f in _iter_files(paths):
        try:
            ds = dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            result["failed"].append({"study": "", "source": str(f), "error": f"{f}: not a readable DICOM file ({exc})"})
            continue
        rec, problems = dataset_to_json(ds)
        for pr in problems:
            pr.update({"study": dv.first_str(rec, "0020000D") or "", "source": str(f)})
            result["issues"].append(pr)
            result["issue_count"] += 1
        records.append((str(f), rec))
    grouped, failures = group_instances(records)
    result["failed"].extend(failures)
    timer.add("dicomweb_s", t0)
    t0 = time.perf_counter()
    mapped = _map_all(grouped.items(), options, result)
    timer.add("mapping_s", t0)
    if fhir is None:
        result["bundle"] = transaction_bundle(mapped)
    else:
        _write_all(fhir, mapped, result, timer)
    result["timings"] = {k: round(v, 4) for k, v in timer.t.items()}
    return result
