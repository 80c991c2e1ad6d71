"""Client of Kaapana's backend for "send to Kaapana": a dataset of the cohort's series, then a workflow on it.

Contract (kaapana/kaapana tag 0.6.0, ``services/base/kaapana-backend/docker/files/app``; router
``workflows/routers/client.py`` mounted at ``/client`` in ``main.py``):

* ``POST /client/dataset`` body ``DatasetCreate`` = ``{"name", "identifiers": [SeriesInstanceUID, ...],
  "kaapana_instance_id"?, "username"?}``; the backend overwrites ``username`` from the header
  ``x-forwarded-preferred-username`` (required) and takes the project from the header ``Project`` (the
  project object as JSON, ``get_project`` in ``dependencies.py``; its ``id`` scopes the dataset, the default
  project when absent). Answers ``Dataset`` ``{name, time_created, time_updated, username, identifiers}``;
  409 "Dataset already exists!" when the name is taken in the project.
* ``POST /client/workflow`` body ``JsonSchemaData`` = ``{"dag_id", "instance_names": [...], "conf_data":
  {"data_form": {"dataset_name", "identifiers"}, "workflow_form": {...}}, "username"?, "federated": false}``;
  the backend sets ``conf_data.project_form`` from the ``Project`` header and checks the DAG against the
  project's software mappings unless the ``x-forwarded-access-token`` JWT has the realm role ``admin``.

Inside the cluster the backend is reached directly (``KAAPANA_BACKEND_URL``, as Kaapana's Airflow pods get it),
so the headers the auth proxy would set are set here from the Airflow user.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import requests


class KaapanaBackendError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def backend_url() -> str:
    url = os.environ.get("KAAPANA_BACKEND_URL") or "http://kaapana-backend-service.services.svc:5000"
    return url.rstrip("/")


def project_object(name: str) -> dict[str, Any]:
    """The Kaapana project object for the ``Project`` header: from ``KAAPANA_FHIR_PROJECT_OBJECTS`` (JSON
    object name → project object, e.g. ``{"admin": {"id": "...", "name": "admin", ...}}``), else ``{"name"}``
    (the backend then uses its default project)."""
    raw = os.environ.get("KAAPANA_FHIR_PROJECT_OBJECTS")
    if raw:
        try:
            objs = json.loads(raw)
        except ValueError as exc:
            raise KaapanaBackendError(500, f"KAAPANA_FHIR_PROJECT_OBJECTS is not JSON: {exc}") from None
        if isinstance(objs, Mapping) and isinstance(objs.get(name), Mapping):
            return dict(objs[name])
    return {"name": name}


class KaapanaBackend:
    def __init__(self, base_url: str | None = None, *, session: requests.Session | None = None,
                 timeout: float = 60.0) -> None:
        self.base_url = (base_url or backend_url()).rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout

    def _post(self, path: str, body: dict[str, Any], project: Mapping[str, Any], username: str) -> Any:
        headers = {"Project": json.dumps(dict(project)), "x-forwarded-preferred-username": username,
                   "Content-Type": "application/json"}
        try:
            r = self.session.post(f"{self.base_url}{path}", data=json.dumps(body), headers=headers,
                                  timeout=self.timeout)
        except requests.RequestException as exc:
            raise KaapanaBackendError(502, f"Kaapana backend at {self.base_url} is unreachable: "
                                           f"{exc.__class__.__name__}") from None
        if not r.ok:
            try:
                detail = r.json().get("detail")
            except ValueError:
                detail = r.text[:200]
            raise KaapanaBackendError(r.status_code, f"Kaapana backend POST {path}: HTTP {r.status_code}: {detail}")
        return r.json()

    def create_dataset(self, name: str, identifiers: Sequence[str], *, project: Mapping[str, Any],
                       username: str) -> dict[str, Any]:
        return dict(self._post("/client/dataset", {"name": name, "identifiers": list(identifiers)}, project,
                               username))

    def run_workflow(self, dag_id: str, dataset_name: str, identifiers: Sequence[str], *,
                     project: Mapping[str, Any], username: str, instance_names: Sequence[str],
                     workflow_form: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = {"dag_id": dag_id, "instance_names": list(instance_names), "federated": False, "username": username,
                "conf_data": {"data_form": {"dataset_name": dataset_name, "identifiers": list(identifiers)},
                              "workflow_form": dict(workflow_form or {})}}
        return dict(self._post("/client/workflow", body, project, username))
