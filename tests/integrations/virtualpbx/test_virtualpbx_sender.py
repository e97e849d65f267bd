"""The standin's webhook sender against a local receiver on a real socket."""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import unquote, unquote_plus

from hypothesis import given, settings
from hypothesis import strategies as st

from service.sandbox.virtualpbx.sender import DISABLE_REASON, WebhookSender, encode_kazoo_form
from service.sandbox.virtualpbx.state import StandinOptions, StandinState
from tests.conftest import load_fixture
from tests.harness import free_port

_KEY = re.compile(r"^([^\[]*)((?:\[[^\]]*\])*)$")


def decode_kazoo_form(text: str) -> dict[str, Any]:
    """A reference decoder for the bracket encoding: split structure on the raw key, then unquote."""
    out: dict[str, Any] = {}
    for pair in text.split("&") if text else []:
        raw_key, _, raw_value = pair.partition("=")
        match = _KEY.match(raw_key)
        assert match, raw_key
        path = [unquote(match.group(1))] + [unquote(p) for p in re.findall(r"\[([^\]]*)\]", match.group(2))]
        is_list = raw_key.endswith("[]")
        if is_list:
            path = path[:-1]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        if is_list:
            node.setdefault(path[-1], []).append(unquote_plus(raw_value))
        else:
            node[path[-1]] = unquote_plus(raw_value)
    return out


def as_form_values(value: Any) -> Any:
    """What a payload looks like after a form round trip: strings, None and empty containers gone."""
    if isinstance(value, dict):
        converted = {k: as_form_values(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in converted.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [as_form_values(v) for v in value if v is not None]
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_scalars = st.one_of(st.text(), st.integers(), st.booleans(), st.none())
_nested_keys = st.text(min_size=1)  # an empty key inside an object would read as a list marker "[]"
_values = st.recursive(_scalars | st.lists(_scalars, max_size=4),
                       lambda inner: st.dictionaries(_nested_keys, inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), _values, max_size=6))
def test_form_encoding_round_trips_hostile_keys_and_values(payload):
    assert decode_kazoo_form(encode_kazoo_form(payload)) == as_form_values(payload)


def test_form_encoding_matches_kazoo_for_ordinary_payloads():
    encoded = encode_kazoo_form({"key1": "val 1", "key2": ["v2_1", "v2/2"], "key3": {"k3_1": True}, "n": 4580})
    assert encoded == "key1=val+1&key2[]=v2_1&key2[]=v2%2F2&key3[k3_1]=true&n=4580"


def _state_with_hook(receiver_url: str, options: StandinOptions | None = None, **hook: Any):
    state = StandinState(options)
    account = state.add_account()
    doc = state.add_webhook(account.id, {"name": "h", "hook": "channel_create", "uri": receiver_url, **hook})
    return state, account, doc


def test_form_data_post_with_custom_data_cluster_id_and_headers(receiver):
    state, account, hook = _state_with_hook(receiver.url, hook="notifications",
                                            custom_data={"type": "missed_call", "tenant": "t-1"})
    payload = load_fixture("kazoo/webhook_notifications_missed_call.json")

    results = WebhookSender(state).dispatch(account.id, "notifications", payload)

    assert [r.success for r in results] == [True]
    got = receiver.received[0]
    assert got["method"] == "POST" and got["content_type"] == "application/x-www-form-urlencoded"
    assert got["headers"]["X-Hook-Id"] == hook["id"] and got["headers"]["X-Account-Id"] == account.id
    expected = {**payload, "cluster_id": state.options.cluster_id, "type": "missed_call", "tenant": "t-1"}
    assert decode_kazoo_form(got["body"]) == as_form_values(expected)
    assert "notify[custom_channel_vars][call_interaction_id]=63724403398-af5b9a0e" in got["body"]
    assert "to[]=user%40test.com" in got["body"]


def test_get_puts_the_payload_in_the_query_string(receiver):
    state, account, _ = _state_with_hook(receiver.url, http_verb="get")
    payload = load_fixture("kazoo/webhook_channel_create.json")
    WebhookSender(state).dispatch(account.id, "channel_create", payload)
    got = receiver.received[0]
    assert got["method"] == "GET" and got["body"] == ""
    assert decode_kazoo_form(got["query"]) == as_form_values({**payload, "cluster_id": state.options.cluster_id})


def test_json_format(receiver):
    state, account, _ = _state_with_hook(receiver.url, format="json", custom_data={"tenant": "t-9"})
    payload = load_fixture("kazoo/webhook_channel_create.json")
    WebhookSender(state).dispatch(account.id, "channel_create", payload)
    got = receiver.received[0]
    assert got["content_type"] == "application/json"
    assert json.loads(got["body"]) == {**payload, "cluster_id": state.options.cluster_id, "tenant": "t-9"}


def test_only_200_counts_and_is_never_retried(receiver):
    state, account, hook = _state_with_hook(receiver.url, retries=4)
    sender = WebhookSender(state, retry_interval=0.01)
    for status, success in ((202, False), (204, False), (201, False), (500, False), (200, True)):
        receiver.status = status
        [result] = sender.dispatch(account.id, "channel_create", {"call_id": f"c{status}"})
        assert (result.success, result.attempts, result.status) == (success, 1, status)
    assert len(receiver.received) == 5
    failures = [a for a in account.attempts if a["result"] == "failure"]
    assert [a["resp_status_code"] for a in failures] == [202, 204, 201, 500]
    assert {a["reason"] for a in failures} == {"bad response code"}


def test_201_is_success_for_put(receiver):
    state, account, _ = _state_with_hook(receiver.url, http_verb="put")
    receiver.status = 201
    [result] = WebhookSender(state).dispatch(account.id, "channel_create", {"call_id": "c"})
    assert result.success and receiver.received[0]["method"] == "PUT"


def test_connection_errors_are_retried_retries_times():
    state, account, hook = _state_with_hook(f"http://127.0.0.1:{free_port()}/hooks", retries=3)
    started = time.monotonic()
    [result] = WebhookSender(state, retry_interval=0.1).dispatch(account.id, "channel_create", {"call_id": "c"})
    assert not result.success and result.attempts == 3 and result.error == "econnrefused"
    assert time.monotonic() - started >= 0.2
    assert [(a["reason"], a["retries_left"]) for a in account.attempts] == [("kazoo http client error", 2),
                                                                            ("kazoo http client error", 1),
                                                                            ("kazoo http client error", 0)]


def test_more_than_six_failures_in_a_minute_disable_the_hook(receiver):
    state, account, hook = _state_with_hook(receiver.url)
    receiver.status = 503
    sender = WebhookSender(state)
    for n in range(6):
        sender.dispatch(account.id, "channel_create", {"call_id": f"c{n}"})
    assert account.webhooks[hook["id"]]["enabled"] is True
    sender.dispatch(account.id, "channel_create", {"call_id": "c6"})
    assert account.webhooks[hook["id"]]["enabled"] is False
    assert account.webhooks[hook["id"]]["disable_reason"] == DISABLE_REASON
    assert sender.dispatch(account.id, "channel_create", {"call_id": "c7"}) == []
    assert len(receiver.received) == 7


def test_failures_spread_over_more_than_a_minute_do_not_disable(receiver):
    now = [1_800_000_000.0]
    state, account, hook = _state_with_hook(receiver.url, options=StandinOptions(clock=lambda: now[0]))
    receiver.status = 500
    sender = WebhookSender(state)
    for n in range(12):
        sender.dispatch(account.id, "channel_create", {"call_id": f"c{n}"})
        now[0] += 11  # six failures span 55 s, the seventh pushes the first out of the window
    assert account.webhooks[hook["id"]]["enabled"] is True


def test_hook_filters_by_type_modifier_and_internal_legs(receiver):
    state = StandinState()
    account = state.add_account()
    hooks = {name: state.add_webhook(account.id, {"name": name, "uri": receiver.url, **doc}) for name, doc in {
        "vm_new": {"hook": "notifications", "custom_data": {"type": "voicemail_new"}},
        "all_notifications": {"hook": "notifications", "custom_data": {"type": "all"}},
        "everything": {"hook": "all"},
        "external_destroy": {"hook": "channel_destroy", "include_internal_legs": False},
        "all_destroy": {"hook": "channel_destroy"},
    }.items()}
    sender = WebhookSender(state)

    def fired(hook_type, payload):
        names = {h["id"]: n for n, h in hooks.items()}
        return {names[h["id"]] for h in sender.matching_hooks(account.id, hook_type, payload)}

    assert fired("notifications", {"event_name": "voicemail_new"}) == {"vm_new", "all_notifications", "everything"}
    assert fired("notifications", {"event_name": "missed_call"}) == {"all_notifications", "everything"}
    assert fired("channel_destroy", {"is_internal_leg": True}) == {"all_destroy", "everything"}
    assert fired("channel_destroy", {"is_internal_leg": False}) == {"external_destroy", "all_destroy", "everything"}
    assert fired("channel_create", {}) == {"everything"}


def test_attempts_and_reenable_through_the_api(standin, make_client, receiver):
    client = make_client()
    hook = client.create_webhook({"name": "d", "hook": "channel_destroy", "uri": receiver.url})
    receiver.status = 500
    sender = WebhookSender(standin.state)
    for n in range(7):
        sender.dispatch(standin.account.id, "channel_destroy", {"call_id": f"c{n}"})

    [row] = client.list_webhooks()
    assert row["enabled"] is False and row["disable_reason"] == DISABLE_REASON
    attempts = client.list_webhook_attempts(hook["id"])
    assert len(attempts) == 7 and {a["result"] for a in attempts} == {"failure"}
    assert all(isinstance(a["timestamp"], int) and a["timestamp"] > 63_000_000_000 for a in attempts)

    client.update_webhook(hook["id"], {"enabled": True})
    assert client.list_webhooks()[0]["enabled"] is True
    receiver.status = 200
    assert [r.success for r in sender.dispatch(standin.account.id, "channel_destroy", {"call_id": "ok"})] == [True]
