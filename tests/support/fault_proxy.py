"""A loopback HTTP proxy that injects faults in front of a real server (HAPI FHIR, Orthanc).

Used for faults a real server cannot produce on demand: HAPI answering 429/503 for a while, a gateway answering
200 with an OperationOutcome or an HTML page, an answer cut off after the server committed, a connection dropped
after the request was sent, a search ``next`` link pointing to another origin, a server that stalls, and forced
interleavings of concurrent writers (a hook that runs before a request is forwarded).
Binds to 127.0.0.1 on a free port; counts requests; forwards everything else unchanged.

Besides the proxy: :class:`RecordingServer` (a foreign origin recording credentials), :class:`RedirectServer`
and :class:`SinkFhirServer` (accepts transactions without storing them: measures our process, not the server).
Each is a :class:`LoopbackServer` and answers through the one response builder :func:`send`.

Modes (``FaultPlan.mode``, applied to ``FaultPlan.times`` matching requests, then the proxy forwards normally):

* ``outcome200``: answer 200 ``application/fhir+json`` with an OperationOutcome; **not forwarded** (a gateway
  that swallowed the request).
* ``html200``: answer 200 ``text/html`` (a login page / error page of a gateway); not forwarded.
* ``truncate``: forward (the server commits), then send the status line, headers with the full
  ``Content-Length`` and only half of the body, and close the connection.
* ``truncate_eof``: forward, then send half of the body without ``Content-Length`` and close (the body ends
  early, cleanly: only the JSON is broken).
* ``drop_after_send``: forward (the server commits), then close the connection without any answer.
* ``cross_origin_next``: forward; rewrite a searchset's ``next`` link to ``foreign_origin``.
* ``stall``: wait ``stall_s`` seconds (or until the proxy stops) before doing anything.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from typing_extensions import Self

MODES = ("outcome200", "html200", "truncate", "truncate_eof", "drop_after_send", "cross_origin_next", "stall")

OUTCOME = {"resourceType": "OperationOutcome",
           "issue": [{"severity": "error", "code": "exception", "diagnostics": "gateway: upstream unavailable"}]}
EMPTY_SEARCHSET = b'{"resourceType":"Bundle","type":"searchset","total":0,"entry":[]}'
HTML = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><form>login</form></body></html>"


def send(handler: http.server.BaseHTTPRequestHandler, status: int, payload: bytes = b"",
         ctype: str | None = "application/fhir+json", headers: dict[str, str] | None = None) -> None:
    """The one response builder: status, Content-Type, extra headers, Content-Length, body."""
    handler.send_response(status)
    if ctype:
        handler.send_header("Content-Type", ctype)
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no access log, :meth:`body` reads the request body."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        return

    def body(self) -> bytes | None:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (free port) running ``handler`` while the context is open."""

    def _serve(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class FaultPlan:
    #: status codes to answer, in order, before forwarding (e.g. [503, 503, 429])
    statuses: list[int] = field(default_factory=list)
    retry_after: str | None = None
    only_methods: tuple[str, ...] = ()
    #: one of :data:`MODES`, applied to the next ``times`` matching requests (-1: all)
    mode: str | None = None
    times: int = -1
    #: only requests whose path contains this text get the mode (e.g. ``"_getpages"``)
    path_contains: str = ""
    #: only requests whose body contains these bytes get the mode (e.g. ``b'"PUT"'``: writes, not batch reads)
    body_contains: bytes = b""
    stall_s: float = 30.0
    foreign_origin: str = ""
    #: called as ``before_forward(method, path, body)`` before a request is forwarded (forced interleavings);
    #: returning ``"drop"`` closes the connection without forwarding
    before_forward: Callable[[str, str, bytes | None], str | None] | None = None
    seen: int = 0
    injected: int = 0
    mode_applied: int = 0
    #: Authorization / Cookie headers of every request the proxy received: (method, path, auth, cookie)
    received: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}; one of {MODES}")

    def next_fault(self, method: str) -> int | None:
        with self.lock:
            self.seen += 1
            if self.only_methods and method not in self.only_methods:
                return None
            if self.statuses:
                self.injected += 1
                return self.statuses.pop(0)
            return None

    def take_mode(self, method: str, path: str, body: bytes | None = None) -> str | None:
        with self.lock:
            if self.mode is None or self.times == 0:
                return None
            if self.only_methods and method not in self.only_methods:
                return None
            if self.path_contains and self.path_contains not in path:
                return None
            if self.body_contains and self.body_contains not in (body or b""):
                return None
            if self.times > 0:
                self.times -= 1
            self.mode_applied += 1
            return self.mode


class FaultProxy(LoopbackServer):
    def __init__(self, target: str, plan: FaultPlan | None = None) -> None:
        self.target = target.rstrip("/")
        self.plan = plan or FaultPlan()
        t = urlsplit(self.target)
        self._target_origin = f"{t.scheme}://{t.netloc}"
        self._stopping = threading.Event()
        proxy = self

        class Handler(QuietHandler):
            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _handle(self) -> None:
                try:
                    self._serve()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test): fine
                    self.close_connection = True

            def _serve(self) -> None:
                body = self.body()
                proxy.plan.received.append((self.command, self.path, self.headers.get("Authorization"),
                                            self.headers.get("Cookie")))
                fault = proxy.plan.next_fault(self.command)
                if fault is not None:
                    payload = json.dumps({**OUTCOME, "issue": [{"severity": "error", "code": "transient",
                                                                "diagnostics": "injected"}]}).encode()
                    send(self, fault, payload,
                         headers={"Retry-After": proxy.plan.retry_after} if proxy.plan.retry_after else None)
                    return
                mode = proxy.plan.take_mode(self.command, self.path, body)
                if mode == "stall":
                    proxy._stopping.wait(proxy.plan.stall_s)
                if mode == "outcome200":
                    send(self, 200, json.dumps(OUTCOME).encode())
                    return
                if mode == "html200":
                    send(self, 200, HTML, "text/html; charset=utf-8")
                    return
                if proxy.plan.before_forward is not None and \
                        proxy.plan.before_forward(self.command, self.path, body) == "drop":
                    self._drop()  # the hook decided: never forward, close without an answer
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                resp = requests.request(self.command, proxy._target_origin + self.path, data=body, headers=headers,
                                        timeout=120, allow_redirects=False)
                content = resp.content.replace(proxy._target_origin.encode(), proxy.origin.encode())
                if mode == "drop_after_send":
                    self._drop()
                    return
                if mode == "cross_origin_next" and content[:1] == b"{":
                    doc = json.loads(content)
                    for link in doc.get("link", []):
                        if link.get("relation") == "next":
                            link["url"] = link["url"].replace(proxy.origin, proxy.plan.foreign_origin)
                    content = json.dumps(doc).encode()
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        continue
                    self.send_header(k, v.replace(proxy._target_origin, proxy.origin))
                if mode == "truncate_eof":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(content[: len(content) // 2])
                    self._drop()
                    return
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if mode == "truncate":
                    self.wfile.write(content[: len(content) // 2])
                    self._drop()
                    return
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self._serve(Handler)
        self.url = self.origin + urlsplit(self.target).path

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        super().__exit__(*exc)


class RecordingServer(LoopbackServer):
    """A foreign origin (another port on 127.0.0.1) that records the credentials sent to it and answers an
    empty searchset. Used to prove that credentials never leave the configured FHIR origin."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        rec = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                rec.received.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                     "cookie": self.headers.get("Cookie"), "at": time.time()})
                send(self, 200, EMPTY_SEARCHSET)

        self._serve(Handler)


class RedirectServer(LoopbackServer):
    """Answers every request with a redirect (``status``) to ``location`` + the request path."""

    def __init__(self, location: str, status: int = 302) -> None:
        self.received: list[str | None] = []
        srv = self

        class Handler(QuietHandler):
            def _handle(self) -> None:
                self.body()
                srv.received.append(self.headers.get("Authorization"))
                send(self, status, ctype=None, headers={"Location": location + self.path})

            do_GET = do_POST = do_PUT = _handle

        self._serve(Handler)


class SinkFhirServer(LoopbackServer):
    """A FHIR endpoint that confirms every transaction/batch entry (``201``) without storing anything and
    answers every read/search with an empty searchset: the memory and load tests measure OUR process with it,
    not the server's speed. Counts the written entries it confirmed (``entries``) and the requests (``requests``)."""

    def __init__(self) -> None:
        self.entries = 0
        self.requests = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self.body()
                with sink.lock:
                    sink.requests += 1
                send(self, 200, EMPTY_SEARCHSET)

            def do_POST(self) -> None:
                doc = json.loads(self.body() or b"{}")
                answers, writes = [], 0
                for e in doc.get("entry", []):
                    req = e.get("request") or {}
                    if req.get("method") in ("GET", "HEAD"):
                        answers.append({"response": {"status": "404 Not Found"}})
                        continue
                    res = e.get("resource") or {}
                    writes += 1
                    answers.append({"response": {"status": "201 Created", "etag": 'W/"1"',
                                                 "location": f"{res.get('resourceType')}/{res.get('id')}/_history/1"}})
                with sink.lock:
                    sink.requests += 1
                    sink.entries += writes
                kind = doc.get("type", "transaction")
                send(self, 200, json.dumps({"resourceType": "Bundle", "type": f"{kind}-response",
                                            "entry": answers}).encode())

        self._serve(Handler)
        self.url = self.origin + "/fhir"
