"""Stand-in for Kaapana 0.6.0's ``KaapanaBaseOperator`` (contract harness; no Kaapana code).

Same constructor parameters and defaults as 0.6.0; same parse-time behaviour (``set_defaults``: task id,
parallel id, output/input dirs, ``NameError`` for both ``input_operator`` and ``operator_in_dir``,
``Variable.get("enable_job_scheduler")`` and the ``NODE_RAM`` pool; the platform URLs read with
``os.environ[...]``); ``cmds``/``arguments`` are stored and never used. ``execute`` builds the pod with
:func:`tests.support.kaapana_contract.pod.build_pod` and, when ``KAAPANA_CONTRACT_WORKFLOW_ROOT`` names a
local folder, runs our image command there (secrets from ``KAAPANA_CONTRACT_SECRETS``, a JSON object);
exit 126 → ``AirflowSkipException``, other non-zero → ``AirflowException``. No XCom is pushed.
"""

import json
import os
from datetime import timedelta
from pathlib import Path

from airflow.exceptions import AirflowException, AirflowSkipException
from airflow.models import BaseOperator, Variable
from airflow.utils.trigger_rule import TriggerRule

from kaapana.blueprints.kaapana_global_variables import (
    ADMIN_NAMESPACE,
    AIRFLOW_WORKFLOW_DIR,
    BATCH_NAME,
    GPU_SUPPORT,
    PULL_POLICY_IMAGES,
    SERVICES_NAMESPACE,
)
from tests.support.kaapana_contract import pod as contract

KAAPANA_SKIP_TASK_RUN_RETURN_CODE = contract.SKIP_EXIT_CODE


class KaapanaBaseOperator(BaseOperator):
    def __init__(
        self,
        dag,
        name,
        image=None,
        input_operator=None,
        operator_in_dir=None,
        operator_out_dir=None,
        task_id=None,
        parallel_id=None,
        keep_parallel_id=True,
        trigger_rule=TriggerRule.ALL_SUCCESS,
        ram_mem_mb=500,
        ram_mem_mb_lmt=None,
        cpu_millicores=None,
        cpu_millicores_lmt=None,
        gpu_mem_mb=None,
        gpu_mem_mb_lmt=None,
        retries=1,
        retry_delay=timedelta(seconds=30),
        execution_timeout=timedelta(minutes=90),
        max_active_tis_per_dag=None,
        manage_cache=None,
        allow_federated_learning=False,
        whitelist_federated_learning=None,
        delete_input_on_success=False,
        delete_output_on_start=True,
        enable_proxy=False,
        no_proxy=None,
        batch_name=None,
        airflow_workflow_dir=None,
        cmds=None,
        arguments=None,
        env_vars=None,
        image_pull_secrets=None,
        priority_weight=1,
        priority_class_name="kaapana-low-priority",
        startup_timeout_seconds=3600,
        namespace=None,
        image_pull_policy=PULL_POLICY_IMAGES,
        pod_resources=None,
        in_cluster=False,
        cluster_context=None,
        labels=None,
        get_logs=True,
        annotations=None,
        affinity=None,
        config_file=None,
        xcom_push=False,
        node_selectors=None,
        tolerations=None,
        secrets=None,
        kind="Pod",
        pool=None,
        pool_slots=None,
        api_version="v1",
        dev_server=None,
        display_name="-",
        launch_application_chart="",
        **kwargs,
    ):
        KaapanaBaseOperator.set_defaults(
            self, name=name, task_id=task_id, operator_out_dir=operator_out_dir, input_operator=input_operator,
            operator_in_dir=operator_in_dir, parallel_id=parallel_id, keep_parallel_id=keep_parallel_id,
            pool=pool, pool_slots=pool_slots, ram_mem_mb=ram_mem_mb, gpu_mem_mb=gpu_mem_mb,
            allow_federated_learning=allow_federated_learning, batch_name=batch_name,
            airflow_workflow_dir=airflow_workflow_dir, delete_output_on_start=delete_output_on_start,
        )
        if dev_server not in (None, "code-server"):
            raise NameError("dev_server must be either None or code-server!")
        self.image = image
        self.namespace = namespace
        self.cmds = [cmds] if isinstance(cmds, str) else (cmds or [])  # stored, never used (0.6.0)
        self.arguments = [arguments] if isinstance(arguments, str) else (arguments or [])
        self.labels = dict(labels or {})
        self.labels["kaapana.ai/type"] = "processing-container"
        self.image_pull_secrets = image_pull_secrets or []
        self.xcom_push = xcom_push
        self.ram_mem_mb_lmt = ram_mem_mb_lmt
        self.secrets = secrets or []
        self.env_vars = contract.init_env(
            platform=os.environ, services_namespace=str(SERVICES_NAMESPACE), admin_namespace=str(ADMIN_NAMESPACE),
            operator_in_dir=getattr(self, "operator_in_dir", None), has_in_dir=hasattr(self, "operator_in_dir"),
            env_vars=env_vars,
        )
        super().__init__(
            dag=dag, task_id=self.task_id, retries=retries, priority_weight=priority_weight,
            execution_timeout=execution_timeout, max_active_tis_per_dag=max_active_tis_per_dag, pool=self.pool,
            pool_slots=self.pool_slots, retry_delay=retry_delay, trigger_rule=trigger_rule, depends_on_past=False,
            **kwargs,
        )

    @staticmethod
    def set_defaults(obj, name, task_id, operator_out_dir, input_operator, operator_in_dir, parallel_id,
                     keep_parallel_id, pool, pool_slots, ram_mem_mb, gpu_mem_mb, allow_federated_learning,
                     batch_name, airflow_workflow_dir, delete_output_on_start):
        obj.name = name
        obj.task_id = task_id or name
        obj.parallel_id = parallel_id
        obj.batch_name = batch_name if batch_name is not None else BATCH_NAME
        obj.airflow_workflow_dir = airflow_workflow_dir if airflow_workflow_dir is not None else AIRFLOW_WORKFLOW_DIR
        obj.gpu_mem_mb = gpu_mem_mb if GPU_SUPPORT else None
        obj.ram_mem_mb = ram_mem_mb
        obj.delete_output_on_start = False if allow_federated_learning else delete_output_on_start
        if input_operator is not None and obj.parallel_id is None and input_operator.parallel_id is not None \
                and keep_parallel_id:
            obj.parallel_id = input_operator.parallel_id
        if obj.parallel_id is not None:
            obj.task_id = obj.task_id + "-" + obj.parallel_id.lower().replace(" ", "-")
        obj.operator_out_dir = operator_out_dir if operator_out_dir is not None else obj.task_id
        if input_operator is not None and operator_in_dir is not None:
            raise NameError("You need to define either input_operator or operator_in_dir!")
        if input_operator is not None:
            obj.operator_in_dir = input_operator.operator_out_dir
        elif operator_in_dir is not None:
            obj.operator_in_dir = operator_in_dir
        scheduler = Variable.get("enable_job_scheduler", default_var="True").lower() == "true"
        if pool is None:
            if not scheduler and obj.gpu_mem_mb:
                obj.pool, obj.pool_slots = "NODE_GPU_COUNT", 1
            else:
                obj.pool, obj.pool_slots = "NODE_RAM", (ram_mem_mb if ram_mem_mb is not None else 1)
        else:
            obj.pool, obj.pool_slots = pool, pool_slots
        return obj

    def build_pod(self, conf, run_id, dag_id, task_id, secrets):
        env = contract.execute_env(self.env_vars, conf=conf, run_id=run_id, dag_id=dag_id, task_id=task_id,
                                   batch_name=self.batch_name, operator_out_dir=self.operator_out_dir)
        return contract.build_pod(image=self.image, env=env, conf=conf, secrets=secrets)

    def execute(self, context):
        root = os.environ.get("KAAPANA_CONTRACT_WORKFLOW_ROOT")
        if not root:
            raise AirflowException("contract harness: no KAAPANA_CONTRACT_WORKFLOW_ROOT (no cluster)")
        dag_run = context["dag_run"]
        secrets = json.loads(os.environ.get("KAAPANA_CONTRACT_SECRETS", "{}"))
        pod = self.build_pod(dag_run.conf or {}, dag_run.run_id, dag_run.dag_id, context["task_instance"].task_id,
                             secrets)
        outcome = contract.run_pod(pod, Path(root))
        self.log.info("pod exit %s\n%s", outcome.exit_code, outcome.stderr[-4000:])
        if outcome.exit_code == KAAPANA_SKIP_TASK_RUN_RETURN_CODE:
            raise AirflowSkipException(f"Task {self.task_id} was skipped")
        if outcome.exit_code != 0:
            raise AirflowException(f"Processing container failed for task {self.task_id}!")
        return None
