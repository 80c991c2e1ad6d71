"""Test stand-in for Kaapana's ``LocalGetInputDataOperator``."""

from kaapana.operators.KaapanaBaseOperator import KaapanaBaseOperator


class LocalGetInputDataOperator(KaapanaBaseOperator):
    def __init__(self, dag=None, name="get-input-data", **kwargs):
        super().__init__(dag=dag, name=name, **kwargs)
