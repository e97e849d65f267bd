"""The store's queries (what the CLI and the console read), on real SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from service import accounts
from service.secrets import SecretBox
from service.store import queries
from service.store.models import (
    Connection,
    Delivery,
    QuarantinedDelivery,
    RuleSet,
    StoredEvent,
    migrate,
    session_factory,
    utcnow,
)

ONE, TWO = "a" * 32, "b" * 32
BOX = SecretBox([Fernet.generate_key().decode()])


@pytest.fixture
def sessions(database_url):
    """A migrated database with two accounts: ONE has rules, deliveries, quarantine and connections."""
    migrate(database_url)
    factory = session_factory(database_url)
    with factory.begin() as session:
        accounts.add_account(session, ONE, name="One", box=BOX)
        accounts.add_account(session, TWO, name="Two", box=BOX)
        session.add(RuleSet(account_id=ONE, source="{}", version=3))
        for index, (account, status, key) in enumerate([(ONE, "succeeded", "e1"), (ONE, "dead", "e1"),
                                                        (ONE, "failed", "e2"), (ONE, "paused", "e2"),
                                                        (TWO, "dead", "e3"), (ONE, "discarded", "e2")]):
            session.add(Delivery(account_id=account, event_key=key, event_type="call.ended", rule_name="r",
                                 action_index=index, connection="chat", integration="slack",
                                 action="post_message", status=status, params={}))
        session.add(StoredEvent(account_id=ONE, key="e1", type="call.ended", occurred_at=utcnow(), data={"x": 1}))
        for reason in ("malformed: 1", "duplicate of event e1"):
            session.add(QuarantinedDelivery(account_id=ONE, reason=reason, method="POST"))
        for name in ("zeta", "alpha"):
            session.add(Connection(account_id=ONE, name=name, integration="slack", config_encrypted=BOX.encrypt({})))
    yield factory
    factory.kw["bind"].dispose()


def test_accounts_with_their_rules_version(sessions):
    with sessions() as session:
        rows = {account.id: version for account, version in queries.accounts_with_rules_version(session)}
    assert rows == {ONE: 3, TWO: None}


def test_delivery_log_is_one_accounts_newest_first_filtered_and_limited(sessions):
    with sessions() as session:
        log = queries.delivery_log(session, ONE)
        assert [d.status for d in log] == ["discarded", "paused", "failed", "dead", "succeeded"]
        assert [d.status for d in queries.delivery_log(session, ONE, status="dead")] == ["dead"]
        assert len(queries.delivery_log(session, ONE, limit=2)) == 2


def test_dead_letters_are_dead_failed_and_paused_of_every_account_or_one(sessions):
    with sessions() as session:
        assert [(d.account_id, d.status) for d in queries.dead_letters(session)] == [
            (TWO, "dead"), (ONE, "paused"), (ONE, "failed"), (ONE, "dead")]
        assert {d.status for d in queries.dead_letters(session, account_id=ONE)} == {"dead", "failed", "paused"}


def test_discard_touches_only_dead_letters(sessions):
    with sessions() as session:
        ids = {d.status: d.id for d in queries.delivery_log(session, ONE)}
    with sessions.begin() as session:
        assert queries.discard_dead(session, [ids["succeeded"], ids["dead"], ids["paused"]]) == 2
    with sessions() as session:
        assert sorted(d.status for d in queries.delivery_log(session, ONE)) == [
            "discarded", "discarded", "discarded", "failed", "succeeded"]


def test_events_quarantine_and_connections(sessions):
    with sessions() as session:
        assert queries.stored_event(session, ONE, "e1").data == {"x": 1}
        assert queries.stored_event(session, TWO, "e1") is None
        assert len(queries.delivery_ids_of_event(session, ONE, "e2")) == 3
        assert [q.reason for q in queries.quarantined(session, ONE)] == ["duplicate of event e1", "malformed: 1"]
        assert queries.quarantined(session, TWO) == []
        assert [c.name for c in queries.connections_of(session, ONE)] == ["alpha", "zeta"]
        assert len(queries.all_connections(session)) == 2


def test_insert_if_new_inserts_once_and_lets_other_integrity_errors_raise(sessions):
    """The first insert of a unique key returns its id, the second None with the first row kept; a NULL where
    none may be is still an error, not mistaken for "stored before"."""
    import sqlalchemy as sa
    from sqlalchemy.exc import IntegrityError

    row = {"account_id": TWO, "key": "k1", "type": "call.ended", "occurred_at": utcnow(), "data": {"n": 1}}
    with sessions.begin() as session:
        first = queries.insert_if_new(session, StoredEvent, row)
        again = queries.insert_if_new(session, StoredEvent, {**row, "data": {"n": 2}})
    assert isinstance(first, int) and again is None
    with sessions() as session:
        stored = queries.stored_event(session, TWO, "k1")
        assert (stored.id, stored.data) == (first, {"n": 1})
        assert session.scalar(sa.select(sa.func.count()).select_from(StoredEvent)
                              .where(StoredEvent.account_id == TWO)) == 1
    with pytest.raises(IntegrityError), sessions.begin() as session:
        queries.insert_if_new(session, StoredEvent, {**row, "key": "k2", "type": None})


def _statements(session) -> list[str]:
    """The SQL statements the session's connection runs from now on (collected into the returned list)."""
    import sqlalchemy as sa

    seen: list[str] = []
    sa.event.listen(session.connection(), "before_cursor_execute",
                    lambda _conn, _cursor, statement, *_: seen.append(statement))
    return seen


def test_account_and_rules_is_one_statement(sessions):
    """Ingest's account lookup brings the stored rules in the same round trip."""
    with sessions() as session:
        seen = _statements(session)
        account, rules = queries.account_and_rules(session, ONE)
        assert (account.id, account.timezone, rules, len(seen)) == (ONE, "UTC", (3, "{}"), 1)
        account, rules = queries.account_and_rules(session, TWO)
        assert (account.id, rules) == (TWO, None), "an account without rules is found too"
        assert queries.account_and_rules(session, "c" * 32) == (None, None)


def test_action_inputs_reads_account_rules_connection_and_event_in_one_statement(sessions):
    """What an action needs besides its row, in one round trip; each part None when it is missing."""
    with sessions() as session:
        seen = _statements(session)
        account, rules, connection, event = queries.action_inputs(session, ONE, "alpha", "e1")
        assert (account.id, rules.version, BOX.decrypt(connection.config_encrypted), connection.paused_reason) == (
            ONE, 3, {}, None)
        assert (event.account_id, event.key, event.type, event.data) == (ONE, "e1", "call.ended", {"x": 1})
        assert len(seen) == 1
        assert queries.action_inputs(session, ONE, "gone", "e9")[2:] == (None, None)
        account, rules, connection, event = queries.action_inputs(session, TWO, "alpha", "e1")
        assert (account.id, rules, connection, event) == (TWO, None, None, None), "another account's rows never"
        assert queries.action_inputs(session, "c" * 32, "alpha", "e1") == (None, None, None, None)
