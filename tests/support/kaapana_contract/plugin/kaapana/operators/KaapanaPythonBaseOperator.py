"""Stand-in for Kaapana 0.6.0's ``KaapanaPythonBaseOperator`` (a PythonOperator running ``self.start``)."""

from datetime import timedelta

from airflow.operators.python import PythonOperator

from kaapana.operators.KaapanaBaseOperator import KaapanaBaseOperator


class KaapanaPythonBaseOperator(PythonOperator):
    def __init__(self, dag, name, python_callable, operator_out_dir=None, input_operator=None,
                 operator_in_dir=None, task_id=None, parallel_id=None, keep_parallel_id=True,
                 trigger_rule="all_success", retries=1, retry_delay=timedelta(seconds=30),
                 execution_timeout=timedelta(minutes=30), max_active_tis_per_dag=None, pool=None, pool_slots=None,
                 ram_mem_mb=100, ram_mem_mb_lmt=None, cpu_millicores=None, cpu_millicores_lmt=None, gpu_mem_mb=None,
                 gpu_mem_mb_lmt=None, manage_cache=None, allow_federated_learning=False,
                 whitelist_federated_learning=None, delete_input_on_success=False, delete_output_on_start=True,
                 batch_name=None, airflow_workflow_dir=None, priority_class_name=None, display_name="-", **kwargs):
        KaapanaBaseOperator.set_defaults(
            self, name=name, task_id=task_id, operator_out_dir=operator_out_dir, input_operator=input_operator,
            operator_in_dir=operator_in_dir, parallel_id=parallel_id, keep_parallel_id=keep_parallel_id,
            pool=pool, pool_slots=pool_slots, ram_mem_mb=ram_mem_mb, gpu_mem_mb=gpu_mem_mb,
            allow_federated_learning=allow_federated_learning, batch_name=batch_name,
            airflow_workflow_dir=airflow_workflow_dir, delete_output_on_start=delete_output_on_start,
        )
        super().__init__(dag=dag, task_id=self.task_id, python_callable=python_callable, trigger_rule=trigger_rule,
                         retries=retries, retry_delay=retry_delay, execution_timeout=execution_timeout,
                         max_active_tis_per_dag=max_active_tis_per_dag, pool=self.pool, pool_slots=self.pool_slots,
                         **kwargs)
