"""Each real attempt of a delivery leaves one delivery_attempts row, written with its outcome (SQLite and
PostgreSQL, against the Slack stand-in): what was sent and what came back, scrubbed and bounded; waits are not
attempts; a crash before the outcome's commit leaves neither."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from integrations.base import PermanentError, RetryableError
from service import engine
from service.engine import delivery as delivery_mod
from service.store.models import ATTEMPT_TEXT_MAX, Delivery, DeliveryAttempt, utcnow
from tests.service.engine import test_delivery as base
from tests.service.engine.test_delivery import TOKEN, delivery, execute, ingest_parking, make_due, set_row

# The pipeline fixtures of the delivery tests (a Runtime with one account posting to the Slack stand-in).
rt, slack = base.rt, base.slack


def attempts(rt, delivery_id: int) -> list[DeliveryAttempt]:
    """The delivery's attempt rows, oldest first."""
    with rt.sessions() as session:
        return list(session.scalars(sa.select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == delivery_id)
                                    .order_by(DeliveryAttempt.id)))


def test_a_success_records_one_attempt_with_request_and_response(rt, slack):
    """The attempt names its number, duration, the rendered params and the vendor's id; a re-run adds nothing."""
    (delivery_id,) = ingest_parking(rt, "call-attempt-ok")
    before = utcnow()
    assert execute(rt, delivery_id) == "succeeded"
    assert execute(rt, delivery_id) == "succeeded"
    (row,) = attempts(rt, delivery_id)
    assert (row.number, row.outcome, row.status_code, row.error) == (1, "succeeded", None, None)
    assert row.account_id == delivery(rt, delivery_id).account_id and row.duration_ms >= 0
    assert row.started_at.replace(tzinfo=None) >= before.replace(tzinfo=None, microsecond=0)
    assert '"text": "parked call-attempt-ok"' in row.request_excerpt and '"channel": "C1"' in row.request_excerpt
    assert row.response_excerpt.startswith("external id: C1:")


def test_a_retry_then_a_success_are_two_attempts_with_the_vendors_status(rt, slack):
    """A 500 is a retrying attempt with status 500 and the error; the next attempt succeeds."""
    (delivery_id,) = ingest_parking(rt, "call-attempt-retry")
    slack.push_faults([{"status": 500}])
    with pytest.raises(RetryableError):
        execute(rt, delivery_id)
    make_due(rt, delivery_id)
    assert execute(rt, delivery_id) == "succeeded"
    first, second = attempts(rt, delivery_id)
    assert (first.number, first.outcome, first.status_code) == (1, "retrying", 500)
    assert "internal_error" in first.error and first.response_excerpt.startswith("HTTP 500: ")
    assert (second.number, second.outcome) == (2, "succeeded")


def test_permanent_and_dead_outcomes_are_recorded(rt, slack):
    """channel_not_found is a failed attempt; a retryable error past the horizon is a dead one."""
    failed_id, dead_id = ingest_parking(rt, "call-attempt-perm")[0], ingest_parking(rt, "call-attempt-dead")[0]
    slack.push_faults([{"status": 200, "body": {"ok": False, "error": "channel_not_found"}}])
    with pytest.raises(PermanentError):
        execute(rt, failed_id)
    # (another channel: a second post to C1 within the second would wait for its rate limit instead)
    set_row(rt, dead_id, created_at=utcnow().replace(year=2000), params={"channel": "C2", "text": "late"})
    slack.push_faults([{"status": 503}])
    with pytest.raises(PermanentError, match="retry horizon"):
        execute(rt, dead_id)
    assert [(a.outcome, "channel_not_found" in a.error) for a in attempts(rt, failed_id)] == [("failed", True)]
    assert [(a.outcome, a.status_code) for a in attempts(rt, dead_id)] == [("dead", 503)]


def test_waiting_for_a_rate_limit_token_is_not_an_attempt(rt, slack):
    """A delivery paced by the channel's rate limit records no attempt until it really calls the vendor."""
    first, second = ingest_parking(rt, "call-attempt-pace-1")[0], ingest_parking(rt, "call-attempt-pace-2")[0]
    assert engine.execute_delivery(rt, first) == "succeeded"
    with pytest.raises(RetryableError) as info:
        engine.execute_delivery(rt, second)
    assert info.value.code == "booked" and attempts(rt, second) == []
    make_due(rt, second)
    assert execute(rt, second) == "succeeded"
    assert [(a.number, a.outcome) for a in attempts(rt, second)] == [(1, "succeeded")]


def test_giving_up_while_waiting_for_a_rate_limit_slot_says_so_without_an_attempt(rt, slack):
    """A delivery still paced when its retry horizon runs out is dead with a last_error naming the wait and the
    horizon (not an earlier vendor error), and no attempt row: nothing reached the vendor."""
    first, second = ingest_parking(rt, "call-attempt-pace-dead-1")[0], ingest_parking(rt, "call-attempt-pace-dead-2")[0]
    assert engine.execute_delivery(rt, first) == "succeeded"
    set_row(rt, second, created_at=utcnow().replace(year=2000), last_error="RetryableError: slack answered 503")
    with pytest.raises(PermanentError, match="retry horizon"):
        engine.execute_delivery(rt, second)  # the channel's token went to the first post: paced, past the horizon
    row = delivery(rt, second)
    assert row.status == "dead" and attempts(rt, second) == []
    assert rt.settings.retry_horizon_seconds == 3600  # (the fixture's horizon)
    assert row.last_error == "gave up: still waiting for a rate-limit slot after 1 h"


@pytest.mark.parametrize(("seconds", "text"), [(86400, "24 h"), (3600, "1 h"), (5400, "90 min"), (75, "75 s")])
def test_the_horizon_is_said_in_hours_minutes_or_seconds(seconds, text):
    """The span in a gave-up message reads as people write it."""
    assert delivery_mod._span(seconds) == text


def test_attempt_texts_are_scrubbed_of_the_connections_secrets_and_bounded(rt, slack):
    """The bot token never appears in an attempt (request or error), and no text exceeds ATTEMPT_TEXT_MAX."""
    (delivery_id,) = ingest_parking(rt, "call-attempt-secret")
    set_row(rt, delivery_id, params={"channel": "C1", "text": f"token {TOKEN} " + "x" * 10_000})
    slack.push_faults([{"status": 200, "body": {"ok": False, "error": f"channel_not_found {TOKEN} " + "y" * 9000}}])
    with pytest.raises(PermanentError):
        execute(rt, delivery_id)
    (row,) = attempts(rt, delivery_id)
    for text in (row.request_excerpt, row.error, row.response_excerpt or ""):
        assert TOKEN not in text and len(text) <= ATTEMPT_TEXT_MAX + 1
    assert "token ***" in row.request_excerpt


def test_a_template_that_cannot_render_is_a_failed_attempt(rt, slack):
    """The delivery fails before reaching the vendor, and the attempt says why."""
    (delivery_id,) = ingest_parking(rt, "call-attempt-template")
    set_row(rt, delivery_id, params={"channel": "C1", "text": "{{ nope("})
    with pytest.raises(PermanentError):
        execute(rt, delivery_id)
    (row,) = attempts(rt, delivery_id)
    assert row.outcome == "failed" and row.error and "{{ nope(" in row.request_excerpt


class KilledWhileRecording(BaseException):
    """Stands in for SIGKILL between recording the outcome and committing it."""


@pytest.mark.parametrize("fault", [None, {"status": 500}])
def test_an_attempt_and_its_outcome_commit_together(rt, slack, monkeypatch, fault):
    """Killed while writing the attempt: the delivery's outcome is not committed either (it stays claimed and is
    retried after the lease), so the log never shows an outcome without its attempt or the reverse."""
    (delivery_id,) = ingest_parking(rt, "call-attempt-kill")
    if fault:
        slack.push_faults([fault])

    def killed(*_args, **_kwargs):
        raise KilledWhileRecording()

    monkeypatch.setattr(delivery_mod, "_record_attempt", killed)
    with pytest.raises(KilledWhileRecording):
        engine.execute_delivery(rt, delivery_id)
    row = delivery(rt, delivery_id)
    assert (row.status, row.attempts, row.succeeded_at) == ("running", 1, None) and attempts(rt, delivery_id) == []
    with rt.sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Delivery).where(
            Delivery.id == delivery_id, Delivery.last_error.is_not(None))) == 0
