"""Flow parameters → string env vars for the ``kaapana-fhir`` processing container (no Airflow, no Kaapana).

Kaapana 0.6 starts the container without command/args, so the env is the whole interface:

* ``KAAPANA_FHIR_TASK`` names the flow (read by :func:`kaapana_fhir.kaapana.tasks.select_task`);
* endpoints from the chart's site settings (:func:`kaapana_fhir.kaapana.env.site_settings`);
* the flow's parameters as ``KEY.upper() = str(value)`` (the same form Kaapana gives ``workflow_form`` keys),
  built through the flow's typed ``Params`` so that names and types cannot drift from the operator, the
  CLI and the container (only non-default values; the container's ``Params.from_container`` reads them);
* the operator's own ``env_vars`` last.

In-process operator keyword arguments that are Airflow-only (``*_conn_id``), Jinja templates (``{{ ... }}``:
the container reads ``conf.json`` itself) or not a parameter of the flow are not passed (logged at debug).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kaapana_fhir.flows.cohort.params import CohortParams
from kaapana_fhir.flows.dicom_to_fhir.params import DicomToFhirParams
from kaapana_fhir.flows.params import FlowParams
from kaapana_fhir.flows.radiomics.params import RadiomicsParams
from kaapana_fhir.flows.tables.params import TableImportParams
from kaapana_fhir.kaapana.env import site_settings

log = logging.getLogger(__name__)

#: env var that names the task of the container
TASK_ENV = "KAAPANA_FHIR_TASK"
#: env var with the FHIR partitioning mode of the site ("url": one HAPI partition per Kaapana project)
PARTITIONING_ENV = "KAAPANA_FHIR_PARTITIONING"
#: container task → its Params class
PARAMS: dict[str, type[FlowParams]] = {
    "dicom-to-fhir": DicomToFhirParams,
    "import-table": TableImportParams,
    "radiomics": RadiomicsParams,
    "cohort": CohortParams,
}
#: endpoint overrides passed through as env (the container reads them like workflow_form keys)
ENDPOINT_KEYS = ("fhir_base_url", "dicomweb_url")
#: in-process operator keyword → Params key, where the names differ
KWARG_ALIASES: dict[str, dict[str, str]] = {
    "import-table": {"mapping_key": "mapping"},
    "radiomics": {"settings_override": "settings"},
    "cohort": {"searches": "fhir_search"},
}


def flow_params(task: str, values: Mapping[str, Any]) -> FlowParams:
    """The task's Params from in-process operator keyword arguments (aliases applied, others dropped)."""
    cls = PARAMS[task]
    aliases = KWARG_ALIASES.get(task, {})
    known = set(cls.form_keys())
    kept: dict[str, Any] = {}
    for key, value in values.items():
        name = aliases.get(key, key)
        if isinstance(value, str) and "{{" in value:
            log.debug("parameter %s is a template; the container reads it from conf.json", key)
        elif name not in known:
            log.debug("parameter %s is not a %s container parameter; not passed", key, task)
        else:
            kept[name] = value
    return cls.from_values(kept, "operator arguments")


def container_env(
    task: str, params: Mapping[str, Any] | FlowParams, env_vars: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Env of the container for ``task``: ``KAAPANA_FHIR_TASK``, site endpoints, parameters, ``env_vars``."""
    if task not in PARAMS:
        raise KeyError(f"unknown kaapana-fhir task {task!r}")
    env: dict[str, str] = {TASK_ENV: task}
    settings = site_settings()
    for key in ("fhir_base_url", "dicomweb_url"):
        if settings.get(key):
            env[key.upper()] = str(settings[key])
    if settings.get("fhir_partitioning"):
        env[PARTITIONING_ENV] = str(settings["fhir_partitioning"])
    if not isinstance(params, FlowParams):
        for key in ENDPOINT_KEYS:
            value = params.get(key)
            if value not in (None, "") and "{{" not in str(value):
                env[key.upper()] = str(value)
    p = params if isinstance(params, FlowParams) else flow_params(task, {
        k: v for k, v in params.items() if k not in ENDPOINT_KEYS})
    env.update(p.to_env())
    env.update(dict(env_vars or {}))
    return env
