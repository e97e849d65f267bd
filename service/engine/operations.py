"""Operations: onboarding, reconciliation, re-enabling hooks, resuming and replaying."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import accounts
from service.engine.ingest import emit_events
from service.engine.planning import ruleset_of
from service.events import aware
from service.pbx import media, onboarding, reconcile
from service.runtime import Runtime
from service.store import queries
from service.store.models import (
    Account,
    AuditEntry,
    Connection,
    Delivery,
    QuarantinedDelivery,
    ReplayJob,
    StoredEvent,
    utcnow,
)


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


def connect_account(rt: Runtime, account_id: str, *, actor: str = "service") -> "onboarding.ConnectReport":
    """Register (idempotently) the VirtualPBX webhooks the account's rules need; audit the result as ``actor``."""
    client = media.pbx_client(rt, account_id)
    if client is None:
        raise accounts.AccountError(f"account {account_id} has no virtualpbx connection in its rules file "
                                    "(add one with integration: virtualpbx and an api_key)")
    with rt.sessions() as session:
        account = accounts.get_account(session, account_id)
        ruleset = ruleset_of(session, rt, account_id)
        token = accounts.hook_token(account, rt.box)
    if ruleset is None:
        raise accounts.AccountError(f"account {account_id} has no rules yet (apply a file first)")
    report = onboarding.connect_account(client, hook_url=accounts.hook_url(rt.settings.public_url, token),
                                        hooks=onboarding.required_hooks(ruleset))
    with rt.sessions.begin() as session:
        session.add(AuditEntry(account_id=account_id, kind="connected", detail=(
            f"created {len(report.created)}, updated {len(report.updated)}, unchanged {len(report.unchanged)}, "
            f"deleted {len(report.deleted)}, re-enabled {len(report.reenabled)}; format {report.body_format}"),
            actor=actor))
    return report


def resume_connection(rt: Runtime, account_id: str, name: str, *, actor: str = "service") -> list[int]:
    """Close a connection's circuit and return its paused deliveries, now pending again, for enqueueing."""
    with rt.sessions.begin() as session:
        session.execute(sa.update(Connection).where(Connection.account_id == account_id,
                                                    Connection.name == name).values(paused_reason=None))
        ids = list(session.scalars(sa.select(Delivery.id).where(
            Delivery.account_id == account_id, Delivery.connection == name, Delivery.status == "paused")))
        if ids:
            session.execute(sa.update(Delivery).where(Delivery.id.in_(ids)).values(
                status="pending", claimed_until=None, next_attempt_at=None, updated_at=utcnow()))
        session.add(AuditEntry(account_id=account_id, kind="connection_resumed",
                               detail=f"{name}: {len(ids)} paused action(s) replayed", actor=actor))
    rt.redis.delete(f"{rt.settings.namespace}:authfail:{account_id}:{name}")
    return ids


# Deliveries that gave up or were set aside, and may be put back to pending.
REPLAYABLE_STATUSES = ("dead", "failed", "paused", "discarded")


def replay(rt: Runtime, *, delivery_ids: list[int]) -> list[int]:
    """Put dead, failed or paused deliveries back to pending (their retry horizon restarts now)."""
    with rt.sessions.begin() as session:
        return replay_in(session, delivery_ids)


def replay_in(session: Session, delivery_ids: list[int]) -> list[int]:
    """:func:`replay` in the caller's transaction (so its audit entry or job progress commits with it)."""
    ids = list(session.scalars(sa.select(Delivery.id).where(
        Delivery.id.in_(delivery_ids), Delivery.status.in_(REPLAYABLE_STATUSES)).with_for_update()))
    if ids:
        session.execute(sa.update(Delivery).where(Delivery.id.in_(ids), Delivery.status.in_(REPLAYABLE_STATUSES))
                        .values(status="pending", claimed_until=None, next_attempt_at=None, created_at=utcnow(),
                                updated_at=utcnow()))
    return ids


@dataclass
class ReplayBatch:
    """One batch of a bulk replay: the deliveries put back to pending and due now (to enqueue; the rest are due
    later and the scheduler sends them then), and whether the job ended."""

    delivery_ids: list[int]
    finished: bool


REPLAY_BATCH_ROWS = 500
# A bulk replay's deliveries are due at this many a second from the job's start, so one account replaying
# thousands never puts them all in front of every other account's new actions in the shared queue.
REPLAY_PER_SECOND = 20


def _pace_replayed(session: Session, job: ReplayJob, ids: list[int], now: datetime) -> list[int]:
    """Make the job's n-th replayed delivery due n // REPLAY_PER_SECOND seconds after the job's first batch (the
    previous batch's last due time tells when that was); return those due now, to enqueue (the scheduler sends
    the others when due)."""
    previous = (session.scalar(sa.select(Delivery.next_attempt_at).where(Delivery.id == job.last_delivery_id))
                if job.done and job.last_delivery_id is not None else None)
    if previous is not None and aware(previous) >= aware(job.created_at):
        first = aware(previous) - timedelta(seconds=(job.done - 1) // REPLAY_PER_SECOND)
    else:  # the first batch, or the previous one's last row was not replayed by this job: go on from now
        first = now - timedelta(seconds=job.done // REPLAY_PER_SECOND)
    due_now, by_due = [], {}
    for n, delivery_id in enumerate(ids, start=job.done):
        due = max(now, first + timedelta(seconds=n // REPLAY_PER_SECOND)) if n >= REPLAY_PER_SECOND else now
        by_due.setdefault(due, []).append(delivery_id)
        if due <= now:
            due_now.append(delivery_id)
    for due, chunk in by_due.items():  # (due now too: the next batch counts on from it)
        session.execute(sa.update(Delivery).where(Delivery.id.in_(chunk), Delivery.status == "pending")
                        .values(next_attempt_at=due))
    return due_now


def replay_job_batch(rt: Runtime, job_id: int, *, batch_rows: int = REPLAY_BATCH_ROWS) -> ReplayBatch:
    """Replay the next batch of a bulk replay job's matching deliveries, oldest first, and record its progress.

    The batch and the job's counts commit together, and the job remembers the last delivery it looked at, so a
    task run again (its worker died) continues where the last commit left off. Only deliveries that existed
    when the job started (``filter["up_to_id"]``) are looked at. ``done`` counts deliveries put back to pending;
    ``failed`` those that matched when the job started but could no longer be replayed when it reached them
    (another replay, a resume or a discard got there first).
    """
    with rt.sessions.begin() as session:
        job = session.get(ReplayJob, job_id, with_for_update=True)
        if job is None or job.status in ("finished", "failed"):
            return ReplayBatch([], True)
        doc = dict(job.filter or {})
        where = queries.delivery_conditions(
            job.account_id, status=doc.get("status") or (), connection=doc.get("connection"),
            rule_name=doc.get("rule_name"), event_type=doc.get("event_type"), event_key=doc.get("event_key"),
            since=_instant(doc.get("since")), until=_instant(doc.get("until")))
        where.append(Delivery.id <= int(doc.get("up_to_id") or 0))
        if job.last_delivery_id is not None:
            where.append(Delivery.id > job.last_delivery_id)
        batch = list(session.scalars(sa.select(Delivery.id).where(*where).order_by(Delivery.id).limit(batch_rows)))
        replayed = replay_in(session, batch) if batch else []
        due_now = _pace_replayed(session, job, replayed, utcnow())
        job.status = "running" if batch else "finished"
        job.done += len(replayed)
        job.failed += len(batch) - len(replayed)
        if batch:
            job.last_delivery_id = batch[-1]
        else:
            # What matched at the start but no longer did when reached (replayed, resumed or discarded meanwhile).
            job.failed = max(job.failed, (job.total or 0) - job.done)
            job.finished_at = utcnow()
            session.add(AuditEntry(account_id=job.account_id, kind="bulk_replay_finished", actor=job.actor,
                                   detail=f"replay job {job.id}: {job.done} replayed, {job.failed} not replayable"))
        return ReplayBatch(due_now, not batch)


def fail_replay_job(rt: Runtime, job_id: int, reason: str) -> None:
    """Mark a bulk replay job failed with ``reason`` (what it replayed so far stays replayed)."""
    with rt.sessions.begin() as session:
        job = session.get(ReplayJob, job_id)
        if job is not None and job.status not in ("finished", "failed"):
            job.status, job.error, job.finished_at = "failed", reason[:2000], utcnow()


def _instant(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None

def reingest_quarantined(rt: Runtime, account_id: str, quarantine_id: int, *,
                         publish: Callable[[QuarantinedDelivery], str], actor: str) -> str:
    """Send a quarantined hook through ingest again, then drop the kept copy; returns ``publish``'s request id.

    ``publish`` queues the row as a receiver envelope (the caller owns the queue). It runs before the
    row is deleted: a failure in between leaves the copy for another try, and ingesting the same hook
    twice is harmless (event keys are unique). LookupError for another account's or a missing row.
    """
    with rt.sessions() as session:
        row = session.get(QuarantinedDelivery, quarantine_id)
        if row is None or row.account_id != account_id:
            raise LookupError(f"no quarantined hook {quarantine_id}")
        session.expunge(row)
    request_id = publish(row)
    with rt.sessions.begin() as session:
        session.execute(sa.delete(QuarantinedDelivery).where(QuarantinedDelivery.id == quarantine_id))
        session.add(AuditEntry(account_id=account_id, kind="quarantine_reingested",
                               detail=f"quarantined hook {quarantine_id} sent to ingest again (request {request_id})",
                               actor=actor))
    return request_id
