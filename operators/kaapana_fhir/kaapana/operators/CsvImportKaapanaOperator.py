"""Kaapana container operator for the ``import-table`` flow (``kaapana-fhir kaapana-run import-table``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kaapana.blueprints.kaapana_global_variables import DEFAULT_REGISTRY, KAAPANA_BUILD_VERSION
from kaapana.operators.KaapanaBaseOperator import KaapanaBaseOperator

from kaapana_fhir.kaapana.container_env import container_env


class CsvImportKaapanaOperator(KaapanaBaseOperator):
    """A clinical table (CSV / Excel / Parquet from the input dir or the project bucket) → FHIR resources.

    Parameters are the in-process operator's keyword arguments; they reach the container as upper-case env
    vars (``workflow_form`` keys of the run override them). ``fhir_base_url`` defaults to the container's
    ``FHIR_BASE_URL`` resolution (workflow_form → env → in-cluster ``hapi-fhir-service``).
    """

    def __init__(
        self,
        dag: Any,
        name: str = "fhir-table-import",
        *,
        env_vars: dict[str, str] | None = None,
        ram_mem_mb: int = 1000,
        ram_mem_mb_lmt: int = 4000,
        execution_timeout: timedelta = timedelta(minutes=60),
        **kwargs: Any,
    ) -> None:
        flow_params = kwargs.pop("flow_params", None) or {}
        super().__init__(
            dag=dag,
            name=name,
            image=f"{DEFAULT_REGISTRY}/kaapana-fhir:{KAAPANA_BUILD_VERSION}",
            image_pull_secrets=["registry-secret"],
            cmds=["kaapana-fhir"],
            arguments=["kaapana-run", "import-table"],
            env_vars=container_env("import-table", flow_params, env_vars),
            ram_mem_mb=ram_mem_mb,
            ram_mem_mb_lmt=ram_mem_mb_lmt,
            execution_timeout=execution_timeout,
            **kwargs,
        )
