"""``kaapana-fhir kaapana-run [TASK]``: entry point of the ``kaapana-fhir`` processing container.

The image's ``ENTRYPOINT`` is ``kaapana-fhir kaapana-run`` with no task: Kaapana 0.6 starts the pod without
command/args, so the task comes from the pod's env (``KAAPANA_FHIR_TASK`` from our operators' ``env_vars``,
else ``TASK_ID`` / ``DAG_ID``; :func:`kaapana_fhir.kaapana.tasks.select_task`). Naming a task on the command
line (``docker run <image> cohort``) is for manual runs.

Honours Kaapana's container contract (see :mod:`kaapana_fhir.kaapana.env`): reads ``WORKFLOW_DIR``,
``BATCH_NAME``, ``OPERATOR_IN_DIR``, ``OPERATOR_OUT_DIR`` and ``$WORKFLOW_DIR/conf/conf.json``, takes
endpoints (``FHIR_BASE_URL``, ``DICOMWEB_URL``, ``S3_ENDPOINT_URL``/``MINIO_URL``) and tokens from the env,
calls one flow, and writes ``$WORKFLOW_DIR/$OPERATOR_OUT_DIR/kaapana-fhir-result.json``.

Exit codes: 0 done, 126 nothing to do (Kaapana marks the task skipped), 1 failure (message on stderr and
``"status": "failed"`` in the result file).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from kaapana_fhir.exceptions import KaapanaFhirError
from kaapana_fhir.kaapana import env as kaapana_env
from kaapana_fhir.kaapana import tasks as kaapana_tasks

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kaapana-run",
        help="run one flow as a Kaapana processing container "
        "(WORKFLOW_DIR / OPERATOR_IN_DIR / conf.json contract)",
    )
    p.add_argument("task", nargs="?", default=None, choices=sorted(kaapana_tasks.TASKS),
                   help="which flow to run (default: from the env, KAAPANA_FHIR_TASK / TASK_ID / DAG_ID)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    k = kaapana_env.load()
    task = kaapana_tasks.select_task(k.env, args.task)
    started = time.monotonic()
    base: dict[str, Any] = {
        "task": task,
        "run_id": k.run_id,
        "dag_id": k.dag_id,
        "operator_in_dir": k.operator_in_dir,
        "operator_out_dir": k.operator_out_dir,
    }
    log.info(
        "kaapana-run %s: workflow dir %s, batch %s, in %s, out %s",
        task,
        k.workflow_dir,
        k.batch_name,
        k.operator_in_dir,
        k.operator_out_dir,
    )
    try:
        summary = kaapana_tasks.TASKS[task](k)
    except kaapana_tasks.NothingToDo as exc:
        k.write_result(
            {**base, "status": "skipped", "reason": str(exc), "seconds": round(time.monotonic() - started, 3)}
        )
        log.info("nothing to do: %s (exit %s)", exc, kaapana_env.EXIT_NOTHING_TO_DO)
        return kaapana_env.EXIT_NOTHING_TO_DO
    except KaapanaFhirError as exc:
        k.write_result(
            {
                **base,
                "status": "failed",
                "error": str(exc),
                "error_type": type(exc).__name__,
                "seconds": round(time.monotonic() - started, 3),
            }
        )
        raise
    failed = summary.get("failed") or []
    path = k.write_result(
        {
            **base,
            "status": "failed" if failed else "ok",
            "result": summary,
            "seconds": round(time.monotonic() - started, 3),
        }
    )
    if failed:
        log.error(
            "kaapana-run %s: %d item(s) failed, first: %s; details in %s",
            task,
            len(failed),
            failed[0],
            path,
        )
        return 1
    log.info("kaapana-run %s done; result in %s", task, path)
    return 0
