"""FhirQueryOperator: CohortParams (incl. ``engine``) reach the cohort flow; its XCom is built from the
:class:`~kaapana_fhir.flows.cohort.flow.CohortSummary` (no servers: the flow and the hooks are faked)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kaapana_fhir.flows.cohort import flow
from kaapana_fhir.flows.cohort.params import CohortEngine
from kaapana_fhir.operators.fhir_query import FhirQueryOperator

pytestmark = pytest.mark.airflow


def _summary(out_dir: Path) -> flow.CohortSummary:
    dataset = {"data_form": {"dataset_name": "fhir-cohort", "identifiers": ["1.2.3"]}}
    return flow.CohortSummary(resources={"Patient": 2}, requests=3, fetch_seconds=0.1, join_seconds=0.1,
                              rows={"patient": 2}, dropped={}, patients=2, selected_patients=1, filters=[],
                              series_uids=1, out_dir=str(out_dir), files=["cohort.csv"], bucket=None,
                              object_keys=[], dataset=dataset)


@pytest.mark.parametrize(("form", "expected"), [({}, CohortEngine.OURS),
                                                ({"engine": "pathling"}, CohortEngine.PATHLING)])
def test_engine_from_the_form_reaches_run_cohort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 form: dict[str, Any], expected: CohortEngine) -> None:
    from kaapana_fhir.hooks import fhir as hooks

    calls: list[dict[str, Any]] = []

    def fake_run_cohort(client: Any, out_dir: Any, **kw: Any) -> flow.CohortSummary:
        calls.append(kw)
        return _summary(Path(out_dir))

    monkeypatch.setattr(flow, "run_cohort", fake_run_cohort)
    monkeypatch.setattr(hooks.FhirHook, "get_conn", lambda self: object())
    op = FhirQueryOperator(task_id="q", out_dir=str(tmp_path), upload=False)
    out = op.execute({"dag_run": SimpleNamespace(conf={"workflow_form": form}, run_id="r1")})
    assert calls[0]["engine"] is expected
    assert out["patients"] == 2 and out["selected_patients"] == 1 and out["series_uids"] == 1
    assert out["trigger_conf"] == {"data_form": {"dataset_name": "fhir-cohort", "identifiers": ["1.2.3"]}}
    json.dumps(out)  # XCom must be JSON-able


def test_a_misspelt_engine_is_an_error_naming_the_key(tmp_path: Path) -> None:
    from kaapana_fhir.exceptions import ConfigError

    op = FhirQueryOperator(task_id="q", out_dir=str(tmp_path), upload=False)
    with pytest.raises(ConfigError, match=r"'engine' .*'spark' is not one of ours, pathling"):
        op.execute({"dag_run": SimpleNamespace(conf={"workflow_form": {"engine": "spark"}}, run_id="r1")})
