"""``kaapana-fhir cohort`` (FHIR → cohort table) and ``kaapana-fhir report`` (cohort → HTML dashboard)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from kaapana_fhir.exceptions import ConfigError
from kaapana_fhir.flows.cohort.params import CohortEngine

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cohort", help="FHIR searches + ViewDefinitions → cohort table (.parquet or .csv)")
    p.add_argument("--fhir", default=os.environ.get("FHIR_BASE_URL"), help="FHIR base URL (default $FHIR_BASE_URL)")
    p.add_argument("--search", action="append", default=[], metavar="'Type?params'",
                   help="a FHIR search (repeatable; _include/_revinclude, chained and _has pass through)")
    p.add_argument("--patients", default=None, metavar="'Patient?params'",
                   help="select patients with this search and fetch their data (default: all patients)")
    p.add_argument("--view", action="append", default=[], metavar="V.json",
                   help="extra ViewDefinition file (repeatable); its table is written beside the output")
    p.add_argument("--where", action="append", default=[], metavar="COND",
                   help="filter (repeatable, AND; ';' separates conditions), e.g. 'Histology=adenocarcinoma; "
                        "Overall.Stage in IIIa,IIIb' 'age_at_study>=60' 'Condition~NSCLC' "
                        "'loinc_29463_7_body_weight_kg>=150 [lb_av]' (numbers may carry a UCUM unit)")
    p.add_argument("--bulk", default=None, metavar="FOLDER",
                   help="read all patients' data with FHIR Bulk Data $export into FOLDER (NDJSON; a re-run with the "
                        "same folder resumes) instead of paging searches; select with --where")
    p.add_argument("--ndjson", default=None, metavar="FOLDER",
                   help="read NDJSON files already on disk (an earlier export, '<Type>.ndjson') instead of a server")
    p.add_argument("--engine", default="ours", choices=[e.value for e in CohortEngine],
                   help="who runs the ViewDefinitions: our SQL-on-FHIR runner in this process (default) or Pathling "
                        "on Spark (needs --bulk or --ndjson; installed by .ci/install-pathling.sh) for cohorts that "
                        "outgrow one process")
    p.add_argument("--modality", default="CT", help="series modality of the dataset (default CT; '' = all)")
    p.add_argument("--dataset", default=None, metavar="dataset.json",
                   help="write the Kaapana dataset {data_form: {identifiers}} here")
    p.add_argument("--out", required=True, help="cohort table: cohort.parquet or cohort.csv")
    p.set_defaults(func=run_cohort_cmd)

    r = sub.add_parser("report", help="self-contained HTML cohort dashboard")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--fhir", help="FHIR base URL (fetch and join the cohort first)")
    src.add_argument("--cohort", help="a cohort.parquet / cohort.csv (series/studies tables beside it are used)")
    r.add_argument("--patients", default=None, help="with --fhir: a Patient?... search selecting the patients")
    r.add_argument("--where", action="append", default=[], help="with --fhir: filters as for `cohort`")
    r.add_argument("--group-by", default=None, help="clinical variable to group radiomics by (e.g. Overall.Stage)")
    r.add_argument("--title", default="Cohort overview")
    r.add_argument("--out", required=True, help="report.html")
    r.set_defaults(func=run_report_cmd)


def _client(url: str | None):
    from kaapana_fhir.clients.fhir import FhirClient

    if not url:
        raise ConfigError("--fhir URL (or FHIR_BASE_URL) is required")
    try:
        return FhirClient(url, token=os.environ.get("FHIR_TOKEN") or None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def run_cohort_cmd(args: argparse.Namespace) -> int:
    from kaapana_fhir.core.cohort import tables as C
    from kaapana_fhir.flows.cohort.flow import run_cohort

    out = Path(args.out)
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise ConfigError(f"--out {args.out!r}: use a .parquet or .csv file name")
    from kaapana_fhir.core.limits import check_output_paths

    outputs: dict[str, str | Path] = {"--out": out, "cohort_meta.json": out.with_name("cohort_meta.json")}
    outputs |= {f"{name} table": out.with_name(f"{name}{out.suffix}")
                for name in ("series", "studies", "data_dictionary")}
    if args.dataset:
        outputs["--dataset"] = args.dataset
    inputs = {f"--view {v}": v for v in args.view}
    check_output_paths(outputs, inputs)  # before anything is fetched or written
    work = Path(tempfile.mkdtemp(prefix="kaapana-fhir-cohort-"))
    client = None if args.ndjson and not args.fhir else _client(args.fhir)
    summary = run_cohort(client, work, searches=args.search, patient_search=args.patients,
                         view_files=args.view, filters=args.where, modality=args.modality or None,
                         formats=("parquet",), bulk_folder=args.bulk, ndjson_folder=args.ndjson, engine=args.engine)
    table = C.read_table(work / "cohort.parquet")
    outputs |= {f"{name} view table": out.with_name(f"{out.stem}.{name}{out.suffix}") for name in summary.rows
                if name not in C.VIEW_NAMES and (work / f"{name}.parquet").is_file()}
    check_output_paths(outputs, inputs)
    if out.suffix.lower() == ".parquet":  # keep the labels and the data dictionary in the Parquet metadata
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes((work / "cohort.parquet").read_bytes())
    else:
        C.write_table(table, out)
    for name in summary.rows:
        if name not in C.VIEW_NAMES and (work / f"{name}.parquet").is_file():
            C.write_table(C.read_table(work / f"{name}.parquet"), out.with_name(f"{out.stem}.{name}{out.suffix}"))
    for name in ("series", "studies", "data_dictionary"):
        C.write_table(C.read_table(work / f"{name}.parquet"), out.with_name(f"{name}{out.suffix}"))
    (out.with_name("cohort_meta.json")).write_text((work / "cohort_meta.json").read_text())
    if args.dataset:
        Path(args.dataset).write_text(json.dumps(summary.dataset, indent=1), encoding="utf-8")
    log.info("wrote %s: %d rows (%d of %d patients), %d series UIDs", out, len(table), summary.selected_patients,
             summary.patients, summary.series_uids)
    shown = ("patients", "selected_patients", "series_uids", "rows", "dropped")
    full = summary.as_dict()
    sys.stdout.write(json.dumps({k: full[k] for k in shown}) + "\n")
    return 0


def run_report_cmd(args: argparse.Namespace) -> int:
    from kaapana_fhir.flows.cohort.report import data_from_fhir, data_from_table, write_report

    if args.cohort:
        data = data_from_table(args.cohort, title=args.title)
    else:
        data = data_from_fhir(_client(args.fhir), patient_search=args.patients, filters=args.where, title=args.title)
    info = write_report(data, args.out, group_by=args.group_by)
    sys.stdout.write(json.dumps(info.as_dict()) + "\n")
    return 0
