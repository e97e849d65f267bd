"""Ingest: one received hook or CRM call becomes a stored event (or a quarantined one), its call
events, and the deliveries they plan; all in one transaction, so a killed run leaves nothing behind.

Exactly-once bookkeeping lives in SQL: ``events`` has one row per (account, event key), so a second
delivery of the same hook, or a second proposal of the same call-level event, hits the unique
constraint and is not planned again.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import crm
from service.engine.planning import parsed_rules, plan_deliveries
from service.events import Event
from service.pbx.payloads import MalformedPayload, parse_delivery, to_hook_event
from service.runtime import Runtime
from service.store import queries
from service.store.models import Delivery, QuarantinedDelivery, StoredEvent

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
    # The body is kept as bytes; the text columns get NUL escaped, which PostgreSQL's text refuses
    # (a reason may quote the body, e.g. a JSON parse error).
    session.add(QuarantinedDelivery(
        account_id=envelope["account_id"], reason=_nul_free(reason[:2000]),
        source=_nul_free(envelope.get("source", "virtualpbx")), method=_nul_free(envelope.get("method", "POST")[:10]),
        content_type=_nul_free((envelope.get("content_type") or "")[:200]),
        query_string=_nul_free(envelope.get("query_string") or ""), body=envelope_body(envelope),
        received_at=datetime.fromisoformat(envelope["received_at"])))


def _nul_free(text: str) -> str:
    """``text`` with NUL shown as the escape ``\\x00``: PostgreSQL text and jsonb cannot hold NUL."""
    return text.replace("\x00", "\\x00")


def _nul_free_json(value: Any) -> Any:
    """A parsed JSON value with :func:`_nul_free` applied to every string in it, keys included."""
    if isinstance(value, str):
        return _nul_free(value)
    if isinstance(value, dict):
        return {_nul_free(key) if isinstance(key, str) else key: _nul_free_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nul_free_json(item) for item in value]
    return value


def without_nul(event: Event) -> Event:
    """The event with NUL escaped in its key and data, so it stores the same on SQLite and PostgreSQL.

    A hook may carry ``\\u0000`` inside a JSON string; kept as is, PostgreSQL refuses the row and the
    hook would be neither stored nor quarantined.
    """
    return replace(event, type=_nul_free(event.type), key=_nul_free(event.key), data=_nul_free_json(event.data))


def store_event(session: Session, event: Event, received_at: datetime | None = None) -> bool:
    """Insert the event's row (``received_at``: when the receiver accepted the hook behind it, default now);
    False when an event with that key was stored before."""
    return queries.insert_if_new(session, StoredEvent, {
        "account_id": event.account_id, "key": event.key[:300], "type": event.type, "occurred_at": event.occurred_at,
        "data": event.data, **({"received_at": received_at} if received_at else {})}) is not None


def parse_envelope(envelope: dict[str, Any]) -> Event:
    """Turn a receiver envelope into the raw ``virtualpbx.*`` event (MalformedPayload if unreadable)."""
    payload = parse_delivery(method=envelope.get("method", "POST"), content_type=envelope.get("content_type", ""),
                             body=envelope_body(envelope), query_string=envelope.get("query_string", ""))
    return without_nul(to_hook_event(payload, account_id=envelope["account_id"],
                                     received_at=datetime.fromisoformat(envelope["received_at"])))


def ingest(rt: Runtime, envelope: dict[str, Any], *, rerun: bool = False) -> IngestOutcome:
    """Process one authenticated delivery: store or quarantine it, correlate, and plan deliveries.

    The outcome names the deliveries to enqueue and the call to finalise after its settle window.
    ``rerun`` says this envelope's task ran before (its worker died or it was retried): if that run
    committed, the deliveries it planned but may never have enqueued, and the call it may never have
    scheduled for finalising, are returned again (finalising twice is harmless: event keys are unique).
    """
    with rt.sessions.begin() as session:
        account, rules_row = queries.account_and_rules(session, envelope["account_id"])
        if account is None:
            return IngestOutcome(status="quarantined", reason="account no longer exists")
        if envelope.get("source") == "crm":
            return _ingest_crm(session, rt, account, parsed_rules(rt, account.id, rules_row), envelope, rerun=rerun)
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
        received_at = datetime.fromisoformat(envelope["received_at"])
        if not store_event(session, raw, received_at):
            if not rerun:
                return _stored_before(session, envelope, account.id, [raw.key], rerun=False)
            again = rt.correlator.observe(raw)
            outcome = _stored_before(session, envelope, account.id, [raw.key, *(e.key for e in again.events)],
                                     rerun=True)
            outcome.finalize_call = again.finalize_call
            return outcome

        ruleset = parsed_rules(rt, account.id, rules_row)
        if raw.type == "virtualpbx.sms":
            crm.apply_sms_reply(session, account.id, raw.data, ruleset.account.region if ruleset else "US")
        correlation = rt.correlator.observe(raw)
        outcome = IngestOutcome(status="accepted", event_key=raw.key, finalize_call=correlation.finalize_call)
        for event in [raw, *correlation.events]:
            if event is raw or store_event(session, event, received_at):
                outcome.deliveries.extend(plan_deliveries(session, rt, ruleset, account, event,
                                                          request_id=envelope.get("request_id")))
    # The request id made by the receiver links this line to the action attempts' lines (by delivery id).
    log.info("request %s: %s planned deliveries %s", envelope.get("request_id"), raw.key, outcome.deliveries)
    return outcome


def _ingest_crm(session: Session, rt: Runtime, account: queries.AccountRef, ruleset, envelope: dict[str, Any], *,
                rerun: bool) -> IngestOutcome:
    """A CRM webhook: map it to crm.event, honour an opt-out flag, de-duplicate, plan deliveries."""
    try:
        payload = parse_delivery(method=envelope.get("method", "POST"), content_type=envelope.get("content_type", ""),
                                 body=envelope_body(envelope), query_string=envelope.get("query_string", ""))
    except MalformedPayload as exc:
        _quarantine(session, envelope, f"malformed: {exc}")
        return IngestOutcome(status="quarantined", reason=f"malformed: {exc}")
    received_at = datetime.fromisoformat(envelope["received_at"])
    event = without_nul(crm.crm_event(payload, account_id=account.id, crm=ruleset.crm if ruleset else None,
                                      received_at=received_at,
                                      webhook_id=(envelope.get("headers") or {}).get("webhook-id")))
    if not store_event(session, event, received_at):
        return _stored_before(session, envelope, account.id, [event.key], rerun=rerun)
    if event.data.get("opt_out") and ruleset is not None and ruleset.crm is not None:
        number = crm.to_e164(event.data.get(ruleset.crm.phone_field), ruleset.account.region)
        if number:
            crm.add_opt_out(session, account.id, number, "crm")
    planned = plan_deliveries(session, rt, ruleset, account, event, request_id=envelope.get("request_id"))
    log.info("request %s: %s planned deliveries %s", envelope.get("request_id"), event.key, planned)
    return IngestOutcome(status="accepted", event_key=event.key, deliveries=planned)


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
        account, rules_row = queries.account_and_rules(session, account_id)
        if account is None:
            return []
        ruleset = parsed_rules(rt, account_id, rules_row)
        planned: list[int] = []
        stored_before: list[str] = []
        for event in events:
            if store_event(session, event):
                planned.extend(plan_deliveries(session, rt, ruleset, account, event))
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
