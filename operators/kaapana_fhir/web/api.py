"""Retrieval API: framework-neutral request handling (no Flask, no FastAPI, no Airflow).

:func:`handle` takes a method, a path below ``/api/`` and the query parameters and returns an
:class:`ApiResponse`; the Flask (Airflow 2) and FastAPI (Airflow 3) adapters only authenticate and translate.
The spec is ``openapi.yaml`` beside this file (served at ``api/openapi.yaml``).

Data comes from the FHIR server (project base URL, see :mod:`.settings`): the cohort is fetched and
flattened with the shipped ViewDefinitions (:mod:`kaapana_fhir.flows.cohort.flow`), joined
(:mod:`kaapana_fhir.core.cohort.tables`), and kept in memory per (FHIR base, searches) together with the
server's state (newest resource and total per type). A request re-checks the state at most every
``KAAPANA_FHIR_WEB_STATE_TTL`` seconds and rebuilds when it changed. Filters, segment-label selection,
paging and formats work on the cached table.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kaapana_fhir.web import settings as S
from kaapana_fhir.web import survival

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
OPENAPI = HERE / "openapi.yaml"
MAX_LIMIT = 100_000
DEFAULT_LIMIT = 100
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FORMATS = {"json": "application/json", "csv": "text/csv; charset=utf-8",
           "parquet": "application/vnd.apache.parquet"}


# Request bodies (every adapter reads through read_body; the JSON of a body through json_body)
MAX_JSON_BODY_BYTES = 1024 * 1024
MAX_JSON_BODY_DEPTH = 16
_BODY_KEYS = ("dataset_name", "dag_id", "modality", "segment_label", "filter", "project")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ApiResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


def body_limit() -> int:
    """Largest request body the adapters read (``KAAPANA_FHIR_WEB_MAX_BODY_BYTES``)."""
    try:
        return S.max_body_bytes()
    except S.SettingsError as exc:
        raise ApiError(500, str(exc)) from None


def check_body_size(size: int | None, limit: int, *, declared: bool = True) -> None:
    """:class:`ApiError` 413 naming the limit when ``size`` (declared ``Content-Length`` or bytes read) is above."""
    if size is not None and size > limit:
        what = f"{size} bytes" if declared else f"more than {limit} bytes"
        raise ApiError(413, f"request body: {what}; at most {limit} (rule: request body size)")


def read_body(content_length: int | None, read: Callable[[int], bytes], max_bytes: int | None = None) -> bytes:
    """The request body, at most ``max_bytes`` (default :func:`body_limit`): a declared larger ``Content-Length``
    is refused before reading, a longer (chunked) stream after ``max_bytes + 1`` bytes (413)."""
    limit = body_limit() if max_bytes is None else max_bytes
    check_body_size(content_length, limit)
    data = read(limit + 1) if content_length is None or content_length > 0 else b""
    check_body_size(len(data), limit, declared=False)
    return data


def json_body(body: bytes, content_type: str | None) -> Any:
    """A JSON request body within :mod:`kaapana_fhir.core.limits` (``MAX_JSON_BODY_BYTES``, nesting
    ``MAX_JSON_BODY_DEPTH``, integers of at most 40 digits, no ``NaN``/``Infinity``); 415 for another media type,
    413 when too large, 400 naming the rule otherwise."""
    from kaapana_fhir.core.limits import LimitError, loads_json

    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(415, f"request body: media type {media or 'none'!r}; send application/json (rule: JSON body)")
    if len(body) > MAX_JSON_BODY_BYTES:
        raise ApiError(413, f"request body: {len(body)} bytes of JSON; at most {MAX_JSON_BODY_BYTES} "
                            "(rule: JSON body size)")
    try:
        return loads_json(body, source="request body", max_bytes=MAX_JSON_BODY_BYTES, max_depth=MAX_JSON_BODY_DEPTH)
    except LimitError as exc:
        raise ApiError(400, str(exc)) from None


def body_params(body: bytes, content_type: str | None) -> list[tuple[str, str]]:
    """Parameters of POST send-to-kaapana given as a JSON object instead of the query string: strings (``filter``
    also a list of strings) under the keys of the query parameters."""
    doc = json_body(body, content_type)
    if not isinstance(doc, dict):
        raise ApiError(400, f"request body: a JSON object with the keys {', '.join(_BODY_KEYS)} (rule: body)")
    out: list[tuple[str, str]] = []
    for k, v in doc.items():
        if k not in _BODY_KEYS:
            raise ApiError(400, f"request body: unknown key {str(k)[:64]!r} (known: {', '.join(_BODY_KEYS)})")
        vals = v if k == "filter" and isinstance(v, list) else [v]
        if len(vals) > 100 or not all(isinstance(x, str) and len(x) <= 1000 for x in vals):
            raise ApiError(400, f"request body: {k} must be a string of at most 1000 characters"
                                f"{' or a list of at most 100 of them' if k == 'filter' else ''} (rule: body)")
        out.extend((k, x) for x in vals)
    return out


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> ApiResponse:
    return ApiResponse(status, json.dumps(obj, allow_nan=False, default=str).encode(), "application/json",
                       headers or {})


def error(status: int, message: str) -> ApiResponse:
    return _json({"error": message, "status": status}, status)


# ---------------------------------------------------------------------- cohort definitions
@dataclass(frozen=True)
class CohortDefinition:
    """A saved cohort: which patients to fetch (``patient_search`` or full ``searches``), then ``filters`` on the
    cohort table (``column<op>value``, ops ``= != > < >= <= ~ in``) and an optional ``segment_label``."""

    id: str
    title: str = ""
    description: str = ""
    patient_search: str = ""
    searches: tuple[str, ...] = ()
    filters: tuple[str, ...] = ()
    segment_label: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["searches"], d["filters"] = list(self.searches), list(self.filters)
        return d

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "") -> CohortDefinition:
        if not isinstance(data, Mapping):
            raise ApiError(400, f"{source}: a cohort definition is a JSON object")
        cid = str(data.get("id") or "")
        if not _ID_RE.match(cid):
            raise ApiError(400, f"{source}: cohort id {cid!r} (rule: letters, digits, '.', '_', '-'; max 64)")

        def strs(key: str) -> tuple[str, ...]:
            v = data.get(key) or []
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ApiError(400, f"{source}: {key} must be a list of strings")
            return tuple(x for x in v if x.strip())

        return cls(cid, str(data.get("title") or cid), str(data.get("description") or ""),
                   str(data.get("patient_search") or ""), strs("searches"), strs("filters"),
                   str(data.get("segment_label") or ""))


BUILTIN = (CohortDefinition("all", "All patients", "Every patient of the project with their data"),)


def definitions(st: S.WebSettings) -> dict[str, CohortDefinition]:
    out = {d.id: CohortDefinition(d.id, d.title, d.description, st.default_patient_search) for d in BUILTIN}
    if st.cohorts_dir and st.cohorts_dir.is_dir():
        for p in sorted(st.cohorts_dir.glob("*.json")):
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except ValueError as exc:
                log.warning("cohort definition %s is not valid JSON (%s); skipped", p, exc)
                continue
            try:
                d = CohortDefinition.from_json(data, str(p))
            except ApiError as exc:
                log.warning("cohort definition skipped: %s", exc.message)
                continue
            out[d.id] = d
    return out


# ---------------------------------------------------------------------- server state + cache
def _default_client(base: str) -> Any:
    from kaapana_fhir.clients.fhir import FhirClient

    return FhirClient(base, timeout=(5.0, 300.0))


STATE_TYPES = ("Patient", "Observation", "Condition", "ImagingStudy", "BodyStructure")


CHANGES_CHECKED = 1000  # more changes of one type since a build (one page): rebuild without looking at them


def _state_parts(state: str) -> dict[str, tuple[str, str, str]]:
    """:func:`server_state` token → type → (id, versionId, lastUpdated)."""
    out: dict[str, tuple[str, str, str]] = {}
    for part in state.split("|"):
        rtype, _, rest = part.partition(":")
        rid, _, rest = rest.partition(":")
        version, _, updated = rest.partition(":")
        out[rtype] = (rid, version, updated)
    return out


def server_state(client: Any) -> str:
    """Token that changes when the cohort's resources change: per type the newest resource (id, version,
    lastUpdated). One cheap search per type (index on lastUpdated, no total), bypassing HAPI's search cache.
    A delete alone is not seen until the next write (or a restart); system ``_history`` is not used
    because a partitioned HAPI answers it with an empty bundle."""
    parts = []
    for rtype in STATE_TYPES:
        b = client.request("GET", rtype, params={"_sort": "-_lastUpdated", "_count": "1", "_total": "none",
                                                 "_elements": "id"},
                           headers={"Cache-Control": "no-cache"}).json()
        r = ((b.get("entry") or [{}])[0]).get("resource") or {}
        meta = r.get("meta") or {}
        parts.append(f"{rtype}:{r.get('id')}:{meta.get('versionId')}:{meta.get('lastUpdated')}")
    return "|".join(parts)


@functools.lru_cache(maxsize=1)
def compiled_views() -> dict[str, Any]:
    """The shipped ViewDefinitions, compiled once per process (compiling them costs seconds, every build used to)."""
    from kaapana_fhir.flows.cohort.flow import load_views

    return load_views()


@dataclass
class Entry:
    cohort: Any
    table: Any  # pandas DataFrame (patient x segment)
    units: dict[str, str]
    state: str
    built_at: float
    build_seconds: float
    views: Mapping[str, Sequence[dict[str, Any]]]
    selections: OrderedDict[tuple[Any, ...], Any] = field(default_factory=OrderedDict)

    @functools.cached_property
    def patient_ids(self) -> set[str]:
        """Patient resource ids of the cohort (``patient_key``)."""
        pts = getattr(self.cohort, "patients", None)
        if pts is None or "patient_key" not in pts:
            return set()
        return {str(k) for k in pts["patient_key"].dropna()}


class CohortService:
    """Builds and caches cohorts per (FHIR base, searches); thread-safe."""

    def __init__(self, client_factory: Callable[[str], Any] = _default_client, max_entries: int = 8) -> None:
        self.client_factory = client_factory
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Any, ...], Entry] = OrderedDict()
        self._states: dict[str, tuple[float, str]] = {}
        self._locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._lock = threading.Lock()
        self.builds = 0

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._states.clear()

    def state(self, base: str, ttl: float) -> str:
        now = time.monotonic()
        hit = self._states.get(base)
        if hit and now - hit[0] < ttl:
            return hit[1]
        st = server_state(self.client_factory(base))
        self._states[base] = (now, st)
        return st

    def entry(self, base: str, d: CohortDefinition, ttl: float) -> Entry:
        key = (base, d.patient_search, d.searches)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            state = self.state(base, ttl)
            e = self._entries.get(key)
            if e is not None and e.state != state and not self._affected(base, d, e, state):
                e.state = state  # the writes since the build are outside this cohort: keep it
            if e is not None and e.state == state:
                self._entries.move_to_end(key)
                return e
            e = self._build(base, d, state)
            with self._lock:
                self._entries[key] = e
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            return e

    def _affected(self, base: str, d: CohortDefinition, e: Entry, state: str) -> bool:
        """Whether the writes between ``e.state`` and ``state`` can change this cohort (then it is rebuilt):
        per changed type, the resources updated since the build's newest one (ids and patient references only).
        A resource of one of the cohort's patients, or a new/changed Patient the cohort's patient search matches,
        counts; so do more than :data:`CHANGES_CHECKED` changes of a type and cohorts defined by ``searches``
        (rebuilt on any write, as before). On a shared, busy server this keeps a cohort cached while other
        projects' data is written."""
        if d.searches:
            return True
        old, new = _state_parts(e.state), _state_parts(state)
        client = self.client_factory(base)
        members = e.patient_ids
        changed_patients: set[str] = set()
        for rtype in STATE_TYPES:
            if old.get(rtype) == new.get(rtype):
                continue
            rid, version, since = old.get(rtype, ("", "", ""))
            if not since or since == "None":
                return True
            b = client.request("GET", rtype, params={"_lastUpdated": f"ge{since}", "_count": str(CHANGES_CHECKED),
                                                     "_total": "none", "_elements": "id,subject,patient"},
                               headers={"Cache-Control": "no-cache"}).json()
            if any(link.get("relation") == "next" for link in b.get("link") or []):
                return True  # more changes than one page: rebuild
            for ent in b.get("entry") or []:
                r = ent.get("resource") or {}
                if r.get("id") == rid and str((r.get("meta") or {}).get("versionId")) == version:
                    continue  # the build's newest resource itself
                if rtype == "Patient":
                    changed_patients.add(str(r.get("id")))
                    continue
                ref = ((r.get("subject") or r.get("patient") or {}).get("reference") or "")
                if ref.startswith("Patient/") and ref.split("/", 1)[1] in members:
                    return True
        if changed_patients & members:
            return True
        if changed_patients:
            from kaapana_fhir.flows.cohort.flow import parse_search

            ps = parse_search(d.patient_search or "Patient")
            ids = sorted(changed_patients)
            for i in range(0, len(ids), 100):
                params = [*ps.params, ("_id", ",".join(ids[i:i + 100])), ("_elements", "id"), ("_count", "100"),
                          ("_total", "none")]
                if client.request("GET", "Patient", params=params,
                                  headers={"Cache-Control": "no-cache"}).json().get("entry"):
                    return True
        log.info("cohort %s: %s changed on the server, none of it in this cohort; cache kept", d.id,
                 ", ".join(t for t in STATE_TYPES if old.get(t) != new.get(t)))
        return False

    def _build(self, base: str, d: CohortDefinition, state: str) -> Entry:
        from kaapana_fhir.core.cohort import tables as C
        from kaapana_fhir.flows.cohort.flow import fetch_and_flatten

        t0 = time.perf_counter()
        client = self.client_factory(base)
        _, rows = fetch_and_flatten(client, compiled_views(), searches=list(d.searches),
                                    patient_search=d.patient_search or None)
        cohort = C.build_cohort(rows)
        table = cohort.table
        units = _units(rows, cohort)
        self.builds += 1
        secs = time.perf_counter() - t0
        log.info("cohort %s from %s: %d patients, %d rows in %.2fs", d.id, base, len(cohort.patients), len(table), secs)
        return Entry(cohort, table, units, state, time.time(), secs, rows)


def _units(rows: Mapping[str, Sequence[dict[str, Any]]], cohort: Any) -> dict[str, str]:
    """Column → unit (UCUM code or text), the most frequent one seen for clinical values and features."""
    counts: dict[str, dict[str, int]] = {}
    for r in rows.get("clinical_observation", []):
        if r.get("variable") and r.get("value_unit"):
            counts.setdefault(str(r["variable"]), {}).setdefault(str(r["value_unit"]), 0)
            counts[str(r["variable"])][str(r["value_unit"])] += 1
    for r in rows.get("radiomics_feature", []):
        if r.get("feature") and r.get("unit"):
            it = r.get("image_type") or "original"
            col = str(r["feature"]) if it == "original" else f"{it}_{r['feature']}"
            counts.setdefault(col, {}).setdefault(str(r["unit"]), 0)
            counts[col][str(r["unit"])] += 1
    out = {k: max(v.items(), key=lambda kv: kv[1])[0] for k, v in counts.items()}
    out.update({str(k): str(v) for k, v in (getattr(cohort, "units", None) or {}).items() if v})  # code-named columns
    for c in list(getattr(cohort, "clinical_variables", [])) + list(getattr(cohort, "feature_columns", [])):
        for suffix in ("_clinical", "_radiomics"):
            if c.endswith(suffix) and c[: -len(suffix)] in out:
                out[c] = out[c[: -len(suffix)]]
    return out


SERVICE = CohortService()


# ---------------------------------------------------------------------- request parsing
class Query:
    def __init__(self, items: Sequence[tuple[str, str]] | Mapping[str, Any]) -> None:
        if isinstance(items, Mapping):
            pairs: list[tuple[str, str]] = []
            for k, v in items.items():
                pairs.extend((k, str(x)) for x in (v if isinstance(v, (list, tuple)) else [v]))
            items = pairs
        self.items = [(str(k), str(v)) for k, v in items]

    def get(self, key: str, default: str = "") -> str:
        for k, v in reversed(self.items):
            if k == key:
                return v
        return default

    def all(self, key: str) -> list[str]:
        return [v for k, v in self.items if k == key]

    def int(self, key: str, default: int, lo: int, hi: int) -> int:
        raw = self.get(key, "")
        if raw == "":
            return default
        try:
            v = int(raw)
        except ValueError:
            raise ApiError(400, f"query parameter {key}={raw!r} is not an integer") from None
        if not lo <= v <= hi:
            raise ApiError(400, f"query parameter {key}={v} is out of range [{lo}, {hi}]")
        return v


@dataclass
class Ctx:
    st: S.WebSettings
    service: CohortService
    q: Query
    project: str = ""
    base: str = ""


def _selection(ctx: Ctx, cid: str) -> tuple[CohortDefinition, Entry, Any]:
    """The cohort table after the definition's and the request's filters and segment label."""
    from kaapana_fhir.core.cohort import tables as C
    from kaapana_fhir.exceptions import ConfigError

    defs = definitions(ctx.st)
    if cid not in defs:
        raise ApiError(404, f"cohort definition {cid!r} not found (known: {', '.join(sorted(defs))})")
    d = defs[cid]
    e = ctx.service.entry(ctx.base, d, ctx.st.state_ttl)
    filters = tuple(d.filters) + tuple(f for f in ctx.q.all("filter") if f.strip())
    label = ctx.q.get("segment_label", d.segment_label).strip()
    key = (filters, label)
    hit = e.selections.get(key)
    if hit is not None:
        e.selections.move_to_end(key)
        return d, e, hit
    t = e.table
    if label:
        if "segment_label" not in t:
            t = t.iloc[0:0]
        else:
            t = t[t["segment_label"].astype(str).str.lower() == label.lower()]
    try:
        t = C.filter_patients(t, list(filters))
    except ConfigError as exc:
        raise ApiError(400, str(exc)) from None
    t = t.reset_index(drop=True)
    e.selections[key] = t
    while len(e.selections) > 64:
        e.selections.popitem(last=False)
    return d, e, t


def _page(ctx: Ctx, df: Any, what: str) -> ApiResponse:
    fmt = ctx.q.get("format", "json").lower()
    if fmt not in FORMATS:
        raise ApiError(400, f"format={fmt!r}: use json, csv or parquet")
    offset = ctx.q.int("offset", 0, 0, 10**9)
    limit = ctx.q.int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    cols = [c for c in ctx.q.get("columns", "").split(",") if c.strip()]
    if cols:
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ApiError(400, f"columns {missing} are not in the {what} table")
        df = df[cols]
    total = len(df)
    page = df.iloc[offset:offset + limit]
    headers = {"X-Total-Count": str(total)}
    if fmt == "csv":
        return ApiResponse(200, to_csv(page), FORMATS["csv"], headers)
    if fmt == "parquet":
        return ApiResponse(200, to_parquet(page), FORMATS["parquet"], headers)
    rows = json.loads(page.to_json(orient="records", date_format="iso", default_handler=str))
    nxt = offset + limit if offset + limit < total else None
    return _json({"project": ctx.project, "total": total, "offset": offset, "limit": limit,
                  "next_offset": nxt, "columns": [str(c) for c in df.columns], "rows": rows}, headers=headers)


def to_csv(df: Any) -> bytes:
    """Spreadsheet-safe CSV (text that would run as a formula gets a ``'``), lists/dicts as JSON."""
    import csv

    from kaapana_fhir.core.cohort.tables import spreadsheet_safe_frame

    buf = io.StringIO()
    spreadsheet_safe_frame(df).to_csv(buf, index=False, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    return buf.getvalue().encode("utf-8")


def to_parquet(df: Any) -> bytes:
    import tempfile

    from kaapana_fhir.core.cohort.tables import write_parquet

    with tempfile.TemporaryDirectory(prefix="kf-web-") as tmp:
        p = write_parquet(df, Path(tmp) / "page.parquet")
        return p.read_bytes()


# ---------------------------------------------------------------------- endpoints
def _is_num(s: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s))


def _finite(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


_ID_COLUMNS = ("patient_key", "identifier_system", "patient_id", "segment_key")


def ep_summary(ctx: Ctx, cid: str) -> ApiResponse:
    from kaapana_fhir.core.cohort import report_data as RD

    d, e, t = _selection(ctx, cid)
    patients = t.drop_duplicates("patient_key") if "patient_key" in t else t
    feats = set(e.cohort.feature_columns)
    clinical = set(e.cohort.clinical_variables)
    cols = []
    for c in t.columns:
        if c in _ID_COLUMNS:
            continue
        level = "segment" if c in feats or c in ("segment_label",) else "patient"
        s = t[c] if level == "segment" else patients[c]
        kind = "numeric" if _is_num(s) else "categorical"
        info: dict[str, Any] = {"name": str(c), "kind": kind, "level": level, "unit": e.units.get(str(c), ""),
                                "group": "feature" if c in feats else ("clinical" if c in clinical else "imaging")}
        if kind == "numeric":
            info.update({k: _finite(v) for k, v in RD.summary(s).items()})
        else:
            cats = RD.categories(s)
            info.update(n=int(s.notna().sum()), missing=int(s.isna().sum()), categories=cats)
        cols.append(info)
    labels: list[str] = []
    if "segment_label" in e.table:
        labels = sorted({str(v) for v in e.table["segment_label"].dropna()})
    mods = sorted({m for v in patients.get("modalities", []) if isinstance(v, str) for m in v.split(",") if m})
    return _json({"cohort": d.to_json(), "project": ctx.project,
                  "fhir_base_url": ctx.st.public_fhir_base(ctx.project),
                  "links": {"fhir": ctx.st.public_fhir_base(ctx.project), "dicomweb": ctx.st.public_dicomweb_url,
                            "ohif": ctx.st.ohif_url},
                  "patients": int(patients["patient_key"].nunique()) if "patient_key" in t else len(t),
                  "rows": len(t), "total_patients": int(len(e.cohort.patients)), "segment_labels": labels,
                  "modalities": mods, "columns": cols,
                  "built_at": e.built_at, "build_seconds": round(e.build_seconds, 3)})


_TRUE = {"1", "true", "yes", "y", "dead", "deceased", "event"}


def _event(v: Any) -> bool | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    s = str(v).strip().lower()
    return s in _TRUE if s else None


def ep_km(ctx: Ctx, cid: str) -> ApiResponse:
    import pandas as pd

    d, e, t = _selection(ctx, cid)
    tcol = ctx.q.get("time")
    ecol = ctx.q.get("event", "deceased")
    gcol = ctx.q.get("group", "")
    for c in (tcol, ecol, gcol):
        if c and c not in t.columns:
            raise ApiError(400, f"column {c!r} is not in the cohort table")
    if not tcol:
        raise ApiError(400, "query parameter time (a numeric column, e.g. Survival.time) is required")
    p = t.drop_duplicates("patient_key") if "patient_key" in t else t
    times = pd.to_numeric(p[tcol], errors="coerce")
    if times.dropna().lt(0).any():
        raise ApiError(400, f"column {tcol!r} has negative times (rule: time >= 0)")
    events = p[ecol].map(_event) if ecol else pd.Series(True, index=p.index)
    ok = times.notna() & events.notna()
    groups: dict[str, Any] = {}
    if gcol:
        g = p[gcol]
        if _is_num(g):
            med = float(pd.to_numeric(g, errors="coerce").median())
            g = pd.to_numeric(g, errors="coerce").map(
                lambda v: None if pd.isna(v) else (f"<= {med:.4g}" if v <= med else f"> {med:.4g}"))
        ok &= g.notna()
        for name in sorted({str(v) for v in g[ok]}):
            groups[name] = ok & (g.astype(str) == name)
    else:
        groups["all"] = ok
    curves = []
    for name, m in groups.items():
        km = survival.kaplan_meier(times[m].tolist(), [bool(x) for x in events[m]])
        curves.append({"group": name, "n": km.n, "events": km.events, "median": km.median, "times": km.times,
                       "survival": km.survival, "at_risk": km.at_risk})
    lr = survival.logrank([(times[m].tolist(), [bool(x) for x in events[m]]) for m in groups.values()])
    return _json({"project": ctx.project, "time": tcol, "event": ecol, "group": gcol or None,
                  "unit": e.units.get(tcol, ""), "n": int(ok.sum()), "missing": int((~ok).sum()),
                  "curves": curves,
                  "logrank": None if lr is None else {"statistic": _finite(lr.statistic), "df": lr.df,
                                                      "p_value": _finite(lr.p_value)}})


def ep_scatter(ctx: Ctx, cid: str) -> ApiResponse:
    import pandas as pd

    d, e, t = _selection(ctx, cid)
    x, y = ctx.q.get("x"), ctx.q.get("y")
    for c in (x, y):
        if not c or c not in t.columns:
            raise ApiError(400, f"x and y must be columns of the cohort table (got {c!r})")
    xs, ys = pd.to_numeric(t[x], errors="coerce"), pd.to_numeric(t[y], errors="coerce")
    ok = xs.notna() & ys.notna()
    n = int(ok.sum())
    r = float(xs[ok].rank().corr(ys[ok].rank())) if n > 2 else None  # Spearman = Pearson of ranks
    pts = {"x": xs[ok].tolist(), "y": ys[ok].tolist(),
           "patient_id": [str(v) for v in t.loc[ok, "patient_id"]] if "patient_id" in t else [],
           "segment_label": [None if pd.isna(v) else str(v) for v in t.loc[ok, "segment_label"]]
           if "segment_label" in t else []}
    return _json({"project": ctx.project, "x": x, "y": y, "x_unit": e.units.get(x, ""), "y_unit": e.units.get(y, ""),
                  "n": n, "missing": int(len(t) - n), "spearman_r": _finite(r), **pts})


def _series(ctx: Ctx, e: Entry, t: Any) -> Any:
    import pandas as pd

    s = e.cohort.series
    if s.empty or "patient_key" not in t:
        return pd.DataFrame(columns=["patient_id", "study_uid", "series_uid", "modality", "ohif_url",
                                     "dicomweb_url", "fhir_imaging_study_url", "fhir_patient_url"])
    s = s[s["patient_key"].isin(set(t["patient_key"]))].copy()
    fhir = ctx.st.public_fhir_base(ctx.project)
    dw = ctx.st.public_dicomweb_url
    ohif = ctx.st.ohif_url
    s["ohif_url"] = [f"{ohif}?StudyInstanceUIDs={quote(str(st), safe='')}&initialSeriesInstanceUID="
                     f"{quote(str(se), safe='')}" for st, se in zip(s["study_uid"], s["series_uid"], strict=False)]
    s["dicomweb_url"] = [f"{dw}/studies/{quote(str(st), safe='')}/series/{quote(str(se), safe='')}"
                         for st, se in zip(s["study_uid"], s["series_uid"], strict=False)]
    s["fhir_imaging_study_url"] = [f"{fhir}/ImagingStudy/{quote(str(k), safe='')}" for k in s["study_key"]]
    s["fhir_patient_url"] = [f"{fhir}/Patient/{quote(str(k), safe='')}" for k in s["patient_key"]]
    return s.reset_index(drop=True)


_DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DAG_RE = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")


def ep_send(ctx: Ctx, cid: str, user: str | None, backend: Any) -> ApiResponse:
    """Create a Kaapana dataset of the selected series (``modality``, default CT; empty = all) and, with
    ``dag_id``, start that workflow on it."""
    import os

    from kaapana_fhir.web.kaapana_backend import KaapanaBackend, KaapanaBackendError, project_object

    if not user:
        raise ApiError(401, "send to Kaapana needs a logged-in Airflow user")
    name = ctx.q.get("dataset_name")
    if not _DATASET_RE.match(name):
        raise ApiError(400, f"dataset_name {name!r}: letters, digits, '.', '_', '-' (max 64)")
    dag_id = ctx.q.get("dag_id")
    if dag_id and not _DAG_RE.match(dag_id):
        raise ApiError(400, f"dag_id {dag_id!r} is not a DAG id")
    _, e, t = _selection(ctx, cid)
    s = _series(ctx, e, t)
    modality = ctx.q.get("modality", "CT").strip()
    if modality and not s.empty:
        s = s[s["modality"].astype(str).str.upper() == modality.upper()]
    uids = sorted({str(u) for u in s["series_uid"].dropna()}) if not s.empty else []
    if not uids:
        raise ApiError(400, f"the selection has no {modality or 'imaging'} series; nothing to send")
    kb = backend or KaapanaBackend()
    project = project_object(ctx.project)
    try:
        ds = kb.create_dataset(name, uids, project=project, username=user)
        wf = None
        if dag_id:
            instances = [i for i in os.environ.get("KAAPANA_FHIR_INSTANCE_NAMES", "central").split(",") if i]
            wf = kb.run_workflow(dag_id, name, uids, project=project, username=user, instance_names=instances)
    except KaapanaBackendError as exc:
        raise ApiError(exc.status if exc.status in (400, 403, 404, 409) else 502, str(exc)) from None
    return _json({"dataset": ds, "workflow": wf, "series": len(uids), "project": ctx.project})


def ep_view_rows(ctx: Ctx, name: str) -> ApiResponse:
    import pandas as pd

    from kaapana_fhir.core.cohort import tables as C
    from kaapana_fhir.core.cohort.views import shipped_views
    from kaapana_fhir.exceptions import ConfigError

    if name not in shipped_views():
        raise ApiError(404, f"ViewDefinition {name!r} not found (shipped: {', '.join(shipped_views())})")
    d = definitions(ctx.st)["all"]
    e = ctx.service.entry(ctx.base, d, ctx.st.state_ttl)
    df = pd.DataFrame(e.views.get(name, []))
    try:
        df = C.filter_patients(df, [f for f in ctx.q.all("filter") if f.strip()])
    except ConfigError as exc:
        raise ApiError(400, str(exc)) from None
    return _page(ctx, df.reset_index(drop=True), f"view {name}")


def ep_views() -> ApiResponse:
    from kaapana_fhir.core.cohort.views import compile_view, load_view, shipped_views

    out = []
    for n in shipped_views():
        v = load_view(n)
        out.append({"name": n, "resource": v.get("resource"), "title": v.get("title") or v.get("name") or n,
                    "columns": compile_view(v).columns})
    return _json({"views": out})


def ep_definition(ctx: Ctx, cid: str) -> ApiResponse:
    defs = definitions(ctx.st)
    if cid not in defs:
        raise ApiError(404, f"cohort definition {cid!r} not found (known: {', '.join(sorted(defs))})")
    d = defs[cid]
    extra = [f for f in ctx.q.all("filter") if f.strip()]
    label = ctx.q.get("segment_label", d.segment_label)
    if extra or label != d.segment_label:  # the definition built in the explorer, ready to save
        d = CohortDefinition(d.id if not extra and label == d.segment_label else f"{d.id}-custom",
                             d.title, d.description, d.patient_search, d.searches, tuple(d.filters) + tuple(extra),
                             label)
    return _json(d.to_json())


def handle(method: str, path: str, query: Sequence[tuple[str, str]] | Mapping[str, Any] = (),
           *, st: S.WebSettings | None = None, service: CohortService | None = None, user: str | None = None,
           headers: Mapping[str, str] | None = None, backend: Any = None, body: bytes = b"") -> ApiResponse:
    """Answer ``method path?query`` (path relative to ``api/``). ``user`` is the Airflow user name (for
    "send to Kaapana"); ``headers`` the request headers (POST needs ``X-Requested-By: kaapana-fhir``, a header a
    cross-site form cannot send); ``body`` the request body as read by :func:`read_body`: only POST
    send-to-kaapana takes one (its parameters as a JSON object, :func:`body_params`)."""
    try:
        hdr = {k.lower(): v for k, v in (headers or {}).items()}
        if method.upper() == "POST" and hdr.get("x-requested-by") != "kaapana-fhir":
            raise ApiError(403, "POST needs the header X-Requested-By: kaapana-fhir")
        q = Query(query)
        if body:
            if method.upper() != "POST":
                raise ApiError(400, f"{method.upper()} api/{path.strip('/')} takes no request body (rule: body)")
            q.items.extend(body_params(body, hdr.get("content-type")))
        return _route(method.upper(), path.strip("/"), q, st, service or SERVICE, user, backend)
    except ApiError as exc:
        return error(exc.status, exc.message)
    except S.SettingsError as exc:
        return error(404 if "not configured" in str(exc) else 400, str(exc))
    except Exception as exc:  # noqa: BLE001 - the API answers 502 with the reason instead of a bare 500
        from kaapana_fhir.exceptions import KaapanaFhirError

        if isinstance(exc, KaapanaFhirError) or exc.__class__.__module__.startswith(("requests", "urllib3")):
            log.warning("api %s %s: %s", method, path, exc)
            return error(502, f"FHIR server: {exc}")
        log.exception("api %s %s failed", method, path)
        return error(500, f"internal error ({exc.__class__.__name__}); see the server log")


def _route(method: str, path: str, q: Query, st: S.WebSettings | None, service: CohortService,
           user: str | None = None, backend: Any = None) -> ApiResponse:
    parts = [p for p in path.split("/") if p]
    send = len(parts) == 3 and parts[0] == "cohorts" and parts[2] == "send-to-kaapana"
    if (method == "POST") != send or method not in ("GET", "HEAD", "POST"):
        raise ApiError(405, f"method {method} is not allowed here (only POST cohorts/<id>/send-to-kaapana writes)")
    if parts == ["openapi.yaml"]:
        return ApiResponse(200, OPENAPI.read_bytes(), "application/yaml")
    st = st or S.load()
    ctx = Ctx(st, service, q)
    if parts == ["health"]:
        return _json({"status": "ok", "projects": list(st.projects)})
    if parts == ["projects"]:
        return _json({"projects": [{"name": p, "fhir_base_url": st.public_fhir_base(p)} for p in st.projects]})
    if parts == ["views"]:
        return ep_views()
    if parts == ["cohorts"]:
        return _json({"cohorts": [d.to_json() for d in definitions(st).values()]})
    # paging and format are checked before any FHIR request
    q.int("offset", 0, 0, 10**9)
    q.int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    if q.get("format", "json").lower() not in FORMATS:
        raise ApiError(400, f"format={q.get('format')!r}: use json, csv or parquet")
    ctx.project = st.check_project(q.get("project") or None)
    ctx.base = st.fhir_base(ctx.project)
    if len(parts) == 3 and parts[0] == "views" and parts[2] == "rows":
        return ep_view_rows(ctx, parts[1])
    if len(parts) >= 2 and parts[0] == "cohorts":
        cid = parts[1]
        if not _ID_RE.match(cid):
            raise ApiError(404, "cohort definition not found (rule: id of letters, digits, '.', '_', '-')")
        if len(parts) == 2:
            return ep_definition(ctx, cid)
        sub = parts[2] if len(parts) == 3 else ""
        if sub == "rows":
            _, _, t = _selection(ctx, cid)
            return _page(ctx, t, "cohort")
        if sub == "series":
            _, e, t = _selection(ctx, cid)
            return _page(ctx, _series(ctx, e, t), "series")
        if sub == "summary":
            return ep_summary(ctx, cid)
        if sub == "km":
            return ep_km(ctx, cid)
        if sub == "scatter":
            return ep_scatter(ctx, cid)
        if sub == "send-to-kaapana":
            return ep_send(ctx, cid, user, backend)
    raise ApiError(404, f"no such endpoint: api/{'/'.join(parts)}")
