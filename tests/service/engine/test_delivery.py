"""The pipeline's delivery bookkeeping, without Celery: claims, retries, dead letters, the circuit, replay."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from integrations.base import AuthError, PermanentError, RetryableError
from service import accounts, engine
from service.config import Settings
from service.engine import planning
from service.events import Event
from service.runtime import Runtime
from service.sandbox.standins.base import serve_in_thread
from service.sandbox.standins.slack import SlackStandin
from service.sandbox.standins.slack import create_app as slack_app
from service.store.models import AuditEntry, Connection, Delivery, QuarantinedDelivery, StoredEvent, migrate, utcnow
from service.web.receiver import make_envelope
from tests.conftest import FIXTURES

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
    """Run a delivery as the worker would, waiting out rate-limit pacing (which is not an attempt) at once."""
    for _ in range(20):
        try:
            return engine.execute_delivery(rt, delivery_id)
        except RetryableError as exc:
            if exc.code not in ("paced", "booked"):
                raise
            time.sleep(exc.retry_after)  # the token (or the booked slot) is there now; a recorded spread is skipped
            make_due(rt, delivery_id)
        except PermanentError as exc:
            rt.enqueued.extend(engine.follow_ups(exc))
            raise
    raise AssertionError("still paced after 20 waits")


def delivery(rt, delivery_id: int) -> Delivery:
    """A fresh copy of one delivery row."""
    with rt.sessions() as session:
        return session.get(Delivery, delivery_id)


def make_due(rt, delivery_id: int, in_seconds: float = 0.0) -> None:
    """Move a delivery's due time to now (as if its wait had passed: the scheduler would enqueue it now), or
    ``in_seconds`` from now."""
    with rt.sessions.begin() as session:
        session.execute(sa.update(Delivery).where(Delivery.id == delivery_id).values(
            next_attempt_at=utcnow() + timedelta(seconds=in_seconds)))


def seconds_until_due(rt, delivery_id: int) -> float:
    """How far in the future the delivery's recorded next attempt is."""
    return (delivery(rt, delivery_id).next_attempt_at.replace(tzinfo=None)
            - utcnow().replace(tzinfo=None)).total_seconds()


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
    # Full jitter may draw a delay shorter than the time this check takes: due "now" is a little in the past.
    assert -1 < seconds_until_due(rt, delivery_id) <= rt.settings.retry_base_seconds
    make_due(rt, delivery_id, in_seconds=30)  # (the drawn delay may have passed already: now it has not)
    assert execute(rt, delivery_id) == "retrying", "a task arriving before the due time does not attempt"
    assert delivery(rt, delivery_id).attempts == 1
    make_due(rt, delivery_id)
    assert execute(rt, delivery_id) == "succeeded"
    row = delivery(rt, delivery_id)
    assert (row.attempts, row.next_attempt_at) == (2, None)


def test_permanent_failure_is_final(rt, slack):
    """channel_not_found is failed, with the reason, and never attempted again."""
    (delivery_id,) = ingest_parking(rt, "call-perm")
    slack.push_faults([{"status": 200, "body": {"ok": False, "error": "channel_not_found"}}])
    with pytest.raises(PermanentError):
        execute(rt, delivery_id)
    row = delivery(rt, delivery_id)
    assert row.status == "failed" and "channel_not_found" in row.last_error
    assert execute(rt, delivery_id) == "failed"


def test_a_claimed_delivery_is_not_run_twice(rt, slack):
    """While one attempt holds the claim, another copy of the task leaves it alone (no attempt, nothing posted)."""
    (delivery_id,) = ingest_parking(rt, "call-claim")
    with rt.sessions.begin() as session:
        session.execute(sa.update(Delivery).where(Delivery.id == delivery_id).values(
            status="running", attempts=1, claimed_until=utcnow() + timedelta(seconds=30)))
    assert execute(rt, delivery_id) == "running"
    assert delivery(rt, delivery_id).attempts == 1 and slack.messages_in("C1") == []


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
        unattempted = session.get(Delivery, ids[3])
        paused = session.scalars(sa.select(Connection.paused_reason).where(Connection.name == "chat")).one()
        audit = session.scalars(sa.select(AuditEntry.kind)).all()
    assert statuses == ["paused"] * 4 and "invalid_auth" in paused and "connection_paused" in audit
    assert (unattempted.attempts, unattempted.claimed_until) == (0, None), "the claim is given back uncounted"
    assert unattempted.last_error.startswith("connection paused: ")
    assert len(rt.enqueued) == 1  # the alert to the `ops` connection
    assert execute(rt, rt.enqueued[0]) == "succeeded"
    assert "paused connection 'chat'" in slack.messages_in("C2")[-1]["text"]
    replayed = engine.resume_connection(rt, ACCOUNT, "chat")
    assert sorted(replayed) == sorted(ids)
    for delivery_id in replayed:
        assert execute(rt, delivery_id) == "succeeded"
    assert len([m for m in slack.messages_in("C1") if m["text"].startswith("parked call-auth-")]) == 4


def test_pacing_is_not_an_attempt_and_books_the_next_slot(rt, slack):
    """Two posts to one channel at once: the second books the channel's next slot without counting an
    attempt, is due exactly then (no spread), and goes at that time without asking the bucket again."""
    first, second = ingest_parking(rt, "call-pace-1")[0], ingest_parking(rt, "call-pace-2")[0]
    assert engine.execute_delivery(rt, first) == "succeeded"
    with pytest.raises(RetryableError) as info:
        engine.execute_delivery(rt, second)
    assert info.value.code == "booked"
    row = delivery(rt, second)
    assert (row.status, row.attempts) == ("retrying", 0)
    assert seconds_until_due(rt, second) == pytest.approx(info.value.retry_after, abs=0.1)
    time.sleep(info.value.retry_after)
    # The slot is this delivery's: a third post that asks now queues behind it instead of taking it.
    third = ingest_parking(rt, "call-pace-3")[0]
    with pytest.raises(RetryableError):
        engine.execute_delivery(rt, third)
    assert engine.execute_delivery(rt, second) == "succeeded"
    assert delivery(rt, second).attempts == 1


def test_a_rate_limit_wait_does_not_raise_the_backoff_of_the_next_real_retry(rt, slack, monkeypatch):
    """One real failure, then many waits for a rate-limit token, then a real failure: the second backoff is the
    one of a second attempt (the waits are not attempts). Each wait lasts what the limiter says, plus a spread
    that doubles with each consecutive wait (so waiters on one bucket do not all wake for its next token)."""
    monkeypatch.setattr("service.engine.delivery.random.uniform", lambda low, high: high)  # the jitter's ceiling
    base = rt.settings.retry_base_seconds
    (delivery_id,) = ingest_parking(rt, "call-backoff")
    slack.push_faults([{"status": 500}])
    with pytest.raises(RetryableError):
        engine.execute_delivery(rt, delivery_id)
    assert delivery(rt, delivery_id).attempts == 1
    assert seconds_until_due(rt, delivery_id) == pytest.approx(base, abs=0.5)
    for waits in range(6):  # the channel's bucket is shut (as after a 429): every try is a wait
        make_due(rt, delivery_id)
        rt.limiter.penalise(f"slack:{ACCOUNT}:chat:C1", 3.0)
        before = utcnow()
        with pytest.raises(RetryableError) as info:
            engine.execute_delivery(rt, delivery_id)
        after = utcnow()
        assert info.value.code == "paced"
        row = delivery(rt, delivery_id)
        assert (row.status, row.attempts) == ("retrying", 1)
        wait = info.value.retry_after  # what the limiter said: up to 3 s, as the bucket was shut for 3 s
        assert 2.0 < wait <= 3.0
        # The delay was counted from a moment within the run (not from this check, which a loaded host may delay).
        due = row.next_attempt_at.replace(tzinfo=None)
        shortest, longest = ((due - moment.replace(tzinfo=None)).total_seconds() for moment in (after, before))
        assert shortest - 0.05 <= wait + wait * 2 ** waits <= longest + 0.05
    make_due(rt, delivery_id)
    rt.redis.delete(f"{rt.settings.namespace}:bucket:slack:{ACCOUNT}:chat:C1")
    slack.push_faults([{"status": 500}])
    with pytest.raises(RetryableError):
        engine.execute_delivery(rt, delivery_id)
    assert delivery(rt, delivery_id).attempts == 2
    # Counting the six waits as attempts would make this base * 2**7.
    assert seconds_until_due(rt, delivery_id) == pytest.approx(base * 2, abs=0.5)


def set_row(rt, delivery_id: int, **values) -> None:
    """Write columns of one delivery row directly (to put it in a state the scheduler must handle)."""
    with rt.sessions.begin() as session:
        session.execute(sa.update(Delivery).where(Delivery.id == delivery_id).values(**values))


def test_the_scheduler_hands_out_what_is_due_once_per_lease(rt):
    """Due retries, running attempts past their claim and pending actions whose message was lost are handed out;
    nothing is handed out twice within the lease, and it is handed out again once the lease runs out."""
    now, lease = utcnow(), timedelta(seconds=rt.settings.stale_after_seconds)
    ids = {name: ingest_parking(rt, f"call-due-{name}")[0] for name in
           ("due", "later", "abandoned", "held", "lost", "fresh", "done")}
    set_row(rt, ids["due"], status="retrying", attempts=1, next_attempt_at=now - timedelta(seconds=1))
    set_row(rt, ids["later"], status="retrying", attempts=1, next_attempt_at=now + timedelta(seconds=30))
    set_row(rt, ids["abandoned"], status="running", attempts=1, claimed_until=now - timedelta(seconds=1))
    set_row(rt, ids["held"], status="running", attempts=1, claimed_until=now + timedelta(seconds=30))
    set_row(rt, ids["lost"], created_at=now - lease - timedelta(seconds=1))
    set_row(rt, ids["done"], status="succeeded", next_attempt_at=now - timedelta(seconds=5))
    handed = engine.due_deliveries(rt)
    assert sorted(handed) == sorted([ids["due"], ids["abandoned"], ids["lost"]])
    assert engine.due_deliveries(rt) == [], "within the lease nothing is handed out again"
    abandoned = delivery(rt, ids["abandoned"])
    assert (abandoned.status, abandoned.attempts) == ("retrying", 1), "the lost attempt counts; it is due now"
    assert execute(rt, ids["abandoned"]) == "succeeded", "a handed-out delivery is claimable at once"
    for name in ("due", "lost"):
        set_row(rt, ids[name], claimed_until=utcnow() - timedelta(seconds=1))  # the lease ran out unstarted
    assert sorted(engine.due_deliveries(rt)) == sorted([ids["due"], ids["lost"]])


def test_calls_to_finalise_are_due_after_the_settle_window_and_leased(rt):
    """A scheduled call is due once call_settle_seconds have passed; handed out once per lease; gone once done."""
    engine.schedule_finalize(rt, ACCOUNT, "call-a")
    key = f"{rt.settings.namespace}:finalize-due"
    first_due = rt.redis.zscore(key, json.dumps([ACCOUNT, "call-a"]))
    engine.schedule_finalize(rt, ACCOUNT, "call-a")  # the A-leg's destroy again: the window is not restarted
    assert rt.redis.zscore(key, json.dumps([ACCOUNT, "call-a"])) == first_due
    assert first_due - time.time() == pytest.approx(rt.settings.call_settle_seconds, abs=0.5)
    assert engine.due_finalizations(rt) == []
    rt.redis.zadd(key, {json.dumps([ACCOUNT, "call-a"]): time.time() - 1})
    assert engine.due_finalizations(rt) == [(ACCOUNT, "call-a")]
    assert engine.due_finalizations(rt) == [], "leased: not handed out twice"
    engine.finalized(rt, ACCOUNT, "call-a")
    assert rt.redis.zcard(key) == 0
