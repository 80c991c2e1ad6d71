"""Client of the retrieval API (for notebooks, dashboards' helpers and the bench): ``requests`` only.

>>> api = ExplorerClient("http://airflow:8080/kaapana-fhir/api", auth=("user", "password"))  # Airflow 2
>>> df = api.rows("all", filters=["Overall.Stage=IIIa"], segment_label="GTV-1")            # pandas DataFrame
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

import requests


class ApiClientError(RuntimeError):
    """The API answered with an error (status and the server's reason)."""


class ExplorerClient:
    def __init__(self, base_url: str, *, auth: tuple[str, str] | None = None, token: str | None = None,
                 project: str | None = None, session: requests.Session | None = None, timeout: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        if auth:
            self.session.auth = auth
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.project = project
        self.timeout = timeout

    def _params(self, filters: Sequence[str] = (), segment_label: str | None = None,
                **kw: Any) -> list[tuple[str, str]]:
        p: list[tuple[str, str]] = []
        if self.project:
            p.append(("project", self.project))
        p += [("filter", f) for f in filters]
        if segment_label:
            p.append(("segment_label", segment_label))
        p += [(k, str(v)) for k, v in kw.items() if v is not None]
        return p

    def get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> requests.Response:
        r = self.session.get(f"{self.base_url}/{path.lstrip('/')}", params=list(params), timeout=self.timeout)
        if not r.ok:
            try:
                reason = r.json().get("error")
            except ValueError:
                reason = r.text[:200]
            raise ApiClientError(f"GET {path}: HTTP {r.status_code}: {reason}")
        return r

    def cohorts(self) -> list[dict[str, Any]]:
        return list(self.get("cohorts").json()["cohorts"])

    def summary(self, cohort: str, **kw: Any) -> dict[str, Any]:
        return dict(self.get(f"cohorts/{cohort}/summary", self._params(**kw)).json())

    def page(self, cohort: str, *, offset: int = 0, limit: int = 100, filters: Sequence[str] = (),
             segment_label: str | None = None) -> dict[str, Any]:
        """One JSON page (``total``, ``rows``, ``next_offset``)."""
        return dict(self.get(f"cohorts/{cohort}/rows", self._params(filters, segment_label, offset=offset,
                                                                      limit=limit)).json())

    def iter_pages(self, cohort: str, *, limit: int = 1000, **kw: Any) -> Iterator[dict[str, Any]]:
        offset: int | None = 0
        while offset is not None:
            p = self.page(cohort, offset=offset, limit=limit, **kw)
            yield p
            offset = p.get("next_offset")

    def rows(self, cohort: str, *, filters: Sequence[str] = (), segment_label: str | None = None,
             fmt: str = "parquet") -> Any:
        """The whole selected table as a pandas DataFrame (Parquet transfer)."""
        import pandas as pd

        r = self.get(f"cohorts/{cohort}/rows", self._params(filters, segment_label, format=fmt, limit=100_000))
        return pd.read_parquet(io.BytesIO(r.content)) if fmt == "parquet" else pd.read_csv(io.BytesIO(r.content))

    def km(self, cohort: str, time: str, *, event: str = "deceased", group: str | None = None,
           **kw: Any) -> dict[str, Any]:
        return dict(self.get(f"cohorts/{cohort}/km", self._params(time=time, event=event, group=group, **kw)).json())

    def series(self, cohort: str, **kw: Any) -> dict[str, Any]:
        return dict(self.get(f"cohorts/{cohort}/series", self._params(limit=100_000, **kw)).json())
