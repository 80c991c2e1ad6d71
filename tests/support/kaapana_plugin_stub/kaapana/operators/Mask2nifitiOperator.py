"""Test stand-in for Kaapana's ``Mask2nifitiOperator``."""

from kaapana.operators.KaapanaBaseOperator import KaapanaBaseOperator


class Mask2nifitiOperator(KaapanaBaseOperator):
    def __init__(self, dag=None, name="mask2nifti", **kwargs):
        super().__init__(dag=dag, name=name, **kwargs)
