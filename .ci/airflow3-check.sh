#!/usr/bin/env bash
# Airflow 3 leg: a separate venv with the newest apache-airflow 3.x pip resolves (+ providers-standard),
# the package installed without deps (plus its runtime deps), then tests/airflow3/ (DagBag + dag.test()).
# Usage: bash .ci/airflow3-check.sh [venv-dir]   (default $AF3_VENV or /tmp/kaapana-fhir-venv-af3; reused when up to date)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-${AF3_VENV:-/tmp/kaapana-fhir-venv-af3}}"
t0=$(date +%s)
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
stamp="$VENV/.af3-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$PIP" install -q --upgrade "pip>=24" >/dev/null
  # Newest Airflow 3.x; the runtime deps of the package come from pyproject.toml (read with tomllib).
  deps=$("$VENV/bin/python" - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as fh:
    meta = tomllib.load(fh)["project"]
print("\n".join(meta["dependencies"]))
PY
)
  mapfile -t deparr <<<"$deps"
  "$PIP" install -q "apache-airflow==3.3.2" "apache-airflow-providers-standard==1.21.0" "apache-airflow-providers-common-compat" \
    "pytest==9.2.0" "pytest-timeout==2.4.0" "${deparr[@]}"
  "$PIP" install -q --no-deps -e .
  touch "$stamp"
fi
echo "== $("$VENV/bin/python" -c 'import airflow; print("apache-airflow", airflow.__version__)') (install $(( $(date +%s) - t0 ))s)"
export AIRFLOW_HOME="$(mktemp -d /tmp/af3-home-XXXXXX)"
export AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__CORE__DAGS_FOLDER="$PWD/dags"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export KAAPANA_FHIR_TEST_AIRFLOW_HOME="$AIRFLOW_HOME"
"$VENV/bin/airflow" db migrate >/dev/null
"$VENV/bin/python" -m pytest tests/airflow3 -q -p no:cacheprovider -o addopts="" --confcutdir=tests/airflow3
echo "== airflow3 check took $(( $(date +%s) - t0 ))s"
