"""kill -9 of the radiomics-to-fhir CLI in the middle of its write (issue #15). The proxy holds the second chunk
of feature Observations, the test SIGKILLs the CLI while it waits for that answer (the chunk is never
forwarded). Then: the first chunk is on the server (the check is not vacuous), no group Observation is, and the
cohort does not present the partial feature set; a re-run completes with no duplicate, and the cohort shows all
features."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM, patient_id
from kaapana_fhir.flows.cohort.flow import build_cohort
from tests.reliability import outcomes
from tests.support.fault_proxy import FaultPlan, FaultProxy

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
GUARDS = "lost"

REPO = Path(__file__).resolve().parents[2]
N_FEATURES = 400  # per segment; 3 segments → 1,200 feature Observations → 3 chunks of 500 (+ groups last)


def _result(path: Path) -> None:
    names = [f"original_firstorder_F{i}" for i in range(N_FEATURES)]
    rows = ["Image,Mask,Label,diagnostics_Mask-original_VoxelNum," + ",".join(names)]
    for label in (1, 2, 3):
        rows.append(f"ct.nrrd,seg--{label}--s{label}.nrrd,{label},100," + ",".join(f"{label}.{i}" for i in
                                                                                  range(N_FEATURES)))
    path.write_text("\n".join(rows) + "\n")


def _cmd(result: Path, study: str, pid_value: str, fhir: str) -> list[str]:
    return [sys.executable, "-m", "kaapana_fhir.cli.main", "radiomics-to-fhir", str(result), "--study", study,
            "--seg-series", f"{study}.8", "--seg-sop", f"{study}.9", "--patient-id", pid_value, "--fhir", fhir]


def _features_in_cohort(fhir: FhirClient, pid: str) -> int:
    built = build_cohort(fhir, patient_search=f"Patient?_id={pid}")
    return len(built.cohort.radiomics_long)


def test_kill_9_mid_radiomics_write_then_rerun(fhir_url: str, fhir: FhirClient, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    result = tmp_path / "batch.csv"
    _result(result)
    study = f"2.25.{uuid.uuid4().int % 10**30}"
    pid_value = f"KILL-{tag}"
    pid = patient_id(DEFAULT_PATIENT_SYSTEM, pid_value)
    held, release = threading.Event(), threading.Event()
    posts = {"n": 0}
    lock = threading.Lock()

    def hold_second_chunk(method: str, path: str, body: bytes | None) -> str | None:
        if method != "POST":
            return None
        with lock:
            posts["n"] += 1
            n = posts["n"]
        if n == 3:  # 1: Patient/ImagingStudy stubs, 2: first feature chunk, 3: second chunk → held, never sent
            held.set()
            release.wait(120)
            return "drop"
        return None

    args = _cmd(result, study, pid_value, "")
    with FaultProxy(fhir_url, FaultPlan(before_forward=hold_second_chunk)) as proxy:
        args[-1] = proxy.url
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert held.wait(180), "the CLI never reached its second chunk"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            release.set()
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL

    observations = fhir.count("Observation", {"subject": f"Patient/{pid}"})
    groups = fhir.count("Observation", {"subject": f"Patient/{pid}", "code": "radiomics-feature-set"})
    # exactly the first chunk: 500 entries = Device + 3 BodyStructures + 496 feature Observations; no group
    assert observations == 500 - 4 and groups == 0, (observations, groups)
    assert _features_in_cohort(fhir, pid) == 0  # the partial feature set is not presented

    rerun = subprocess.run(_cmd(result, study, pid_value, fhir_url), cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert fhir.count("Observation", {"subject": f"Patient/{pid}"}) == 3 * N_FEATURES + 3  # no duplicates
    assert fhir.count("Observation", {"subject": f"Patient/{pid}", "code": "radiomics-feature-set"}) == 3
    assert _features_in_cohort(fhir, pid) == 3 * N_FEATURES
    outcomes.record("input")
    outcomes.record("recovered")
