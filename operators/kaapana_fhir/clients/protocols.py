"""What the flows need from each server, as typed Protocols.

Flows take these, not the concrete classes, so a flow signature says which operations it uses, tests can pass a
small fake that mypy checks, and a second implementation (another FHIR client, a folder of DICOM files) fits
without touching the flow. :class:`~kaapana_fhir.clients.fhir.FhirClient`,
:class:`~kaapana_fhir.clients.dicomweb.DicomWeb` and :class:`~kaapana_fhir.clients.s3.ObjectStore` implement them;
``tests/unit/clients/test_protocols.py`` and mypy (the ``_conforms`` functions below) check that they do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import os
    from pathlib import Path

    import requests

    from kaapana_fhir.clients.dicomweb import DicomWeb
    from kaapana_fhir.clients.fhir import FhirClient, FhirClientStats, WriteResult
    from kaapana_fhir.clients.s3 import ObjectInfo, ObjectStore

SearchParams = Mapping[str, Any] | Sequence[tuple[str, Any]] | None


@runtime_checkable
class FhirApi(Protocol):
    """A FHIR R4 server: reads, searches and checked writes (every write is verified against the answer)."""

    base_url: str
    stats: FhirClientStats

    def request(self, method: str, path: str, *, params: SearchParams = None, json_body: Any = None,
                headers: Mapping[str, str] | None = None, ok: Iterable[int] = (200, 201)) -> requests.Response: ...

    def read_with_etag(self, resource_type: str, resource_id: str) -> tuple[dict[str, Any], str | None]: ...

    def search(self, resource_type: str | None, params: SearchParams = None, *,
               include_mode: str = "match") -> Iterator[dict[str, Any]]: ...

    def search_pages(self, resource_type: str | None, params: SearchParams = None) -> Iterator[dict[str, Any]]: ...

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]: ...

    def write_entries(self, entries: Iterable[dict[str, Any]], *, chunk_size: int = ...,
                      progress: Any = None) -> WriteResult: ...


@runtime_checkable
class DicomWebApi(Protocol):
    """A PACS over DICOMweb: QIDO-RS searches and WADO-RS metadata/instances."""

    url: str

    @property
    def wado_rs_base(self) -> str: ...

    def search_studies(self, filters: dict[str, Any] | None = None, *,
                       fields: Sequence[str] = ()) -> list[dict[str, Any]]: ...

    def search_series(self, study_uid: str | None = None, filters: dict[str, Any] | None = None, *,
                      fields: Sequence[str] = ...) -> list[dict[str, Any]]: ...

    def search_instances(self, study_uid: str, series_uid: str, *,
                         fields: Sequence[str] = ()) -> list[dict[str, Any]]: ...

    def find_series(self, series_uid: str) -> dict[str, Any] | None: ...

    def instance_metadata(self, study_uid: str, series_uid: str, sop_uid: str) -> dict[str, Any] | None: ...

    def series_metadata(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]: ...

    def retrieve_series(self, study_uid: str, series_uid: str) -> list[Any]: ...


@runtime_checkable
class ObjectStoreApi(Protocol):
    """An S3-compatible object store (MinIO in Kaapana) with keys checked before use."""

    def ensure_bucket(self, bucket: str) -> None: ...

    def put_bytes(self, bucket: str, key: str, data: bytes,
                  content_type: str = "application/octet-stream") -> str: ...

    def put_file(self, bucket: str, key: str, path: str | os.PathLike[str]) -> str: ...

    def get_bytes(self, bucket: str, key: str) -> bytes: ...

    def get_file(self, bucket: str, key: str, path: str | os.PathLike[str]) -> Path: ...

    def head(self, bucket: str, key: str) -> ObjectInfo | None: ...

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]: ...


if TYPE_CHECKING:  # mypy proves that our clients implement the Protocols

    def _conforms_fhir(c: FhirClient) -> FhirApi:
        return c

    def _conforms_dicomweb(c: DicomWeb) -> DicomWebApi:
        return c

    def _conforms_store(c: ObjectStore) -> ObjectStoreApi:
        return c
