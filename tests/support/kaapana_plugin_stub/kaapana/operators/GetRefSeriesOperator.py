"""Test stand-in for Kaapana's ``GetRefSeriesOperator``."""

from kaapana.operators.KaapanaBaseOperator import KaapanaBaseOperator


class GetRefSeriesOperator(KaapanaBaseOperator):
    def __init__(self, dag=None, name="get-ref-series", **kwargs):
        super().__init__(dag=dag, name=name, **kwargs)
