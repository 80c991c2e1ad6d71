"""Airflow 3.x adapter: a FastAPI app the api-server mounts at ``/kaapana-fhir`` (plugin ``fastapi_apps``).

Airflow does not authenticate plugin apps, so every route here depends on Airflow's own
``requires_access_view(AccessView.WEBSITE)`` (JWT from ``Authorization: Bearer`` or the UI's ``_token``
cookie, checked by the configured auth manager). The page redirects an anonymous browser to the login page.
"""

from typing import Annotated, Any  # no `from __future__ import annotations`: FastAPI reads the local Depends

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from kaapana_fhir.web import api, mapping_editor, pages

PREFIX = "/kaapana-fhir"


def _out(r: api.ApiResponse, method: str = "GET") -> Response:
    return Response(r.body if method != "HEAD" else b"", status_code=r.status, media_type=r.content_type,
                    headers=r.headers)


async def bounded_body(request: Request) -> bytes:
    """The request body, read up to ``KAAPANA_FHIR_WEB_MAX_BODY_BYTES`` (413 above; see :func:`api.read_body`)."""
    try:
        declared = int(request.headers.get("content-length", ""))
    except ValueError:
        declared = None
    try:
        limit = api.body_limit()
        api.check_body_size(declared, limit)  # refused before reading
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            api.check_body_size(len(buf), limit, declared=False)  # as soon as the stream passes the limit
        return bytes(buf)
    except api.ApiError as exc:
        raise HTTPException(exc.status, exc.message) from None


def _user_dep() -> Any:
    from airflow.api_fastapi.core_api.security import get_user

    return get_user


def _access() -> Any:
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view

    return requires_access_view(AccessView.WEBSITE)


def create_app() -> FastAPI:
    app = FastAPI(title="kaapana-fhir cohort explorer and retrieval API", docs_url=None, redoc_url=None,
                  openapi_url=None)
    guard = _access()
    user_dep = _user_dep()

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        path = request.url.path
        if exc.status_code == 401 and "/api/" not in path and request.method == "GET":
            from airflow.api_fastapi.app import get_auth_manager

            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=302)
        return _out(api.error(exc.status_code, str(exc.detail)))

    @app.get("/", dependencies=[Depends(guard)])
    def explorer() -> Response:
        return _out(pages.page())

    @app.get("/static/{name}", dependencies=[Depends(guard)])
    def static_file(name: str) -> Response:
        return _out(pages.static(name))

    @app.get("/mapping/", dependencies=[Depends(guard)])
    def mapping_page() -> Response:
        return _out(mapping_editor.page())

    @app.get("/mapping/{name}", dependencies=[Depends(guard)])
    def mapping_static(name: str) -> Response:
        return _out(mapping_editor.static(name))

    @app.api_route("/api/mapping/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"],
                   dependencies=[Depends(guard)])  # before the catch-all below: routes match in order
    def mapping_api(path: str, request: Request, body: Annotated[bytes, Depends(bounded_body)]) -> Response:
        return _out(mapping_editor.handle(request.method, f"mapping/{path}", list(request.query_params.multi_items()),
                                          body, headers=dict(request.headers)), request.method)

    @app.api_route("/api/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"],
                   dependencies=[Depends(guard)])
    def api_route(path: str, request: Request, user: Annotated[Any, Depends(user_dep)],
                  body: Annotated[bytes, Depends(bounded_body)]) -> Response:
        return _out(api.handle(request.method, path, list(request.query_params.multi_items()),
                               user=user.get_name(), headers=dict(request.headers), body=body), request.method)

    return app


def fastapi_apps() -> list[dict[str, Any]]:
    return [{"app": create_app(), "url_prefix": PREFIX, "name": "kaapana-fhir"}]


def external_views() -> list[dict[str, Any]]:
    return [{"name": "Cohort explorer", "href": f"{PREFIX}/", "destination": "nav", "category": "browse",
             "url_route": "kaapana-fhir-cohort-explorer"},
            {"name": "Mapping editor", "href": f"{PREFIX}/mapping/", "destination": "nav", "category": "browse",
             "url_route": "kaapana-fhir-mapping-editor"}]
