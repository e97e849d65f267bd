"""The four use cases end to end with examples/demo.yaml: Kazoo hooks and CRM webhooks in at a running receiver,
results recorded by the sandbox's VirtualPBX standin and vendor stand-ins.

The account is onboarded as an operator would (`accounts add`, `rules apply`, `accounts connect`), so the
calls reach pbxrelay through the hooks `accounts connect` registered in the standin.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
import requests

from integrations.google_sheets.columns import ALL_COLUMNS
from integrations.virtualpbx.gregorian import GREGORIAN_UNIX_OFFSET
from service import sandbox
from service.rules.templating import render_template
from service.sandbox.standins.google_sheets import DEFAULT_SPREADSHEET_ID
from service.sandbox.standins.slack import DEFAULT_CHANNEL_ID
from service.sandbox.standins.trello import DEFAULT_LISTS
from service.sandbox.virtualpbx.sender import WebhookSender
from service.sandbox.virtualpbx.simulator import CallSimulator
from service.sandbox.virtualpbx.standin import DEMO_ACCOUNT_ID
from service.web.signing import sign
from tests.harness import Service, wait_for

pytestmark = pytest.mark.e2e

RULES = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"
TZ = "America/New_York"
VOICEMAIL_LIST = next(iter(DEFAULT_LISTS))
TRANSCRIPT = "Hi, this is a message about my appointment."
SHEET_COLUMNS = ["start_time", "direction", "caller_name", "caller_number", "callee_number", "answered_by",
                 "duration", "talk_time", "outcome", "voicemail", "call_id"]


def phone(number: str) -> str:
    """A number as the rules' `phone` filter shows it for the account's region."""
    return render_template("{{ n | phone }}", {"n": number}, timezone=TZ, region="US")


def localtime(moment: datetime) -> str:
    """A moment as the rules' `localtime` filter shows it in the account's zone."""
    return render_template("{{ t | localtime }}", {"t": moment}, timezone=TZ, region="US")


def gregorian(seconds: int) -> datetime:
    """A Kazoo (Gregorian seconds) timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds - GREGORIAN_UNIX_OFFSET, tz=timezone.utc)


@pytest.fixture(scope="module")
def env(tmp_path_factory, redis_url):
    """The sandbox, and pbxrelay (web, worker, scheduler) onboarded onto its demo account with examples/demo.yaml."""
    tmp = tmp_path_factory.mktemp("use_cases")
    box = sandbox.start("127.0.0.1", 0, var_dir=tmp / "sandbox")
    svc = Service(tmp, redis_url=redis_url, namespace=f"uc{uuid.uuid4().hex[:8]}", env=box.env)
    try:
        svc.cli("migrate")
        account = svc.add_account(DEMO_ACCOUNT_ID, "Demo Dental", TZ)
        svc.cli("rules", "apply", str(RULES))
        svc.start_web()
        svc.start_worker(concurrency=4)
        svc.start_scheduler()
        connected = svc.cli("accounts", "connect", DEMO_ACCOUNT_ID).stdout
        assert "created" in connected and "pbxrelay: sms" in connected, connected
        pbx = box.states["virtualpbx"]
        with pbx.lock:  # so the voicemail carries a transcript for the card to show
            for vmbox in pbx.accounts[DEMO_ACCOUNT_ID].vmboxes.values():
                vmbox["transcribe"] = True
        yield SimpleNamespace(svc=svc, box=box, pbx=pbx, hook_url=account["hook_url"],
                              crm_url=account["crm_hook_url"], secret=box.env["SANDBOX_CRM_SIGNING_SECRET"])
    finally:
        svc.stop()
        box.stop()


@pytest.fixture(scope="module")
def calls(env):
    """One answered, one missed and one voicemail call, played through the hooks `accounts connect` registered."""
    simulator = CallSimulator(env.pbx, DEMO_ACCOUNT_ID, sender=WebhookSender(env.pbx), seed=7)
    played = {scenario: simulator.run(scenario) for scenario in ("inbound_answered", "inbound_missed", "voicemail")}
    callers = [call.a_leg.caller_id_number for call in played.values()]
    assert len(set(callers)) == len(callers), "each call needs its own caller to tell their messages apart"
    with env.pbx.lock:
        delivered = [d for d in env.pbx.deliveries if d["result"] != "success"]
    assert not delivered, f"the receiver refused hooks: {delivered}"
    return played


def cards_for(env, voicemail_id: str) -> list[dict]:
    """Voicemail-list cards whose marker names ``voicemail_id``."""
    return [c for c in env.box.states["trello"].cards_in(VOICEMAIL_LIST)
            if f"voicemail-id: {voicemail_id}" in c["desc"].splitlines()]


def delivery(env, event_key: str, rule: str) -> dict | None:
    """The delivery of ``rule`` for ``event_key`` once it is finished, else None."""
    found = [d for d in env.svc.deliveries(DEMO_ACCOUNT_ID) if d["event_key"] == event_key and d["rule"] == rule]
    assert len(found) <= 1, found
    return found[0] if found and found[0]["status"] not in ("pending", "retrying", "running") else None


def post_crm(env, event: dict, *, secret: str | None = None) -> requests.Response:
    """POST a CRM event signed with the Standard Webhooks headers (the account's secret unless another is given)."""
    body = json.dumps(event).encode()
    msg_id, stamp = f"msg_{uuid.uuid4().hex}", int(time.time())
    return requests.post(env.crm_url, data=body, timeout=10, headers={
        "Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret or env.secret, msg_id, stamp, body)})


def texts_to(env, number: str) -> list[tuple[str, dict]]:
    """Every SMS either provider recorded for ``number``: ("virtualtext" | "dash", message)."""
    with env.pbx.lock:
        dash = [dict(m) for m in env.pbx.accounts[DEMO_ACCOUNT_ID].sms.values() if m["to"] == number]
    return ([("virtualtext", m) for m in env.box.states["virtualtext"].sent() if m["to"] == number]
            + [("dash", m) for m in dash])


# --- voicemail -> Trello ------------------------------------------------------------------------------

def test_voicemail_becomes_one_trello_card_with_its_recording(env, calls):
    """The card's title and description follow the template; the attachment is the standin's audio, byte for byte."""
    call = calls["voicemail"]
    voicemail_id = call.voicemail["media_id"]
    card = wait_for(lambda: (lambda found: found[0] if found and found[0]["attachments"] else None)(
        cards_for(env, voicemail_id)), timeout=60, message="the voicemail card with its attachment")
    caller = call.a_leg
    assert card["name"] == f"Voicemail from {caller.caller_id_name}, {phone(caller.caller_id_number)}"
    left_at = gregorian(call.voicemail["timestamp"])
    assert card["desc"].startswith(
        f"**Caller:** {caller.caller_id_name}, {phone(caller.caller_id_number)}\n"
        f"**Left at:** {localtime(left_at)}\n"
        f"**Length:** {round(call.voicemail['length'] / 1000)} s\n"
        f"**Mailbox:** 101\n\n"
        f"{TRANSCRIPT}\n")
    assert left_at.astimezone(ZoneInfo(TZ)).strftime("%Z") in card["desc"]  # the account's zone, not UTC
    with env.pbx.lock:
        audio, content_type = env.pbx.accounts[DEMO_ACCOUNT_ID].media[voicemail_id]
    [attachment] = card["attachments"]
    assert attachment["isUpload"] and attachment["mimeType"] == content_type
    assert attachment["name"].startswith("Voicemail recording")
    assert (attachment["bytes"], attachment["sha256"]) == (len(audio), hashlib.sha256(audio).hexdigest())


def test_a_redelivered_voicemail_hook_gives_no_second_card(env, calls):
    """Kazoo sending voicemail_new again is answered 200, kept as a duplicate, and creates nothing."""
    call = calls["voicemail"]
    voicemail_id = call.voicemail["media_id"]
    wait_for(lambda: cards_for(env, voicemail_id), timeout=60, message="the first card")
    notification = next(s.payload for s in call.steps if s.payload.get("event_name") == "voicemail_new")
    results = WebhookSender(env.pbx).dispatch(DEMO_ACCOUNT_ID, "notifications", notification)
    assert [r.status for r in results] == [200]
    wait_for(lambda: [q for q in env.svc.quarantine(DEMO_ACCOUNT_ID)
                      if q["reason"].startswith("duplicate") and voicemail_id in q["body"]],
             timeout=30, message="the copy quarantined as a duplicate")
    assert len(cards_for(env, voicemail_id)) == 1


# --- calls -> Google Sheets ---------------------------------------------------------------------------

def sheet_rows(env) -> tuple[list[str], dict[str, list[dict]]]:
    """The header and the rows by call_id."""
    rows = env.box.states["google_sheets"].rows(DEFAULT_SPREADSHEET_ID)
    if not rows:
        return [], {}
    header, by_call = rows[0], {}
    for row in rows[1:]:
        record = dict(zip(header, row + [""] * (len(header) - len(row))))
        by_call.setdefault(record["call_id"], []).append(record)
    return header, by_call


def test_each_call_is_one_sheet_row_with_the_documented_columns(env, calls):
    """An answered and a missed call: one row each (keyed by the A-leg), none for their B-legs."""
    answered, missed = calls["inbound_answered"], calls["inbound_missed"]
    wanted = {answered.a_leg.call_id, missed.a_leg.call_id}
    header, by_call = wait_for(lambda: (lambda h, rows: (h, rows) if wanted <= rows.keys() else None)(
        *sheet_rows(env)), timeout=60, message="rows for the answered and the missed call")
    assert header == SHEET_COLUMNS and set(SHEET_COLUMNS) <= set(ALL_COLUMNS)
    legs = {leg.call_id for call in (answered, missed) for leg in call.b_legs}
    assert not legs & by_call.keys()
    zone = ZoneInfo(TZ)
    b_leg = answered.b_legs[0]
    [row] = by_call[answered.a_leg.call_id]
    assert row == {
        "start_time": gregorian(answered.a_leg.created).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"),
        "direction": "inbound", "caller_name": answered.a_leg.caller_id_name,
        "caller_number": answered.a_leg.caller_id_number, "callee_number": "+15551230000",
        "answered_by": f"{b_leg.callee_id_name} ({b_leg.callee_id_number})",
        "duration": str(answered.a_leg.ended - answered.a_leg.created),
        "talk_time": str(b_leg.ended - b_leg.answered), "outcome": "answered", "voicemail": "no",
        "call_id": answered.a_leg.call_id}
    [row] = by_call[missed.a_leg.call_id]
    assert row == {
        "start_time": gregorian(missed.a_leg.created).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"),
        "direction": "inbound", "caller_name": missed.a_leg.caller_id_name,
        "caller_number": missed.a_leg.caller_id_number, "callee_number": "+15551230000", "answered_by": "",
        "duration": str(missed.a_leg.ended - missed.a_leg.created), "talk_time": "0", "outcome": "missed",
        "voicemail": "no", "call_id": missed.a_leg.call_id}


# --- call events -> Slack -----------------------------------------------------------------------------

def test_call_events_post_one_slack_message_each(env, calls):
    """Ringing, answered, missed and voicemail: one message per event, per call, and nothing else."""
    answered, missed, voicemail = calls["inbound_answered"], calls["inbound_missed"], calls["voicemail"]

    def expected(call, *texts: str) -> list[str]:
        caller = call.a_leg
        return sorted([f"Ringing: {caller.caller_id_name}, {phone(caller.caller_id_number)}", *texts])

    def missed_text(call, suffix: str) -> str:
        caller = call.a_leg
        return (f"Missed call from {caller.caller_id_name}, {phone(caller.caller_id_number)} "
                f"at {localtime(gregorian(caller.ended))}{suffix}")

    want = {
        "answered": expected(answered, f"{answered.b_legs[0].callee_id_name} picked up "
                                       f"{phone(answered.a_leg.caller_id_number)}"),
        "missed": expected(missed, missed_text(missed, "")),
        "voicemail": expected(voicemail, missed_text(voicemail, ", voicemail left"),
                              f"Voicemail from {phone(voicemail.a_leg.caller_id_number)} "
                              f"({round(voicemail.voicemail['length'] / 1000)}s): {TRANSCRIPT}"),
    }
    played = {"answered": answered, "missed": missed, "voicemail": voicemail}

    def got() -> dict[str, list[str]]:
        messages = env.box.states["slack"].messages_in(DEFAULT_CHANNEL_ID)
        return {name: sorted(m["text"] for m in messages if phone(call.a_leg.caller_id_number) in m["text"])
                for name, call in played.items()}

    wait_for(lambda: all(len(got()[name]) >= len(texts) for name, texts in want.items()), timeout=60,
             message="the Slack messages of the three calls")
    assert got() == want


# --- CRM -> SMS ---------------------------------------------------------------------------------------

def test_a_crm_event_texts_once_through_virtualtext_with_an_idempotency_key(env):
    """The same CRM event posted twice gives one SMS; the request carried the delivery's idempotency key."""
    event = {"id": "crm-vt-1", "type": "appointment.booked", "appointment": {"starts_at": "2026-12-01T15:30:00Z"},
             "contact": {"first_name": "Pat", "phone": "+12025550123", "sms_opt_out": False}}
    assert post_crm(env, event).status_code == 200
    assert post_crm(env, event).status_code == 200  # the CRM retries: new webhook-id, same event id
    done = wait_for(lambda: delivery(env, "crm.event:crm-vt-1", "appointment confirmation"), timeout=60,
                    message="the confirmation's delivery")
    wait_for(lambda: [q for q in env.svc.quarantine(DEMO_ACCOUNT_ID)
                      if q["reason"] == "duplicate of event crm.event:crm-vt-1"], timeout=30,
             message="the second post quarantined as a duplicate")
    [(provider, message)] = texts_to(env, "+12025550123")
    assert provider == "virtualtext" and done["status"] == "succeeded" and done["external_id"] == message["id"]
    assert message["idempotency_key"] == f"{DEMO_ACCOUNT_ID}:{done['id']}"
    assert message["body"] == (f"Hi Pat, your appointment at Demo Dental is booked for "
                               f"{localtime(datetime(2026, 12, 1, 15, 30, tzinfo=timezone.utc))}. "
                               "Reply STOP to opt out.")


def test_a_crm_event_texts_through_the_dash_api(env):
    """The payment reminder goes out through VirtualPBX (recorded by the standin), not VirtualText."""
    event = {"id": "crm-dash-1", "type": "invoice.overdue", "invoice": {"amount": "85.00"},
             "contact": {"first_name": "Sam", "phone": "+12125550199"}}
    assert post_crm(env, event).status_code == 200
    done = wait_for(lambda: delivery(env, "crm.event:crm-dash-1", "payment reminder"), timeout=60,
                    message="the reminder's delivery")
    assert done["status"] == "succeeded", done
    [(provider, message)] = texts_to(env, "+12125550199")
    assert provider == "dash" and message["message_id"] == done["external_id"]
    assert message["body"] == "Hi Sam, a balance of $85.00 is due at Demo Dental. Reply STOP to opt out."


def test_a_contact_the_crm_flags_as_opted_out_is_not_texted(env):
    """The delivery fails permanently, saying why; neither provider sees a message."""
    event = {"id": "crm-optout-1", "type": "appointment.booked", "appointment": {"starts_at": "2026-12-02T14:00Z"},
             "contact": {"first_name": "Jordan", "phone": "+13125550142", "sms_opt_out": "yes"}}
    assert post_crm(env, event).status_code == 200
    done = wait_for(lambda: delivery(env, "crm.event:crm-optout-1", "appointment confirmation"), timeout=60,
                    message="the confirmation's delivery")
    assert done["status"] == "failed" and "+13125550142 is on the account's opt-out list" in done["error"], done
    assert texts_to(env, "+13125550142") == []


def test_a_stop_reply_stops_the_next_text(env):
    """STOP arrives through Kazoo's `sms` hook (registered by `accounts connect`); the next SMS there is refused."""
    number = "+13125550177"
    inbound = {"id": "sms-in-1", "from": number, "to": "+15551230000", "body": "STOP"}
    assert [r.status for r in WebhookSender(env.pbx).dispatch(DEMO_ACCOUNT_ID, "sms", inbound)] == [200]
    # The Slack post of the inbound text is planned in the transaction that records the opt-out.
    wait_for(lambda: [m for m in env.box.states["slack"].messages_in(DEFAULT_CHANNEL_ID)
                      if m["text"] == f"Text from {phone(number)}: STOP"], timeout=60, message="the inbound text")
    event = {"id": "crm-after-stop", "type": "appointment.booked", "appointment": {"starts_at": "2026-12-03T14:00Z"},
             "contact": {"first_name": "Casey", "phone": number, "sms_opt_out": False}}
    assert post_crm(env, event).status_code == 200
    done = wait_for(lambda: delivery(env, "crm.event:crm-after-stop", "appointment confirmation"), timeout=60,
                    message="the confirmation's delivery")
    assert done["status"] == "failed" and f"{number} is on the account's opt-out list" in done["error"], done
    assert texts_to(env, number) == []


def test_a_bad_signature_is_refused_with_401(env):
    """A body signed with another secret never becomes an event."""
    event = {"id": "crm-forged", "type": "appointment.booked",
             "contact": {"first_name": "Mallory", "phone": "+12025550188"}}
    response = post_crm(env, event, secret="whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=")
    assert response.status_code == 401 and "signature" in response.json()["error"]
    unsigned = requests.post(env.crm_url, json=event, timeout=10)
    assert unsigned.status_code == 401
    assert not [d for d in env.svc.deliveries(DEMO_ACCOUNT_ID) if d["event_key"] == "crm.event:crm-forged"]
