"""The receiver behind the hook endpoints: token lookup, envelopes, the queue and the durable spool.

It is deliberately thin: authenticate the token, wrap the raw request in an envelope, queue it (or
spool it durably when Redis is away). Parsing happens in the worker, so a malformed or unknown body
is still kept (quarantined there).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

from flask import current_app
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service import accounts
from service.datafiles import private_dir
from service.config import Settings
from service.queue import INGEST, TaskQueue
from service.runtime import Runtime
from service.web.spool import Spool

log = logging.getLogger(__name__)
TOKEN_CACHE_SECONDS = 30.0


class Receiver:
    """Authenticates hook tokens, builds envelopes and queues them, spooling when Redis is down."""

    def __init__(self, settings: Settings, runtime: Runtime, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.runtime = runtime
        self.registry = registry  # this web process's metrics (served by /metrics)
        # Fails at once when Redis is away (the spool takes over); one producer per request thread.
        self.queue = TaskQueue(settings, fail_fast=True)
        self.spool = Spool(private_dir(settings.var_dir) / "spool", max_events=settings.spool_max_events)
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
            "received_at": datetime.now(timezone.utc).isoformat(), "method": method,
            "content_type": content_type or "", "query_string": query_string, "body": text, "body_b64": b64,
            "headers": headers}


def current_receiver() -> Receiver:
    """The receiver of the app handling the current request (set by create_app)."""
    return current_app.extensions["pbxrelay.receiver"]
