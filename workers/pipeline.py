"""The pipeline as plain functions: normalise -> correlate -> match rules -> deliveries -> execute.

Tasks in ``workers.tasks`` only call these and decide how to retry. Everything here runs (and is
tested) without Celery: it needs a :class:`service.runtime.Runtime`.

Exactly-once bookkeeping lives in SQL:
- ``events`` has one row per (account, event key): a second delivery of the same hook, or a second
  proposal of the same call-level event, hits the unique constraint and is not planned again;
- ``deliveries`` has one row per (account, event key, rule, action index), claimed with a lease
  before each attempt, so two copies of an action task never run the same action at once.
"""

from __future__ import annotations

import base64
import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from integrations.base import ActionContext, AuthError, IntegrationError, PermanentError, RetryableError, scrub
from service import accounts, crm, media, onboarding, reconcile
from service import rules as rules_mod
from service.events import Event
from service.kazoo import MalformedPayload, parse_delivery, to_hook_event
from service.runtime import Runtime
from service.store import (Account, AuditEntry, Connection, Delivery, QuarantinedDelivery, RuleSet, StoredEvent,
                           utcnow)

log = logging.getLogger(__name__)
unsupported_log = logging.getLogger("pbxrelay.unsupported")
anomalous_log = logging.getLogger("pbxrelay.anomalous")

@dataclass
class IngestOutcome:
    """What ingesting one delivery did: its status, the deliveries to enqueue, a call to finalise."""

    status: str  # accepted | duplicate | quarantined
    event_key: str | None = None
    reason: str | None = None
    deliveries: list[int] = field(default_factory=list)
    finalize_call: str | None = None


def envelope_body(envelope: dict[str, Any]) -> bytes:
    """The raw body bytes of a receiver envelope."""
    body = envelope.get("body") or ""
    return base64.b64decode(body) if envelope.get("body_b64") else body.encode("utf-8")


def quarantine(rt: Runtime, envelope: dict[str, Any], reason: str) -> None:
    """Keep an envelope that could not be processed, with the reason, for the operator."""
    with rt.sessions.begin() as session:
        _quarantine(session, envelope, reason)


def _quarantine(session: Session, envelope: dict[str, Any], reason: str) -> None:
    body = envelope_body(envelope)
    session.add(QuarantinedDelivery(
        account_id=envelope["account_id"], reason=reason[:2000], source=envelope.get("source", "virtualpbx"),
        method=envelope.get("method", "POST"), content_type=(envelope.get("content_type") or "")[:200],
        query_string=envelope.get("query_string") or "", body=body.decode("utf-8", "backslashreplace"),
        received_at=datetime.fromisoformat(envelope["received_at"])))


def _store_event(session: Session, event: Event) -> bool:
    """Insert the event's row; False when an event with that key was stored before."""
    try:
        with session.begin_nested():
            session.add(StoredEvent(account_id=event.account_id, key=event.key[:300], type=event.type,
                                    occurred_at=event.occurred_at, data=event.data))
        return True
    except IntegrityError:
        return False


def parse_envelope(envelope: dict[str, Any]) -> Event:
    """Turn a receiver envelope into the raw ``virtualpbx.*`` event (MalformedPayload if unreadable)."""
    payload = parse_delivery(method=envelope.get("method", "POST"), content_type=envelope.get("content_type", ""),
                             body=envelope_body(envelope), query_string=envelope.get("query_string", ""))
    return to_hook_event(payload, account_id=envelope["account_id"],
                         received_at=datetime.fromisoformat(envelope["received_at"]))


def ingest(rt: Runtime, envelope: dict[str, Any],
           schedule_finalize: Callable[[str, str], None] = lambda account_id, call_key: None,
           *, rerun: bool = False) -> IngestOutcome:
    """Process one authenticated delivery: store or quarantine it, correlate, and plan deliveries.

    ``schedule_finalize`` is called before the transaction commits, so a crash after the commit
    cannot lose the call's ``call.ended`` (finalising twice is harmless: event keys are unique).
    ``rerun`` says this envelope's task ran before (its worker died or it was retried): if that run
    committed, the deliveries it planned but may never have enqueued are returned again.
    """
    with rt.sessions.begin() as session:
        account = session.get(Account, envelope["account_id"])
        if account is None:
            return IngestOutcome(status="quarantined", reason="account no longer exists")
        if envelope.get("source") == "crm":
            return _ingest_crm(session, rt, account, envelope, rerun=rerun)
        hook_account = (envelope.get("headers") or {}).get("x-account-id")
        try:
            raw = parse_envelope(envelope)
        except MalformedPayload as exc:
            anomalous_log.warning("quarantined a malformed delivery for %s: %s", account.id, exc)
            _quarantine(session, envelope, f"malformed: {exc}")
            return IngestOutcome(status="quarantined", reason=f"malformed: {exc}")
        if hook_account and hook_account != account.id:
            reason = f"X-Account-ID {hook_account[:64]!r} does not match the hook URL's account"
            _quarantine(session, envelope, reason)
            return IngestOutcome(status="quarantined", reason=reason)
        if raw.type == "virtualpbx.unknown":
            unsupported_log.info("quarantined an unknown hook type for %s", account.id)
            _quarantine(session, envelope, "unknown hook type (no hook_event, event_name or object fields)")
            return IngestOutcome(status="quarantined", event_key=raw.key, reason="unknown hook type")
        if not _store_event(session, raw):
            derived = [event.key for event in rt.correlator.observe(raw).events] if rerun else []
            return _stored_before(session, envelope, account.id, [raw.key, *derived], rerun=rerun)

        ruleset = _ruleset(session, rt, account.id)
        if raw.type == "virtualpbx.sms":
            crm.apply_sms_reply(session, account.id, raw.data, ruleset.account.region if ruleset else "US")
        correlation = rt.correlator.observe(raw)
        if correlation.finalize_call:
            schedule_finalize(account.id, correlation.finalize_call)
        outcome = IngestOutcome(status="accepted", event_key=raw.key, finalize_call=correlation.finalize_call)
        for event in [raw, *correlation.events]:
            if event is raw or _store_event(session, event):
                outcome.deliveries.extend(_plan(session, ruleset, account, event))
    return outcome


def _ingest_crm(session: Session, rt: Runtime, account: Account, envelope: dict[str, Any], *,
                rerun: bool) -> IngestOutcome:
    """A CRM webhook: map it to crm.event, honour an opt-out flag, de-duplicate, plan deliveries."""
    try:
        payload = parse_delivery(method=envelope.get("method", "POST"), content_type=envelope.get("content_type", ""),
                                 body=envelope_body(envelope), query_string=envelope.get("query_string", ""))
    except MalformedPayload as exc:
        _quarantine(session, envelope, f"malformed: {exc}")
        return IngestOutcome(status="quarantined", reason=f"malformed: {exc}")
    ruleset = _ruleset(session, rt, account.id)
    event = crm.crm_event(payload, account_id=account.id, crm=ruleset.crm if ruleset else None,
                          received_at=datetime.fromisoformat(envelope["received_at"]),
                          webhook_id=(envelope.get("headers") or {}).get("webhook-id"))
    if not _store_event(session, event):
        return _stored_before(session, envelope, account.id, [event.key], rerun=rerun)
    if event.data.get("opt_out") and ruleset is not None and ruleset.crm is not None:
        number = crm.to_e164(event.data.get(ruleset.crm.phone_field), ruleset.account.region)
        if number:
            crm.add_opt_out(session, account.id, number, "crm")
    return IngestOutcome(status="accepted", event_key=event.key, deliveries=_plan(session, ruleset, account, event))


def _stored_before(session: Session, envelope: dict[str, Any], account_id: str, keys: list[str], *,
                   rerun: bool) -> IngestOutcome:
    """An envelope whose event (``keys[0]``) was stored before; ``keys`` also names the events it derives.

    A re-run is most likely our own earlier run, killed between its commit and its enqueues: its
    unstarted deliveries are returned again (harmless if it was another copy from Kazoo after all).
    Otherwise it is a duplicate from the sender, kept in the quarantine with that reason.
    """
    if rerun:
        return IngestOutcome(status="duplicate", event_key=keys[0], reason="re-run",
                             deliveries=_unstarted(session, account_id, keys))
    _quarantine(session, envelope, f"duplicate of event {keys[0]}")
    return IngestOutcome(status="duplicate", event_key=keys[0], reason="duplicate")


def finalize_call(rt: Runtime, account_id: str, call_key: str, *, rerun: bool = False) -> list[int]:
    """Propose the ended/missed events of a call whose A-leg hung up; plan their deliveries."""
    return emit_events(rt, account_id, rt.correlator.finalize(account_id, call_key), rerun=rerun)


def emit_events(rt: Runtime, account_id: str, events: list[Event], *, rerun: bool = False) -> list[int]:
    """Store events that are new (by key) and plan their deliveries; returns the ids to enqueue.

    With ``rerun`` (the task ran before and may have died after its commit), an event stored
    already also returns its deliveries that were never started.
    """
    with rt.sessions.begin() as session:
        account = session.get(Account, account_id)
        if account is None:
            return []
        ruleset = _ruleset(session, rt, account_id)
        planned: list[int] = []
        stored_before: list[str] = []
        for event in events:
            if _store_event(session, event):
                planned.extend(_plan(session, ruleset, account, event))
            else:
                stored_before.append(event.key)
        if rerun and stored_before:
            planned.extend(_unstarted(session, account_id, stored_before))
        return planned


def _unstarted(session: Session, account_id: str, event_keys: list[str]) -> list[int]:
    """Deliveries of these events still pending and never attempted (their enqueue may have been lost)."""
    return list(session.scalars(sa.select(Delivery.id).where(
        Delivery.account_id == account_id, Delivery.event_key.in_([key[:300] for key in event_keys]),
        Delivery.status == "pending", Delivery.attempts == 0).order_by(Delivery.id)))


def pbx_accounts(rt: Runtime) -> list[str]:
    """Accounts that have a VirtualPBX API connection (for onboarding, re-enabling and reconciliation)."""
    with rt.sessions() as session:
        return list(session.scalars(sa.select(Connection.account_id).where(
            Connection.integration == "virtualpbx").distinct()))


def reconcile_account(rt: Runtime, account_id: str, now: datetime) -> list[int]:
    """Emit call.ended / call.missed for calls in the CDRs whose webhooks never arrived."""
    client = media.pbx_client(rt, account_id)
    if client is None:
        return []
    with rt.sessions() as session:
        last_run = session.get(Account, account_id).reconciled_until
    created_from, created_to = reconcile.reconcile_window(aware(last_run) if last_run else None, now)
    if created_to <= created_from:
        return []
    calls = reconcile.fetch_cdr_calls(client, created_from, created_to)
    keys = [f"{kind}:{call_key}" for call_key in calls for kind in ("call.ended", "call.missed")]
    with rt.sessions() as session:
        known = set(session.scalars(sa.select(StoredEvent.key).where(StoredEvent.account_id == account_id,
                                                                    StoredEvent.key.in_(keys)))) if keys else set()
    planned = emit_events(rt, account_id, reconcile.missing_call_events(account_id, calls, known))
    with rt.sessions.begin() as session:
        session.get(Account, account_id).reconciled_until = created_to
        if planned:
            session.add(AuditEntry(account_id=account_id, kind="reconciled",
                                   detail=f"{len(planned)} action(s) for calls whose hooks never arrived "
                                          f"({created_from.isoformat()} .. {created_to.isoformat()})"))
    return planned


def reenable_account_hooks(rt: Runtime, account_id: str, *, receiver_healthy: bool) -> int:
    """Re-enable pbxrelay's hooks that Kazoo disabled, once the receiver is healthy; audit each."""
    client = media.pbx_client(rt, account_id)
    if client is None:
        return 0
    hooks = onboarding.reenable_disabled(client, receiver_healthy=receiver_healthy)
    if hooks:
        with rt.sessions.begin() as session:
            for hook in hooks:
                session.add(AuditEntry(account_id=account_id, kind="hook_reenabled",
                                       detail=f"{hook.name} ({hook.hook_id}) was disabled: "
                                              f"{hook.disable_reason or 'no reason given'}"))
    return len(hooks)


def connect_account(rt: Runtime, account_id: str) -> "onboarding.ConnectReport":
    """Register (idempotently) the VirtualPBX webhooks the account's rules need; audit the result."""
    client = media.pbx_client(rt, account_id)
    if client is None:
        raise accounts.AccountError(f"account {account_id} has no virtualpbx connection in its rules file "
                                    "(add one with integration: virtualpbx and an api_key)")
    with rt.sessions() as session:
        account = accounts.get_account(session, account_id)
        ruleset = _ruleset(session, rt, account_id)
        token = accounts.hook_token(account, rt.box)
    if ruleset is None:
        raise accounts.AccountError(f"account {account_id} has no rules yet (apply a file first)")
    report = onboarding.connect_account(client, hook_url=accounts.hook_url(rt.settings.public_url, token),
                                        hooks=onboarding.required_hooks(ruleset))
    with rt.sessions.begin() as session:
        session.add(AuditEntry(account_id=account_id, kind="connected", detail=(
            f"created {len(report.created)}, updated {len(report.updated)}, unchanged {len(report.unchanged)}, "
            f"deleted {len(report.deleted)}, re-enabled {len(report.reenabled)}; format {report.body_format}")))
    return report


_RULES_CACHE: dict[str, tuple[int, Any]] = {}


def _ruleset(session: Session, rt: Runtime, account_id: str):
    """The parsed rules of an account, cached per process until its version changes."""
    row = session.get(RuleSet, account_id)
    if row is None:
        return None
    cached = _RULES_CACHE.get(account_id)
    if cached and cached[0] == row.version:
        return cached[1]
    parsed = rules_mod.load_rules(row.source, filename=f"<rules of {account_id}>", registry=rt.registry)
    _RULES_CACHE[account_id] = (row.version, parsed)
    return parsed


def _plan(session: Session, ruleset, account: Account, event: Event) -> list[int]:
    """Create a delivery row for each matching rule action; return the ids that need a task."""
    if ruleset is None:
        return []
    ids = []
    for planned in rules_mod.plan(ruleset, event):
        delivery = Delivery(account_id=account.id, event_key=event.key[:300], event_type=event.type,
                            rule_name=planned.rule_name, action_index=planned.index,
                            connection=planned.connection, integration=planned.integration,
                            action=planned.action, status="pending", params={})
        try:
            delivery.params = rules_mod.render_action(planned, event, ruleset.account,
                                                      escape=_template_escape(planned.integration))
        except PermanentError as exc:
            delivery.status = "failed"
            delivery.last_error = scrub(str(exc))[:2000]
        try:
            with session.begin_nested():
                session.add(delivery)
        except IntegrityError:
            continue  # planned before (a re-delivered task): the existing row is authoritative
        if delivery.status == "pending":
            ids.append(delivery.id)
    return ids


def _template_escape(integration: str) -> Callable[[str], str] | None:
    """The escaping an integration wants for event values in its templates."""
    from integrations import REGISTRY

    cls = REGISTRY.get(integration)
    return cls.template_escape if cls else None


def dry_run(rt: Runtime, account_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Show what a payload would do, with no side effect: parsed event, call events, rules, rendered actions."""
    from service.calls import call_key_for_leg, missed_from_notification, summarize_call, voicemail_data

    with rt.sessions() as session:
        account = accounts.get_account(session, account_id)
        ruleset = _ruleset(session, rt, account_id)
    raw = to_hook_event(payload, account_id=account_id)
    derived: list[Event] = []
    hook = raw.data.get("hook")
    call_key = call_key_for_leg(raw.data) if hook and hook.startswith("channel_") else None
    if call_key:
        summary = summarize_call(call_key, {f"{hook}:{raw.data['call_id']}": raw.data})
        kinds = {"channel_create": ["call.started"], "channel_bridge": ["call.answered"],
                 "channel_destroy": ["call.ended"] + (["call.missed"] if summary["direction"] == "inbound"
                                                      and summary["outcome"] != "answered" else [])}
        for kind in kinds.get(hook, []):
            derived.append(Event(type=kind, account_id=account_id, key=f"{kind}:{call_key}",
                                 occurred_at=raw.occurred_at, data=summary))
    else:
        if raw.data.get("subtype") == "voicemail_new":
            derived.append(Event(type="voicemail.new", account_id=account_id, key="voicemail.new:dry-run",
                                 occurred_at=raw.occurred_at, data=voicemail_data(raw.data)))
        elif raw.data.get("subtype") == "missed_call":
            derived.append(Event(type="call.missed", account_id=account_id, key="call.missed:dry-run",
                                 occurred_at=raw.occurred_at, data=missed_from_notification(raw.data)))
    actions = []
    for event in [raw, *derived]:
        for planned in (rules_mod.plan(ruleset, event) if ruleset else []):
            entry = {"event": event.type, "rule": planned.rule_name, "use": planned.connection,
                     "integration": planned.integration, "action": planned.action}
            try:
                entry["with"] = rules_mod.render_action(planned, event, ruleset.account,
                                                        escape=_template_escape(planned.integration))
            except PermanentError as exc:
                entry["error"] = str(exc)
            actions.append(entry)
    return {"account": {"id": account.id, "name": account.name},
            "event": raw.to_json(), "call_events": [e.to_json() for e in derived], "actions": actions}


def _claim(session: Session, delivery_id: int, lease: timedelta) -> Delivery | None:
    now = utcnow()
    result = session.execute(
        sa.update(Delivery)
        .where(Delivery.id == delivery_id,
               sa.or_(Delivery.status.in_(("pending", "retrying")),
                      sa.and_(Delivery.status == "running", Delivery.claimed_until < now)))
        .values(status="running", attempts=Delivery.attempts + 1, claimed_until=now + lease,
                updated_at=now))
    return session.get(Delivery, delivery_id) if result.rowcount == 1 else None


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
WAITING_CODES = frozenset({"paced", "deferred", "queued"})
# Permanent auth failures of one connection within the window that pause it (the circuit opens).
CIRCUIT_THRESHOLD = 3
CIRCUIT_WINDOW_SECONDS = 600


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes even for timezone-aware columns: read them as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def execute_delivery(rt: Runtime, delivery_id: int) -> str:
    """Run one planned action once; record the attempt; raise RetryableError/PermanentError on failure."""
    with rt.sessions.begin() as session:
        # One attempt may hold the delivery for its time limit plus a margin; after that a re-sent
        # copy of the task (its worker was killed mid-action) may take over.
        delivery = _claim(session, delivery_id, timedelta(seconds=rt.settings.claim_lease_seconds))
        if delivery is None:
            current = session.get(Delivery, delivery_id)
            if current is None:
                raise PermanentError(f"delivery {delivery_id} does not exist")
            if current.status == "running":
                left = (aware(current.claimed_until) - utcnow()).total_seconds() if current.claimed_until else 1
                raise RetryableError(f"delivery {delivery_id} is being attempted elsewhere",
                                     retry_after=max(1.0, left), code="claimed")
            return current.status  # succeeded, failed, dead, paused, discarded: nothing to do
        account = session.get(Account, delivery.account_id)
        connection = session.scalars(sa.select(Connection).where(
            Connection.account_id == delivery.account_id, Connection.name == delivery.connection)).first()
        if connection is not None and connection.paused_reason:
            # The circuit is open: keep the action for `pbxrelay connections resume`, don't attempt it.
            delivery.status, delivery.attempts, delivery.claimed_until = "paused", delivery.attempts - 1, None
            delivery.last_error = f"connection paused: {connection.paused_reason}"[:2000]
            return "paused"
        stored = session.scalars(sa.select(StoredEvent).where(StoredEvent.account_id == delivery.account_id,
                                                              StoredEvent.key == delivery.event_key)).first()
        job = _Job(delivery_id=delivery.id, account_id=delivery.account_id, integration=delivery.integration,
                   action=delivery.action, connection=delivery.connection, params=dict(delivery.params or {}),
                   attempt=delivery.attempts, created_at=aware(delivery.created_at),
                   timezone=account.timezone if account else "UTC",
                   config=rt.box.decrypt(connection.config_encrypted) if connection else None,
                   event=(Event(type=stored.type, account_id=stored.account_id, key=stored.key,
                                occurred_at=aware(stored.occurred_at), data=stored.data) if stored else None))

    secrets_seen: list[str] = []
    try:
        integration = _integration(rt, job)
        secrets_seen = integration.secrets()
        result = integration.run(job.action, job.params, _context(rt, job))
    except IntegrationError as exc:
        _record_failure(rt, job, exc, secrets_seen)
        raise
    except Exception as exc:  # an unmapped failure: keep the action (retry), never swallow it
        log.exception("delivery %s: unexpected %s", delivery_id, type(exc).__name__)
        wrapped = RetryableError(scrub(f"unexpected {type(exc).__name__}: {exc}", secrets_seen)[:1000])
        _record_failure(rt, job, wrapped, secrets_seen)
        raise wrapped from None
    with rt.sessions.begin() as session:
        session.execute(sa.update(Delivery).where(Delivery.id == delivery_id).values(
            status="succeeded", external_id=(result.external_id or "")[:300] or None,
            last_error=("deduplicated: the effect was already there" if result.deduplicated else
                        (result.detail[:2000] if result.detail else None)),
            claimed_until=None, updated_at=utcnow()))
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
    config: dict[str, Any] | None
    event: Event | None


def _integration(rt: Runtime, job: _Job):
    """The configured integration object for the job's connection, or PermanentError."""
    if job.config is None:
        raise PermanentError(f"connection {job.connection!r} no longer exists for account {job.account_id}")
    cls = rt.registry.get(job.integration)
    if cls is None:
        raise PermanentError(f"integration {job.integration!r} is not installed")
    try:
        return cls(cls.Config.model_validate(job.config))
    except Exception as exc:  # pydantic.ValidationError: the stored config is no longer valid
        raise PermanentError(f"connection {job.connection!r} is misconfigured: {exc}") from None


def _context(rt: Runtime, job: _Job) -> ActionContext:
    """The ActionContext of one attempt: identity, shared limiter, consent list and voicemail audio."""
    region = "US"
    ruleset = _RULES_CACHE.get(job.account_id)
    if ruleset:
        region = ruleset[1].account.region

    def opted_out(number: str) -> bool:
        with rt.sessions() as session:
            return crm.is_opted_out(session, job.account_id, number)

    return ActionContext(
        account_id=job.account_id, idempotency_key=f"{job.account_id}:{job.delivery_id}",
        connection_id=f"{job.account_id}:{job.connection}", attempt=job.attempt, timezone=job.timezone,
        region=region, api_urls=rt.api_urls(), acquire=rt.limiter.acquire, penalise=rt.limiter.penalise,
        redis=rt.redis, namespace=rt.settings.namespace, event=job.event.to_json() if job.event else {},
        media=lambda max_bytes: media.voicemail_audio(rt, job.account_id, job.event, max_bytes),
        opted_out=opted_out)


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
    values: dict[str, Any] = {"status": status, "claimed_until": None, "updated_at": utcnow()}
    if exc.code in WAITING_CODES:
        values["attempts"] = Delivery.attempts - 1
    else:
        values["last_error"] = f"{type(exc).__name__}: {exc.message}"[:2000]
    with rt.sessions.begin() as session:
        session.execute(sa.update(Delivery).where(Delivery.id == job.delivery_id).values(**values))
    if isinstance(exc, AuthError):
        _count_auth_failure(rt, job, exc)
    if status == "dead":
        raise PermanentError(f"gave up after the retry horizon: {exc.message}") from None


def _count_auth_failure(rt: Runtime, job: _Job, exc: AuthError) -> None:
    """Open the connection's circuit after repeated auth failures; record it and alert the account."""
    key = f"{rt.settings.namespace}:authfail:{job.account_id}:{job.connection}"
    failures = rt.redis.incr(key)
    rt.redis.expire(key, CIRCUIT_WINDOW_SECONDS)
    if failures < CIRCUIT_THRESHOLD:
        return
    reason = f"{failures} authentication failures: {exc.message}"[:1000]
    with rt.sessions.begin() as session:
        paused = session.execute(sa.update(Connection).where(
            Connection.account_id == job.account_id, Connection.name == job.connection,
            Connection.paused_reason.is_(None)).values(paused_reason=reason)).rowcount
        if not paused:
            return
        session.add(AuditEntry(account_id=job.account_id, kind="connection_paused",
                               detail=f"{job.connection}: {reason}"))
        alert_ids = _plan_alert(session, rt, job.account_id,
                                f"pbxrelay paused connection '{job.connection}': {reason}. Fix the credentials, "
                                f"then run `pbxrelay connections resume {job.account_id} {job.connection}`.",
                                exclude=job.connection)
    for delivery_id in alert_ids:
        _enqueue_hook(delivery_id)


def _plan_alert(session: Session, rt: Runtime, account_id: str, text: str, *, exclude: str) -> list[int]:
    """Queue a message to the account's alert connection (if any, and not the broken one)."""
    ruleset = _ruleset(session, rt, account_id)
    target = ruleset.account.alert_connection if ruleset else None
    if not target or target == exclude:
        return []
    event = Event(type="pbxrelay.alert", account_id=account_id, key=f"pbxrelay.alert:{utcnow().isoformat()}",
                  occurred_at=utcnow(), data={"text": text})
    _store_event(session, event)
    integration = ruleset.connections[target].integration
    delivery = Delivery(account_id=account_id, event_key=event.key, event_type=event.type, rule_name="(alert)",
                        action_index=0, connection=target, integration=integration, action="post_message",
                        status="pending", params={"text": text})
    session.add(delivery)
    session.flush()
    return [delivery.id]


# Set by workers.tasks so pipeline code can enqueue deliveries it creates outside a task's return path.
_enqueue_hook: Callable[[int], None] = lambda delivery_id: None


def set_enqueue(enqueue: Callable[[int], None]) -> None:
    """Install how new deliveries are enqueued (the Celery task's delay)."""
    global _enqueue_hook
    _enqueue_hook = enqueue


def resume_connection(rt: Runtime, account_id: str, name: str) -> list[int]:
    """Close a connection's circuit and return its paused deliveries, now pending again, for enqueueing."""
    with rt.sessions.begin() as session:
        session.execute(sa.update(Connection).where(Connection.account_id == account_id,
                                                    Connection.name == name).values(paused_reason=None))
        ids = list(session.scalars(sa.select(Delivery.id).where(
            Delivery.account_id == account_id, Delivery.connection == name, Delivery.status == "paused")))
        if ids:
            session.execute(sa.update(Delivery).where(Delivery.id.in_(ids)).values(
                status="pending", claimed_until=None, updated_at=utcnow()))
        session.add(AuditEntry(account_id=account_id, kind="connection_resumed",
                               detail=f"{name}: {len(ids)} paused action(s) replayed"))
    rt.redis.delete(f"{rt.settings.namespace}:authfail:{account_id}:{name}")
    return ids


def replay(rt: Runtime, *, delivery_ids: list[int]) -> list[int]:
    """Put dead, failed or paused deliveries back to pending (their retry horizon restarts now)."""
    with rt.sessions.begin() as session:
        ids = list(session.scalars(sa.select(Delivery.id).where(
            Delivery.id.in_(delivery_ids), Delivery.status.in_(("dead", "failed", "paused", "discarded")))))
        if ids:
            session.execute(sa.update(Delivery).where(Delivery.id.in_(ids)).values(
                status="pending", claimed_until=None, created_at=utcnow(), updated_at=utcnow()))
    return ids


def stale_deliveries(rt: Runtime, overdue: timedelta) -> list[int]:
    """Deliveries whose task message must have been lost: never attempted, or retrying or running, and overdue.

    A retrying delivery is overdue once ``overdue`` past the longest countdown since its last attempt, a running
    one once ``overdue`` past its claim. A second message for a delivery is harmless: attempts claim it.
    """
    now = utcnow()
    cutoff = now - overdue
    retry_cutoff = cutoff - timedelta(seconds=rt.settings.retry_max_countdown_seconds)
    with rt.sessions() as session:
        return list(session.scalars(sa.select(Delivery.id).where(sa.or_(
            sa.and_(Delivery.status == "pending", Delivery.created_at < cutoff),
            sa.and_(Delivery.status == "retrying", Delivery.updated_at < retry_cutoff),
            sa.and_(Delivery.status == "running", Delivery.claimed_until < cutoff))).order_by(Delivery.id).limit(1000)))
