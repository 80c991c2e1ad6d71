"""Server faults through the real flows (issue #15): the ``kaapana-fhir`` CLI (import-table, dicom-to-fhir,
radiomics-to-fhir, cohort) against the real HAPI behind the fault proxy. A gateway answering 200 with an
OperationOutcome or an HTML page → exit code != 0, no counts printed, nothing on the server; an answer cut off
after HAPI committed → the flow re-reads, finishes, and the data is there exactly once; a ``next`` link to another
origin → the cohort flow fails and the other origin receives nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.clients.dicomweb import DicomWeb
from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM, patient_id, stable_id
from kaapana_fhir.exceptions import ResourceNotFound
from tests.reliability import outcomes
from tests.reliability.helpers import LONG_MAPPING, long_csv, store_studies
from tests.support.fault_proxy import FaultPlan, FaultProxy, RecordingServer

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
GUARDS = "lost"

REPO = Path(__file__).resolve().parents[2]
FEATURES = {"original_firstorder_Mean": 41.5, "original_firstorder_Maximum": 230.0, "original_shape_Elongation": 0.75,
            "diagnostics_Mask-original_VoxelNum": 812, "Label": 1}


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FHIR_BASE_URL",)}
    return subprocess.run([sys.executable, "-m", "kaapana_fhir.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def _summary(stdout: str) -> dict[str, Any] | None:
    for line in stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    return None


def _exists(fhir: FhirClient, rtype: str, rid: str) -> bool:
    try:
        fhir.read(rtype, rid)
        return True
    except ResourceNotFound:
        return False


def _flows(tmp_path: Path, dicomweb_url: str, dicomweb: DicomWeb, tag: str) -> dict[str, Any]:
    """Inputs of the three writing flows, and the resource each must (not) have written."""
    csv_file, mapping = tmp_path / f"t{tag}.csv", tmp_path / "m.yaml"
    csv_file.write_bytes(long_csv(tag, 30))
    mapping.write_text(LONG_MAPPING)
    study = store_studies(dicomweb, tag, 1)[0]
    result = tmp_path / f"r{tag}.json"
    result.write_text(json.dumps(FEATURES))
    seg_series = f"2.25.{uuid.uuid4().int}"
    return {
        "import-table": (["import-table", str(csv_file), "--mapping", str(mapping)],
                         ("Patient", patient_id(DEFAULT_PATIENT_SYSTEM, f"R{tag}-0"))),
        "dicom-to-fhir": (["dicom-to-fhir", "--dicomweb", dicomweb_url, "--study", study["study"]],
                          ("ImagingStudy", stable_id("ImagingStudy", study["study"]))),
        "radiomics-to-fhir": (["radiomics-to-fhir", str(result), "--study", f"2.25.{uuid.uuid4().int}",
                               "--seg-series", seg_series, "--patient-id", f"RAD-{tag}"],
                              ("Patient", patient_id(None, f"RAD-{tag}"))),
    }


def _each_flow_through_proxy(flows: dict[str, Any], fhir_url: str, **plan: Any,
                             ) -> Iterator[tuple[str, subprocess.CompletedProcess[str], FaultProxy, tuple[str, str]]]:
    """Each flow's CLI run once, through a fault proxy of its own with a fresh ``FaultPlan(**plan)``: (flow name,
    the run, the proxy, the resource the flow writes)."""
    for name, (args, target) in flows.items():
        with FaultProxy(fhir_url, FaultPlan(**plan)) as proxy:
            res = cli(*args, "--fhir", proxy.url)
        yield name, res, proxy, target


@pytest.mark.parametrize("mode", ["outcome200", "html200"])
def test_gateway_200_that_stored_nothing_fails_every_flow(tmp_path: Path, fhir_url: str, dicomweb_url: str,
                                                          dicomweb: DicomWeb, fhir: FhirClient, mode: str) -> None:
    tag = uuid.uuid4().hex[:8]
    flows = _flows(tmp_path, dicomweb_url, dicomweb, tag)
    for name, res, proxy, (rtype, rid) in _each_flow_through_proxy(flows, fhir_url, mode=mode,
                                                                    only_methods=("POST", "PUT")):
        assert proxy.plan.mode_applied >= 1, name
        assert res.returncode != 0, f"{name}: exit 0 although nothing was stored\n{res.stdout}\n{res.stderr[-2000:]}"
        assert _summary(res.stdout) is None, f"{name} printed counts: {res.stdout}"
        assert proxy.origin in res.stderr and ("text/html" if mode == "html200" else "OperationOutcome") in res.stderr
        assert "Traceback" not in res.stderr, res.stderr[-3000:]
        assert not _exists(fhir, rtype, rid), f"{name}: {rtype}/{rid} is on the server"
        outcomes.record("input")
        outcomes.record("clear_error")


@pytest.mark.parametrize("mode", ["truncate", "drop_after_send"])
def test_answer_lost_after_commit_every_flow_completes_once(tmp_path: Path, fhir_url: str, dicomweb_url: str,
                                                            dicomweb: DicomWeb, fhir: FhirClient, mode: str) -> None:
    tag = uuid.uuid4().hex[:8]
    flows = _flows(tmp_path, dicomweb_url, dicomweb, tag)
    for name, res, proxy, (rtype, rid) in _each_flow_through_proxy(flows, fhir_url, mode=mode, only_methods=("POST",),
                                                                    times=1, body_contains=b'"method":"PUT"'):
        assert proxy.plan.mode_applied == 1, name
        assert res.returncode == 0, f"{name}: {res.stderr[-3000:]}"
        assert "re-read shows all" in res.stderr, res.stderr[-2000:]
        assert fhir.read(rtype, rid)["meta"]["versionId"] == "1", name  # stored once, not written twice
        outcomes.record("input")
        outcomes.record("recovered")
    assert fhir.count("Observation", {"subject": f"Patient/{patient_id(DEFAULT_PATIENT_SYSTEM, f'R{tag}-0')}"}) == 10


@outcomes.guards("leak")
def test_cohort_next_link_to_another_origin_fails_and_sends_nothing_there(tmp_path: Path, fhir_url: str,
                                                                          fhir: FhirClient) -> None:
    tag = uuid.uuid4().hex[:8]
    pids = [stable_id("Patient", "rel-next", tag, str(i)) for i in range(3)]
    for pid in pids:
        fhir.update({"resourceType": "Patient", "id": pid, "gender": "male"})
    with RecordingServer() as foreign, FaultProxy(
            fhir_url, FaultPlan(mode="cross_origin_next", only_methods=("GET",), foreign_origin=foreign.origin)
    ) as proxy:
        res = cli("cohort", "--fhir", proxy.url, "--patients", f"Patient?_id={','.join(pids)}&_count=1",
                  "--out", str(tmp_path / "c" / "cohort.csv"))
    assert res.returncode != 0 and "another origin" in res.stderr, res.stderr[-2000:]
    assert foreign.received == []
    outcomes.record("clear_error")
