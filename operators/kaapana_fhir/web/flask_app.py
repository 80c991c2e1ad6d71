"""Airflow 2.11 adapter: a Flask AppBuilder view at ``/kaapana-fhir/`` (explorer page, static files, API).

Authentication is Airflow's: the page needs a logged-in user allowed to see the website
(``has_access_view``, redirects to the login page otherwise); the API accepts the session or any of
``[api] auth_backends`` (e.g. ``airflow.api.auth.backend.basic_auth`` for Grafana and notebooks) and answers
401/403 as JSON instead of redirecting.
"""

from __future__ import annotations

from typing import Any

from airflow.api_connexion.exceptions import Unauthenticated
from airflow.auth.managers.models.resource_details import AccessView
from airflow.www.auth import has_access_view
from airflow.www.extensions.init_auth_manager import get_auth_manager
from flask import Response, request
from flask_appbuilder import BaseView, expose

from kaapana_fhir.web import api, mapping_editor, pages

ROUTE = "/kaapana-fhir"


def _out(r: api.ApiResponse) -> Response:
    resp = Response(r.body if request.method != "HEAD" else b"", status=r.status, content_type=r.content_type)
    for k, v in r.headers.items():
        resp.headers[k] = v
    return resp


def _api_auth() -> api.ApiResponse | None:
    """None when the caller may use the API, else the 401/403 answer."""
    am = get_auth_manager()
    if not am.is_logged_in():
        from airflow.api_connexion.security import check_authentication

        try:
            check_authentication()
        except Unauthenticated:
            return api.error(401, "not authenticated: log in to Airflow or send credentials accepted by "
                                  "[api] auth_backends")
    if not am.is_authorized_view(access_view=AccessView.WEBSITE):
        return api.error(403, "forbidden: your Airflow role may not use the website")
    return None


def _refuse_large_body() -> Any:
    """Every route of this view: a declared body above ``KAAPANA_FHIR_WEB_MAX_BODY_BYTES`` is answered 413 before
    anything reads it (the routes read at most that much with :func:`api.read_body`)."""
    try:
        api.check_body_size(request.content_length, api.body_limit())
    except api.ApiError as exc:
        return _out(api.error(exc.status, exc.message))
    return None


def _api_call(handle: Any) -> Any:
    """An API request: Airflow's authentication, the body read within the size limit, then ``handle(body)``."""
    denied = _api_auth()
    if denied is not None:
        return _out(denied)
    try:
        body = api.read_body(request.content_length, request.stream.read)
    except api.ApiError as exc:
        return _out(api.error(exc.status, exc.message))
    return _out(handle(body))


class KaapanaFhirView(BaseView):
    """Cohort explorer + retrieval API."""

    route_base = ROUTE
    default_view = "explorer"

    @expose("/")
    @has_access_view(AccessView.WEBSITE)
    def explorer(self) -> Any:
        return _out(pages.page())

    @expose("/static/<string:name>")
    @has_access_view(AccessView.WEBSITE)
    def static_file(self, name: str) -> Any:
        return _out(pages.static(name))

    @expose("/api/<path:path>", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])
    def api(self, path: str) -> Any:
        return _api_call(lambda body: api.handle(request.method, path, list(request.args.items(multi=True)),
                                                 user=get_auth_manager().get_user_name(),
                                                 headers=dict(request.headers), body=body))

    @expose("/mapping/")
    @has_access_view(AccessView.WEBSITE)
    def mapping_page(self) -> Any:
        return _out(mapping_editor.page())

    @expose("/mapping/<string:name>")
    @has_access_view(AccessView.WEBSITE)
    def mapping_static(self, name: str) -> Any:
        return _out(mapping_editor.static(name))

    @expose("/api/mapping/<path:path>", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])
    def mapping_api(self, path: str) -> Any:
        return _api_call(lambda body: mapping_editor.handle(request.method, f"mapping/{path}",
                                                            list(request.args.items(multi=True)), body,
                                                            headers=dict(request.headers)))

    def create_blueprint(self, appbuilder: Any, endpoint: str | None = None, static_folder: str | None = None) -> Any:
        """The API's one writing route (POST send-to-kaapana) is guarded by a custom header instead of Flask-WTF's
        form token (API clients have no form); exempt this view's blueprint from the CSRF form check."""
        bp = super().create_blueprint(appbuilder, endpoint=endpoint, static_folder=static_folder)
        bp.before_request(_refuse_large_body)
        csrf = appbuilder.get_app.extensions.get("csrf")
        if csrf is not None:
            csrf.exempt(bp)
        return bp


def appbuilder_views() -> list[dict[str, Any]]:
    """One view, two menu entries; the editor's link is an endpoint name, so Flask builds it under Airflow's base URL
    (Kaapana serves Airflow below ``/flow``)."""
    view = KaapanaFhirView()
    return [{"name": "Cohort explorer", "category": "Kaapana FHIR", "view": view},
            {"name": "Mapping editor", "category": "Kaapana FHIR", "view": view,
             "href": "KaapanaFhirView.mapping_page"}]
