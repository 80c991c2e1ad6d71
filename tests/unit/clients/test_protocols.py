"""Our clients implement the Protocols the flows are typed with (mypy checks the signatures; this checks at run
time that every member exists, so a renamed method fails here before it fails in a flow)."""

from __future__ import annotations

from kaapana_fhir.clients.dicomweb import DicomWeb
from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.clients.protocols import DicomWebApi, FhirApi, ObjectStoreApi
from kaapana_fhir.clients.s3 import ObjectStore
from kaapana_fhir.flows.dicom_to_fhir.flow import _Pacs


def test_fhir_client_is_a_fhir_api() -> None:
    assert isinstance(FhirClient("http://127.0.0.1:9/fhir"), FhirApi)


def test_dicomweb_and_the_request_counter_are_dicomweb_apis() -> None:
    dw = DicomWeb("http://127.0.0.1:9/dicom-web")
    assert isinstance(dw, DicomWebApi)
    assert isinstance(_Pacs(dw), DicomWebApi)


def test_object_store_is_an_object_store_api() -> None:
    assert isinstance(ObjectStore("http://127.0.0.1:9", "key", "secret-value"), ObjectStoreApi)


def test_a_partial_fake_is_not_accepted() -> None:
    class OnlySearch:
        base_url = "http://x/fhir"

        def search(self) -> None: ...

    assert not isinstance(OnlySearch(), FhirApi)
