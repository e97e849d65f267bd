"""Read and bulk-update queries over the store, as plain functions of a session (the CLI and the console use them).

Each function runs in the caller's session and transaction; none commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.store.models import Account, Connection, Delivery, QuarantinedDelivery, RuleSet, StoredEvent

# Actions that gave up: past the retry horizon, a permanent error, or an auth failure kept for replay.
DEAD_STATUSES = ("dead", "failed", "paused")


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


def stored_event(session: Session, account_id: str, key: str) -> StoredEvent | None:
    """The stored event with this key, or None."""
    return session.scalars(sa.select(StoredEvent).where(StoredEvent.account_id == account_id,
                                                        StoredEvent.key == key)).first()


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
