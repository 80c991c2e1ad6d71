"""Transaction Bundles (FHIR R4 ``Bundle.type = transaction``).

Entries are idempotent upserts by default: ``PUT <Type>/<deterministic id>``, so an Airflow retry or
a re-run writes the same resources again without duplicates (HAPI keeps the version when nothing
changed). Conditional creates (``POST`` + ``ifNoneExist``) and ``urn:uuid`` references are supported
for resources whose id is chosen by the server.

Chunking keeps entry order: put referenced resources (Patient, Endpoint, Device) first so that every
chunk only references resources of the same or an earlier chunk.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from kaapana_fhir.exceptions import MappingError

DEFAULT_CHUNK_SIZE = 500

#: Write order of resource types within a Bundle (referenced resources first).
TYPE_ORDER = (
    "Organization", "Practitioner", "Endpoint", "Device", "Patient", "BodyStructure", "ImagingStudy",
    "Condition", "Observation", "DiagnosticReport", "Provenance",
)


def put_entry(resource: dict[str, Any], *, if_match: str | None = None) -> dict[str, Any]:
    """A transaction entry that creates or replaces ``resource`` at ``<resourceType>/<id>``.

    ``if_match`` (an ETag such as ``W/"3"``) makes the update conditional on the current version
    (HTTP 412 on conflict), for read-modify-write of shared resources like ImagingStudy.
    """
    rtype = resource.get("resourceType")
    rid = resource.get("id")
    if not rtype or not rid:
        raise MappingError(f"resource needs resourceType and id for a PUT entry (got {rtype!r}/{rid!r})")
    request: dict[str, Any] = {"method": "PUT", "url": f"{rtype}/{rid}"}
    if if_match:
        request["ifMatch"] = if_match
    return {"fullUrl": f"{rtype}/{rid}", "resource": resource, "request": request}


def post_entry(resource: dict[str, Any], *, if_none_exist: str | None = None,
               full_url: str | None = None) -> dict[str, Any]:
    """A transaction entry that POSTs ``resource`` (server-assigned id), optionally conditional.

    ``full_url`` defaults to a fresh ``urn:uuid:``; other entries may reference it and the server
    rewrites those references to the assigned id.
    """
    rtype = resource.get("resourceType")
    if not rtype:
        raise MappingError("resource needs a resourceType for a POST entry")
    request: dict[str, Any] = {"method": "POST", "url": rtype}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    return {"fullUrl": full_url or f"urn:uuid:{uuid.uuid4()}", "resource": resource, "request": request}


def sort_key(entry: dict[str, Any]) -> int:
    rtype = entry.get("resource", {}).get("resourceType", "")
    try:
        return TYPE_ORDER.index(rtype)
    except ValueError:
        return len(TYPE_ORDER)


def transaction(entries: Iterable[dict[str, Any]], *, sort: bool = True) -> dict[str, Any]:
    """One transaction Bundle of ``entries`` (de-duplicated by ``fullUrl``, last one wins)."""
    seen: dict[str, dict[str, Any]] = {}
    for e in entries:
        seen[e["fullUrl"]] = e
    items = list(seen.values())
    if sort:
        items.sort(key=sort_key)
    return {"resourceType": "Bundle", "type": "transaction", "entry": items}


def chunked(entries: Iterable[dict[str, Any]], size: int = DEFAULT_CHUNK_SIZE) -> Iterator[list[dict[str, Any]]]:
    """Split entries into lists of at most ``size`` (order kept; streaming, bounded memory)."""
    if size < 1:
        raise MappingError(f"chunk size must be >= 1 (got {size})")
    buf: list[dict[str, Any]] = []
    for e in entries:
        buf.append(e)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def resources_of(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources of a Bundle's entries."""
    return [e["resource"] for e in bundle.get("entry", []) if "resource" in e]
