"""Typed errors of kaapana_fhir. Messages name the file, row, column or DICOM tag and the rule."""

from __future__ import annotations

from typing import Any


class KaapanaFhirError(Exception):
    """Base class of every error this package raises on purpose."""


class MappingError(KaapanaFhirError, ValueError):
    """Input data cannot be mapped (names the source location and the rule)."""


class ConfigError(KaapanaFhirError, ValueError):
    """A mapping, settings file, connection or CLI option is invalid."""


class FhirServerError(KaapanaFhirError):
    """The FHIR server answered with an error status.

    Attributes
    ----------
    status_code: HTTP status (0 when the server could not be reached).
    url: the request URL (never contains credentials).
    outcome: the server's OperationOutcome as a dict, when it sent one.
    """

    def __init__(self, message: str, *, status_code: int = 0, url: str = "",
                 outcome: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.url = url
        self.outcome = outcome

    @property
    def diagnostics(self) -> str:
        """All issue texts of the OperationOutcome, joined by '; '."""
        if not self.outcome:
            return ""
        parts = []
        for issue in self.outcome.get("issue", []):
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
            loc = ",".join(issue.get("expression", []) or issue.get("location", []) or [])
            parts.append(f"{issue.get('severity', '?')}: {text}" + (f" at {loc}" if loc else ""))
        return "; ".join(parts)


class FhirConnectionError(FhirServerError):
    """The FHIR server could not be reached (refused, DNS, timeout)."""


class ResourceNotFound(FhirServerError):
    """404 / 410."""


class PreconditionFailed(FhirServerError):
    """412: version conflict (If-Match) or multiple matches of a conditional operation."""


class DicomWebError(KaapanaFhirError):
    """The DICOMweb server failed or could not be reached."""


class ObjectStoreError(KaapanaFhirError):
    """The S3 / MinIO object store failed or an object is missing."""


class BucketNotFound(ObjectStoreError):
    """The bucket does not exist (a Kaapana project's bucket is ``project-<name>``, created with the project)."""
