"""A loopback HTTP proxy that injects faults (status codes, delays) in front of a real server.

Used for faults a real server cannot produce on demand (HAPI answering 429/503 for a while).
Binds to 127.0.0.1 on a free port; counts requests; forwards everything else unchanged.
"""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests


@dataclass
class FaultPlan:
    #: status codes to answer, in order, before forwarding (e.g. [503, 503, 429])
    statuses: list[int] = field(default_factory=list)
    retry_after: str | None = None
    only_methods: tuple[str, ...] = ()
    seen: int = 0
    injected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self, method: str) -> int | None:
        with self.lock:
            self.seen += 1
            if self.only_methods and method not in self.only_methods:
                return None
            if self.statuses:
                self.injected += 1
                return self.statuses.pop(0)
            return None


class FaultProxy:
    def __init__(self, target: str, plan: FaultPlan | None = None) -> None:
        self.target = target.rstrip("/")
        self.plan = plan or FaultPlan()
        t = urlsplit(self.target)
        self._target_origin = f"{t.scheme}://{t.netloc}"
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy.plan.next_fault(self.command)
                if fault is not None:
                    payload = b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient","diagnostics":"injected"}]}'
                    self.send_response(fault)
                    self.send_header("Content-Type", "application/fhir+json")
                    self.send_header("Content-Length", str(len(payload)))
                    if proxy.plan.retry_after:
                        self.send_header("Retry-After", proxy.plan.retry_after)
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                resp = requests.request(self.command, proxy._target_origin + self.path, data=body, headers=headers,
                                        timeout=120, allow_redirects=False)
                content = resp.content.replace(proxy._target_origin.encode(), proxy.origin.encode())
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        continue
                    self.send_header(k, v.replace(proxy._target_origin, proxy.origin))
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.url = self.origin + urlsplit(self.target).path
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
