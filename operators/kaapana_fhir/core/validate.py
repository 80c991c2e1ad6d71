"""Validation of what we write, with the FHIR R4 models of ``fhir.resources.R4B``.

R4B is the closest model set to R4 (4.0.1) in fhir.resources; the elements we use are identical.
Validation costs ~50x a ``json.dumps``: validate every resource in tests and per kind in hot paths.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Any

from kaapana_fhir.exceptions import MappingError


@lru_cache(maxsize=64)
def _model(resource_type: str) -> Any:
    try:
        module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    except ModuleNotFoundError as exc:
        raise MappingError(f"unknown FHIR resource type {resource_type!r}") from exc
    return getattr(module, resource_type)


def validate_resource(resource: dict[str, Any]) -> None:
    """Raise :class:`MappingError` naming the resource and the failing element if invalid."""
    rtype = resource.get("resourceType")
    if not rtype:
        raise MappingError("resource has no resourceType")
    try:
        _model(rtype).model_validate(resource)
    except MappingError:
        raise
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise MappingError(f"{rtype}/{resource.get('id', '?')} is not valid FHIR R4: {exc}") from exc


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Validate the Bundle shell and every entry resource."""
    for entry in bundle.get("entry", []):
        if "resource" in entry:
            validate_resource(entry["resource"])
    shell = dict(bundle)
    shell["entry"] = [{k: v for k, v in e.items() if k != "resource"} for e in bundle.get("entry", [])]
    validate_resource(shell)
