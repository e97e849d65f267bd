"""SlackIntegration against the Slack stand-in over real HTTP, with the real Redis rate limiter."""

from __future__ import annotations

import http.server
import json
import pickle
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from integrations.base import ActionContext, AuthError, PermanentError, RetryableError
from integrations.slack import SlackConfig, SlackIntegration
from integrations.slack.cards import FIELD_MAX, FIELDS_MAX, HEADER_MAX, SECTION_TEXT_MAX, call_card
from service.sandbox.standins.slack import SlackStandin, create_app
from tests.integrations.conftest import sandbox_config

FIXTURES = Path(__file__).resolve().parents[3] / "integrations" / "slack" / "fixtures"
TOKEN = "xoxb-1111-2222-testsecrettoken"
HOOK_PATH = "T0TEST/B0TEST/hooksecretXYZ123"
CALLS, OTHER, ARCHIVED, OUTSIDE = "C0CALLS001", "C0OTHER002", "C0ARCH0003", "C0OUT00004"
CONNECTION = "acc:team-slack"


def fixture(name: str):
    """A JSON body from integrations/slack/fixtures."""
    return json.loads((FIXTURES / name).read_text())


@dataclass
class Slack:
    """A running stand-in and its state."""

    state: SlackStandin
    url: str

    @property
    def api(self) -> str:
        """The Web API base URL, as the lead passes it in ctx.api_urls["slack"]."""
        return self.url + "/api/"

    @property
    def hook_url(self) -> str:
        """The registered incoming-webhook URL."""
        return f"{self.url}/services/{HOOK_PATH}"


@pytest.fixture(scope="module")
def _server(serve_standin):
    """One stand-in server per module."""
    served = serve_standin(SlackStandin(), create_app)
    return Slack(served.state, served.url)


@pytest.fixture
def slack(_server):
    """The stand-in, freshly set up: one token, four channels and one webhook."""
    state = _server.state
    state.reset(registrations=True)
    state.rate_limit_max, state.rate_limit_window = 5, 1.0
    state.add_token(TOKEN)
    state.add_channel(CALLS, "calls")
    state.add_channel(OTHER, "other")
    state.add_channel(ARCHIVED, "old-calls", is_archived=True)
    state.add_channel(OUTSIDE, "private-ish", is_member=False)
    state.add_webhook(CALLS, HOOK_PATH)
    return _server


@pytest.fixture
def make_ctx(slack, action_context):
    """Build an ActionContext as the worker does; paced=False keeps ActionContext's no-op pacing."""
    def build(*, key: str = "k1", attempt: int = 1, event: dict | None = None, paced: bool = True) -> ActionContext:
        return action_context(account_id="acc", idempotency_key=key, connection_id=CONNECTION, attempt=attempt,
                              api_urls={"slack": slack.api}, event=event or {}, paced=paced)
    return build


def bot(**config) -> SlackIntegration:
    """The integration with a bot token."""
    return SlackIntegration(SlackConfig(bot_token=TOKEN, **config))


def webhook(slack: Slack, **config) -> SlackIntegration:
    """The integration with the stand-in's incoming webhook."""
    return SlackIntegration(sandbox_config(SlackConfig, webhook_url=slack.hook_url, **config))


def free_port_url() -> str:
    """A URL on a local port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def event(etype: str, **data) -> dict:
    """An Event.to_json() document."""
    return {"type": etype, "account_id": "acc", "key": f"acc:call-1:{etype}",
            "occurred_at": "2024-05-01T14:03:00+00:00", "data": data}


CALLER = {"name": "Alice Example", "number": "+15555550123"}
CALLEE = {"name": "Sales", "number": "+15555550100"}
AGENT = {"name": "Bob Agent", "number": "201"}
CALL_DATA = {"call_id": "call-1", "direction": "inbound", "caller": CALLER, "callee": CALLEE,
             "started_at": "2024-05-01T14:03:00+00:00", "ended_at": "2024-05-01T14:05:05+00:00"}


# -- happy paths ---------------------------------------------------------------------------------

def test_bot_token_post_records_message_with_idempotency_metadata(slack, make_ctx):
    result = bot().run("post_message", {"channel": "#calls", "text": "Missed call from +15555550123"},
                       make_ctx(key="acc:call-1:rule-1"))
    [message] = slack.state.messages_in(CALLS)
    assert result.external_id == f"{CALLS}:{message['ts']}"
    assert not result.deduplicated
    assert message["text"] == "Missed call from +15555550123"
    assert message["metadata"] == {"event_type": "pbxrelay_delivery",
                                   "event_payload": {"idempotency_key": "acc:call-1:rule-1"}}


def test_default_channel_username_icon_and_thread(slack, make_ctx):
    integration = bot(default_channel=OTHER)
    parent = integration.run("post_message", {"text": "parent"}, make_ctx(key="p"))
    parent_ts = parent.external_id.split(":", 1)[1]
    integration.run("post_message", {"channel": CALLS, "text": "reply", "thread_ts": parent_ts,
                                     "username": "PBX", "icon_emoji": ":telephone:"},
                    make_ctx(key="r"))
    assert [m["text"] for m in slack.state.messages_in(OTHER)] == ["parent"]
    [reply] = slack.state.messages_in(CALLS)
    assert (reply["thread_ts"], reply["username"], reply["icon_emoji"]) == (parent_ts, "PBX", ":telephone:")


def test_no_channel_anywhere_is_permanent(slack, make_ctx):
    with pytest.raises(PermanentError, match="no channel"):
        bot().run("post_message", {"text": "hi"}, make_ctx())
    assert slack.state.calls == []


def test_block_kit_blocks_are_sent_with_text_fallback(slack, make_ctx):
    body = fixture("block_kit_message.json")
    bot().run("post_message", {"channel": CALLS, "text": body["text"], "blocks": body["blocks"]},
              make_ctx())
    [message] = slack.state.messages_in(CALLS)
    assert (message["text"], message["blocks"]) == (body["text"], body["blocks"])


def test_webhook_post_records_message_in_its_channel(slack, make_ctx):
    body = fixture("block_kit_message.json")
    result = webhook(slack).run("post_message", {"text": body["text"], "blocks": body["blocks"]},
                                make_ctx())
    [message] = slack.state.messages_in(CALLS)
    assert (message["via"], message["text"], message["blocks"]) == ("webhook", body["text"], body["blocks"])
    assert result.external_id is None and not result.deduplicated


def test_webhook_refuses_a_channel_it_cannot_honour(slack, make_ctx):
    with pytest.raises(PermanentError, match="webhook always posts to the channel"):
        webhook(slack).run("post_message", {"channel": OTHER, "text": "hi"}, make_ctx())
    assert slack.state.calls == []


# -- call_card layout ----------------------------------------------------------------------------

CARD_CASES = {
    "call.started": (dict(CALL_DATA), "Incoming call", ["*Caller*\nAlice Example (+15555550123)",
                                                        "*Callee*\nSales (+15555550100)", "*Direction*\ninbound"]),
    "call.answered": (dict(CALL_DATA, answered_by=AGENT), "Call answered", ["*Answered by*\nBob Agent (201)"]),
    "call.missed": (dict(CALL_DATA, answered_by=None, duration=32, outcome="no_answer", voicemail_left=True),
                    "Missed call", ["*Duration*\n32s", "*Outcome*\nno_answer", "*Voicemail left*\nyes"]),
    "call.ended": (dict(CALL_DATA, answered_by=AGENT, duration=125, talk_time=3723, outcome="answered"),
                   "Call ended", ["*Duration*\n2m 05s", "*Talk time*\n1h 02m 03s", "*Answered by*\nBob Agent (201)"]),
    "voicemail.new": ({"caller": CALLER, "mailbox": "Sales VM", "voicemail_id": "vm-9", "length_seconds": 14,
                       "transcript": "Hi, please call me back <!here>"},
                      "New voicemail", ["*From*\nAlice Example (+15555550123)", "*Mailbox*\nSales VM",
                                        "*Length*\n14s"]),
}


@pytest.mark.parametrize("etype", list(CARD_CASES))
def test_call_card_layout_for_each_event_type(slack, etype, make_ctx):
    data, title, fields = CARD_CASES[etype]
    bot().run("post_message", {"channel": CALLS, "text": f"{etype} fallback", "layout": "call_card"},
              make_ctx(event=event(etype, **data)))
    [message] = slack.state.messages_in(CALLS)
    header, section, *rest = message["blocks"]
    assert message["text"] == f"{etype} fallback"
    assert header["type"] == "header" and title in header["text"]["text"]
    shown = [f["text"] for f in section["fields"]]
    assert all(f in shown for f in fields), shown
    started = next(f for f in shown if f.startswith("*Started*")) if etype != "voicemail.new" else None
    if started:  # rendered in each reader's timezone by Slack, with a UTC fallback
        assert started == "*Started*\n<!date^1714572180^{date_short_pretty} {time}|2024-05-01 14:03 UTC>"
    if etype == "voicemail.new":
        assert rest[0]["text"]["text"] == "*Transcript*\n> Hi, please call me back &lt;!here&gt;"


def test_call_card_for_another_event_type_is_permanent(slack, make_ctx):
    with pytest.raises(PermanentError, match="call_card"):
        bot().run("post_message", {"channel": CALLS, "text": "x", "layout": "call_card"},
                  make_ctx(event=event("crm.event", foo=1)))
    assert slack.state.calls == []


_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3000),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3),
                            max_leaves=8)
_card_keys = st.sampled_from(["call_id", "direction", "caller", "callee", "answered_by", "started_at", "ended_at",
                              "duration", "talk_time", "outcome", "voicemail_left", "mailbox", "vmbox_id",
                              "voicemail_id", "length_seconds", "transcript"])


@settings(max_examples=150, deadline=None)
@given(etype=st.sampled_from(["call.started", "call.answered", "call.missed", "call.ended", "voicemail.new"]),
       data=st.dictionaries(_card_keys, _json_values | st.fixed_dictionaries(
           {"name": st.text(max_size=3000), "number": st.text(max_size=40)})))
def test_call_card_survives_any_event_data_within_block_kit_limits(etype, data):
    blocks = call_card({"type": etype, "data": data})
    assert blocks[0]["type"] == "header" and len(blocks[0]["text"]["text"]) <= HEADER_MAX
    for block in blocks:
        assert isinstance(block["type"], str)
        assert len(block.get("fields", [])) <= FIELDS_MAX
        assert all(len(f["text"]) <= FIELD_MAX for f in block.get("fields", []))
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= SECTION_TEXT_MAX
        for element in block.get("elements", []):
            assert len(element["text"]) <= FIELD_MAX and "<!" not in element["text"]


# -- failure table -------------------------------------------------------------------------------

@dataclass
class Failure:
    """One row: how to break Slack, and what the integration must raise."""

    transport: str  # "api" or "webhook"
    expected: type
    faults: tuple = ()
    channel: str = CALLS
    token: str = TOKEN
    prepare: object = None  # callable(state) for failures that are real stand-in behaviour
    refused: bool = False
    retry_after: float | None = None
    code: str | None = None


# Timeout rows answer (too late) with an error rather than posting, so nothing lands in a later test.
LATE = ({"delay": 1.0, "status": 500},)
ECHO = f"<html>proxy error for Bearer {TOKEN} at /services/{HOOK_PATH}</html>"

FAILURES = {
    "api-timeout": Failure("api", RetryableError, LATE, code="network"),
    "api-refused": Failure("api", RetryableError, refused=True, code="network"),
    "api-401-invalid_auth": Failure("api", AuthError, ({"status": 401, "body": fixture("error_invalid_auth.json")},),
                                    code="invalid_auth"),
    "api-200-invalid_auth-unknown-token": Failure("api", AuthError, token="xoxb-9999-unknown", code="invalid_auth"),
    "api-token_revoked": Failure("api", AuthError, prepare=lambda s: s.revoke_token(TOKEN), code="token_revoked"),
    "api-missing_scope": Failure("api", AuthError, ({"body": fixture("error_missing_scope.json")},),
                                 code="missing_scope"),
    "api-403-html": Failure("api", AuthError, ({"status": 403, "body": "<html>Forbidden</html>"},), code="http_403"),
    "api-404-channel_not_found": Failure("api", PermanentError, channel="#no-such-channel", code="channel_not_found"),
    "api-is_archived": Failure("api", PermanentError, channel=ARCHIVED, code="is_archived"),
    "api-not_in_channel": Failure("api", PermanentError, channel=OUTSIDE, code="not_in_channel"),
    "api-invalid_blocks": Failure("api", PermanentError, ({"body": fixture("error_invalid_blocks.json")},),
                                  code="invalid_blocks"),
    "api-unknown-error": Failure("api", PermanentError, ({"body": {"ok": False, "error": "brand_new_error"}},),
                                 code="brand_new_error"),
    "api-429-retry-after": Failure("api", RetryableError,
                                   ({"status": 429, "retry_after": 7, "body": fixture("error_ratelimited.json")},),
                                   retry_after=7.0, code="ratelimited"),
    "api-429-no-retry-after": Failure("api", RetryableError, ({"status": 429},), retry_after=1.0, code="ratelimited"),
    "api-500": Failure("api", RetryableError, ({"status": 500},), code="internal_error"),
    "api-503": Failure("api", RetryableError, ({"status": 503, "body": {"ok": False}},), code="http_503"),
    "api-200-internal_error": Failure("api", RetryableError, ({"body": {"ok": False, "error": "internal_error"}},),
                                      code="internal_error"),
    "api-502-malformed": Failure("api", RetryableError, ({"status": 502, "body": ECHO},), code="malformed_response"),
    "api-200-malformed": Failure("api", PermanentError, ({"status": 200, "body": ECHO},), code="malformed_response"),
    "webhook-timeout": Failure("webhook", RetryableError, LATE, code="network"),
    "webhook-refused": Failure("webhook", RetryableError, refused=True, code="network"),
    "webhook-403-invalid_token": Failure("webhook", AuthError, prepare=lambda s: s.revoke_webhook(HOOK_PATH),
                                         code="invalid_token"),
    "webhook-404-no_service": Failure("webhook", AuthError, prepare=lambda s: s.webhooks.clear(), code="no_service"),
    "webhook-410-channel_is_archived": Failure("webhook", PermanentError, prepare=lambda s: s.archive_channel(CALLS),
                                               code="channel_is_archived"),
    "webhook-400-invalid_payload": Failure("webhook", PermanentError, ({"status": 400, "body": "invalid_payload"},),
                                           code="invalid_payload"),
    "webhook-429-retry-after": Failure("webhook", RetryableError, ({"status": 429, "retry_after": 7},),
                                       retry_after=7.0, code="ratelimited"),
    "webhook-429-no-retry-after": Failure("webhook", RetryableError, ({"status": 429, "body": "rate_limited"},),
                                          retry_after=1.0, code="ratelimited"),
    "webhook-500": Failure("webhook", RetryableError, ({"status": 500},), code="internal_error"),
    "webhook-503": Failure("webhook", RetryableError, ({"status": 503, "body": "<html>down</html>"},),
                           code="http_503"),
    "webhook-502-malformed": Failure("webhook", RetryableError, ({"status": 502, "body": ECHO},), code="http_502"),
    "webhook-200-malformed": Failure("webhook", PermanentError, ({"status": 200, "body": ECHO},),
                                     code="malformed_response"),
}


@pytest.mark.parametrize("row", list(FAILURES.values()), ids=list(FAILURES))
def test_failure_table(slack, limiter, row, make_ctx):
    slack.state.push_faults(list(row.faults))
    if row.prepare:
        row.prepare(slack.state)
    base = free_port_url() if row.refused else slack.url
    ctx = make_ctx()
    ctx.api_urls = {"slack": base + "/api/"}
    # A short client timeout against the 1 s stand-in delay keeps the timeout rows fast.
    if row.transport == "api":
        integration = SlackIntegration(SlackConfig(bot_token=row.token, timeout=0.3))
        params = {"channel": row.channel, "text": "hello"}
    else:
        integration = SlackIntegration(sandbox_config(SlackConfig, webhook_url=f"{base}/services/{HOOK_PATH}",
                                                      timeout=0.3))
        params = {"text": "hello"}

    with pytest.raises(Exception) as info:
        integration.run("post_message", params, ctx)

    error = info.value
    assert type(error) is row.expected, f"{type(error).__name__}: {error}"
    assert error.code == row.code, str(error)
    if row.retry_after is not None:
        assert error.retry_after == row.retry_after
    if row.code == "ratelimited":  # the shared bucket is shut for Retry-After, for every worker
        bucket = f"slack:{CONNECTION}:{row.channel if row.transport == 'api' else 'webhook'}"
        assert row.retry_after - 1 < limiter.acquire(bucket, 1.0, 1.0) <= row.retry_after
    for secret in (TOKEN, row.token, HOOK_PATH, "hooksecretXYZ123"):
        assert secret not in str(error) and secret not in repr(error.args), str(error)
    assert str(error).startswith("slack ")


def test_429_penalises_the_shared_channel_bucket(slack, make_ctx):
    slack.state.push_faults([{"status": 429, "retry_after": 3}])
    with pytest.raises(RetryableError):
        bot().run("post_message", {"channel": CALLS, "text": "first"}, make_ctx(key="a"))
    calls_before = len(slack.state.calls)

    # Another worker, another event, same channel: held off by the penalty without asking Slack.
    with pytest.raises(RetryableError) as info:
        bot().run("post_message", {"channel": CALLS, "text": "second"}, make_ctx(key="b"))
    assert info.value.code == "paced" and 2.0 < info.value.retry_after <= 3.0
    assert len(slack.state.calls) == calls_before
    bot().run("post_message", {"channel": OTHER, "text": "other channel"}, make_ctx(key="c"))


def test_standin_rate_limit_429_is_retryable_with_its_retry_after(slack, make_ctx):
    slack.state.rate_limit_max = 1
    no_pacing = make_ctx(paced=False)
    bot().run("post_message", {"channel": CALLS, "text": "one"}, no_pacing)
    with pytest.raises(RetryableError) as info:
        bot().run("post_message", {"channel": CALLS, "text": "two"}, make_ctx(paced=False, key="k2"))
    assert (info.value.code, info.value.retry_after, info.value.status) == ("ratelimited", 1.0, 429)
    assert len(slack.state.messages_in(CALLS)) == 1


# -- pacing --------------------------------------------------------------------------------------

def test_pacing_is_shared_across_workers_per_channel(slack, make_ctx):
    first, second = make_ctx(key="a"), make_ctx(key="b")
    bot().run("post_message", {"channel": CALLS, "text": "first"}, first)
    with pytest.raises(RetryableError) as info:
        bot().run("post_message", {"channel": CALLS, "text": "second"}, second)
    assert info.value.code == "paced" and 0 < info.value.retry_after <= 1.5
    bot().run("post_message", {"channel": OTHER, "text": "another channel is not blocked"}, second)
    assert [m["text"] for m in slack.state.messages] == ["first", "another channel is not blocked"]


def test_webhook_posts_are_paced_too(slack, make_ctx):
    webhook(slack).run("post_message", {"text": "first"}, make_ctx(key="a"))
    with pytest.raises(RetryableError) as info:
        webhook(slack).run("post_message", {"text": "second"}, make_ctx(key="b"))
    assert info.value.code == "paced"
    assert slack.state.calls_to("webhook") == 1


# -- exactly-once help on retries ---------------------------------------------------------------
# Pacing is not the subject here: these contexts use ActionContext's no-op limiter so a retry can
# follow the failed attempt at once instead of a second later.

def test_retry_after_ambiguous_failure_finds_the_earlier_message(slack, make_ctx):
    bot().run("post_message", {"channel": CALLS, "text": "unrelated"}, make_ctx(paced=False, key="other-key"))
    slack.state.push_faults([{"status": 500, "commit": True}])  # posted, but the worker never hears so
    with pytest.raises(RetryableError):
        bot().run("post_message", {"channel": CALLS, "text": "missed"}, make_ctx(paced=False, key="k1"))
    [_, posted] = slack.state.messages_in(CALLS)

    result = bot().run("post_message", {"channel": CALLS, "text": "missed"}, make_ctx(paced=False, key="k1",
                                                                                       attempt=2))
    assert result.deduplicated and result.external_id == f"{CALLS}:{posted['ts']}"
    assert len(slack.state.messages_in(CALLS)) == 2
    assert slack.state.calls_to("conversations.history") == 1


def test_retry_after_timeout_in_a_thread_finds_the_reply(slack, make_ctx):
    parent = bot().run("post_message", {"channel": CALLS, "text": "parent"}, make_ctx(paced=False, key="p"))
    thread_ts = parent.external_id.split(":", 1)[1]
    integration = bot(timeout=0.3)
    slack.state.push_faults([{"delay": 0.6}])  # Slack posts the reply after the client gave up
    params = {"channel": CALLS, "text": "reply", "thread_ts": thread_ts}
    with pytest.raises(RetryableError):
        integration.run("post_message", params, make_ctx(paced=False, key="k1"))
    reply_ts = None
    for _ in range(50):  # wait for the delayed request to land in the stand-in
        replies = [m for m in slack.state.messages_in(CALLS) if m.get("thread_ts") == thread_ts]
        if replies:
            reply_ts = replies[0]["ts"]
            break
        time.sleep(0.05)
    assert reply_ts is not None

    result = integration.run("post_message", params, make_ctx(paced=False, key="k1", attempt=2))
    assert result.deduplicated and result.external_id == f"{CALLS}:{reply_ts}"
    assert slack.state.calls_to("conversations.replies") == 1
    assert len(slack.state.messages_in(CALLS)) == 2


def test_retry_without_earlier_delivery_posts(slack, make_ctx):
    result = bot().run("post_message", {"channel": CALLS, "text": "first try failed before Slack"},
                       make_ctx(paced=False, attempt=3))
    assert not result.deduplicated
    assert slack.state.calls_to("conversations.history") == 1 and len(slack.state.messages_in(CALLS)) == 1


def test_first_attempt_never_reads_history(slack, make_ctx):
    bot().run("post_message", {"channel": CALLS, "text": "hi"}, make_ctx(paced=False))
    assert slack.state.calls_to("conversations.history") == 0


def test_channel_name_retry_is_at_least_once(slack, make_ctx):
    slack.state.push_faults([{"status": 500, "commit": True}])
    with pytest.raises(RetryableError):
        bot().run("post_message", {"channel": "#calls", "text": "hi"}, make_ctx(paced=False))
    result = bot().run("post_message", {"channel": "#calls", "text": "hi"}, make_ctx(paced=False, attempt=2))
    assert not result.deduplicated
    assert slack.state.calls_to("conversations.history") == 0  # it only accepts IDs: not even asked
    assert len(slack.state.messages_in(CALLS)) == 2


def test_unreadable_history_falls_through_and_posts(slack, make_ctx):
    writer_only = "xoxb-3333-writeonly"
    slack.state.add_token(writer_only, {"chat:write"})
    integration = SlackIntegration(SlackConfig(bot_token=writer_only))
    slack.state.push_faults([{"status": 500, "commit": True}])
    with pytest.raises(RetryableError):
        integration.run("post_message", {"channel": CALLS, "text": "hi"}, make_ctx(paced=False))
    result = integration.run("post_message", {"channel": CALLS, "text": "hi"}, make_ctx(paced=False, attempt=2))
    assert not result.deduplicated
    assert slack.state.calls_to("conversations.history") == 1 and len(slack.state.messages_in(CALLS)) == 2


def test_history_outage_on_retry_defers_instead_of_risking_a_duplicate(slack, make_ctx):
    slack.state.push_faults([{"status": 503}])
    with pytest.raises(RetryableError) as info:
        bot().run("post_message", {"channel": CALLS, "text": "hi"}, make_ctx(paced=False, attempt=2))
    assert "conversations.history" in str(info.value)
    assert slack.state.calls_to("chat.postMessage") == 0


# -- errors, config, hostile input ---------------------------------------------------------------

def test_raised_errors_survive_pickling(slack, make_ctx):
    raised = []
    for faults, channel in (([{"status": 429, "retry_after": 4}], CALLS), ([], "#nope"), ([], ARCHIVED)):
        slack.state.push_faults(faults)
        with pytest.raises(PermanentError if not faults else RetryableError) as info:
            bot().run("post_message", {"channel": channel, "text": "x"}, make_ctx(paced=False))
        raised.append(info.value)
    with pytest.raises(AuthError) as info:
        SlackIntegration(SlackConfig(bot_token="xoxb-unknown")).run(
            "post_message", {"channel": CALLS, "text": "x"}, make_ctx(paced=False))
    raised.append(info.value)
    bot().run("post_message", {"channel": OTHER, "text": "x"}, make_ctx())
    with pytest.raises(RetryableError) as info:
        bot().run("post_message", {"channel": OTHER, "text": "x"}, make_ctx())
    raised.append(info.value)

    for error in raised:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert (str(copy), copy.retry_after, copy.status, copy.code) == \
               (str(error), error.retry_after, error.status, error.code)
    assert raised[0].retry_after == 4.0 and raised[-1].retry_after > 0


def test_config_never_shows_secrets(slack):
    for config in (SlackConfig(bot_token=TOKEN, default_channel="#calls"),
                   sandbox_config(SlackConfig, webhook_url=slack.hook_url)):
        shown = repr(config) + str(config) + config.model_dump_json() + repr(SlackIntegration(config).config)
        assert TOKEN not in shown and HOOK_PATH not in shown and "**********" in shown


@pytest.mark.parametrize("config", [
    {},
    {"bot_token": TOKEN, "webhook_url": "https://hooks.slack.com/services/T1/B1/secretpathvalue"},
    {"bot_token": "xapp-1-secretAppLevelToken"},
    {"webhook_url": "ftp://hooks.slack.com/services/T1/B1/secretpathvalue"},
    {"bot_token": TOKEN, "surprise": 1},
    {"bot_token": TOKEN, "timeout": 0},
], ids=["none", "both", "wrong-token-kind", "wrong-url-scheme", "unknown-key", "zero-timeout"])
def test_bad_config_is_rejected_without_echoing_secrets(config):
    with pytest.raises(ValidationError) as info:
        SlackConfig(**config)
    text = str(info.value)
    assert "secretAppLevelToken" not in text and "secretpathvalue" not in text and TOKEN not in text


HOSTILE = {
    "text-over-40000": ({"text": "x" * 40_001}, "text"),
    "text-empty": ({"text": ""}, "text"),
    "text-blank": ({"text": " \n\t "}, "blank"),
    "text-missing": ({}, "text"),
    "text-not-a-string": ({"text": {"$gt": ""}}, "text"),
    "blocks-a-string": ({"text": "t", "blocks": "[{\"type\": \"divider\"}]"}, "blocks"),
    "blocks-of-numbers": ({"text": "t", "blocks": [1, 2]}, "blocks"),
    "block-without-type": ({"text": "t", "blocks": [{"text": "no type"}]}, "type"),
    "block-type-not-string": ({"text": "t", "blocks": [{"type": ["section"]}]}, "type"),
    "blocks-over-50": ({"text": "t", "blocks": [{"type": "divider"}] * 51}, "blocks"),
    "blocks-empty-list": ({"text": "t", "blocks": []}, "blocks"),
    "blocks-and-layout": ({"text": "t", "blocks": [{"type": "divider"}], "layout": "call_card"}, "not both"),
    "unknown-layout": ({"text": "t", "layout": "fancy"}, "layout"),
    "thread-ts-garbage": ({"text": "t", "thread_ts": "'; DROP TABLE"}, "thread_ts"),
    "channel-with-space": ({"text": "t", "channel": "#calls and more"}, "channel"),
    "unknown-param": ({"text": "t", "attachments": [{"fallback": "x"}]}, "attachments"),
}


@pytest.mark.parametrize("params,mentions", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_params_are_a_clear_permanent_error(slack, params, mentions, make_ctx):
    params = {"channel": CALLS, **params} if "channel" not in params else params
    with pytest.raises(PermanentError) as info:
        bot().run("post_message", params, make_ctx())
    assert "invalid parameters" in str(info.value) and mentions in str(info.value)
    assert slack.state.calls == []


@pytest.mark.parametrize("text", [
    "x" * 40_000,
    "📞 Anruf von Jürgen — 日本語 — مرحبا — \u200b\u202e reversed",
    "{{ caller.name }} ${CALLER} %(number)s {0} <!channel> <@U123> *bold* `code` &amp;",
    "line1\r\nline2\x00nul\x1b[31m",
], ids=["exactly-40000", "unicode", "template-looking", "control-chars"])
def test_unusual_but_valid_text_is_posted_verbatim(slack, text, make_ctx):
    bot().run("post_message", {"channel": CALLS, "text": text}, make_ctx())
    [message] = slack.state.messages_in(CALLS)
    assert message["text"] == text


def test_blocks_slack_rejects_give_its_reasons(slack, make_ctx):
    slack.state.push_faults([{"body": fixture("error_invalid_blocks.json")}])
    with pytest.raises(PermanentError) as info:
        bot().run("post_message", {"channel": CALLS, "text": "t", "blocks": [{"type": "section"}]},
                  make_ctx())
    assert "missing required field: type [json-pointer:/blocks/0]" in str(info.value)


# -- connection reuse ----------------------------------------------------------------------------

class _KeepAliveSlack(http.server.BaseHTTPRequestHandler):
    """A minimal HTTP/1.1 keep-alive chat.postMessage (Werkzeug's server closes every connection): counts the
    connections it accepted and the tokens it saw."""

    protocol_version = "HTTP/1.1"
    connections: list = []
    tokens: list = []
    reads: list = []
    delay = 0.0  # seconds before each post's answer (so concurrent posts overlap)

    def setup(self):
        super().setup()
        self.connections.append(self.client_address)

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.tokens.append(self.headers["Authorization"])
        time.sleep(self.delay)
        body = json.dumps({"ok": True, "channel": CALLS, "ts": f"{time.time():.6f}"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.reads.append(self.path)
        body = json.dumps({"ok": True, "messages": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def keepalive_slack():
    """The keep-alive server on a free local port; yields its API base URL."""
    _KeepAliveSlack.connections, _KeepAliveSlack.tokens, _KeepAliveSlack.reads = [], [], []
    _KeepAliveSlack.delay = 0.0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveSlack)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/api/"
    server.shutdown()
    server.server_close()


def test_one_token_reuses_one_connection_another_token_gets_its_own(keepalive_slack, action_context):
    """Posts with one bot token share one keep-alive connection; another token never shares it."""
    def post(token: str, key: str) -> None:
        ctx = action_context(account_id="acc", idempotency_key=key, connection_id=CONNECTION, attempt=1,
                             api_urls={"slack": keepalive_slack}, event={}, paced=False)
        SlackIntegration(SlackConfig(bot_token=token)).run("post_message", {"channel": CALLS, "text": key}, ctx)

    for n in range(3):
        post(TOKEN, f"reuse-{n}")
    assert len(_KeepAliveSlack.connections) == 1, "three posts, one connection"
    post("xoxb-9999-8888-anothertoken", "other")
    assert len(_KeepAliveSlack.connections) == 2, "another token, its own connection"
    assert _KeepAliveSlack.tokens == [f"Bearer {TOKEN}"] * 3 + ["Bearer xoxb-9999-8888-anothertoken"]


def test_each_action_thread_keeps_its_own_connection_for_a_token(keepalive_slack, action_context):
    """12 threads (more than requests' pool of 10 per host) posting with one token at once, three rounds: each
    thread reuses its own keep-alive connection, so 12 connections in all, none opened and thrown away."""
    _KeepAliveSlack.delay = 0.3
    threads, rounds = 12, 3
    barrier, errors = threading.Barrier(threads), []

    def post_rounds(n: int) -> None:
        try:
            for r in range(rounds):
                barrier.wait(10)
                ctx = action_context(account_id="acc", idempotency_key=f"t{n}-{r}", connection_id=CONNECTION,
                                     attempt=1, api_urls={"slack": keepalive_slack}, event={}, paced=False)
                SlackIntegration(SlackConfig(bot_token=TOKEN)).run("post_message", {"channel": CALLS, "text": "x"},
                                                                   ctx)
        except Exception as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=post_rounds, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert not errors
    assert len(_KeepAliveSlack.tokens) == threads * rounds
    assert len(_KeepAliveSlack.connections) == threads


def test_a_pooled_token_still_cannot_reach_a_private_address_without_the_switch(slack, make_ctx):
    """The session kept for a token with private URLs allowed is not the one used without: the guard refuses."""
    bot().run("post_message", {"channel": CALLS, "text": "allowed"}, make_ctx(key="priv-1", paced=False))
    ctx = make_ctx(key="priv-2", paced=False)
    ctx.allow_private_urls = False
    with pytest.raises(PermanentError, match="api_url: .*loopback"):
        bot().run("post_message", {"channel": CALLS, "text": "refused"}, ctx)
    assert [m["text"] for m in slack.state.messages_in(CALLS)] == ["allowed"]


def test_a_retry_reads_history_as_slack_sdk_would(keepalive_slack, action_context):
    """The duplicate check's read sends Slack's booleans as "1" (as slack-sdk does), on the same connection."""
    ctx = action_context(account_id="acc", idempotency_key="k-read", connection_id=CONNECTION, attempt=2,
                         api_urls={"slack": keepalive_slack}, event={}, paced=False)
    bot().run("post_message", {"channel": CALLS, "text": "after a timeout"}, ctx)
    [read] = _KeepAliveSlack.reads
    assert read.startswith("/api/conversations.history?") and "include_all_metadata=1" in read
    assert f"channel={CALLS}" in read and len(_KeepAliveSlack.connections) == 1
