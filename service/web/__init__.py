"""The Flask receiver: hook endpoints, health, readiness and metrics (app factory ``create_app``).

The hook view is deliberately thin: authenticate the token, wrap the raw request in an envelope,
queue it (or spool it durably when Redis is away) and answer exactly 200. Parsing happens in the
worker, so a malformed or unknown body is still kept (quarantined there) and still gets its 200:
Kazoo never retries a non-200 and disables a hook after more than 6 failures in 60 s.
"""

from __future__ import annotations

import base64
import secrets
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from werkzeug.exceptions import RequestEntityTooLarge

from integrations.base import IntegrationError, PermanentError
from service import accounts, metrics as shared_metrics
from service.pbx import media
from service.config import Settings, get_settings
from service.queue import INGEST, TaskQueue, queue_names
from service.runtime import Runtime
from service.web.signing import SignatureError, verify
from service.web.spool import Spool, SpoolFull

log = logging.getLogger(__name__)
TOKEN_CACHE_SECONDS = 30.0
# Largest voicemail the media link serves (Kazoo voicemails are minutes of MP3: a few MB).
MAX_LINKED_AUDIO_BYTES = 100 * 1024 * 1024


class Receiver:
    """Authenticates hook tokens, builds envelopes and queues them, spooling when Redis is down."""

    def __init__(self, settings: Settings, runtime: Runtime, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.runtime = runtime
        # Fails at once when Redis is away (the spool takes over); one producer per request thread.
        self.queue = TaskQueue(settings, fail_fast=True)
        self.spool = Spool(settings.var_dir / "spool", max_events=settings.spool_max_events)
        self._tokens: dict[str, tuple[str, str | None, float]] = {}
        self._lock = threading.Lock()
        self.received = Counter("pbxrelay_hooks_received", "Authenticated hook deliveries", ["kind", "result"],
                                registry=registry)
        self.rejected = Counter("pbxrelay_hooks_rejected", "Rejected hook requests", ["reason"], registry=registry)
        self.spooled = Gauge("pbxrelay_spool_events", "Events waiting in the local spool", registry=registry)
        self.latency = Histogram("pbxrelay_hook_seconds", "Time to accept a hook", registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))

    def account_for(self, token: str) -> tuple[str, str | None] | None:
        """(account id, CRM signing secret or None) for ``token``, from a short-lived cache or the database."""
        now = time.monotonic()
        cached = self._tokens.get(token)
        if cached and cached[2] > now:
            return cached[0], cached[1]
        with self.runtime.sessions() as session:
            account = accounts.account_for_token(session, token)
            if account is None:
                return None
            secret = (self.runtime.box.decrypt(account.crm_secret_encrypted)["secret"]
                      if account.crm_secret_encrypted else None)
            account_id = account.id
        with self._lock:
            if len(self._tokens) > 10_000:
                self._tokens.clear()
            self._tokens[token] = (account_id, secret, now + TOKEN_CACHE_SECONDS)
        return account_id, secret

    def publish(self, envelope: dict[str, Any]) -> None:
        """Put one envelope on the ingest queue (raises when Redis is unreachable)."""
        self.queue.send(INGEST, [envelope], argsrepr="(envelope)")

    def accept(self, envelope: dict[str, Any]) -> str:
        """Queue the envelope, or spool it durably; returns where it went."""
        if self.spool.depth() == 0:
            try:
                self.publish(envelope)
                return "queued"
            except Exception as exc:  # kombu/redis raise many types for "Redis is away"
                log.warning("queue unreachable (%s); spooling", type(exc).__name__)
        self.spool.put(envelope)  # behind a non-empty spool too, so arrival order is kept
        self.spooled.set(self.spool.depth())
        return "spooled"

    def drain_forever(self, interval: float = 1.0) -> None:
        """Background loop: move spooled envelopes to the queue whenever Redis answers."""
        self.spool.recover_claims()
        while True:
            time.sleep(interval)
            try:
                if self.spool.depth():
                    moved = self.spool.drain(self.publish)
                    log.info("drained %d spooled events to the queue", moved)
            except Exception as exc:
                log.debug("spool drain postponed: %s", type(exc).__name__)
            self.spooled.set(self.spool.depth())


def make_envelope(*, source: str, account_id: str, method: str, content_type: str, query_string: str,
                  body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """The queued form of one received request: raw enough to re-parse, small enough to queue."""
    try:
        text, b64 = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, b64 = base64.b64encode(body).decode(), True
    return {"v": 1, "source": source, "account_id": account_id,
            "received_at": datetime.now(timezone.utc).isoformat(), "request_id": secrets.token_hex(8),
            "method": method,
            "content_type": content_type or "", "query_string": query_string, "body": text, "body_b64": b64,
            "headers": headers}


def create_app(settings: Settings | None = None, *, start_drainer: bool = True) -> Flask:
    """Build the receiver app; ``settings`` overrides the environment (tests)."""
    settings = settings or get_settings()
    app = Flask("pbxrelay")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    runtime = Runtime(settings)
    registry = CollectorRegistry()
    receiver = Receiver(settings, runtime, registry)
    # What /metrics shows: every local pbxrelay process's files in multiprocess mode, else this process.
    scrape = registry
    if shared_metrics.multiprocess_enabled():
        scrape = CollectorRegistry()
        scrape.register(shared_metrics.AllProcessesCollector(shared_metrics.metrics_root(settings.var_dir)))
    scrape.register(shared_metrics.QueueDepthCollector(
        lambda: {kind: runtime.redis.llen(name) for kind, name in queue_names(settings).items()}))
    app.extensions["pbxrelay.receiver"] = receiver
    if start_drainer:
        threading.Thread(target=receiver.drain_forever, name="spool-drainer", daemon=True).start()

    def receive(kind: str, token: str):
        started = time.perf_counter()
        found = receiver.account_for(token)
        if found is None:
            receiver.rejected.labels("unknown_token").inc()
            return jsonify(error="unknown hook token"), 404
        account_id, crm_secret = found
        try:
            if len(request.query_string) > settings.max_body_bytes:
                raise RequestEntityTooLarge()
            body = request.get_data(cache=False)
        except RequestEntityTooLarge:
            receiver.rejected.labels("too_large").inc()
            return jsonify(error=f"body larger than {settings.max_body_bytes} bytes"), 413
        if kind == "crm" and crm_secret:
            try:
                verify(crm_secret, {k.lower(): v for k, v in request.headers.items()}, body)
            except SignatureError as exc:
                receiver.rejected.labels("bad_signature").inc()
                return jsonify(error=f"signature check failed: {exc}"), 401
        headers = {name.lower(): request.headers[name][:200]
                   for name in ("X-Hook-ID", "X-Account-ID", "webhook-id") if name in request.headers}
        envelope = make_envelope(source=kind, account_id=account_id, method=request.method,
                                 content_type=request.headers.get("Content-Type", ""),
                                 query_string=request.query_string.decode("latin-1"), body=body, headers=headers)
        try:
            where = receiver.accept(envelope)
        except SpoolFull:
            receiver.rejected.labels("spool_full").inc()
            log.error("ALARM: spool full and queue unreachable; refusing a %s delivery for %s", kind, account_id)
            return jsonify(error="temporarily unable to keep events"), 503
        receiver.received.labels(kind, where).inc()
        receiver.latency.observe(time.perf_counter() - started)
        return jsonify(status="ok"), 200

    @app.route("/hooks/virtualpbx/<token>", methods=["GET", "POST"])
    def virtualpbx_hook(token: str):
        """Kazoo webhook deliveries (GET query, form POST or JSON POST)."""
        return receive("virtualpbx", token)

    @app.post("/hooks/crm/<token>")
    def crm_hook(token: str):
        """CRM webhooks (JSON or form), optionally signed with Standard Webhooks headers."""
        return receive("crm", token)

    @app.get("/media/voicemail/<token>")
    def voicemail_media(token: str):
        """Stream a voicemail's audio for a link handed to an integration (audio too large to attach)."""
        try:
            account_id, box, message = media.read_link(runtime, token)
        except PermanentError as exc:
            return jsonify(error=str(exc)), 404
        client = media.pbx_client(runtime, account_id)
        if client is None:
            return jsonify(error="the account has no virtualpbx connection"), 404
        try:
            content, content_type, filename = client.download_vmbox_message(box, message,
                                                                            max_bytes=MAX_LINKED_AUDIO_BYTES)
        except IntegrationError as exc:
            return jsonify(error=str(exc)), 502
        safe_name = (filename or f"voicemail-{message}.mp3").replace('"', "")
        return Response(content, mimetype=content_type or "audio/mpeg",
                        headers={"Content-Disposition": f'attachment; filename="{safe_name}"'})

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc):
        return jsonify(error=f"body larger than {settings.max_body_bytes} bytes"), 413

    @app.get("/healthz")
    def healthz():
        """The process is up."""
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz():
        """Redis and the database are reachable; reports the spool depth."""
        checks: dict[str, Any] = {}
        try:
            runtime.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}"
        try:
            with runtime.sessions() as session:
                session.execute(sa.text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        depth = receiver.spool.depth()
        checks["spooled_events"] = depth
        checks["spooling"] = depth > 0
        ready = checks["redis"] == "ok" and checks["database"] == "ok"
        return jsonify(status="ready" if ready else "not ready", **checks), 200 if ready else 503

    @app.get("/metrics")
    def metrics():
        """Prometheus metrics of every local pbxrelay process (multiprocess mode), else of this one."""
        receiver.spooled.set(receiver.spool.depth())
        return Response(generate_latest(scrape), mimetype="text/plain; version=0.0.4")

    return app
