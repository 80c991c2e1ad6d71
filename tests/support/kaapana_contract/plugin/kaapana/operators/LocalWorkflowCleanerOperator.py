"""Stand-in for Kaapana 0.6.0's ``LocalWorkflowCleanerOperator`` (a container operator, image
``workflow-cleaner``, name ``workflow-cleaner``)."""

from kaapana.blueprints.kaapana_global_variables import DEFAULT_REGISTRY, KAAPANA_BUILD_VERSION
from kaapana.operators.KaapanaBaseOperator import KaapanaBaseOperator


class LocalWorkflowCleanerOperator(KaapanaBaseOperator):
    def __init__(self, dag, clean_workflow_dir: bool = True, **kwargs):
        self.clean_workflow_dir = clean_workflow_dir
        super().__init__(dag=dag, image=f"{DEFAULT_REGISTRY}/workflow-cleaner:{KAAPANA_BUILD_VERSION}",
                         name="workflow-cleaner", image_pull_secrets=["registry-secret"], **kwargs)

    def execute(self, context):
        return None
