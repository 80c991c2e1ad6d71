"""``kaapana-fhir mapping init FILE`` and ``kaapana-fhir import-table FILE``: clinical tables → FHIR.

``mapping init [FILE] [--redcap DICT [--project NAME]] [-o M.yaml]``: profile a table (CSV, xlsx, REDCap export,
CDISC ODM XML) or derive from a REDCap dictionary; guesses are marked ``review:``, unknown codes ``TODO``.
``import-table (FILE | --redcap-url URL [--redcap-token-conn CONN_ID] [--project NAME]) (--mapping M.yaml |
--preset lung1|redcap|odm [--dictionary DD.csv]) (--fhir URL [--plan] [--workers N|auto] | --out bundle.json)
[--empty-cells keep|retract] [--patient-conflicts keep|replace|fail] [--skip-invalid-rows] [--report R.json]
[--rejected-csv R.csv]``. The whole file is validated first; invalid cells reject it (exit 1, report lists
row/column/value/rule) unless --skip-invalid-rows; a mapping with TODO/review left is refused. With --redcap-url
the records, data dictionary and project info are pulled through the REDCap API (PyCap; token from an Airflow
Connection or KAAPANA_FHIR_REDCAP_TOKEN, see :mod:`kaapana_fhir.flows.tables.redcap_api`). See
docs/tutorial-tables.md and docs/mapping-reference.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

from kaapana_fhir.exceptions import ConfigError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mapping", help="table mapping tools (init)")
    p.add_argument("action", choices=["init"])
    p.add_argument("file", nargs="?", help="CSV / xlsx / REDCap export / CDISC ODM XML to derive a mapping from "
                                           "(optional with --redcap)")
    p.add_argument("--redcap", metavar="DICT", help="REDCap data dictionary CSV: derive the mapping from it")
    p.add_argument("--project", help="REDCap project name for identifier/code systems (default: from DICT's name)")
    p.add_argument("--local-codes", action="store_true",
                   help="give columns the catalogue does not know codes of a project-local code system "
                        "(urn:kaapana-fhir:CodeSystem:local:NAME) instead of TODO placeholders; replace them with "
                        "LOINC/SNOMED codes later and re-import (ids stay the same)")
    p.add_argument("-o", "--output", help="write the YAML here (default: stdout)")
    p.set_defaults(func=run_mapping)

    q = sub.add_parser("import-table", help="import a clinical table (CSV, xlsx, REDCap) into FHIR")
    q.add_argument("file", nargs="?", help="the table file (not with --redcap-url)")
    src = q.add_mutually_exclusive_group()
    src.add_argument("--mapping", help="mapping YAML")
    src.add_argument("--preset", help="shipped preset: lung1, redcap (needs --dictionary) or odm (from the file)")
    q.add_argument("--dictionary", help="REDCap data dictionary CSV (with --preset redcap)")
    q.add_argument("--redcap-url", help="pull records, data dictionary and project info from this REDCap API "
                   "(https://HOST/api/) instead of a file; preset redcap unless --mapping is given")
    q.add_argument("--redcap-token-conn", metavar="CONN_ID", help="Airflow Connection holding the REDCap API token "
                   "as its password (and the API URL as its host); default: the environment variable "
                   "KAAPANA_FHIR_REDCAP_TOKEN")
    q.add_argument("--project", help="with --redcap-url: project name for identifier/code systems (default: the "
                   "project title in CamelCase, as on REDCap's export file names)")
    dst = q.add_mutually_exclusive_group(required=True)
    dst.add_argument("--fhir", help="FHIR base URL to write to")
    dst.add_argument("--out", help="write one transaction Bundle JSON instead")
    q.add_argument("--skip-invalid-rows", action="store_true", help="import valid rows, report the rest")
    q.add_argument("--report", help="write the import report JSON here")
    q.add_argument("--rejected-csv", help="write rejected cells as CSV (formula-like cells escaped)")
    q.add_argument("--chunk-size", type=int, default=500, help="entries per transaction (default 500)")
    q.add_argument("--plan", action="store_true", help="with --fhir: print what would be created, updated, left "
                                                       "unchanged or retracted per resource type; write nothing")
    q.add_argument("--workers", default="auto", help="parallel transaction chunks, 1-32 (default auto: the first "
                   "chunks probe 1, 2, 4, 8 streams and the fastest is kept; logged and in the report)")
    q.add_argument("--empty-cells", choices=["keep", "retract"], help="cells that became empty: keep the old "
                   "Observation or retract it (status entered-in-error); overrides the mapping's empty_cells")
    q.add_argument("--patient-conflicts", choices=["keep", "replace", "fail"], help="a Patient value another source "
                   "(another file, DICOM) set differently: keep it, replace it, or refuse the import; overrides the "
                   "mapping's patient_conflicts (default keep)")
    q.set_defaults(func=run_import)


def _existing(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: file not found (rule: FILE must be a readable file)")
    return p


def _read(path: str) -> bytes:
    return _existing(path).read_bytes()


def run_mapping(args: argparse.Namespace) -> int:
    from kaapana_fhir.core.tables.init import init_mapping

    dictionary = _read(args.redcap).decode("utf-8-sig", errors="replace") if args.redcap else None
    res = init_mapping(_read(args.file) if args.file else None, name=Path(args.file or args.redcap or "").name,
                       dictionary=dictionary, dictionary_name=Path(args.redcap or "").name, project=args.project,
                       local_codes=args.local_codes)
    for line in res.report.splitlines():
        log.info("%s", line)
    for note in res.notes:
        log.info("note: %s", note)
    if args.output:
        Path(args.output).write_text(res.yaml, encoding="utf-8")
    else:
        sys.stdout.write(res.yaml)
    log.info("%d item(s) to fill in or confirm (TODO / review:) before import-table accepts the mapping%s",
             len(res.todo), f"; edit {args.output}" if args.output else "")
    return 0


def write_rejected_csv(path: str, rejected: list[dict[str, Any]]) -> None:
    from kaapana_fhir.core.tables.values import escape_csv_cell

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "column", "value", "rule"])
        for r in rejected:
            w.writerow([r["row"], escape_csv_cell(str(r["column"])), escape_csv_cell(str(r["value"])),
                        escape_csv_cell(str(r["rule"]))])


def run_import(args: argparse.Namespace) -> int:
    from kaapana_fhir.clients.fhir import FhirClient
    from kaapana_fhir.core.limits import check_output_paths, read_beside
    from kaapana_fhir.core.tables import TableRejected, load_mapping, open_table
    from kaapana_fhir.flows.tables.flow import AutoWorkers, import_table, resolve_mapping

    if bool(args.file) == bool(args.redcap_url or args.redcap_token_conn):
        raise ConfigError("import-table needs a FILE or --redcap-url/--redcap-token-conn, not both (rule: one source)")
    if not (args.mapping or args.preset or args.redcap_url or args.redcap_token_conn):
        raise ConfigError("no mapping: give --mapping M.yaml or --preset (rule: mapping or preset required)")
    check_output_paths({"--out": args.out, "--report": args.report, "--rejected-csv": args.rejected_csv},
                       {"table": args.file, "--mapping": args.mapping, "--dictionary": args.dictionary})
    file_name = Path(args.file).name if args.file else ""
    data: bytes | Path
    if args.file:
        data = _existing(args.file)  # read by path: the table streams (constant memory for any size)
        dictionary = _read(args.dictionary).decode("utf-8-sig", errors="replace") if args.dictionary else None
    else:
        data, dictionary, file_name, project = _pull_redcap(args)
        if not args.mapping:
            args.preset = args.preset or "redcap"
    mapping_text = None
    src: dict[str, Any] = {}
    if args.mapping:
        mapping_text = _read(args.mapping).decode("utf-8-sig")
        base = Path(args.mapping).parent
        src = load_mapping(mapping_text, source=args.mapping,
                           read_file=lambda rel: read_beside(base, rel, what="map_file")).get("source", {})
    table = open_table(data, name=file_name, fmt=src.get("format", "auto") if args.file else "json",
                       delimiter=src.get("delimiter"), encoding=src.get("encoding"), sheet=src.get("sheet"))
    base = Path(args.mapping).parent if args.mapping else Path(".")
    mapping = resolve_mapping(header=table.header, mapping_text=mapping_text, mapping_name=args.mapping or "",
                              preset=args.preset, dictionary_text=dictionary,
                              read_file=lambda rel: read_beside(base, rel, what="map_file"),
                              table_name=file_name, data=data,
                              project=None if args.file else project)
    client = FhirClient(args.fhir) if args.fhir else None
    if args.empty_cells:
        mapping["empty_cells"] = args.empty_cells
    if args.patient_conflicts:
        mapping["patient_conflicts"] = args.patient_conflicts
    workers: int | AutoWorkers = (AutoWorkers() if client else 1) if args.workers == "auto" else \
        _workers(args.workers)
    try:
        if args.plan:
            from kaapana_fhir.flows.tables.plan import format_plan, plan_table

            if client is None:
                raise ConfigError("--plan compares with a live server (rule: --plan needs --fhir)")
            plan = plan_table(table, mapping, client, skip_invalid_rows=args.skip_invalid_rows)
            _outputs(args, plan.as_dict())
            sys.stdout.write(format_plan(plan) + "\n")
            return 0
        rep = import_table(table, mapping, client=client, out_path=args.out, skip_invalid_rows=args.skip_invalid_rows,
                           chunk_size=args.chunk_size, workers=workers)
    except TableRejected as exc:
        _outputs(args, exc.report)
        raise
    _outputs(args, rep.as_dict())
    log.info("%s: %d rows read, %d rejected, written %s", file_name, rep.rows_read, rep.rows_rejected,
             rep.resources_written)
    return 0


#: most parallel transaction chunks accepted from --workers
MAX_WORKERS = 32


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_WORKERS:
        raise ConfigError(f"--workers {text!r}: not a number from 1 to {MAX_WORKERS} or 'auto' (rule: --workers)")
    return n


def _pull_redcap(args: argparse.Namespace) -> tuple[bytes, str, str, str]:
    """Records JSON, dictionary (metadata JSON), table name and project name pulled through the REDCap API."""
    from kaapana_fhir.flows.tables import redcap_api

    url = args.redcap_url
    if args.redcap_token_conn:
        try:
            from airflow.hooks.base import BaseHook
        except ImportError:
            raise ConfigError(f"--redcap-token-conn {args.redcap_token_conn!r} needs Airflow to read the Connection "
                              f"(rule: without Airflow set {redcap_api.TOKEN_ENV})") from None
        conn = BaseHook.get_connection(args.redcap_token_conn)
        token, conn_url = redcap_api.token_from_connection(conn.password, conn.host, conn.port,
                                                           args.redcap_token_conn)
        url = url or conn_url
    else:
        token = redcap_api.token_from_env()
    if not url:
        raise ConfigError("no REDCap API URL: --redcap-url or a host in the Connection (rule: the API address)")
    export = redcap_api.fetch_export(url, token, project=args.project)
    return export.records_json(), export.dictionary_text(), export.table_name, export.project


def _outputs(args: argparse.Namespace, rep: dict[str, Any]) -> None:
    if args.report:
        Path(args.report).write_text(json.dumps(rep, indent=1), encoding="utf-8")
    if args.rejected_csv:
        write_rejected_csv(args.rejected_csv, rep.get("rejected", []))
    for r in rep.get("rejected", [])[:10]:
        log.warning("row %s, column %r, value %r: %s", r["row"], r["column"], r["value"][:60], r["rule"])
