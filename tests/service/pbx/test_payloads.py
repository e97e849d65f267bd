"""Kazoo payloads: the three delivery forms, normalisation, classification and idempotency keys."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from integrations.virtualpbx.gregorian import gregorian_to_datetime
from service.pbx.payloads import MalformedPayload, parse_bracket_pairs, parse_delivery, to_hook_event
from tests.conftest import FIXTURES

WEBHOOK_FIXTURES = sorted((FIXTURES / "kazoo").glob("webhook_*.json"))
EXPECTED_TYPES = {
    "webhook_channel_create.json": ("virtualpbx.channel_create", None),
    "webhook_channel_answer.json": ("virtualpbx.channel_answer", None),
    "webhook_channel_bridge.json": ("virtualpbx.channel_bridge", None),
    "webhook_channel_destroy.json": ("virtualpbx.channel_destroy", None),
    "webhook_notifications_voicemail_new.json": ("virtualpbx.notifications", "voicemail_new"),
    "webhook_notifications_voicemail_saved.json": ("virtualpbx.notifications", "voicemail_saved"),
    "webhook_notifications_voicemail_full.json": ("virtualpbx.notifications", "voicemail_full"),
    "webhook_notifications_missed_call.json": ("virtualpbx.notifications", "missed_call"),
    "webhook_notifications_webhook_disabled.json": ("virtualpbx.notifications", "webhook_disabled"),
    "webhook_object_user_doc_created.json": ("virtualpbx.object", "user.doc_created"),
    "webhook_parking_park_parked.json": ("virtualpbx.parking", "park_parked"),
}
RECEIVED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_every_fixture_has_an_expectation():
    """No fixture goes untested."""
    assert {p.name for p in WEBHOOK_FIXTURES} == set(EXPECTED_TYPES)


@pytest.mark.parametrize("path", WEBHOOK_FIXTURES, ids=lambda p: p.stem)
def test_fixture_as_json_is_classified(path: Path):
    """Each real Kazoo sample parses from a JSON POST into its typed event."""
    body = path.read_bytes()
    payload = parse_delivery(method="POST", content_type="application/json", body=body, query_string="")
    event = to_hook_event(payload, account_id="acc", received_at=RECEIVED)
    kind, subtype = EXPECTED_TYPES[path.name]
    assert event.type == kind
    assert event.data.get("subtype") == subtype
    assert event.occurred_at.tzinfo is not None


def test_gregorian_seconds_become_aware_utc():
    """63724349409 Gregorian seconds is 2019-05-06T08:10:09Z (reference §1)."""
    assert gregorian_to_datetime("63724349409") == datetime(2019, 5, 6, 8, 10, 9, tzinfo=timezone.utc)
    with pytest.raises(ValueError):
        gregorian_to_datetime(1557130209)  # a Unix timestamp is not a Gregorian one


def test_strings_become_ints_and_booleans():
    """Form and GET deliveries carry everything as strings; known fields are coerced."""
    event = to_hook_event({"hook_event": "channel_destroy", "call_id": "c", "call_direction": "inbound",
                           "timestamp": "63724349409", "billing_seconds": "6", "is_internal_leg": "false",
                           "duration_seconds": "not-a-number"}, account_id="acc")
    assert event.data["timestamp"] == 63724349409 and event.data["billing_seconds"] == 6
    assert event.data["is_internal_leg"] is False
    assert event.data["duration_seconds"] == "not-a-number"  # kept as sent, not guessed


def test_inconsistent_casing_and_custom_data():
    """`caller_id_Number` is read as `caller_id_number`; custom_data keys are merged over the payload."""
    fixture = json.loads((FIXTURES / "kazoo/webhook_parking_park_parked.json").read_text())
    fixture["custom_data"] = {"tenant": "acme", "caller_id_name": "Override"}
    event = to_hook_event(fixture, account_id="acc")
    assert event.data["caller_id_number"] == "+15555432345"
    assert event.data["tenant"] == "acme" and event.data["caller_id_name"] == "Override"
    assert "custom_data" not in event.data


def test_bracket_nesting_of_form_bodies():
    """`k[sub]=v` nests, `k[]=v` lists, as Kazoo's form-data format sends them."""
    body = urlencode([("hook_event", "channel_create"), ("custom_channel_vars[owner_id]", "u1"),
                      ("custom_channel_vars[nested][deep]", "d"), ("to[]", "a@x"), ("to[]", "b@x")])
    payload = parse_delivery(method="POST", content_type="application/x-www-form-urlencoded",
                             body=body.encode(), query_string="")
    assert payload == {"hook_event": "channel_create", "to": ["a@x", "b@x"],
                       "custom_channel_vars": {"owner_id": "u1", "nested": {"deep": "d"}}}


def test_get_delivery_reads_the_query_string():
    """http_verb get puts the payload in the query string."""
    payload = parse_delivery(method="GET", content_type="", body=b"",
                             query_string="hook_event=channel_answer&call_id=abc&custom_channel_vars[x]=1")
    assert payload == {"hook_event": "channel_answer", "call_id": "abc", "custom_channel_vars": {"x": "1"}}


@pytest.mark.parametrize("pairs, message", [
    ([("a", "1"), ("a[b]", "2")], "conflicts"),
    ([("a[b]", "2"), ("a", "1")], "given twice"),
    ([("a", "1"), ("a", "2")], "given twice"),
    ([("a[]", "1"), ("a", "2")], "given twice"),
    ([("a[][b]", "1")], "may only end"),
    ([("[x]", "1")], "unreadable"),
    ([("a" + "[b]" * 20, "1")], "deeper"),
], ids=["scalar-then-nested", "nested-then-scalar", "twice", "list-then-scalar", "inner-list", "no-name", "deep"])
def test_hostile_bracket_keys_are_malformed(pairs, message):
    """Conflicting or hostile field names are a clear MalformedPayload, never a crash."""
    with pytest.raises(MalformedPayload, match=message):
        parse_bracket_pairs(pairs)


@pytest.mark.parametrize("body, ctype, message", [
    (b"{", "application/json", "invalid JSON"),
    (b"[]", "application/json", "not an object"),
    (b'{"a": NaN}', "application/json", "invalid JSON"),
    (b"\xff", "application/json", "not UTF-8"),
    (b"", "application/x-www-form-urlencoded", "empty"),
    (b"<xml/>", "text/xml", "unsupported content type"),
    (b'{"a":' * 50 + b"1" + b"}" * 50, "application/json", "nests too deeply"),
    (b"&".join(b"k%d=v" % i for i in range(3000)), "application/x-www-form-urlencoded", "unreadable form body"),
], ids=["truncated", "array", "nan", "latin1", "empty-form", "xml", "deep-json", "too-many-fields"])
def test_malformed_deliveries(body, ctype, message):
    """Each malformed body names its problem."""
    with pytest.raises(MalformedPayload, match=message):
        parse_delivery(method="POST", content_type=ctype, body=body, query_string="")


def test_idempotency_keys_are_stable_and_distinct():
    """Re-deliveries share a key; different legs, hooks and voicemails do not."""
    create = json.loads((FIXTURES / "kazoo/webhook_channel_create.json").read_text())
    answer = json.loads((FIXTURES / "kazoo/webhook_channel_answer.json").read_text())
    first = to_hook_event(create, account_id="acc", received_at=RECEIVED)
    again = to_hook_event(dict(create), account_id="acc", received_at=datetime.now(timezone.utc))
    other_leg = to_hook_event({**create, "call_id": "other"}, account_id="acc")
    assert first.key == again.key
    assert first.key != other_leg.key
    assert first.key != to_hook_event(answer, account_id="acc").key
    vm = json.loads((FIXTURES / "kazoo/webhook_notifications_voicemail_new.json").read_text())
    assert to_hook_event(vm, account_id="acc").key.endswith(vm["voicemail_id"])


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=2048), ctype=st.sampled_from(
    ["application/json", "application/x-www-form-urlencoded", "", "text/plain", "multipart/form-data"]),
    method=st.sampled_from(["GET", "POST"]), query=st.text(max_size=200))
def test_any_body_parses_or_is_malformed(body, ctype, method, query):
    """No input makes the parser raise anything but MalformedPayload, and parsed ones normalise."""
    try:
        payload = parse_delivery(method=method, content_type=ctype, body=body, query_string=query)
    except MalformedPayload:
        return
    event = to_hook_event(payload, account_id="acc")
    assert event.type.startswith("virtualpbx.")
    json.dumps(event.to_json())
