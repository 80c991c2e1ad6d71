"""Merging what the DICOM flow writes with what the FHIR server already holds (pure functions).

* ImagingStudy: the rebuilt study (all series read from the PACS) wins; series that exist only on the
  server (written by a concurrent run that saw a series this run's PACS read missed) are kept, so two
  series of one study processed at the same time end in one ImagingStudy holding both.
* Patient: shared with the clinical-table flow (same ``patient_id``); merged by :mod:`kaapana_fhir.core.patient`
  with the server's values winning: DICOM only fills elements that are absent and adds its identifier and tag.
* :func:`same_content` compares ignoring server-managed ``meta`` (versionId, lastUpdated, source), so an
  unchanged re-run is skipped and creates no new version.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from kaapana_fhir.core import patient
from kaapana_fhir.core.dicom.mapping import finish_study, sort_series

_SERVER_META = ("versionId", "lastUpdated", "source")


def comparable(resource: dict[str, Any]) -> str:
    """Canonical JSON of a resource without server-managed meta and with meta.tag as a sorted set."""
    r = copy.deepcopy(resource)
    meta = r.get("meta")
    if isinstance(meta, dict):
        for k in _SERVER_META:
            meta.pop(k, None)
        if "tag" in meta:
            meta["tag"] = sorted(({"system": t.get("system"), "code": t.get("code")} for t in meta["tag"]),
                                 key=lambda t: (t["system"] or "", t["code"] or ""))
        if not meta:
            r.pop("meta")
    r.pop("text", None)
    return json.dumps(r, sort_keys=True, separators=(",", ":"))


def same_content(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    return comparable(a) == comparable(b)


def _merge_tags(existing: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    tags = [dict(t) for t in (existing.get("meta") or {}).get("tag", [])]
    seen = {(t.get("system"), t.get("code")) for t in tags}
    for t in (new.get("meta") or {}).get("tag", []):
        if (t.get("system"), t.get("code")) not in seen:
            tags.append(dict(t))
    return tags


def merge_imaging_study(existing: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` plus the series of ``existing`` that ``new`` does not have (by ``series.uid``)."""
    merged = copy.deepcopy(new)
    if not existing:
        return merged
    have = {s["uid"] for s in merged.get("series", [])}
    extra = [copy.deepcopy(s) for s in existing.get("series", []) if s.get("uid") not in have]
    if extra:
        merged["series"] = sort_series(merged.get("series", []) + extra)
        finish_study(merged)
    meta = {k: v for k, v in (merged.get("meta") or {}).items() if k not in _SERVER_META}
    meta["tag"] = _merge_tags(existing, new)
    merged["meta"] = meta
    return merged


def merge_patient(existing: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The existing Patient with DICOM data filled in where absent (never overwrites other flows' data)."""
    return patient.merge_patient(existing, new, patient.Precedence.EXISTING).resource
