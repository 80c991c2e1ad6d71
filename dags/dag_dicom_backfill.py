"""``dicom-backfill``: a whole PACS (or a StudyDate window) → FHIR, fanned out by date window.

The run conf / form gives ``since`` and ``until`` (YYYY-MM-DD), the window length in days, optional modalities
(``CT,MR``) and the folder of the resumable cursors. ``windows`` cuts the range into date windows; Airflow's task
mapping (``.expand``) runs one ``backfill-window`` task per window (at most ``max_active_tis_per_dag`` at once),
each a :func:`kaapana_fhir.flows.dicom_to_fhir.flow.backfill` (QIDO-RS paging, batches, bounded concurrency)
with its own cursor file, so a retried or re-triggered window continues where it stopped and writes nothing
twice. ``summary`` adds up the windows. Connections: ``dicomweb_default`` and ``fhir_default`` (or the env
``DICOMWEB_URL`` / ``FHIR_BASE_URL``).
"""

from __future__ import annotations

from typing import Any

from kaapana_fhir.airflow_compat import Param, task
from kaapana_fhir.kaapana.runtime import workflow_dag

ui_forms: dict[str, Any] = {
    "workflow_form": {
        "type": "object",
        "properties": {
            "since": {"title": "From StudyDate", "description": "First StudyDate (YYYY-MM-DD), inclusive.",
                      "type": "string", "default": "2000-01-01"},
            "until": {"title": "To StudyDate", "description": "Last StudyDate (YYYY-MM-DD), inclusive.",
                      "type": "string", "default": ""},
            "window_days": {"title": "Days per task", "description": "Length of one date window (one task).",
                            "type": "integer", "default": 365},
            "modalities": {"title": "Modalities", "description": "Only studies with these modalities (CT,MR).",
                           "type": "string", "default": ""},
            "cursor_dir": {"title": "Cursor folder",
                           "description": "Where each window's resumable cursor file lives "
                                          "(empty: $AIRFLOW_HOME/kaapana-fhir-backfill).",
                           "type": "string", "default": ""},
        },
    },
}



def _conf(context: dict[str, Any]) -> dict[str, Any]:
    params = dict(context.get("params") or {})
    run = context.get("dag_run")
    conf = dict(getattr(run, "conf", None) or {})
    form = conf.get("workflow_form") or {}
    for source in (conf, form):
        params.update({k: v for k, v in source.items() if k in ui_forms["workflow_form"]["properties"]
                       and v not in (None, "")})
    return params


with workflow_dag(
    "dicom-backfill",
    description="Backfill a whole PACS (or a StudyDate window) into FHIR, one mapped task per date window",
    ui_forms=ui_forms,
    mapped_tasks=True,
    retries=3,
    retry_delay_s=120,
    max_active_runs=1,
    tags=["fhir", "dicom", "backfill"],
    doc_md=__doc__,
    params={
        "since": Param("2000-01-01", type="string"),
        "until": Param("", type="string"),
        "window_days": Param(365, type="integer", minimum=1),
        "modalities": Param("", type="string"),
        "cursor_dir": Param("", type="string"),
    },
) as dag:

    @task(task_id="windows")
    def windows(**context: Any) -> list[dict[str, str]]:
        """The date windows of the run (``since``..``until``, ``window_days`` each; ``until`` empty: today)."""
        from datetime import date

        from kaapana_fhir.flows.dicom_to_fhir.flow import date_windows

        conf = _conf(context)
        return date_windows(conf["since"], conf.get("until") or date.today().isoformat(),
                            int(conf.get("window_days") or 365))

    @task(task_id="backfill-window", max_active_tis_per_dag=2)
    def backfill_window(window: dict[str, str], **context: Any) -> dict[str, Any]:
        """One window through :func:`~kaapana_fhir.flows.dicom_to_fhir.flow.backfill` with its own cursor."""
        import os
        from pathlib import Path

        from kaapana_fhir.cli.dicom_cmd import modalities
        from kaapana_fhir.flows.dicom_to_fhir.flow import backfill
        from kaapana_fhir.hooks.fhir import DicomWebHook, FhirHook

        conf = _conf(context)
        mods = modalities([str(conf.get("modalities") or "")])
        folder = conf.get("cursor_dir") or Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / \
            "kaapana-fhir-backfill"
        cursor = Path(folder) / f"backfill-{window['since']}-{window['until']}-{'-'.join(mods)}.cursor"
        result = backfill(DicomWebHook().get_conn(), FhirHook().get_conn(), since=window["since"],
                          until=window["until"], modalities=mods, cursor=cursor).as_dict()
        summary = {k: result[k] for k in ("listed", "already_done", "studies", "series", "observations",
                                          "issue_count", "pacs_requests", "resources")}
        summary["failed"] = result["failed"][:50]
        summary["window"] = window
        if result["failed"]:  # the retry continues from the cursor and re-tries only the failed studies
            raise RuntimeError(f"{len(result['failed'])} studies failed in {window}: "
                               f"{result['failed'][0]['error'][:300]}")
        return summary

    @task(task_id="summary", trigger_rule="all_done")
    def summary(results: Any) -> dict[str, Any]:
        """Totals over the windows."""
        out: dict[str, Any] = {"windows": 0, "listed": 0, "studies": 0, "series": 0, "issue_count": 0,
                               "resources": {"created": 0, "updated": 0, "unchanged": 0}}
        for r in results or []:
            if not r:
                continue
            out["windows"] += 1
            for k in ("listed", "studies", "series", "issue_count"):
                out[k] += r.get(k, 0)
            for k in out["resources"]:
                out["resources"][k] += (r.get("resources") or {}).get(k, 0)
        return out

    summary(backfill_window.expand(window=windows()))
