"""Test stand-in for Kaapana's ``DcmConverterOperator``."""

from kaapana.operators.KaapanaBaseOperator import KaapanaBaseOperator


class DcmConverterOperator(KaapanaBaseOperator):
    def __init__(self, dag=None, name="dcm-converter", **kwargs):
        super().__init__(dag=dag, name=name, **kwargs)
