"""Deterministic identifiers shared by every flow.

Every resource id is derived from stable business keys (DICOM UIDs, patient identifier
``system|value``, column names) so that a re-run upserts (``PUT Resource/<id>``) instead of
duplicating. Ids are hex SHA-256 prefixes with a type prefix: valid FHIR ids (``[A-Za-z0-9\\-\\.]{1,64}``),
never all-digit (HAPI rejects numeric client ids by default).
"""

from __future__ import annotations

import hashlib
import re

from kaapana_fhir.exceptions import MappingError

#: Namespace mixed into every hash, so ids of this package never collide with other writers.
ID_NAMESPACE = "kaapana-fhir/v1"

#: Default identifier system for patient identifiers when no issuer is configured.
DEFAULT_PATIENT_SYSTEM = "urn:kaapana-fhir:patient-id"

_UID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_FHIR_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def stable_id(kind: str, *parts: str, length: int = 40) -> str:
    """Return a deterministic FHIR id for ``kind`` from the given key parts.

    >>> stable_id("Patient", "urn:x|1") == stable_id("Patient", "urn:x|1")
    True
    >>> stable_id("Patient", "a", "b") != stable_id("Patient", "a|b")
    True
    """
    h = hashlib.sha256()
    h.update(ID_NAMESPACE.encode())
    h.update(b"\x00")
    h.update(kind.encode())
    for p in parts:
        h.update(b"\x00")
        h.update(str(p).encode("utf-8"))
    prefix = "".join(c for c in kind.lower() if c.isalnum())[:8] or "r"
    return f"{prefix}-{h.hexdigest()[:length]}"


def patient_id(system: str | None, value: str) -> str:
    """The one Patient id function: same ``system|value`` → same Patient, for DICOM and tables.

    ``value`` is the patient identifier (DICOM PatientID (0010,0020) or a table's key column),
    ``system`` the identifier system (configured issuer, DICOM IssuerOfPatientID (0010,0021) mapped
    to a URI, or :data:`DEFAULT_PATIENT_SYSTEM`). Surrounding whitespace and DICOM padding are ignored.
    """
    v = normalize_patient_value(value)
    s = (system or DEFAULT_PATIENT_SYSTEM).strip()
    return stable_id("Patient", f"{s}|{v}")


def normalize_patient_value(value: str) -> str:
    """Strip DICOM padding (spaces, NUL) from a patient identifier; empty → :class:`MappingError`."""
    if value is None:
        raise MappingError("patient identifier is missing (rule: a patient key is required)")
    v = str(value).strip().strip("\x00").strip()
    if not v:
        raise MappingError("patient identifier is empty (rule: a patient key is required)")
    return v


def normalize_uid(uid: str | None, *, tag: str = "UID") -> str:
    """Validate a DICOM UID (PS3.5 §9.1): digits and dots, no leading zeros, ≤64 chars.

    Trailing NUL / spaces (DICOM padding) are removed. Raises :class:`MappingError` naming ``tag``.
    """
    if uid is None:
        raise MappingError(f"{tag} is missing")
    u = str(uid).strip().rstrip("\x00").strip()
    if not u:
        raise MappingError(f"{tag} is empty")
    if len(u) > 64 or not _UID_RE.match(u):
        raise MappingError(f"{tag} {u!r} is not a valid DICOM UID (rule: PS3.5 9.1, digits and dots, <=64)")
    return u


def uid_urn(uid: str) -> str:
    """``urn:oid:<uid>``, the FHIR form of a DICOM UID in identifiers and sopClass codes."""
    return f"urn:oid:{uid}"


def is_valid_fhir_id(value: str) -> bool:
    return bool(_FHIR_ID_RE.match(value))
