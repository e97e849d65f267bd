"""The scheduler's jobs through the pipeline, against the local VirtualPBX: connect, re-enable, reconcile."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from service import accounts, engine
from service.config import Settings
from service.engine import planning
from service.runtime import Runtime
from service.sandbox.standins.base import serve_in_thread
from service.sandbox.virtualpbx import standin
from service.sandbox.virtualpbx.simulator import CallSimulator
from service.store.models import Account, AuditEntry, Delivery, migrate

ACCOUNT = standin.DEMO_ACCOUNT_ID


@pytest.fixture
def world(tmp_path, redis_url, namespace, redis_client):
    """The sandbox's VirtualPBX, and a Runtime whose account reaches it through a virtualpbx connection."""
    state = standin.demo_state()
    server = serve_in_thread(standin.create_app(state))
    settings = Settings(var_dir=tmp_path / "var", redis_url=redis_url, namespace=namespace,
                        database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", secret_keys=Fernet.generate_key().decode(),
                        virtualpbx_api_url=server.url, public_url="https://relay.example.test",
                        allow_private_urls=True)
    migrate(settings.effective_database_url)
    rt = Runtime(settings)
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""
account: {{id: {ACCOUNT}, name: Demo, timezone: America/New_York}}
connections:
  pbx: {{integration: virtualpbx, account_id: {ACCOUNT}, api_key: {standin.DEMO_API_KEY}}}
  chat: {{integration: slack, bot_token: xoxb-scheduled-jobs}}
rules:
  - name: call log
    on: [call.ended, call.missed]
    do: [{{use: chat, action: post_message, with: {{channel: C1, text: "{{{{ event.type }}}} {{{{ call_id }}}}"}}}}]
""")
    with rt.sessions.begin() as session:
        accounts.add_account(session, ACCOUNT, name="Demo", box=rt.box)
        accounts.apply_rules_file(session, rules, registry=rt.registry, box=rt.box)
    planning._RULES_CACHE.clear()
    yield rt, state
    server.stop()
    rt.sessions.kw["bind"].dispose()


def audit(rt, kind: str) -> list[str]:
    """Audit log details of one kind."""
    with rt.sessions() as session:
        return list(session.scalars(sa.select(AuditEntry.detail).where(AuditEntry.kind == kind)))


def test_connect_registers_the_hooks_the_rules_need_once(world):
    """accounts connect creates the channel and voicemail hooks at the account's URL; a second run changes nothing."""
    rt, state = world
    first = engine.connect_account(rt, ACCOUNT)
    hooks = state.accounts[ACCOUNT].webhooks.values()
    assert {h["hook"] for h in hooks} == {"channel_create", "channel_answer", "channel_bridge", "channel_destroy",
                                          "notifications"}
    assert all(h["uri"].startswith("https://relay.example.test/hooks/virtualpbx/") for h in hooks)
    assert len(first.created) == 5 and first.body_format == "json"
    second = engine.connect_account(rt, ACCOUNT)
    assert not second.changed_anything and len(second.unchanged) == 5
    assert len(audit(rt, "connected")) == 2


def test_disabled_hooks_are_reenabled_only_when_the_receiver_is_healthy(world):
    """A hook Kazoo disabled comes back once our receiver answers, and that is recorded."""
    rt, state = world
    engine.connect_account(rt, ACCOUNT)
    hook = next(iter(state.accounts[ACCOUNT].webhooks.values()))
    hook.update(enabled=False, disable_reason="too many failed attempts")
    assert engine.reenable_account_hooks(rt, ACCOUNT, receiver_healthy=False) == 0
    assert hook["enabled"] is False
    assert engine.reenable_account_hooks(rt, ACCOUNT, receiver_healthy=True) == 1
    assert state.accounts[ACCOUNT].webhooks[hook["id"]]["enabled"] is True
    assert "too many failed attempts" in audit(rt, "hook_reenabled")[0]


def test_reconciliation_emits_calls_whose_hooks_never_arrived_once(world):
    """Calls only in the CDRs become call.ended (and call.missed) deliveries, once, however often it runs."""
    rt, state = world
    now = datetime.now(timezone.utc)
    simulator = CallSimulator(state, ACCOUNT, seed=3, start=now - timedelta(minutes=50))
    calls = [simulator.run(scenario) for scenario in ("inbound_answered", "inbound_missed", "outbound", "voicemail")]
    planned = engine.reconcile_account(rt, ACCOUNT, now)
    with rt.sessions() as session:
        keys = sorted(session.scalars(sa.select(Delivery.event_key).where(Delivery.id.in_(planned))))
    ended = [f"call.ended:{c.a_leg.call_id}" for c in calls]
    missed = [f"call.missed:{c.a_leg.call_id}" for c in calls if c.scenario in ("inbound_missed", "voicemail")]
    assert keys == sorted(ended + missed)
    assert engine.reconcile_account(rt, ACCOUNT, now + timedelta(minutes=1)) == []
    with rt.sessions.begin() as session:
        session.get(Account, ACCOUNT).reconciled_until = None  # forget the cursor: the store still dedupes
    assert engine.reconcile_account(rt, ACCOUNT, now) == []
    assert audit(rt, "reconciled")
