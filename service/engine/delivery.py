"""Delivery: run one planned action once, under a claim, and record its outcome.

``deliveries`` has one row per (account, event key, rule, action index), claimed with a lease
before each attempt, so two copies of an action task never run the same action at once.
"""

from __future__ import annotations

import functools
import json
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from integrations.base import (
    ActionContext,
    ActionResult,
    AuthError,
    IntegrationError,
    PermanentError,
    RetryableError,
    excerpt,
    scrub,
)
from service import accounts, crm, metrics
from service.engine.ingest import store_event
from service.engine.planning import parsed_rules, render_params, ruleset_of
from service.events import Event, aware
from service.pbx import media
from service.runtime import Runtime
from service.store import queries
from service.store.models import (
    ATTEMPT_TEXT_MAX,
    AuditEntry,
    Connection,
    Delivery,
    DeliveryAttempt,
    utcnow,
)

log = logging.getLogger(__name__)


# Claims a delivery for one attempt and loads it in one statement (UPDATE ... RETURNING: SQLite 3.35+, PostgreSQL),
# built once: composing it anew cost more CPU than running it; in Core, as a row, since the ORM's update path
# cost as much again. Not before its due time: a copy of the task sent early (a lost message sent again, a
# redelivery) must not shorten a backoff or the in-doubt wait.
_DELIVERIES = Delivery.__table__
_CLAIM = (sa.update(_DELIVERIES)
          .where(_DELIVERIES.c.id == sa.bindparam("delivery_id"),
                 sa.or_(sa.and_(_DELIVERIES.c.status.in_(("pending", "retrying")),
                                sa.or_(_DELIVERIES.c.next_attempt_at.is_(None),
                                       _DELIVERIES.c.next_attempt_at <= sa.bindparam("now"))),
                        sa.and_(_DELIVERIES.c.status == "running", _DELIVERIES.c.claimed_until < sa.bindparam("now"))))
          .values(status="running", attempts=_DELIVERIES.c.attempts + 1, claimed_until=sa.bindparam("until"),
                  next_attempt_at=None, updated_at=sa.bindparam("now"))
          .returning(*_DELIVERIES.c))


# Records an attempt's success (built once, like _CLAIM), in Core: the ORM's bulk-update path cost as much again.
_SUCCEEDED = (sa.update(_DELIVERIES).where(_DELIVERIES.c.id == sa.bindparam("delivery_id"))
              .values(status="succeeded", external_id=sa.bindparam("external_id"),
                      last_error=sa.bindparam("last_error"), claimed_until=None, updated_at=sa.bindparam("landed"),
                      succeeded_at=sa.bindparam("landed")))


def _claim(session: Session, delivery_id: int, lease: timedelta) -> sa.Row | None:
    """The delivery's row (its columns by name), claimed for one attempt (running until now + ``lease``), or None
    when it is not claimable."""
    now = utcnow()
    return session.execute(_CLAIM, {"delivery_id": delivery_id, "now": now, "until": now + lease}).first()


# Integration error codes of a request whose fate is unknown (timed out or cut off after it was sent).
IN_DOUBT_CODES = frozenset({"network", "timeout"})


def retry_delay(rt: Runtime, attempt: int, retry_after: float | None, code: str | None = None) -> float:
    """Seconds before the next attempt: the vendor's Retry-After if given, else capped backoff with full jitter."""
    cap = rt.settings.retry_max_countdown_seconds
    if retry_after is not None and retry_after > 0:
        delay = min(cap, retry_after + random.uniform(0, 1))
    else:
        delay = random.uniform(0, min(cap, rt.settings.retry_base_seconds * 2 ** max(0, attempt - 1)))
    if code in IN_DOUBT_CODES:
        # The request may have reached the vendor and still take effect after the client gave up; the
        # next attempt's duplicate check (e.g. Slack's history lookup) must come after that, not before it.
        delay = max(delay, rt.settings.action_timeout_seconds)
    return delay


# Retry reasons that are waiting, not trying: nothing reached the vendor, so no attempt is counted.
WAITING_CODES = frozenset({"paced", "booked", "deferred", "queued"})
# What a delivery that gave up while waiting was waiting for (its last_error says so).
WAITING_FOR = {"paced": "waiting for a rate-limit slot", "booked": "waiting for a rate-limit slot",
               "deferred": "waiting for quiet hours to end", "queued": "waiting for its queued write"}
# How long the count of a delivery's consecutive rate-limit waits is kept (it only shapes the spread below).
PACED_WAITS_TTL_SECONDS = 3600


def _span(seconds: int) -> str:
    """A duration for people: 24 h, 90 min, 45 s."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


def paced_delay(rt: Runtime, delivery_id: int, retry_after: float) -> float:
    """Seconds before a delivery that waited for a rate-limit token tries again: the limiter's wait plus full
    jitter over a window that doubles with each consecutive wait, so many deliveries waiting on one bucket
    spread out instead of all waking for its next single token (N waiters would cost N^2/2 tries)."""
    key = f"{rt.settings.namespace}:paced-waits:{delivery_id}"
    waits = rt.redis.incr(key)
    rt.redis.expire(key, PACED_WAITS_TTL_SECONDS)
    window = min(float(rt.settings.retry_max_countdown_seconds), retry_after * 2 ** min(waits - 1, 16))
    return retry_after + random.uniform(0, window)


# Permanent auth failures of one connection within the window that pause it (the circuit opens).
CIRCUIT_THRESHOLD = 3
CIRCUIT_WINDOW_SECONDS = 600


def execute_delivery(rt: Runtime, delivery_id: int,
                     time_limit_errors: tuple[type[BaseException], ...] = ()) -> str:
    """Run one planned action once; record the attempt; raise RetryableError/PermanentError on failure.

    A failure worth retrying leaves the delivery ``retrying`` with its ``next_attempt_at``: the scheduler
    enqueues it then (nothing waits in a worker's memory). A delivery that is running elsewhere or not due
    yet is left alone and its status returned. ``time_limit_errors`` are the caller's soft time limit
    (Celery's SoftTimeLimitExceeded, which the engine cannot import): recorded as an attempt in doubt and
    retried, never mistaken for a bug.
    """
    with rt.sessions.begin() as session:
        # One attempt may hold the delivery for its time limit plus a margin; after that a re-sent
        # copy of the task (its worker was killed mid-action) may take over.
        delivery = _claim(session, delivery_id, timedelta(seconds=rt.settings.claim_lease_seconds))
        if delivery is None:
            current = session.get(Delivery, delivery_id)
            if current is None:
                raise PermanentError(f"delivery {delivery_id} does not exist")
            # Running under another claim (the scheduler sends it again if that claim runs out), not due yet
            # (the scheduler sends it when due), or final: nothing to do here.
            return current.status
        account, rules_row, connection, stored = queries.action_inputs(session, delivery.account_id,
                                                                         delivery.connection, delivery.event_key)
        if connection is not None and connection.paused_reason:
            # The circuit is open: keep the action for `pbxrelay connections resume`, don't attempt it.
            session.execute(sa.update(_DELIVERIES).where(_DELIVERIES.c.id == delivery.id).values(
                status="paused", attempts=delivery.attempts - 1, claimed_until=None,
                last_error=f"connection paused: {connection.paused_reason}"[:2000]))
            return "paused"
        config = rt.box.decrypt(connection.config_encrypted) if connection else None
        integration_cls = rt.registry.get(delivery.integration)
        # The account's rules as stored now (never what this process happened to plan with).
        ruleset = parsed_rules(rt, delivery.account_id, rules_row)
        event = (Event(type=stored.type, account_id=stored.account_id, key=stored.key,
                       occurred_at=aware(stored.occurred_at), data=stored.data) if stored else None)
        job = _Job(delivery_id=delivery.id, account_id=delivery.account_id, integration=delivery.integration,
                   action=delivery.action, connection=delivery.connection, params=dict(delivery.params or {}),
                   attempt=delivery.attempts, created_at=aware(delivery.created_at),
                   timezone=account.timezone if account else "UTC",
                   region=ruleset.account.region if ruleset else "US", config=config,
                   # Connections stored before accounts were bound (or since unlinked) must not act for another.
                   binding_problem=(accounts.binding_problem(session, delivery.account_id, integration_cls, config)
                                    if config is not None and integration_cls is not None else None),
                   event=event)
        account_spec = ruleset.account if ruleset else None
        received_at = aware(stored.received_at) if stored else None
        request_id = delivery.request_id

    secrets_seen: list[str] = []
    job.started_at = utcnow()
    try:
        if not delivery.rendered:  # (loaded above; the session kept it without expiring)
            # Outside the claiming transaction: a template may take its whole time budget, and must not hold
            # a database lock meanwhile. Every attempt renders again (same event, same templates, same text).
            if job.event is None or account_spec is None:
                raise PermanentError("cannot render the action: its event or the account's rules are gone")
            job.params = render_params(rt, delivery, job.event, account_spec)  # TemplateError is permanent
        integration = _integration(rt, job)
        secrets_seen = integration.secrets()
        result = integration.run(job.action, job.params, _context(rt, job))
    except IntegrationError as exc:
        _record_failure(rt, job, exc, secrets_seen)
        raise
    except time_limit_errors:
        # The caller's soft time limit: the request may have reached the vendor, so the next attempt
        # waits like any request in doubt, and its duplicate check sees a late effect.
        wrapped = RetryableError("the attempt ran past its time limit", code="timeout")
        _record_failure(rt, job, wrapped, secrets_seen)
        raise wrapped from None
    except Exception as exc:  # an unmapped failure: keep the action (retry), never swallow it
        log.exception("delivery %s: unexpected %s", delivery_id, type(exc).__name__)
        wrapped = RetryableError(scrub(f"unexpected {type(exc).__name__}: {exc}", secrets_seen)[:1000])
        _record_failure(rt, job, wrapped, secrets_seen)
        raise wrapped from None
    landed = utcnow()
    with rt.sessions.begin() as session:
        updated = session.execute(_SUCCEEDED, {
            "delivery_id": delivery_id, "landed": landed, "external_id": (result.external_id or "")[:300] or None,
            "last_error": ("deduplicated: the effect was already there" if result.deduplicated else
                           (result.detail[:2000] if result.detail else None))}).rowcount
        if updated:  # (the row is gone when its account was deleted meanwhile: nothing to attach to)
            _record_attempt(session, job, "succeeded", secrets_seen, ended=landed, response=_result_excerpt(result))
    if received_at is not None:
        metrics.observe_hook_to_effect(job.integration, (landed - received_at).total_seconds())
    log.info("delivery %s (request %s) succeeded", delivery_id, request_id)
    return "succeeded"


@dataclass
class _Job:
    """Everything one attempt needs, read in the claiming transaction."""

    delivery_id: int
    account_id: str
    integration: str
    action: str
    connection: str
    params: dict[str, Any]
    attempt: int
    created_at: datetime
    timezone: str
    region: str
    config: dict[str, Any] | None
    binding_problem: str | None
    event: Event | None
    started_at: datetime | None = None  # when this attempt began rendering and calling the vendor


def _bounded(text: str | None, secrets_seen: list[str]) -> str | None:
    """``text`` scrubbed of the connection's secrets, then cut to ATTEMPT_TEXT_MAX (None stays None)."""
    return excerpt(scrub(text, secrets_seen), ATTEMPT_TEXT_MAX) if text else None


def _result_excerpt(result: ActionResult) -> str:
    """What the vendor answered a successful action, in a line: its id, link and detail."""
    parts = [f"external id: {result.external_id}" if result.external_id else "",
             f"url: {result.url}" if result.url else "", result.detail or "",
             "deduplicated: the effect was already there" if result.deduplicated else ""]
    return "; ".join(p for p in parts if p) or "ok"


# Writes an attempt row (a Core insert: not the ORM's bulk-insert path, for a row nothing reads back here).
_INSERT_ATTEMPT = sa.insert(DeliveryAttempt.__table__)


def _record_attempt(session: Session, job: _Job, outcome: str, secrets_seen: list[str], *, ended: datetime,
                    status_code: int | None = None, error: str | None = None, response: str | None = None) -> None:
    """Insert the attempt row of ``job``: what was sent (the rendered params), what came back, scrubbed and bounded."""
    started = job.started_at or ended
    request = json.dumps(job.params, ensure_ascii=False, sort_keys=True, default=str)
    session.execute(_INSERT_ATTEMPT, {
        "delivery_id": job.delivery_id, "account_id": job.account_id, "number": job.attempt, "started_at": started,
        "duration_ms": max(0, int((ended - started).total_seconds() * 1000)), "outcome": outcome,
        "status_code": status_code if isinstance(status_code, int) else None, "error": _bounded(error, secrets_seen),
        "request_excerpt": _bounded(request, secrets_seen), "response_excerpt": _bounded(response, secrets_seen)})


def follow_ups(exc: BaseException) -> list[int]:
    """Deliveries planned while recording a failure (the circuit's alert), which the caller must enqueue."""
    return list(getattr(exc, "follow_up", None) or [])


def _integration(rt: Runtime, job: _Job):
    """The configured integration object for the job's connection, or PermanentError."""
    if job.config is None:
        raise PermanentError(f"connection {job.connection!r} no longer exists for account {job.account_id}")
    cls = rt.registry.get(job.integration)
    if cls is None:
        raise PermanentError(f"integration {job.integration!r} is not installed")
    if job.binding_problem:
        raise PermanentError(f"connection {job.connection!r}: {job.binding_problem}", code="foreign_account")
    try:
        # Validated again with the guard: a config stored before the guard (or before the operator
        # closed private URLs) must not reach a host it would be refused today.
        return cls(cls.Config.model_validate(job.config,
                                             context={"allow_private_urls": rt.settings.allow_private_urls}))
    except Exception as exc:  # pydantic.ValidationError: the stored config is no longer valid
        raise PermanentError(f"connection {job.connection!r} is misconfigured: {exc}") from None


def _context(rt: Runtime, job: _Job) -> ActionContext:
    """The ActionContext of one attempt: identity, shared limiter, consent list and voicemail audio."""
    def opted_out(number: str) -> bool:
        with rt.sessions() as session:
            return crm.is_opted_out(session, job.account_id, number)

    return ActionContext(
        account_id=job.account_id, idempotency_key=f"{job.account_id}:{job.delivery_id}",
        connection_id=f"{job.account_id}:{job.connection}", attempt=job.attempt, timezone=job.timezone,
        region=job.region, api_urls=rt.api_urls(), acquire=rt.limiter.acquire, penalise=rt.limiter.penalise,
        reserve=functools.partial(rt.limiter.reserve, holder=f"delivery:{job.delivery_id}"),
        redis=rt.redis, namespace=rt.settings.namespace, event=job.event.to_json() if job.event else {},
        media=lambda max_bytes: media.voicemail_audio(rt, job.account_id, job.event, max_bytes),
        opted_out=opted_out, allow_private_urls=rt.settings.allow_private_urls, seal=rt.box.seal,
        unseal=rt.box.unseal)


def _record_failure(rt: Runtime, job: _Job, exc: IntegrationError, secrets_seen: list[str]) -> None:
    """Write the attempt's outcome: retrying, failed (permanent), paused (auth) or dead (past the horizon)."""
    exc.message = scrub(exc.message, secrets_seen)
    exc.args = (exc.message,)
    past_horizon = utcnow() - job.created_at > timedelta(seconds=rt.settings.retry_horizon_seconds)
    if isinstance(exc, AuthError):
        status = "paused"  # fixable by the operator: kept for replay when the connection resumes
    elif exc.retryable:
        status = "dead" if past_horizon else "retrying"
    else:
        status = "failed"
    now = utcnow()
    values: dict[str, Any] = {"status": status, "claimed_until": None, "updated_at": now}
    waiting = exc.code in WAITING_CODES
    if waiting:
        values["attempts"] = Delivery.attempts - 1
        if status == "dead":  # no attempt row says why: the delivery itself must (an earlier error would mislead)
            horizon = _span(rt.settings.retry_horizon_seconds)
            values["last_error"] = f"gave up: still {WAITING_FOR.get(exc.code, 'waiting')} after {horizon}"
    else:
        values["last_error"] = f"{type(exc).__name__}: {exc.message}"[:2000]
        rt.redis.delete(f"{rt.settings.namespace}:paced-waits:{job.delivery_id}")  # waits after this start anew
    if status == "retrying":
        # Backoff grows with the attempts that reached the vendor (the row's count), never with pacing waits.
        real_attempts = job.attempt - 1 if waiting else job.attempt
        if exc.code == "paced" and exc.retry_after:
            delay = paced_delay(rt, job.delivery_id, exc.retry_after)
        elif waiting and exc.retry_after:
            delay = exc.retry_after  # a booked slot, quiet hours, a queued write: exactly as said, no backoff
        else:
            delay = retry_delay(rt, max(1, real_attempts), exc.retry_after, code=exc.code)
        values["next_attempt_at"] = now + timedelta(seconds=delay)
    with rt.sessions.begin() as session:
        updated = session.execute(sa.update(Delivery).where(Delivery.id == job.delivery_id).values(**values)).rowcount
        if updated and not waiting:  # a wait for a rate-limit token or quiet hours reached no vendor: no attempt
            answer = f"HTTP {exc.status}: {exc.message}" if isinstance(exc.status, int) else None
            _record_attempt(session, job, status, secrets_seen, ended=now, status_code=exc.status,
                            error=values["last_error"], response=answer)
    if isinstance(exc, AuthError):
        exc.follow_up = _count_auth_failure(rt, job, exc)
    if status == "dead":
        raise PermanentError(f"gave up after the retry horizon: {exc.message}") from None


def _count_auth_failure(rt: Runtime, job: _Job, exc: AuthError) -> list[int]:
    """Open the connection's circuit after repeated auth failures; record it; return the alert deliveries."""
    key = f"{rt.settings.namespace}:authfail:{job.account_id}:{job.connection}"
    failures = rt.redis.incr(key)
    rt.redis.expire(key, CIRCUIT_WINDOW_SECONDS)
    if failures < CIRCUIT_THRESHOLD:
        return []
    reason = f"{failures} authentication failures: {exc.message}"[:1000]
    with rt.sessions.begin() as session:
        paused = session.execute(sa.update(Connection).where(
            Connection.account_id == job.account_id, Connection.name == job.connection,
            Connection.paused_reason.is_(None)).values(paused_reason=reason)).rowcount
        if not paused:
            return []
        session.add(AuditEntry(account_id=job.account_id, kind="connection_paused",
                               detail=f"{job.connection}: {reason}"))
        return _plan_alert(session, rt, job.account_id,
                           f"pbxrelay paused connection '{job.connection}': {reason}. Fix the credentials, "
                           f"then run `pbxrelay connections resume {job.account_id} {job.connection}`.",
                           exclude=job.connection)


def _plan_alert(session: Session, rt: Runtime, account_id: str, text: str, *, exclude: str) -> list[int]:
    """Queue a message to the account's alert connection (if any, and not the broken one)."""
    ruleset = ruleset_of(session, rt, account_id)
    target = ruleset.account.alert_connection if ruleset else None
    if not target or target == exclude:
        return []
    event = Event(type="pbxrelay.alert", account_id=account_id, key=f"pbxrelay.alert:{utcnow().isoformat()}",
                  occurred_at=utcnow(), data={"text": text})
    store_event(session, event)
    integration = ruleset.connections[target].integration
    delivery = Delivery(account_id=account_id, event_key=event.key, event_type=event.type, rule_name="(alert)",
                        action_index=0, connection=target, integration=integration, action="post_message",
                        status="pending", params={"text": text}, rendered=True)
    session.add(delivery)
    session.flush()
    return [delivery.id]
