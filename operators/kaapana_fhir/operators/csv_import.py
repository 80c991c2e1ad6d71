"""Operators of the clinical-table import: :class:`CsvImportOperator` and :class:`FhirImportWatcherOperator`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kaapana_fhir.airflow_compat import BaseOperator


def _conf(context: Any) -> dict[str, Any]:
    """``dag_run.conf`` merged with its Kaapana ``workflow_form`` (UI runs) and the DAG params."""
    dag_run = context.get("dag_run")
    conf = dict(getattr(dag_run, "conf", None) or {})
    merged = dict(context.get("params") or {})
    merged.update({k: v for k, v in conf.items() if k != "workflow_form"})
    merged.update(conf.get("workflow_form") or {})
    return merged


class CsvImportOperator(BaseOperator):
    """Import one clinical table object (CSV, xlsx, REDCap CSV/JSON) from S3/MinIO into FHIR.

    Inputs from ``dag_run.conf`` (or its ``workflow_form``) override the constructor values:
    ``object_key``, ``bucket`` (default: ``project_form.s3_bucket``), ``mapping_key``, ``preset``,
    ``skip_invalid_rows``, ``signature`` (set by the watcher). Writes ``<name>.import-report.json`` beside
    the object and returns a small summary (status, rows, resources per type, rejected rows).

    :param object_key: object key of the table (templated).
    :param bucket: bucket name (templated).
    :param mapping_key: key of a mapping YAML (templated); default ``<name>.mapping.yaml`` beside the object.
    :param preset: preset name ``lung1`` / ``redcap`` (templated).
    :param skip_invalid_rows: import valid rows and report the rest instead of rejecting the file.
    :param fail_on_rejected: raise (the task and its DAG run fail) when the file is rejected, after the report is
        written; default True (issue 17: a rejected file must not show "success").

    ``template_fields``: ``object_key``, ``bucket``, ``mapping_key``, ``preset``.
    """

    template_fields: Sequence[str] = ("object_key", "bucket", "mapping_key", "preset")

    def __init__(self, *, object_key: str = "", bucket: str = "", mapping_key: str = "", preset: str = "",
                 skip_invalid_rows: bool = False, fail_on_rejected: bool = True, fhir_conn_id: str = "fhir_default",
                 s3_conn_id: str = "s3_default", chunk_size: int = 500, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.object_key = object_key
        self.bucket = bucket
        self.mapping_key = mapping_key
        self.preset = preset
        self.skip_invalid_rows = skip_invalid_rows
        self.fail_on_rejected = fail_on_rejected
        self.fhir_conn_id = fhir_conn_id
        self.s3_conn_id = s3_conn_id
        self.chunk_size = chunk_size

    def execute(self, context: Any) -> dict[str, Any]:
        from kaapana_fhir.exceptions import ConfigError, MappingError
        from kaapana_fhir.flows.tables.flow import import_object
        from kaapana_fhir.flows.tables.params import TableImportParams
        from kaapana_fhir.hooks.fhir import FhirHook, ObjectStoreHook, run_project

        conf = _conf(context)
        base = TableImportParams.from_values({
            "object_key": self.object_key, "bucket": self.bucket, "mapping": self.mapping_key,
            "preset": self.preset, "skip_invalid_rows": self.skip_invalid_rows}, "operator arguments")
        # the watcher's confs name the mapping object ``mapping_key``
        params = TableImportParams.from_conf({**conf, "mapping": conf.get("mapping_key") or conf.get("mapping")},
                                             base)
        key = params.object_key
        bucket = (conf.get("bucket") or (conf.get("project_form") or {}).get("s3_bucket") or params.bucket)
        if not key or not bucket:
            raise ConfigError("object_key and bucket are required (conf object_key/bucket or workflow_form)")
        mapping = params.mapping or None
        preset = params.preset or None
        skip = params.skip_invalid_rows
        fhir = FhirHook(self.fhir_conn_id, project=run_project(conf)).get_conn()  # the run's project partition, if any
        rep = import_object(ObjectStoreHook(self.s3_conn_id).get_conn(), fhir,
                            bucket, key, mapping_key=mapping, preset=preset, skip_invalid_rows=skip,
                            signature=conf.get("signature"), chunk_size=self.chunk_size)
        self.log.info("import of %s: %s, rows %s, resources %s", key, rep.status, rep.rows_read,
                      rep.resources_written)
        if rep.status == "rejected" and self.fail_on_rejected:
            raise MappingError(rep.error or f"{key} was rejected")
        return {"object_key": key, "status": rep.status, "rows_read": rep.rows_read or 0,
                "rows_rejected": rep.rows_rejected or 0, "resources": rep.resources_written or {},
                "issues": (rep.rejected or [])[:20], "error": rep.error}


def watch_buckets(store: Any, buckets: str, prefix: str, *, find: Any, **kw: Any) -> list[dict[str, Any]]:
    """The watcher over one or more buckets (comma-separated: one per Kaapana project it is configured for).
    A Kaapana project bucket ``project-<name>`` gives its confs ``project_form`` (name, bucket), as a run started
    in that project would have. A bucket that cannot be read is logged and skipped while others can be read."""
    import logging

    from kaapana_fhir.exceptions import ObjectStoreError

    names = [b.strip() for b in buckets.split(",") if b.strip()]
    confs: list[dict[str, Any]] = []
    errors: list[str] = []
    for name in names:
        try:
            found = find(store, name, prefix, **kw)
        except ObjectStoreError as exc:
            if len(names) == 1:
                raise
            logging.getLogger(__name__).error("watcher: bucket %r skipped: %s", name, exc)
            errors.append(f"{name}: {exc}")
            continue
        if name.startswith("project-"):
            for c in found:
                c.setdefault("project_form", {"name": name[len("project-"):], "s3_bucket": name})
        confs.extend(found)
    if errors and len(errors) == len(names):
        raise ObjectStoreError("; ".join(errors))
    return confs


class FhirImportWatcherOperator(BaseOperator):
    """List new or changed table objects under a prefix (by ETag) and return one import conf per object.

    The returned list feeds ``TriggerDagRunOperator.partial(...).expand(conf=...)``. Objects returned
    are marked ``pending`` in the bucket's ``.kaapana-fhir-state/`` so the next run does not trigger them
    again (see :mod:`kaapana_fhir.flows.tables.watch`).

    :param bucket: bucket to watch (templated; conf ``bucket`` overrides).
    :param prefix: key prefix to watch (templated), default ``fhir-import/``.
    :param default_preset: preset for objects without a mapping or ``.preset`` sidecar (templated).
    :param skip_invalid_rows: passed on to every import.

    ``template_fields``: ``bucket``, ``prefix``, ``default_preset``.
    """

    template_fields: Sequence[str] = ("bucket", "prefix", "default_preset")

    def __init__(self, *, bucket: str = "", prefix: str = "fhir-import/", default_preset: str = "",
                 skip_invalid_rows: bool = False, s3_conn_id: str = "s3_default", max_objects: int = 100,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bucket = bucket
        self.prefix = prefix
        self.default_preset = default_preset
        self.skip_invalid_rows = skip_invalid_rows
        self.s3_conn_id = s3_conn_id
        self.max_objects = max_objects

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from kaapana_fhir.exceptions import ConfigError
        from kaapana_fhir.flows.tables.watch import find_new_objects
        from kaapana_fhir.hooks.fhir import ObjectStoreHook

        conf = _conf(context)
        bucket = conf.get("bucket") or self.bucket
        if not bucket:
            raise ConfigError("the watcher needs a bucket (param/conf 'bucket' or env KAAPANA_FHIR_IMPORT_BUCKET)")
        store = ObjectStoreHook(self.s3_conn_id).get_conn()
        return watch_buckets(store, str(bucket), conf.get("prefix") or self.prefix,
                             default_preset=conf.get("default_preset") or self.default_preset or None,
                             skip_invalid_rows=bool(conf.get("skip_invalid_rows", self.skip_invalid_rows)),
                             max_objects=self.max_objects, find=find_new_objects)


class FhirImportRecordTriggeredOperator(BaseOperator):
    """Record ``pending`` state only for objects whose import trigger succeeded (issue 17).

    Runs after the mapped ``trigger-import`` task (``trigger_rule="all_done"``); reads the watcher's confs and the
    triggered run ids (XCom ``trigger_run_id`` of each mapped trigger), marks the triggered objects ``pending`` and
    fails when a trigger failed, so the watcher run shows it; the missed objects are triggered again next run.
    """

    def __init__(self, *, watch_task_id: str = "find-new-objects", trigger_task_id: str = "trigger-import",
                 s3_conn_id: str = "s3_default", **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.watch_task_id, self.trigger_task_id, self.s3_conn_id = watch_task_id, trigger_task_id, s3_conn_id

    def execute(self, context: Any) -> list[str]:
        from kaapana_fhir.exceptions import FhirServerError
        from kaapana_fhir.flows.tables.watch import record_triggered
        from kaapana_fhir.hooks.fhir import ObjectStoreHook

        ti = context["ti"]
        confs = list(ti.xcom_pull(task_ids=self.watch_task_id) or [])
        if not confs:
            return []
        run_ids = [ti.xcom_pull(task_ids=self.trigger_task_id, key="trigger_run_id", map_indexes=i)
                   for i in range(len(confs))]
        missed = record_triggered(ObjectStoreHook(self.s3_conn_id).get_conn(), confs[0]["bucket"], confs, run_ids)
        if missed:
            raise FhirServerError(f"{len(missed)} import trigger(s) failed ({', '.join(missed[:5])}); no state "
                                  "recorded, the next watcher run triggers them again")
        return [c["object_key"] for c in confs]
