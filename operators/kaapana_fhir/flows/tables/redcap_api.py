"""Pull a REDCap project through its API with PyCap: records, data dictionary (metadata) and project info.

``kaapana-fhir import-table --redcap-url https://redcap.example.org/api/ [--redcap-token-conn CONN_ID]`` exports
what a user would otherwise download by hand (the flat records JSON export and the data dictionary) and then takes
the same path as a file export with ``--preset redcap`` (or the ``--mapping`` given).

**Token.** From an Airflow Connection (``--redcap-token-conn``, read by the CLI: its password; its host is the URL when
``--redcap-url`` is not given) or, for the plain CLI, the environment variable :data:`TOKEN_ENV`. It is only sent
in the POST body to the API URL itself: redirects are never followed (REDCap answers the API at one address), the
URL must be ``https`` unless it is a loopback address, and the token never appears in a log line, an error or a
report (errors name the URL and the HTTP status only).

**Project name** (identifier system ``urn:kaapana-fhir:redcap:<project>:record-id``): the project title in
CamelCase without punctuation, at most 20 characters (``Lung Imaging`` → ``LungImaging``), the prefix REDCap puts
on its export file names, so a project imported from file exports and later through the API keeps its Patients.
``--project`` overrides it.

**Bounds.** PyCap reads each answer whole; the records export is refused above :data:`MAX_RECORDS` records and
each answer above :data:`MAX_ANSWER_BYTES` (checked from ``Content-Length`` and again on the body).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

import requests

from kaapana_fhir.exceptions import ConfigError, KaapanaFhirError

log = logging.getLogger(__name__)

#: environment variable holding the API token for the plain CLI
TOKEN_ENV = "KAAPANA_FHIR_REDCAP_TOKEN"  # noqa: S105 - the name of a variable, not a secret
#: records accepted from one export
MAX_RECORDS = 2_000_000
#: bytes accepted in one API answer
MAX_ANSWER_BYTES = 1024**3
#: seconds to wait for one API answer
TIMEOUT_S = 300.0
_TOKEN_RE = re.compile(r"[0-9A-Fa-f]{32}")


class RedcapApiError(KaapanaFhirError):
    """The REDCap API refused or failed a request (message names the URL, content and status; never the token)."""


@dataclass(frozen=True)
class RedcapExport:
    """One project's records (flat JSON export), data dictionary (metadata JSON) and project info."""

    records: list[dict[str, Any]]
    metadata: list[dict[str, Any]]
    project_info: dict[str, Any]
    project: str

    @property
    def table_name(self) -> str:
        """The name the import reports and records as the demographics' source."""
        return f"{self.project}.redcap-api.json"

    def records_json(self) -> bytes:
        return json.dumps(self.records, ensure_ascii=False).encode("utf-8")

    def dictionary_text(self) -> str:
        return json.dumps(self.metadata, ensure_ascii=False)


def project_name(title: str) -> str:
    """``Lung Imaging (pilot)`` → ``LungImagingPilot``: CamelCase words of the title, at most 20 characters."""
    words = re.sub(r"[^A-Za-z0-9 ]", "", title).split()
    return "".join(w[:1].upper() + w[1:] for w in words)[:20] or "redcap"


def check_url(url: str) -> str:
    """The API URL, ending in ``/api/``; ``https`` only, except for a loopback address (tests, tunnels)."""
    u = urllib.parse.urlsplit(url.strip())
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"REDCap URL {url!r} is not an http(s) URL (rule: --redcap-url https://HOST/api/)")
    if u.username or u.password or u.query or u.fragment:
        raise ConfigError("REDCap URL must not carry user info, a query or a fragment (rule: the token comes from "
                          f"a Connection or {TOKEN_ENV})")
    if u.scheme == "http":
        try:
            loopback = ipaddress.ip_address(u.hostname).is_loopback
        except ValueError:
            loopback = u.hostname == "localhost"
        if not loopback:
            raise ConfigError(f"REDCap URL {u.scheme}://{u.netloc}{u.path} is plain http (rule: the API token is "
                              "only sent over https, or to a loopback address)")
    path = u.path if u.path.endswith("/") else u.path + "/"
    if not path.endswith("/api/"):
        raise ConfigError(f"REDCap URL {url!r} does not end in /api/ (rule: the REDCap API endpoint, e.g. "
                          "https://redcap.example.org/api/)")
    return urllib.parse.urlunsplit((u.scheme, u.netloc, path, "", ""))


def check_token(token: str | None, where: str) -> str:
    """A REDCap API token: 32 hexadecimal characters (the value itself is never put into a message)."""
    token = (token or "").strip()
    if not token:
        raise ConfigError(f"no REDCap API token in {where} (rule: --redcap-token-conn CONN_ID with the token as "
                          f"the password, or the environment variable {TOKEN_ENV})")
    if not _TOKEN_RE.fullmatch(token):
        raise ConfigError(f"the REDCap API token in {where} is not 32 hexadecimal characters (rule: a project's "
                          f"API token; {len(token)} characters given)")
    return token


def token_from_env() -> str:
    return check_token(os.environ.get(TOKEN_ENV), f"the environment variable {TOKEN_ENV}")


def token_from_connection(password: str | None, host: str | None, port: int | None,
                          conn_id: str) -> tuple[str, str | None]:
    """``(token, url)`` from a Connection's fields (read by the caller; flows never import Airflow): the password
    is the token; the host is the API URL, or a bare host name meaning ``https://HOST[:PORT]/api/``."""
    url = None
    if host:
        url = host if "://" in host else f"https://{host}{f':{port}' if port else ''}/api/"
    return check_token(password, f"Connection {conn_id!r} (password)"), url


def _guard(url: str) -> Any:
    """A requests response hook: no redirects, 2xx only, bounded size; errors name the URL and status only."""

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        content = urllib.parse.parse_qs(response.request.body or "").get("content", ["?"])[0] \
            if isinstance(response.request.body, str) else "?"
        if response.is_redirect or 300 <= response.status_code < 400:
            raise RedcapApiError(f"REDCap API {url} answered content={content} with a redirect (HTTP "
                                 f"{response.status_code}); not followed, the token is only sent to the API URL "
                                 "(rule: --redcap-url is the final API address)")
        size = int(response.headers.get("Content-Length") or 0)
        if size > MAX_ANSWER_BYTES or len(response.content) > MAX_ANSWER_BYTES:
            raise RedcapApiError(f"REDCap API {url}: the content={content} answer exceeds {MAX_ANSWER_BYTES} bytes "
                                 "(rule: export size limit)")
        if response.status_code >= 400:
            detail = ""
            try:
                body = response.json()
                if isinstance(body, dict) and isinstance(body.get("error"), str):
                    detail = f": {body['error'][:200]}"
            except ValueError:
                pass  # not JSON: the status says enough
            raise RedcapApiError(f"REDCap API {url} refused content={content} with HTTP {response.status_code}"
                                 f"{detail}")
        return response

    return hook


def fetch_export(url: str, token: str, *, project: str | None = None, timeout: float = TIMEOUT_S) -> RedcapExport:
    """Export records (flat, raw codes), metadata and project info of the token's project through PyCap."""
    from redcap import Project, RedcapError

    url = check_url(url)
    token = check_token(token, "the token given")
    api = Project(url, token, timeout=timeout, allow_redirects=False, hooks={"response": _guard(url)})

    def call(what: str, fn: Any, **kw: Any) -> Any:
        try:
            return fn(format_type="json", **kw)
        except RedcapApiError:
            raise
        except RedcapError as exc:
            msg = str(exc)[:200].replace(token, "***")
            raise RedcapApiError(f"REDCap API {url} refused content={what}: {msg}") from None
        except requests.RequestException as exc:
            raise RedcapApiError(f"REDCap API {url} unreachable for content={what} ({type(exc).__name__})") from None
        except ValueError:
            raise RedcapApiError(f"REDCap API {url}: the content={what} answer is not JSON (rule: format=json)") \
                from None

    info = call("project", api.export_project_info)
    # the cached ``metadata`` property (content=metadata, format=json): export_records reuses it to name every
    # field and form-complete field explicitly, as PyCap does, so the dictionary is fetched once
    metadata = call("metadata", lambda format_type: api.metadata)
    records = call("record", api.export_records, raw_or_label="raw", record_type="flat")
    if not isinstance(info, dict):
        raise RedcapApiError(f"REDCap API {url}: project info is not a JSON object (rule: content=project)")
    for what, value in (("metadata", metadata), ("record", records)):
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise RedcapApiError(f"REDCap API {url}: the content={what} answer is not a list of objects")
    if len(records) > MAX_RECORDS:
        raise RedcapApiError(f"REDCap API {url}: {len(records)} records (rule: at most {MAX_RECORDS} per import)")
    name = project or project_name(str(info.get("project_title") or ""))
    log.info("REDCap API %s: project %r (id %s): %d fields, %d records", url, name, info.get("project_id"),
             len(metadata), len(records))
    return RedcapExport(records, metadata, info, name)
