"""Accounts, connections, rules, events, quarantine and the delivery log, in SQL (SQLAlchemy 2).

SQLite by default, PostgreSQL in production; the schema is created by Alembic migrations
(``service/migrations``), never by ``create_all``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class Account(Base):
    """A VirtualPBX account pbxrelay serves; its hook token is stored only as a SHA-256 hash."""

    __tablename__ = "accounts"
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    timezone: Mapped[str] = mapped_column(sa.String(64), default="UTC")
    hook_token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True, index=True)
    # The token itself, encrypted, so `accounts connect` can register the hook URL with VirtualPBX.
    hook_token_encrypted: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # Standard Webhooks signing secret of the account's CRM hook, encrypted; None = token only.
    crm_secret_encrypted: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # Until when CDRs were reconciled against received hooks.
    reconciled_until: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class Connection(Base):
    """An account's credentials for one integration; ``config`` is MultiFernet-encrypted JSON."""

    __tablename__ = "connections"
    __table_args__ = (sa.UniqueConstraint("account_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    integration: Mapped[str] = mapped_column(sa.String(50))
    config_encrypted: Mapped[str] = mapped_column(sa.Text)
    paused_reason: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class RuleSet(Base):
    """The account's applied rules file (secrets redacted to ``stored:``), one row per account."""

    __tablename__ = "rulesets"
    account_id: Mapped[str] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    source: Mapped[str] = mapped_column(sa.Text)
    version: Mapped[int] = mapped_column(default=1)
    applied_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class StoredEvent(Base):
    """Every accepted event, once per (account, idempotency key): the de-duplication record."""

    __tablename__ = "events"
    __table_args__ = (sa.UniqueConstraint("account_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    key: Mapped[str] = mapped_column(sa.String(300))
    type: Mapped[str] = mapped_column(sa.String(100))
    occurred_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    data: Mapped[dict] = mapped_column(sa.JSON)


class QuarantinedDelivery(Base):
    """A delivery that was authenticated but not processed (malformed, unknown, duplicate), kept raw."""

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    reason: Mapped[str] = mapped_column(sa.Text)
    source: Mapped[str] = mapped_column(sa.String(30), default="virtualpbx")
    method: Mapped[str] = mapped_column(sa.String(10))
    content_type: Mapped[str] = mapped_column(sa.String(200), default="")
    query_string: Mapped[str] = mapped_column(sa.Text, default="")
    body: Mapped[str] = mapped_column(sa.Text, default="")
    received_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class Delivery(Base):
    """One planned action of one rule for one event, with every attempt's outcome (the delivery log)."""

    __tablename__ = "deliveries"
    __table_args__ = (sa.UniqueConstraint("account_id", "event_key", "rule_name", "action_index"),
                      # The scheduler's query, every second: what is due now.
                      sa.Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"))
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    event_key: Mapped[str] = mapped_column(sa.String(300))
    event_type: Mapped[str] = mapped_column(sa.String(100))
    rule_name: Mapped[str] = mapped_column(sa.String(200))
    action_index: Mapped[int] = mapped_column()
    connection: Mapped[str] = mapped_column(sa.String(100))
    integration: Mapped[str] = mapped_column(sa.String(50))
    action: Mapped[str] = mapped_column(sa.String(50))
    params: Mapped[dict] = mapped_column(sa.JSON, default=dict)
    # pending -> running -> succeeded | retrying | failed (permanent) | dead (past the retry horizon)
    status: Mapped[str] = mapped_column(sa.String(20), default="pending", index=True)
    # Running: the attempt holds the delivery until then (a re-sent task takes over after). Pending or retrying:
    # the scheduler sent a task for it and sends another only after then (the message may have been lost).
    claimed_until: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    # When a retrying (or deferred) delivery may be attempted again; the scheduler enqueues it then.
    next_attempt_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    external_id: Mapped[str | None] = mapped_column(sa.String(300), nullable=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class OptOut(Base):
    """A number that must never be texted for this account (replied STOP, or flagged by the CRM)."""

    __tablename__ = "opt_outs"
    __table_args__ = (sa.UniqueConstraint("account_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    number: Mapped[str] = mapped_column(sa.String(32))
    source: Mapped[str] = mapped_column(sa.String(50))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class AuditEntry(Base):
    """Something the service did on its own that an operator should be able to see later."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    kind: Mapped[str] = mapped_column(sa.String(50))
    detail: Mapped[str] = mapped_column(sa.Text)
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


def hash_token(token: str) -> str:
    """The stored form of a hook token (SHA-256 hex): a database leak does not reveal live URLs."""
    return hashlib.sha256(token.encode()).hexdigest()


def make_engine(url: str) -> sa.Engine:
    """An engine; SQLite gets WAL and a busy timeout so web and workers can share the file."""
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa_event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @sa_event.listens_for(engine, "savepoint")
        def _begin_before_first_savepoint(conn, _name):
            # pysqlite's legacy transaction control emits BEGIN only before INSERT/UPDATE/DELETE. A SAVEPOINT
            # sent first opens the transaction itself, and releasing it then COMMITs everything so far: an
            # ingest killed after storing its hook but before the call events would lose them for good.
            # SQLAlchemy's SQLite docs describe this ("Serializable isolation / Savepoints / Transactional DDL").
            dbapi_conn = conn.connection.dbapi_connection
            if not dbapi_conn.in_transaction:
                dbapi_conn.execute("BEGIN IMMEDIATE")  # a savepoint is opened to write: take the lock now

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (Alembic upgrade heads)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "heads")


@lru_cache(maxsize=4)
def session_factory(url: str) -> sessionmaker[Session]:
    """The process-wide session factory for ``url`` (engines are per process; reset after fork)."""
    return sessionmaker(make_engine(url), expire_on_commit=False)
