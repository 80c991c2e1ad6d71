"""The tasks of ``kaapana-fhir kaapana-run``: adapt Kaapana's workflow dir / conf to the flows' functions.

Each task takes a :class:`~kaapana_fhir.kaapana.env.KaapanaRun` and returns a JSON-able summary, or raises
:class:`NothingToDo` (exit 126, task skipped) or a :class:`~kaapana_fhir.exceptions.KaapanaFhirError`
(exit 1). A summary with a non-empty ``failed`` list also fails the task.

Inputs per task (parameters: env var ``NAME`` / ``workflow_form.name``, see ``KaapanaRun.param``):

* ``dicom-to-fhir``: DICOM files in ``batch/<series>/$OPERATOR_IN_DIR`` (LocalGetInputDataOperator /
  GetInputOperator / ``fetch_method: copy`` trigger rules) → ``flows.dicom_to_fhir.sync_files``; without
  files, the series/studies of ``data_form.identifiers`` / ``series_uids`` / ``study_uids`` via DICOMweb →
  ``sync_studies``. Options: ``patient_system``, ``timezone``, ``include_instances``.
* ``import-table``: table files (.csv/.tsv/.xlsx/.parquet) in the input dirs, mapping ``mapping`` (YAML path
  relative to the input dir, or YAML text) or ``preset``; else the S3 object ``object_key`` in ``bucket``
  (default: the project's bucket ``project_form.s3_bucket``) → ``flows.table_import``.
* ``radiomics``: SEG series UIDs (batch-element folder names, ``data_form.identifiers``, ``seg_series_uids``)
  → ``flows.radiomics.run_for_series`` (DICOMweb for SEG + referenced image). Options ``settings_preset``,
  ``settings`` (YAML text), ``layout``, ``patient_system``.
* ``cohort``: ``fhir_search`` / ``patient_search`` / ``filters`` / ``views`` (as ``FhirQueryOperator``) →
  ``flows.cohort.run_cohort`` writing the tables into ``$WORKFLOW_DIR/$OPERATOR_OUT_DIR`` (and, when an S3
  endpoint and the project bucket are known, under ``<bucket>/<prefix>``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kaapana_fhir.exceptions import ConfigError, KaapanaFhirError
from kaapana_fhir.kaapana.env import KaapanaRun

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".xlsx", ".parquet")


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

    return FhirClient(k.fhir_base_url(), token=k.fhir_token())


def dicomweb_client(k: KaapanaRun) -> Any:
    from kaapana_fhir.clients.dicomweb import DicomWeb

    return DicomWeb(k.dicomweb_url(), token=_token(k, "DICOMWEB_TOKEN"))


def object_store(k: KaapanaRun) -> Any:
    from kaapana_fhir.clients.s3 import ObjectStore

    access, secret = k.s3_credentials()
    return ObjectStore(k.s3_endpoint(), access, secret)


# ---------------------------------------------------------------------------------------------- tasks
def dicom_to_fhir(k: KaapanaRun) -> dict[str, Any]:
    from kaapana_fhir.core.dicom.mapping import MappingOptions
    from kaapana_fhir.flows.dicom_to_fhir import flow as flow

    opts: dict[str, Any] = {}
    for name in ("patient_system", "timezone", "accession_system"):
        if k.param(name):
            opts[name] = str(k.param(name))
    if k.param("include_instances") is not None:
        opts["include_instances"] = k.flag("include_instances")
    files = k.input_files()
    if files:
        paths = [p for group in files.values() for p in group]
        log.info("dicom-to-fhir: %d files in %d batch elements", len(paths), len(files))
        result = flow.sync_files(paths, fhir_client(k), options=MappingOptions(**opts))
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
            options=MappingOptions(**opts),
            missing=str(k.param("missing", "fail")),
        )
    if not result.get("studies") and not result.get("failed"):
        raise NothingToDo("no DICOM study found in the input")
    result.pop("bundle", None)
    result["issues"] = result.get("issues", [])[:50]
    return result


def _read_mapping(k: KaapanaRun, base: Path) -> str | None:
    value = k.param("mapping")
    if not value:
        return None
    text = str(value)
    path = base / text
    if "\n" not in text and path.is_file():
        return path.read_text(encoding="utf-8")
    return text


def import_table(k: KaapanaRun) -> dict[str, Any]:
    from kaapana_fhir.core.tables import TableRejected, open_table
    from kaapana_fhir.flows.tables import flow as flow

    files = [
        p
        for group in k.input_files(*TABLE_SUFFIXES).values()
        for p in group
        if not p.name.endswith((".mapping.yaml", ".import-report.json"))
    ]
    skip = k.flag("skip_invalid_rows")
    if files:
        client = fhir_client(k)
        reports = []
        for path in files:
            table = open_table(path.read_bytes(), name=path.name)
            mapping = flow.resolve_mapping(
                header=table.header,
                mapping_text=_read_mapping(k, path.parent),
                mapping_name=str(k.param("mapping") or path.name),
                preset=k.param("preset"),
                read_file=lambda rel, base=path.parent: (base / rel).read_text("utf-8"),
            )
            try:
                rep = flow.import_table(table, mapping, client=client, skip_invalid_rows=skip)
            except TableRejected as exc:
                reports.append({"file": path.name, "status": "rejected", "error": str(exc)})
                continue
            reports.append({"file": path.name, **_small(rep)})
        failed = [r for r in reports if r.get("status") == "rejected"]
        return {"tables": reports, "failed": failed}
    key = k.param("object_key")
    if not key:
        raise NothingToDo("no table file under the input dirs and no object_key in the conf")
    bucket = k.project_bucket()
    if not bucket:
        raise ConfigError("import-table needs a bucket: workflow_form.bucket or project_form.s3_bucket")
    rep = flow.import_object(
        object_store(k),
        fhir_client(k),
        str(bucket),
        str(key),
        mapping_key=k.param("mapping_key") or k.param("mapping") or None,
        preset=k.param("preset"),
        skip_invalid_rows=skip,
    )
    out = {"object_key": key, "bucket": bucket, **_small(rep)}
    out["failed"] = [out] if rep.get("status") == "rejected" else []
    return out


def _small(rep: dict[str, Any]) -> dict[str, Any]:
    keep = ("status", "rows_read", "rows_rejected", "resources_written", "error")
    out = {k: rep[k] for k in keep if k in rep}
    out["rejected"] = (rep.get("rejected") or [])[:20]
    return out


def radiomics(k: KaapanaRun) -> dict[str, Any]:
    from kaapana_fhir.flows.radiomics import flow as flow

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
        preset=k.param("settings_preset"),
        settings_override=k.param("settings"),
        layout=str(k.param("layout", "members")),
        patient_system=k.param("patient_system"),
    )
    result["issues"] = result.get("issues", [])[:50]
    return result


def _lines(value: Any) -> list[str]:
    """A list from a list, or text with one item per line or separated by ';' (as the cohort operator)."""
    if value in (None, "", "None"):
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [p.strip() for p in str(value).replace(";", "\n").splitlines() if p.strip()]


def cohort(k: KaapanaRun) -> dict[str, Any]:
    """Same conf keys as ``FhirQueryOperator``: ``fhir_search`` (or ``searches``), ``patient_search``,
    ``filters``, ``views``, ``modality``, ``dataset_name``, ``bucket``, ``prefix``, ``upload``,
    ``page_size``."""
    from kaapana_fhir.flows.cohort import flow as flow

    out_dir = k.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    modality = k.param("modality", "CT")
    kw: dict[str, Any] = {
        "searches": _lines(k.param("fhir_search")) or _lines(k.param("searches")),
        "patient_search": str(k.param("patient_search") or "") or None,
        "filters": _lines(k.param("filters")),
        "view_files": _lines(k.param("views")),
        "modality": str(modality) if modality else None,
        "dataset_name": str(k.param("dataset_name") or "fhir-cohort"),
        "count": int(k.param("page_size", 1000)),
    }
    bucket = k.project_bucket()
    if bucket and k.s3_endpoint() and k.flag("upload", True):
        kw.update(
            store=object_store(k),
            bucket=str(bucket),
            prefix=str(k.param("prefix") or f"fhir-cohort/{k.run_id}"),
        )
    summary = flow.run_cohort(fhir_client(k), out_dir, **kw)
    # The dashboard belongs to the cohort task in Kaapana too (no second container needed).
    from kaapana_fhir.flows.cohort.report import report_job

    rep = report_job(out_dir, store=kw.get("store"), bucket=kw.get("bucket"), prefix=kw.get("prefix", "fhir-cohort"),
                     group_by=str(k.param("group_by") or "") or None)
    summary["report"] = {k2: rep.get(k2) for k2 in ("path", "bucket", "object_key")}
    trigger = str(k.param("trigger_dag_id") or "")
    if trigger:
        summary["trigger_dag_id"] = trigger
    return summary


TASKS: dict[str, Callable[[KaapanaRun], dict[str, Any]]] = {
    "dicom-to-fhir": dicom_to_fhir,
    "import-table": import_table,
    "radiomics": radiomics,
    "cohort": cohort,
}
