"""Mapping editor: framework-neutral request handling for ``/kaapana-fhir/mapping/`` and ``api/mapping/...``.

The editor works on a table object in the project's bucket (``project-<name>``, see ``KAAPANA_FHIR_EDITOR_BUCKET``)
under the import watcher's prefix (``fhir-import/``). It profiles the table with ``mapping init``
(:mod:`kaapana_fhir.core.tables.init`), lets the user accept or change the suggested codes and units, previews the
FHIR resources of the first rows and the import's own validation (schema, UCUM, ``TODO``/``review`` markers, every
cell with the date window: :func:`kaapana_fhir.core.tables.engine.scan`), and saves ``<name>.mapping.yaml`` beside
the table, where the watcher (:mod:`kaapana_fhir.flows.tables.watch`) finds it and triggers the import.

**The YAML text is the single source of truth.** The browser holds the text; every form change is sent as an edit
(``set`` / ``delete`` at a key path) and applied here to the text with ruamel.yaml's round-trip mode, so comments,
key order, quoting and flow style of untouched parts stay as they were (:func:`apply_edits`). Accepting a
suggestion deletes its ``review:`` key, exactly what a user does by hand in an editor.

Endpoints (below the API prefix; POSTs need ``X-Requested-By: kaapana-fhir`` like the rest of the API):

=========================  ===================================================================================
``GET mapping/tables``      table objects under the prefix, with their mapping and import-report sidecars
``POST mapping/upload``     body = the table's bytes, ``name`` = file name; checked (readable table, size) then
                            stored under the prefix (the watcher waits until a mapping is saved)
``GET mapping/draft``       profile + the saved mapping (or a generated one) + its validation and preview;
                            ``local_codes=1``: generated with local codes for unknown columns (``--local-codes``)
``POST mapping/preview``    body ``{"yaml", "edits"}``: the edited text, its validation and preview
``POST mapping/save``       body ``{"yaml", "edits", "base_etag"}``: saves when the import would accept it
``GET mapping/report``      the import report the import wrote beside the table (or null)
``GET mapping/catalogue``   the code catalogue the suggestions come from (for the code picker)
=========================  ===================================================================================

Settings (environment): ``KAAPANA_FHIR_EDITOR_BUCKET`` (bucket of a project, ``{project}`` is replaced; default
``project-{project}``, Kaapana's project bucket), ``KAAPANA_FHIR_IMPORT_PREFIX`` (else the site setting
``import_watcher_prefix``, else ``fhir-import/``: the watcher's), ``KAAPANA_FHIR_EDITOR_MAX_BYTES`` (largest table,
default :data:`kaapana_fhir.core.limits.MAX_DOCUMENT_BYTES`), ``KAAPANA_FHIR_EDITOR_S3_CONN`` (Airflow connection
of the object store, default ``s3_default``, the watcher's), ``KAAPANA_FHIR_EDITOR_CHECK_ROWS`` (rows the draft and
every preview validate, default 2000, so an edit answers in seconds; **save always validates the whole file**).
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from kaapana_fhir.web import settings as S
from kaapana_fhir.web.api import ApiError, ApiResponse, Query, error

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
#: the page and its files (a fixed list: no path from the request reaches the file system)
FILES = {"mapping.js": STATIC / "mapping.js", "mapping.css": STATIC / "mapping.css"}
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'")

DEFAULT_BUCKET = "project-{project}"
DEFAULT_PREFIX = "fhir-import/"
PREVIEW_ROWS = 3
MAX_ISSUES = 200
MAX_LISTED = 1000
MAX_EDITS = 500
MAX_PATH_DEPTH = 12
MAX_KEY_CHARS = 512
MAX_REPORT_BYTES = 2 * 1024 * 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,150}$")
_CONTENT_TYPES = {".csv": "text/csv", ".tsv": "text/tab-separated-values", ".txt": "text/plain",
                  ".json": "application/json", ".xml": "application/xml",
                  ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


# ---------------------------------------------------------------------- settings
@dataclass(frozen=True)
class EditorSettings:
    bucket_template: str = DEFAULT_BUCKET
    prefix: str = DEFAULT_PREFIX
    max_bytes: int = 16 * 1024 * 1024
    s3_conn_id: str = "s3_default"
    check_rows: int = 2000

    def bucket(self, project: str) -> str:
        """The project's bucket (never a bucket named by the request)."""
        name = self.bucket_template.replace("{project}", project).lower()
        if not _BUCKET_RE.match(name) or ".." in name:
            raise ApiError(400, f"bucket {name!r} of project {project!r} is not a valid bucket name "
                                "(rule: KAAPANA_FHIR_EDITOR_BUCKET gives 3-63 of a-z 0-9 . -)")
        return name


def load_settings(environ: Mapping[str, str] | None = None) -> EditorSettings:
    from kaapana_fhir.core.limits import MAX_DOCUMENT_BYTES

    env = os.environ if environ is None else environ
    prefix = env.get("KAAPANA_FHIR_IMPORT_PREFIX") or ""
    if not prefix and environ is None:
        from kaapana_fhir.kaapana.env import site_settings

        prefix = str(site_settings().get("import_watcher_prefix") or "")
    prefix = prefix or DEFAULT_PREFIX
    if prefix.startswith("/") or any(p in ("..", ".") for p in prefix.split("/")):
        raise S.SettingsError(f"KAAPANA_FHIR_IMPORT_PREFIX={prefix!r}: no '/', '.' or '..' segments at the start")
    if not prefix.endswith("/"):
        prefix += "/"
    try:
        max_bytes = int(env.get("KAAPANA_FHIR_EDITOR_MAX_BYTES", str(MAX_DOCUMENT_BYTES)))
    except ValueError:
        raise S.SettingsError("KAAPANA_FHIR_EDITOR_MAX_BYTES must be a number of bytes") from None
    try:
        check_rows = int(env.get("KAAPANA_FHIR_EDITOR_CHECK_ROWS", "2000"))
    except ValueError:
        raise S.SettingsError("KAAPANA_FHIR_EDITOR_CHECK_ROWS must be a number of rows") from None
    return EditorSettings(env.get("KAAPANA_FHIR_EDITOR_BUCKET") or DEFAULT_BUCKET, prefix,
                          max(1, min(max_bytes, MAX_DOCUMENT_BYTES)), env.get("KAAPANA_FHIR_EDITOR_S3_CONN")
                          or "s3_default", max(1, min(check_rows, 10**7)))


def _default_store(es: EditorSettings) -> Any:
    """The object store of the import watcher (its Airflow connection, else the S3_* environment)."""
    from kaapana_fhir.hooks.fhir import ObjectStoreHook

    return ObjectStoreHook(es.s3_conn_id).get_conn()


# ---------------------------------------------------------------------- keys
def check_key(key: str, prefix: str) -> str:
    """A data object key under ``prefix``: no ``.``/``..`` segments, no NUL or backslash, not a sidecar."""
    from kaapana_fhir.flows.tables.watch import is_data_key

    if not key or len(key) > MAX_KEY_CHARS or "\\" in key or key.startswith("/") or any(
            ord(c) < 32 or ord(c) == 127 for c in key):
        raise ApiError(400, f"object key {key[:80]!r}: empty, too long, absolute or with control characters or "
                            "backslash (rule: a key under the import prefix)")
    if any(p in ("..", ".", "") for p in key.split("/")):
        raise ApiError(400, f"object key {key[:80]!r} has '.', '..' or empty segments (rule: no path traversal)")
    if not key.startswith(prefix):
        raise ApiError(400, f"object key {key[:80]!r} is outside the import prefix {prefix!r} "
                            "(rule: the editor works on the watcher's folder only)")
    if not is_data_key(key):
        raise ApiError(400, f"object key {key[:80]!r} is not a table (rule: .csv, .tsv, .txt, .xlsx, .json or .xml, "
                            "not a sidecar)")
    return key


def upload_key(name: str, prefix: str) -> str:
    """``prefix + name`` for an uploaded file name (a plain file name, no folders)."""
    base = name.strip()
    if not _NAME_RE.match(base) or ".." in base:
        raise ApiError(400, f"file name {name[:80]!r}: letters, digits, space and _ . ( ) + - only, no folders "
                            "(rule: upload file name)")
    return check_key(prefix + base, prefix)


def mapping_key_of(store: Any, bucket: str, key: str) -> tuple[str, str]:
    """(sidecar mapping key, its ETag or "") — the existing ``.mapping.yaml``/``.mapping.yml`` (the watcher's
    choice) or the ``.mapping.yaml`` to create."""
    from kaapana_fhir.flows.tables.watch import sidecars

    side = sidecars(key)
    for k in (side["mapping"], side["mapping_yml"]):
        info = store.head(bucket, k)
        if info is not None:
            return k, info.etag
    return side["mapping"], ""


# ---------------------------------------------------------------------- YAML round trip
def _yaml(text: str) -> Any:
    """A ruamel round-trip YAML instance with the indentation of ``text`` (no line folding)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.util import load_yaml_guess_indent

    try:
        _, ind, bsi = load_yaml_guess_indent(text)
    except Exception:  # noqa: BLE001 - a guess only; any parse problem is reported by the real load below
        ind, bsi = 2, 0
    ind = ind if isinstance(ind, int) and 1 < ind < 10 else 2
    bsi = bsi if isinstance(bsi, int) and 0 <= bsi < ind else 0
    y = YAML(typ="rt")
    y.width = 4096
    y.preserve_quotes = True
    y.indent(mapping=(ind - bsi) if bsi else ind, sequence=ind, offset=bsi)
    y.representer.add_representer(type(None), lambda r, _d: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def _key_matches(k: Any, part: Any) -> bool:
    if isinstance(k, bool) or k is None:
        return json.dumps(k) == str(part).lower() or str(k) == str(part)
    return str(k) == str(part)


def _child_key(node: Any, part: Any, where: str) -> Any:
    if isinstance(node, list):
        if isinstance(part, bool) or not isinstance(part, (int, str)) or not str(part).isdigit():
            raise ApiError(400, f"edit path {where}: {part!r} is not a list index (rule: edit paths)")
        i = int(part)
        if i >= len(node):
            raise ApiError(400, f"edit path {where}: index {i} is out of range ({len(node)} items)")
        return i
    if isinstance(node, dict):
        return next((k for k in node if _key_matches(k, part)), str(part))
    raise ApiError(400, f"edit path {where}: cannot go into a {type(node).__name__} (rule: edit paths)")


def _utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{what}: not valid Unicode text (lone surrogate) (rule: UTF-8 text)") from None


def _str(text: str) -> Any:
    """``text`` as a YAML string for the import's reader too: the import reads YAML 1.1 (PyYAML), the round trip
    writes 1.2, so text that 1.1 reads as another type (``yes``, ``off``, ``0x1F``, ``2020-01-01``) is quoted."""
    import yaml
    from ruamel.yaml.scalarstring import SingleQuotedScalarString

    tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False))
    return text if tag == "tag:yaml.org,2002:str" else SingleQuotedScalarString(text)


def _plain(v: Any, depth: int = 0) -> Any:
    """A JSON edit value as YAML data (bounded depth; strings, numbers, booleans, null, lists, objects)."""
    if depth > MAX_PATH_DEPTH:
        raise ApiError(400, "edit value is nested too deep (rule: at most 12 levels)")
    if v is None or isinstance(v, (bool, int, float, str)):
        if isinstance(v, float) and v != v:
            raise ApiError(400, "edit value NaN is not allowed")
        if isinstance(v, str):
            _utf8(v, "edit value")
            return _str(v)
        return v
    if isinstance(v, list):
        return [_plain(x, depth + 1) for x in v]
    if isinstance(v, dict):
        return {_str(str(k)): _plain(x, depth + 1) for k, x in v.items()}
    raise ApiError(400, f"edit value of type {type(v).__name__} is not allowed")


def apply_edits(text: str, edits: Sequence[Any]) -> str:
    """``text`` with the edits applied, comments and layout of untouched parts kept.

    An edit is ``{"op": "set", "path": [...], "value": v}`` (creates missing mappings on the way) or
    ``{"op": "delete", "path": [...]}`` (a missing key is no error); paths hold keys and list indices.
    """
    if not edits:
        return text
    if not isinstance(edits, list) or len(edits) > MAX_EDITS:
        raise ApiError(400, f"edits must be a list of at most {MAX_EDITS} edits (rule: edits)")
    from ruamel.yaml.error import YAMLError

    from kaapana_fhir.core.limits import LimitError, loads_yaml

    try:
        loads_yaml(text, source="mapping")  # size, depth and alias limits before the round-trip parser sees it
    except LimitError as exc:
        raise ApiError(400, f"cannot apply edits: {exc}") from None
    y = _yaml(text)
    try:
        doc = y.load(text)
    except YAMLError as exc:
        raise ApiError(400, f"cannot apply edits: the YAML does not parse ({str(exc)[:300]})") from None
    if doc is None:
        doc = y.load("{}\n")
    if not isinstance(doc, dict):
        raise ApiError(400, "cannot apply edits: the mapping's top level is not a mapping (rule: type object)")
    for n, e in enumerate(edits):
        if not isinstance(e, dict) or e.get("op") not in ("set", "delete"):
            raise ApiError(400, f"edits[{n}]: an object with op 'set' or 'delete' (rule: edits)")
        path = e.get("path")
        if not isinstance(path, list) or not path or len(path) > MAX_PATH_DEPTH or not all(
                isinstance(p, (str, int)) and not isinstance(p, bool) and len(str(p)) <= 200 for p in path):
            raise ApiError(400, f"edits[{n}].path: 1-{MAX_PATH_DEPTH} keys or indices (rule: edit paths)")
        where = "/".join(map(str, path))
        node: Any = doc
        for part in path[:-1]:
            k = _child_key(node, part, where)
            if isinstance(node, dict) and (k not in node or node[k] is None):
                if e["op"] == "delete":
                    node = None
                    break
                node[k] = {}
            node = node[k]
        if node is None:
            continue
        last = _child_key(node, path[-1], where)
        if isinstance(node, dict) and isinstance(last, str) and last not in node:
            last = _str(last)
        if e["op"] == "delete":
            if isinstance(node, list) or last in node:
                del node[last]
        else:
            node[last] = _plain(e.get("value"))
    out = io.StringIO()
    try:
        y.dump(doc, out)
    except YAMLError as exc:
        raise ApiError(400, f"cannot write the edited YAML: {str(exc)[:300]}") from None
    return out.getvalue()


# ---------------------------------------------------------------------- validation and preview
def _json_safe(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))


def reviews(mapping: Any, path: list[Any] | None = None) -> list[dict[str, Any]]:
    """Every ``review`` marker with its key path (what "Accept" deletes), in document order."""
    path = path or []
    out: list[dict[str, Any]] = []
    if isinstance(mapping, dict):
        for k, v in mapping.items():
            if k == "review":
                out.append({"path": [*path, k], "text": " ".join(str(v).split())[:500]})
            else:
                out.extend(reviews(v, [*path, k]))
    elif isinstance(mapping, list):
        for i, v in enumerate(mapping):
            out.extend(reviews(v, [*path, i]))
    return out


def check(text: str, data: bytes, key: str, *, mapping_key: str = "mapping", rows: int = PREVIEW_ROWS,
          max_rows: int | None = None) -> dict[str, Any]:
    """What the import would say about ``text`` on ``data`` (nothing written) and the resources of the first rows.

    ``schema_errors``: the mapping's schema and rules (units are UCUM, maps exist...); ``pending``: ``TODO`` and
    ``review`` items; ``fatal``: a structural problem (a mapped column missing from the header, no data rows);
    ``issues``: invalid cells (row, column, value, rule; dates outside ``checks``' window) from a scan of the whole
    file (``max_rows``: of the first rows only, ``complete`` says whether that was the whole file); ``ready``:
    nothing found (the import would accept it when ``complete``).
    """
    from kaapana_fhir.core.limits import LimitError, loads_yaml
    from kaapana_fhir.core.tables.build import TableMapper, is_empty_row
    from kaapana_fhir.core.tables.engine import check_ready, scan
    from kaapana_fhir.core.tables.mapping import load_mapping, validate_mapping
    from kaapana_fhir.core.tables.reader import Table, open_table
    from kaapana_fhir.exceptions import ConfigError, MappingError

    out: dict[str, Any] = {"yaml": text, "mapping": None, "schema_errors": [], "pending": [], "fatal": None,
                           "issues": [], "issue_count": 0, "rows_read": 0, "resources": {}, "preview": [],
                           "reviews": [], "complete": False, "ready": False}
    try:
        parsed = loads_yaml(text, source=mapping_key)
    except LimitError as exc:
        out["schema_errors"] = [str(exc)]
        return out
    out["mapping"] = _json_safe(parsed) if isinstance(parsed, dict) else None
    out["reviews"] = reviews(out["mapping"]) if out["mapping"] else []
    out["schema_errors"] = validate_mapping(parsed, source=mapping_key)
    if out["schema_errors"]:
        return out
    try:
        m = load_mapping(text, source=mapping_key)
        try:
            check_ready(m)
        except ConfigError as exc:
            out["pending"] = list(getattr(exc, "items", [str(exc)]))
        src = m.get("source") or {}
        table = open_table(data, name=key, fmt=src.get("format", "auto"), delimiter=src.get("delimiter"),
                           encoding=src.get("encoding"), sheet=src.get("sheet"))
        mapper = TableMapper(m, table_name=key)
        sample = table
        if max_rows is not None:
            sample = Table(table.name, table.header, lambda: islice(table.rows(), max_rows), table.encoding,
                           table.delimiter)
        scanned = scan(sample, mapper, require_ready=False)
    except (MappingError, ConfigError) as exc:
        out["fatal"] = str(exc)
        return out
    try:
        out["rows_read"] = scanned.rows_read
        out["complete"] = max_rows is None or scanned.rows_read + scanned.empty_rows < max_rows
        out["issue_count"] = scanned.issue_count
        out["issues"] = [i.as_dict() for i in scanned.issues[:MAX_ISSUES]]
        out["resources"] = dict(scanned.resources)
        preview: list[dict[str, Any]] = []
        for n, row in table.rows():
            if len(preview) >= rows:
                break
            if is_empty_row(row):
                continue
            mapped, issues = mapper.map_row(n, row)
            res = [] if mapped is None else [mapper.patient(mapped.patient_key, mapped.patient_fields),
                                             *mapped.resources]
            preview.append({"row": n, "resources": res, "issues": [i.as_dict() for i in issues]})
        out["preview"] = _json_safe(preview)
    finally:
        scanned.index.db.close()
    out["ready"] = not out["pending"] and not out["issue_count"]
    return out


def profile(data: bytes, key: str, *, local_codes: bool = False) -> dict[str, Any]:
    """The column profile and the generated mapping of ``mapping init`` (tables are profiled once; ODM files take
    init's ODM route; ``local_codes`` as ``mapping init --local-codes``)."""
    from kaapana_fhir.core.tables import suggest
    from kaapana_fhir.core.tables.init import init_mapping
    from kaapana_fhir.core.tables.reader import guess_format, open_table

    table = open_table(data, name=key)
    profiles, nrows = suggest.profile_table(table)
    if guess_format(key, data[:512]) == "odm":
        init = init_mapping(data, name=key)
        text, report, notes = init.yaml, init.report, init.notes
    else:  # init_mapping's table route on the profiles just made
        report = suggest.profile_report(profiles, nrows)
        text = suggest.to_yaml(suggest.suggest_mapping(table, profiles=profiles, nrows=nrows,
                                                       local_codes=local_codes), report=report)
        notes = []
    return {"rows": nrows, "columns": [p.as_dict() for p in profiles], "report": report, "notes": notes,
            "generated_yaml": text}


# ---------------------------------------------------------------------- endpoints
@dataclass
class Ctx:
    es: EditorSettings
    store: Any
    project: str
    bucket: str
    q: Query


def _resp(obj: Any, status: int = 200) -> ApiResponse:
    return ApiResponse(status, json.dumps(obj, allow_nan=False, default=str).encode(), "application/json",
                       {"Cache-Control": "no-store"})


def _read_object(ctx: Ctx, key: str, max_bytes: int, what: str) -> bytes:
    from kaapana_fhir.core.limits import LimitError, check_size

    info = ctx.store.head(ctx.bucket, key)
    if info is None:
        raise ApiError(404, f"{what} s3://{ctx.bucket}/{key} not found")
    try:
        check_size(int(info.size or 0), f"s3://{ctx.bucket}/{key}", max_bytes)
    except LimitError as exc:
        raise ApiError(413, str(exc)) from None
    data = ctx.store.get_bytes(ctx.bucket, key)
    if len(data) > max_bytes:
        raise ApiError(413, f"s3://{ctx.bucket}/{key}: at most {max_bytes} bytes (rule: editor size limit)")
    return bytes(data)


def _body_json(body: bytes) -> dict[str, Any]:
    from kaapana_fhir.core.limits import MAX_YAML_BYTES, LimitError, loads_json

    try:
        doc = loads_json(body or b"{}", source="request body", max_bytes=4 * MAX_YAML_BYTES)
    except LimitError as exc:
        raise ApiError(400, str(exc)) from None
    if not isinstance(doc, dict):
        raise ApiError(400, "request body: a JSON object {\"yaml\": ..., \"edits\": [...]} (rule: body)")
    yaml_text = doc.get("yaml")
    if not isinstance(yaml_text, str):
        raise ApiError(400, "request body: 'yaml' must be the mapping's YAML text (rule: body)")
    _utf8(yaml_text, "mapping YAML")
    if len(yaml_text.encode("utf-8")) > MAX_YAML_BYTES:
        raise ApiError(413, f"mapping YAML: at most {MAX_YAML_BYTES} bytes (rule: YAML size limit)")
    edits = doc.get("edits")
    edits = [] if edits is None else edits
    if not isinstance(edits, list):
        raise ApiError(400, "request body: 'edits' must be a list (rule: body)")
    base = doc.get("base_etag")
    if base is not None and not isinstance(base, str):
        raise ApiError(400, "request body: 'base_etag' must be a string (rule: body)")
    return {"yaml": yaml_text, "edits": edits, "base_etag": base}


def ep_tables(ctx: Ctx) -> ApiResponse:
    from kaapana_fhir.flows.tables.watch import is_data_key, sidecars

    infos = {}
    for i, info in enumerate(ctx.store.list(ctx.bucket, ctx.es.prefix)):
        if i >= 20 * MAX_LISTED:
            break
        infos[info.key] = info
    tables: list[dict[str, Any]] = []
    for key in sorted(k for k in infos if is_data_key(k)):
        if len(tables) >= MAX_LISTED:
            break
        side = sidecars(key)
        mk = side["mapping"] if side["mapping"] in infos else (side["mapping_yml"] if side["mapping_yml"] in infos
                                                                else None)
        info = infos[key]
        tables.append({"key": key, "size": int(info.size or 0), "etag": info.etag,
                       "last_modified": str(info.last_modified or ""), "mapping_key": mk,
                       "preset": side["preset"] in infos, "report": side["report"] in infos})
    return _resp({"project": ctx.project, "bucket": ctx.bucket, "prefix": ctx.es.prefix, "tables": tables})


def ep_upload(ctx: Ctx, body: bytes) -> ApiResponse:
    from kaapana_fhir.core.tables.reader import open_table
    from kaapana_fhir.exceptions import ConfigError, MappingError

    key = upload_key(ctx.q.get("name"), ctx.es.prefix)
    if len(body) > ctx.es.max_bytes:
        raise ApiError(413, f"upload {key}: {len(body)} bytes; at most {ctx.es.max_bytes} (rule: editor size limit)")
    if not body:
        raise ApiError(400, f"upload {key}: the body is empty (rule: send the table's bytes)")
    replace = ctx.q.get("replace", "false").lower() in ("1", "true", "yes")
    if not replace and ctx.store.head(ctx.bucket, key) is not None:
        raise ApiError(409, f"s3://{ctx.bucket}/{key} exists (rule: pass replace=true to overwrite it)")
    try:
        table = open_table(body, name=key)
        if not [h for h in table.header if h]:
            raise MappingError(f"{key}: row 1: no column names (rule: a table has a header row)")
    except (MappingError, ConfigError) as exc:
        raise ApiError(400, f"not a readable table: {exc}") from None
    ext = posixpath.splitext(key)[1].lower()
    etag = ctx.store.put_bytes(ctx.bucket, key, body, _CONTENT_TYPES.get(ext, "application/octet-stream"))
    log.info("mapping editor: uploaded s3://%s/%s (%d bytes)", ctx.bucket, key, len(body))
    return _resp({"project": ctx.project, "bucket": ctx.bucket, "key": key, "etag": etag, "size": len(body)}, 201)


def ep_draft(ctx: Ctx) -> ApiResponse:
    from kaapana_fhir.core.limits import MAX_YAML_BYTES
    from kaapana_fhir.exceptions import ConfigError, MappingError

    key = check_key(ctx.q.get("key"), ctx.es.prefix)
    data = _read_object(ctx, key, ctx.es.max_bytes, "table")
    mkey, etag = mapping_key_of(ctx.store, ctx.bucket, key)
    try:
        prof = profile(data, key, local_codes=ctx.q.get("local_codes", "") in ("1", "true"))
    except (MappingError, ConfigError) as exc:
        raise ApiError(400, f"cannot profile {key}: {exc}") from None
    if etag:
        text = _read_object(ctx, mkey, MAX_YAML_BYTES, "mapping").decode("utf-8-sig", "replace")
        source = "saved"
    else:
        text, source = prof["generated_yaml"], "generated"
    res = check(text, data, key, mapping_key=mkey, max_rows=ctx.es.check_rows)
    return _resp({"project": ctx.project, "bucket": ctx.bucket, "key": key, "mapping_key": mkey,
                  "mapping_etag": etag, "source": source, "profile": {k: v for k, v in prof.items()
                                                                      if k != "generated_yaml"}, **res})


def ep_preview(ctx: Ctx, body: bytes, *, save: bool = False) -> ApiResponse:
    key = check_key(ctx.q.get("key"), ctx.es.prefix)
    req = _body_json(body)
    text = apply_edits(req["yaml"], req["edits"])
    data = _read_object(ctx, key, ctx.es.max_bytes, "table")
    mkey, etag = mapping_key_of(ctx.store, ctx.bucket, key)
    res = check(text, data, key, mapping_key=mkey, max_rows=None if save else ctx.es.check_rows)
    out: dict[str, Any] = {"project": ctx.project, "bucket": ctx.bucket, "key": key, "mapping_key": mkey,
                           "mapping_etag": etag, **res}
    if not save:
        return _resp(out)
    if req["base_etag"] is not None and req["base_etag"] != etag:
        return _resp({**out, "error": f"s3://{ctx.bucket}/{mkey} changed since it was loaded (ETag "
                                      f"{etag or 'none'} instead of {req['base_etag'] or 'none'}); reload it "
                                      "(rule: no lost updates)", "status": 409, "saved": False}, 409)
    if not res["ready"]:
        why = ("schema errors" if res["schema_errors"] else res["fatal"] and "a structural problem"
               or res["pending"] and f"{len(res['pending'])} TODO/review item(s)"
               or f"{res['issue_count']} invalid cell(s)")
        return _resp({**out, "error": f"not saved: the import would refuse this mapping ({why})",
                      "status": 409, "saved": False}, 409)
    new_etag = ctx.store.put_bytes(ctx.bucket, mkey, text.encode("utf-8"), "application/yaml")
    log.info("mapping editor: saved s3://%s/%s for %s", ctx.bucket, mkey, key)
    return _resp({**out, "mapping_etag": new_etag, "saved": True,
                  "watcher": {"dag_id": "fhir-import-watcher", "bucket": ctx.bucket, "prefix": ctx.es.prefix}})


def ep_report(ctx: Ctx) -> ApiResponse:
    from kaapana_fhir.core.limits import LimitError, loads_json
    from kaapana_fhir.flows.tables.watch import sidecars

    key = check_key(ctx.q.get("key"), ctx.es.prefix)
    rkey = sidecars(key)["report"]
    if ctx.store.head(ctx.bucket, rkey) is None:
        return _resp({"key": key, "report_key": rkey, "report": None})
    raw = _read_object(ctx, rkey, MAX_REPORT_BYTES, "import report")
    try:
        rep = loads_json(raw, source=f"s3://{ctx.bucket}/{rkey}", max_bytes=MAX_REPORT_BYTES)
    except LimitError as exc:
        raise ApiError(502, f"import report unreadable: {exc}") from None
    return _resp({"key": key, "report_key": rkey, "report": rep if isinstance(rep, dict) else None})


def ep_catalogue() -> ApiResponse:
    from kaapana_fhir.core.tables.suggest import catalogue

    out = []
    for e in catalogue():
        if "code" not in e or "value" not in e:
            continue
        out.append({"id": e["id"], "code": e["code"], "value": {k: v for k, v in e["value"].items()
                                                                 if k in ("type", "unit", "unmapped", "system")},
                    "names": list(e.get("names", []))[:6]})
    return _resp({"entries": _json_safe(out)})


ROUTES = {("GET", "tables"), ("GET", "draft"), ("GET", "report"), ("GET", "catalogue"), ("POST", "upload"),
          ("POST", "preview"), ("POST", "save")}


def owns(path: str) -> bool:
    """True for API paths this module answers (``mapping`` and below)."""
    parts = [p for p in path.strip("/").split("/") if p]
    return bool(parts) and parts[0] == "mapping"


def handle(method: str, path: str, query: Sequence[tuple[str, str]] | Mapping[str, Any] = (), body: bytes = b"",
           *, headers: Mapping[str, str] | None = None, st: S.WebSettings | None = None,
           es: EditorSettings | None = None, store: Any = None,
           store_factory: Callable[[EditorSettings], Any] | None = None) -> ApiResponse:
    """Answer ``method api/<path>?query`` for the editor's endpoints (``path`` starts with ``mapping/``)."""
    from kaapana_fhir.exceptions import BucketNotFound, ConfigError, KaapanaFhirError, ObjectStoreError

    method = method.upper()
    try:
        parts = [p for p in path.strip("/").split("/") if p]
        name = parts[1] if len(parts) == 2 else ""
        verb = "GET" if method == "HEAD" else method
        if (verb, name) not in ROUTES:
            known = {n for _, n in ROUTES}
            if name in known:
                raise ApiError(405, f"method {method} is not allowed on api/mapping/{name}")
            raise ApiError(404, f"no such endpoint: api/{'/'.join(parts)}")
        if verb == "POST":
            hdr = {k.lower(): v for k, v in (headers or {}).items()}
            if hdr.get("x-requested-by") != "kaapana-fhir":
                raise ApiError(403, "POST needs the header X-Requested-By: kaapana-fhir")
        if name == "catalogue":
            return ep_catalogue()
        q = Query(query)
        st = st or S.load()
        project = st.check_project(q.get("project") or None)
        es = es or load_settings()
        bucket = es.bucket(project)
        try:
            store = store if store is not None else (store_factory or _default_store)(es)
        except ConfigError as exc:
            raise ApiError(503, f"object store not configured: {exc}") from None
        ctx = Ctx(es, store, project, bucket, q)
        if name == "tables":
            return ep_tables(ctx)
        if name == "upload":
            return ep_upload(ctx, body)
        if name == "draft":
            return ep_draft(ctx)
        if name == "report":
            return ep_report(ctx)
        return ep_preview(ctx, body, save=name == "save")
    except ApiError as exc:
        return error(exc.status, exc.message)
    except S.SettingsError as exc:
        return error(404 if "not configured" in str(exc) else 400, str(exc))
    except BucketNotFound as exc:  # the project has no bucket (yet): a configuration matter, not a failure
        return error(404, f"object store: {exc}")
    except ObjectStoreError as exc:
        log.warning("mapping editor %s %s: %s", method, path, exc)
        return error(502, f"object store: {exc}")
    except ConfigError as exc:
        return error(400, str(exc))
    except KaapanaFhirError as exc:
        return error(400, str(exc))
    except Exception as exc:  # noqa: BLE001 - the API answers 500 with the type, the log has the trace
        log.exception("mapping editor %s %s failed", method, path)
        return error(500, f"internal error ({exc.__class__.__name__}); see the server log")


# ---------------------------------------------------------------------- page
def page() -> ApiResponse:
    return ApiResponse(200, (STATIC / "mapping.html").read_bytes(), _TYPES[".html"],
                       {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                        "Cache-Control": "no-store"})


def static(name: str) -> ApiResponse:
    p = FILES.get(name)
    if p is None:
        return ApiResponse(404, b"not found", "text/plain")
    return ApiResponse(200, p.read_bytes(), _TYPES[p.suffix],
                       {"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=300"})


__all__ = ["EditorSettings", "apply_edits", "check", "check_key", "handle", "load_settings", "owns", "page",
           "profile", "static", "upload_key"]
