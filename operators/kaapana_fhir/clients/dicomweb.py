"""DICOMweb access (QIDO-RS, WADO-RS, STOW-RS) on top of ``dicomweb-client`` (no Airflow).

Errors become :class:`~kaapana_fhir.exceptions.DicomWebError` naming the URL and the request;
search values are passed as parameters (encoded by requests), never spliced into URLs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from requests.adapters import BaseAdapter

from kaapana_fhir.clients.fhir import redact_text, redact_url
from kaapana_fhir.exceptions import DicomWebError

log = logging.getLogger(__name__)

#: Series-level attributes QIDO-RS does not return by default but the FHIR mapping needs.
SERIES_INCLUDE_FIELDS = (
    "00080021", "00080031", "00080201", "00180015", "00200060", "00200062", "00082218", "00080070",
    "00081090", "00181000", "00081010", "00181020", "0008103E", "00200011", "00201209", "00080060",
    "00100010", "00100020", "00100021", "00100030", "00100040", "00101010", "00080020", "00080030",
    "00080050", "00081030", "00080090", "00081032", "00401002", "00080005",
)


RETRY_STATUS = frozenset({408, 429, 502, 503, 504})
MAX_ATTEMPTS = 4
RETRY_WAIT_S = 0.5


class _Transient(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _TimeoutAdapter(BaseAdapter):
    """Delegates to the session's adapter, giving every request ``timeout`` when the caller set none
    (dicomweb-client sends its requests without a timeout: a stalled PACS would block forever)."""

    def __init__(self, inner: BaseAdapter, timeout: float | tuple[float, float]) -> None:
        super().__init__()
        self.inner, self.timeout = inner, timeout

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: float | tuple[float, float] | tuple[float, None] | None = None, verify: bool | str = True,
             cert: Any = None, proxies: Any = None) -> requests.Response:
        return self.inner.send(request, stream=stream, timeout=self.timeout if timeout is None else timeout,
                               verify=verify, cert=cert, proxies=proxies)

    def close(self) -> None:
        self.inner.close()


def _userinfo(url: str) -> tuple[str, str] | None:
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.username is None:
        return None
    return unquote(parts.username), unquote(parts.password or "")


class DicomWeb:
    """A DICOMweb service (e.g. Orthanc ``http://127.0.0.1:8042/dicom-web`` or Kaapana's dcm4chee).

    Parameters
    ----------
    url: the DICOMweb base (QIDO/WADO/STOW prefixes are the same, as in Orthanc and dcm4chee).
    session: a prepared ``requests.Session`` (auth, certificates).
    token: bearer token.
    timeout: seconds per request (connect and each read), for every QIDO/WADO/STOW call.

    Credentials in the URL (``http://user:pass@pacs/dicom-web``) move into the session; ``url`` and
    ``wado_rs_base`` (``Endpoint.address``) never contain them.
    """

    def __init__(self, url: str, *, session: requests.Session | None = None, token: str | None = None,
                 verify: bool | str = True, timeout: float = 60.0) -> None:
        if not url or not url.strip():
            raise ValueError('Argument "url" must not be empty.')
        self.session = session or requests.Session()
        creds = _userinfo(url.strip())
        if creds:
            self.session.auth = creds
        self.url = redact_url(url.strip()).rstrip("/")
        self.session.verify = verify
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        for prefix in ("https://", "http://"):
            inner = self.session.get_adapter(prefix)
            if not isinstance(inner, _TimeoutAdapter):
                self.session.mount(prefix, _TimeoutAdapter(inner, timeout))
        self._client = DICOMwebClient(url=self.url, session=self.session, timeout=timeout)
        # dicomweb-client's own retry (the ``retrying`` package) also retries every exception, so a stalled
        # PACS took max_attempts x timeout + back-off: retries are done here instead, on status codes only
        self._client.set_http_retry_params(retry=False)

    @property
    def wado_rs_base(self) -> str:
        """The WADO-RS service base for ``Endpoint.address`` (clients append ``/studies/<uid>``)."""
        return self.url

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return self._once(what, fn, *args, **kwargs)
            except _Transient as exc:
                if attempt == MAX_ATTEMPTS:
                    raise DicomWebError(f"DICOMweb {what} at {redact_url(self.url)} failed with HTTP {exc.status} "
                                        f"after {MAX_ATTEMPTS} attempts") from None
                wait = min(RETRY_WAIT_S * 2 ** (attempt - 1), 8.0)
                log.warning("DICOMweb %s: HTTP %s, retry %d/%d in %.1fs", what, exc.status, attempt, MAX_ATTEMPTS,
                            wait)
                time.sleep(wait)
        return None  # pragma: no cover - the loop returns or raises

    def _once(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status == 404:
                return None
            if status in RETRY_STATUS:
                raise _Transient(status) from None
            raise DicomWebError(f"DICOMweb {what} at {redact_url(self.url)} failed with HTTP {status}") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            why = f"no answer within {self.timeout}s" if isinstance(exc, requests.Timeout) else type(exc).__name__
            raise DicomWebError(f"DICOMweb server at {redact_url(self.url)} is unreachable during {what}: "
                                f"{why}. Check the DICOMweb URL and that the PACS runs.") from None
        except Exception as exc:  # dicomweb-client wraps retries in tenacity.RetryError
            if type(exc).__name__ == "RetryError":
                raise DicomWebError(f"DICOMweb {what} at {redact_url(self.url)} kept failing after retries") from None
            if isinstance(exc, ValueError):  # dicomweb-client: an answer that is not DICOM JSON / multipart
                raise DicomWebError(f"DICOMweb {what} at {redact_url(self.url)}: unexpected answer "
                                    f"({redact_text(str(exc))[:200]})") from None
            raise

    # QIDO-RS ---------------------------------------------------------------
    def search_studies(self, filters: dict[str, Any] | None = None, *,
                       fields: Sequence[str] = ()) -> list[dict[str, Any]]:
        return self._call("QIDO-RS studies", self._client.search_for_studies, search_filters=filters or {},
                          fields=list(fields) or None) or []

    def search_series(self, study_uid: str | None = None, filters: dict[str, Any] | None = None, *,
                      fields: Sequence[str] = SERIES_INCLUDE_FIELDS) -> list[dict[str, Any]]:
        return self._call("QIDO-RS series", self._client.search_for_series, study_instance_uid=study_uid,
                          search_filters=filters or {}, fields=list(fields) or None) or []

    def search_instances(self, study_uid: str, series_uid: str, *, fields: Sequence[str] = ()) -> list[dict[str, Any]]:
        return self._call("QIDO-RS instances", self._client.search_for_instances, study_instance_uid=study_uid,
                          series_instance_uid=series_uid, fields=list(fields) or None) or []

    def find_series(self, series_uid: str) -> dict[str, Any] | None:
        """The QIDO-RS series record of one SeriesInstanceUID (0020,000E), or None."""
        res = self.search_series(None, {"SeriesInstanceUID": series_uid})
        return res[0] if res else None

    # WADO-RS ---------------------------------------------------------------
    def series_metadata(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
        return self._call("WADO-RS series metadata", self._client.retrieve_series_metadata,
                          study_instance_uid=study_uid, series_instance_uid=series_uid) or []

    def instance_metadata(self, study_uid: str, series_uid: str, sop_uid: str) -> dict[str, Any] | None:
        meta: dict[str, Any] | None = self._call(
            "WADO-RS instance metadata", self._client.retrieve_instance_metadata, study_instance_uid=study_uid,
            series_instance_uid=series_uid, sop_instance_uid=sop_uid)
        return meta

    def retrieve_series(self, study_uid: str, series_uid: str) -> list[Any]:
        """All instances of a series as pydicom Datasets."""
        return self._call("WADO-RS series", self._client.retrieve_series, study_instance_uid=study_uid,
                          series_instance_uid=series_uid) or []

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Any:
        return self._call("WADO-RS instance", self._client.retrieve_instance, study_instance_uid=study_uid,
                          series_instance_uid=series_uid, sop_instance_uid=sop_uid)

    # STOW-RS ---------------------------------------------------------------
    def store(self, datasets: Sequence[Any]) -> Any:
        return self._call("STOW-RS", self._client.store_instances, datasets=list(datasets))
