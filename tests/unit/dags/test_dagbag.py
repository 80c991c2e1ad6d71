"""Every file in dags/ imports cleanly in Airflow (no network or Variables at import time)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[3] / "dags"

pytestmark = pytest.mark.airflow


def test_dagbag_imports_without_errors_or_network(airflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("DAG files must not open network connections at import time")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(DAGS), include_examples=False)
    assert bag.import_errors == {}
    files = sorted(p.name for p in DAGS.glob("dag_*.py"))
    assert files, "dags/ must hold DAG files"
    assert len(bag.dag_ids) >= len(files)
    for dag_id in bag.dag_ids:
        assert dag_id == dag_id.lower() and "_" not in dag_id, f"{dag_id}: DAG ids are kebab-case"
