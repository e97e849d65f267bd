"""dry_run_text: a draft (rules not applied) answers exactly as dry_run does once the same rules are applied,
is validated like an apply, stores nothing, and renders at most max_actions actions."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from cryptography.fernet import Fernet

from service import accounts
from service import rules as rules_mod
from service.config import Settings
from service.engine.dryrun import dry_run, dry_run_text
from service.events import Event
from service.runtime import Runtime
from service.store.models import Delivery, RuleSet, StoredEvent, migrate
from tests.conftest import FIXTURES

ACCOUNT = "d" * 32
RULES = f"""\
account: {{id: {ACCOUNT}, name: Draft Dental, timezone: America/New_York}}
connections:
  chat: {{integration: slack, bot_token: xoxb-draft-token}}
rules:
  - name: missed
    on: call.missed
    do:
      - {{use: chat, action: post_message, with: {{channel: C1, text: "Missed {{{{ caller.number | phone }}}}"}}}}
  - name: every call
    on: "call.*"
    do:
      - {{use: chat, action: post_message, with: {{channel: C1, text: "A call event"}}}}
"""
HOOKS = [json.loads((FIXTURES / "kazoo" / f"webhook_{name}.json").read_text())
         for name in ("channel_create", "channel_answer", "channel_bridge", "channel_destroy",
                      "notifications_missed_call")]


@pytest.fixture
def rt(tmp_path, redis_url, namespace, redis_client, database_url):
    """A Runtime on a migrated database (SQLite and PostgreSQL) holding one account without rules."""
    settings = Settings(_env_file=None, var_dir=tmp_path / "var", redis_url=redis_url, namespace=namespace,
                        database_url=database_url, secret_keys=Fernet.generate_key().decode())
    migrate(database_url)
    runtime = Runtime(settings)
    with runtime.sessions.begin() as session:
        accounts.add_account(session, ACCOUNT, name="Draft Dental", box=runtime.box)
    yield runtime
    runtime.sessions.kw["bind"].dispose()


def test_draft_answers_as_the_applied_rules_do(rt):
    """The same payloads give the same events and rendered actions, before and after applying; the draft stores
    nothing."""
    draft = dry_run_text(rt, ACCOUNT, RULES, payloads=HOOKS)
    with rt.sessions() as session:
        assert session.get(RuleSet, ACCOUNT) is None
        assert session.query(StoredEvent).count() == 0 and session.query(Delivery).count() == 0
    assert {a["rule"] for a in draft["actions"]} == {"missed", "every call"}
    with rt.sessions.begin() as session:
        accounts.apply_rules(session, RULES, account_id=ACCOUNT, filename="r", base_dir=rt.settings.var_dir,
                             registry=rt.registry, box=rt.box, supplied_by="tenant")
    assert dry_run(rt, ACCOUNT, HOOKS) == draft


def test_draft_on_a_stored_event_and_the_render_cap(rt):
    """Events passed in are planned as they are; past max_actions an action is listed, not rendered."""
    event = Event(type="call.missed", account_id=ACCOUNT, key="k1", occurred_at=datetime.now(timezone.utc),
                  data={"caller": {"number": "+12025550123"}})
    result = dry_run_text(rt, ACCOUNT, RULES, events=[event])
    assert [a["with"]["text"] for a in result["actions"]] == ["Missed (202) 555-0123", "A call event"]
    capped = dry_run_text(rt, ACCOUNT, RULES, events=[event], max_actions=1)
    assert "with" in capped["actions"][0] and "with" not in capped["actions"][1]
    assert "at most 1 actions" in capped["actions"][1]["error"]


def test_draft_is_validated_like_an_apply(rt):
    """A broken draft raises RulesError naming the field; a draft for another account is refused."""
    with pytest.raises(rules_mod.RulesError) as broken:
        dry_run_text(rt, ACCOUNT, RULES.replace("use: chat, action: post_message", "use: chat, action: post"),
                     payloads=HOOKS)
    assert broken.value.field.startswith("do[0].action")
    with pytest.raises(accounts.AccountError, match="account.id"):
        dry_run_text(rt, ACCOUNT, RULES.replace(ACCOUNT, "e" * 32), payloads=HOOKS)
