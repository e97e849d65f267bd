"""Every API resource doing its job, through HTTP: settings, connections (secrets write-only), rules, people,
opt-outs, quarantine, dead letters, events, calls and deliveries; each change audited with its actor."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import sqlalchemy as sa
import yaml

from service import engine
from service.console.audit import audit_entries
from service.queue import queue_names
from service.sandbox.virtualpbx import standin
from service.sandbox.virtualpbx.simulator import CallSimulator
from service.store.models import Connection, Delivery, DeliveryAttempt, QuarantinedDelivery
from service.web.receiver import make_envelope
from tests.conftest import FIXTURES
from tests.service.api.conftest import ACCOUNT_A, RULES_A
from tests.service.api.test_access import A, assert_problem

T0 = datetime(2026, 3, 2, 15, 0, tzinfo=timezone.utc)


def simulated_call(scenario: str, seed: int) -> tuple[str, list[dict]]:
    """(call id, hook payloads) of one simulated call, made for account A."""
    simulator = CallSimulator(standin.demo_state(), standin.DEMO_ACCOUNT_ID, seed=seed, start=T0)
    call = simulator.build(scenario, simulator.now)
    payloads = json.dumps([step.payload for step in call.steps]).replace(standin.DEMO_ACCOUNT_ID, ACCOUNT_A)
    return call.a_leg.call_id, json.loads(payloads)


def audited(api, kind: str) -> list:
    """Account A's audit entries of ``kind``."""
    with api.rt.sessions() as db:
        return [entry for entry in audit_entries(db, ACCOUNT_A) if entry.kind == kind]


def test_account_settings_hooks_and_changes_through_the_rules(api):
    owner = api.client("owner")
    body = owner.get(A).get_json()
    assert body["name"] == "Acme Dental" and body["timezone"] == "America/New_York"
    assert body["retention_days"] is None and body["effective_retention_days"] == api.settings.retention_days
    assert [h["kind"] for h in body["hooks"]] == ["virtualpbx", "crm"]
    assert body["hooks"][0]["url"].startswith(api.settings.public_url + "/hooks/virtualpbx/")
    assert [h["url"] for h in api.client("editor").get(A).get_json()["hooks"]] == [None, None]  # tokens: owners
    version = body["rules_version"]

    changed = owner.patch(A, json={"name": "Acme Dental & Co", "timezone": "Europe/Paris", "retention_days": 90})
    assert changed.status_code == 200, changed.get_data(as_text=True)
    assert changed.get_json()["retention_days"] == 90 and changed.get_json()["rules_version"] == version + 1
    rules = yaml.safe_load(owner.get(f"{A}/rules?format=yaml").get_data(as_text=True))
    assert rules["account"]["timezone"] == "Europe/Paris" and rules["account"]["retention_days"] == 90
    assert owner.patch(A, json={"retention_days": None}).get_json()["retention_days"] is None
    entry = audited(api, "rules_applied")[0]
    assert entry.actor.startswith("user:") and "settings" in entry.detail

    bad = assert_problem(owner.patch(A, json={"timezone": "Mars/Olympus"}), 422)
    assert bad["errors"][0]["field"] == "account.timezone"

    old_url = owner.get(A).get_json()["hooks"][1]["url"]
    rotated = owner.post(f"{A}/rotate-token", json={"kind": "crm"}).get_json()
    assert rotated["url"] != old_url and owner.get(A).get_json()["hooks"][1]["url"] == rotated["url"]
    assert audited(api, "token_rotated")[0].actor.startswith("user:")


def test_connections_never_show_secrets_and_keep_them_when_left_out(api_on):
    api = api_on  # SQLite and PostgreSQL
    writer = api.client("write")
    listed = writer.get(f"{A}/connections").get_json()["items"]
    assert [c["name"] for c in listed] == ["spare", "team-slack"]
    slack = next(c for c in listed if c["name"] == "team-slack")
    assert slack["secrets"] == {"bot_token": True, "webhook_url": False}
    assert slack["settings"]["api_url"] == "http://127.0.0.1:9/api/"
    raw = json.dumps(listed) + writer.get(f"{A}/connections/team-slack").get_data(as_text=True) + \
        writer.get(f"{A}/rules?format=yaml").get_data(as_text=True)
    assert "xoxb-1-secret-token-value" not in raw and "hooksecretvalue" not in raw

    # Replacing without the token keeps it; the token never comes back.
    replaced = writer.put(f"{A}/connections/team-slack", json={"integration": "slack", "settings": {
        "api_url": "http://127.0.0.1:9/api/", "default_channel": "C0STANDIN1"}})
    assert replaced.status_code == 200, replaced.get_data(as_text=True)
    assert replaced.get_json()["secrets"]["bot_token"] is True
    assert replaced.get_json()["settings"]["default_channel"] == "C0STANDIN1"
    with api.rt.sessions() as db:
        row = db.scalar(sa.select(Connection).where(Connection.account_id == ACCOUNT_A,
                                                    Connection.name == "team-slack"))
        assert api.rt.box.decrypt(row.config_encrypted)["bot_token"] == "xoxb-1-secret-token-value"

    created = writer.put(f"{A}/connections/sms", json={"integration": "virtualtext", "settings": {
        "api_key": "pk_live_supersecret", "api_url": "http://127.0.0.1:9"}})
    assert created.status_code == 201, created.get_data(as_text=True)
    assert created.get_json()["secrets"] == {"api_key": True} and "pk_live" not in created.get_data(as_text=True)
    assert audited(api, "rules_applied")[0].actor.startswith("api_key:")

    missing = assert_problem(writer.put(f"{A}/connections/sms2", json={"integration": "virtualtext"}), 422)
    assert missing["errors"][0]["field"].startswith("connections.sms2")
    unknown = assert_problem(writer.put(f"{A}/connections/x", json={"integration": "fax", "settings": {}}), 422)
    assert unknown["errors"][0]["field"] == "integration"
    env = assert_problem(writer.put(f"{A}/connections/x", json={"integration": "virtualtext", "settings": {
        "api_key": "env:HOME"}}), 422)
    assert "operator" in env["detail"]

    in_use = assert_problem(writer.delete(f"{A}/connections/team-slack"), 409)
    assert "missed calls" in in_use["detail"] and in_use["errors"][0]["field"] == "name"
    assert writer.delete(f"{A}/connections/spare").status_code == 204
    assert_problem(writer.get(f"{A}/connections/spare"), 404)
    assert_problem(writer.delete(f"{A}/connections/spare"), 404)


def test_rules_read_as_yaml_or_json_applied_validated_atomically(api_on):
    api = api_on  # SQLite and PostgreSQL
    writer = api.client("write")
    as_yaml = writer.get(f"{A}/rules", headers={"Accept": "text/yaml"})
    assert as_yaml.mimetype == "text/yaml" and "stored:" in as_yaml.get_data(as_text=True)
    as_json = writer.get(f"{A}/rules").get_json()
    assert as_json["document"]["account"]["id"] == ACCOUNT_A and as_json["supplied_by"] == "operator"
    version = as_json["version"]

    text = as_yaml.get_data(as_text=True).replace("Missed call from", "Call missed, from")
    checked = writer.post(f"{A}/rules/validate", data=text, content_type="text/yaml")
    assert checked.get_json() == {"valid": True, "would_be_version": version + 1}
    assert writer.get(f"{A}/rules").get_json()["version"] == version  # validate changed nothing

    applied = writer.put(f"{A}/rules", data=text, content_type="text/yaml")
    assert applied.get_json() == {"version": version + 1}
    document = writer.get(f"{A}/rules").get_json()["document"]
    assert document["rules"][0]["do"][0]["with"]["text"].startswith("Call missed, from")
    document["account"]["name"] = "From JSON"
    assert writer.put(f"{A}/rules", json=document).get_json() == {"version": version + 2}
    assert writer.get(A).get_json()["name"] == "From JSON"

    # A document with a problem changes nothing, and says where.
    document["rules"][0]["do"][0]["use"] = "nowhere"
    wrong = assert_problem(writer.put(f"{A}/rules", json=document), 422)
    assert any("nowhere" in e["message"] or e["field"].endswith("use") for e in wrong["errors"])
    document["rules"][0]["do"][0]["use"] = "team-slack"
    other = dict(document, account=dict(document["account"], id="c" * 32))
    foreign = assert_problem(writer.put(f"{A}/rules", json=other), 422)
    assert "account.id" in foreign["detail"]
    assert writer.get(f"{A}/rules").get_json()["version"] == version + 2
    assert "no rules" in assert_problem(api.client("b_write").get(f"/api/v1/accounts/{'b' * 32}/rules"),
                                        404)["detail"]


def test_connect_without_a_virtualpbx_connection_says_so(api):
    body = assert_problem(api.client("owner").post(f"{A}/connect"), 422)
    assert body["title"] == "Cannot be done" and "virtualpbx connection" in body["detail"]


def test_dry_run_payloads_and_a_stored_hook(api):
    writer = api.client("write")
    _call_id, payloads = simulated_call("inbound_missed", 3)
    result = writer.post(f"{A}/rules/dry-run", json={"payloads": payloads})
    assert result.status_code == 200, result.get_data(as_text=True)
    actions = result.get_json()["actions"]
    assert [a["rule"] for a in actions] == ["missed calls"] and actions[0]["with"]["text"].startswith("Missed call")
    both = assert_problem(writer.post(f"{A}/rules/dry-run", json={"payloads": payloads, "event_key": "x"}), 422)
    assert both["errors"][0]["field"] == "body"
    assert_problem(writer.post(f"{A}/rules/dry-run", json={"event_key": "nope"}), 404)

    ingest(api, payloads[0])
    events = api.client("read").get(f"{A}/events").get_json()["items"]
    hook = next(e for e in events if e["type"].startswith("virtualpbx."))
    stored = writer.post(f"{A}/rules/dry-run", json={"event_key": hook["key"]})
    assert stored.status_code == 200, stored.get_data(as_text=True)
    assert stored.get_json()["events"][0]["type"] == hook["type"]
    derived = next(e for e in events if not e["type"].startswith("virtualpbx."))
    refused = assert_problem(writer.post(f"{A}/rules/dry-run", json={"event_key": derived["key"]}), 422)
    assert refused["errors"][0]["field"] == "event_key"


def ingest(api, payload: dict) -> None:
    """One hook through the real ingest, as the receiver would queue it."""
    envelope = make_envelope(source="virtualpbx", account_id=ACCOUNT_A, method="POST",
                             content_type="application/json", query_string="", body=json.dumps(payload).encode(),
                             headers={})
    assert engine.ingest(api.rt, envelope).status == "accepted"


def test_events_calls_and_deliveries_with_attempts(api_on):
    api = api_on  # SQLite and PostgreSQL
    call_id, payloads = simulated_call("inbound_missed", 5)
    for payload in payloads:
        ingest(api, payload)
    engine.finalize_call(api.rt, ACCOUNT_A, call_id)
    reader = api.client("read")

    calls = reader.get(f"{A}/calls").get_json()["items"]
    assert [c["call_key"] for c in calls] == [call_id] and calls[0]["outcome"] == "missed"
    assert reader.get(f"{A}/calls?outcome=answered").get_json()["items"] == []
    assert_problem(reader.get(f"{A}/calls?outcome=sideways"), 422)
    detail = reader.get(f"{A}/calls/{call_id}").get_json()
    assert detail["legs"] and "call.missed" in [e["type"] for e in detail["events"]]
    assert detail["rules"] == ["missed calls"] and len(detail["deliveries"]) == 1
    assert_problem(reader.get(f"{A}/calls/no-such-call"), 404)

    events = reader.get(f"{A}/events?type=call.missed").get_json()["items"]
    assert len(events) == 1 and events[0]["occurred_at"].endswith(("Z", "+00:00"))
    assert reader.get(f"{A}/events/{events[0]['id']}").get_json()["key"] == events[0]["key"]
    assert reader.get(f"{A}/events/{events[0]['key']}").get_json()["id"] == events[0]["id"]
    assert_problem(reader.get(f"{A}/events?since=yesterday"), 422)

    deliveries = reader.get(f"{A}/deliveries?status=pending,retrying&rule=missed calls").get_json()["items"]
    assert len(deliveries) == 1 and deliveries[0]["connection"] == "team-slack"
    with api.rt.sessions.begin() as db:
        db.add(DeliveryAttempt(delivery_id=deliveries[0]["id"], account_id=ACCOUNT_A, number=1, started_at=T0,
                               duration_ms=12, outcome="retrying", status_code=503, error="Slack error",
                               request_excerpt="POST chat.postMessage", response_excerpt="503"))
    one = reader.get(f"{A}/deliveries/{deliveries[0]['id']}").get_json()
    assert one["attempts"][0]["status_code"] == 503 and one["params"]["channel"] == "C0STANDIN1"
    assert_problem(reader.get(f"{A}/deliveries?status=lost"), 422)
    assert_problem(reader.get(f"{A}/deliveries/999999"), 404)
    assert_problem(api.client("b_write").get(f"{A}/deliveries/{deliveries[0]['id']}"), 404)


def test_a_call_known_only_by_its_voicemail_is_in_the_calls_list(api_on):
    """Only the voicemail_new notification of a call arrived: the API lists the call once, outcome voicemail,
    and its detail has the voicemail.new event as the summary."""
    api = api_on  # SQLite and PostgreSQL
    call_id, payloads = simulated_call("inbound_answered", 6)
    for payload in payloads:
        ingest(api, payload)
    engine.finalize_call(api.rt, ACCOUNT_A, call_id)
    notification = json.loads((FIXTURES / "kazoo" / "webhook_notifications_voicemail_new.json").read_text())
    for voicemail_id in ("vm-1", "vm-2"):
        ingest(api, {**notification, "call_id": "vm-only-call", "voicemail_id": voicemail_id})
    reader = api.client("read")

    calls = reader.get(f"{A}/calls").get_json()["items"]
    assert [c["call_key"] for c in calls] == ["vm-only-call", call_id]
    assert (calls[0]["outcome"], calls[0]["voicemail_left"], calls[0]["direction"]) == ("voicemail", True, None)
    assert calls[0]["event_key"] == "voicemail.new:vm-2"
    first = reader.get(f"{A}/calls?limit=1").get_json()
    rest = reader.get(f"{A}/calls?limit=1&cursor={first['next_cursor']}").get_json()
    assert [c["call_key"] for c in first["items"] + rest["items"]] == ["vm-only-call", call_id]
    assert [c["call_key"] for c in reader.get(f"{A}/calls?outcome=voicemail").get_json()["items"]] == [
        "vm-only-call"]
    detail = reader.get(f"{A}/calls/vm-only-call").get_json()
    assert detail["summary"]["outcome"] == "voicemail"
    assert [e["type"] for e in detail["events"]] == ["voicemail.new", "voicemail.new"]


def test_people_api_keys_and_members(api):
    owner = api.client("owner")
    created = owner.post(f"{A}/api-keys", json={"name": "zapier", "scope": "write"})
    assert created.status_code == 201
    token = created.get_json()["token"]
    assert token.startswith("pbx_") and token.startswith(created.get_json()["prefix"])
    listed = owner.get(f"{A}/api-keys").get_json()["items"]
    assert "token" not in listed[0] and token not in json.dumps(listed)
    fresh = api.app.test_client()
    assert fresh.get(A, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert owner.delete(f"{A}/api-keys/{created.get_json()['id']}").status_code == 204
    assert_problem(fresh.get(A, headers={"Authorization": f"Bearer {token}"}), 401)
    assert_problem(owner.delete(f"{A}/api-keys/{10**6}"), 404)
    assert audited(api, "api_key_revoked")[0].actor.startswith("user:")

    invite = owner.post(f"{A}/invites", json={"email": "New@Example.com", "role": "editor"})
    assert invite.status_code == 201 and "/console/invite/" in invite.get_json()["invite_url"]
    assert owner.get(f"{A}/invites").get_json()["items"][0]["email"] == "new@example.com"
    assert_problem(owner.post(f"{A}/invites", json={"email": "not-an-email", "role": "editor"}), 422)

    members = {m["email"]: m for m in owner.get(f"{A}/members").get_json()["items"]}
    viewer = members["viewer@example.com"]["user_id"]
    assert owner.patch(f"{A}/members/{viewer}", json={"role": "editor"}).get_json()["role"] == "editor"
    assert owner.delete(f"{A}/members/{viewer}").status_code == 204
    assert_problem(owner.patch(f"{A}/members/{viewer}", json={"role": "owner"}), 404)
    me = members["owner@example.com"]["user_id"]
    last = assert_problem(owner.delete(f"{A}/members/{me}"), 422)
    assert last["errors"][0]["field"] == "role"
    assert_problem(owner.patch(f"{A}/members/{10**6}", json={"role": "viewer"}), 404)


def test_opt_outs_quarantine_and_dead_letters(api, redis_client):
    writer = api.client("write")
    assert writer.post(f"{A}/opt-outs", json={"number": "(555) 123-4567"}).get_json() == {
        "number": "+15551234567", "added": True}
    assert writer.post(f"{A}/opt-outs", json={"number": "+1 555 123 4567"}).status_code == 200
    assert [o["number"] for o in writer.get(f"{A}/opt-outs").get_json()["items"]] == ["+15551234567"]
    assert_problem(writer.post(f"{A}/opt-outs", json={"number": "call me"}), 422)
    assert writer.delete(f"{A}/opt-outs/+15551234567").status_code == 204
    assert_problem(writer.delete(f"{A}/opt-outs/+15551234567"), 404)
    assert [e.kind for e in audited(api, "opt_out_added") + audited(api, "opt_out_removed")] == [
        "opt_out_added", "opt_out_removed"]

    with api.rt.sessions.begin() as db:
        db.add(QuarantinedDelivery(account_id=ACCOUNT_A, reason="malformed: x", method="POST",
                                   content_type="application/json", body=b'{"hook_event": "x"}', received_at=T0))
        db.add(Delivery(account_id=ACCOUNT_A, event_key="e", event_type="call.missed", rule_name="r", action_index=0,
                        connection="team-slack", integration="slack", action="post_message", status="dead",
                        last_error="gave up"))
    quarantined = writer.get(f"{A}/quarantine").get_json()["items"]
    assert quarantined[0]["body_text"] == '{"hook_event": "x"}'
    assert [d["last_error"] for d in writer.get(f"{A}/dead-letters").get_json()["items"]] == ["gave up"]
    sent = writer.post(f"{A}/quarantine/{quarantined[0]['id']}/reingest")
    assert sent.status_code == 202, sent.get_data(as_text=True)
    # The hook is on the ingest queue again, as the receiver would have queued it (kombu's Redis list).
    queued = [json.loads(m) for m in redis_client.lrange(queue_names(api.settings)["ingest"], 0, -1)]
    envelopes = [json.loads(base64.b64decode(m["body"]))[0][0] for m in queued]
    assert [(e["body"], e["received_at"][:19]) for e in envelopes] == [('{"hook_event": "x"}', T0.isoformat()[:19])]
    assert writer.get(f"{A}/quarantine").get_json()["items"] == []
    assert audited(api, "quarantine_reingested")[0].actor.startswith("api_key:")
    assert_problem(writer.post(f"{A}/quarantine/{quarantined[0]['id']}/reingest"), 404)


def test_lists_page_by_cursor_with_a_link_header(api_on):
    writer = api_on.client("write")
    for n in range(7):
        assert writer.post(f"{A}/opt-outs", json={"number": f"+1555123400{n}"}).status_code == 201
    seen, url, pages = [], f"{A}/opt-outs?limit=3", 0
    while url:
        response = writer.get(url)
        body = response.get_json()
        seen += [item["number"] for item in body["items"]]
        pages += 1
        link = response.headers.get("Link")
        assert (link is None) == (body["next_cursor"] is None)
        url = link[1:link.index(">")] if link else None
        if url:
            assert 'rel="next"' in link and "limit=3" in url
    assert pages == 3 and seen == [f"+1555123400{n}" for n in reversed(range(7))]
    assert_problem(writer.get(f"{A}/opt-outs?cursor=bogus"), 422)
    assert assert_problem(writer.get(f"{A}/opt-outs?limit=1000"), 422)["errors"][0]["field"] == "limit"
    with api_on.rt.sessions.begin() as db:
        for n in range(5):
            db.add(Delivery(account_id=ACCOUNT_A, event_key=f"e{n}", event_type="call.missed", rule_name="r",
                            action_index=0, connection="c", integration="slack", action="post_message", status="dead"))
    first = writer.get(f"{A}/deliveries?status=dead&limit=2")
    second = writer.get(f"{A}/deliveries?status=dead&limit=2&cursor={first.get_json()['next_cursor']}")
    assert [d["event_key"] for d in first.get_json()["items"] + second.get_json()["items"]] == ["e4", "e3", "e2", "e1"]
    assert RULES_A  # the fixture's rules are applied on both databases


def test_export_and_delete_the_account(api):
    owner = api.client("owner")
    exported = owner.get(f"{A}/export")
    assert exported.status_code == 200 and "attachment" in exported.headers["Content-Disposition"]
    text = exported.get_data(as_text=True)
    doc = json.loads(text)
    assert doc["account"]["id"] == ACCOUNT_A and {c["name"] for c in doc["connections"]} == {"team-slack", "spare"}
    assert "xoxb-1-secret-token-value" not in text and "hooksecretvalue" not in text
    assert audited(api, "account_exported")[0].actor.startswith("user:")
    assert_problem(api.client("editor").get(f"{A}/export"), 403)

    wrong = assert_problem(owner.delete(A, json={"confirm": "yes"}), 422)
    assert wrong["errors"][0]["field"] == "confirm"
    assert owner.get(A).status_code == 200
    deleted = owner.delete(A, json={"confirm": ACCOUNT_A})
    assert deleted.status_code == 200 and deleted.get_json()["rows"]["accounts"] == 1
    assert_problem(api.client("op").get(A), 404)
    with api.rt.sessions() as db:
        entry = audit_entries(db, None)[0]
    assert entry.kind == "account_deleted" and ACCOUNT_A in entry.detail and entry.actor.startswith("user:")
