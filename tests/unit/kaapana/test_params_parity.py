"""One typed Params per flow: the same ``workflow_form`` keys give the same Params through all three entries
(Airflow operator, CLI, Kaapana container), and the container picks its task from the pod env, never from a
command (issue 21: every container task ran ``dicom-to-fhir``; ``missing_series`` was ``missing`` in the
container, which also ignored ``wado``, ``include_device`` and ``endpoint_address``)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.cli.main import build_parser
from kaapana_fhir.exceptions import ConfigError
from kaapana_fhir.flows.cohort.params import CohortParams
from kaapana_fhir.flows.dicom_to_fhir.params import DicomToFhirParams
from kaapana_fhir.flows.params import FlowParams
from kaapana_fhir.flows.radiomics.params import RadiomicsParams
from kaapana_fhir.flows.tables.params import TableImportParams
from kaapana_fhir.kaapana import container_env as ce
from kaapana_fhir.kaapana import tasks
from tests.support.kaapana_contract import pod as contract

#: every form key of every flow, with a non-default value (as the Kaapana UI sends them: JSON types)
FORMS: dict[str, tuple[type[FlowParams], dict[str, Any]]] = {
    "dicom-to-fhir": (DicomToFhirParams, {
        "patient_system": "urn:test:pid", "timezone": "Europe/Berlin", "endpoint_address": "http://pacs/wado-rs",
        "include_instances": True, "include_device": False, "wado": "never", "missing_series": "skip",
        "profile": "core", "dose_reports": False}),
    "import-table": (TableImportParams, {
        "object_key": "fhir-import/t.csv", "bucket": "project-lung", "mapping": "t.mapping.yaml",
        "preset": "redcap", "skip_invalid_rows": True}),
    "radiomics": (RadiomicsParams, {
        "settings_preset": "all_image_types", "settings": "setting:\n  binWidth: 10\n", "layout": "components",
        "patient_system": "urn:test:pid"}),
    "cohort": (CohortParams, {
        "fhir_search": "Patient?gender=female\nObservation?code=x", "patient_search": "Patient?_id=a",
        "filters": "Histology=adenocarcinoma; Overall.Stage=IIIa", "views": "patient\nsegment",
        "modality": "MR", "dataset_name": "adeno", "group_by": "Overall.Stage",
        "trigger_dag_id": "radiomics-to-fhir", "bucket": "project-lung", "prefix": "cohorts/x",
        "upload": False, "page_size": 50, "engine": "pathling"}),
}
#: CLI command (and the required arguments unrelated to the Params) per flow
CLI: dict[str, list[str]] = {
    "dicom-to-fhir": ["dicom-to-fhir", "--files", "x.dcm", "--out", "b.json"],
    "import-table": ["import-table", "t.csv", "--out", "b.json"],
    "radiomics": ["radiomics", "--ct", "ct", "--seg", "seg.dcm", "--out", "b.json"],
    "cohort": ["cohort", "--out", "cohort.csv"],
}
#: CLI options that exclude each other: checked in separate command lines
EXCLUSIVE = {"import-table": ("mapping", "preset")}
#: form keys that have no CLI option (the CLI takes them from its own inputs: files, --out, ...)
NO_CLI = {
    "dicom-to-fhir": set(),
    "import-table": {"object_key", "bucket"},
    "radiomics": {"settings"},  # the CLI's --settings is a parameter FILE, not YAML text
    "cohort": {"dataset_name", "group_by", "trigger_dag_id", "bucket", "prefix", "upload", "page_size"},
}


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError("no sub-commands")


def cli_argv(task: str, cls: type[FlowParams], form: dict[str, Any]) -> list[str]:
    """Command line for ``form`` built from the real parser's options (dest → flag)."""
    sub = _subparser(build_parser(), CLI[task][0])
    by_dest = {a.dest: a for a in sub._actions}
    argv = list(CLI[task])
    for f in dataclasses.fields(cls):
        dest = f.metadata.get("cli")
        if not dest or f.name not in form:
            continue
        action, value = by_dest[dest], form[f.name]
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            if bool(value) != bool(f.metadata.get("invert_cli")):
                argv.append(flag)
        elif isinstance(value, str) and (action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction)):
            items = cls.coerce(f.name, value)
            argv += [flag, *items] if action.nargs in ("+", "*") else [x for i in items for x in (flag, i)]
        else:
            argv += [flag, str(value)]
    return argv


@pytest.mark.parametrize("task", sorted(FORMS))
def test_every_form_key_gives_the_same_params_through_operator_cli_and_container(task: str, tmp_path: Path) -> None:
    cls, form = FORMS[task]
    assert set(form) == set(cls.form_keys()), "the test covers every form key"
    expected = cls.from_values(form)
    assert expected.changed().keys() == form.keys(), "every value differs from its default"
    # Airflow operator entry: dag_run.conf of a Kaapana UI run
    assert cls.from_conf({"workflow_form": form}) == expected
    # Kaapana container: the pod env exactly as KaapanaBaseOperator 0.6.0 builds it, plus conf.json
    stored = contract.init_env(platform=dict.fromkeys(contract.PLATFORM_ENV, "x"), services_namespace="services",
                               admin_namespace="admin", operator_in_dir=None, has_in_dir=False,
                               env_vars=ce.container_env(task, {}))
    env = contract.execute_env(stored, conf={"workflow_form": form}, run_id="r", dag_id="d", task_id="t",
                               batch_name="batch", operator_out_dir="t")
    assert cls.from_container({"workflow_form": form}, env) == expected
    assert cls.from_env(env) == expected  # the env alone (str() of each value) carries the same
    # operator arguments → container env → container (what a DAG author sets on the operator)
    assert cls.from_env(ce.container_env(task, form)) == expected
    # CLI (options that exclude each other in separate command lines)
    exclusive = EXCLUSIVE.get(task, ())
    variants = [{k: v for k, v in form.items() if k not in exclusive or k == keep} for keep in exclusive] or [form]
    for variant in variants:
        from_cli = cls.from_cli(build_parser().parse_args(cli_argv(task, cls, variant)))
        with_cli = {k for k in variant if k not in NO_CLI[task]}
        assert {k: getattr(from_cli, k) for k in with_cli} == {k: getattr(expected, k) for k in with_cli}
    assert {f.name for f in dataclasses.fields(cls) if not f.metadata.get("cli")} == NO_CLI[task]


def test_precedence_in_the_container() -> None:
    """defaults < flat conf (trigger rules) < env (operator env_vars) < workflow_form; empty never overrides."""
    p = DicomToFhirParams.from_container(
        {"wado": "always", "timezone": "UTC", "workflow_form": {"missing_series": "skip", "timezone": ""}},
        {"WADO": "never", "INCLUDE_DEVICE": "False", "MISSING_SERIES": "fail"},
    )
    assert (p.wado, p.timezone, p.include_device, p.missing_series) == ("never", "UTC", False, "skip")


@pytest.mark.parametrize(("value", "message"), [({"wado": "Sometimes"}, "wado"), ({"include_device": "maybe"},
                                                                                   "include_device")])
def test_bad_values_are_config_errors_naming_the_key(value: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DicomToFhirParams.from_conf({"workflow_form": value})


def test_mode_strings_are_case_insensitive() -> None:
    assert DicomToFhirParams.from_conf({"workflow_form": {"wado": "Always"}}).wado == "always"


# ---------------------------------------------------------------------------- task selection
@pytest.mark.parametrize(("env", "task"), [
    ({"KAAPANA_FHIR_TASK": "cohort", "TASK_ID": "dicom-to-fhir"}, "cohort"),  # our operators' env_vars win
    ({"TASK_ID": "fhir-table-import"}, "import-table"),
    ({"TASK_ID": "radiomics-to-fhir-lung"}, "radiomics"),  # with a parallel_id
    ({"TASK_ID": "something", "DAG_ID": "fhir-cohort"}, "cohort"),
])
def test_task_comes_from_the_pod_env(env: dict[str, str], task: str) -> None:
    assert tasks.select_task(env) == task


def test_unknown_task_env_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot tell which flow"):
        tasks.select_task({"TASK_ID": "other", "DAG_ID": "other"})
    with pytest.raises(ConfigError, match="KAAPANA_FHIR_TASK"):
        tasks.select_task({"KAAPANA_FHIR_TASK": "nope"})
    with pytest.raises(ConfigError, match="contradicts"):
        tasks.select_task({"KAAPANA_FHIR_TASK": "cohort"}, "radiomics")
    assert tasks.select_task({}, "radiomics") == "radiomics"


def test_every_operator_task_name_is_a_container_task() -> None:
    assert set(ce.PARAMS) == set(tasks.TASKS)
    assert set(tasks.TASK_IDS.values()) <= set(tasks.TASKS)
