"""The bad-input campaign: hostile bodies at the receiver and the worker never give a 5xx or a crash.

Property-based (hypothesis) over the receiver's three body forms, the CRM endpoint with and without
signatures, and the worker's ingest of whatever the receiver queued. Every input is either
accepted, quarantined with a reason, or refused with a 4xx that says why.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timezone
from urllib.parse import quote_from_bytes

import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import accounts, engine
from service.config import Settings
from service.runtime import Runtime
from service.secrets import secret_box
from service.store.models import QuarantinedDelivery, StoredEvent, migrate, session_factory
from service.web.app import create_app
from service.web.receiver import make_envelope

ACCOUNT = "91eb05e5c68d7ca05e7618b6821d2d16"
CRM_SECRET = "whsec_" + base64.b64encode(b"campaign-secret-0123456789abcdef").decode()
RULES = f"""
account: {{id: {ACCOUNT}, name: Campaign, timezone: America/New_York}}
crm: {{event_id: id, fields: {{phone: contact.phone}}, opt_out: contact.opt_out, signing_secret: {CRM_SECRET}}}
connections:
  chat: {{integration: slack, bot_token: xoxb-campaign-token}}
rules:
  - name: everything
    on: ["virtualpbx.*", "call.*", "voicemail.new", "crm.event"]
    do:
      - use: chat
        action: post_message
        with: {{channel: C1, text: "{{{{ event.type }}}}"}}
"""
SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                        max_size=4), max_leaves=20)
kazooish = st.fixed_dictionaries({}, optional={
    "hook_event": st.sampled_from(["channel_create", "channel_answer", "channel_bridge", "channel_destroy", "x"]),
    "call_id": st.text(max_size=20), "other_leg_call_id": st.text(max_size=20),
    "call_direction": st.sampled_from(["inbound", "outbound", "sideways"]),
    "timestamp": st.one_of(st.integers(), st.text(max_size=12)), "event_name": st.text(max_size=15),
    "event_category": st.just("notification"), "app_name": st.just("crossbar"),
    "voicemail_id": st.text(max_size=20), "voicemail_length": st.one_of(st.integers(), st.text(max_size=5)),
    "caller_id_number": st.text(max_size=20), "custom_data": json_values, "notify": json_values,
    "duration_seconds": st.one_of(st.integers(), st.text(max_size=5)), "is_internal_leg": json_values,
})


@pytest.fixture
def deployment(tmp_path, redis_url, namespace, redis_client):
    """Settings, a migrated SQLite store with one account and rules, and the receiver's test client."""
    config = Settings(var_dir=tmp_path / "var", redis_url=redis_url, namespace=namespace,
                      database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
                      secret_keys=Fernet.generate_key().decode(), max_body_bytes=8192)
    migrate(config.effective_database_url)
    rt = Runtime(config)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with session_factory(config.effective_database_url).begin() as session:
        created = accounts.add_account(session, ACCOUNT, name="Campaign", box=secret_box(config))
        accounts.apply_rules_file(session, rules, registry=rt.registry, box=rt.box)
    client = create_app(config, start_drainer=False).test_client()
    return client, created.token, rt, created.crm_token


@settings(max_examples=250, deadline=None, suppress_health_check=SUPPRESS)
@given(form=st.sampled_from(["json", "form", "get", "raw"]), payload=kazooish, raw=st.binary(max_size=3000),
       ctype=st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain", ""]))
def test_receiver_never_answers_5xx_to_an_authenticated_hook(deployment, form, payload, raw, ctype):
    """Any body in any of Kazoo's forms gets 200 (or 413 when too large), never a server error."""
    client, token, _, _ = deployment
    url = f"/hooks/virtualpbx/{token}"
    if form == "json":
        response = client.post(url, data=json.dumps(payload), content_type="application/json")
    elif form == "form":
        from service.sandbox.virtualpbx.sender import encode_kazoo_form

        try:
            body = encode_kazoo_form(payload)
        except TypeError:  # nested lists have no form-data encoding; send the raw bytes instead
            body = raw
        response = client.post(url, data=body, content_type="application/x-www-form-urlencoded")
    elif form == "get":
        response = client.get(f"{url}?{quote_from_bytes(raw, safe='=&[]%')}")
    else:
        response = client.post(url, data=raw, content_type=ctype)
    assert response.status_code in (200, 413), response.status_code


@settings(max_examples=250, deadline=None, suppress_health_check=SUPPRESS)
@given(payload=kazooish, raw=st.binary(max_size=600), as_json=st.booleans(), repeat=st.integers(1, 3))
def test_worker_ingest_never_crashes_and_keeps_every_delivery(deployment, payload, raw, as_json, repeat):
    """The worker stores or quarantines (with a reason) every delivery, however hostile, never raising."""
    _client, _token, rt, _ = deployment
    body = json.dumps(payload).encode() if as_json else raw
    for _ in range(repeat):
        envelope = make_envelope(source="virtualpbx", account_id=ACCOUNT, method="POST",
                                 content_type="application/json" if as_json else "application/octet-stream",
                                 query_string="", body=body, headers={})
        outcome = engine.ingest(rt, envelope)
        assert outcome.status in ("accepted", "duplicate", "quarantined")
        if outcome.status != "accepted":
            assert outcome.reason


@settings(max_examples=200, deadline=None, suppress_health_check=SUPPRESS)
@given(body=st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=500)),
       headers=st.dictionaries(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature"]),
                               st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)))
def test_crm_endpoint_refuses_unsigned_bodies_cleanly(deployment, body, headers):
    """With a signing secret configured, random headers get 401 (never 5xx) and nothing is queued."""
    client, _, _, crm_token = deployment
    response = client.post(f"/hooks/crm/{crm_token}", data=body, headers=headers, content_type="application/json")
    assert response.status_code == 401


def test_a_signed_crm_event_is_accepted_once(deployment):
    """A correctly signed CRM body gets 200; the worker stores one crm.event for two copies."""
    from service.web.signing import sign

    client, _, rt, crm_token = deployment
    body = json.dumps({"id": "evt_" + uuid.uuid4().hex, "contact": {"phone": "+15551230000"}}).encode()
    stamp = int(datetime.now(timezone.utc).timestamp())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(stamp),
               "webhook-signature": sign(CRM_SECRET, "msg_1", stamp, body)}
    assert client.post(f"/hooks/crm/{crm_token}", data=body, headers=headers,
                       content_type="application/json").status_code == 200
    envelope = make_envelope(source="crm", account_id=ACCOUNT, method="POST", content_type="application/json",
                             query_string="", body=body, headers={"webhook-id": "msg_1"})
    first, second = engine.ingest(rt, envelope), engine.ingest(rt, dict(envelope))
    assert (first.status, second.status) == ("accepted", "duplicate")
    assert len(first.deliveries) == 1
    with rt.sessions() as session:
        assert session.query(StoredEvent).filter_by(type="crm.event").count() == 1
        assert session.query(QuarantinedDelivery).count() == 1
