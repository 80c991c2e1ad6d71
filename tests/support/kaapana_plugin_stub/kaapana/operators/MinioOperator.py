"""Test stand-in for Kaapana's ``MinioOperator``."""

from kaapana.operators.KaapanaBaseOperator import KaapanaBaseOperator


class MinioOperator(KaapanaBaseOperator):
    def __init__(self, dag=None, name="transfer-files-with-minio", **kwargs):
        super().__init__(dag=dag, name=name, **kwargs)
