"""service.pbx.reconcile: CDR rows from the standin (real HTTP) agree with the webhook path (real Redis)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from integrations.virtualpbx.client import VirtualPBXClient
from service.events import Event
from service.pbx.calls import CallCorrelator, RedisCallWindow
from service.pbx.payloads import to_hook_event
from service.pbx.reconcile import calls_from_cdrs, fetch_cdr_calls, missing_call_events, reconcile_window
from service.sandbox.standins.base import serve_in_thread
from service.sandbox.virtualpbx.simulator import CallSimulator, SimulatedCall
from service.sandbox.virtualpbx.standin import create_app
from service.sandbox.virtualpbx.state import StandinState

START = datetime(2025, 3, 3, 15, 0, tzinfo=timezone.utc)
SCENARIOS = ("inbound_answered", "inbound_missed", "ring_group", "voicemail", "outbound", "internal",
             "inbound_answered", "ring_group")
# The fields a call.ended carries that a user's rule or template can read.
COMPARED = ("call_id", "direction", "caller", "callee", "answered_by", "started_at", "ended_at", "duration",
            "talk_time", "ringing", "outcome", "voicemail_left", "voicemail_id", "hangup_cause", "legs", "owner_id")
# What CDRs cannot know: whether the caller left a voicemail (see service.reconcile's docstring).
VOICEMAIL_ONLY = {"outcome", "voicemail_left", "voicemail_id"}


@pytest.fixture
def world(redis_client, namespace):
    """An emulated account with three phones and a voicemail box, its calls played, and a client."""
    state = StandinState()
    account = state.add_account(name="Acme Dental")
    for first, last, extension in (("Alice", "Reception", "101"), ("Bob", "Billing", "102"),
                                   ("Carol", "Clinic", "103")):
        user = state.add_user(account.id, first_name=first, last_name=last, extension=extension)
        state.add_device(account.id, owner_id=user["id"], name=f"{first} desk")
    state.add_vmbox(account.id, owner_id=next(iter(account.users)), mailbox="101", name="Reception")
    simulator = CallSimulator(state, account.id, seed=11, start=START)  # no sender: CDRs and messages only
    calls = [simulator.run(scenario) for scenario in SCENARIOS]
    server = serve_in_thread(create_app(state))
    client = VirtualPBXClient(server.url, account_id=account.id, api_key=account.api_key, redis=redis_client,
                              namespace=namespace, timeout=5.0)
    yield state, account, calls, client
    server.stop()


def webhook_events(call: SimulatedCall, account_id: str, correlator: CallCorrelator) -> dict[str, Event]:
    """The call.ended / call.missed the webhook path finalises for one call, by key."""
    for step in call.steps:
        correlator.observe(to_hook_event(step.payload, account_id=account_id))
    return {event.key: event for event in correlator.finalize(account_id, call.a_leg.call_id)}


@pytest.fixture
def by_webhook(world, redis_client, namespace) -> dict[str, Event]:
    """Every call's webhook-path end events, keyed by event key."""
    _, account, calls, _ = world
    correlator = CallCorrelator(RedisCallWindow(redis_client, namespace=namespace, window_seconds=600))
    return {key: event for call in calls for key, event in webhook_events(call, account.id, correlator).items()}


def test_every_cdr_summary_agrees_with_the_webhook_path(world, by_webhook):
    _, account, calls, client = world
    rows = list(client.list_cdrs(START - timedelta(minutes=1), START + timedelta(hours=3)))
    assert all(isinstance(row["duration_seconds"], str) for row in rows)  # the listing sends numbers as strings
    by_cdr = {e.key: e for e in missing_call_events(account.id, calls_from_cdrs(rows), known_keys=set())}
    assert set(by_cdr) == set(by_webhook)
    assert {"call.missed:" + c.a_leg.call_id for c in calls if c.scenario in ("inbound_missed", "voicemail")} == {
        key for key in by_cdr if key.startswith("call.missed:")}
    for call in calls:
        key = f"call.ended:{call.a_leg.call_id}"
        cdr, hook = by_cdr[key], by_webhook[key]
        assert (cdr.occurred_at, cdr.data["source"]) == (hook.occurred_at, "cdr")
        differing = {f: (hook.data[f], cdr.data[f]) for f in COMPARED if hook.data[f] != cdr.data[f]}
        if call.scenario == "voicemail":
            assert differing == {"outcome": ("voicemail", "missed"), "voicemail_left": (True, False),
                                 "voicemail_id": (call.voicemail["media_id"], None)}
        else:
            assert differing == {}, call.scenario


def test_only_calls_missing_from_webhooks_are_proposed(world, by_webhook):
    _, account, calls, client = world
    arrived = calls[::2]
    known = {key for key in by_webhook if key.split(":", 1)[1] in {c.a_leg.call_id for c in arrived}}
    cdr_calls = calls_from_cdrs(client.list_cdrs(START - timedelta(minutes=1), START + timedelta(hours=3)))
    proposed = missing_call_events(account.id, cdr_calls, known)
    assert {e.key for e in proposed} == set(by_webhook) - known
    # A call.missed that did arrive (Kazoo's missed_call notification) is not proposed again.
    missed_call = next(c for c in calls[1::2] if c.scenario == "inbound_missed")
    again = missing_call_events(account.id, cdr_calls, known | {f"call.missed:{missed_call.a_leg.call_id}"})
    assert {e.key for e in proposed} - {e.key for e in again} == {f"call.missed:{missed_call.a_leg.call_id}"}


def test_cdr_rows_become_facts_in_the_webhook_shape(world):
    _, _, calls, client = world
    ring = next(c for c in calls if c.scenario == "ring_group")
    winner = next(leg for leg in ring.b_legs if leg.answered is not None)
    facts = calls_from_cdrs(client.get_cdr_legs(ring.interaction_id))[ring.a_leg.call_id]
    b_ids = [leg.call_id for leg in ring.b_legs]
    assert set(facts) == {f"{hook}:{leg}" for leg in [ring.a_leg.call_id, *b_ids]
                          for hook in ("channel_create", "channel_destroy")} | {f"channel_bridge:{winner.call_id}"}
    a_destroy = facts[f"channel_destroy:{ring.a_leg.call_id}"]
    assert (a_destroy["timestamp"], a_destroy["duration_seconds"], a_destroy["inception"]) == (
        ring.a_leg.ended, ring.a_leg.ended - ring.a_leg.created, ring.a_leg.request)
    assert facts[f"channel_create:{winner.call_id}"]["authorizing_type"] == "device"


def test_a_window_that_cut_a_call_fetches_its_other_legs(world, by_webhook):
    state, account, calls, client = world
    ring = next(c for c in calls if c.scenario == "ring_group")
    winner = next(leg for leg in ring.b_legs if leg.answered is not None)
    # The losing phones' CDRs were written at the answer, before this window; the A-leg's inside it.
    since = datetime.fromtimestamp(winner.answered + 1 - 62167219200, tz=timezone.utc)
    until = datetime.fromtimestamp(ring.a_leg.ended - 62167219200, tz=timezone.utc)
    key = f"call.ended:{ring.a_leg.call_id}"
    window_only = calls_from_cdrs(client.list_cdrs(since, until))[ring.a_leg.call_id]
    assert missing_call_events(account.id, {ring.a_leg.call_id: window_only}, set())[0].data["legs"] == 2
    fetched = fetch_cdr_calls(client, since, until)
    event = next(e for e in missing_call_events(account.id, fetched, set()) if e.key == key)
    assert {f: event.data[f] for f in ("legs", "answered_by", "started_at")} == {
        f: by_webhook[key].data[f] for f in ("legs", "answered_by", "started_at")}
    assert state.requests_to(f"/cdrs/legs/{ring.interaction_id}")


def test_reconcile_windows(caplog, world):
    now = datetime(2025, 3, 3, 18, 0, tzinfo=timezone.utc)
    assert reconcile_window(None, now) == (now - timedelta(hours=1), now - timedelta(minutes=2))
    last = now - timedelta(minutes=15)
    assert reconcile_window(last, now) == (last - timedelta(minutes=5), now - timedelta(minutes=2))
    with caplog.at_level(logging.WARNING, logger="service.pbx.reconcile"):
        created_from, created_to = reconcile_window(now - timedelta(days=40), now)
    assert created_to - created_from == timedelta(days=31)
    assert "longer than Kazoo's 31 days" in caplog.text
    client = world[3]
    list(client.list_cdrs(created_from, created_to))  # Kazoo (31 days + 1 h) accepts the clamped window
    assert reconcile_window(now + timedelta(minutes=10), now) == (now - timedelta(minutes=2),) * 2
    with pytest.raises(ValueError):
        reconcile_window(None, now.replace(tzinfo=None))
