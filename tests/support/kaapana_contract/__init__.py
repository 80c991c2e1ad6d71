"""Contract harness: Kaapana 0.6.0's processing-container contract, rebuilt from reading its source.

Replaces the old ``kaapana_plugin_stub`` (which recorded ``cmds`` and so hid that Kaapana 0.6 never uses
them). Facts only, no Kaapana code (Kaapana is AGPL-3.0); every rule names the Kaapana file it comes from in
``docs/kaapana.md``:

* :mod:`.pod` builds a pod the way ``KaapanaBaseOperator`` (``__init__`` + ``execute``) and ``task_api``'s
  ``KubernetesRunner`` do (no command/args; env order and overrides; secrets; the conf ConfigMap at
  ``$WORKFLOW_DIR/conf/conf.json``) and runs **our real image command** (ENTRYPOINT + CMD parsed from the
  processing Dockerfile) as a subprocess with exactly that env; exit 126 → skipped, other non-zero → failed.
* ``plugin/`` stands in for Kaapana's Airflow plugin (``kaapana.operators.*``,
  ``kaapana.blueprints.kaapana_global_variables``) with the signatures and parse-time behaviour read from
  0.6.0, for DAG-parse tests and for running our operators' ``execute`` through :mod:`.pod`.
"""

from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent / "plugin"
