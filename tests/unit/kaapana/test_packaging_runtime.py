"""Runtime selection (plain Airflow vs Kaapana containers), the Kaapana container operators built against
the contract harness's plugin stand-in, and the container-contract parsing in kaapana_env."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from kaapana_fhir.exceptions import ConfigError
from kaapana_fhir.kaapana import env as kaapana_env
from kaapana_fhir.kaapana import runtime as runtime
from kaapana_fhir.kaapana.container_env import container_env
from tests.support.kaapana_contract import PLUGIN_DIR
from tests.support.kaapana_contract.pod import PLATFORM_ENV


@pytest.fixture()
def kaapana_plugin(monkeypatch: pytest.MonkeyPatch):
    """Kaapana's plugin (stand-in) importable, platform env set; modules removed again afterwards."""
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    for k in PLATFORM_ENV:
        monkeypatch.setenv(k, f"http://{k.lower()}:8080")
    monkeypatch.setenv("AIRFLOW_VAR_ENABLE_JOB_SCHEDULER", "True")  # Variable.get at parse time
    monkeypatch.setenv("KAAPANA_FHIR_SETTINGS", "/nonexistent/settings.json")
    yield
    for name in [
        m for m in sys.modules if m == "kaapana" or m.startswith(("kaapana.", "kaapana_fhir.kaapana."))
    ]:
        del sys.modules[name]


def test_runtime_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.RUNTIME_ENV, "kaapana")
    assert runtime.in_kaapana() is True
    monkeypatch.setenv(runtime.RUNTIME_ENV, "AIRFLOW")
    assert runtime.in_kaapana() is False
    monkeypatch.setenv(runtime.RUNTIME_ENV, "k8s")
    with pytest.raises(ConfigError, match="KAAPANA_FHIR_RUNTIME"):
        runtime.in_kaapana()


def test_runtime_autodetects_the_plugin(monkeypatch: pytest.MonkeyPatch, kaapana_plugin: None) -> None:
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    assert runtime.in_kaapana() is True


def test_plain_airflow_without_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    assert "kaapana" not in sys.modules
    assert runtime.in_kaapana() is False


def test_unknown_flow_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown flow 'x'.*cohort"):
        runtime.operator_class("x")


@pytest.mark.parametrize("flow", sorted(runtime.FLOWS))
def test_kaapana_operator_per_flow(flow: str, monkeypatch: pytest.MonkeyPatch, kaapana_plugin: None) -> None:
    from kaapana_fhir.airflow_compat import DAG

    monkeypatch.setenv(runtime.RUNTIME_ENV, "kaapana")
    from kaapana.blueprints.kaapana_global_variables import DEFAULT_REGISTRY, KAAPANA_BUILD_VERSION
    from kaapana.operators.KaapanaBaseOperator import KaapanaBaseOperator
    from kaapana.operators.LocalGetInputDataOperator import LocalGetInputDataOperator

    with DAG(dag_id=f"t-{flow}", schedule=None, start_date=None) as dag:
        get_input = runtime.kaapana_input_operator(dag)
        op = runtime.flow_operator(
            flow,
            dag=dag,
            task_id=f"{flow}-task",
            input_operator=get_input,
            fhir_conn_id="fhir_default",
            patient_system="urn:x",
            tags=["a", "b"],
            series_uids="{{ dag_run.conf['x'] }}",
            retries=3,
            ram_mem_mb=1234,
        )
        cleaner = runtime.kaapana_cleaner(dag)
        get_input >> op >> cleaner
    assert isinstance(get_input, LocalGetInputDataOperator)
    assert isinstance(op, KaapanaBaseOperator)
    assert op.image == f"{DEFAULT_REGISTRY}/kaapana-fhir:{KAAPANA_BUILD_VERSION}"
    assert op.image_pull_secrets == ["registry-secret"]
    assert op.cmds == [] and op.arguments == []  # Kaapana 0.6 never uses them; the env names the task
    assert op.task_id == f"{flow}-task" and op.operator_in_dir == "get-input-data"
    assert op.retries == 3 and op.ram_mem_mb == 1234
    assert op.execution_timeout >= timedelta(minutes=10)
    env = op.env_vars
    from kaapana_fhir.kaapana.container_env import PARAMS

    assert env["KAAPANA_FHIR_TASK"] == flow
    if "patient_system" in PARAMS[flow].form_keys():
        assert env["PATIENT_SYSTEM"] == "urn:x"
    else:  # not a parameter of this flow: not passed
        assert "PATIENT_SYSTEM" not in env
    assert "TAGS" not in env  # not a parameter of the flow
    assert "FHIR_CONN_ID" not in env and "SERIES_UIDS" not in env  # Airflow-only / templated values stay out
    assert cleaner.clean_workflow_dir is True
    assert cleaner.trigger_rule == "none_failed"


def test_flow_operator_in_kaapana_needs_the_dag(
    monkeypatch: pytest.MonkeyPatch, kaapana_plugin: None
) -> None:
    monkeypatch.setenv(runtime.RUNTIME_ENV, "kaapana")
    with pytest.raises(ConfigError, match="needs dag="):
        runtime.flow_operator("cohort", task_id="x")


def test_plain_airflow_gets_the_in_process_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.RUNTIME_ENV, "airflow")
    from kaapana_fhir.operators.dicom_to_fhir import DicomToFhirOperator

    assert runtime.operator_class("dicom-to-fhir") is DicomToFhirOperator
    assert runtime.kaapana_input_operator(None) is None and runtime.kaapana_cleaner(None) is None


def test_plain_airflow_drops_kaapana_only_kwargs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    class Fake:
        def __init__(self, **kw):
            seen.update(kw)

    monkeypatch.setenv(runtime.RUNTIME_ENV, "airflow")
    monkeypatch.setattr(runtime, "operator_class", lambda flow, kaapana=None: Fake)
    runtime.flow_operator(
        "cohort", task_id="c", searches=["Patient"], ram_mem_mb=5, input_operator=object(), retries=2
    )
    assert seen == {"task_id": "c", "searches": ["Patient"], "retries": 2}


def test_container_env_uses_site_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = tmp_path / "s.json"
    settings.write_text(json.dumps({"fhir_base_url": "http://fhir.site/fhir", "dicomweb_url": "http://dw"}))
    monkeypatch.setenv(kaapana_env.SETTINGS_ENV, str(settings))
    env = container_env("cohort", {"fhir_base_url": None, "modality": "MR"}, {"EXTRA": "1"})
    assert env == {
        "KAAPANA_FHIR_TASK": "cohort",
        "FHIR_BASE_URL": "http://fhir.site/fhir",
        "DICOMWEB_URL": "http://dw",
        "MODALITY": "MR",
        "EXTRA": "1",
    }
    assert container_env("cohort", {"fhir_base_url": "http://other"})["FHIR_BASE_URL"] == "http://other"
    # the site's partitioning mode reaches the pod, and the Airflow side reads the same setting
    settings.write_text(json.dumps({"fhir_base_url": "http://fhir.site/fhir", "fhir_partitioning": "url"}))
    assert container_env("cohort", {})["KAAPANA_FHIR_PARTITIONING"] == "url"
    monkeypatch.delenv("KAAPANA_FHIR_PARTITIONING", raising=False)
    from kaapana_fhir.hooks.fhir import run_project

    assert run_project({"project_form": {"name": "lung"}}) == "lung"
    assert run_project({}) == "admin"  # triggered runs: the admin project, as Kaapana does
    settings.write_text(json.dumps({"fhir_base_url": "http://fhir.site/fhir"}))
    assert run_project({"project_form": {"name": "lung"}}) is None  # no partitioning: the default partition
    settings.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        kaapana_env.site_settings()


# ------------------------------------------------------------------ kaapana_env
def make_run(tmp_path: Path, conf: object = None, **env: str) -> kaapana_env.KaapanaRun:
    wd = tmp_path / "run-1"
    (wd / "conf").mkdir(parents=True, exist_ok=True)
    if conf is not None:
        (wd / "conf" / "conf.json").write_text(conf if isinstance(conf, str) else json.dumps(conf))
    return kaapana_env.load(
        {"WORKFLOW_DIR": str(wd), "OPERATOR_IN_DIR": "in", "OPERATOR_OUT_DIR": "out", **env}
    )


def test_parse_env_value() -> None:
    assert kaapana_env.parse_env_value("['firstorder', 'shape']") == ["firstorder", "shape"]
    assert kaapana_env.parse_env_value("True") is True and kaapana_env.parse_env_value("false") is False
    assert kaapana_env.parse_env_value("12") == 12
    assert kaapana_env.parse_env_value("Patient?gender=female") == "Patient?gender=female"
    assert kaapana_env.parse_env_value('{"a": null}') == {"a": None}


def test_param_precedence(tmp_path: Path) -> None:
    k = make_run(
        tmp_path,
        {"workflow_form": {"modality": "CT", "layout": "members"}, "preset": "flat"},
        MODALITY="MR",
        FEATURE_CLASSES="['shape']",
    )
    assert k.param("modality") == "MR"  # env (workflow_form upper-cased by Kaapana) first
    assert k.param("layout") == "members"
    assert k.param("preset") == "flat"  # flat trigger-rule conf
    assert k.param("feature_classes") == ["shape"]
    assert k.param("missing", "d") == "d"


def test_identifiers_bucket_and_endpoints(tmp_path: Path) -> None:
    k = make_run(
        tmp_path,
        {
            "data_form": {"identifiers": ["1.2", "1.3"]},
            "seriesInstanceUID": "1.4",
            "project_form": {"s3_bucket": "project-x"},
        },
        MINIO_URL="minio-service.services.svc:9000",
        SERVICES_NAMESPACE="svc",
    )
    assert k.series_identifiers() == ["1.2", "1.3", "1.4"]
    assert k.project_bucket() == "project-x"
    assert k.s3_endpoint() == "http://minio-service.services.svc:9000"
    assert k.fhir_base_url() == "http://hapi-fhir-service.svc.svc:8080/fhir"
    assert k.dicomweb_url() == "http://dicom-web-filter-service.svc.svc:8080"
    assert k.run_id == "run-1"


def test_input_files_and_result(tmp_path: Path) -> None:
    k = make_run(tmp_path, {})
    (k.batch_dir / "s2" / "in").mkdir(parents=True)
    (k.batch_dir / "s2" / "in" / "b.DCM").write_bytes(b"x")
    (k.batch_dir / "s1" / "in" / "sub").mkdir(parents=True)
    (k.batch_dir / "s1" / "in" / "sub" / "a.dcm").write_bytes(b"x")
    (k.batch_dir / "s1" / "in" / "notes.txt").write_text("x")
    (k.batch_dir / "s3").mkdir()
    (k.workflow_dir / "in").mkdir()
    (k.workflow_dir / "in" / "t.csv").write_text("a\n1\n")
    assert [e.name for e in k.batch_elements()] == ["s1", "s2", "s3"]
    files = k.input_files(".dcm")
    assert {key: [p.name for p in v] for key, v in files.items()} == {"s1": ["a.dcm"], "s2": ["b.DCM"]}
    assert [p.name for p in k.input_files(".csv")[""]] == ["t.csv"]
    path = k.write_result({"status": "ok", "n": 1})
    assert path == k.workflow_dir / "out" / kaapana_env.RESULT_FILE
    assert json.loads(path.read_text()) == {"n": 1, "status": "ok"}


def test_contract_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WORKFLOW_DIR is not set"):
        kaapana_env.load({})
    with pytest.raises(ConfigError, match="not a directory"):
        kaapana_env.load({"WORKFLOW_DIR": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="conf.json: not valid JSON"):
        make_run(tmp_path, "{oops")
    with pytest.raises(ConfigError, match="dag_run.conf must be a JSON object"):
        make_run(tmp_path, "[]")
    assert make_run(tmp_path / "x").conf == {}
