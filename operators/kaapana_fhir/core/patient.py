"""One Patient merge for every flow: identifiers and tags are united, demographics follow an explicit precedence.

Two flows write the same Patient (its id is derived from the patient identifier, see :mod:`kaapana_fhir.core.ids`):

* the DICOM flow knows demographics from image headers, which are often empty or anonymised, so it only fills
  elements the server does not have yet (:attr:`Precedence.EXISTING`);
* the table import carries the curated clinical record, so its values replace the server's
  (:attr:`Precedence.INCOMING`).

Either way, identifiers and ``meta.tag`` codings are united (never dropped), server-managed ``meta`` elements
(``versionId``, ``lastUpdated``, ``source``) are removed so the write is a plain update, and every element on which
the two sides disagree is returned as a :class:`FieldConflict` so that the caller can report it instead of
silently picking one value.

**Sources.** A writer that names its ``source`` (the table import: ``table:<file name>``) records it on every
demographic element it sets, as an extension of the primitive element (``_birthDate.extension[url=``
:data:`SOURCE_EXT` ``].valueString``). When such a writer meets a different value on the server, the recorded
source decides, not the precedence:

* the server's value came from the **same source** (the same file, imported again after a fix) or is a
  placeholder (:data:`PLACEHOLDERS`: gender ``unknown``): a correction, the incoming value is applied and nothing
  is reported;
* it came from **another source** (another file, or no recorded source: the DICOM flow, an older import): a
  conflict, returned with both values and both sources; :class:`ConflictPolicy` ``keep`` (the default) leaves the
  server's value, ``replace`` takes the incoming one, ``fail`` keeps it too and the caller refuses the write.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from typing import Any

#: Patient elements the merge compares and reports on (demographics); other elements follow the same precedence.
DEMOGRAPHICS = ("name", "gender", "birthDate", "deceasedBoolean", "deceasedDateTime")
#: ``meta`` elements owned by the server; dropped before a write.
SERVER_META = ("versionId", "lastUpdated", "source")
#: Elements never taken from the incoming side wholesale (united or managed instead).
_MANAGED = ("resourceType", "id", "meta", "identifier", "text")
#: Extension on a primitive demographic element naming the source that set its value (``valueString``).
SOURCE_EXT = "https://kaapana-fhir.dev/StructureDefinition/value-source"
#: Values that say "not known" (e.g. a DICOM header's empty sex as ``unknown``): replacing one is no conflict.
PLACEHOLDERS = {("gender", "unknown")}
#: Choice elements: the variants of one element (``deceased[x]``) are compared as one element.
_CHOICES = {"deceasedBoolean": "deceased", "deceasedDateTime": "deceased"}


class Precedence(enum.Enum):
    """Which side's value is kept when both the server and the incoming resource have an element."""

    EXISTING = "existing"
    INCOMING = "incoming"


class ConflictPolicy(enum.StrEnum):
    """A demographic value that another source set differently: keep the server's, replace it, or fail."""

    KEEP = "keep"
    REPLACE = "replace"
    FAIL = "fail"


@dataclass(frozen=True)
class FieldConflict:
    """Two different values of one Patient element: what the server had, what came in, and what was kept."""

    element: str
    existing: Any
    incoming: Any
    kept: str
    existing_source: str | None = None
    incoming_source: str | None = None

    def message(self, patient_id: str) -> str:
        if self.incoming_source is None:
            return (f"Patient/{patient_id}: {self.element} differs (server {self.existing!r}, incoming "
                    f"{self.incoming!r}); kept the {self.kept} value")
        return (f"Patient/{patient_id}: {self.element} differs: {self.existing!r} from "
                f"{self.existing_source or 'another source (DICOM or an earlier import)'}, {self.incoming!r} from "
                f"{self.incoming_source}; kept the {self.kept} value")

    def as_dict(self, patient_id: str) -> dict[str, Any]:
        return {"patient": f"Patient/{patient_id}", "element": self.element, "existing": self.existing,
                "existing_source": self.existing_source, "incoming": self.incoming,
                "incoming_source": self.incoming_source, "kept": self.kept}


@dataclass
class PatientMerge:
    """The merged Patient and the demographic elements on which the two sides disagreed."""

    resource: dict[str, Any]
    conflicts: list[FieldConflict] = field(default_factory=list)
    #: demographic elements whose value the same source corrected
    corrected: list[str] = field(default_factory=list)


def _unite(
    existing: list[dict[str, Any]], incoming: list[dict[str, Any]], key: tuple[str, ...]
) -> list[dict[str, Any]]:
    out = [copy.deepcopy(x) for x in existing]
    seen = {tuple(x.get(k) for k in key) for x in existing}
    for x in incoming:
        k = tuple(x.get(k) for k in key)
        if k not in seen:
            seen.add(k)
            out.append(copy.deepcopy(x))
    return out


def source_of(resource: dict[str, Any], element: str) -> str | None:
    """The source recorded on a primitive element (``_<element>.extension`` :data:`SOURCE_EXT`), if any."""
    ext = (resource.get(f"_{element}") or {}).get("extension") or []
    for e in ext:
        if isinstance(e, dict) and e.get("url") == SOURCE_EXT and isinstance(e.get("valueString"), str):
            return str(e["valueString"])
    return None


def with_sources(resource: dict[str, Any], source: str) -> dict[str, Any]:
    """``resource`` with ``source`` recorded on each demographic primitive element it sets (a new dict)."""
    out = dict(resource)
    for key in DEMOGRAPHICS:
        if key in out and key != "name":
            out[f"_{key}"] = {"extension": [{"url": SOURCE_EXT, "valueString": source}]}
    return out


def _take(merged: dict[str, Any], incoming: dict[str, Any], key: str) -> None:
    """Set ``key`` (and its ``_key`` source) from ``incoming``, dropping the other variants of a choice element."""
    group = _CHOICES.get(key)
    if group:
        for other in [k for k, g in _CHOICES.items() if g == group and k != key]:
            merged.pop(other, None)
            merged.pop(f"_{other}", None)
    merged[key] = copy.deepcopy(incoming[key])
    if f"_{key}" in incoming:
        merged[f"_{key}"] = copy.deepcopy(incoming[f"_{key}"])
    else:
        merged.pop(f"_{key}", None)


def _existing_key(existing: dict[str, Any], key: str) -> str | None:
    """The key under which ``existing`` holds element ``key`` (another variant for a choice element)."""
    if key in existing:
        return key
    group = _CHOICES.get(key)
    return next((k for k, g in _CHOICES.items() if g == group and k in existing), None) if group else None


def merge_patient(existing: dict[str, Any] | None, incoming: dict[str, Any], precedence: Precedence, *,
                  source: str | None = None, policy: ConflictPolicy = ConflictPolicy.KEEP) -> PatientMerge:
    """Merge ``incoming`` into the server's ``existing`` Patient (``None``: not on the server yet).

    With ``source`` the incoming demographics carry it (:func:`with_sources`) and a differing value is a
    correction (same source: applied) or a conflict (another source: ``policy``); without it ``precedence``
    decides and every difference is reported.
    """
    if source is not None:
        incoming = with_sources(incoming, source)
    if not existing:
        return PatientMerge(copy.deepcopy(incoming))
    merged = {k: copy.deepcopy(v) for k, v in existing.items() if k != "text"}
    old_meta = existing.get("meta") or {}
    new_meta = incoming.get("meta") or {}
    meta = {k: copy.deepcopy(v) for k, v in old_meta.items() if k not in SERVER_META}
    tags = _unite(old_meta.get("tag") or [], new_meta.get("tag") or [], ("system", "code"))
    if tags:
        meta["tag"] = tags
    profiles = sorted(set(old_meta.get("profile") or []) | set(new_meta.get("profile") or []))
    if profiles:
        meta["profile"] = profiles
    if meta:
        merged["meta"] = meta
    else:
        merged.pop("meta", None)
    idents = _unite(existing.get("identifier") or [], incoming.get("identifier") or [], ("system", "value"))
    if idents:
        merged["identifier"] = idents
    out = PatientMerge(merged)
    for key, value in incoming.items():
        if key in _MANAGED or key.startswith("_"):
            continue
        old_key = _existing_key(existing, key) if key in DEMOGRAPHICS else (key if key in existing else None)
        if old_key is None:
            _take(merged, incoming, key)
            continue
        old = existing[old_key]
        if old_key == key and old == value:
            continue  # the same value: the server's recorded source (if any) stays
        if key not in DEMOGRAPHICS:
            if precedence is Precedence.INCOMING:
                merged[key] = copy.deepcopy(value)
            continue
        if source is None:
            out.conflicts.append(FieldConflict(key, old, value, precedence.value))
            if precedence is Precedence.INCOMING:
                _take(merged, incoming, key)
            continue
        old_source = source_of(existing, old_key)
        if old_source == source or (old_key, old) in PLACEHOLDERS:
            out.corrected.append(key)
            _take(merged, incoming, key)
            continue
        replace = policy is ConflictPolicy.REPLACE
        out.conflicts.append(FieldConflict(key, old, value, "incoming" if replace else "existing",
                                           old_source, source))
        if replace:
            _take(merged, incoming, key)
    return out
