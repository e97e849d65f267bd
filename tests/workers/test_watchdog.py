"""The watchdog: hard time limits on the threads pool, which cannot stop one task.

Unit tests of the bookkeeping on a fake clock, and one end to end: a real worker on the threads pool whose
action hangs past its limit ends with status 70, and a replacement delivers the message exactly once.
"""

from __future__ import annotations

import json
import textwrap
import threading
import uuid

import pytest
import requests

from service.sandbox.standins.base import serve_in_thread
from service.sandbox.standins.slack import SlackStandin
from service.sandbox.standins.slack import create_app as slack_app
from tests.conftest import FIXTURES
from tests.harness import Service, wait_for
from workers.watchdog import EXIT_STATUS, Watchdog


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_task_is_overdue_only_past_its_hard_limit_and_until_it_finishes():
    clock = FakeClock()
    dog = Watchdog(clock=clock)
    dog.started("t1", "pbxrelay.run_action", 5)
    dog.started("t2", "pbxrelay.finalize_call", None)  # no limit: never watched
    clock.now += 4.9
    assert dog.overdue() is None
    clock.now += 0.2
    assert dog.overdue() == ("t1", "pbxrelay.run_action")
    dog.finished("t1")
    clock.now += 1000
    assert dog.overdue() is None


def test_watch_reports_the_first_overdue_task_once_and_stops():
    clock = FakeClock()
    dog = Watchdog(clock=clock)
    dog.started("t1", "pbxrelay.ingest", 1)
    clock.now += 2
    reported = []
    stop = threading.Event()
    thread = threading.Thread(target=dog.watch, args=(stop, lambda *found: reported.append(found), 0.01))
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive() and reported == [("t1", "pbxrelay.ingest")]


ACCOUNT = "a0000000000000000000000000000077"
BOT_TOKEN = "xoxb-watchdog-test"
RULES = textwrap.dedent(f"""
    account: {{id: {ACCOUNT}, name: Watchdog, timezone: UTC}}
    connections:
      team-slack: {{integration: slack, bot_token: env:WD_SLACK_TOKEN}}
    rules:
      - name: parked calls
        on: virtualpbx.parking
        do:
          - use: team-slack
            action: post_message
            with: {{channel: C0WATCH, text: parked}}
""")


@pytest.mark.e2e
def test_a_hung_action_on_the_threads_pool_ends_the_worker_and_is_delivered_once(tmp_path, redis_url):
    """Slack holds the post 15 s; the action's limit is 5 s. The threads-pool worker exits with EXIT_STATUS
    within a few seconds of the limit (before the 20 s claim lease lapses, so no copy can run beside it);
    a new worker's retry finds the late post (Slack's history) and the channel has the message once."""
    slack = SlackStandin(rate_limit_max=None)
    slack.add_token(BOT_TOKEN)
    slack.add_channel("C0WATCH", "watch")
    server = serve_in_thread(slack_app(slack))
    svc = Service(tmp_path, redis_url=redis_url, namespace=f"wd{uuid.uuid4().hex[:8]}",
                  env={"PBXRELAY_SLACK_API_URL": f"{server.url}/api/", "WD_SLACK_TOKEN": BOT_TOKEN,
                       "PBXRELAY_ACTION_TIMEOUT_SECONDS": "5"})
    try:
        svc.cli("migrate")
        hook_url = svc.add_account(ACCOUNT)["hook_url"]
        (tmp_path / "rules.yaml").write_text(RULES)
        svc.cli("rules", "apply", str(tmp_path / "rules.yaml"))
        svc.start_web()
        svc.start_scheduler()
        worker = svc.start_worker(pool="threads", concurrency=4)
        slack.push_faults([{"delay": 15}])
        payload = json.loads((FIXTURES / "kazoo" / "webhook_parking_park_parked.json").read_text())
        assert requests.post(hook_url, json=payload, timeout=10).status_code == 200
        status = wait_for(lambda: worker.poll(), timeout=30, message="the watchdog to end the worker")
        assert status == EXIT_STATUS, svc.log("worker")
        assert "outlived its hard time limit" in svc.log("worker")
        assert slack.messages_in("C0WATCH") == [], "ended while Slack still held the post"
        svc.start_worker("worker-2", pool="threads", concurrency=4)
        wait_for(lambda: {d["status"] for d in svc.deliveries(ACCOUNT)} == {"succeeded"}, timeout=90,
                 message="the retry after the claim lease")
        assert [m["text"] for m in slack.messages_in("C0WATCH")] == ["parked"]
    finally:
        svc.stop()
        server.stop()
