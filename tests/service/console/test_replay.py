"""Replaying from the console on SQLite and PostgreSQL, with tasks really sent to the Redis broker: one delivery,
an event re-planned with today's rules (nothing succeeded is doubled), and a bulk replay job run batch by batch."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from service import accounts, engine
from service.console import history, replay
from service.console.errors import ConsoleError, NotFound
from service.engine import planning
from service.events import aware
from service.queue import REPLAY_JOB, TaskQueue, queue_names
from service.store.models import AuditEntry, Delivery, ReplayJob, StoredEvent
from tests.service.console.test_history import ACCOUNT, OTHER, T0, add_deliveries, ingest_calls
from tests.service.console.test_history import rt as history_rt

rt = history_rt  # a Runtime with ACCOUNT (rules posting call events to Slack) and OTHER
ACTOR = "user:7"


def sent(rt, kind: str) -> list[tuple[str, list]]:
    """(task name, args) of every message waiting in the Redis broker's queue of ``kind``."""
    name = queue_names(rt.settings)[kind]
    messages = [json.loads(raw) for raw in rt.redis.lrange(name, 0, -1)]
    return [(m["headers"]["task"], json.loads(m["body"] if isinstance(m["body"], str) else "null")[0]
             if m.get("properties", {}).get("body_encoding") != "base64" else _b64_args(m["body"]))
            for m in reversed(messages)]


def _b64_args(body: str) -> list:
    import base64

    return json.loads(base64.b64decode(body))[0]


def audited(rt, kind: str) -> list[tuple[str, str]]:
    """(actor, detail) of the audit entries of one kind."""
    with rt.sessions() as session:
        return [(e.actor, e.detail) for e in session.scalars(sa.select(AuditEntry).where(AuditEntry.kind == kind))]


def status(rt, delivery_id: int) -> str:
    with rt.sessions() as session:
        return session.get(Delivery, delivery_id).status


def test_replaying_one_delivery_puts_it_back_enqueues_and_audits(rt):
    """A failed delivery becomes pending and its task is sent; a succeeded one, or another account's, is refused."""
    failed, done = add_deliveries(rt, ACCOUNT, [("failed", "chat"), ("succeeded", "chat")])
    theirs = add_deliveries(rt, OTHER, [("dead", "chat")])[0]
    tasks = TaskQueue(rt.settings)
    row = replay.replay_delivery(rt, ACCOUNT, failed, actor=ACTOR, tasks=tasks)
    assert row.status == "pending" and status(rt, failed) == "pending"
    assert sent(rt, "actions") == [("pbxrelay.run_action", [failed])]
    assert audited(rt, "delivery_replayed") == [(ACTOR, f"delivery {failed} (rule 0 -> chat, was failed)")]
    with pytest.raises(ConsoleError, match="^delivery: .*succeeded"):
        replay.replay_delivery(rt, ACCOUNT, done, actor=ACTOR, tasks=tasks)
    for bad in (theirs, 2**40, "x"):
        with pytest.raises(NotFound):
            replay.replay_delivery(rt, ACCOUNT, bad, actor=ACTOR, tasks=tasks)
    assert status(rt, theirs) == "dead" and len(sent(rt, "actions")) == 1


def test_an_unreachable_broker_leaves_the_replay_to_the_scheduler(rt, monkeypatch):
    """With the broker away the delivery is still pending (the scheduler hands it out), and the change audited."""
    (failed,) = add_deliveries(rt, ACCOUNT, [("dead", "chat")])
    monkeypatch.setattr(rt.settings, "broker_url", "redis://127.0.0.1:1/0")
    replay.replay_delivery(rt, ACCOUNT, failed, actor=ACTOR)
    assert status(rt, failed) == "pending" and audited(rt, "delivery_replayed")


def test_replanning_an_event_uses_the_current_rules_and_never_doubles_a_success(rt, tmp_path):
    """After a rule is added and an action failed: the new rule's action is created, the failed one is redone with
    the rule's current template, the succeeded one is left alone; all enqueued once, audited."""
    (call,) = ingest_calls(rt, ["inbound_missed"])
    key = f"call.missed:{call.a_leg.call_id}"
    with rt.sessions.begin() as session:
        rows = {d.rule_name: d for d in session.scalars(sa.select(Delivery).where(Delivery.event_key == key))}
        rows["call log"].status = "succeeded"
        rows["missed alert"].status, rows["missed alert"].last_error = "failed", "channel_not_found"
        ids = {name: d.id for name, d in rows.items()}
    rules = f"""
account: {{id: {ACCOUNT}, name: Demo, timezone: America/New_York}}
connections:
  chat: {{integration: slack, bot_token: xoxb-history-tests}}
rules:
  - name: call log
    on: [call.ended, call.missed]
    do: [{{use: chat, action: post_message, with: {{channel: C1, text: "changed"}}}}]
  - name: missed alert
    on: call.missed
    do: [{{use: chat, action: post_message, with: {{channel: C9, text: "missed again"}}}}]
  - name: new rule
    on: call.missed
    do: [{{use: chat, action: post_message, with: {{channel: C3, text: "new"}}}}]
"""
    with rt.sessions.begin() as session:
        accounts.apply_rules(session, rules, account_id=ACCOUNT, filename="rules.yaml", base_dir=tmp_path,
                             registry=rt.registry, box=rt.box, supplied_by="tenant", actor=ACTOR)
    planning._RULES_CACHE.clear()
    tasks = TaskQueue(rt.settings)
    result = replay.replan_event(rt, ACCOUNT, key, actor=ACTOR, tasks=tasks)
    assert result.replayed == [ids["missed alert"]] and result.unchanged == [ids["call log"]]
    assert len(result.created) == 1
    with rt.sessions() as session:
        new = session.get(Delivery, result.created[0])
        redone = session.get(Delivery, ids["missed alert"])
        kept = session.get(Delivery, ids["call log"])
        assert (new.rule_name, new.status, new.params["channel"]) == ("new rule", "pending", "C3")
        assert (redone.status, redone.params["channel"], redone.last_error) == ("pending", "C9", None)
        assert (kept.status, kept.params["text"]) == ("succeeded", "{{ event.type }}")
    assert sorted(args[0] for _task, args in sent(rt, "actions")) == sorted(result.created + result.replayed)
    assert audited(rt, "event_replanned") == [(ACTOR, f"{key}: 1 created, 1 replayed, 1 left as they were")]
    again = replay.replan_event(rt, ACCOUNT, key, actor=ACTOR, tasks=tasks)
    assert (again.created, again.replayed) == ([], []), "pending work is not planned or replayed twice"
    with pytest.raises(NotFound):
        replay.replan_event(rt, OTHER, key, actor=ACTOR, tasks=tasks)


def run_job(rt, job_id: int, *, batch_rows: int) -> list[int]:
    """What the replay_job task does: batches until the job is finished; the ids it would enqueue."""
    replayed = []
    while True:
        batch = engine.replay_job_batch(rt, job_id, batch_rows=batch_rows)
        replayed += batch.delivery_ids
        if batch.finished:
            return replayed


def test_a_bulk_replay_job_replays_what_matched_when_it_started_in_batches(rt):
    """The job is stored with its filter and total, its task is sent by name; batches replay the account's failed
    deliveries of one connection only, count what could not be replayed, and finish with an audit entry."""
    mine = add_deliveries(rt, ACCOUNT, [("failed", "chat"), ("dead", "chat"), ("failed", "sheet"), ("failed", "chat"),
                                        ("succeeded", "chat"), ("failed", "chat")])
    add_deliveries(rt, OTHER, [("failed", "chat")] * 2)
    tasks = TaskQueue(rt.settings)
    job = replay.start_bulk_replay(rt, ACCOUNT, history.DeliveryFilter(connection="chat", status="failed"),
                                   actor=ACTOR, tasks=tasks)
    assert (job.status, job.total, job.done, job.actor) == ("queued", 3, 0, ACTOR)
    assert sent(rt, "ingest") == [(REPLAY_JOB, [job.id])]
    with pytest.raises(ConsoleError, match="^replay: "):
        replay.start_bulk_replay(rt, ACCOUNT, history.DeliveryFilter(), actor=ACTOR, tasks=tasks)
    later = add_deliveries(rt, ACCOUNT, [("failed", "chat")])[0]  # after the job started: not swept up
    engine.replay(rt, delivery_ids=[mine[3]])  # replayed by someone else meanwhile: not replayable any more
    replayed = run_job(rt, job.id, batch_rows=1)
    assert sorted(replayed) == [mine[0], mine[5]]
    with rt.sessions() as session:
        done = replay.get_replay_job(session, ACCOUNT, job.id)
        assert (done.status, done.done, done.failed) == ("finished", 2, 1) and done.finished_at is not None
        assert [session.get(Delivery, i).status for i in (mine[2], mine[4], later)] == ["failed", "succeeded",
                                                                                        "failed"]
        for bad in (job.id + 1000, "abc", None):
            with pytest.raises(NotFound):
                replay.get_replay_job(session, ACCOUNT, bad)
        with pytest.raises(NotFound):
            replay.get_replay_job(session, OTHER, job.id)
    assert run_job(rt, job.id, batch_rows=1) == [], "a finished job run again does nothing"
    assert audited(rt, "bulk_replay_started")[0][0] == ACTOR
    assert audited(rt, "bulk_replay_finished") == [(ACTOR, f"replay job {job.id}: 2 replayed, 1 not replayable")]


def test_a_large_bulk_replay_is_due_at_a_paced_rate_so_other_accounts_are_not_queued_behind_it(rt):
    """45 failed deliveries: the first REPLAY_PER_SECOND are enqueued now, the rest are due a second apart per
    REPLAY_PER_SECOND (the scheduler sends them then), continuing across batches; another account's new action
    is due now, ahead of them."""
    from datetime import timedelta

    from service.engine.operations import REPLAY_PER_SECOND
    from service.store.models import utcnow

    assert REPLAY_PER_SECOND == 20  # (the figures below)
    ids = add_deliveries(rt, ACCOUNT, [("failed", "chat")] * 45)
    job = replay.start_bulk_replay(rt, ACCOUNT, history.DeliveryFilter(status="failed"), actor=ACTOR,
                                   tasks=TaskQueue(rt.settings))
    started = utcnow()
    enqueued = run_job(rt, job.id, batch_rows=20)  # three batches: 20, 20, 5 (whole seconds, as in production)
    assert enqueued == ids[:20]
    with rt.sessions() as session:
        rows = {i: session.get(Delivery, i) for i in ids}
    assert all(rows[i].status == "pending" and aware(rows[i].next_attempt_at) <= utcnow() for i in ids[:20])
    offsets = [(aware(rows[i].next_attempt_at) - started).total_seconds() for i in ids[20:]]
    assert all(0.5 < o <= 1.5 for o in offsets[:20]) and all(1.5 < o <= 2.5 for o in offsets[20:]), offsets
    other = add_deliveries(rt, OTHER, [("pending", "chat")])[0]
    with rt.sessions.begin() as session:  # a fresh action of another account, just planned
        session.get(Delivery, other).next_attempt_at = utcnow() - timedelta(seconds=1)
    due = engine.due_deliveries(rt)
    assert other in due and not set(ids[20:]) & set(due)


def test_a_bulk_replay_refuses_statuses_that_cannot_be_replayed(rt):
    """Succeeded or in-flight deliveries are never bulk-replayed; the error names ``status``."""
    for status_ in ("succeeded", ("failed", "pending"), "running"):
        with pytest.raises(ConsoleError, match="^status: "):
            replay.start_bulk_replay(rt, ACCOUNT, history.DeliveryFilter(status=status_), actor=ACTOR)
    with rt.sessions() as session:
        assert session.scalars(sa.select(ReplayJob)).all() == []


def test_a_bulk_replay_without_a_broker_fails_at_once_and_says_so(rt, monkeypatch):
    """The job is not left queued for ever: it is failed with the reason, and another can be started."""
    add_deliveries(rt, ACCOUNT, [("dead", "chat")])
    monkeypatch.setattr(rt.settings, "broker_url", "redis://127.0.0.1:1/0")
    job = replay.start_bulk_replay(rt, ACCOUNT, history.DeliveryFilter(), actor=ACTOR)
    assert job.status == "failed" and "unreachable" in job.error


def test_the_replay_job_task_runs_the_job_and_enqueues_its_deliveries(rt, monkeypatch):
    """workers.tasks.replay_job (run in process) loops over the batches and hands every replayed id to
    enqueue_actions; a bug marks the job failed instead of leaving it running."""
    from workers import tasks

    ids = add_deliveries(rt, ACCOUNT, [("dead", "chat")] * 3)
    monkeypatch.setattr(tasks, "_runtime", rt)
    enqueued: list[int] = []
    monkeypatch.setattr(tasks, "enqueue_actions", enqueued.extend)
    monkeypatch.setattr(engine.operations, "REPLAY_BATCH_ROWS", 2)
    job = replay.start_bulk_replay(rt, ACCOUNT, history.DeliveryFilter(), actor=ACTOR, tasks=TaskQueue(rt.settings))
    assert tasks.replay_job.apply(args=[job.id]).get() == 3 and sorted(enqueued) == ids
    add_deliveries(rt, ACCOUNT, [("dead", "chat")])
    job = replay.start_bulk_replay(rt, ACCOUNT, history.DeliveryFilter(), actor=ACTOR, tasks=TaskQueue(rt.settings))

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(engine, "replay_job_batch", broken)
    with pytest.raises(RuntimeError):
        tasks.replay_job.apply(args=[job.id]).get()
    with rt.sessions() as session:
        assert session.get(ReplayJob, job.id).status == "failed"
        assert "a bug" in session.get(ReplayJob, job.id).error


def test_stored_event_lookup_for_replan_is_account_scoped(rt):
    """replan_event of an event key another account has is NotFound, and nothing is planned for it."""
    with rt.sessions.begin() as session:
        session.add(StoredEvent(account_id=OTHER, key="call.missed:x", type="call.missed", occurred_at=T0, data={}))
    with pytest.raises(NotFound):
        replay.replan_event(rt, ACCOUNT, "call.missed:x", actor=ACTOR, tasks=TaskQueue(rt.settings))
