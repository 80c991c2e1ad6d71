#!/usr/bin/env bash
# Python environment: a venv with Airflow 2.11, the package (editable) and test tools.
# pyradiomics 3.0.1 has no wheels and its sdist imports numpy in setup.py: build it without
# isolation after numpy/versioneer are present (see shared reference install-recipes.md).
set -euo pipefail
VENV="${1:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
stamp="$VENV/.kaapana-fhir-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && "$VENV/bin/python" -c "import radiomics, kaapana_fhir, airflow" 2>/dev/null; then
  echo "== python environment up to date"; exit 0
fi
echo "== pip install (venv $VENV)"
"$PIP" install -q --upgrade "pip>=24" >/dev/null
"$PIP" install -q "numpy==2.4.6" "wheel==0.48.0" "setuptools>=77" "versioneer==0.29" "SimpleITK==2.5.7" "PyWavelets>=1.6" "pykwalify>=1.8" "six>=1.16"
"$VENV/bin/python" -c "import radiomics" 2>/dev/null || "$PIP" install -q --no-build-isolation "pyradiomics==3.0.1"
"$PIP" install -q -e ".[airflow,radiomics,test]"
touch "$stamp"
