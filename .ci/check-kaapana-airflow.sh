#!/usr/bin/env bash
# DAG files of the DAG-image layout parse on Kaapana 0.6.0's Airflow package set: Python 3.12 (pyenv 3.12.1),
# apache-airflow[cncf.kubernetes]==2.11.0 with the pins of Kaapana's Airflow image (minio 7.2.10, pydicom 3.0.1,
# pandas 2.2.3, requests, jsonschema; no boto3, no apache-airflow-providers-standard), the contract harness
# standing in for Kaapana's plugin (tests/unit/kaapana/test_kaapana_airflow.py).
# The venv is cached in ~/.cache/kaapana-fhir/kaapana-airflow-2.11.0-py3.12 (rebuilt when its pins change):
# cold about 7 min on a loaded 2-core machine (pip resolving Airflow 2.11), warm about 15 s. Because of the cold
# time it is a separate script, not a step of .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
KAAPANA_FHIR_KAAPANA_AIRFLOW=1 .venv/bin/python -m pytest tests/unit/kaapana/test_kaapana_airflow.py -q \
  -p no:cacheprovider
echo "== Kaapana Airflow parse check took $(( $(date +%s) - t0 ))s"
