"""The Slack stand-in itself, spoken to over HTTP the way Slack documents (not through our client)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests

from service.sandbox.standins.slack import (
    DEFAULT_CHANNEL_ID,
    DEFAULT_TOKEN,
    DEFAULT_WEBHOOK_PATH,
    SlackStandin,
    create_app,
)

FIXTURES = Path(__file__).resolve().parents[3] / "integrations" / "slack" / "fixtures"
TOKEN = "xoxb-5555-standin-test"
HOOK = "T0TEST/B0TEST/hooksecret"
CHAN = "C0CALLS001"


@pytest.fixture(scope="module")
def server(serve_standin):
    """One stand-in for the module."""
    return serve_standin(SlackStandin(), create_app)


@pytest.fixture
def slack(server):
    """(base URL, state) with a fresh workspace: a token, #calls, an archived and a not-joined channel."""
    state = server.state
    state.reset(registrations=True)
    state.rate_limit_max, state.rate_limit_window = 5, 1.0
    state.answer_delay = 0.0
    state.add_token(TOKEN)
    state.add_channel(CHAN, "calls")
    state.add_channel("C0ARCH0002", "old", is_archived=True)
    state.add_channel("C0OUT00003", "outside", is_member=False)
    state.add_webhook(CHAN, HOOK)
    return server.url, state


def api(url: str, method: str, token: str | None = TOKEN, **kwargs) -> requests.Response:
    """Call a Web API method with a Bearer token (None: no Authorization header)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{url}/api/{method}", headers=headers, timeout=5, **kwargs)


def fixture(name: str):
    """A JSON body from integrations/slack/fixtures."""
    return json.loads((FIXTURES / name).read_text())


def keys_of(name: str) -> set[str]:
    """Top-level keys of a fixture body."""
    return set(fixture(name))


def test_post_accepts_json_and_form_bodies_and_returns_slack_shape(slack):
    url, state = slack
    as_json = api(url, "chat.postMessage", json={"channel": CHAN, "text": "json", "metadata": {
        "event_type": "pbxrelay_delivery", "event_payload": {"idempotency_key": "k"}}}).json()
    as_form = api(url, "chat.postMessage", data={"channel": "#calls", "text": "form",
                                                 "blocks": json.dumps([{"type": "divider"}])}).json()
    token_in_body = requests.post(f"{url}/api/chat.postMessage", data={"token": TOKEN, "channel": "calls",
                                                                       "text": "body token"}, timeout=5).json()
    assert set(as_json) == keys_of("chat_postMessage_ok.json")
    assert set(as_json["message"]) >= set(fixture("chat_postMessage_ok.json")["message"])
    assert as_json["ok"] and as_form["ok"] and token_in_body["ok"]
    assert [m["text"] for m in state.messages_in(CHAN)] == ["json", "form", "body token"]
    assert state.messages_in(CHAN)[1]["blocks"] == [{"type": "divider"}]
    ts = [m["ts"] for m in state.messages_in(CHAN)]
    assert all(re.fullmatch(r"\d{10}\.\d{6}", t) for t in ts) and ts == sorted(ts) and len(set(ts)) == 3


@pytest.mark.parametrize("token,body,error", [
    (None, {"channel": CHAN, "text": "t"}, "not_authed"),
    ("xoxb-nobody", {"channel": CHAN, "text": "t"}, "invalid_auth"),
    (TOKEN, {"channel": "C0NOPE0009", "text": "t"}, "channel_not_found"),
    (TOKEN, {"channel": "#nope", "text": "t"}, "channel_not_found"),
    (TOKEN, {"text": "t"}, "channel_not_found"),
    (TOKEN, {"channel": "C0ARCH0002", "text": "t"}, "is_archived"),
    (TOKEN, {"channel": "#outside", "text": "t"}, "not_in_channel"),
    (TOKEN, {"channel": CHAN}, "no_text"),
    (TOKEN, {"channel": CHAN, "text": ""}, "no_text"),
    (TOKEN, {"channel": CHAN, "text": "x" * 40_001}, "msg_too_long"),
    (TOKEN, {"channel": CHAN, "text": "t", "blocks": {"type": "divider"}}, "invalid_blocks"),
    (TOKEN, {"channel": CHAN, "text": "t", "blocks": [{"text": "untyped"}]}, "invalid_blocks"),
    (TOKEN, {"channel": CHAN, "text": "t", "blocks": [{"type": "divider"}] * 51}, "invalid_blocks"),
    (TOKEN, {"channel": CHAN, "text": "t", "metadata": {"event_payload": {}}}, "invalid_metadata_format"),
])
def test_post_errors_are_http_200_ok_false(slack, token, body, error):
    url, state = slack
    response = api(url, "chat.postMessage", token=token, json=body)
    assert response.status_code == 200 and response.json()["ok"] is False
    assert response.json()["error"] == error
    assert state.messages == []


def test_error_envelopes_match_slack_fixtures(slack):
    url, _ = slack
    assert api(url, "chat.postMessage", token="xoxb-nobody", json={"channel": CHAN, "text": "t"}).json() == \
        fixture("error_invalid_auth.json")
    assert api(url, "chat.postMessage", json={"channel": "#nope", "text": "t"}).json() == \
        fixture("error_channel_not_found.json")


def test_revoked_token_and_missing_scope(slack):
    url, state = slack
    state.add_token("xoxb-reader", {"channels:history"})
    assert api(url, "chat.postMessage", token="xoxb-reader", json={"channel": CHAN, "text": "t"}).json() == {
        "ok": False, "error": "missing_scope", "needed": "chat:write", "provided": "channels:history"}
    state.revoke_token(TOKEN)
    assert api(url, "chat.postMessage", json={"channel": CHAN, "text": "t"}).json()["error"] == "token_revoked"


def test_invalid_blocks_explains_like_slack(slack):
    url, _ = slack
    body = api(url, "chat.postMessage", json={"channel": CHAN, "text": "t", "blocks": [{"x": 1}]}).json()
    assert body == fixture("error_invalid_blocks.json")


def test_history_newest_first_ids_only_metadata_on_request_and_paged(slack):
    url, _ = slack
    for i in range(3):
        api(url, "chat.postMessage", json={"channel": CHAN, "text": f"m{i}", "metadata": {
            "event_type": "pbxrelay_delivery", "event_payload": {"idempotency_key": f"k{i}"}}})
    parent_ts = api(url, "conversations.history", data={"channel": CHAN, "limit": 1}).json()["messages"][0]["ts"]
    api(url, "chat.postMessage", json={"channel": CHAN, "text": "reply", "thread_ts": parent_ts})

    plain = api(url, "conversations.history", data={"channel": CHAN}).json()
    assert set(plain) == keys_of("conversations_history_ok.json")
    assert [m["text"] for m in plain["messages"]] == ["m2", "m1", "m0"]  # the reply is not in history
    assert all("metadata" not in m for m in plain["messages"])

    first = api(url, "conversations.history", data={"channel": CHAN, "limit": 2, "include_all_metadata": "1"}).json()
    assert first["has_more"] and first["messages"][0]["metadata"]["event_payload"] == {"idempotency_key": "k2"}
    rest = api(url, "conversations.history", data={"channel": CHAN, "limit": 2,
                                                   "cursor": first["response_metadata"]["next_cursor"]}).json()
    assert [m["text"] for m in rest["messages"]] == ["m0"] and not rest["has_more"]

    newer = api(url, "conversations.history", data={"channel": CHAN, "oldest": first["messages"][1]["ts"]}).json()
    assert [m["text"] for m in newer["messages"]] == ["m2"]
    assert api(url, "conversations.history", data={"channel": "#calls"}).json()["error"] == "channel_not_found"
    assert api(url, "conversations.history", data={"channel": "C0OUT00003"}).json()["error"] == "not_in_channel"

    thread = api(url, "conversations.replies", data={"channel": CHAN, "ts": parent_ts}).json()
    assert [m["text"] for m in thread["messages"]] == ["m2", "reply"]


def test_per_channel_rate_limit_answers_429_with_integer_retry_after(slack):
    url, state = slack
    state.rate_limit_max = 2
    state.add_channel("C0QUIET005", "quiet")
    statuses = [api(url, "chat.postMessage", json={"channel": CHAN, "text": str(i)}) for i in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[2].json() == fixture("error_ratelimited.json")
    assert statuses[2].headers["Retry-After"] == "1"
    assert api(url, "chat.postMessage", json={"channel": "C0QUIET005", "text": "other"}).status_code == 200
    assert len(state.messages_in(CHAN)) == 2


def test_incoming_webhook_statuses(slack):
    url, state = slack
    hook = f"{url}/services/{HOOK}"
    ok = requests.post(hook, json={"text": "hi", "blocks": [{"type": "divider"}]}, timeout=5)
    legacy_form = requests.post(hook, data={"payload": json.dumps({"text": "form"})}, timeout=5)
    assert (ok.status_code, ok.text, legacy_form.text) == (200, "ok", "ok")
    bad = [requests.post(hook, data=b"{not json", headers={"Content-Type": "application/json"}, timeout=5),
           requests.post(hook, json={"blocks": None}, timeout=5),
           requests.post(hook, json={"text": "t", "blocks": "nope"}, timeout=5),
           requests.post(f"{url}/services/T0/B0/unknown", json={"text": "t"}, timeout=5)]
    assert [(r.status_code, r.text) for r in bad] == [(400, "invalid_payload"), (400, "no_text"),
                                                      (400, "invalid_blocks"), (404, "no_service")]
    state.revoke_webhook(HOOK)
    assert (lambda r: (r.status_code, r.text))(requests.post(hook, json={"text": "t"}, timeout=5)) == \
        (403, "invalid_token")
    state.add_webhook(CHAN, HOOK)
    state.archive_channel(CHAN)
    assert (lambda r: (r.status_code, r.text))(requests.post(hook, json={"text": "t"}, timeout=5)) == \
        (410, "channel_is_archived")
    assert [m["text"] for m in state.messages_in(CHAN)] == ["hi", "form"]


def test_webhook_rate_limit(slack):
    url, state = slack
    state.rate_limit_max = 1
    hook = f"{url}/services/{HOOK}"
    first, second = (requests.post(hook, json={"text": str(i)}, timeout=5) for i in range(2))
    assert first.status_code == 200
    assert (second.status_code, second.headers["Retry-After"]) == (429, "1")


def test_faults_are_consumed_one_per_request_then_normal_service_resumes(slack):
    url, state = slack
    queued = requests.post(f"{url}/_standin/faults", json=[
        {"status": 500}, {"status": 429, "retry_after": 2}, {"body": "<html>oops", "status": 502},
        {"status": 503, "commit": True}], timeout=5)
    assert queued.json() == {"ok": True, "queued": 4}
    body = {"channel": CHAN, "text": "t"}
    responses = [api(url, "chat.postMessage", json=body) for _ in range(5)]
    assert [r.status_code for r in responses] == [500, 429, 502, 503, 200]
    assert responses[0].json() == {"ok": False, "error": "internal_error"}
    assert responses[1].headers["Retry-After"] == "2" and responses[2].text == "<html>oops"
    assert len(state.messages_in(CHAN)) == 2  # the commit fault and the healthy request
    recorded = requests.get(f"{url}/_standin/messages", timeout=5).json()["messages"]
    assert [m["channel"] for m in recorded] == [CHAN, CHAN]


def test_delay_fault_delays_then_answers_normally(slack):
    url, state = slack
    state.push_faults([{"delay": 0.3}])
    response = api(url, "chat.postMessage", json={"channel": CHAN, "text": "late"})
    assert response.json()["ok"] and response.elapsed.total_seconds() >= 0.3


def test_control_endpoints_setup_and_reset(slack):
    url, state = slack
    requests.post(f"{url}/_standin/setup", timeout=5, json={
        "tokens": [{"token": "xoxb-new", "scopes": ["chat:write"]}], "channels": [{"id": "C0NEW00006", "name": "new"}],
        "webhooks": [{"channel": "C0NEW00006", "path": "T1/B1/x1"}], "rate_limit": {"max": None}})
    assert api(url, "chat.postMessage", token="xoxb-new", json={"channel": "#new", "text": "a"}).json()["ok"]
    assert requests.post(f"{url}/services/T1/B1/x1", json={"text": "b"}, timeout=5).text == "ok"
    assert state.rate_limit_max is None
    requests.post(f"{url}/_standin/reset", timeout=5)
    assert requests.get(f"{url}/_standin/messages", timeout=5).json()["messages"] == []
    assert api(url, "chat.postMessage", token="xoxb-new", json={"channel": "#new", "text": "c"}).json()["ok"]
    requests.post(f"{url}/_standin/reset", json={"registrations": True}, timeout=5)
    assert api(url, "chat.postMessage", token="xoxb-new", json={"channel": "#new", "text": "d"}).json() == {
        "ok": False, "error": "invalid_auth"}


def test_answer_delay_is_set_up_and_checked_and_messages_record_their_arrival(slack):
    """``answer_delay_ms`` applies to every request; a bad value is refused naming the field, with nothing
    of that setup applied; each message keeps its arrival time, which Slack's own answers never show."""
    url, state = slack
    bad = requests.post(f"{url}/_standin/setup", timeout=5, json={
        "tokens": [{"token": "xoxb-not-applied"}], "answer_delay_ms": "soon"})
    assert bad.status_code == 400 and "answer_delay_ms" in bad.json()["error"]
    assert "xoxb-not-applied" not in state.tokens and state.answer_delay == 0.0
    ok = requests.post(f"{url}/_standin/setup", timeout=5, json={"answer_delay_ms": 20})
    assert ok.json() == {"ok": True} and state.answer_delay == 0.02
    assert api(url, "chat.postMessage", json={"channel": CHAN, "text": "timed"}).json()["ok"]
    recorded = requests.get(f"{url}/_standin/messages", timeout=5).json()["messages"]
    assert [m["text"] for m in recorded] == ["timed"] and recorded[0]["received_at"] > 0
    history = api(url, "conversations.history", json={"channel": CHAN}).json()["messages"]
    assert [m["text"] for m in history] == ["timed"] and "received_at" not in history[0]


def test_unknown_method_and_default_workspace():
    app = create_app()
    client = app.test_client()  # routing only; the HTTP behaviour is covered over sockets above
    assert client.post("/api/chat.nope").status_code == 404
    posted = client.post("/api/chat.postMessage", headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"},
                         json={"channel": DEFAULT_CHANNEL_ID, "text": "t"}).get_json()
    assert posted["ok"] and posted["channel"] == DEFAULT_CHANNEL_ID
    assert client.post(f"/services/{DEFAULT_WEBHOOK_PATH}", json={"text": "t"}).get_data(as_text=True) == "ok"
