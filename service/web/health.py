"""Health endpoints: /healthz (up), /readyz (Redis and the database answer; spool depth), /metrics."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, jsonify
from prometheus_client import generate_latest

from service.web.receiver import current_receiver

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz():
    """The process is up."""
    return jsonify(status="ok")


@blueprint.get("/readyz")
def readyz():
    """Redis and the database are reachable; reports the spool depth."""
    receiver = current_receiver()
    checks: dict[str, Any] = {}
    try:
        receiver.runtime.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        with receiver.runtime.sessions() as session:
            session.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    depth = receiver.spool.depth()
    checks["spooled_events"] = depth
    checks["spooling"] = depth > 0
    ready = checks["redis"] == "ok" and checks["database"] == "ok"
    return jsonify(status="ready" if ready else "not ready", **checks), 200 if ready else 503


@blueprint.get("/metrics")
def metrics():
    """Prometheus metrics of every local pbxrelay process (multiprocess mode), else of this one."""
    receiver = current_receiver()
    receiver.spooled.set(receiver.spool.depth())
    return Response(generate_latest(receiver.scrape), mimetype="text/plain; version=0.0.4")
