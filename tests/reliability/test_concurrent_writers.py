"""dicom-to-fhir and radiomics-to-fhir on one new study at the same time (issue #15), as Kaapana triggers them on
an incoming SEG series. The interleavings are forced, not left to luck: each writer talks to HAPI through its
own fault proxy whose ``before_forward`` hook holds its first write until the other writer has reached a given
point. Every round: the final ImagingStudy has all series from the PACS, the Patient keeps name and birth date,
and the radiomics group Observation is there once."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.clients.dicomweb import DicomWeb
from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM, patient_id, stable_id
from kaapana_fhir.flows.dicom_to_fhir.flow import sync_studies
from kaapana_fhir.flows.radiomics.flow import run_from_result_file, write_run
from tests.reliability import outcomes
from tests.reliability.helpers import store_studies
from tests.support.fault_proxy import FaultPlan, FaultProxy

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
GUARDS = "lost"

ROUNDS = 4
FEATURES = {"original_firstorder_Mean": 41.5, "original_firstorder_Maximum": 230.0, "Label": 1,
            "diagnostics_Mask-original_VoxelNum": 812}


class Gate:
    """Holds a proxy's first POST (a write) until ``release`` is set; tells when that POST arrived."""

    def __init__(self, release: threading.Event) -> None:
        self.arrived = threading.Event()
        self.release = release
        self.first = True
        self.lock = threading.Lock()

    def __call__(self, method: str, path: str, body: bytes | None) -> None:
        if method != "POST":
            return
        with self.lock:
            first, self.first = self.first, False
        if first:
            self.arrived.set()
            assert self.release.wait(120), "the other writer never got there"


def _round(fhir_url: str, dicomweb_url: str, dicomweb: DicomWeb, tmp_path: Path, order: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    st = store_studies(dicomweb, tag, 1, series_per_study=2)[0]
    result = tmp_path / f"{tag}.json"
    result.write_text(json.dumps(FEATURES))
    run, _, _ = run_from_result_file(result, study_uid=st["study"], seg_series_uid=f"2.25.{uuid.uuid4().int}",
                                     patient_value=st["patient"], image_series_uid=st["series"][0])
    dicom_done, rad_done = threading.Event(), threading.Event()
    free = threading.Event()
    free.set()
    # "rad-first-read": radiomics reads (absent), DICOM writes everything, then radiomics writes its stubs
    # "dicom-first-read": DICOM reads (absent), radiomics writes everything, then DICOM writes
    # "together": both released at once by a barrier
    rad_gate = Gate(dicom_done if order == "rad-first-read" else free)
    dicom_gate = Gate(rad_done if order == "dicom-first-read" else free)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def writer(write: Callable[[], object], done: threading.Event) -> Callable[[threading.Event | None], None]:
        """A writer thread's body: waits for ``wait_for`` (or the barrier), runs ``write``, sets ``done``."""
        def job(wait_for: threading.Event | None) -> None:
            try:
                if wait_for is not None:
                    assert wait_for.wait(120)
                if order == "together":
                    barrier.wait(30)
                write()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                errors.append(exc)
            finally:
                done.set()
        return job

    with FaultProxy(fhir_url, FaultPlan(before_forward=dicom_gate)) as dproxy, \
            FaultProxy(fhir_url, FaultPlan(before_forward=rad_gate)) as rproxy:
        dicom_job = writer(lambda: sync_studies(DicomWeb(dicomweb_url), FhirClient(dproxy.url),
                                                study_uids=[st["study"]]), dicom_done)
        rad_job = writer(lambda: write_run(FhirClient(rproxy.url), run), rad_done)
        starts: dict[str, Callable[[], None]] = {
            "rad-first-read": lambda: (threading.Thread(target=rad_job, args=(None,)).start(),
                                       threading.Thread(target=dicom_job, args=(rad_gate.arrived,)).start()),
            "dicom-first-read": lambda: (threading.Thread(target=dicom_job, args=(None,)).start(),
                                         threading.Thread(target=rad_job, args=(dicom_gate.arrived,)).start()),
            "together": lambda: (threading.Thread(target=dicom_job, args=(None,)).start(),
                                 threading.Thread(target=rad_job, args=(None,)).start()),
        }
        starts[order]()
        assert dicom_done.wait(300) and rad_done.wait(300)
    assert not errors, errors
    return {"study": st, "run": run}


@pytest.mark.parametrize("order", ["rad-first-read", "dicom-first-read", "together"])
def test_dicom_and_radiomics_on_one_new_study(fhir_url: str, dicomweb_url: str, dicomweb: DicomWeb,
                                              fhir: FhirClient, tmp_path: Path, order: str) -> None:
    for _ in range(ROUNDS):
        got = _round(fhir_url, dicomweb_url, dicomweb, tmp_path, order)
        st = got["study"]
        pid = patient_id(DEFAULT_PATIENT_SYSTEM, st["patient"])
        patient = fhir.read("Patient", pid)
        assert patient.get("name") and patient.get("birthDate") == "1960-01-01", (order, patient)
        study = fhir.read("ImagingStudy", stable_id("ImagingStudy", st["study"]))
        assert {s["uid"] for s in study.get("series", [])} >= set(st["series"]), (order, study)
        assert study.get("numberOfSeries") == len(study["series"]), (order, study)
        groups = list(fhir.search("Observation", {"subject": f"Patient/{pid}", "code": "radiomics-feature-set"}))
        assert len(groups) == 1 and len(groups[0]["hasMember"]) == 2, (order, groups)
        outcomes.record("input")
