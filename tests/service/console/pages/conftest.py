"""Page fixtures: an app on a database with accounts A and B, users of every role, and a morning of history for A
(calls, deliveries with attempts, a paused connection) whose tenant-supplied values are hostile markup."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from cryptography.fernet import Fernet

from service import accounts
from service.config import Settings
from service.console import users
from service.console.audit import CLI_ACTOR
from service.engine import planning
from service.runtime import Runtime
from service.store.models import Connection, Delivery, DeliveryAttempt, StoredEvent
from service.web.app import create_app
from tests.service.console.conftest import ACCOUNT_A, ACCOUNT_B, PASSWORD

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
HOSTILE = '<script>alert("x")</script>'
RULES = f"""
account: {{id: {ACCOUNT_A}, name: Acme Dental, timezone: America/New_York}}
connections:
  chat: {{integration: slack, bot_token: xoxb-pages-tests-secret}}
rules:
  - name: call log
    on: [call.ended, call.missed]
    do: [{{use: chat, action: post_message, with: {{channel: C1, text: "{{{{ event.type }}}}"}}}}]
"""


def csrf_of(response) -> str:
    """The CSRF token in a rendered form."""
    return CSRF.search(response.get_data(as_text=True)).group(1)


def signed_in(app, email: str):
    """A test client signed in as ``email``."""
    client = app.test_client()
    token = csrf_of(client.get("/console/login"))
    response = client.post("/console/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302
    return client


def add_call(session, account_id: str, call_key: str, at: datetime, *, outcome: str, caller_name: str,
             number: str) -> StoredEvent:
    """A call.ended event (what the correlator stores) and its A-leg hook."""
    session.add(StoredEvent(account_id=account_id, key=f"virtualpbx:{call_key}:create",
                            type="virtualpbx.channel_create",
                            occurred_at=at - timedelta(minutes=2), received_at=at - timedelta(minutes=2),
                            data={"hook": "channel_create", "call_id": call_key, "caller_id_number": number,
                                  "caller_id_name": caller_name, "call_direction": "inbound"}))
    event = StoredEvent(account_id=account_id, key=f"call.ended:{call_key}", type="call.ended", occurred_at=at,
                        received_at=at, data={"call_id": call_key, "direction": "inbound", "outcome": outcome,
                                              "caller": {"name": caller_name, "number": number},
                                              "callee": {"name": None, "number": "+12025550100"},
                                              "duration": 95, "talk_time": 80 if outcome == "answered" else 0})
    session.add(event)
    return event


@pytest.fixture
def console(tmp_path, database_url, sessions_for, redis_url, namespace, redis_client):
    """The app; accounts A (with rules, a paused connection and a morning of history) and B; users op@ (operator),
    owner@, editor@ and viewer@ of A, and b-owner@ of B."""
    key = Fernet.generate_key().decode()
    settings = Settings(_env_file=None, var_dir=tmp_path / "var", redis_url=redis_url, namespace=namespace,
                        database_url=database_url, secret_keys=key, public_url="https://relay.example.com")
    rt = Runtime(settings)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    local_midnight = (now.astimezone(ZoneInfo("America/New_York"))
                      .replace(hour=0, minute=0, second=0).astimezone(timezone.utc))
    with sessions_for.begin() as db:
        users.create_user(db, "op@example.com", PASSWORD, is_operator=True, actor=CLI_ACTOR)
        for role in ("owner", "editor", "viewer"):
            user = users.create_user(db, f"{role}@example.com", PASSWORD, is_operator=False, actor=CLI_ACTOR)
            users.set_role(db, ACCOUNT_A, user, role, actor=CLI_ACTOR)
        b_owner = users.create_user(db, "b-owner@example.com", PASSWORD, is_operator=False, actor=CLI_ACTOR)
        users.set_role(db, ACCOUNT_B, b_owner, "owner", actor=CLI_ACTOR)
        for account_id in (ACCOUNT_A, ACCOUNT_B):  # tokens under this app's key, so the hook URLs decrypt
            for kind in ("virtualpbx", "crm"):
                accounts.rotate_token(db, account_id, box=rt.box, kind=kind)
        accounts.apply_rules(db, RULES, account_id=ACCOUNT_A, filename="rules.yaml", base_dir=tmp_path,
                             registry=rt.registry, box=rt.box, supplied_by="operator")
        db.flush()
        chat = db.query(Connection).filter_by(account_id=ACCOUNT_A, name="chat").one()
        chat.paused_reason = f"slack rejected the token {HOSTILE}"
        ids = {}
        for n, (outcome, status) in enumerate([("answered", "succeeded"), ("missed", "failed"),
                                               ("voicemail", "retrying"), ("missed", "dead")]):
            # 40 minutes of calls, but never before the account's midnight: "today" on the overview is New York's
            # day, and in the first 40 minutes after its midnight some calls would be yesterday's.
            at = max(now - timedelta(minutes=10 * (4 - n)), local_midnight + timedelta(seconds=n + 1))
            event = add_call(db, ACCOUNT_A, f"call-{n}", at, outcome=outcome, caller_name=f"{HOSTILE} {n}",
                             number=f"+1202555012{n}")
            delivery = Delivery(account_id=ACCOUNT_A, event_key=event.key, event_type="call.ended",
                                rule_name=f"{HOSTILE} rule", action_index=0, connection="chat", integration="slack",
                                action="post_message", params={"text": "x"}, status=status, attempts=1,
                                last_error=f"boom {HOSTILE}" if status != "succeeded" else None, created_at=at)
            db.add(delivery)
            db.flush()
            db.add(DeliveryAttempt(delivery_id=delivery.id, account_id=ACCOUNT_A, number=1, started_at=at,
                                   duration_ms=120 + n, outcome=status, status_code=200 if n == 0 else 500,
                                   error=None if n == 0 else f"HTTP 500 {HOSTILE}",
                                   request_excerpt='{"text": "x"}', response_excerpt=f"<b>{HOSTILE}</b>"))
            ids[status] = delivery.id
        b_event = add_call(db, ACCOUNT_B, "call-b", now - timedelta(minutes=5), outcome="answered",
                           caller_name="Bolt caller", number="+13125550100")
        b_delivery = Delivery(account_id=ACCOUNT_B, event_key=b_event.key, event_type="call.ended", rule_name="b rule",
                              action_index=0, connection="x", integration="slack", action="post_message", params={},
                              status="dead", created_at=now)
        db.add(b_delivery)
        db.flush()
        ids["other"] = b_delivery.id
    planning._RULES_CACHE.clear()
    app = create_app(settings, start_drainer=False)
    app.settings, app.runtime, app.delivery_ids = settings, rt, ids
    yield app
    rt.sessions.kw["bind"].dispose()
