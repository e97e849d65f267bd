"""CRM hooks: Standard Webhooks signatures, field mapping, idempotency keys and the opt-out list."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import crm
from service.rules.schema import CrmSpec
from service.store.models import migrate, session_factory
from service.web.signing import SignatureError, sign, verify

SECRET = "whsec_" + base64.b64encode(b"a-32-byte-long-shared-secret!!!!").decode()
NOW = datetime(2026, 11, 27, 15, 0, tzinfo=timezone.utc)


def signed_headers(body: bytes, *, secret: str = SECRET, at: float | None = None, msg_id: str = "msg_1") -> dict:
    """Standard Webhooks headers for ``body``."""
    stamp = int(time.time() if at is None else at)
    return {"webhook-id": msg_id, "webhook-timestamp": str(stamp),
            "webhook-signature": sign(secret, msg_id, stamp, body)}


def test_a_correct_signature_verifies():
    """A body signed with the account's secret passes, also among several signatures (key rotation)."""
    body = b'{"id": "evt_1"}'
    headers = signed_headers(body)
    verify(SECRET, headers, body)
    headers["webhook-signature"] = "v1,bm90LXRoaXMtb25l " + headers["webhook-signature"]
    verify(SECRET, headers, body)


@pytest.mark.parametrize("mutate, message", [
    (lambda h, b: (h, b + b" "), "no webhook-signature matches"),
    (lambda h, b: ({**h, "webhook-signature": "v2," + h["webhook-signature"][3:]}, b), "no webhook-signature"),
    (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b), "missing"),
    (lambda h, b: ({**h, "webhook-timestamp": str(int(time.time()) - 301)}, b), "more than 5 minutes"),
    (lambda h, b: ({**h, "webhook-timestamp": str(int(time.time()) + 301)}, b), "more than 5 minutes"),
    (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "not an integer"),
    (lambda h, b: ({**h, "webhook-id": "msg_2"}, b), "no webhook-signature matches"),
], ids=["body-changed", "wrong-version", "no-id", "too-old", "too-new", "bad-timestamp", "other-id"])
def test_bad_signatures_are_refused(mutate, message):
    """Tampered, replayed, stale or incomplete signatures raise SignatureError with the reason."""
    body = b'{"id": "evt_1"}'
    headers, body = mutate(signed_headers(body), body)
    with pytest.raises(SignatureError, match=message):
        verify(SECRET, headers, body)


def test_another_secret_does_not_verify():
    """A signature made with another secret is refused."""
    other = "whsec_" + base64.b64encode(b"another-secret").decode()
    body = b"{}"
    with pytest.raises(SignatureError):
        verify(SECRET, signed_headers(body, secret=other), body)


@settings(max_examples=200, deadline=None)
@given(headers=st.dictionaries(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature"]),
                               st.text(max_size=80)), body=st.binary(max_size=200))
def test_hostile_headers_only_raise_signature_error(headers, body):
    """Random header values never crash verification."""
    with pytest.raises(SignatureError):
        verify(SECRET, headers, body)


MAPPING = CrmSpec(event_id="id", fields={"phone": "contact.phone", "first_name": "contact.first_name"},
                  opt_out="contact.sms_opt_out")


def test_fields_are_mapped_by_dotted_path():
    """Mapped variables come from the payload; missing paths are None; the payload stays available."""
    payload = {"id": "evt_9", "contact": {"phone": "555-123-4567", "first_name": "Ana"}}
    event = crm.crm_event(payload, account_id="acc", crm=MAPPING, received_at=NOW)
    assert event.type == "crm.event" and event.key == "crm.event:evt_9"
    assert event.data["phone"] == "555-123-4567" and event.data["first_name"] == "Ana"
    assert event.data["payload"] == payload and event.data["opt_out"] is False


def test_event_id_falls_back_to_webhook_id_then_a_hash():
    """Without the CRM's id the webhook-id header, else the body hash, keys the event."""
    payload = {"contact": {"phone": "x"}}
    with_header = crm.crm_event(payload, account_id="a", crm=MAPPING, received_at=NOW, webhook_id="msg_7")
    hashed = crm.crm_event(payload, account_id="a", crm=MAPPING, received_at=NOW)
    again = crm.crm_event(dict(payload), account_id="a", crm=None, received_at=NOW)
    assert with_header.key == "crm.event:wh:msg_7"
    assert hashed.key.startswith("crm.event:sha256:") and hashed.key == again.key


@pytest.mark.parametrize("flag, expected", [(True, True), ("yes", True), ("TRUE", True), ("1", True),
                                            (False, False), ("no", False), (None, False), ({}, False)])
def test_opt_out_flags(flag, expected):
    """Common truthy spellings opt the contact out."""
    payload = {"id": "e", "contact": {"phone": "+15551234567", "sms_opt_out": flag}}
    assert crm.crm_event(payload, account_id="a", crm=MAPPING, received_at=NOW).data["opt_out"] is expected


@pytest.mark.parametrize("raw, expected", [("555-123-4567", "+15551234567"), ("+44 20 7946 0958", "+442079460958"),
                                           ("123", None), ("not a number", None), (None, None)])
def test_to_e164(raw, expected):
    """Numbers normalise with the account's region; invalid ones are None."""
    assert crm.to_e164(raw, "US") == expected


def test_stop_and_start_replies_maintain_the_opt_out_list(database_url):
    """STOP adds the sender to the list, START removes it, anything else changes nothing."""
    migrate(database_url)
    sessions = session_factory(database_url)
    reply = lambda body: {"from": "+1 (555) 123-4567", "body": body}  # noqa: E731
    with sessions.begin() as session:
        assert crm.apply_sms_reply(session, "acc", reply(" stop "), "US") == "opted_out"
        assert crm.apply_sms_reply(session, "acc", reply("STOP"), "US") == "opted_out"
        assert crm.is_opted_out(session, "acc", "+15551234567")
        assert not crm.is_opted_out(session, "other", "+15551234567")
        assert crm.apply_sms_reply(session, "acc", reply("see you at 3"), "US") is None
        assert crm.is_opted_out(session, "acc", "+15551234567")
        assert crm.apply_sms_reply(session, "acc", reply("START"), "US") == "opted_in"
        assert not crm.is_opted_out(session, "acc", "+15551234567")
    sessions.kw["bind"].dispose()


@pytest.mark.parametrize("word", ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"])
def test_every_carrier_stop_word_opts_out(database_url, word):
    """The carriers' STOP keywords, in any case and with spaces around, put the sender on the list."""
    migrate(database_url)
    sessions = session_factory(database_url)
    with sessions.begin() as session:
        assert crm.apply_sms_reply(session, "acc", {"from": "+15551234567", "body": f" {word.lower()} "},
                                   "US") == "opted_out"
        assert crm.is_opted_out(session, "acc", "+15551234567")
    sessions.kw["bind"].dispose()


def test_only_start_and_unstop_opt_back_in_never_yes(database_url):
    """YES (an everyday answer) and OPTIN leave an opted-out number opted out; START and UNSTOP re-opt in."""
    migrate(database_url)
    sessions = session_factory(database_url)
    reply = lambda body: {"from": "+15551234567", "body": body}  # noqa: E731
    with sessions.begin() as session:
        for word in ("START", "UNSTOP"):
            assert crm.apply_sms_reply(session, "acc", reply("STOP"), "US") == "opted_out"
            for not_consent in ("YES", "yes", "OPTIN", "Y"):
                assert crm.apply_sms_reply(session, "acc", reply(not_consent), "US") is None
                assert crm.is_opted_out(session, "acc", "+15551234567"), not_consent
            assert crm.apply_sms_reply(session, "acc", reply(word.lower()), "US") == "opted_in"
            assert not crm.is_opted_out(session, "acc", "+15551234567")
    sessions.kw["bind"].dispose()
