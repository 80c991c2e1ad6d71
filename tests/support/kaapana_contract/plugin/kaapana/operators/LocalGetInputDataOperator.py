"""Stand-in for Kaapana 0.6.0's ``LocalGetInputDataOperator`` (signature; ``start`` leaves data as it is, as
the real one does for confs without ``data_form``)."""

from kaapana.operators.KaapanaPythonBaseOperator import KaapanaPythonBaseOperator


class LocalGetInputDataOperator(KaapanaPythonBaseOperator):
    def __init__(self, dag, name="get-input-data", data_type="dicom", data_form=None, check_modality=False,
                 dataset_limit=None, parallel_downloads=3, include_custom_tag_property="",
                 exclude_custom_tag_property="", batch_name=None, **kwargs):
        self.data_type = data_type
        self.data_form = data_form
        super().__init__(dag=dag, name=name, batch_name=batch_name, python_callable=self.start, **kwargs)

    def start(self, ds=None, **kwargs):
        return None
