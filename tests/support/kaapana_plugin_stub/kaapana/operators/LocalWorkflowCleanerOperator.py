"""Test stand-in for Kaapana's ``LocalWorkflowCleanerOperator``."""

from kaapana.operators.KaapanaBaseOperator import KaapanaBaseOperator


class LocalWorkflowCleanerOperator(KaapanaBaseOperator):
    def __init__(self, dag=None, name="workflow-cleaner", **kwargs):
        super().__init__(dag=dag, name=name, **kwargs)
