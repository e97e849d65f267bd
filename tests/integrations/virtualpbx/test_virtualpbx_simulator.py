"""The call simulator: documented leg sequences, consistent ids, CDRs, voicemail ordering, determinism."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone

import pytest

from integrations.virtualpbx.gregorian import GREGORIAN_UNIX_OFFSET
from service.sandbox.virtualpbx.media import FRAME_BYTES, silent_mp3
from service.sandbox.virtualpbx.sender import WebhookSender
from service.sandbox.virtualpbx.simulator import CallSimulator, SimulatedCall
from service.sandbox.virtualpbx.standin import DEMO_ACCOUNT_ID, demo_state
from tests.conftest import load_fixture

START = datetime(2026, 5, 6, 9, 0, tzinfo=timezone.utc)
START_G = int(START.timestamp()) + GREGORIAN_UNIX_OFFSET


def simulate(scenario: str, seed: int = 7) -> tuple[SimulatedCall, dict]:
    state = demo_state()
    call = CallSimulator(state, DEMO_ACCOUNT_ID, seed=seed, start=START).run(scenario)
    return call, state.accounts[DEMO_ACCOUNT_ID]


def roles(call: SimulatedCall) -> list[tuple[str, str]]:
    """The sequence with call ids replaced by A / B1, B2, ... so scenarios read like the reference."""
    names = {call.a_leg.call_id: "A", **{leg.call_id: f"B{i}" for i, leg in enumerate(call.b_legs, start=1)}}
    return [(event, names[call_id]) for event, call_id in call.sequence()]


def destroy_of(call: SimulatedCall, call_id: str) -> dict:
    return next(s.payload for s in call.steps
                if s.payload.get("hook_event") == "channel_destroy" and s.payload["call_id"] == call_id)


def test_inbound_answered_sequence_and_leg_fields():
    call, account = simulate("inbound_answered")
    assert roles(call) == [("channel_create", "A"), ("channel_create", "B1"), ("channel_answer", "A"),
                           ("channel_answer", "B1"), ("channel_bridge", "A"), ("channel_bridge", "B1"),
                           ("channel_destroy", "B1"), ("channel_destroy", "A")]
    a_create, b_create = call.steps[0].payload, call.steps[1].payload
    assert a_create["call_direction"] == "inbound" and a_create["inception"] == f"+15551230000@{account.realm}"
    assert a_create["callee_id_number"] == "+15551230000" and a_create["caller_id_number"].startswith("+1555")
    assert "other_leg_call_id" not in a_create
    user = account.users[b_create["owner_id"]]
    assert b_create["call_direction"] == "outbound" and "inception" not in b_create
    assert b_create["authorizing_type"] == "device" and b_create["authorizing_id"] in account.devices
    assert (b_create["callee_id_name"], b_create["callee_id_number"]) == (
        f"{user['first_name']} {user['last_name']}", user["presence_id"])
    for step in call.steps:
        if step.payload["call_id"] == call.b_legs[0].call_id:
            assert step.payload["other_leg_call_id"] == call.a_leg.call_id
    a_destroy = destroy_of(call, call.a_leg.call_id)
    assert a_destroy["hangup_cause"] == "NORMAL_CLEARING" and a_destroy["hangup_code"] == "sip:200"
    assert a_destroy["other_leg_call_id"] == call.b_legs[0].call_id
    for key in ("duration_seconds", "billing_seconds", "ringing_seconds"):
        assert isinstance(a_destroy[key], int)
    assert a_destroy["duration_seconds"] == a_destroy["ringing_seconds"] + a_destroy["billing_seconds"]
    assert a_destroy["billing_seconds"] > 0 and call.steps[0].payload["timestamp"] == START_G


def test_inbound_missed_is_cancelled_with_zero_billing():
    call, _ = simulate("inbound_missed")
    assert roles(call) == [("channel_create", "A"), ("channel_create", "B1"), ("channel_destroy", "B1"),
                           ("channel_destroy", "A")]
    for leg in (call.a_leg, call.b_legs[0]):
        destroy = destroy_of(call, leg.call_id)
        assert destroy["hangup_cause"] == "ORIGINATOR_CANCEL" and destroy["billing_seconds"] == 0
        assert destroy["ringing_seconds"] == destroy["duration_seconds"] > 0


def test_ring_group_one_winner_others_lose_race():
    call, _ = simulate("ring_group")
    sequence = roles(call)
    assert len(call.b_legs) == 3 and sequence[:4] == [("channel_create", "A"), ("channel_create", "B1"),
                                                      ("channel_create", "B2"), ("channel_create", "B3")]
    bridged = {leg for event, leg in sequence if event == "channel_bridge"}
    [winner] = bridged - {"A"}
    losers = {"B1", "B2", "B3"} - {winner}
    for index, leg in enumerate(call.b_legs, start=1):
        destroy = destroy_of(call, leg.call_id)
        if f"B{index}" in losers:
            assert (destroy["hangup_cause"], destroy["billing_seconds"]) == ("LOSE_RACE", 0)
        else:
            assert destroy["hangup_cause"] == "NORMAL_CLEARING" and destroy["billing_seconds"] > 0
    assert sequence[-1] == ("channel_destroy", "A")
    assert sum(1 for event, _ in sequence if event == "channel_destroy") == 4


def test_voicemail_is_stored_before_voicemail_new_is_delivered(receiver):
    state = demo_state()
    account = state.accounts[DEMO_ACCOUNT_ID]
    state.add_webhook(account.id, {"name": "vm", "hook": "notifications", "uri": receiver.url, "format": "json",
                                   "custom_data": {"type": "voicemail_new"}})

    def message_present(entry):
        body = json.loads(entry["body"])
        return any(body["voicemail_id"] in msgs for msgs in account.messages.values())

    receiver.on_request = message_present
    call = CallSimulator(state, account.id, seed=5, start=START, sender=WebhookSender(state)).run("voicemail")

    assert roles(call) == [("channel_create", "A"), ("channel_create", "B1"), ("channel_destroy", "B1"),
                           ("channel_answer", "A"), ("voicemail_new", "A"), ("channel_destroy", "A")]
    assert destroy_of(call, call.b_legs[0].call_id)["hangup_cause"] == "NO_ANSWER"
    [delivered] = receiver.received
    assert delivered["observed"] is True
    notification = next(s.payload for s in call.steps if s.payload.get("event_name") == "voicemail_new")
    assert notification["call_id"] == call.a_leg.call_id
    prefix, _, hexpart = notification["voicemail_id"].partition("-")
    assert prefix == "202605" and len(hexpart) == 32 and int(hexpart, 16) >= 0
    box = account.vmboxes[notification["voicemail_box"]]
    stored = account.messages[box["id"]][notification["voicemail_id"]]
    assert stored["length"] == notification["voicemail_length"] and stored["call_id"] == call.a_leg.call_id
    assert notification["to_user"] == box["mailbox"]
    expected_keys = set(load_fixture("kazoo/webhook_notifications_voicemail_new.json")) - {"voicemail_transcription"}
    assert expected_keys <= set(notification)


def test_outbound_call_legs():
    call, account = simulate("outbound")
    a_create, b_create = call.steps[0].payload, call.steps[1].payload
    assert a_create["call_direction"] == "inbound" and "inception" not in a_create
    assert a_create["authorizing_type"] == "device" and a_create["owner_id"] in account.users
    user = account.users[a_create["owner_id"]]
    assert (a_create["caller_id_number"], a_create["caller_id_name"]) == (
        user["presence_id"], f"{user['first_name']} {user['last_name']}")
    assert b_create["call_direction"] == "outbound" and b_create["other_leg_call_id"] == call.a_leg.call_id
    assert b_create["authorizing_type"] == "resource" and b_create["local_resource_used"] is True
    assert (b_create["callee_id_number"] == a_create["callee_id_number"]
            and b_create["callee_id_number"].startswith("+1"))


def test_internal_call_legs():
    call, account = simulate("internal")
    a_create, b_create = call.steps[0].payload, call.steps[1].payload
    assert "inception" not in a_create and a_create["authorizing_type"] == "device"
    assert b_create["authorizing_type"] == "device" and b_create["local_resource_used"] is False
    assert b_create["owner_id"] != a_create["owner_id"]
    assert b_create["callee_id_number"] == account.users[b_create["owner_id"]]["presence_id"]


def test_one_cdr_per_leg_with_a_shared_interaction_id():
    call, account = simulate("ring_group")
    cdrs = [c for c in account.cdrs.values() if c["interaction_id"] == call.interaction_id]
    assert sorted(c["call_id"] for c in cdrs) == sorted([call.a_leg.call_id, *(b.call_id for b in call.b_legs)])
    a_cdr = next(c for c in cdrs if c["call_id"] == call.a_leg.call_id)
    assert a_cdr["timestamp"] == a_cdr["channel_created_time"] // 1_000_000 + GREGORIAN_UNIX_OFFSET \
        + a_cdr["duration_seconds"]


def test_mixed_hour_is_deterministic_per_seed():
    def run(seed: int):
        state = demo_state()
        calls = CallSimulator(state, DEMO_ACCOUNT_ID, seed=seed, start=START).mixed_hour(calls=25)
        return [(c.scenario, c.sequence()) for c in calls], state

    first, state = run(11)
    second, _ = run(11)
    assert first == second
    assert run(12)[0] != first
    scenarios = Counter(scenario for scenario, _ in first)
    assert len(scenarios) >= 4 and sum(scenarios.values()) == 25
    legs = sum(len({call_id for _, call_id in sequence}) for _, sequence in first)
    assert len(state.accounts[DEMO_ACCOUNT_ID].cdrs) == legs


def test_mixed_hour_shuffle_and_duplicates_reach_the_receiver(receiver):
    state = demo_state()
    state.add_webhook(DEMO_ACCOUNT_ID, {"name": "all", "hook": "all", "uri": receiver.url, "format": "json"})
    simulator = CallSimulator(state, DEMO_ACCOUNT_ID, seed=3, start=START, sender=WebhookSender(state))
    calls = simulator.mixed_hour(calls=6, shuffle=True, duplicate_rate=0.3)

    produced = Counter(f"{s.payload['call_id']}/{s.payload.get('hook_event') or s.payload['event_name']}"
                       for c in calls for s in c.steps)
    delivered = [json.loads(r["body"]) for r in receiver.received]
    got = Counter(f"{d['call_id']}/{d.get('hook_event') or d['event_name']}" for d in delivered)
    assert set(got) == set(produced) and sum(got.values()) > sum(produced.values())
    timestamps = [d.get("timestamp", d.get("voicemail_timestamp")) for d in delivered]
    assert timestamps != sorted(timestamps)


def test_unknown_scenario_is_rejected():
    with pytest.raises(ValueError):
        CallSimulator(demo_state(), DEMO_ACCOUNT_ID).run("conference")


def test_silent_mp3_is_whole_frames_of_the_right_length():
    audio = silent_mp3(4580)
    assert len(audio) % FRAME_BYTES == 0 and len(audio) // FRAME_BYTES == 175
    assert all(audio[i:i + 4] == b"\xff\xfb\x10\xc4" for i in range(0, len(audio), FRAME_BYTES))
