"""A REDCap API stand-in that answers from recorded JSON files (tests only).

REDCap's API is one endpoint, ``POST <base>/api/``, with form-encoded fields: ``token``, ``content`` (``record``,
``metadata``, ``project``, ``version``, ...), ``format`` (``json``/``csv``/``xml``), ``returnFormat`` and, for
records, ``type`` (``flat``/``eav``), ``rawOrLabel`` and friends. Answers are JSON; an unknown token gets HTTP 403
with ``{"error": "You do not have permissions to use the API"}``, an unsupported request HTTP 400 with an
``error`` object, as REDCap does.

:class:`RedcapReplay` serves ``<content>.json`` from a folder of recordings (``tests/data/tables/redcap/api``),
records every request's fields (the token is kept so a test can check that it was sent, and only there) and can
be told to answer with a redirect to another address (to prove that the client never follows it with the token).
"""

from __future__ import annotations

import http.server
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RedcapReplay:
    """``with RedcapReplay(folder, token) as api: api.url`` → ``http://127.0.0.1:<port>/redcap/api/``."""

    folder: Path
    token: str
    requests: list[dict[str, str]] = field(default_factory=list)
    #: when set, every request is answered ``307`` with ``Location: redirect_to``
    redirect_to: str | None = None
    _server: http.server.ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/redcap/api/"

    def __enter__(self) -> RedcapReplay:
        replay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the access log
                return

            def _answer(self, status: int, body: bytes, ctype: str = "application/json",
                        headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._answer(405, b'{"error": "The API only accepts POST requests"}')

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8")
                fields = {k: v[-1] for k, v in urllib.parse.parse_qs(raw, keep_blank_values=True).items()}
                fields["__path__"] = self.path
                fields["__content_type__"] = self.headers.get("Content-Type", "")
                replay.requests.append(fields)
                if replay.redirect_to:
                    self._answer(307, b"", "text/html", {"Location": replay.redirect_to})
                    return
                if self.path != "/redcap/api/":
                    self._answer(404, b"<html>Not Found</html>", "text/html")
                    return
                if fields.get("token") != replay.token:
                    self._answer(403, b'{"error": "You do not have permissions to use the API"}')
                    return
                content, fmt = fields.get("content", ""), fields.get("format", "xml")
                path = replay.folder / f"{content}.json"
                if fmt != "json" or not path.is_file():
                    self._answer(400, b'{"error": "The value of the parameter \\"content\\" is not valid"}')
                    return
                if content == "record" and fields.get("type", "flat") != "flat":
                    self._answer(400, b'{"error": "only flat records are recorded"}')
                    return
                self._answer(200, path.read_bytes())

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
