"""Load a DagBag in a fresh interpreter and print a JSON summary (used by the DAG-image layout tests).

Usage: python dagbag_probe.py DAGS_DIR [BLOCKED_TOP_LEVEL_MODULES_COMMA_SEPARATED]

Blocked modules raise ImportError when imported (to emulate an Airflow image that lacks them).
"""

from __future__ import annotations

import importlib.abc
import json
import sys


class _Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001
        if fullname.split(".")[0] in self.names:
            raise ImportError(f"{fullname} is not installed in Kaapana's Airflow image (blocked by the test)")
        return None


def main() -> None:
    dags_dir = sys.argv[1]
    blocked = {n for n in (sys.argv[2] if len(sys.argv) > 2 else "").split(",") if n}
    if blocked:
        sys.meta_path.insert(0, _Blocker(blocked))
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3.1+

        bag = DagBag(dag_folder=dags_dir)
    except ImportError:
        from airflow.models import DagBag

        bag = DagBag(dag_folder=dags_dir, include_examples=False)
    import kaapana_fhir

    dags = {}
    for dag_id, dag in bag.dags.items():
        tasks = {}
        for t in dag.tasks:
            cls = type(t)
            tasks[t.task_id] = {
                "class": f"{cls.__module__}.{cls.__name__}",
                "mro": [f"{c.__module__}.{c.__name__}" for c in cls.__mro__],
                "image": getattr(t, "image", None),
                "env_vars": getattr(t, "env_vars", None)
                if isinstance(getattr(t, "env_vars", None), dict)
                else None,
                "arguments": getattr(t, "arguments", None),
                "cmds": getattr(t, "cmds", None),
                "image_pull_secrets": getattr(t, "image_pull_secrets", None),
                "downstream": sorted(t.downstream_task_ids),
            }
        dags[dag_id] = {"fileloc": dag.fileloc, "tasks": tasks}
    sys.stdout.write(
        json.dumps(
            {
                "import_errors": {k: str(v)[-3000:] for k, v in bag.import_errors.items()},
                "dags": dags,
                "kaapana_fhir_file": kaapana_fhir.__file__,
                "loaded_blocked": sorted(n for n in sys.modules if n.split(".")[0] in blocked),
                "loaded_modules": sorted({n.split(".")[0] for n in sys.modules}),
            },
            default=str,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
