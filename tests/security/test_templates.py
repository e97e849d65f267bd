"""A hostile tenant's templates (finding 6 of "A hard tenant boundary"): they cost that tenant's own action a
bounded time and fail it permanently, while another account's hooks are stored and acted on at once."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from integrations.base import PermanentError
from service import accounts, engine
from service.config import Settings
from service.engine import planning
from service.rules import templating
from service.rules.templating import TemplateError, render_template
from service.runtime import Runtime
from service.sandbox.standins.base import serve_in_thread
from service.sandbox.standins.slack import SlackStandin
from service.sandbox.standins.slack import create_app as slack_app
from service.store.models import Delivery, StoredEvent, migrate
from service.web.receiver import make_envelope
from tests.conftest import FIXTURES

HOSTILE = "ba000000000000000000000000000bad"
VICTIM = "c0000000000000000000000000000001"
TOKEN = "xoxb-security-test-token"
# From the issue: the work happens inside filters, where the step budget used to see nothing
# (about 72 ms an iteration on the reporter's machine, so about 12 minutes for the loop).
ISSUE_TEMPLATE = "{% for i in range(10000) %}{{ ('x' * 99999) | list | map('upper') | join }}{% endfor %}"
# Each filter call stays under every size cap (11,000 items); only the clock stops it.
SLOW_TEMPLATE = "{% for i in range(10000) %}{{ ('<a>x</a> ' * 11000) | striptags | length }}{% endfor %}"
# Seconds: the budget is MAX_RENDER_SECONDS (1 s); the margin is for a shared, busy CI machine.
GENEROUS = 8.0


@pytest.mark.parametrize(("source", "message"), [
    (ISSUE_TEMPLATE, "filter list of 99999 items or characters (limit 10000)"),
    (SLOW_TEMPLATE, "template ran out of time"),
    ("{% for i in range(10000) %}{{ ('x' * 99999) | unique | list | length }}{% endfor %}", "filter unique of 99999"),
    ("{{ ('x' * 9999) | map('upper') | map('lower') | map('upper') | map('lower') | join }}"
     "{{ ('x' * 9999) | map('upper') | map('lower') | map('upper') | map('lower') | join }}"
     "{{ ('x' * 9999) | map('upper') | map('lower') | map('upper') | map('lower') | join }}",
     "loop iterations and calls"),
    ("{{ ('a b ' * 9000).split() }}", "call result of 18000 items"),
    ("{{ ('x' * 20000) | wordwrap(5) }}", "filter wordwrap of 20000 items or characters"),
], ids=["issue", "clock", "unique", "nested-map", "split", "wordwrap"])
def test_work_inside_filters_is_budgeted(source, message):
    """Filters count against the step budget and the clock, and their results and inputs are capped."""
    started = time.monotonic()
    with pytest.raises(TemplateError) as caught:
        render_template(source, {})
    elapsed = time.monotonic() - started
    assert message in str(caught.value)
    assert isinstance(caught.value, PermanentError) and not caught.value.retryable
    assert elapsed < GENEROUS, f"the render took {elapsed:.1f} s"


def test_sane_templates_are_untouched_by_the_budget():
    """Ordinary work with filters renders as before."""
    source = "{{ legs | map(attribute='number') | map('upper') | join(', ') }} {{ (names | sort | list)[0] }}"
    assert render_template(source, {"legs": [{"number": "a1"}, {"number": "b2"}],
                                    "names": ["bo", "al"]}) == "A1, B2 al"


class FakeSoftTimeLimit(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded, which also derives from Exception."""


def test_a_soft_time_limit_inside_a_template_is_not_turned_into_a_template_error(monkeypatch):
    """Only template faults become TemplateError; the worker's time limit reaches the task that set it."""
    def interrupted(value):
        raise FakeSoftTimeLimit()

    monkeypatch.setitem(templating._ENVIRONMENT.filters, "duration", templating._budgeted(interrupted, "duration"))
    templating._compiled.cache_clear()
    try:
        with pytest.raises(FakeSoftTimeLimit):
            render_template("{{ 5 | duration }}", {})
    finally:
        templating._compiled.cache_clear()


@pytest.fixture(scope="module")
def slack():
    """A Slack stand-in with one bot token and a channel per account."""
    state = SlackStandin(rate_limit_max=None)
    state.add_token(TOKEN)
    state.add_channel("CBAD", "hostile")
    state.add_channel("CGOOD", "victim")
    server = serve_in_thread(slack_app(state))
    state.api_url = f"{server.url}/api/"
    yield state
    server.stop()


def rules(account_id: str, channel: str, text: str) -> str:
    """A rules file posting every parked call to Slack with ``text``."""
    return json.dumps({"account": {"id": account_id, "name": account_id[:6], "timezone": "UTC"},
                       "connections": {"chat": {"integration": "slack", "bot_token": TOKEN}},
                       "rules": [{"name": "parked", "on": "virtualpbx.parking",
                                  "do": [{"use": "chat", "action": "post_message",
                                          "with": {"channel": channel, "text": text}}]}]})


@pytest.fixture
def rt(tmp_path, redis_url, namespace, redis_client, slack, database_url):
    """A Runtime (SQLite and PostgreSQL) with a hostile account and a victim account, both posting to Slack."""
    settings = Settings(var_dir=tmp_path / "var", redis_url=redis_url, namespace=namespace, database_url=database_url,
                        secret_keys=Fernet.generate_key().decode(), slack_api_url=slack.api_url,
                        allow_private_urls=True)
    migrate(database_url)
    runtime = Runtime(settings)
    with runtime.sessions.begin() as session:
        for account_id, channel, text in ((HOSTILE, "CBAD", ISSUE_TEMPLATE + SLOW_TEMPLATE),
                                          (VICTIM, "CGOOD", "parked {{ call_id }}")):
            accounts.add_account(session, account_id, name=account_id[:6], box=runtime.box)
            path = tmp_path / f"{account_id}.yaml"
            path.write_text(rules(account_id, channel, text))
            accounts.apply_rules_file(session, path, registry=runtime.registry, box=runtime.box,
                                      allow_private_urls=True)
    planning._RULES_CACHE.clear()
    slack.reset()
    yield runtime
    runtime.sessions.kw["bind"].dispose()


def parking_envelope(account_id: str, call_id: str) -> dict:
    """A receiver envelope of one parking hook."""
    payload = json.loads((FIXTURES / "kazoo/webhook_parking_park_parked.json").read_text())
    payload["call_id"] = call_id
    return make_envelope(source="virtualpbx", account_id=account_id, method="POST", content_type="application/json",
                         query_string="", body=json.dumps(payload).encode(), headers={})


def test_a_hostile_template_fails_its_own_action_and_another_account_is_served_at_once(rt, slack):
    """The issue's template through the real engine: ingest stores both hooks without rendering anything,
    the hostile action fails permanently with the budget's message in bounded time, the victim's is posted."""
    started = time.monotonic()
    hostile = engine.ingest(rt, parking_envelope(HOSTILE, "hostile-call"))
    victim = engine.ingest(rt, parking_envelope(VICTIM, "victim-call"))
    ingest_seconds = time.monotonic() - started
    assert (hostile.status, victim.status) == ("accepted", "accepted")
    assert ingest_seconds < GENEROUS / 2, f"ingesting two hooks took {ingest_seconds:.1f} s"
    with rt.sessions() as session:
        assert set(session.scalars(sa.select(StoredEvent.account_id))) == {HOSTILE, VICTIM}
        planned = session.get(Delivery, hostile.deliveries[0])
        assert (planned.status, planned.rendered) == ("pending", False)
        assert planned.params["text"] == ISSUE_TEMPLATE + SLOW_TEMPLATE, "the template is stored, not its output"

    started = time.monotonic()
    with pytest.raises(TemplateError, match="rule 'parked': do\\[0\\].with.text: template too large"):
        engine.execute_delivery(rt, hostile.deliveries[0])
    action_seconds = time.monotonic() - started
    assert action_seconds < GENEROUS, f"the hostile action took {action_seconds:.1f} s"
    assert engine.execute_delivery(rt, victim.deliveries[0]) == "succeeded"

    with rt.sessions() as session:
        failed = session.get(Delivery, hostile.deliveries[0])
        assert failed.status == "failed" and "filter list of 99999 items" in failed.last_error
        assert engine.execute_delivery(rt, hostile.deliveries[0]) == "failed", "a permanent failure is final"
    assert [m["text"] for m in slack.messages_in("CGOOD")] == ["parked victim-call"]
    assert slack.messages_in("CBAD") == []


def test_the_clock_alone_stops_a_template_at_action_time(rt, slack, tmp_path):
    """A template under every size cap runs out of its time budget: failed, with that message, in bounded time."""
    path = tmp_path / "slow.yaml"
    path.write_text(rules(HOSTILE, "CBAD", SLOW_TEMPLATE))
    with rt.sessions.begin() as session:
        accounts.apply_rules_file(session, path, registry=rt.registry, box=rt.box, allow_private_urls=True)
    planning._RULES_CACHE.clear()
    delivery_id = engine.ingest(rt, parking_envelope(HOSTILE, "slow-call")).deliveries[0]
    started = time.monotonic()
    with pytest.raises(TemplateError, match="ran out of time"):
        engine.execute_delivery(rt, delivery_id)
    assert time.monotonic() - started < GENEROUS
    with rt.sessions() as session:
        row = session.get(Delivery, delivery_id)
        assert row.status == "failed" and "ran out of time" in row.last_error


@pytest.mark.parametrize("where", ["render", "vendor-call"])
def test_a_soft_time_limit_at_action_time_is_an_attempt_in_doubt_not_a_bug(rt, slack, monkeypatch, where):
    """The worker's soft limit, while rendering or while the vendor is called, is recorded as a retry that
    waits at least the action time limit (the request may have reached the vendor), never as success or loss."""
    from integrations.base import RetryableError
    from service.engine import delivery as delivery_mod

    delivery_id = engine.ingest(rt, parking_envelope(VICTIM, "soft-limit-call")).deliveries[0]

    def interrupted(*_args, **_kwargs):
        raise FakeSoftTimeLimit()

    if where == "render":
        monkeypatch.setattr(delivery_mod, "render_params", interrupted)
    else:
        monkeypatch.setattr(rt.registry["slack"], "run", interrupted)
    with pytest.raises(RetryableError) as caught:
        engine.execute_delivery(rt, delivery_id, time_limit_errors=(FakeSoftTimeLimit,))
    assert caught.value.code == "timeout"
    assert engine.retry_delay(rt, 1, None, code=caught.value.code) >= rt.settings.action_timeout_seconds
    with rt.sessions() as session:
        row = session.get(Delivery, delivery_id)
        assert row.status == "retrying" and "ran past its time limit" in row.last_error
    assert slack.messages_in("CGOOD") == []
