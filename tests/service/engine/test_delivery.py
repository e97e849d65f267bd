"""The pipeline's delivery bookkeeping, without Celery: claims, retries, dead letters, the circuit, replay."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from integrations.base import AuthError, PermanentError, RetryableError
from service.sandbox.standins.slack import SlackStandin, create_app as slack_app
from service.sandbox.standins.base import serve_in_thread
from service import accounts
from service.config import Settings
from service.runtime import Runtime
from service.events import Event
from service.store.models import AuditEntry, Connection, Delivery, QuarantinedDelivery, StoredEvent, migrate, utcnow
from service.web import make_envelope
from tests.conftest import FIXTURES
from service import engine
from service.engine import planning

ACCOUNT = "91eb05e5c68d7ca05e7618b6821d2d16"
TOKEN = "xoxb-pipeline-test-token"


@pytest.fixture(scope="module")
def slack():
    """A Slack stand-in with one bot token and two channels."""
    state = SlackStandin(rate_limit_max=None)
    state.add_token(TOKEN)
    state.add_channel("C1", "calls")
    state.add_channel("C2", "alerts")
    server = serve_in_thread(slack_app(state))
    state.api_url = f"{server.url}/api/"
    yield state
    server.stop()


@pytest.fixture
def rt(tmp_path, redis_url, namespace, redis_client, slack, monkeypatch, database_url):
    """A Runtime on a migrated database (SQLite and PostgreSQL) with one account whose rules post to Slack."""
    settings = Settings(var_dir=tmp_path / "var", redis_url=redis_url, namespace=namespace, database_url=database_url,
                        secret_keys=Fernet.generate_key().decode(), slack_api_url=slack.api_url,
                        retry_horizon_seconds=3600, allow_private_urls=True)
    migrate(database_url)
    runtime = Runtime(settings)
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""
account: {{id: {ACCOUNT}, name: Pipeline, timezone: UTC, alert_connection: ops}}
connections:
  chat: {{integration: slack, bot_token: {TOKEN}}}
  ops: {{integration: slack, bot_token: {TOKEN}, default_channel: C2}}
rules:
  - name: parked
    on: virtualpbx.parking
    do:
      - {{use: chat, action: post_message, with: {{channel: C1, text: "parked {{{{ call_id }}}}"}}}}
""")
    with runtime.sessions.begin() as session:
        accounts.add_account(session, ACCOUNT, name="Pipeline", box=runtime.box)
        accounts.apply_rules_file(session, rules, registry=runtime.registry, box=runtime.box)
    planning._RULES_CACHE.clear()
    slack.reset()
    runtime.enqueued = []  # what failures asked to enqueue (the circuit's alert): see execute()
    yield runtime
    runtime.sessions.kw["bind"].dispose()


def ingest_parking(rt, call_id: str) -> list[int]:
    """Ingest one parking hook and return the delivery ids it planned."""
    payload = json.loads((FIXTURES / "kazoo/webhook_parking_park_parked.json").read_text())
    payload["call_id"] = call_id
    envelope = make_envelope(source="virtualpbx", account_id=ACCOUNT, method="POST",
                             content_type="application/json", query_string="", body=json.dumps(payload).encode(),
                             headers={})
    outcome = engine.ingest(rt, envelope)
    assert outcome.status == "accepted"
    return outcome.deliveries


class KilledMidTask(BaseException):
    """Stands in for SIGKILL: the ingest stops where it is and its transaction never commits."""


def test_an_ingest_killed_after_storing_its_hook_keeps_nothing_and_its_rerun_derives_the_call(rt, monkeypatch):
    """A kill between storing the hook and deriving call.started must not leave the hook stored (the re-run
    would call it a duplicate and call.started would never happen: the loss seen in the kill -9 fault scenario)."""
    payload = json.loads((FIXTURES / "kazoo/webhook_channel_create.json").read_text())
    envelope = make_envelope(source="virtualpbx", account_id=ACCOUNT, method="POST", content_type="application/json",
                             query_string="", body=json.dumps(payload).encode(), headers={})
    observe = rt.correlator.observe

    def killed(_raw):
        raise KilledMidTask()

    monkeypatch.setattr(rt.correlator, "observe", killed)
    with pytest.raises(KilledMidTask):
        engine.ingest(rt, envelope)
    with rt.sessions() as session:
        assert session.scalars(sa.select(StoredEvent.key)).all() == []
    monkeypatch.setattr(rt.correlator, "observe", observe)
    outcome = engine.ingest(rt, envelope)
    assert outcome.status == "accepted"
    with rt.sessions() as session:
        types = sorted(session.scalars(sa.select(StoredEvent.type)))
    assert types == ["call.started", "virtualpbx.channel_create"]


def test_a_rerun_enqueues_again_what_a_run_killed_after_its_commit_planned(rt):
    """Committed, then killed before enqueueing: the task's re-run returns the unstarted deliveries once more."""
    payload = json.loads((FIXTURES / "kazoo/webhook_parking_park_parked.json").read_text())
    envelope = make_envelope(source="virtualpbx", account_id=ACCOUNT, method="POST", content_type="application/json",
                             query_string="", body=json.dumps(payload).encode(), headers={})
    planned = engine.ingest(rt, envelope).deliveries
    assert len(planned) == 1
    rerun = engine.ingest(rt, envelope, rerun=True)
    assert (rerun.status, rerun.reason, rerun.deliveries) == ("duplicate", "re-run", planned)
    with rt.sessions() as session:
        assert session.scalars(sa.select(QuarantinedDelivery)).all() == [], "a re-run is not a duplicate from Kazoo"
    copy = engine.ingest(rt, envelope)
    assert (copy.status, copy.deliveries) == ("duplicate", [])
    assert execute(rt, planned[0]) == "succeeded"
    assert engine.ingest(rt, envelope, rerun=True).deliveries == [], "a started delivery is not enqueued again"


def test_a_rerun_of_emit_events_returns_the_unstarted_deliveries_of_events_stored_before(rt):
    """finalize_call's re-run after a commit finds its events stored and hands back their unstarted deliveries."""
    event = Event(type="virtualpbx.parking", account_id=ACCOUNT, key="parking:rerun", occurred_at=utcnow(),
                  data={"call_id": "call-rerun"})
    planned = engine.emit_events(rt, ACCOUNT, [event])
    assert len(planned) == 1
    assert engine.emit_events(rt, ACCOUNT, [event]) == []
    assert engine.emit_events(rt, ACCOUNT, [event], rerun=True) == planned


def execute(rt, delivery_id: int) -> str:
    """Run a delivery as Celery would, waiting out rate-limit pacing (which is not an attempt)."""
    for _ in range(20):
        try:
            return engine.execute_delivery(rt, delivery_id)
        except RetryableError as exc:
            if exc.code != "paced":
                raise
            time.sleep(exc.retry_after)
        except PermanentError as exc:
            rt.enqueued.extend(engine.follow_ups(exc))
            raise
    raise AssertionError("still paced after 20 waits")


def delivery(rt, delivery_id: int) -> Delivery:
    """A fresh copy of one delivery row."""
    with rt.sessions() as session:
        return session.get(Delivery, delivery_id)


def test_success_is_recorded_once_and_a_second_run_does_nothing(rt, slack):
    """A delivered action is succeeded with its external id; re-running the task changes nothing."""
    (delivery_id,) = ingest_parking(rt, "call-ok")
    assert execute(rt, delivery_id) == "succeeded"
    assert execute(rt, delivery_id) == "succeeded"
    row = delivery(rt, delivery_id)
    assert (row.status, row.attempts) == ("succeeded", 1) and row.external_id.startswith("C1:")
    assert [m["text"] for m in slack.messages_in("C1")] == ["parked call-ok"]


def test_retryable_then_success(rt, slack):
    """A 500 leaves the delivery retrying with the error; the next attempt succeeds."""
    (delivery_id,) = ingest_parking(rt, "call-retry")
    slack.push_faults([{"status": 500}])
    with pytest.raises(RetryableError):
        execute(rt, delivery_id)
    row = delivery(rt, delivery_id)
    assert row.status == "retrying" and "internal_error" in row.last_error and row.attempts == 1
    assert execute(rt, delivery_id) == "succeeded"
    assert delivery(rt, delivery_id).attempts == 2


def test_permanent_failure_is_final(rt, slack):
    """channel_not_found is failed, with the reason, and never attempted again."""
    (delivery_id,) = ingest_parking(rt, "call-perm")
    slack.push_faults([{"status": 200, "body": {"ok": False, "error": "channel_not_found"}}])
    with pytest.raises(PermanentError):
        execute(rt, delivery_id)
    row = delivery(rt, delivery_id)
    assert row.status == "failed" and "channel_not_found" in row.last_error
    assert execute(rt, delivery_id) == "failed"


def test_a_claimed_delivery_is_not_run_twice(rt):
    """While one attempt holds the claim, another copy of the task is told to come back later."""
    (delivery_id,) = ingest_parking(rt, "call-claim")
    with rt.sessions.begin() as session:
        session.execute(sa.update(Delivery).where(Delivery.id == delivery_id).values(
            status="running", claimed_until=utcnow() + timedelta(seconds=30)))
    with pytest.raises(RetryableError) as info:
        execute(rt, delivery_id)
    assert info.value.code == "claimed" and 1 <= info.value.retry_after <= 31


def test_past_the_horizon_an_action_is_dead_and_can_be_replayed(rt, slack):
    """A retryable failure after the retry horizon marks the action dead; replay brings it back."""
    (delivery_id,) = ingest_parking(rt, "call-dead")
    with rt.sessions.begin() as session:
        session.execute(sa.update(Delivery).where(Delivery.id == delivery_id).values(
            created_at=utcnow() - timedelta(hours=2)))
    slack.push_faults([{"status": 503}])
    with pytest.raises(PermanentError, match="retry horizon"):
        execute(rt, delivery_id)
    assert delivery(rt, delivery_id).status == "dead"
    assert engine.replay(rt, delivery_ids=[delivery_id]) == [delivery_id]
    assert execute(rt, delivery_id) == "succeeded"


def test_repeated_auth_failures_pause_the_connection_alert_and_resume_replays(rt, slack):
    """Three invalid_auth answers pause the connection (kept, alerted, audited); resume replays everything."""
    ids = [ingest_parking(rt, f"call-auth-{i}")[0] for i in range(4)]
    slack.push_faults([{"status": 200, "body": {"ok": False, "error": "invalid_auth"}}] * 3)
    for delivery_id in ids[:3]:
        with pytest.raises(AuthError):
            execute(rt, delivery_id)
    assert execute(rt, ids[3]) == "paused"  # the circuit is open: not even attempted
    with rt.sessions() as session:
        statuses = [session.get(Delivery, i).status for i in ids]
        paused = session.scalars(sa.select(Connection.paused_reason).where(Connection.name == "chat")).one()
        audit = session.scalars(sa.select(AuditEntry.kind)).all()
    assert statuses == ["paused"] * 4 and "invalid_auth" in paused and "connection_paused" in audit
    assert len(rt.enqueued) == 1  # the alert to the `ops` connection
    assert execute(rt, rt.enqueued[0]) == "succeeded"
    assert "paused connection 'chat'" in slack.messages_in("C2")[-1]["text"]
    replayed = engine.resume_connection(rt, ACCOUNT, "chat")
    assert sorted(replayed) == sorted(ids)
    for delivery_id in replayed:
        assert execute(rt, delivery_id) == "succeeded"
    assert len([m for m in slack.messages_in("C1") if m["text"].startswith("parked call-auth-")]) == 4


def test_pacing_is_not_an_attempt(rt, slack):
    """Two posts to one channel at once: the second waits for a token without counting an attempt."""
    first, second = ingest_parking(rt, "call-pace-1")[0], ingest_parking(rt, "call-pace-2")[0]
    assert engine.execute_delivery(rt, first) == "succeeded"
    with pytest.raises(RetryableError) as info:
        engine.execute_delivery(rt, second)
    assert info.value.code == "paced"
    row = delivery(rt, second)
    assert (row.status, row.attempts) == ("retrying", 0)


def test_deliveries_whose_task_message_was_lost_are_found_once_overdue(rt):
    """Never attempted, retrying past the longest countdown, or running past the claim: the scheduler re-enqueues."""
    overdue = timedelta(minutes=2)
    longest = timedelta(seconds=rt.settings.retry_max_countdown_seconds)
    cases = {  # status: (column, value when just in time, value when overdue)
        "pending": ("created_at", utcnow() - overdue + timedelta(seconds=30), utcnow() - overdue * 2),
        "retrying": ("updated_at", utcnow() - longest, utcnow() - longest - overdue * 2),
        "running": ("claimed_until", utcnow() - overdue + timedelta(seconds=30), utcnow() - overdue * 2),
    }
    ids = {}
    for status, (column, in_time, _late) in cases.items():
        (ids[status],) = ingest_parking(rt, f"call-stale-{status}")
        with rt.sessions.begin() as session:
            session.execute(sa.update(Delivery).where(Delivery.id == ids[status]).values(status=status,
                                                                                        **{column: in_time}))
    assert not set(ids.values()) & set(engine.stale_deliveries(rt, overdue))
    for status, (column, _in_time, late) in cases.items():
        with rt.sessions.begin() as session:
            session.execute(sa.update(Delivery).where(Delivery.id == ids[status]).values(**{column: late}))
    assert set(ids.values()) <= set(engine.stale_deliveries(rt, overdue))
