"""Radiomics operator / DAG wiring (no servers)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from kaapana_fhir.operators.radiomics import RadiomicsToFhirOperator, seg_series_from_conf

pytestmark = pytest.mark.airflow

DAG_FILE = Path(__file__).resolve().parents[3] / "dags" / "dag_radiomics_to_fhir.py"


def test_seg_series_from_all_trigger_paths() -> None:
    assert seg_series_from_conf({"data_form": {"identifiers": ["1.2", "1.3"]}}) == ["1.2", "1.3"]
    assert seg_series_from_conf({"seriesInstanceUID": "1.4", "seg_series_uids": "1.5, 1.4"}) == ["1.4", "1.5"]
    assert seg_series_from_conf(None) == [] and seg_series_from_conf({"data_form": {}}) == []


def test_operator_is_thin_templated_and_skips_without_input() -> None:
    op = RadiomicsToFhirOperator(task_id="r", settings_override="setting: {binWidth: 5}")
    assert {"seg_series_uids", "settings_path", "settings_override", "layout"} <= set(op.template_fields)
    for name in op.template_fields:
        assert f":param {name}:" in (RadiomicsToFhirOperator.__doc__ or "")
    # no UIDs anywhere → nothing to do, and no connection is opened
    assert op.execute({"dag_run": SimpleNamespace(conf={"data_form": {"identifiers": []}})})["segs"] == 0


def test_dag_shape(airflow_home: Path) -> None:
    spec = importlib.util.spec_from_file_location("dag_radiomics_to_fhir_t", DAG_FILE)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    assert mod.dag.dag_id == "radiomics-to-fhir"
    assert mod.dag.task_ids == ["radiomics-to-fhir"]
    props = mod.ui_forms["workflow_form"]["properties"]
    assert {"settings", "settings_preset", "layout"} <= set(props)
    assert props["settings_preset"]["enum"] == ["default", "all_image_types"]
