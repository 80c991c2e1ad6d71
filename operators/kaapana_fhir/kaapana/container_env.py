"""Flow parameters → string env vars for the ``kaapana-fhir`` processing container (no Airflow, no Kaapana).

Kaapana passes parameters as env vars; the container reads them back with
:meth:`kaapana_fhir.kaapana.env.KaapanaRun.param` (``NAME`` upper-cased; lists/dicts as JSON).
Endpoints from the chart's site settings (:func:`kaapana_fhir.kaapana.env.site_settings`) come first;
flow parameters and ``env_vars`` override them. Airflow-only parameters (``*_conn_id``) and Jinja
templates (``{{ ... }}``: the container reads ``conf.json`` itself) are not passed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from kaapana_fhir.kaapana.env import site_settings

log = logging.getLogger(__name__)

#: image name of the processing container (LABEL IMAGE of docker/processing-container/Dockerfile)
IMAGE_NAME = "kaapana-fhir"


def container_env(
    task: str, params: Mapping[str, Any], env_vars: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Env for ``kaapana-fhir kaapana-run <task>``: ``KAAPANA_FHIR_TASK`` plus one var per parameter."""
    env: dict[str, str] = {"KAAPANA_FHIR_TASK": task}
    settings = site_settings()
    for key in ("fhir_base_url", "dicomweb_url"):
        if settings.get(key):
            env[key.upper()] = str(settings[key])
    for key, value in params.items():
        if value is None or key.endswith("_conn_id"):
            continue
        if isinstance(value, str) and "{{" in value:
            log.debug("parameter %s is a template; the container reads it from conf.json", key)
            continue
        if isinstance(value, bool):
            env[key.upper()] = str(value)
        elif isinstance(value, (list, tuple, dict)):
            env[key.upper()] = json.dumps(value)
        else:
            env[key.upper()] = str(value)
    env.update(dict(env_vars or {}))
    return env
