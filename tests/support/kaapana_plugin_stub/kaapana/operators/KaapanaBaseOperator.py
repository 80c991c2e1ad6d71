"""Test stand-in for Kaapana's ``KaapanaBaseOperator``: a real Airflow operator that records its arguments.

Like the real class it reads the platform env vars with ``os.environ[...]`` at construction (a KeyError at
parse time when one is unset) and derives ``task_id``, ``operator_out_dir`` and ``operator_in_dir``.
``execute`` is not supported (there is no cluster in tests).
"""

import os
from datetime import timedelta

try:
    from airflow.sdk import BaseOperator  # Airflow 3
except ImportError:  # Airflow 2
    from airflow.models import BaseOperator

PLATFORM_ENV = (
    "KEYCLOAK_URL",
    "KUBE_HELM_URL",
    "OPENSEARCH_URL",
    "DICOM_WEB_FILTER_URL",
    "NOTIFICATION_URL",
    "AII_URL",
    "KAAPANA_BACKEND_URL",
    "MINIO_URL",
)
_AIRFLOW_KWARGS = (
    "retries",
    "retry_delay",
    "trigger_rule",
    "pool",
    "pool_slots",
    "priority_weight",
    "max_active_tis_per_dag",
    "doc_md",
    "owner",
    "depends_on_past",
)


class KaapanaBaseOperator(BaseOperator):
    def __init__(
        self,
        dag=None,
        name=None,
        image=None,
        task_id=None,
        parallel_id=None,
        keep_parallel_id=True,
        input_operator=None,
        operator_in_dir=None,
        operator_out_dir=None,
        batch_name=None,
        env_vars=None,
        image_pull_secrets=None,
        cmds=None,
        arguments=None,
        ram_mem_mb=500,
        ram_mem_mb_lmt=None,
        execution_timeout=timedelta(minutes=90),
        labels=None,
        **kwargs,
    ):
        if input_operator is not None and operator_in_dir is not None:
            raise NameError("input_operator and operator_in_dir are mutually exclusive")
        if parallel_id is None and keep_parallel_id and input_operator is not None:
            parallel_id = getattr(input_operator, "parallel_id", None)
        task_id = task_id or name
        if parallel_id:
            task_id = f"{task_id}-{parallel_id}"
        self.name = name
        self.parallel_id = parallel_id
        self.image = image
        self.operator_out_dir = operator_out_dir or task_id
        self.operator_in_dir = (
            input_operator.operator_out_dir if input_operator is not None else operator_in_dir
        )
        self.batch_name = batch_name or "batch"
        platform_env = {k: os.environ[k] for k in PLATFORM_ENV}  # KeyError at parse time, like Kaapana
        self.env_vars = {**platform_env, **dict(env_vars or {})}
        self.image_pull_secrets = image_pull_secrets
        self.cmds = cmds
        self.arguments = arguments
        self.ram_mem_mb = ram_mem_mb
        self.ram_mem_mb_lmt = ram_mem_mb_lmt
        self.labels = labels
        airflow_kwargs = {k: kwargs.pop(k) for k in _AIRFLOW_KWARGS if k in kwargs}
        self.extra_kwargs = kwargs
        super().__init__(dag=dag, task_id=task_id, execution_timeout=execution_timeout, **airflow_kwargs)

    def execute(self, context):
        raise NotImplementedError("stand-in: Kaapana container operators do not run in tests")
