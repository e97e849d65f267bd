"""End to end: /metrics of a running receiver shows what the worker's pool processes measured."""

from __future__ import annotations

import json
import re
import textwrap
import uuid

import pytest
import requests

from service.sandbox.standins.base import serve_in_thread
from service.sandbox.standins.slack import SlackStandin
from service.sandbox.standins.slack import create_app as slack_app
from tests.conftest import FIXTURES
from tests.harness import Service, wait_for

pytestmark = pytest.mark.e2e

ACCOUNT = "a0000000000000000000000000000d01"
BOT_TOKEN = "xoxb-e2e-metrics-token"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text output (0 when absent)."""
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            return float(match.group(2))
    return 0.0


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, redis_url):
    """A Slack stand-in, and a receiver and a prefork worker whose rule posts every raw hook to it."""
    state = SlackStandin(rate_limit_max=None)
    state.add_token(BOT_TOKEN)
    state.add_channel("C0METRICS", "metrics")
    server = serve_in_thread(slack_app(state))
    tmp = tmp_path_factory.mktemp("metrics")
    svc = Service(tmp, redis_url=redis_url, namespace=f"e2e{uuid.uuid4().hex[:8]}",
                  env={"PBXRELAY_SLACK_API_URL": f"{server.url}/api/", "E2E_SLACK_TOKEN": BOT_TOKEN})
    svc.cli("migrate")
    hook_url = svc.add_account(ACCOUNT)["hook_url"]
    rules = tmp / "rules.yaml"
    rules.write_text(textwrap.dedent(f"""
        account: {{id: {ACCOUNT}, name: Metrics Dental, timezone: America/New_York}}
        connections:
          team-slack: {{integration: slack, bot_token: env:E2E_SLACK_TOKEN}}
        rules:
          - name: raw hooks
            on: virtualpbx.*
            do:
              - use: team-slack
                action: post_message
                with: {{channel: C0METRICS, text: "{{{{ call_id }}}}"}}
    """))
    svc.cli("rules", "apply", str(rules))
    svc.start_web()
    svc.start_worker(concurrency=2)
    yield svc, state, hook_url
    svc.stop()
    server.stop()


def test_hook_to_effect_histogram_counts_an_effect_made_in_another_process(deployment):
    """One hook's Slack message raises the receiver's hook->effect count by one; the worker's task
    durations and the queue depths are on the same page."""
    svc, state, hook_url = deployment
    before = requests.get(f"{svc.url}/metrics", timeout=10).text
    count_before = sample(before, "pbxrelay_hook_to_effect_seconds_count", integration="slack")

    payload = json.loads((FIXTURES / "kazoo/webhook_channel_create.json").read_text())
    payload["call_id"] = f"metrics-{uuid.uuid4().hex}"
    assert requests.post(hook_url, json=payload, timeout=10).status_code == 200
    wait_for(lambda: [m for m in state.messages_in("C0METRICS") if m["text"] == payload["call_id"]],
             timeout=90, message="the Slack message")

    def counted():
        text = requests.get(f"{svc.url}/metrics", timeout=10).text
        count = sample(text, "pbxrelay_hook_to_effect_seconds_count", integration="slack")
        return text if count == count_before + 1 else None

    after = wait_for(counted, timeout=30, message="the hook->effect count to rise by one")
    assert sample(after, "pbxrelay_hook_to_effect_seconds_bucket", integration="slack", le="+Inf") == count_before + 1
    # Measured in the pool processes (task_postrun), exported by the receiver's gunicorn worker.
    assert sample(after, "pbxrelay_task_seconds_count", task="pbxrelay.ingest", state="SUCCESS") >= 1
    assert sample(after, "pbxrelay_task_seconds_count", task="pbxrelay.run_action", state="SUCCESS") >= 1
    assert sample(after, "pbxrelay_hooks_received_total") >= 1
    assert re.search(r'^pbxrelay_queue_depth\{queue="ingest"\} \d', after, re.M)
    assert re.search(r'^pbxrelay_queue_depth\{queue="actions"\} \d', after, re.M)

    delivery = next(d for d in svc.deliveries(ACCOUNT) if payload["call_id"] in d["event_key"])
    assert delivery["status"] == "succeeded" and delivery["succeeded_at"]
    assert re.fullmatch(r"[0-9a-f]{16}", delivery["request_id"])  # made by the receiver, kept to the action
