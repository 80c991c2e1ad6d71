"""The tasks of ``kaapana-fhir kaapana-run``: adapt Kaapana's workflow dir / conf to the flows' functions.

Each task takes a :class:`~kaapana_fhir.kaapana.env.KaapanaRun` and returns a JSON-able summary, or raises
:class:`NothingToDo` (exit 126, task skipped) or a :class:`~kaapana_fhir.exceptions.KaapanaFhirError`
(exit 1). A summary with a non-empty ``failed`` list also fails the task.

Which task runs is decided from the pod's env (:func:`select_task`), never from a command: Kaapana 0.6
starts processing containers without command/args (``task_api`` ``KubernetesRunner``), so the image's
``ENTRYPOINT`` (``kaapana-fhir kaapana-run``, no task) always runs.

Parameters: one typed ``Params`` per flow (``flows/<flow>/params.py``) built by
``Params.from_container(conf, env)``: defaults < flat conf keys < env ``KEY`` (operator ``env_vars`` and
Kaapana's upper-cased ``workflow_form`` copies) < ``workflow_form``.

Inputs per task:

* ``dicom-to-fhir``: DICOM files in ``batch/<series>/$OPERATOR_IN_DIR`` (LocalGetInputDataOperator /
  GetInputOperator / ``fetch_method: copy`` trigger rules) → ``flows.dicom_to_fhir.sync_files``; without
  files, the series/studies of ``data_form.identifiers`` / ``series_uids`` / ``study_uids`` via DICOMweb →
  ``sync_studies``. Options: :class:`~kaapana_fhir.flows.dicom_to_fhir.params.DicomToFhirParams`.
* ``import-table``: table files (.csv/.tsv/.xlsx/.parquet) in the input dirs, mapping ``mapping`` (YAML path
  relative to the input dir, or YAML text) or ``preset``; else the S3 object ``object_key`` in ``bucket``
  (default: the project's bucket ``project_form.s3_bucket``) → ``flows.table_import``.
* ``radiomics``: SEG series UIDs (batch-element folder names, ``data_form.identifiers``, ``seg_series_uids``)
  → ``flows.radiomics.run_for_series`` (DICOMweb for SEG + referenced image). Options ``settings_preset``,
  ``settings`` (YAML text), ``layout``, ``patient_system``.
* ``cohort``: ``fhir_search`` / ``patient_search`` / ``filters`` / ``views`` (as ``FhirQueryOperator``) →
  ``flows.cohort.run_cohort`` writing the tables into ``$WORKFLOW_DIR/$OPERATOR_OUT_DIR`` (and, when an S3
  endpoint and the project bucket are known, under ``<bucket>/<prefix>``) and, when ``trigger_dag_id`` is
  set, ``downstream.json`` there (read by the DAG's local ``read-downstream`` task: container operators push
  no XCom).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kaapana_fhir.core.limits import read_beside
from kaapana_fhir.exceptions import ConfigError, KaapanaFhirError
from kaapana_fhir.kaapana.container_env import TASK_ENV
from kaapana_fhir.kaapana.env import KaapanaRun

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".xlsx", ".parquet")
#: default task ids / operator names (``name`` of the Kaapana operators, task ids of our DAGs) → task;
#: a ``-<parallel_id>`` suffix is allowed. Used only when ``KAAPANA_FHIR_TASK`` is missing.
TASK_IDS: dict[str, str] = {
    "dicom-to-fhir": "dicom-to-fhir",
    "fhir-table-import": "import-table",
    "import-table": "import-table",
    "radiomics-to-fhir": "radiomics",
    "fhir-cohort": "cohort",
    "fhir-query": "cohort",
}
#: our DAG ids → task (last resort)
DAG_IDS: dict[str, str] = {
    "dicom-to-fhir": "dicom-to-fhir",
    "fhir-table-import": "import-table",
    "radiomics-to-fhir": "radiomics",
    "fhir-cohort": "cohort",
}


class NothingToDo(KaapanaFhirError):
    """No input for this task in this run (Kaapana: exit 126 → task skipped)."""


def _list(value: Any) -> list[str]:
    if value in (None, "", "None"):
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]
    return [str(v) for v in value]


def _token(k: KaapanaRun, specific: str) -> str | None:
    """Bearer token: ``<SPECIFIC>_TOKEN`` / ``KAAPANA_ACCESS_TOKEN`` env, else Kaapana's project user
    (Keycloak password grant: ``KAAPANA_PROJECT_USER_NAME`` / ``_PASSWORD``, ``KAAPANA_CLIENT_SECRET``)."""
    tok = k.env.get(specific) or k.env.get("KAAPANA_ACCESS_TOKEN")
    if tok:
        return tok
    user, pw = k.env.get("KAAPANA_PROJECT_USER_NAME"), k.env.get("KAAPANA_PROJECT_USER_PASSWORD")
    kc = k.env.get("KEYCLOAK_URL")
    if not (user and pw and kc):
        return None
    import requests

    url = f"{kc.rstrip('/')}/auth/realms/kaapana/protocol/openid-connect/token"
    try:
        resp = requests.post(
            url,
            data={
                "grant_type": "password",
                "client_id": "kaapana",
                "username": user,
                "password": pw,
                "client_secret": k.env.get("KAAPANA_CLIENT_SECRET", ""),
            },
            timeout=30,
        )
    except requests.RequestException as exc:
        raise ConfigError(
            f"cannot reach Keycloak at {url} for the project user's token: {type(exc).__name__}"
        ) from None
    if resp.status_code != 200:
        raise ConfigError(
            f"Keycloak {url} refused the project user's token request (HTTP {resp.status_code})"
        )
    return str(resp.json().get("access_token") or "") or None


def fhir_client(k: KaapanaRun) -> Any:
    from kaapana_fhir.clients.fhir import FhirClient

    client = FhirClient(k.fhir_base_url(), token=k.fhir_token())
    # per-project FHIR data (HAPI partition <base>/<project>), the rule of hooks.fhir.run_project: conf "project";
    # with KAAPANA_FHIR_PARTITIONING=url Kaapana's project_form.name, for triggered runs the admin project
    project = str(k.conf.get("project") or "").strip() or None
    if project is None and str(k.env.get("KAAPANA_FHIR_PARTITIONING", "none")).strip().lower() == "url":
        project = str(k.project_form.get("name") or "admin")
    return client.for_project(project)


def dicomweb_client(k: KaapanaRun) -> Any:
    from kaapana_fhir.clients.dicomweb import DicomWeb

    return DicomWeb(k.dicomweb_url(), token=_token(k, "DICOMWEB_TOKEN"))


def object_store(k: KaapanaRun) -> Any:
    from kaapana_fhir.clients.s3 import ObjectStore

    return ObjectStore(k.s3_endpoint(), credentials=k.s3_credentials())


# ---------------------------------------------------------------------------------------------- tasks
def select_task(env: Mapping[str, str], requested: str | None = None) -> str:
    """The task of this container run.

    ``requested`` (a task named on the command line, e.g. ``docker run <image> cohort``) wins; else
    ``KAAPANA_FHIR_TASK`` (set by our operators' ``env_vars``); else ``TASK_ID`` (a default operator name /
    task id of our DAGs, optionally with ``-<parallel_id>``); else ``DAG_ID``. A requested task that
    contradicts ``KAAPANA_FHIR_TASK`` is a ConfigError (the pod would run the wrong flow).
    """
    from_env = (env.get(TASK_ENV) or "").strip()
    if from_env and from_env not in TASKS:
        raise ConfigError(f"{TASK_ENV}={from_env!r}: expected one of {', '.join(sorted(TASKS))}")
    if requested:
        if requested not in TASKS:
            raise ConfigError(f"task {requested!r}: expected one of {', '.join(sorted(TASKS))}")
        if from_env and from_env != requested:
            raise ConfigError(f"task {requested!r} on the command line contradicts {TASK_ENV}={from_env!r}")
        return requested
    if from_env:
        return from_env
    task_id = (env.get("TASK_ID") or "").strip()
    for name in sorted(TASK_IDS, key=len, reverse=True):
        if task_id == name or task_id.startswith(name + "-"):
            return TASK_IDS[name]
    dag_id = (env.get("DAG_ID") or "").strip()
    if dag_id in DAG_IDS:
        return DAG_IDS[dag_id]
    raise ConfigError(
        f"cannot tell which flow to run: no {TASK_ENV} (set by the kaapana-fhir operators), TASK_ID={task_id!r} "
        f"and DAG_ID={dag_id!r} are not ours; set {TASK_ENV} to one of {', '.join(sorted(TASKS))}"
    )


def dicom_to_fhir(k: KaapanaRun) -> dict[str, Any]:
    from kaapana_fhir.flows.dicom_to_fhir import flow as flow
    from kaapana_fhir.flows.dicom_to_fhir.params import DicomToFhirParams

    params = DicomToFhirParams.from_container(k.conf, k.env)
    options = params.mapping_options()
    files = k.input_files()
    if files:
        paths = [p for group in files.values() for p in group]
        log.info("dicom-to-fhir: %d files in %d batch elements", len(paths), len(files))
        result = flow.sync_files(paths, fhir_client(k), options=options)
    else:
        series = list(dict.fromkeys(k.series_identifiers() + _list(k.param("series_uids"))))
        studies = _list(k.param("study_uids")) + _list(k.conf.get("studyInstanceUID"))
        if not series and not studies:
            raise NothingToDo("no DICOM files under the input dirs and no series/study UIDs in the conf")
        log.info("dicom-to-fhir: %d series, %d studies via DICOMweb", len(series), len(studies))
        result = flow.sync_studies(
            dicomweb_client(k),
            fhir_client(k),
            series_uids=series,
            study_uids=studies,
            options=options,
            wado=params.wado,
            missing=params.missing_series,
        )
    if not result.studies and not result.failed:
        raise NothingToDo("no DICOM study found in the input")
    return {**result.as_dict(max_issues=50), "params": params.changed()}


def _read_mapping(value: str, base: Path) -> str | None:
    if not value:
        return None
    path = base / value
    if "\n" not in value and path.is_file():
        return path.read_text(encoding="utf-8")
    return value


def import_table(k: KaapanaRun) -> dict[str, Any]:
    from kaapana_fhir.core.tables import TableRejected, open_table
    from kaapana_fhir.flows.tables import flow as flow
    from kaapana_fhir.flows.tables.params import TableImportParams

    params = TableImportParams.from_container(k.conf, k.env)
    files = [
        p
        for group in k.input_files(*TABLE_SUFFIXES).values()
        for p in group
        if not p.name.endswith((".mapping.yaml", ".import-report.json"))
    ]
    if files:
        client = fhir_client(k)
        reports = []
        for path in files:
            table = open_table(path, name=path.name)  # by path: the table streams
            mapping = flow.resolve_mapping(
                header=table.header,
                mapping_text=_read_mapping(params.mapping, path.parent),
                mapping_name=params.mapping or path.name,
                preset=params.preset or None,
                read_file=lambda rel, base=path.parent: read_beside(base, rel, what="map_file"),
            )
            try:
                rep = flow.import_table(table, mapping, client=client, skip_invalid_rows=params.skip_invalid_rows)
            except TableRejected as exc:
                reports.append({"file": path.name, "status": "rejected", "error": str(exc)})
                continue
            reports.append({"file": path.name, **_small(rep.as_dict())})
        failed = [r for r in reports if r.get("status") == "rejected"]
        return {"tables": reports, "failed": failed, "params": params.changed()}
    if not params.object_key:
        raise NothingToDo("no table file under the input dirs and no object_key in the conf")
    bucket = params.bucket or k.project_bucket()
    if not bucket:
        raise ConfigError("import-table needs a bucket: workflow_form.bucket or project_form.s3_bucket")
    rep = flow.import_object(
        object_store(k),
        fhir_client(k),
        str(bucket),
        params.object_key,
        mapping_key=params.mapping or None,
        preset=params.preset or None,
        skip_invalid_rows=params.skip_invalid_rows,
    )
    out = {"object_key": params.object_key, "bucket": bucket, **_small(rep.as_dict())}
    out["failed"] = [dict(out)] if rep.status == "rejected" else []
    out["params"] = params.changed()
    return out


def _small(rep: dict[str, Any]) -> dict[str, Any]:
    keep = ("status", "rows_read", "rows_rejected", "resources_written", "error")
    out = {k: rep[k] for k in keep if k in rep}
    out["rejected"] = (rep.get("rejected") or [])[:20]
    return out


def radiomics(k: KaapanaRun) -> dict[str, Any]:
    from kaapana_fhir.flows.radiomics import flow as flow
    from kaapana_fhir.flows.radiomics.params import RadiomicsParams

    params = RadiomicsParams.from_container(k.conf, k.env)
    # batch elements (folder name = SeriesInstanceUID) that hold input files: a copied SEG series
    seg_uids = (
        [key for key in k.input_files() if key] + k.series_identifiers() + _list(k.param("seg_series_uids"))
    )
    seg_uids = list(dict.fromkeys(seg_uids))
    if not seg_uids:
        raise NothingToDo("no SEG series (batch elements, data_form.identifiers or seg_series_uids)")
    result = flow.run_for_series(
        dicomweb_client(k),
        fhir_client(k),
        seg_uids,
        preset=params.settings_preset,
        settings_override=params.settings or None,
        layout=params.layout,
        patient_system=params.patient_system,
    )
    return {**result.as_dict(max_issues=50), "params": params.changed()}


#: written by the cohort task into ``$WORKFLOW_DIR/$OPERATOR_OUT_DIR`` when a downstream workflow is named
DOWNSTREAM_FILE = "downstream.json"


def cohort(k: KaapanaRun) -> dict[str, Any]:
    """Same parameters as ``FhirQueryOperator`` (:class:`~kaapana_fhir.flows.cohort.params.CohortParams`)."""
    import json

    from kaapana_fhir.flows.cohort import flow as flow
    from kaapana_fhir.flows.cohort.params import CohortParams
    from kaapana_fhir.flows.cohort.report import report_job

    params = CohortParams.from_container(k.conf, k.env)
    out_dir = k.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    kw: dict[str, Any] = {
        "searches": list(params.fhir_search),
        "patient_search": params.patient_search or None,
        "filters": list(params.filters),
        "view_files": list(params.views),
        "modality": params.modality or None,
        "dataset_name": params.dataset_name,
        "count": params.page_size,
        "engine": params.engine,
    }
    bucket = params.bucket or k.project_bucket()
    if bucket and k.s3_endpoint() and params.upload:
        kw.update(store=object_store(k), bucket=str(bucket), prefix=params.prefix or f"fhir-cohort/{k.run_id}")
    summary = flow.run_cohort(fhir_client(k), out_dir, **kw).as_dict()
    # The dashboard belongs to the cohort task in Kaapana too (no second container needed).
    rep = report_job(out_dir, store=kw.get("store"), bucket=kw.get("bucket"), prefix=kw.get("prefix", "fhir-cohort"),
                     group_by=params.group_by or None)
    summary["report"] = {"path": rep.path, "bucket": rep.bucket, "object_key": rep.object_key}
    if params.trigger_dag_id:
        trigger_conf: dict[str, Any] = dict(summary["dataset"])
        if k.project_form:
            trigger_conf["project_form"] = k.project_form
        (out_dir / DOWNSTREAM_FILE).write_text(
            json.dumps({"trigger_dag_id": params.trigger_dag_id, "conf": trigger_conf}, indent=1), encoding="utf-8"
        )
        summary["trigger_dag_id"] = params.trigger_dag_id
    summary["params"] = {key: list(v) if isinstance(v, tuple) else v for key, v in params.changed().items()}
    return summary


TASKS: dict[str, Callable[[KaapanaRun], dict[str, Any]]] = {
    "dicom-to-fhir": dicom_to_fhir,
    "import-table": import_table,
    "radiomics": radiomics,
    "cohort": cohort,
}
