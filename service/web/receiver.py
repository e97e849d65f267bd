"""The receiver behind the hook endpoints: token lookup, envelopes, the queue and the durable spool.

It is deliberately thin: authenticate the token, wrap the raw request in an envelope, queue it (or
spool it durably when Redis is away). Parsing happens in the worker, so a malformed or unknown body
is still kept (quarantined there).
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from datetime import datetime, timezone
from typing import Any

from flask import current_app
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service import accounts
from service import metrics as shared_metrics
from service.config import Settings
from service.datafiles import private_dir
from service.queue import INGEST, TaskQueue, queue_names
from service.runtime import Runtime
from service.web.spool import Spool

log = logging.getLogger(__name__)
# A cached VirtualPBX hook token is served only while the Redis token epoch it was read under is current
# (a rotation changes it at once); this age limit is only the backstop should that change ever be missed.
TOKEN_CACHE_SECONDS = 5.0
# After Redis failed to answer, how long requests skip the epoch check (and the cache) for the database.
REDIS_RETRY_SECONDS = 1.0


class Receiver:
    """Authenticates hook tokens, builds envelopes and queues them, spooling when Redis is down."""

    def __init__(self, settings: Settings, runtime: Runtime, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.runtime = runtime
        self.registry = registry  # this web process's metrics
        # What /metrics shows: every local pbxrelay process's files in multiprocess mode, else this process.
        self.scrape = registry
        if shared_metrics.multiprocess_enabled():
            self.scrape = CollectorRegistry()
            self.scrape.register(shared_metrics.AllProcessesCollector(shared_metrics.metrics_root(settings.var_dir)))
        self.scrape.register(shared_metrics.QueueDepthCollector(
            lambda: {kind: runtime.redis.llen(name) for kind, name in queue_names(settings).items()}))
        # Fails at once when Redis is away (the spool takes over); one producer per request thread.
        self.queue = TaskQueue(settings, fail_fast=True)
        self.engine = runtime.sessions.kw["bind"]
        self.redis = runtime.redis
        self._tokens: dict[str, tuple[str, str, float]] = {}  # token -> (account id, epoch, expiry)
        self._redis_down_until = 0.0
        self.spool = Spool(private_dir(settings.var_dir) / "spool", max_events=settings.spool_max_events)
        self.received = Counter("pbxrelay_hooks_received", "Authenticated hook deliveries", ["kind", "result"],
                                registry=registry)
        self.rejected = Counter("pbxrelay_hooks_rejected", "Rejected hook requests", ["reason"], registry=registry)
        self.spooled = Gauge("pbxrelay_spool_events", "Events waiting in the local spool", registry=registry)
        self.latency = Histogram("pbxrelay_hook_seconds", "Time to accept a hook", registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))

    def account_for(self, kind: str, token: str) -> accounts.HookAccount | None:
        """The account whose ``kind`` endpoint ``token`` opens, or None.

        VirtualPBX tokens (the hot path) are cached per process, each entry valid only while the token
        epoch in Redis is the one read before its database lookup: `rotate-token` commits, then changes
        the epoch, so no process serves a revoked token after the command returns (a lookup that raced
        the rotation cached under the old epoch). CRM tokens, rarer and carrying signing settings that
        `rules apply` changes, are read from the database every time.
        """
        epoch = self._token_epoch() if kind == "virtualpbx" else None
        now = time.monotonic()
        if epoch is not None:
            cached = self._tokens.get(token)
            if cached and cached[1] == epoch and cached[2] > now:
                return accounts.HookAccount(cached[0], None, False)
        with self.engine.connect() as connection:
            found = accounts.hook_account(connection, token, kind)
        if found is not None and epoch is not None:
            if len(self._tokens) > 10_000:
                self._tokens.clear()
            self._tokens[token] = (found.account_id, epoch, now + TOKEN_CACHE_SECONDS)
        return found

    def cached(self, kind: str, token: str) -> tuple[accounts.HookAccount, str] | None:
        """(account, token epoch it was cached under) for a VirtualPBX token in this process's cache, when the queue
        can check that epoch in the same step as the push (``accept(..., epoch=...)``): one Redis round trip per
        hook instead of two. None: look the token up with ``account_for``."""
        if kind != "virtualpbx" or not self.queue.checks_state or time.monotonic() < self._redis_down_until:
            return None
        cached = self._tokens.get(token)
        if cached is None or cached[2] <= time.monotonic():
            return None
        return accounts.HookAccount(cached[0], None, False), cached[1]

    def forget(self, token: str) -> None:
        """Drop a token from the cache (its epoch moved on, or could not be checked)."""
        self._tokens.pop(token, None)

    def _token_epoch(self) -> str | None:
        """The current token epoch ("" when never set), or None when Redis does not answer (no caching then)."""
        if time.monotonic() < self._redis_down_until:
            return None
        try:
            return self.redis.get(accounts.token_epoch_key(self.settings.namespace)) or ""
        except Exception:  # redis-py raises several types for "Redis is away"
            self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
            return None

    def publish(self, envelope: dict[str, Any]) -> None:
        """Put one envelope on the ingest queue (raises when Redis is unreachable)."""
        self.queue.send(INGEST, [envelope], argsrepr="(envelope)")

    def accept(self, envelope: dict[str, Any], *, epoch: str | None = None) -> str | None:
        """Queue the envelope, or spool it durably; returns where it went.

        With ``epoch`` (the token came from ``cached``): queued only if the token epoch is still that one, in the
        same step; None when it is not, or Redis did not answer, and nothing was kept: look the token up again."""
        if epoch is not None:
            if self.spool.depth():
                return None  # behind the spool, in order, after a fresh lookup
            try:
                if self.queue.send_if(accounts.token_epoch_key(self.settings.namespace), epoch, INGEST, [envelope],
                                      argsrepr="(envelope)"):
                    return "queued"
            except Exception as exc:  # redis-py raises several types for "Redis is away"
                log.warning("queue unreachable (%s); looking the token up again", type(exc).__name__)
                self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
            return None
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


def read_body(environ: dict[str, Any], limit: int) -> bytes | None:
    """The request body, or None when it is longer than ``limit`` however it is framed.

    Werkzeug's MAX_CONTENT_LENGTH stops a chunked body (no Content-Length) silently at the limit, so a
    cut body would be accepted: read one byte past the limit from the server's own de-chunking stream.
    """
    declared = environ.get("CONTENT_LENGTH")
    if declared:
        try:
            length = int(declared)
        except ValueError:
            return None  # gunicorn refuses a malformed Content-Length first; nothing else reaches here
        if length > limit:
            return None
    elif not environ.get("wsgi.input_terminated"):
        return b""  # no length and a stream that may not end: WSGI says there is no body
    stream = environ["wsgi.input"]
    chunks, size = [], 0
    while size <= limit:
        chunk = stream.read(min(65536, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return None if size > limit else b"".join(chunks)


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


def current_receiver() -> Receiver:
    """The receiver of the app handling the current request (set by create_app)."""
    return current_app.extensions["pbxrelay.receiver"]
