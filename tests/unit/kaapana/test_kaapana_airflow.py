"""The DAG-image layout parses on Kaapana 0.6.0's Airflow package set (issue 21 failure 5).

A separate cached venv (tests/support/kaapana_contract/airflow_venv.py): Python 3.12, apache-airflow 2.11.0
[cncf.kubernetes] and the pins of Kaapana's Airflow image (minio 7.2.10, pydicom 3.0.1, pandas 2.2.3,
requests, jsonschema, ...), NO boto3, NO apache-airflow-providers-standard, none of the flows' libraries
(fhir.resources, pyradiomics, highdicom, dicomweb-client, pyarrow). The contract harness stands in for
Kaapana's plugin. Building the venv takes minutes, so it is built by ``bash .ci/check-kaapana-airflow.sh``
(or with ``KAAPANA_FHIR_KAAPANA_AIRFLOW=1``); without it this test skips (fails in CI with that flag set).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.kaapana_contract import airflow_venv
from tests.unit.kaapana.test_packaging_dag_image import extension, image_root, probe

__all__ = ["extension", "image_root"]  # module fixtures shared with the DAG-image tests

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def kaapana_python() -> str:
    venv = airflow_venv.cache_dir() / "kaapana-airflow-2.11.0-py3.12" / "bin" / "python"
    if os.environ.get("KAAPANA_FHIR_KAAPANA_AIRFLOW") == "1":
        return str(airflow_venv.venv_python()[0])
    if not venv.is_file():
        pytest.skip("no Kaapana Airflow venv: run bash .ci/check-kaapana-airflow.sh")
    return str(airflow_venv.venv_python()[0])


def test_dag_image_parses_on_kaapanas_airflow(kaapana_python: str, image_root: Path, tmp_path: Path) -> None:
    bag = probe(image_root, tmp_path, python=kaapana_python)
    assert bag["import_errors"] == {}
    assert set(bag["dags"]) >= {"dicom-to-fhir", "fhir-table-import", "radiomics-to-fhir", "fhir-cohort"}
    flows = {t["env_vars"]["KAAPANA_FHIR_TASK"] for d in bag["dags"].values() for t in d["tasks"].values()
             if t["env_vars"] and "KAAPANA_FHIR_TASK" in t["env_vars"]}
    assert flows == {"dicom-to-fhir", "import-table", "radiomics", "cohort"}
    for name in ("boto3", "radiomics", "fhir", "highdicom", "dicomweb_client", "pyarrow"):
        assert name not in bag["loaded_modules"], f"{name} is imported at DAG parse time"
