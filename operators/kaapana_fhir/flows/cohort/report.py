"""Cohort dashboard job: from a cohort output dir / table or straight from a FHIR server (no Airflow)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaapana_fhir.clients.fhir import redact_url
from kaapana_fhir.clients.protocols import FhirApi, ObjectStoreApi
from kaapana_fhir.core.cohort import report as R
from kaapana_fhir.core.cohort import report_data as RD
from kaapana_fhir.core.cohort import tables as C
from kaapana_fhir.core.limits import load_json_object
from kaapana_fhir.flows.cohort.flow import fetch_and_flatten, load_views

log = logging.getLogger(__name__)


def data_from_table(path: str | Path, *, title: str = "Cohort overview") -> RD.ReportData:
    """Report data from ``cohort.parquet|csv``; ``series.*``, ``studies.*`` and ``cohort_meta.json`` next to
    it are used when present (written by the fhir-cohort job)."""
    p = Path(path)
    table = C.read_table(p)
    sib = {}
    for name in ("series", "studies"):
        for ext in (p.suffix, ".parquet", ".csv"):
            f = p.with_name(f"{name}{ext}")
            if f.is_file():
                sib[name] = C.read_table(f)
                break
    meta_file = p.with_name("cohort_meta.json")
    meta = load_json_object(meta_file, what="the cohort metadata", hint="written by the fhir-cohort job") \
        if meta_file.is_file() else None
    return RD.from_table(table, series=sib.get("series"), studies=sib.get("studies"), meta=meta, title=title,
                         source=p.name)


def data_from_fhir(client: FhirApi, *, patient_search: str | None = None, filters: list[str] | None = None,
                   title: str = "Cohort overview") -> RD.ReportData:
    views = load_views()
    _, rows = fetch_and_flatten(client, views, patient_search=patient_search)
    cohort = C.apply_filters(C.build_cohort(rows), filters or [])
    return RD.from_cohort(cohort, title=title, source=redact_url(client.base_url))


@dataclass
class ReportInfo:
    """The dashboard written: its path and size, seconds to render, patients shown, and where it was uploaded."""

    path: str
    bytes: int
    seconds: float
    patients: int
    bucket: str | None = None
    object_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (CLI output); ``bucket``/``object_key`` only when uploaded."""
        out: dict[str, Any] = {"path": self.path, "bytes": self.bytes, "seconds": self.seconds,
                               "patients": self.patients}
        if self.object_key is not None:
            out.update(bucket=self.bucket, object_key=self.object_key)
        return out


def write_report(data: RD.ReportData, out: str | Path, *, group_by: str | None = None) -> ReportInfo:
    t = time.perf_counter()
    text = R.render(data, group_by=group_by)
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    info = ReportInfo(path=str(p), bytes=p.stat().st_size, seconds=round(time.perf_counter() - t, 3),
                      patients=len(data.patients))
    log.info("report %s: %d bytes for %d patients in %.2fs", p, info.bytes, info.patients, info.seconds)
    return info


def report_job(cohort_dir: str | Path, *, out: str | Path | None = None, store: ObjectStoreApi | None = None,
               bucket: str | None = None,
               prefix: str = "fhir-cohort", group_by: str | None = None, title: str = "Cohort overview",
               ) -> ReportInfo:
    """Render ``<cohort_dir>/cohort.parquet`` (or .csv) to ``report.html`` and optionally upload it."""
    d = Path(cohort_dir)
    table = d / "cohort.parquet" if (d / "cohort.parquet").is_file() else d / "cohort.csv"
    data = data_from_table(table, title=title)
    info = write_report(data, out or d / "report.html", group_by=group_by)
    if store is not None and bucket:
        store.ensure_bucket(bucket)
        key = f"{prefix.strip('/')}/report.html" if prefix.strip("/") else "report.html"
        store.put_bytes(bucket, key, Path(info.path).read_bytes(), content_type="text/html; charset=utf-8")
        info.bucket, info.object_key = bucket, key
    return info
