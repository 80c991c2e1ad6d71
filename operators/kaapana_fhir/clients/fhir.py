"""A small, strict FHIR R4 REST client (no Airflow).

* one ``requests.Session`` (injected or created), a timeout on every request, TLS verification on;
* retries with exponential backoff (tenacity) **only** on 408/429/502/503/504, honouring
  ``Retry-After``; the number of attempts is bounded and every retry is logged;
* typed errors (:mod:`kaapana_fhir.exceptions`) carrying the HTTP status, the URL and the server's
  OperationOutcome;
* searches follow the server's ``next`` links; parameters are always encoded by requests, never
  spliced into URLs;
* transaction Bundles, chunked (≤500 entries each by default), each chunk atomic on the server.

Credentials (bearer token, basic auth) live only in the session; they are never logged and never
part of an error message.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from kaapana_fhir.core.bundle import DEFAULT_CHUNK_SIZE, chunked, transaction
from kaapana_fhir.exceptions import (
    FhirConnectionError,
    FhirServerError,
    PreconditionFailed,
    ResourceNotFound,
)

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 502, 503, 504})
FHIR_JSON = "application/fhir+json"


class _Retryable(Exception):
    def __init__(self, response: requests.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


@dataclass
class RetryPolicy:
    """How often and how long to retry a transient answer (408/429/502/503/504)."""

    max_attempts: int = 6
    initial_wait: float = 0.5
    max_wait: float = 20.0
    retry_connection_errors: bool = False


@dataclass
class FhirClientStats:
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    by_status: dict[int, int] = field(default_factory=dict)


def redact_url(url: str) -> str:
    """Drop any userinfo (``user:pass@``) from a URL before it goes into a log or an error."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return parts._replace(netloc=netloc).geturl()
    return url


# ------------------------------------------------------------------ Kaapana projects = HAPI partitions
_PARTITION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
#: R4 resource types that fhir.resources R4B no longer has (a partition must not be named like a type)
_R4_ONLY_TYPES = frozenset({
    "effectevidencesynthesis", "riskevidencesynthesis", "medicinalproduct", "medicinalproductauthorization",
    "medicinalproductcontraindication", "medicinalproductindication", "medicinalproductingredient",
    "medicinalproductinteraction", "medicinalproductmanufactured", "medicinalproductpackaged",
    "medicinalproductpharmaceutical", "medicinalproductundesirableeffect", "substancenucleicacid",
    "substancepolymer", "substanceprotein", "substancereferenceinformation", "substancesourcematerial",
    "substancespecification"})
_KNOWN_PARTITIONS: set[tuple[str, str]] = set()


def partition_name(project: str) -> str:
    """HAPI partition of a Kaapana project (URL-based tenants: ``<base>/<partition>/Patient``).

    The project name itself when HAPI accepts it (``[A-Za-z0-9_-]``, at most 100) and it cannot be read as
    something else in a URL (not ``DEFAULT``/``metadata``, not a FHIR type name); otherwise ``p-<slug>-<8 hex of
    its SHA-256>`` (stable, distinct per name). Same name, same partition, on every server.
    """
    import hashlib
    import importlib.util

    name = project.strip()
    if not name:
        raise ValueError("project name must not be empty (rule: a Kaapana project name)")
    low = name.lower()
    reserved = (low in ("default", "metadata") or low in _R4_ONLY_TYPES
                or (low.isalpha() and importlib.util.find_spec(f"fhir.resources.R4B.{low}") is not None))
    if _PARTITION_NAME.match(name) and not reserved:
        return name
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_")[:60] or "project"
    return f"p-{slug}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}"


class FhirClient:
    """Client of one FHIR R4 server.

    Parameters
    ----------
    base_url: service base, e.g. ``http://127.0.0.1:8080/fhir``.
    session: a prepared ``requests.Session`` (auth, certificates); a new one otherwise.
    token: bearer token (e.g. from Kaapana's Keycloak); sets ``Authorization: Bearer``.
    basic_auth: ``(user, password)``.
    timeout: seconds per request (connect, read).
    verify: TLS verification (bool or CA bundle path); on by default.
    """

    def __init__(self, base_url: str, *, session: requests.Session | None = None, token: str | None = None,
                 basic_auth: tuple[str, str] | None = None, timeout: float | tuple[float, float] = (5.0, 120.0),
                 verify: bool | str = True, retry: RetryPolicy | None = None) -> None:
        if not base_url or not base_url.strip():
            raise ValueError('Argument "base_url" must not be empty.')
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Malformed FHIR base URL: {redact_url(base_url)!r} (rule: http(s)://host[:port]/path)")
        self.session = session or requests.Session()
        if parts.username:  # credentials in the URL move into the session, never into logs or errors
            from urllib.parse import unquote

            self.session.auth = (unquote(parts.username), unquote(parts.password or ""))
        self.base_url = redact_url(base_url.strip()).rstrip("/")
        self.session.verify = verify
        self.session.headers.setdefault("Accept", FHIR_JSON)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        if basic_auth:
            self.session.auth = basic_auth
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.stats = FhirClientStats()

    # ------------------------------------------------------------------ low level
    def _url(self, path: str) -> str:
        if path.startswith("http://") or path.startswith("https://"):
            return path
        return urljoin(self.base_url + "/", path.lstrip("/"))

    def _log_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        log.warning("FHIR request retry %d/%d after %s; waiting %.1fs", state.attempt_number,
                    self.retry.max_attempts, exc, wait)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        base = wait_exponential(multiplier=self.retry.initial_wait, max=self.retry.max_wait)(state)
        if isinstance(exc, _Retryable):
            ra = exc.response.headers.get("Retry-After")
            if ra and ra.strip().isdigit():
                return min(float(ra), self.retry.max_wait)
        return base

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
                json_body: Any = None, headers: Mapping[str, str] | None = None,
                ok: Iterable[int] = (200, 201)) -> requests.Response:
        """Send one request with the retry policy; raise a typed error on a non-``ok`` status."""
        url = self._url(path)
        safe_url = redact_url(url)
        hdrs = dict(headers or {})
        data = None
        if json_body is not None:
            hdrs.setdefault("Content-Type", FHIR_JSON)
            data = json.dumps(json_body, separators=(",", ":"), allow_nan=False).encode("utf-8")

        def is_retryable(exc: BaseException) -> bool:
            if isinstance(exc, _Retryable):
                return True
            return self.retry.retry_connection_errors and isinstance(
                exc, (requests.ConnectionError, requests.Timeout))

        def once() -> requests.Response:
            t0 = time.perf_counter()
            self.stats.requests += 1
            try:
                resp = self.session.request(method, url, params=params, data=data, headers=hdrs,
                                            timeout=self.timeout)
            finally:
                self.stats.seconds += time.perf_counter() - t0
            self.stats.by_status[resp.status_code] = self.stats.by_status.get(resp.status_code, 0) + 1
            if resp.status_code in RETRY_STATUS:
                raise _Retryable(resp)
            return resp

        retrying = Retrying(stop=stop_after_attempt(self.retry.max_attempts), wait=self._wait,
                            retry=retry_if_exception(is_retryable), before_sleep=self._log_retry, reraise=True)
        try:
            resp = retrying(once)
        except _Retryable as exc:
            resp = exc.response
            self._raise(resp, safe_url, method, note=f" after {self.retry.max_attempts} attempts")
        except requests.Timeout as exc:
            raise FhirConnectionError(f"FHIR server at {safe_url} did not answer {method} within "
                                      f"{self.timeout}s: {type(exc).__name__}", url=safe_url) from None
        except requests.ConnectionError as exc:
            raise FhirConnectionError(f"FHIR server at {safe_url} is unreachable ({method}): "
                                      f"{_short(exc)}. Check the FHIR base URL and that the server runs.",
                                      url=safe_url) from None
        if resp.status_code not in set(ok):
            self._raise(resp, safe_url, method)
        return resp

    @staticmethod
    def _raise(resp: requests.Response, safe_url: str, method: str, note: str = "") -> None:
        outcome = None
        try:
            body = resp.json()
            if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
                outcome = body
        except ValueError:
            body = None
        cls: type[FhirServerError] = FhirServerError
        if resp.status_code in (404, 410):
            cls = ResourceNotFound
        elif resp.status_code == 412:
            cls = PreconditionFailed
        err = cls(f"FHIR {method} {safe_url} failed with HTTP {resp.status_code}{note}", status_code=resp.status_code,
                  url=safe_url, outcome=outcome)
        diag = err.diagnostics or (resp.text[:500] if not outcome else "")
        if diag:
            err.args = (f"{err.args[0]}: {diag}",)
        raise err

    # ------------------------------------------------------------------ REST operations
    def capabilities(self) -> dict[str, Any]:
        return self.request("GET", "metadata").json()

    #: the Kaapana project (HAPI partition) this client is bound to; None: the server's default partition
    project: str | None = None
    root_url: str | None = None

    def for_project(self, project: str | None, *, create: bool = True) -> FhirClient:
        """Client of ``project``'s HAPI partition: ``<base>/<partition_name(project)>``, sharing this client's
        session (credentials), timeout and retry policy. ``None``/empty: this client (default partition).
        ``create``: make sure the partition exists (:meth:`ensure_partition`)."""
        if project is None or not project.strip():
            return self
        root = self.root_url or self.base_url
        part = partition_name(project)
        if create and (root, part) not in _KNOWN_PARTITIONS:
            self.ensure_partition(part, root_url=root, project=project)
        child = FhirClient(f"{root}/{part}", session=self.session, timeout=self.timeout,
                           verify=True if self.session.verify is None else self.session.verify, retry=self.retry)
        child.project, child.root_url = project.strip(), root
        return child

    def ensure_partition(self, name: str, *, root_url: str | None = None, project: str | None = None) -> bool:
        """Create HAPI partition ``name`` unless it exists (``$partition-management-create-partition`` on the
        default partition; HAPI assigns the numeric id). True when this call created it; "already defined"
        (HAPI-1309, e.g. a concurrent run was first) counts as success."""
        root = (root_url or self.root_url or self.base_url).rstrip("/")
        body = {"resourceType": "Parameters", "parameter": [
            {"name": "name", "valueCode": name},
            {"name": "description", "valueString": f"Kaapana project {project or name}"}]}
        created = False
        for attempt in (1, 2):
            try:
                self.request("POST", f"{root}/$partition-management-create-partition", json_body=body)
                created = True
                break
            except FhirServerError as exc:
                if "HAPI-1309" in str(exc):
                    break
                if attempt == 2 or exc.status_code < 500:
                    raise FhirServerError(
                        f"cannot create the FHIR partition {name!r} of project {project or name!r} at "
                        f"{redact_url(root)}: {exc} (rule: the server must run HAPI partitioning with URL-based "
                        "tenants, e.g. the hapi-fhir chart; without partitions run with no project)",
                        status_code=exc.status_code, url=exc.url, outcome=exc.outcome) from None
        _KNOWN_PARTITIONS.add((root, name))
        if created:
            log.info("created FHIR partition %s for project %s", name, project or name)
        return created

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        return self.request("GET", f"{resource_type}/{_seg(resource_id)}").json()

    def read_with_etag(self, resource_type: str, resource_id: str) -> tuple[dict[str, Any], str | None]:
        resp = self.request("GET", f"{resource_type}/{_seg(resource_id)}")
        return resp.json(), resp.headers.get("ETag")

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", resource["resourceType"], json_body=resource,
                            headers={"Prefer": "return=representation"}).json()

    def conditional_create(self, resource: dict[str, Any], query: Mapping[str, str]) -> tuple[dict[str, Any], bool]:
        """Create unless a resource matches ``query`` (``If-None-Exist``). Returns (resource, created)."""
        from urllib.parse import urlencode

        resp = self.request("POST", resource["resourceType"], json_body=resource,
                            headers={"If-None-Exist": urlencode(query), "Prefer": "return=representation"})
        return resp.json(), resp.status_code == 201

    def update(self, resource: dict[str, Any], *, if_match: str | None = None) -> dict[str, Any]:
        """``PUT <type>/<id>`` (create-or-replace with a client id); ``if_match`` makes it conditional."""
        headers = {"Prefer": "return=representation"}
        if if_match:
            headers["If-Match"] = if_match
        return self.request("PUT", f"{resource['resourceType']}/{_seg(resource['id'])}", json_body=resource,
                            headers=headers).json()

    def delete(self, resource_type: str, resource_id: str) -> None:
        self.request("DELETE", f"{resource_type}/{_seg(resource_id)}", ok=(200, 202, 204))

    def validate(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Run the server's ``$validate``; returns the OperationOutcome (also for invalid input)."""
        resp = self.request("POST", f"{resource['resourceType']}/$validate", json_body=resource, ok=(200, 400, 412, 422))
        return resp.json()

    # ------------------------------------------------------------------ search
    def search_pages(self, resource_type: str | None, params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
                     ) -> Iterator[dict[str, Any]]:
        """Yield searchset Bundles page by page, following ``link[relation=next]``."""
        path = resource_type or ""
        resp = self.request("GET", path, params=params)
        bundle = resp.json()
        while True:
            yield bundle
            nxt = next((lnk.get("url") for lnk in bundle.get("link", []) if lnk.get("relation") == "next"), None)
            if not nxt:
                return
            bundle = self.request("GET", nxt).json()

    def search(self, resource_type: str | None, params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
               *, include_mode: str = "match") -> Iterator[dict[str, Any]]:
        """Yield resources of all pages. ``include_mode``: 'match', 'include' or 'all' (search.mode)."""
        for bundle in self.search_pages(resource_type, params):
            for entry in bundle.get("entry", []):
                mode = entry.get("search", {}).get("mode", "match")
                if include_mode == "all" or mode == include_mode:
                    yield entry["resource"]

    def count(self, resource_type: str, params: Mapping[str, Any] | None = None) -> int:
        p = dict(params or {})
        p["_summary"] = "count"
        return int(self.request("GET", resource_type, params=p).json().get("total", 0))

    # ------------------------------------------------------------------ transactions
    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction (or batch) Bundle to the base URL; all-or-nothing on the server."""
        return self.request("POST", "", json_body=bundle).json()

    def write_entries(self, entries: Iterable[dict[str, Any]], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      progress: Any = None) -> dict[str, int]:
        """Write entries as consecutive transaction chunks; returns counts per response status/type.

        A failure raises after the chunks already committed (each chunk is atomic); re-running writes
        the same deterministic resources again, so a retry completes the job without duplicates.
        """
        counts: dict[str, int] = {}
        n = 0
        for chunk in chunked(entries, chunk_size):
            result = self.transaction(transaction(chunk, sort=False))
            for e in result.get("entry", []):
                status = (e.get("response", {}).get("status") or "").split(" ")[0]
                counts[status] = counts.get(status, 0) + 1
            for e in chunk:
                rtype = e["resource"]["resourceType"]
                counts[rtype] = counts.get(rtype, 0) + 1
            n += len(chunk)
            if progress:
                progress(n)
        return counts


def _seg(value: str) -> str:
    from urllib.parse import quote

    return quote(str(value), safe="")


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."
