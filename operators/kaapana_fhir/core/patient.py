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


class Precedence(enum.Enum):
    """Which side's value is kept when both the server and the incoming resource have an element."""

    EXISTING = "existing"
    INCOMING = "incoming"


@dataclass(frozen=True)
class FieldConflict:
    """Two different values of one Patient element: what the server had, what came in, and what was kept."""

    element: str
    existing: Any
    incoming: Any
    kept: str

    def message(self, patient_id: str) -> str:
        return (f"Patient/{patient_id}: {self.element} differs (server {self.existing!r}, incoming {self.incoming!r}); "
                f"kept the {self.kept} value")


@dataclass
class PatientMerge:
    """The merged Patient and the demographic elements on which the two sides disagreed."""

    resource: dict[str, Any]
    conflicts: list[FieldConflict] = field(default_factory=list)


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


def merge_patient(existing: dict[str, Any] | None, incoming: dict[str, Any], precedence: Precedence) -> PatientMerge:
    """Merge ``incoming`` into the server's ``existing`` Patient (``None``: not on the server yet)."""
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
    conflicts: list[FieldConflict] = []
    for key, value in incoming.items():
        if key in _MANAGED:
            continue
        if key not in existing:
            merged[key] = copy.deepcopy(value)
            continue
        if existing[key] == value:
            continue
        if key in DEMOGRAPHICS:
            conflicts.append(FieldConflict(key, existing[key], value, precedence.value))
        if precedence is Precedence.INCOMING:
            merged[key] = copy.deepcopy(value)
    return PatientMerge(merged, conflicts)
