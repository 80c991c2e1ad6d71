"""Pick the runtime of the flow operators at DAG-parse time: in-process (plain Airflow) or Kaapana containers.

One DAG file serves both::

    from kaapana_fhir.kaapana.runtime import flow_operator, kaapana_input_operator, kaapana_cleaner

    to_fhir = flow_operator("dicom-to-fhir", dag=dag, task_id="dicom-to-fhir", fhir_conn_id="fhir_default")

* plain Airflow: the in-process operator (e.g. ``DicomToFhirOperator(task_id=..., **params)``);
* Kaapana: the container operator (``DicomToFhirKaapanaOperator(dag=dag, name=task_id, flow_params=params)``),
  whose container reads the same parameters from env vars and ``conf.json``.

The runtime is Kaapana when ``KAAPANA_FHIR_RUNTIME=kaapana``, plain Airflow when it is ``airflow``, and
otherwise Kaapana exactly when Kaapana's Airflow plugin (``kaapana.operators.KaapanaBaseOperator``) is
importable. Only the chosen runtime's operator module is imported (the Kaapana Airflow image lacks the
flows' libraries).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

from kaapana_fhir.exceptions import ConfigError

RUNTIME_ENV = "KAAPANA_FHIR_RUNTIME"
_KAAPANA_PLUGIN_MODULE = "kaapana.operators.KaapanaBaseOperator"

#: flow → (in-process "module:Class", Kaapana container "module:Class")
FLOWS: dict[str, tuple[str, str]] = {
    "dicom-to-fhir": (
        "kaapana_fhir.operators.dicom_to_fhir:DicomToFhirOperator",
        "kaapana_fhir.kaapana.operators.DicomToFhirKaapanaOperator:DicomToFhirKaapanaOperator",
    ),
    "import-table": (
        "kaapana_fhir.operators.csv_import:CsvImportOperator",
        "kaapana_fhir.kaapana.operators.CsvImportKaapanaOperator:CsvImportKaapanaOperator",
    ),
    "radiomics": (
        "kaapana_fhir.operators.radiomics:RadiomicsToFhirOperator",
        "kaapana_fhir.kaapana.operators.RadiomicsToFhirKaapanaOperator:RadiomicsToFhirKaapanaOperator",
    ),
    "cohort": (
        "kaapana_fhir.operators.fhir_query:FhirQueryOperator",
        "kaapana_fhir.kaapana.operators.FhirQueryKaapanaOperator:FhirQueryKaapanaOperator",
    ),
}
#: keyword arguments that belong to the Airflow task, not to the flow (passed to either class unchanged)
TASK_KWARGS = frozenset(
    {
        "retries",
        "retry_delay",
        "trigger_rule",
        "pool",
        "pool_slots",
        "priority_weight",
        "execution_timeout",
        "max_active_tis_per_dag",
        "doc_md",
        "owner",
        "depends_on_past",
        "on_failure_callback",
        "on_success_callback",
    }
)
#: keyword arguments only the Kaapana container operators understand (dropped on plain Airflow)
KAAPANA_KWARGS = frozenset(
    {
        "input_operator",
        "operator_in_dir",
        "operator_out_dir",
        "parallel_id",
        "batch_name",
        "env_vars",
        "ram_mem_mb",
        "ram_mem_mb_lmt",
        "cpu_millicores",
        "cpu_millicores_lmt",
        "delete_input_on_success",
        "delete_output_on_start",
    }
)


def _plugin_importable() -> bool:
    if _KAAPANA_PLUGIN_MODULE in sys.modules:
        return True
    try:
        return importlib.util.find_spec(_KAAPANA_PLUGIN_MODULE) is not None
    except (ImportError, ValueError):  # parent package missing, or a stub module without __spec__
        return False


def in_kaapana() -> bool:
    """True when the DAGs should use Kaapana container operators (see module docstring)."""
    setting = os.environ.get(RUNTIME_ENV, "").strip().lower()
    if setting == "kaapana":
        return True
    if setting == "airflow":
        return False
    if setting:
        raise ConfigError(
            f"{RUNTIME_ENV}={setting!r}: expected 'kaapana' or 'airflow' (or unset: auto-detect)"
        )
    return _plugin_importable()


def operator_class(flow: str, *, kaapana: bool | None = None) -> type:
    """The operator class of ``flow`` for the current (or the given) runtime."""
    if flow not in FLOWS:
        raise ConfigError(f"unknown flow {flow!r}; known: {', '.join(sorted(FLOWS))}")
    target = FLOWS[flow][1 if (in_kaapana() if kaapana is None else kaapana) else 0]
    module_name, _, cls_name = target.partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def flow_operator(flow: str, *, task_id: str, dag: Any = None, **params: Any) -> Any:
    """An operator running ``flow`` with ``params`` in the current runtime.

    ``params`` are the in-process operator's keyword arguments plus optional Airflow task arguments
    (:data:`TASK_KWARGS`) and Kaapana-only arguments (:data:`KAAPANA_KWARGS`, ignored on plain Airflow).
    Inside a ``with DAG(...)`` block ``dag`` may be omitted on plain Airflow; Kaapana needs it.
    """
    kaapana = in_kaapana()
    cls = operator_class(flow, kaapana=kaapana)
    task_kw = {k: v for k, v in params.items() if k in TASK_KWARGS}
    k_kw = {k: v for k, v in params.items() if k in KAAPANA_KWARGS}
    flow_kw = {k: v for k, v in params.items() if k not in TASK_KWARGS and k not in KAAPANA_KWARGS}
    if kaapana:
        if dag is None:
            raise ConfigError(f"flow_operator({flow!r}) in Kaapana needs dag=")
        return cls(dag=dag, name=task_id, flow_params=flow_kw, **task_kw, **k_kw)
    if dag is not None:
        task_kw["dag"] = dag
    return cls(task_id=task_id, **flow_kw, **task_kw)


def kaapana_input_operator(dag: Any, **kwargs: Any) -> Any | None:
    """Kaapana's ``LocalGetInputDataOperator`` (needed by ``fetch_method: copy`` trigger rules) in Kaapana;
    ``None`` on plain Airflow."""
    if not in_kaapana():
        return None
    from kaapana.operators.LocalGetInputDataOperator import LocalGetInputDataOperator

    return LocalGetInputDataOperator(dag=dag, **kwargs)


def kaapana_cleaner(dag: Any, **kwargs: Any) -> Any | None:
    """Kaapana's ``LocalWorkflowCleanerOperator(clean_workflow_dir=True)`` (last task) in Kaapana; ``None`` on
    plain Airflow."""
    if not in_kaapana():
        return None
    from kaapana.operators.LocalWorkflowCleanerOperator import LocalWorkflowCleanerOperator

    kwargs.setdefault("clean_workflow_dir", True)
    kwargs.setdefault("trigger_rule", "none_failed")
    return LocalWorkflowCleanerOperator(dag=dag, **kwargs)


#: every DAG of the package starts here (no catch-up runs before it)
DAG_START = "2024-01-01T00:00:00+00:00"


def workflow_dag(dag_id: str, *, description: str, tags: list[str], max_active_runs: int,
                 ui_forms: dict[str, Any] | None = None, retries: int = 1, retry_delay_s: int = 30,
                 owner: str = "kaapana", mapped_tasks: bool = False, **dag_kwargs: Any) -> Any:
    """One of our DAGs with the conventions they share: UTC start date, no catch-up, retries with a delay, and,
    for a workflow shown in Kaapana's UI (``ui_forms`` given), ``ui_visible``/``ui_forms`` in ``default_args``,
    where Kaapana's backend reads the workflow form. ``mapped_tasks``: the DAG maps operators with ``.partial()``,
    which rejects these Kaapana keys on plain Airflow, so they are added only in Kaapana. Other keyword
    arguments (``schedule``, ``params``, ``doc_md``, ...) go to the DAG as they are (``schedule`` defaults to
    None: triggered runs only).
    """
    from datetime import datetime, timedelta

    from kaapana_fhir.airflow_compat import DAG

    default_args: dict[str, Any] = {"owner": owner, "retries": retries}
    if retries:
        default_args["retry_delay"] = timedelta(seconds=retry_delay_s)
    if ui_forms is not None and (not mapped_tasks or in_kaapana()):
        default_args.update({"ui_visible": True, "ui_forms": ui_forms})
    elif ui_forms is None:
        default_args["ui_visible"] = False
    dag_kwargs.setdefault("schedule", None)
    return DAG(dag_id=dag_id, description=description, default_args=default_args,
               start_date=datetime.fromisoformat(DAG_START), catchup=False, max_active_runs=max_active_runs,
               tags=tags, **dag_kwargs)
