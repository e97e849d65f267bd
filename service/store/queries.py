"""Read and bulk-update queries over the store, as plain functions of a session (the CLI and the console use them).

Each function runs in the caller's session and transaction; none commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.store.models import Account, Connection, Delivery, QuarantinedDelivery, RuleSet, StoredEvent

# Actions that gave up: past the retry horizon, a permanent error, or an auth failure kept for replay.
DEAD_STATUSES = ("dead", "failed", "paused")


# The INSERT ... ON CONFLICT DO NOTHING of each supported database.
_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
# (database, model) -> that statement, built once: composing it anew cost more CPU than running it.
_INSERT_IF_NEW: dict[tuple[str, type], sa.Insert] = {}


def insert_if_new(session: Session, model: type, values: dict) -> int | None:
    """Insert a row unless one with the same unique key exists: the new row's id, or None when one existed.

    One statement (ON CONFLICT DO NOTHING ... RETURNING), where a savepoint around an ORM insert cost three round
    trips and a flush; other errors (a foreign key, a NULL) still raise."""
    key = (session.get_bind().dialect.name, model)
    statement = _INSERT_IF_NEW.get(key)
    if statement is None:
        table = model.__table__  # Core, not the ORM's bulk-insert path (which cost as much again per row)
        statement = _INSERT_IF_NEW[key] = _INSERTS[key[0]](table).on_conflict_do_nothing().returning(table.c.id)
    return session.execute(statement, values).scalar()


def accounts_with_rules_version(session: Session) -> Sequence[tuple[Account, int | None]]:
    """Every account with the version of its rules (None before the first `rules apply`)."""
    return session.execute(sa.select(Account, RuleSet.version).outerjoin(RuleSet)).all()


def delivery_conditions(account_id: str, *, status: Sequence[str] = (), connection: str | None = None,
                        rule_name: str | None = None, event_type: str | None = None, event_key: str | None = None,
                        since: datetime | None = None, until: datetime | None = None) -> list[sa.ColumnElement[bool]]:
    """WHERE conditions selecting an account's deliveries: any of ``status``, the other fields exactly, and
    created in [since, until) (aware UTC: SQLite compares the stored UTC wall time)."""
    where = [Delivery.account_id == account_id]
    if len(status) == 1:
        where.append(Delivery.status == status[0])
    elif status:
        where.append(Delivery.status.in_(list(status)))
    for column, value in ((Delivery.connection, connection), (Delivery.rule_name, rule_name),
                          (Delivery.event_type, event_type), (Delivery.event_key, event_key)):
        if value is not None:
            where.append(column == value)
    if since is not None:
        where.append(Delivery.created_at >= since)
    if until is not None:
        where.append(Delivery.created_at < until)
    return where


def delivery_log(session: Session, account_id: str, *, status: str | None = None, limit: int = 50) -> list[Delivery]:
    """An account's deliveries, newest first, optionally only those in ``status``."""
    query = sa.select(Delivery).where(Delivery.account_id == account_id)
    if status:
        query = query.where(Delivery.status == status)
    return list(session.scalars(query.order_by(Delivery.id.desc()).limit(limit)))


def quarantined(session: Session, account_id: str, *, limit: int = 50) -> list[QuarantinedDelivery]:
    """An account's deliveries kept but not processed, newest first."""
    return list(session.scalars(sa.select(QuarantinedDelivery).where(QuarantinedDelivery.account_id == account_id)
                                .order_by(QuarantinedDelivery.id.desc()).limit(limit)))


def dead_letters(session: Session, *, account_id: str | None = None, limit: int = 100) -> list[Delivery]:
    """Dead, failed and paused deliveries (of one account, or all), newest first."""
    query = sa.select(Delivery).where(Delivery.status.in_(DEAD_STATUSES))
    if account_id:
        query = query.where(Delivery.account_id == account_id)
    return list(session.scalars(query.order_by(Delivery.id.desc()).limit(limit)))


# An event by key (the delivery views and replay read it): built once (see _INSERT_IF_NEW).
_STORED_EVENT = sa.select(StoredEvent).where(StoredEvent.account_id == sa.bindparam("account_id"),
                                             StoredEvent.key == sa.bindparam("key"))


def stored_event(session: Session, account_id: str, key: str) -> StoredEvent | None:
    """The stored event with this key, or None."""
    return session.scalars(_STORED_EVENT, {"account_id": account_id, "key": key}).first()


# A connection by name (credentials, the console): built once.
_CONNECTION = sa.select(Connection).where(Connection.account_id == sa.bindparam("account_id"),
                                          Connection.name == sa.bindparam("name"))


def connection_named(session: Session, account_id: str, name: str) -> Connection | None:
    """An account's connection by name, or None."""
    return session.scalars(_CONNECTION, {"account_id": account_id, "name": name}).first()


class AccountRef(NamedTuple):
    """What the engine's hot paths read of an account."""

    id: str
    timezone: str


class StoredRules(NamedTuple):
    """An account's stored rules file: what parsing it needs (``RuleSet`` rows have the same two fields)."""

    version: int
    source: str


class ConnectionRef(NamedTuple):
    """What an action reads of its connection."""

    config_encrypted: bytes
    paused_reason: str | None


class EventRef(NamedTuple):
    """What an action reads of the event it acts on."""

    account_id: str
    key: str
    type: str
    occurred_at: datetime
    data: dict
    received_at: datetime | None


# Core selects of plain columns, built once: loading the same rows as ORM objects cost about twice the CPU.
_ACCOUNTS, _RULESETS = Account.__table__, RuleSet.__table__
_CONNECTIONS, _EVENTS = Connection.__table__, StoredEvent.__table__
_ACCOUNT_COLUMNS = (_ACCOUNTS.c.id, _ACCOUNTS.c.timezone, _RULESETS.c.version, _RULESETS.c.source)
# An account and its rules row in one round trip (ingest read them with two).
_ACCOUNT_AND_RULES = (sa.select(*_ACCOUNT_COLUMNS).select_from(_ACCOUNTS.outerjoin(_RULESETS))
                      .where(_ACCOUNTS.c.id == sa.bindparam("account_id")))


def _account_and_rules_of(row) -> tuple[AccountRef, StoredRules | None]:
    """The account and rules parts of a row that starts with _ACCOUNT_COLUMNS."""
    return AccountRef(row[0], row[1]), (StoredRules(row[2], row[3]) if row[2] is not None else None)


def account_and_rules(session: Session, account_id: str) -> tuple[AccountRef | None, StoredRules | None]:
    """An account and its stored rules (None when missing; both None without the account)."""
    row = session.execute(_ACCOUNT_AND_RULES, {"account_id": account_id}).first()
    return _account_and_rules_of(row) if row else (None, None)


# Everything an action reads besides its own row, in one round trip (it was four): the account, its rules,
# the connection the action names and the event it acts on.
_ACTION_INPUTS = (sa.select(*_ACCOUNT_COLUMNS, _CONNECTIONS.c.id, _CONNECTIONS.c.config_encrypted,
                            _CONNECTIONS.c.paused_reason, _EVENTS.c.id, *(_EVENTS.c[name] for name in EventRef._fields))
                  .select_from(_ACCOUNTS.outerjoin(_RULESETS)
                               .outerjoin(_CONNECTIONS, sa.and_(_CONNECTIONS.c.account_id == _ACCOUNTS.c.id,
                                                                _CONNECTIONS.c.name == sa.bindparam("connection")))
                               .outerjoin(_EVENTS, sa.and_(_EVENTS.c.account_id == _ACCOUNTS.c.id,
                                                           _EVENTS.c.key == sa.bindparam("event_key"))))
                  .where(_ACCOUNTS.c.id == sa.bindparam("account_id")))


def action_inputs(session: Session, account_id: str, connection: str, event_key: str
                  ) -> tuple[AccountRef | None, StoredRules | None, ConnectionRef | None, EventRef | None]:
    """An account, its stored rules, its connection named ``connection`` and its event ``event_key`` (each None
    when missing; all None without the account)."""
    row = session.execute(_ACTION_INPUTS, {"account_id": account_id, "connection": connection,
                                           "event_key": event_key}).first()
    if row is None:
        return None, None, None, None
    account, rules = _account_and_rules_of(row)
    found_connection = ConnectionRef(row[5], row[6]) if row[4] is not None else None
    event = EventRef(*row[8:]) if row[7] is not None else None
    return account, rules, found_connection, event


def delivery_ids_of_event(session: Session, account_id: str, event_key: str) -> list[int]:
    """Every delivery an event planned."""
    return list(session.scalars(sa.select(Delivery.id).where(Delivery.account_id == account_id,
                                                             Delivery.event_key == event_key)))


def discard_dead(session: Session, delivery_ids: Iterable[int]) -> int:
    """Mark these deliveries discarded where they are dead, failed or paused; how many were."""
    return session.execute(sa.update(Delivery).where(Delivery.id.in_(list(delivery_ids)),
                                                     Delivery.status.in_(DEAD_STATUSES))
                           .values(status="discarded")).rowcount


def connections_of(session: Session, account_id: str) -> list[Connection]:
    """An account's connections by name."""
    return list(session.scalars(sa.select(Connection).where(Connection.account_id == account_id)
                                .order_by(Connection.name)))


def all_connections(session: Session) -> list[Connection]:
    """Every account's connections (for re-encrypting credentials)."""
    return list(session.scalars(sa.select(Connection)))
