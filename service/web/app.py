"""The composition root of the web process: the receiver's blueprints, the console's pages and the REST API."""

from __future__ import annotations

import threading

from flask import Flask
from prometheus_client import CollectorRegistry

from service.api import openapi_app, register_api
from service.config import Settings, get_settings
from service.console.web import console_blueprint
from service.runtime import Runtime
from service.web import health, hooks, media
from service.web.receiver import Receiver


def create_app(settings: Settings | None = None, *, start_drainer: bool = True) -> Flask:
    """Build the receiver app (an OpenAPI-carrying Flask app); ``settings`` overrides the environment (tests)."""
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
