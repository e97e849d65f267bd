"""Replaying from the console: one delivery, one event against today's rules, or every delivery matching a filter.

The caller has run ``access.require(principal, account_id, "replay")``; every change is audited with ``actor``
(``Principal.actor``) in the transaction that makes it. Deliveries put back to pending are enqueued by task
name through ``service.queue``; if the broker is away, the scheduler still hands them out once their lease runs
out (they are pending and unclaimed), so nothing is lost.

Signatures (as implemented):

- ``replay_delivery(rt, account_id, delivery_id, *, actor, tasks=None) -> Delivery`` (ConsoleError when it is
  not dead, failed, paused or discarded; NotFound when it is not the account's)
- ``replan_event(rt, account_id, event_key, *, actor, tasks=None) -> Replan``
- ``start_bulk_replay(rt, account_id, flt, *, actor, tasks=None) -> ReplayJob``
- ``get_replay_job(session, account_id, job_id) -> ReplayJob``

``tasks`` is a ``service.queue.TaskQueue`` (default: one per process for the runtime's broker).

Re-planning (n8n #25735, "retry from the start with current rules"): the stored event is matched against the
account's rules as they are now. An action those rules plan that has no delivery yet is created. One whose
delivery gave up (dead, failed, paused, discarded) is reset to the current rule's action and templates and put
back to pending. One that succeeded, or is still pending, running or retrying, is left alone: a replan never
doubles an effect. Deliveries of rules that no longer match stay in the log as they were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import queue
from service import rules as rules_mod
from service.console import history
from service.console.audit import audit
from service.console.errors import ConsoleError, NotFound
from service.engine import operations
from service.engine.planning import plan_deliveries, ruleset_of
from service.events import Event, aware
from service.runtime import Runtime
from service.store import queries
from service.store.models import Account, Delivery, ReplayJob, utcnow

log = logging.getLogger(__name__)

# The statuses a bulk replay may select; without one, it takes the deliveries that gave up on their own.
DEFAULT_BULK_STATUSES = ("failed", "dead")


_TASK_QUEUES: dict[tuple[str, str], queue.TaskQueue] = {}


def _tasks(rt: Runtime, tasks: queue.TaskQueue | None) -> queue.TaskQueue:
    """The given task queue, or this process's one for the runtime's broker (one connection, not one per call)."""
    if tasks is not None:
        return tasks
    key = (rt.settings.effective_broker_url, rt.settings.namespace)
    if key not in _TASK_QUEUES:
        _TASK_QUEUES[key] = queue.TaskQueue(rt.settings)
    return _TASK_QUEUES[key]


def _enqueue(rt: Runtime, tasks: queue.TaskQueue | None, delivery_ids: list[int]) -> None:
    """Send the deliveries' tasks; a broker that is away only delays them (the scheduler hands them out)."""
    if not delivery_ids:
        return
    try:
        _tasks(rt, tasks).send_actions(delivery_ids)
    except Exception as exc:  # kombu/redis/amqp errors alike: the rows are pending, the scheduler has them
        log.warning("replayed deliveries %s left to the scheduler: %s", delivery_ids, type(exc).__name__)


def replay_delivery(rt: Runtime, account_id: str, delivery_id: int | str, *, actor: str,
                    tasks: queue.TaskQueue | None = None) -> Delivery:
    """Put one dead, failed, paused or discarded delivery of the account back to pending and enqueue it."""
    with rt.sessions.begin() as session:
        delivery = history.get_delivery(session, account_id, delivery_id)
        if delivery.status not in operations.REPLAYABLE_STATUSES:
            raise ConsoleError(f"delivery: only {', '.join(operations.REPLAYABLE_STATUSES)} deliveries can be "
                               f"replayed (this one is {delivery.status})")
        was = delivery.status
        operations.replay_in(session, [delivery.id])
        audit(session, account_id, "delivery_replayed",
              f"delivery {delivery.id} ({delivery.rule_name} -> {delivery.connection}, was {was})", actor)
        session.flush()
        session.refresh(delivery)
    _enqueue(rt, tasks, [delivery.id])
    return delivery


@dataclass(frozen=True)
class Replan:
    """What re-planning an event did: deliveries created, reset and replayed, and left alone (by id)."""

    event_key: str
    created: list[int] = field(default_factory=list)
    replayed: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)


def replan_event(rt: Runtime, account_id: str, event_key: str, *, actor: str,
                 tasks: queue.TaskQueue | None = None) -> Replan:
    """Match a stored event against the account's current rules: create what was never planned, redo (with the
    current action) what gave up, leave succeeded and in-flight deliveries alone; enqueue the new work."""
    with rt.sessions.begin() as session:
        stored = history.get_event(session, account_id, event_key)
        account = session.get(Account, account_id)
        ruleset = ruleset_of(session, rt, account_id)
        if account is None or ruleset is None:
            raise ConsoleError("rules: the account has no rules to plan with")
        event = Event(type=stored.type, account_id=account_id, key=stored.key, occurred_at=aware(stored.occurred_at),
                      data=stored.data if isinstance(stored.data, dict) else {})
        existing = {(d.rule_name, d.action_index): d for d in session.scalars(
            sa.select(Delivery).where(Delivery.account_id == account_id, Delivery.event_key == stored.key[:300])
            .with_for_update())}
        replayed, unchanged = [], []
        for planned in rules_mod.plan(ruleset, event):
            delivery = existing.get((planned.rule_name, planned.index))
            if delivery is None:
                continue  # created below by the planner itself
            if delivery.status in operations.REPLAYABLE_STATUSES:
                delivery.connection, delivery.integration = planned.connection, planned.integration
                delivery.action, delivery.params, delivery.rendered = planned.action, planned.params_template, False
                delivery.last_error, delivery.updated_at = None, utcnow()
                session.flush()
                replayed.extend(operations.replay_in(session, [delivery.id]))
            else:
                unchanged.append(delivery.id)
        created = plan_deliveries(session, rt, ruleset, account, event)
        audit(session, account_id, "event_replanned",
              f"{stored.key[:200]}: {len(created)} created, {len(replayed)} replayed, {len(unchanged)} left as they "
              "were", actor)
    _enqueue(rt, tasks, created + replayed)
    return Replan(event_key=stored.key, created=created, replayed=replayed, unchanged=unchanged)


def start_bulk_replay(rt: Runtime, account_id: str, flt: history.DeliveryFilter, *, actor: str,
                      tasks: queue.TaskQueue | None = None) -> ReplayJob:
    """Record a job replaying every delivery matching ``flt`` (default statuses: failed and dead) as it is now,
    and send its task; one job per account runs at a time."""
    statuses = flt.status or DEFAULT_BULK_STATUSES
    refused = [s for s in statuses if s not in operations.REPLAYABLE_STATUSES]
    if refused:
        raise ConsoleError(f"status: only {', '.join(operations.REPLAYABLE_STATUSES)} deliveries can be replayed, "
                           f"not {', '.join(refused)}")
    with rt.sessions.begin() as session:
        if session.get(Account, account_id) is None:
            raise NotFound("no such account")
        running = session.scalars(sa.select(ReplayJob.id).where(
            ReplayJob.account_id == account_id, ReplayJob.status.in_(("queued", "running")))).first()
        if running is not None:
            raise ConsoleError(f"replay: job {running} of this account is still running; wait for it to finish")
        doc = {**flt.to_doc(), "status": list(statuses)}
        where = queries.delivery_conditions(
            account_id, status=statuses, connection=flt.connection, rule_name=flt.rule_name,
            event_type=flt.event_type, event_key=flt.event_key, since=flt.since, until=flt.until)
        # Only what exists now: a delivery failing while the job runs is not swept up by it.
        doc["up_to_id"] = session.scalar(sa.select(sa.func.max(Delivery.id))) or 0
        total = session.scalar(sa.select(sa.func.count()).select_from(Delivery).where(
            *where, Delivery.id <= doc["up_to_id"]))
        job = ReplayJob(account_id=account_id, filter=doc, status="queued", total=total, actor=actor)
        session.add(job)
        session.flush()
        audit(session, account_id, "bulk_replay_started", f"replay job {job.id}: {total} deliveries matching "
              f"{ {k: v for k, v in doc.items() if v and k != 'up_to_id'} }", actor)
    try:
        _tasks(rt, tasks).send(queue.REPLAY_JOB, [job.id], argsrepr=f"({job.id},)")
    except Exception as exc:  # without its task the job would wait for ever: say so now
        operations.fail_replay_job(rt, job.id, f"the task queue is unreachable ({type(exc).__name__}); "
                                               "nothing was replayed, start it again")
        with rt.sessions() as session:
            return session.get(ReplayJob, job.id)
    return job


def get_replay_job(session: Session, account_id: str, job_id: int | str) -> ReplayJob:
    """A replay job of the account, with its progress; NotFound for another account's or an unknown id."""
    key = history.parse_row_id(job_id)
    job = session.get(ReplayJob, key) if key is not None else None
    if job is None or job.account_id != account_id:
        raise NotFound("no such replay job")
    return job
