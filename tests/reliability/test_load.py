"""Load (issue #11), at CI sizes: a DICOM backfill and a table import against the real servers, memory that
does not grow with the table size, and the DAG's fan-out bounding one task's work. The full sizes (1,000
studies, 100k rows) with peak RSS per size are in ``tests/bench/bench_reliability.py``."""

from __future__ import annotations

import time
import tracemalloc
import uuid
from pathlib import Path

import pytest

from kaapana_fhir.clients.dicomweb import DicomWeb
from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM, patient_id, stable_id
from kaapana_fhir.core.tables import open_table
from kaapana_fhir.flows.dicom_to_fhir.flow import sync_studies
from kaapana_fhir.flows.tables.flow import import_table
from tests.reliability.helpers import SinkFhir, long_csv, long_mapping, store_studies

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

CI_STUDIES, CI_ROWS = 100, 2000
REPO = Path(__file__).resolve().parents[2]


def test_backfill_of_many_studies(dicomweb: DicomWeb, fhir: FhirClient) -> None:
    tag = uuid.uuid4().hex[:8]
    studies = store_studies(dicomweb, tag, CI_STUDIES, series_per_study=1)
    uids = [s["study"] for s in studies]
    t0 = time.perf_counter()
    res = sync_studies(dicomweb, fhir, study_uids=uids)
    seconds = time.perf_counter() - t0
    assert res.studies == CI_STUDIES and not res.failed
    assert seconds < 120
    ids = [stable_id("ImagingStudy", u) for u in uids]
    assert sum(fhir.count("ImagingStudy", {"_id": ",".join(ids[i:i + 50])}) for i in range(0, len(ids), 50)) == len(ids)
    pids = [patient_id(DEFAULT_PATIENT_SYSTEM, s["patient"]) for s in studies]
    assert sum(fhir.count("Patient", {"_id": ",".join(pids[i:i + 50])}) for i in range(0, len(pids), 50)) == len(pids)


def test_import_of_many_rows(fhir: FhirClient) -> None:
    tag = uuid.uuid4().hex[:8]
    mapping = long_mapping()
    t0 = time.perf_counter()
    rep = import_table(open_table(long_csv(tag, CI_ROWS), name="load.csv"), mapping, client=fhir, chunk_size=500)
    assert time.perf_counter() - t0 < 120
    assert rep.resources_written == {"Patient": CI_ROWS // 10, "Observation": CI_ROWS}
    assert rep.chunks == -(-(CI_ROWS + CI_ROWS // 10) // 500)
    pids = [patient_id(DEFAULT_PATIENT_SYSTEM, f"R{tag}-{i}") for i in range(0, CI_ROWS // 10, 97)]
    for pid in pids:
        assert fhir.count("Observation", {"subject": f"Patient/{pid}"}) == 10


def _peak_import_bytes(rows: int) -> tuple[int, int]:
    mapping = long_mapping()
    data = long_csv("m", rows)
    sink = SinkFhir()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        import_table(open_table(data, name="mem.csv"), mapping, client=sink, chunk_size=500)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, sink.entries


def test_import_memory_does_not_grow_with_rows() -> None:
    """Python allocations of an import (input bytes excluded) for 2k vs 20k rows: streaming, not buffering."""
    _peak_import_bytes(200)  # warm-up: lazy imports and validation models are loaded once
    small, n_small = _peak_import_bytes(2_000)
    large, n_large = _peak_import_bytes(20_000)
    assert (n_small, n_large) == (2_200, 22_000)
    # 10x the rows: the per-patient index grows a little (a few bytes per patient), the rest is constant
    assert large < small * 2 + 1_000_000, (small, large)


def test_dicom_dag_fan_out_bounds_work_per_task(airflow_home: Path, stack_env: dict[str, str],
                                                monkeypatch: pytest.MonkeyPatch, dicomweb: DicomWeb) -> None:
    from airflow.models import DagBag

    from kaapana_fhir.dev import airflow_runner as airflow_runner

    for k, v in stack_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("KAAPANA_FHIR_RUNTIME", "airflow")
    bag = DagBag(dag_folder=str(REPO / "dags" / "dag_dicom_to_fhir.py"), include_examples=False)
    dag = bag.get_dag("dicom-to-fhir")
    mapped = dag.get_task("dicom-to-fhir")
    assert mapped.expand_input.value.keys() == {"study_instance_uids"}  # one mapped task instance per study
    assert mapped.partial_kwargs.get("max_active_tis_per_dag") == 4  # bounded parallelism per DAG
    assert dag.default_args["retries"] >= 1  # a failed study is retried by Airflow, alone
    assert dag.max_active_runs <= 16

    tag = uuid.uuid4().hex[:8]
    studies = store_studies(dicomweb, tag, 12, series_per_study=1)
    res = airflow_runner.run_dag("dicom-to-fhir", {"series_uids": [s["series"][0] for s in studies]})
    per_task = {k: v for k, v in res.xcoms.items() if k.startswith("dicom-to-fhir[")}
    assert len(per_task) == 12
    assert all(v["studies"] == 1 and len(v["study_uids"]) == 1 for v in per_task.values())
    assert res.xcoms["summary"]["studies"] == 12
