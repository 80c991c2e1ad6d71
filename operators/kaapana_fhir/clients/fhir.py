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
_NOT_SENT = ("NewConnectionError", "Failed to resolve", "Connection refused", "Name or service not known",
             "No route to host", "nodename nor servname")
MAX_REDIRECTS = 5
#: server-managed elements ignored when comparing what we sent with what the server stored
SERVER_MANAGED = ("meta", "text")


class UnexpectedResponse(FhirServerError):
    """The server (or a gateway in front of it) answered a 2xx that is not what FHIR promises: HTML, non-JSON, a
    truncated body, an OperationOutcome instead of the resource, or a transaction answer that does not confirm
    every entry. The message names the URL, the status and the content type."""


class AmbiguousWrite(FhirServerError):
    """A write was sent but its answer was lost or unreadable, and re-reading did not show it fully stored.

    ``committed`` / ``total``: entries found stored by re-reading (each transaction is all-or-nothing on the
    server; a re-run writes the same deterministic resources again)."""

    def __init__(self, message: str, *, committed: int = 0, total: int = 0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.committed = committed
        self.total = total


class AnswerLost(FhirConnectionError):
    """The request was sent but its answer was lost (read timeout, connection dropped, body cut off): the
    server may or may not have applied it."""


class CrossOriginRefused(FhirServerError):
    """A next link or redirect points to another origin than the configured base URL; credentials are never
    sent there."""


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, default ports filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    return scheme, (parts.hostname or "").lower(), port


def _origin_text(url: str) -> str:
    scheme, host, port = origin(url)
    return f"{scheme}://{host}:{port}"


class _Retryable(Exception):
    def __init__(self, response: requests.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


@dataclass
class WriteResult:
    """What the server confirmed for a series of transaction writes.

    ``statuses`` counts the entries per HTTP status code of their ``response.status`` (``"200"``, ``"201"``),
    ``types`` counts the entries sent per resource type; ``chunks`` is the number of transactions and
    ``retracted`` the Observations retracted (``entered-in-error``) on the way. Results of several writes add up
    with ``+=``.
    """

    statuses: dict[str, int] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)
    entries: int = 0
    chunks: int = 0
    retracted: int = 0

    def __iadd__(self, other: WriteResult) -> WriteResult:
        for mine, theirs in ((self.statuses, other.statuses), (self.types, other.types)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.entries += other.entries
        self.chunks += other.chunks
        self.retracted += other.retracted
        return self

    @property
    def created(self) -> int:
        """Entries the server answered ``201 Created``."""
        return self.statuses.get("201", 0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form for reports and XComs."""
        return {"statuses": dict(self.statuses), "types": dict(self.types), "entries": self.entries,
                "chunks": self.chunks, "retracted": self.retracted}


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


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"]+@")


def redact_text(text: str) -> str:
    """Drop the userinfo of every URL inside a free text (exception texts from requests/urllib3)."""
    return _USERINFO.sub(r"\1", text)


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
        if path.startswith(("http://", "https://")):
            return redact_url(path)  # userinfo in a link is never turned into credentials
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

    def _check_origin(self, url: str, what: str) -> None:
        """Credentials (session auth, ``Authorization``, cookies) only ever go to the configured base origin."""
        if origin(url) != origin(self.base_url):
            raise CrossOriginRefused(
                f"FHIR {what} points to {_origin_text(redact_url(url))}, not to the configured server "
                f"{_origin_text(self.base_url)}; refused, credentials are never sent to another origin (rule: same "
                "scheme, host and port as the FHIR base URL; fix the server's public base address, e.g. HAPI "
                "server_address or the proxy's X-Forwarded-* headers)", url=redact_url(url))

    def _send(self, method: str, url: str, *, params: Any, data: bytes | None,
              headers: dict[str, str]) -> requests.Response:
        """One HTTP exchange; redirects are followed only within the base origin (never with credentials
        elsewhere), at most :data:`MAX_REDIRECTS`."""
        for _ in range(MAX_REDIRECTS + 1):
            self._check_origin(url, "request")
            resp = self.session.request(method, url, params=params, data=data, headers=headers,
                                        timeout=self.timeout, allow_redirects=False)
            if resp.status_code not in (301, 302, 303, 307, 308) or "Location" not in resp.headers:
                return resp
            target = urljoin(url, resp.headers["Location"])
            if origin(target) != origin(self.base_url):
                resp.close()
                self._check_origin(target, f"redirect ({resp.status_code}) from {redact_url(url)}")
            if resp.status_code in (301, 302, 303) and method not in ("GET", "HEAD"):
                resp.close()
                raise UnexpectedResponse(
                    f"FHIR {method} {redact_url(url)} was redirected ({resp.status_code}) to "
                    f"{redact_url(target)}; refused (rule: a write is never re-sent as GET; use the final base URL)",
                    status_code=resp.status_code, url=redact_url(url))
            url, params = target, None
        raise UnexpectedResponse(f"FHIR {method} {redact_url(url)}: more than {MAX_REDIRECTS} redirects",
                                 url=redact_url(url))

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
                json_body: Any = None, headers: Mapping[str, str] | None = None,
                ok: Iterable[int] = (200, 201)) -> requests.Response:
        """Send one request with the retry policy; raise a typed error on a non-``ok`` status.

        A failure after the request was sent (read timeout, connection dropped, truncated answer) raises
        :class:`AnswerLost` so that writers re-read what was committed; a URL or redirect to another origin
        raises :class:`CrossOriginRefused` before anything is sent there.
        """
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
                resp = self._send(method, url, params=params, data=data, headers=hdrs)
                try:
                    _ = resp.content  # read the whole body inside the timeout; a truncated body raises here
                except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError,
                        requests.ConnectionError) as exc:
                    ctype = resp.headers.get("Content-Type", "") or "no Content-Type"
                    raise AnswerLost(f"FHIR {method} {safe_url} answered HTTP {resp.status_code} with {ctype} but "
                                     f"the body was cut off ({type(exc).__name__}); what the server stored is unknown",
                                     status_code=resp.status_code, url=safe_url) from None
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
        except (requests.ConnectTimeout, requests.exceptions.SSLError) as exc:
            raise FhirConnectionError(f"FHIR server at {safe_url} is unreachable ({method}): "
                                      f"{type(exc).__name__}. Check the FHIR base URL and that the server runs.",
                                      url=safe_url) from None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
            raise AnswerLost(f"FHIR {method} {safe_url}: the answer was cut off ({type(exc).__name__}); what the "
                             "server stored is unknown", url=safe_url) from None
        except requests.Timeout as exc:
            raise AnswerLost(f"FHIR server at {safe_url} did not answer {method} within {self.timeout}s: "
                             f"{type(exc).__name__}", url=safe_url) from None
        except requests.ConnectionError as exc:
            text = redact_text(_short(exc))
            # refused / DNS / no route: nothing was sent; a connection dropped later may be after the send
            if any(k in text for k in _NOT_SENT):
                raise FhirConnectionError(f"FHIR server at {safe_url} is unreachable ({method}): {text}. Check the "
                                          "FHIR base URL and that the server runs.", url=safe_url) from None
            raise AnswerLost(f"FHIR server at {safe_url} dropped the connection during {method} ({text}); what "
                             "the server stored is unknown", url=safe_url) from None
        if resp.status_code not in set(ok):
            self._raise(resp, safe_url, method)
        return resp

    @staticmethod
    def _raise(resp: requests.Response, safe_url: str, method: str, note: str = "") -> None:
        outcome = None
        try:
            body = json.loads(resp.content) if resp.content else None
            if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
                outcome = body
        except (ValueError, RecursionError):  # not JSON, or nested too deep to be an OperationOutcome
            body = None
        cls: type[FhirServerError] = FhirServerError
        if resp.status_code in (404, 410):
            cls = ResourceNotFound
        elif resp.status_code == 412:
            cls = PreconditionFailed
        err = cls(f"FHIR {method} {safe_url} failed with HTTP {resp.status_code}{note}", status_code=resp.status_code,
                  url=safe_url, outcome=outcome)
        diag = err.diagnostics or (_body_excerpt(resp) if not outcome else "")
        if diag:
            err.args = (f"{err.args[0]}: {diag}",)
        raise err

    def _json(self, resp: requests.Response, method: str, *, expect: str | None = None,
              resource_id: str | None = None) -> dict[str, Any]:
        """The FHIR JSON body of a 2xx answer, checked: JSON object with a ``resourceType`` (``expect`` when
        given, and ``resource_id``); an OperationOutcome, HTML, non-JSON or truncated body is
        :class:`UnexpectedResponse` naming the URL, the status and the content type."""
        safe_url = redact_url(resp.url or "")
        ctype = resp.headers.get("Content-Type", "") or "no Content-Type"
        where = f"FHIR {method} {safe_url} answered HTTP {resp.status_code} with {ctype}"
        try:
            body = json.loads(resp.content) if resp.content else None
        except (ValueError, RecursionError):
            raise UnexpectedResponse(f"{where}, not FHIR JSON (truncated or not JSON: {_body_excerpt(resp)})",
                                     status_code=resp.status_code, url=safe_url) from None
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise UnexpectedResponse(f"{where}: {'an empty body' if body is None else 'JSON without resourceType'}"
                                     f" (rule: a FHIR resource{' ' + expect if expect else ''})",
                                     status_code=resp.status_code, url=safe_url)
        rtype = body["resourceType"]
        if expect and rtype != expect:
            outcome = body if rtype == "OperationOutcome" else None
            err = UnexpectedResponse(f"{where}: a {rtype} instead of a {expect}", status_code=resp.status_code,
                                     url=safe_url, outcome=outcome)
            if err.diagnostics:
                err.args = (f"{err.args[0]}: {err.diagnostics}",)
            raise err
        if resource_id is not None and body.get("id") != resource_id:
            raise UnexpectedResponse(f"{where}: {rtype}/{body.get('id')} instead of {rtype}/{resource_id}",
                                     status_code=resp.status_code, url=safe_url)
        return body

    # ------------------------------------------------------------------ REST operations
    def capabilities(self) -> dict[str, Any]:
        return self._json(self.request("GET", "metadata"), "GET", expect="CapabilityStatement")

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
        return self.read_with_etag(resource_type, resource_id)[0]

    def read_with_etag(self, resource_type: str, resource_id: str) -> tuple[dict[str, Any], str | None]:
        resp = self.request("GET", f"{resource_type}/{_seg(resource_id)}")
        return self._json(resp, "GET", expect=resource_type, resource_id=resource_id), resp.headers.get("ETag")

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        return self._json(self.request("POST", resource["resourceType"], json_body=resource,
                                       headers={"Prefer": "return=representation"}),
                          "POST", expect=resource["resourceType"])

    def conditional_create(self, resource: dict[str, Any], query: Mapping[str, str]) -> tuple[dict[str, Any], bool]:
        """Create unless a resource matches ``query`` (``If-None-Exist``). Returns (resource, created)."""
        from urllib.parse import urlencode

        resp = self.request("POST", resource["resourceType"], json_body=resource,
                            headers={"If-None-Exist": urlencode(query), "Prefer": "return=representation"})
        return self._json(resp, "POST", expect=resource["resourceType"]), resp.status_code == 201

    def update(self, resource: dict[str, Any], *, if_match: str | None = None) -> dict[str, Any]:
        """``PUT <type>/<id>`` (create-or-replace with a client id); ``if_match`` makes it conditional.

        The answer is checked (the stored resource of that type and id); an answer that is lost or unreadable
        is resolved by re-reading the resource: stored as sent → returned, else :class:`AmbiguousWrite`.
        """
        rtype, rid = resource["resourceType"], resource["id"]
        headers = {"Prefer": "return=representation"}
        if if_match:
            headers["If-Match"] = if_match
        try:
            resp = self.request("PUT", f"{rtype}/{_seg(rid)}", json_body=resource, headers=headers)
            return self._json(resp, "PUT", expect=rtype, resource_id=rid)
        except (AnswerLost, UnexpectedResponse) as exc:
            stored = self._verify([{"resource": resource, "request": {"method": "PUT", "url": f"{rtype}/{rid}"}}],
                                  exc, "PUT")
            return stored[0]

    def delete(self, resource_type: str, resource_id: str) -> None:
        self.request("DELETE", f"{resource_type}/{_seg(resource_id)}", ok=(200, 202, 204))

    def validate(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Run the server's ``$validate``; returns the OperationOutcome (also for invalid input)."""
        resp = self.request("POST", f"{resource['resourceType']}/$validate", json_body=resource,
                            ok=(200, 400, 412, 422))
        return self._json(resp, "POST", expect="OperationOutcome")

    # ------------------------------------------------------------------ search
    def search_pages(self, resource_type: str | None,
                     params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
        """Yield searchset Bundles page by page, following ``link[relation=next]`` within the base origin only
        (a next link to another origin raises :class:`CrossOriginRefused`; credentials stay at the base)."""
        path = resource_type or ""
        bundle = self._json(self.request("GET", path, params=params), "GET", expect="Bundle")
        while True:
            yield bundle
            nxt = next((lnk.get("url") for lnk in bundle.get("link", []) if lnk.get("relation") == "next"), None)
            if not nxt:
                return
            self._check_origin(self._url(nxt), "search next link")
            bundle = self._json(self.request("GET", nxt), "GET", expect="Bundle")

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
        total = self._json(self.request("GET", resource_type, params=p), "GET", expect="Bundle").get("total", 0)
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise UnexpectedResponse(f"FHIR GET {self.base_url}/{resource_type}?_summary=count: total is {total!r} "
                                     "(rule: a non-negative integer)", url=self.base_url)
        return int(total)

    # ------------------------------------------------------------------ transactions
    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction (or batch) Bundle to the base URL and check what the server says it stored.

        The answer must be a Bundle of type ``transaction-response`` (``batch-response``) with one entry per
        request, each with a 2xx ``response.status``; anything else (an OperationOutcome with 200, HTML, a
        truncated body) is :class:`UnexpectedResponse` naming the URL and what came back. When the answer is
        lost or unreadable the entries are re-read: all stored as sent → a ``transaction-response`` built from
        the re-read (with ``response.status`` ``200 (verified)``), else :class:`AmbiguousWrite` naming how many
        were found.
        """
        kind = bundle.get("type", "transaction")
        entries = bundle.get("entry", [])
        read_only = bool(entries) and all((e.get("request") or {}).get("method") in ("GET", "HEAD") for e in entries)
        for attempt in (1, 2):
            try:
                resp = self.request("POST", "", json_body=bundle)
                answer = self._json(resp, "POST", expect="Bundle")
                break
            except (AnswerLost, UnexpectedResponse) as exc:
                if read_only:  # a batch of reads changes nothing: ask once more, then fail
                    if attempt == 2:
                        raise
                    log.warning("%s; reading again", exc)
                    continue
                return self._verified_response(kind, entries, exc)
        self.check_transaction_response(bundle, answer, url=redact_url(resp.url or self.base_url))
        return answer

    def _verified_response(self, kind: str, entries: list[dict[str, Any]], exc: FhirServerError) -> dict[str, Any]:
        """After a lost or unreadable answer to a write: re-read, and answer as the server would have."""
        stored = self._verify(entries, exc, "POST")
        return {"resourceType": "Bundle", "type": f"{kind}-response",
                "entry": [{"response": {"status": "200 (verified)",
                                        "location": f"{r['resourceType']}/{r['id']}"}} for r in stored]}

    @staticmethod
    def check_transaction_response(bundle: dict[str, Any], answer: dict[str, Any], *, url: str) -> None:
        """Raise :class:`UnexpectedResponse` unless ``answer`` confirms every entry of ``bundle`` (a read of an
        absent resource in a batch may answer 404/410)."""
        kind = bundle.get("type", "transaction")
        want = f"{kind}-response"
        sent = bundle.get("entry", [])
        got = answer.get("entry", [])
        if answer.get("type") != want:
            raise UnexpectedResponse(f"FHIR POST {url}: answer is a Bundle of type {answer.get('type')!r}, not "
                                     f"{want!r} (rule: a {kind} is confirmed by a {want})", url=url)
        if not isinstance(got, list) or len(got) != len(sent):
            raise UnexpectedResponse(f"FHIR POST {url}: {want} has {len(got) if isinstance(got, list) else 0} "
                                     f"entries for {len(sent)} requests (rule: one response entry per request)",
                                     url=url)
        bad: list[str] = []
        first_status, outcome = 0, None
        for i, (e, req) in enumerate(zip(got, sent, strict=False)):
            response = (e if isinstance(e, dict) else {}).get("response") or {}
            status = str(response.get("status") or "")
            method = (req.get("request") or {}).get("method")
            if status[:1] != "2" and not (method in ("GET", "HEAD") and status[:3] in ("404", "410")):
                what = (req.get("request") or {}).get("url", "?")
                bad.append(f"entry {i} ({what}): {status or 'no status'}")
                if not first_status:
                    first_status = int(status[:3]) if status[:3].isdigit() else 0
                    outcome = response.get("outcome")
        if bad:
            err = UnexpectedResponse(f"FHIR POST {url}: {want} reports {len(bad)} of {len(sent)} entries not "
                                     f"stored: {'; '.join(bad[:5])}", url=url, outcome=outcome,
                                     status_code=first_status)
            if err.diagnostics:
                err.args = (f"{err.args[0]} ({err.diagnostics})",)
            raise err

    def _verify(self, entries: Sequence[dict[str, Any]], cause: FhirServerError, method: str) -> list[dict[str, Any]]:
        """After an ambiguous answer: re-read every ``PUT <type>/<id>`` entry; all stored as sent → the stored
        resources, else :class:`AmbiguousWrite` (names how many were found stored)."""
        stored: list[dict[str, Any]] = []
        checkable = True
        for e in entries:
            req = e.get("request") or {}
            res = e.get("resource") or {}
            if req.get("method") != "PUT" or not res.get("id"):
                checkable = False
                break
            try:
                current = self.read(res["resourceType"], res["id"])
            except ResourceNotFound:
                continue
            if _content(current) == _content(res):
                stored.append(current)
        total = len(entries)
        if checkable and len(stored) == total:
            log.warning("%s; re-read shows all %d written resources stored as sent, continuing", cause, total)
            return stored
        found = f"{len(stored)} of {total}" if checkable else "an unknown number"
        raise AmbiguousWrite(f"{cause}; re-read found {found} resources stored as sent (rule: every write is "
                             "confirmed by the server; a re-run writes the same resources again without duplicates)",
                             committed=len(stored), total=total, status_code=cause.status_code, url=cause.url,
                             outcome=cause.outcome)

    def write_entries(self, entries: Iterable[dict[str, Any]], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      progress: Any = None) -> WriteResult:
        """Write entries as consecutive transaction chunks; returns what the server confirmed.

        Every chunk's answer is checked (:meth:`transaction`). A failure raises after the chunks already
        committed (each chunk is atomic); re-running writes the same deterministic resources again, so a
        retry completes the job without duplicates.
        """
        out = WriteResult()
        for chunk in chunked(entries, chunk_size):
            result = self.transaction(transaction(chunk, sort=False))
            for e in result.get("entry", []):
                status = (e.get("response", {}).get("status") or "").split(" ")[0]
                out.statuses[status] = out.statuses.get(status, 0) + 1
            for e in chunk:
                rtype = e["resource"]["resourceType"]
                out.types[rtype] = out.types.get(rtype, 0) + 1
            out.entries += len(chunk)
            out.chunks += 1
            if progress:
                progress(out.entries)
        return out


def _content(resource: dict[str, Any]) -> str:
    """Canonical JSON of a resource without server-managed elements (meta, text)."""
    return json.dumps({k: v for k, v in resource.items() if k not in SERVER_MANAGED}, sort_keys=True,
                      separators=(",", ":"))


def _seg(value: str) -> str:
    from urllib.parse import quote

    return quote(str(value), safe="")


def _body_excerpt(resp: requests.Response, limit: int = 300) -> str:
    text = redact_text(resp.content[:limit].decode("utf-8", "replace"))
    return " ".join(text.split()) + ("..." if len(resp.content) > limit else "")


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."
