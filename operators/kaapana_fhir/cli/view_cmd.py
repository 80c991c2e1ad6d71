"""``kaapana-fhir view``: run or validate any SQL-on-FHIR v2 ViewDefinition.

``kaapana-fhir view run VIEW.json RESOURCES... [--format csv|parquet|json|ndjson] [--out FILE]`` over
NDJSON / Bundle / JSON files, or ``--fhir URL [--search 'params']`` over a FHIR server (the view's resource
type is searched, every page followed and flattened as it arrives). ``kaapana-fhir view validate VIEW.json``
checks a view against the ViewDefinition structure and prints every problem with its JSON path.

Columns written as parts ``name__1``, ``name__2``, ... (the shipped views' fallbacks, see
:mod:`kaapana_fhir.core.cohort.views`) come out as one column ``name`` (the first non-empty part); ``--parts``
keeps the parts as the view defines them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from kaapana_fhir.core.limits import load_json_object
from kaapana_fhir.exceptions import ConfigError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help="run or validate a SQL-on-FHIR v2 ViewDefinition")
    vsub = p.add_subparsers(dest="view_command", metavar="run|validate")
    r = vsub.add_parser("run", help="ViewDefinition + NDJSON/Bundle files or a FHIR server → table")
    r.add_argument("view", metavar="VIEW.json", help="ViewDefinition JSON file (or a shipped view name)")
    r.add_argument("resources", nargs="*", metavar="RESOURCES",
                   help="NDJSON (.ndjson/.jsonl[.gz]), Bundle or resource JSON files")
    r.add_argument("--fhir", default=None, help="FHIR base URL to search instead of files ($FHIR_TOKEN for a "
                                                "bearer token)")
    r.add_argument("--search", default="", metavar="'a=1&b=2'", help="with --fhir: search parameters for the "
                                                                     "view's resource type")
    r.add_argument("--format", default=None, choices=("csv", "parquet", "json", "ndjson"),
                   help="output format (default: from --out suffix, else csv)")
    r.add_argument("--out", default=None, help="output file (default: stdout; required for parquet)")
    r.add_argument("--parts", action="store_true", help="keep columns name__1, name__2, ... as they are (default: "
                                                        "coalesce them into one column name)")
    r.set_defaults(func=run_view_cmd)
    v = vsub.add_parser("validate", help="check a ViewDefinition against the ViewDefinition structure")
    v.add_argument("view", metavar="VIEW.json")
    v.set_defaults(func=validate_view_cmd)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        shipped = Path(__file__).resolve().parents[1] / "data" / "views" / f"{path}.json"
        if not p.suffix and shipped.is_file():
            p = shipped
        else:
            raise ConfigError(f"ViewDefinition file {path!r} does not exist")
    return load_json_object(p, what="a ViewDefinition")


def _server_resources(url: str, resource_type: str, search: str) -> Iterator[dict[str, Any]]:
    from kaapana_fhir.clients.fhir import FhirClient

    try:
        client = FhirClient(url, token=os.environ.get("FHIR_TOKEN") or None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    params = parse_qsl(search.lstrip("?"), keep_blank_values=True)
    if not any(k == "_count" for k, _ in params):
        params.append(("_count", "1000"))
    for page in client.search_pages(resource_type, params):
        for entry in page.get("entry", []):
            res = entry.get("resource")
            if isinstance(res, dict):
                yield res


def run_view_cmd(args: argparse.Namespace) -> int:
    from kaapana_fhir.core.cohort.views import coalesce_plan
    from kaapana_fhir.core.sof import compile_view
    from kaapana_fhir.core.sof.io import iter_resources, write_rows

    view = compile_view(_load(args.view))
    if bool(args.fhir) == bool(args.resources):
        raise ConfigError("give resource files or --fhir URL (one of them)")
    fmt = args.format or (Path(args.out).suffix.lstrip(".").lower() if args.out else "csv")
    if fmt == "jsonl":
        fmt = "ndjson"
    if fmt == "parquet" and not args.out:
        raise ConfigError("--format parquet needs --out FILE.parquet")
    source = _server_resources(args.fhir, view.resource, args.search) if args.fhir else iter_resources(args.resources)
    counter = {"resources": 0}
    plan = None if args.parts else coalesce_plan(view.columns, view.name)
    columns = plan[0] if plan else view.columns

    def rows() -> Iterator[tuple[Any, ...]]:
        for res in source:
            counter["resources"] += 1
            if plan:
                yield from map(plan[1], view.tuples(res))
            else:
                yield from view.tuples(res)

    t = time.perf_counter()
    out: Any = args.out if args.out else sys.stdout
    try:
        n = write_rows(columns, rows(), out, fmt)
    except BrokenPipeError:  # stdout closed early (| head): not an error of the view
        return 0
    log.info("view %s: %d rows from %d resources in %.2fs%s", view.name, n, counter["resources"],
             time.perf_counter() - t, f" → {args.out}" if args.out else "")
    return 0


def validate_view_cmd(args: argparse.Namespace) -> int:
    from kaapana_fhir.core.sof import compile_view, view_problems

    view = _load(args.view)
    problems = view_problems(view)
    for where, msg in problems:
        sys.stderr.write(f"{args.view}: {where or '(view)'}: {msg}\n")
    if problems:
        return 1
    cv = compile_view(view)
    done, total = cv.compiled_share
    sys.stdout.write(json.dumps({"view": cv.name, "resource": cv.resource, "columns": cv.columns,
                                 "compiled_paths": done, "paths": total,
                                 "fhirpathpy_paths": cv.fallback_paths()}) + "\n")
    return 0
