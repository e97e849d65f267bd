"""Scheduling: what is due now. Due times live in the delivery rows and in a Redis sorted set, never in a
worker's memory, so a worker that dies holds back no more than the actions it was running.

- a delivery is due when pending or retrying with ``next_attempt_at`` passed (or pending, never sent by the
  scheduler and older than the lease: its first message was lost), or running past its claim;
- a call is due for finalising ``call_settle_seconds`` after its A-leg hung up.

Each due item is handed out with a lease (``stale_after_seconds``): it is handed out again only if its task
has not taken it by then (the message was lost, or held by a worker that died). A second message is
harmless: an attempt claims its delivery, and call events have fixed keys.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import sqlalchemy as sa

from service.runtime import Runtime
from service.store.models import Delivery, utcnow

# How many due deliveries one pass hands out (the next pass, a second later, takes the rest).
BATCH = 1000


def due_deliveries(rt: Runtime, *, limit: int = BATCH) -> list[int]:
    """Deliveries due now, marked as sent for the lease; the caller enqueues them (one run_action each)."""
    now = utcnow()
    lease = timedelta(seconds=rt.settings.stale_after_seconds)
    not_sent = sa.or_(Delivery.claimed_until.is_(None), Delivery.claimed_until < now)
    waiting = sa.and_(Delivery.status.in_(("pending", "retrying")), not_sent,
                      sa.or_(Delivery.next_attempt_at <= now,
                             sa.and_(Delivery.next_attempt_at.is_(None), Delivery.created_at < now - lease)))
    # A running attempt past its claim died with its worker (the claim outlasts the hard time limit).
    abandoned = sa.and_(Delivery.status == "running", Delivery.claimed_until < now)
    with rt.sessions.begin() as session:
        ids = list(session.scalars(sa.select(Delivery.id).where(sa.or_(waiting, abandoned))
                                   .order_by(Delivery.next_attempt_at, Delivery.id).limit(limit)))
        if ids:
            # Abandoned attempts become retrying, due now: their outcome is unknown, so they count as attempts
            # and the next one checks for an earlier effect (the claim already outlasted the in-doubt wait).
            session.execute(sa.update(Delivery).where(Delivery.id.in_(ids), abandoned).values(
                status="retrying", next_attempt_at=now, last_error="the worker running it was lost",
                updated_at=now))
            # (Not a row an attempt re-scheduled meanwhile: its new due time must not wait for this lease.)
            session.execute(sa.update(Delivery).where(
                Delivery.id.in_(ids), Delivery.status.in_(("pending", "retrying")),
                sa.or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now)).values(
                claimed_until=now + lease))
    return ids


def _finalize_key(rt: Runtime) -> str:
    return f"{rt.settings.namespace}:finalize-due"


def schedule_finalize(rt: Runtime, account_id: str, call_key: str) -> None:
    """Finalise the call ``call_settle_seconds`` from now (kept if already scheduled: the A-leg ended once)."""
    due = time.time() + rt.settings.call_settle_seconds
    rt.redis.zadd(_finalize_key(rt), {json.dumps([account_id, call_key]): due}, nx=True)


def due_finalizations(rt: Runtime, *, limit: int = BATCH) -> list[tuple[str, str]]:
    """Calls due for finalising, leased like deliveries; ``finalized`` removes one once its task has run."""
    now = time.time()
    key = _finalize_key(rt)
    members = rt.redis.zrangebyscore(key, "-inf", now, start=0, num=limit)
    if members:
        rt.redis.zadd(key, {member: now + rt.settings.stale_after_seconds for member in members}, xx=True)
    return [tuple(json.loads(member)) for member in members]


def finalized(rt: Runtime, account_id: str, call_key: str) -> None:
    """Forget a call whose finalising task has committed and enqueued what it planned."""
    rt.redis.zrem(_finalize_key(rt), json.dumps([account_id, call_key]))
