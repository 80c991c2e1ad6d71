"""A local stand-in for Kaapana's backend, built from its contract at tag 0.6.0 (see
``kaapana_fhir.web.kaapana_backend``): ``POST /client/dataset`` and ``POST /client/workflow`` with the
``Project`` and ``x-forwarded-preferred-username`` headers, 409 for a dataset name taken in the project, 422 for
bodies that do not fit ``DatasetCreate`` / ``JsonSchemaData``. Records every accepted call."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeBackend:
    url: str
    datasets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    workflows: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def fake_backend() -> Iterator[FakeBackend]:
    state = FakeBackend("")

    class H(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return

        def _send(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"null")
            try:
                project = json.loads(self.headers["Project"])
                user = self.headers["x-forwarded-preferred-username"]
            except (KeyError, TypeError, ValueError):
                self._send(500, {"detail": "Internal Server Error"})  # what the real backend does (KeyError)
                return
            if self.path == "/client/dataset":
                ok = (isinstance(body, dict) and isinstance(body.get("identifiers", []), list)
                      and all(isinstance(i, str) for i in body.get("identifiers", [])))
                if not ok:
                    self._send(422, {"detail": "validation error"})
                    return
                key = (str(project.get("id") or "default"), str(body.get("name")))
                if key in state.datasets:
                    self._send(409, {"detail": "Dataset already exists!"})
                    return
                ds = {"name": body.get("name"), "time_created": "2026-01-01T00:00:00",
                      "time_updated": "2026-01-01T00:00:00", "username": user, "identifiers": body["identifiers"]}
                state.datasets[key] = {**ds, "project": project}
                self._send(200, ds)
            elif self.path == "/client/workflow":
                if not isinstance(body, dict) or not isinstance(body.get("conf_data", {}), dict):
                    self._send(422, {"detail": "validation error"})
                    return
                body["conf_data"]["project_form"] = project
                state.workflows.append({**body, "username": body.get("username") or user})
                self._send(200, {"workflow_id": f"wf-{len(state.workflows)}", "dag_id": body.get("dag_id"),
                                 "username": user, "federated": False})
            else:
                self._send(404, {"detail": "Not Found"})

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    state.url = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield state
    finally:
        srv.shutdown()
        srv.server_close()
