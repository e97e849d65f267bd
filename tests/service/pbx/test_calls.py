"""Legs to calls: order-free, duplicate-free correlation into call-level events (real Redis)."""

from __future__ import annotations

import itertools
import random

import pytest

from integrations.virtualpbx.gregorian import gregorian_to_datetime
from service.events import Event
from service.pbx.calls import CallCorrelator, RedisCallWindow, call_key_for_leg, summarize_call

T0 = 63_900_000_000  # a Gregorian second in 2025
A = "a-leg-call-id"


def leg(hook: str, call_id: str, *, direction: str, t: int, **extra) -> dict:
    """A normalised channel hook payload as the receiver hands it to the correlator."""
    data = {"hook": hook, "call_id": call_id, "call_direction": direction, "timestamp": T0 + t,
            "caller_id_name": "Pat Caller", "caller_id_number": "+15551230000", "request": "+15559870000@pbx",
            "account_id": "acc"}
    data.update(extra)
    return data


def inbound_answered() -> list[dict]:
    """An outside call answered by a desk phone: A-leg with inception, one B-leg that bridges."""
    b = dict(other_leg_call_id=A, authorizing_type="device", owner_id="user-1", callee_id_name="Front Desk",
             callee_id_number="101")
    return [
        leg("channel_create", A, direction="inbound", t=0, inception="+15559870000@carrier"),
        leg("channel_create", "b1", direction="outbound", t=1, **b),
        leg("channel_answer", "b1", direction="outbound", t=5, **b),
        leg("channel_answer", A, direction="inbound", t=5, inception="+15559870000@carrier"),
        leg("channel_bridge", A, direction="inbound", t=5, inception="+15559870000@carrier", other_leg_call_id="b1"),
        leg("channel_bridge", "b1", direction="outbound", t=5, **b),
        leg("channel_destroy", "b1", direction="outbound", t=65, billing_seconds=60, duration_seconds=64,
            hangup_cause="NORMAL_CLEARING", **b),
        leg("channel_destroy", A, direction="inbound", t=65, inception="+15559870000@carrier", duration_seconds=65,
            billing_seconds=60, ringing_seconds=5, hangup_cause="NORMAL_CLEARING"),
    ]


def inbound_missed(voicemail: bool = False) -> list[dict]:
    """A ring group of two phones that nobody answers; optionally the caller leaves a voicemail."""
    legs = [leg("channel_create", A, direction="inbound", t=0, inception="+1555@carrier")]
    for b in ("b1", "b2"):
        legs.append(leg("channel_create", b, direction="outbound", t=1, other_leg_call_id=A,
                        authorizing_type="device"))
        legs.append(leg("channel_destroy", b, direction="outbound", t=21, other_leg_call_id=A,
                        authorizing_type="device", billing_seconds=0, hangup_cause="NO_ANSWER"))
    if voicemail:
        legs.append(leg("channel_answer", A, direction="inbound", t=22, inception="+1555@carrier"))
        legs.append({"hook": "notifications", "subtype": "voicemail_new", "call_id": A, "voicemail_id": "202501-ab",
                     "voicemail_box": "box1", "voicemail_length": 4580, "caller_id_number": "+15551230000",
                     "to_user": "1000", "voicemail_timestamp": T0 + 40})
    legs.append(leg("channel_destroy", A, direction="inbound", t=41, inception="+1555@carrier",
                    duration_seconds=41, billing_seconds=19 if voicemail else 0,
                    hangup_cause="NORMAL_CLEARING" if voicemail else "ORIGINATOR_CANCEL"))
    return legs


def as_event(data: dict, account: str = "acc") -> Event:
    """Wrap a payload as the raw event the correlator observes."""
    return Event(type=f"virtualpbx.{data['hook']}", account_id=account, key=f"{data['hook']}:{data['call_id']}",
                 occurred_at=gregorian_to_datetime(data.get("timestamp", T0)), data=data)


def run_call(correlator: CallCorrelator, payloads: list[dict]) -> list[Event]:
    """Feed legs, then finalise every call whose A-leg ended; return unique events by key (as the store does)."""
    seen: dict[str, Event] = {}
    finalize = set()
    for data in payloads:
        result = correlator.observe(as_event(data))
        for event in result.events:
            seen.setdefault(event.key, event)
        if result.finalize_call:
            finalize.add(result.finalize_call)
    for call_key in finalize:
        for event in correlator.finalize("acc", call_key):
            seen.setdefault(event.key, event)
    return list(seen.values())


@pytest.fixture
def correlator(redis_client, namespace):
    """A correlator on the real test Redis."""
    return CallCorrelator(RedisCallWindow(redis_client, namespace=namespace, window_seconds=600))


def test_call_key_of_a_b_and_internal_legs():
    """A-legs key themselves, B-legs key their A-leg, loopback legs are skipped."""
    assert call_key_for_leg({"call_id": "x", "call_direction": "inbound"}) == "x"
    assert call_key_for_leg({"call_id": "y", "call_direction": "outbound", "other_leg_call_id": "x"}) == "x"
    assert call_key_for_leg({"call_id": "y", "call_direction": "outbound"}) is None
    assert call_key_for_leg({"call_id": "x", "call_direction": "inbound", "is_internal_leg": True}) is None


def test_answered_inbound_call_events(correlator):
    """One started, one answered, one ended (answered by the desk), no missed."""
    events = {e.type: e for e in run_call(correlator, inbound_answered())}
    assert sorted(events) == ["call.answered", "call.ended", "call.started"]
    ended = events["call.ended"].data
    assert ended["direction"] == "inbound"
    assert ended["caller"] == {"name": "Pat Caller", "number": "+15551230000"}
    assert ended["callee"]["number"] == "+15559870000"
    assert ended["answered_by"] == {"name": "Front Desk", "number": "101", "user_id": "user-1"}
    assert (ended["duration"], ended["talk_time"], ended["outcome"]) == (65, 60, "answered")
    assert ended["legs"] == 2


def test_missed_ring_group_gives_one_missed(correlator):
    """Two phones ring, nobody answers: exactly one call.missed, outcome missed."""
    events = run_call(correlator, inbound_missed())
    kinds = sorted(e.type for e in events)
    assert kinds == ["call.ended", "call.missed", "call.started"]
    missed = next(e for e in events if e.type == "call.missed").data
    assert missed["outcome"] == "missed" and missed["answered_by"] is None and missed["talk_time"] == 0


def test_voicemail_only_call_is_missed_with_voicemail(correlator):
    """Answered only by voicemail: missed, with voicemail_left and the voicemail event."""
    events = {e.type: e for e in run_call(correlator, inbound_missed(voicemail=True))}
    assert set(events) == {"call.started", "call.ended", "call.missed", "voicemail.new"}
    assert events["call.missed"].data["outcome"] == "voicemail"
    assert events["call.missed"].data["voicemail_left"] is True
    assert events["voicemail.new"].data["length_seconds"] == 5


@pytest.mark.parametrize("seed", range(12))
def test_duplicated_and_shuffled_legs_give_the_same_call(redis_client, namespace, seed):
    """Any order, any duplicates: the same call-level events with the same data."""
    rng = random.Random(seed)
    payloads = inbound_answered()
    noisy = payloads + [rng.choice(payloads) for _ in range(rng.randint(1, 6))]
    rng.shuffle(noisy)
    # The A-leg destroy must still come last for finalize to see everything: the settle window's job.
    noisy.sort(key=lambda p: p["hook"] == "channel_destroy" and p["call_id"] == A)
    reference = CallCorrelator(RedisCallWindow(redis_client, namespace=namespace + "ref", window_seconds=600))
    shuffled = CallCorrelator(RedisCallWindow(redis_client, namespace=namespace, window_seconds=600))
    expected = {e.type: e.data for e in run_call(reference, payloads) if e.type == "call.ended"}
    got = {e.type: e.data for e in run_call(shuffled, noisy) if e.type == "call.ended"}
    assert got == expected


def test_outbound_and_internal_directions():
    """An A-leg from a phone is outbound when a B-leg used a carrier, else internal."""
    a = {"call_id": A, "call_direction": "inbound", "authorizing_type": "device", "timestamp": T0,
         "caller_id_number": "101"}
    carrier_b = {"call_id": "b", "call_direction": "outbound", "other_leg_call_id": A, "local_resource_used": True,
                 "authorizing_type": "resource", "callee_id_number": "+15550001111", "timestamp": T0}
    phone_b = {"call_id": "b", "call_direction": "outbound", "other_leg_call_id": A, "local_resource_used": False,
               "authorizing_type": "device", "callee_id_number": "102", "timestamp": T0}
    out = summarize_call(A, {f"channel_create:{A}": a, "channel_create:b": carrier_b})
    internal = summarize_call(A, {f"channel_create:{A}": a, "channel_create:b": phone_b})
    assert (out["direction"], out["callee"]["number"]) == ("outbound", "+15550001111")
    assert (internal["direction"], internal["callee"]["number"]) == ("internal", "102")
    assert out["outcome"] == "no_answer"


def test_missed_call_notification_without_legs(correlator):
    """An account subscribed only to missed_call notifications still gets call.missed."""
    data = {"hook": "notifications", "subtype": "missed_call", "call_id": "n1", "caller_id_number": "+1555",
            "caller_id_name": "X", "to_user": "1000", "timestamp": T0, "message_left": False,
            "notify": {"duration_seconds": 10}}
    events = correlator.observe(as_event(data)).events
    assert [e.type for e in events] == ["call.missed"]
    assert events[0].key == "call.missed:n1" and events[0].data["duration"] == 10


def test_missed_call_notification_defers_to_seen_legs(correlator):
    """When legs of that call were seen, the notification adds nothing (finalize decides)."""
    correlator.observe(as_event(inbound_missed()[0]))
    data = {"hook": "notifications", "subtype": "missed_call", "call_id": A, "timestamp": T0}
    assert correlator.observe(as_event(data)).events == []


def test_call_window_expires(redis_client, namespace, correlator):
    """Per-call state carries a TTL, so Redis does not grow without bound."""
    correlator.observe(as_event(inbound_answered()[0]))
    ttl = redis_client.ttl(f"{namespace}:call:acc:{A}")
    assert 0 < ttl <= 600


def test_every_permutation_of_a_short_call_agrees(redis_client, namespace):
    """All 24 orders of a 4-hook call give identical call.ended data."""
    payloads = [p for p in inbound_answered() if p["hook"] in ("channel_create", "channel_bridge")]
    payloads.append(inbound_answered()[-1])
    results = []
    for i, order in enumerate(itertools.permutations(payloads)):
        c = CallCorrelator(RedisCallWindow(redis_client, namespace=f"{namespace}p{i}", window_seconds=600))
        results.append(next(e.data for e in run_call(c, list(order)) if e.type == "call.ended"))
    assert all(r == results[0] for r in results)
    assert results[0]["outcome"] == "answered"


def test_remembering_a_fact_returns_every_fact_of_the_call_in_one_round_trip(redis_client, namespace, monkeypatch):
    """The first copy of a field wins, the window is extended, and the call's facts come back with it."""
    import redis

    window = RedisCallWindow(redis_client, namespace=namespace, window_seconds=600)
    assert window.remember("acct", "call-1", "channel_create:a", {"from": "+1"}) == {"channel_create:a": {"from": "+1"}}
    round_trips: list[str] = []
    for cls, method in ((redis.client.Pipeline, "execute"), (redis.Redis, "execute_command")):
        original = getattr(cls, method)
        monkeypatch.setattr(cls, method, lambda self, *a, _o=original, _m=method, **k: (
            round_trips.append(_m), _o(self, *a, **k))[1])
    window.remember("acct", "call-1", "channel_create:a", {"from": "+2"})
    facts = window.remember("acct", "call-1", "channel_answer:b", {"to": "+3"})
    monkeypatch.undo()
    assert facts == {"channel_create:a": {"from": "+1"}, "channel_answer:b": {"to": "+3"}}
    assert round_trips == ["execute", "execute"], "one pipeline, no other command, per fact"
    assert 590 < redis_client.ttl(f"{namespace}:call:acct:call-1") <= 600
