"""The REST API under ``/api/v1`` (flask-openapi3): the console's functions for scripts and integrations.

- ``auth``: Bearer API key, or the console session cookie plus the CSRF header for changes;
- ``problems``: every error as ``application/problem+json`` (RFC 9457) naming the field;
- ``models``: pydantic request models (unknown fields refused) and response models;
- ``*_views``: thin views: parse, ``access.require``, call a plain function, serialize.

The OpenAPI 3.1 document is served at ``/api/v1/openapi.json`` (no UI: nothing loads from a CDN).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import g, request
from flask_openapi3 import APIBlueprint, Info, OpenAPI
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from service.api import (
    account_views,
    history_views,
    people_views,
    records_views,
    replay_views,
    rules_views,
    version_views,
)
from service.api.auth import Authenticator, NotAuthenticated
from service.api.base import ApiContext, answer
from service.api.problems import PROBLEM_RESPONSE as PROBLEM
from service.api.problems import Problem, to_problem, validation_problem
from service.config import Settings
from service.console import csrf
from service.console.web import Cookies
from service.rules.schema import MAX_RULES_REQUEST_BYTES
from service.runtime import Runtime
from service.secrets import load_keys

PREFIX = "/api/v1"
DOC_PATH = PREFIX + "/openapi.json"
# The largest body the API reads: a whole rules document, plus room for a JSON wrapping of it.
MAX_BODY_BYTES = MAX_RULES_REQUEST_BYTES
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key (pbx_...), scope read or write"},
    "session": {"type": "apiKey", "in": "cookie", "name": "pbxrelay_session",
                "description": f"the console's session; changes also need the {csrf.HEADER} header"},
}


def openapi_app(import_name: str) -> OpenAPI:
    """A Flask app that can carry the API's OpenAPI document (no documentation UI)."""
    return OpenAPI(import_name, info=Info(title="pbxrelay API", version="1"), security_schemes=SECURITY_SCHEMES,
                   doc_ui=False, validation_error_status=422, validation_error_model=Problem,
                   validation_error_callback=validation_problem)


def register_api(app: OpenAPI, settings: Settings, runtime: Runtime) -> None:
    """Mount ``/api/v1`` on ``app``."""
    api = ApiContext(settings=settings, runtime=runtime)
    cookies = Cookies(secure=urlsplit(settings.public_url).scheme == "https")
    authenticator = Authenticator(runtime=runtime, cookies=cookies, csrf_key=csrf.derive_key(load_keys(settings)[0]),
                                  idle_seconds=settings.console_session_idle_seconds)
    bp = APIBlueprint("api", __name__, url_prefix=PREFIX, abp_security=[{"bearer": []}, {"session": []}],
                      abp_responses={"401": PROBLEM, "403": PROBLEM, "404": PROBLEM, "422": PROBLEM})
    for views in (account_views, rules_views, version_views, history_views, replay_views, people_views,
                  records_views):
        views.add_routes(bp, api)

    @bp.before_request
    def authenticate():
        request.max_content_length = MAX_BODY_BYTES
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise RequestEntityTooLarge(f"the body is larger than {MAX_BODY_BYTES // 1024} KiB")
        if request.path == DOC_PATH:
            return None
        g.api_principal = authenticator.principal(request)
        return None

    @bp.after_request
    def headers(response):
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @bp.errorhandler(Exception)
    @bp.errorhandler(RequestEntityTooLarge)  # by code too: the hooks' app-wide 413 handler would win otherwise
    def refused(exc: Exception):
        response = to_problem(exc)
        if isinstance(exc, NotAuthenticated):
            response.headers["WWW-Authenticate"] = 'Bearer realm="pbxrelay"'
        return response

    bp.add_url_rule("/openapi.json", "openapi", lambda: answer(app.api_doc))
    app.register_api(bp)

    @app.errorhandler(HTTPException)
    def outside_routes(exc: HTTPException):
        # Unknown paths and methods under /api/ answer as the API does; everything else as before.
        if request.path.startswith(PREFIX + "/") or request.path == PREFIX:
            return to_problem(exc)
        return exc
