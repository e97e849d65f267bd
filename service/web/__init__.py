"""The Flask receiver (app factory ``create_app``): hook endpoints, voicemail links, health and metrics.

- ``hooks``: ``/hooks/virtualpbx/<token>`` and ``/hooks/crm/<token>``, queued raw, answered exactly 200;
- ``media``: ``/media/voicemail/<token>``, audio too large to attach;
- ``health``: ``/healthz``, ``/readyz``, ``/metrics``;
- ``/api/v1``: the REST API (``service.api``);
- ``receiver``: the Receiver (tokens, envelopes, queue, spool) the blueprints share; ``spool``, ``signing``.
"""

from __future__ import annotations

import threading

from flask import Flask
from prometheus_client import CollectorRegistry

from service.config import Settings, get_settings
from service.console.web import console_blueprint
from service.runtime import Runtime
from service.web import health, hooks, media
from service.web.receiver import Receiver, make_envelope

__all__ = ["Receiver", "create_app", "make_envelope"]


def create_app(settings: Settings | None = None, *, start_drainer: bool = True) -> Flask:
    """Build the receiver app (an OpenAPI-carrying Flask app); ``settings`` overrides the environment (tests)."""
    # Imported here: the API's views reach modules (tenant data, the receiver's envelopes) that import service.web.
    from service.api import openapi_app, register_api

    settings = settings or get_settings()
    app = openapi_app("pbxrelay")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    runtime = Runtime(settings)
    receiver = Receiver(settings, runtime, CollectorRegistry())
    app.extensions["pbxrelay.receiver"] = receiver
    for part in (hooks, media, health):
        app.register_blueprint(part.blueprint)
    app.register_blueprint(console_blueprint(settings, runtime))
    register_api(app, settings, runtime)
    if start_drainer:
        threading.Thread(target=receiver.drain_forever, name="spool-drainer", daemon=True).start()
    return app
