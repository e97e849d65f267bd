"""End to end: Kazoo fixtures in at a running receiver (JSON, form, GET), Slack messages out of a real worker."""

from __future__ import annotations

import json
import textwrap
from urllib.parse import urlsplit

import pytest
import requests

from service.sandbox.standins.base import serve_in_thread
from service.sandbox.standins.slack import SlackStandin
from service.sandbox.standins.slack import create_app as slack_app
from service.sandbox.virtualpbx.sender import encode_kazoo_form
from tests.conftest import FIXTURES, broker_url_for
from tests.harness import Service, wait_for

pytestmark = pytest.mark.e2e

FORMS = ("json", "form", "get")
ACCOUNTS = {"json": "a0000000000000000000000000000001", "form": "a0000000000000000000000000000002",
            "get": "a0000000000000000000000000000003"}
BOT_TOKEN = "xoxb-e2e-test-token"
WEBHOOKS = sorted((FIXTURES / "kazoo").glob("webhook_*.json"))
# What the call-level rules must see from the fixtures: the four channel hooks are one inbound call
# (bridged, so answered); the missed_call notification is another call with no legs; plus the voicemail.
EXPECTED_CALL_MESSAGES = {"call.started", "call.answered", "call.ended answered", "call.missed missed",
                          "voicemail.new"}


def rules_for(form: str) -> str:
    """A rules file: every raw hook to #<form>-raw, every call-level event to #<form>-calls."""
    return textwrap.dedent(f"""
        account: {{id: {ACCOUNTS[form]}, name: Acme {form}, timezone: America/New_York}}
        connections:
          team-slack: {{integration: slack, bot_token: env:E2E_SLACK_TOKEN}}
        rules:
          - name: raw hooks
            on: virtualpbx.*
            do:
              - use: team-slack
                action: post_message
                with: {{channel: "#{form}-raw", text: "{{{{ event.type }}}}|{{{{ subtype | default('') }}}}"}}
          - name: calls
            on: [call.started, call.answered, call.ended, call.missed]
            do:
              - use: team-slack
                action: post_message
                with:
                  channel: "#{form}-calls"
                  text: "{{{{ event.type }}}}{{% if event.type in ('call.ended', 'call.missed') %}} \
{{{{ outcome }}}}{{% endif %}}"
          - name: voicemail
            on: voicemail.new
            do:
              - use: team-slack
                action: post_message
                with: {{channel: "#{form}-calls", text: "voicemail.new", layout: call_card}}
    """)


@pytest.fixture(scope="module")
def slack():
    """The Slack stand-in, with the bot token and one raw and one calls channel per delivery form."""
    state = SlackStandin(rate_limit_max=None)
    state.add_token(BOT_TOKEN)
    for i, form in enumerate(FORMS):
        state.add_channel(f"C{i}RAW", f"{form}-raw")
        state.add_channel(f"C{i}CALLS", f"{form}-calls")
    server = serve_in_thread(slack_app(state))
    yield state, server
    server.stop()


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def service(request, tmp_path_factory, redis_url, slack):
    """A running receiver, worker and scheduler with three accounts, one per delivery form; on each broker."""
    import uuid

    state, server = slack
    state.reset()  # the other broker's run posted to the same channels
    tmp = tmp_path_factory.mktemp("e2e")
    broker = broker_url_for(request, request.param)
    svc = Service(tmp, redis_url=redis_url, namespace=f"e2e{uuid.uuid4().hex[:8]}",
                  env={"PBXRELAY_SLACK_API_URL": f"{server.url}/api/", "E2E_SLACK_TOKEN": BOT_TOKEN,
                       **({"PBXRELAY_BROKER_URL": broker} if broker else {})})
    svc.cli("migrate")
    svc.hooks = {}
    for form in FORMS:
        svc.hooks[form] = svc.add_account(ACCOUNTS[form])["hook_url"]
        rules = tmp / f"{form}.yaml"
        rules.write_text(rules_for(form))
        svc.cli("rules", "apply", str(rules))
    svc.start_web()
    svc.start_worker(concurrency=4)
    svc.start_scheduler()
    yield svc
    svc.stop()
    if broker:
        svc.delete_queues()


def deliver(url: str, payload: dict, form: str) -> requests.Response:
    """Send one payload as Kazoo would with http_verb/format set for ``form``."""
    if form == "json":
        return requests.post(url, data=json.dumps(payload, indent=4), timeout=10,
                             headers={"Content-Type": "application/json"})
    if form == "form":
        return requests.post(url, data=encode_kazoo_form(payload), timeout=10,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    return requests.get(f"{url}?{encode_kazoo_form(payload)}", timeout=10)


def texts(state: SlackStandin, channel: str) -> list[str]:
    """Message texts the stand-in recorded in a channel."""
    return [m["text"] for m in state.messages_in(channel)]


@pytest.mark.parametrize("form", FORMS)
def test_every_fixture_reaches_slack_as_the_rules_say(service, slack, form):
    """Each Kazoo fixture, in each delivery form, gives its raw message and the call-level messages."""
    state, _ = slack
    index = FORMS.index(form)
    for path in WEBHOOKS:
        response = deliver(service.hooks[form], json.loads(path.read_text()), form)
        assert response.status_code == 200, (path.name, response.text)
    raw_expected = sorted(
        f"virtualpbx.{p}" for p in ["channel_create", "channel_answer", "channel_bridge", "channel_destroy",
                                    "parking", "object"]) + sorted(
        f"virtualpbx.notifications|{s}" for s in ["voicemail_new", "voicemail_saved", "voicemail_full",
                                                  "missed_call", "webhook_disabled"])

    def raw_done():
        got = texts(state, f"C{index}RAW")
        return got if len(got) >= len(raw_expected) else None

    got = wait_for(raw_done, timeout=90, message=f"{form}: raw messages")
    normalised = sorted(t.replace("|park_parked", "").replace("|user.doc_created", "").rstrip("|") for t in got)
    assert normalised == sorted(raw_expected)

    calls = wait_for(lambda: (lambda t: t if len(t) >= len(EXPECTED_CALL_MESSAGES) else None)(
        texts(state, f"C{index}CALLS")), timeout=90, message=f"{form}: call messages")
    assert sorted(calls) == sorted(EXPECTED_CALL_MESSAGES)
    voicemail = next(m for m in state.messages_in(f"C{index}CALLS") if m["text"] == "voicemail.new")
    assert voicemail["blocks"], "the call_card layout sends Block Kit"
    log = service.deliveries(ACCOUNTS[form])
    assert {d["status"] for d in log} == {"succeeded"}
    assert len(log) == len(raw_expected) + len(EXPECTED_CALL_MESSAGES)


def test_duplicate_delivery_gives_one_message(service, slack):
    """The same hook delivered three times posts once; the copies are quarantined as duplicates."""
    state, _ = slack
    payload = json.loads((FIXTURES / "kazoo/webhook_parking_park_parked.json").read_text())
    payload["call_id"] = "dup-test-call"
    before = len(texts(state, "C0RAW"))
    for _ in range(3):
        assert deliver(service.hooks["json"], payload, "json").status_code == 200
    wait_for(lambda: len(texts(state, "C0RAW")) == before + 1, timeout=60, message="one parking message")
    duplicates = wait_for(lambda: [q for q in service.quarantine(ACCOUNTS["json"]) if "duplicate" in q["reason"]
                                   and "dup-test-call" in q["body"]], timeout=30, message="quarantined copies")
    assert len(duplicates) == 2
    assert len(texts(state, "C0RAW")) == before + 1


@pytest.mark.parametrize("body, content_type, reason", [
    (b"{not json", "application/json", "malformed: invalid JSON"),
    (b"\x00\xff", "application/x-www-form-urlencoded", "malformed: body is not UTF-8"),
    (b'{"hello": "world"}', "application/json", "unknown hook type"),
], ids=["broken-json", "binary", "unknown-hook"])
def test_malformed_and_unknown_bodies_get_200_and_are_quarantined(service, body, content_type, reason):
    """The receiver answers exactly 200; the worker keeps the raw body with the reason."""
    response = requests.post(service.hooks["form"], data=body, headers={"Content-Type": content_type}, timeout=10)
    assert response.status_code == 200
    kept = wait_for(lambda: [q for q in service.quarantine(ACCOUNTS["form"]) if q["reason"].startswith(reason)],
                    timeout=30, message=f"quarantine entry {reason!r}")
    assert kept


def test_wrong_token_is_404(service):
    """A made-up token is refused with 404 and nothing is queued or quarantined."""
    base = urlsplit(service.hooks["json"])
    response = requests.post(f"{base.scheme}://{base.netloc}/hooks/virtualpbx/not-a-real-token", json={}, timeout=10)
    assert response.status_code == 404
