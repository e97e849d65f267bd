"""Hostile input against real processes (receiver and Celery worker): a template that would stall the worker
fails its own action while another account is served; a hook whose processing keeps being killed by the
hard time limit ends in the quarantine with the reason, never acknowledged and lost."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

import pytest
import requests

from service.sandbox.standins.base import serve_in_thread
from service.sandbox.standins.slack import SlackStandin
from service.sandbox.standins.slack import create_app as slack_app
from tests.conftest import FIXTURES
from tests.harness import Service, wait_for
from tests.security.test_templates import ISSUE_TEMPLATE, SLOW_TEMPLATE, rules

pytestmark = pytest.mark.e2e

HOSTILE = "ba000000000000000000000000000bad"
VICTIM = "c0000000000000000000000000000001"
TOKEN = "xoxb-security-test-token"


@pytest.fixture
def slack():
    """A Slack stand-in with a channel per account."""
    state = SlackStandin(rate_limit_max=None)
    state.add_token(TOKEN)
    state.add_channel("CBAD", "hostile")
    state.add_channel("CGOOD", "victim")
    server = serve_in_thread(slack_app(state))
    yield state, server
    server.stop()


def parking(call_id: str) -> str:
    """A parking hook's JSON body."""
    payload = json.loads((FIXTURES / "kazoo/webhook_parking_park_parked.json").read_text())
    payload["call_id"] = call_id
    return json.dumps(payload)


def post(url: str, body: str) -> None:
    """Deliver a hook as Kazoo would; the receiver must answer exactly 200."""
    assert requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=10).status_code == 200


def test_a_hostile_template_fails_in_its_own_action_while_another_account_is_served(tmp_path, redis_url, slack):
    """The issue's template, sent first: the victim's hook sent right after is posted to Slack within seconds
    (it was 58 s late before), and the hostile action is failed with the budget's message."""
    state, server = slack
    svc = Service(tmp_path, redis_url=redis_url, namespace=f"sec{uuid.uuid4().hex[:8]}",
                  env={"PBXRELAY_SLACK_API_URL": f"{server.url}/api/"})
    svc.cli("migrate")
    urls = {}
    for account_id, channel, text in ((HOSTILE, "CBAD", ISSUE_TEMPLATE + SLOW_TEMPLATE),
                                      (VICTIM, "CGOOD", "parked {{ call_id }}")):
        urls[account_id] = svc.add_account(account_id)["hook_url"]
        path = tmp_path / f"{account_id}.yaml"
        path.write_text(rules(account_id, channel, text))
        svc.cli("rules", "apply", str(path))
    svc.start_web()
    svc.start_worker(concurrency=1)  # one pool process: the hostile action and the victim's hook share it
    svc.start_scheduler()  # paced actions (Slack: 1 message a second per channel) are due again through it
    try:
        post(urls[VICTIM], parking("warm-up-call"))  # the worker is up once this is posted
        wait_for(lambda: state.messages_in("CGOOD"), timeout=120, message="the worker to start")
        started = time.monotonic()
        post(urls[HOSTILE], parking("hostile-call"))
        post(urls[VICTIM], parking("victim-call"))
        wait_for(lambda: len(state.messages_in("CGOOD")) == 2, timeout=60, message="the victim's Slack message")
        victim_seconds = time.monotonic() - started
        failed = wait_for(lambda: [d for d in svc.deliveries(HOSTILE) if d["status"] == "failed"], timeout=60,
                          message="the hostile action to fail")
    finally:
        svc.stop()
    assert [m["text"] for m in state.messages_in("CGOOD")] == ["parked warm-up-call", "parked victim-call"]
    assert victim_seconds < 20, f"the victim's message took {victim_seconds:.1f} s"
    assert "filter list of 99999 items" in json.dumps(failed), failed
    assert state.messages_in("CBAD") == []


def test_a_hook_killed_by_the_hard_time_limit_is_quarantined_with_the_reason(tmp_path, redis_url):
    """Every ingest run blocks past the 2 s hard limit (the SQLite write lock is held from here) and is
    killed; the message comes back each time (not acknowledged), and after 3 kills it is quarantined."""
    svc = Service(tmp_path, redis_url=redis_url, namespace=f"sec{uuid.uuid4().hex[:8]}",
                  env={"PBXRELAY_INGEST_TIMEOUT_SECONDS": "2"})
    svc.cli("migrate")
    url = svc.add_account(VICTIM)["hook_url"]
    svc.start_web()
    svc.start_worker(concurrency=1)
    import redis as redis_py

    client = redis_py.Redis.from_url(redis_url)
    database = svc.env["PBXRELAY_DATABASE_URL"][len("sqlite:///"):]
    lock = sqlite3.connect(database, timeout=30, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # every ingest write now waits (SQLite's busy timeout is 30 s)
        post(url, parking("killed-call"))

        def runs() -> int:
            keys = list(client.scan_iter(f"{svc.env['PBXRELAY_NAMESPACE']}:ingest-runs:*"))
            return max((int(client.get(key) or 0) for key in keys), default=0)

        wait_for(lambda: runs() > 3, timeout=180, message="a fourth run of the killed hook")
        lock.execute("ROLLBACK")
        rows = wait_for(lambda: svc.quarantine(VICTIM), timeout=60, message="the quarantine")
        events = svc.cli("deliveries", VICTIM, "--json").stdout
    finally:
        lock.close()
        svc.stop()
    assert len(rows) == 1 and rows[0]["reason"].startswith("processing was killed "), rows
    assert rows[0]["reason"].endswith(" times (time limit or crash)")
    assert json.loads(rows[0]["body"])["call_id"] == "killed-call"
    assert events.strip() == ""
    assert "Hard time limit (2s) exceeded" in svc.log("worker")
