"""Rules history on SQLite and PostgreSQL: every apply is a version with its actor; diff; rollback re-applies an old
version through apply_rules (validated, audited, a new version on top); another account's versions are NotFound."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from service import accounts
from service.console import ruleversions
from service.console.errors import ConsoleError, NotFound
from service.store.models import AuditEntry, Connection, RuleSet, RuleSetVersion
from tests.service.console.test_history import ACCOUNT, OTHER
from tests.service.console.test_history import rt as history_rt

rt = history_rt  # ACCOUNT has version 1 (applied by the operator's CLI); OTHER has no rules
ACTOR = "user:7"


def rules(text: str, connection: str = "chat") -> str:
    """A rules file for ACCOUNT posting ``text`` on call.ended through ``connection`` (its token stored)."""
    return f"""
account: {{id: {ACCOUNT}, name: Demo, timezone: America/New_York}}
connections:
  {connection}: {{integration: slack, bot_token: "stored:"}}
rules:
  - name: call log
    on: call.ended
    do: [{{use: {connection}, action: post_message, with: {{channel: C1, text: "{text}"}}}}]
"""


def apply(rt, text: str, *, actor: str = ACTOR, supplied_by: str = "tenant") -> int:
    """Apply rules to ACCOUNT as the console would; the new version number."""
    with rt.sessions.begin() as session:
        return accounts.apply_rules(session, text, account_id=ACCOUNT, filename="rules.yaml",
                                    base_dir=rt.settings.var_dir, registry=rt.registry, box=rt.box,
                                    supplied_by=supplied_by, actor=actor).version


def test_every_apply_is_a_version_with_its_actor_listed_newest_first(rt):
    """The CLI's apply is "operator-cli"; a console save names the user; pages walk them newest first."""
    assert apply(rt, rules("second")) == 2
    assert apply(rt, rules("third"), actor="api_key:3") == 3
    with rt.sessions() as session:
        first = ruleversions.list_versions(session, ACCOUNT, limit=2)
        rest = ruleversions.list_versions(session, ACCOUNT, cursor=first.next_cursor, limit=2)
        listed = first.items + rest.items
        assert [(v.version, v.actor, v.supplied_by) for v in listed] == [
            (3, "api_key:3", "tenant"), (2, ACTOR, "tenant"), (1, "operator-cli", "operator")]
        assert rest.next_cursor is None
        current = session.get(RuleSet, ACCOUNT)
        assert listed[0].source == current.source and listed[0].version == current.version
        assert "third" in ruleversions.get_version(session, ACCOUNT, 3).source
        assert ruleversions.get_version(session, ACCOUNT, "2").version == 2
        assert ruleversions.list_versions(session, OTHER).items == []
        for other_account, bad in ((OTHER, 1), (ACCOUNT, 4), (ACCOUNT, 0), (ACCOUNT, "1; drop"), (ACCOUNT, None)):
            with pytest.raises(NotFound):
                ruleversions.get_version(session, other_account, bad)
        with pytest.raises(ConsoleError, match="^cursor: "):
            ruleversions.list_versions(session, ACCOUNT, cursor="nope")


def test_diff_between_two_versions_is_a_unified_diff(rt):
    """The diff names both versions and shows the changed line; a version against itself is empty."""
    apply(rt, rules("second"))
    with rt.sessions() as session:
        diff = ruleversions.diff_versions(session, ACCOUNT, 1, 2)
        assert diff.startswith("--- version 1\n+++ version 2\n")
        assert "+      text: second\n" in diff and any(line.startswith("-") and "event.type" in line
                                                        for line in diff.splitlines()[2:])
        assert ruleversions.diff_versions(session, ACCOUNT, 2, 2) == ""
        with pytest.raises(NotFound):
            ruleversions.diff_versions(session, OTHER, 1, 2)


def test_rollback_applies_the_old_source_as_a_new_version_and_audits(rt):
    """Rolling back to version 1 makes version 3 with version 1's rules (connections too), supplied as version 1
    was unless the console says tenant; the audit entry names the actor."""
    with rt.sessions() as session:
        v1 = ruleversions.get_version(session, ACCOUNT, 1).source
    apply(rt, rules("second"))
    restored = ruleversions.rollback(rt, ACCOUNT, 1, actor=ACTOR)
    assert (restored.version, restored.source, restored.actor, restored.supplied_by) == (3, v1, ACTOR, "operator")
    as_tenant = ruleversions.rollback(rt, ACCOUNT, 2, actor=ACTOR, supplied_by="tenant")
    assert (as_tenant.version, as_tenant.supplied_by) == (4, "tenant")
    with rt.sessions() as session:
        ruleset = session.get(RuleSet, ACCOUNT)
        assert (ruleset.version, ruleset.supplied_by) == (4, "tenant") and "second" in ruleset.source
        entries = [(e.actor, e.detail) for e in session.scalars(
            sa.select(AuditEntry).where(AuditEntry.kind == "rules_rolled_back").order_by(AuditEntry.id))]
        assert entries == [(ACTOR, "rules version 1 applied again as version 3"),
                           (ACTOR, "rules version 2 applied again as version 4")]
    with pytest.raises(NotFound):
        ruleversions.rollback(rt, OTHER, 1, actor=ACTOR)


def test_a_rollback_that_no_longer_validates_changes_nothing(rt):
    """Version 1's connection is gone, so its stored: token cannot be resolved: refused with the reason, and the
    rules, connections and history stay as they were."""
    apply(rt, rules("moved", connection="team").replace('"stored:"', "xoxb-team-token"))
    with pytest.raises(accounts.AccountError, match="chat"):
        ruleversions.rollback(rt, ACCOUNT, 1, actor=ACTOR)
    with rt.sessions() as session:
        assert session.get(RuleSet, ACCOUNT).version == 2
        assert session.scalar(sa.select(sa.func.count()).select_from(RuleSetVersion)) == 2
        assert list(session.scalars(sa.select(Connection.name).where(Connection.account_id == ACCOUNT))) == ["team"]
