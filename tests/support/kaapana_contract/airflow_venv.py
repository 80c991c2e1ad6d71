"""A venv with Kaapana 0.6.0's Airflow package set (cached), for DAG-parse checks of the DAG-image layout.

Facts (Kaapana tag 0.6.0): ``services/flow/airflow/docker/Dockerfile`` builds on ``local-only/base-python-cpu``
(Python 3.12; its ``files/requirements.txt`` pins pydicom 3.0.1, minio 7.2.10, pandas 2.2.3, requests 2.32.3,
jsonschema 4.23.0, SimpleITK 2.4.0, plotly 5.24.1, ...) and installs ``apache-airflow[cncf.kubernetes]==2.11.0``
with its ``constraints-3.12.txt`` (SQLAlchemy 1.4.54, Flask 2.2.5, pydantic 2.9.2, kubernetes 30.1.0,
apache-airflow-providers-common-compat 1.2.1, PyYAML 6.0.2), then ``kubernetes==30.1.0`` and ``task-api``.
No boto3 and no ``apache-airflow-providers-standard`` are installed.

``task-api`` comes from Kaapana's git (not reachable here); the harness plugin does not import it.
Cache: ``~/.cache/kaapana-fhir/kaapana-airflow-2.11.0-py3.12`` (rebuilt when :data:`PACKAGES` change).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

PYTHON312 = Path(os.environ.get("PYTHON312", str(Path.home() / ".pyenv" / "versions" / "3.12.1" / "bin" / "python")))
PACKAGES = (
    "apache-airflow[cncf.kubernetes]==2.11.0",
    "SQLAlchemy==1.4.54",
    "Flask==2.2.5",
    "pydantic==2.9.2",
    "kubernetes==30.1.0",
    "apache-airflow-providers-common-compat==1.2.1",
    "PyYAML==6.0.2",
    # base-python-cpu
    "pydicom==3.0.1",
    "minio==7.2.10",
    "pandas==2.2.3",
    "requests==2.32.3",
    "jsonschema==4.23.0",
    "SimpleITK==2.4.0",
    "plotly==5.24.1",
)
#: must NOT be importable there
ABSENT = ("boto3", "airflow.providers.standard")


def cache_dir() -> Path:
    return Path(os.environ.get("KAAPANA_FHIR_CACHE", str(Path.home() / ".cache" / "kaapana-fhir")))


def venv_python() -> tuple[Path, float]:
    """The venv's python (created or reused) and the seconds spent creating it (0 when cached)."""
    key = hashlib.sha256("\n".join(PACKAGES).encode()).hexdigest()[:12]
    venv = cache_dir() / "kaapana-airflow-2.11.0-py3.12"
    stamp = venv / f".installed-{key}"
    py = venv / "bin" / "python"
    if stamp.is_file() and py.is_file():
        return py, 0.0
    if not PYTHON312.is_file():
        raise FileNotFoundError(f"Python 3.12 not found at {PYTHON312} (set PYTHON312)")
    t0 = time.monotonic()
    subprocess.run([str(PYTHON312), "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip>=24"], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *PACKAGES], check=True)
    check = ("import importlib.util as u, sys; "
             "sys.exit(any(u.find_spec(n.split('.')[0]) and u.find_spec(n) for n in sys.argv[1:]))")
    subprocess.run([str(py), "-c", check, *ABSENT], check=True)
    stamp.write_text("\n".join(PACKAGES), encoding="utf-8")
    return py, time.monotonic() - t0
