"""The explorer page and its static files (a fixed list; no path from the request reaches the file system)."""

from __future__ import annotations

from pathlib import Path

from kaapana_fhir.web.api import ApiResponse

STATIC = Path(__file__).resolve().parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
# Content-Security-Policy of the page: scripts and styles only from this origin, API calls only here.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'self'")


def _plotly_js() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("plotly is not installed (the explorer serves plotly.min.js from it)")
    return Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"


FILES = {"explorer.js": STATIC / "explorer.js", "explorer.css": STATIC / "explorer.css"}


def page() -> ApiResponse:
    return ApiResponse(200, (STATIC / "explorer.html").read_bytes(), _TYPES[".html"],
                       {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                        "Cache-Control": "no-store"})


def static(name: str) -> ApiResponse:
    if name == "plotly.min.js":
        p = _plotly_js()
    elif name in FILES:
        p = FILES[name]
    else:
        return ApiResponse(404, b"not found", "text/plain")
    return ApiResponse(200, p.read_bytes(), _TYPES[p.suffix],
                       {"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=300"})
