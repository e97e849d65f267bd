"""Accounts, connections, rules, events, quarantine and the delivery log, in SQL (SQLAlchemy 2).

SQLite by default, PostgreSQL in production; the schema is created by Alembic migrations
(``service/migrations``), never by ``create_all``.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from service.datafiles import DIR_MODE, private_file


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
    # The CRM hook's own token (a different secret from the VirtualPBX one), hashed and encrypted like it;
    # None for accounts created before 0003r until `rotate-token --crm` or a rules file with `crm:` makes one.
    crm_token_hash: Mapped[str | None] = mapped_column(sa.String(64), unique=True, index=True, nullable=True)
    crm_token_encrypted: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # Standard Webhooks signing secret of the account's CRM hook, encrypted; None = unsigned.
    crm_secret_encrypted: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # The rules file said `crm: {signing: none}`: unsigned CRM hooks are accepted (refused otherwise).
    crm_unsigned: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
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
    # "operator" (the CLI) or "tenant": who supplied the rules and the connections applied with them.
    supplied_by: Mapped[str] = mapped_column(sa.String(20), default="operator", server_default="operator")


class AccountLink(Base):
    """A Kazoo sub-account the operator linked to an account: its connections may name that id too."""

    __tablename__ = "account_links"
    account_id: Mapped[str] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    sub_account_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class StoredEvent(Base):
    """Every accepted event, once per (account, idempotency key): the de-duplication record."""

    __tablename__ = "events"
    __table_args__ = (sa.UniqueConstraint("account_id", "key"),
                      # The console's event and call lists: newest first per account, per type.
                      sa.Index("ix_events_account_id_id", "account_id", "id"),
                      sa.Index("ix_events_account_type_id", "account_id", "type", "id"),
                      # The console's overview: one day of an account's call events.
                      sa.Index("ix_events_account_type_occurred_at", "account_id", "type", "occurred_at"))
    id: Mapped[int] = mapped_column(primary_key=True)
    # Indexed by the (account_id, ...) indexes above.
    account_id: Mapped[str] = mapped_column(sa.String(64))
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
    # The raw bytes: NUL and invalid UTF-8 must survive (PostgreSQL's text refuses both).
    body: Mapped[bytes] = mapped_column(sa.LargeBinary, default=b"")
    received_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)

    @property
    def body_text(self) -> str:
        """The body for people: UTF-8, with NUL and undecodable bytes shown as backslash escapes."""
        return self.body.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


class Delivery(Base):
    """One planned action of one rule for one event, with every attempt's outcome (the delivery log)."""

    __tablename__ = "deliveries"
    __table_args__ = (sa.UniqueConstraint("account_id", "event_key", "rule_name", "action_index"),
                      # The scheduler's query, every second: what is due now.
                      sa.Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
                      # The console's delivery log: newest first (keyset on id) per account, and per filter,
                      # so each page is an index range scan however many rows the account has.
                      sa.Index("ix_deliveries_account_id_id", "account_id", "id"),
                      sa.Index("ix_deliveries_account_status_id", "account_id", "status", "id"),
                      sa.Index("ix_deliveries_account_connection_id", "account_id", "connection", "id"),
                      sa.Index("ix_deliveries_account_rule_id", "account_id", "rule_name", "id"),
                      sa.Index("ix_deliveries_account_event_type_id", "account_id", "event_type", "id"),
                      # A time window: replays reset created_at, so it does not follow id order.
                      sa.Index("ix_deliveries_account_created_at", "account_id", "created_at"))
    id: Mapped[int] = mapped_column(primary_key=True)
    # Indexed by the (account_id, ...) indexes above.
    account_id: Mapped[str] = mapped_column(sa.String(64))
    event_key: Mapped[str] = mapped_column(sa.String(300))
    event_type: Mapped[str] = mapped_column(sa.String(100))
    rule_name: Mapped[str] = mapped_column(sa.String(200))
    action_index: Mapped[int] = mapped_column()
    connection: Mapped[str] = mapped_column(sa.String(100))
    integration: Mapped[str] = mapped_column(sa.String(50))
    action: Mapped[str] = mapped_column(sa.String(50))
    params: Mapped[dict] = mapped_column(sa.JSON, default=dict)
    # False: params are the rule's templates, rendered with the stored event when the action runs (so a
    # slow template costs its own account's action, not the shared ingest); True: params are final.
    rendered: Mapped[bool] = mapped_column(default=False, server_default=sa.true())
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
    # When the effect landed at the vendor; with the event's received_at, the hook->effect latency.
    succeeded_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    # The receiver's id of the request whose hook planned this action (None for timers and replays).
    request_id: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)


class DeliveryAttempt(Base):
    """One attempt of a delivery that reached (or tried to reach) the vendor: when, how long, what came back.

    Written in the transaction that records the attempt's outcome on the delivery, so neither exists without
    the other. Rate-limit waits and deferrals reach no vendor and are not attempts. Every text is scrubbed
    of the connection's secrets and bounded (``ATTEMPT_TEXT_MAX``).
    """

    __tablename__ = "delivery_attempts"
    __table_args__ = (sa.Index("ix_delivery_attempts_delivery_id_id", "delivery_id", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(sa.ForeignKey("deliveries.id", ondelete="CASCADE"))
    account_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    number: Mapped[int] = mapped_column()  # the delivery's attempt count at this attempt (1, 2, ...)
    started_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    duration_ms: Mapped[int] = mapped_column()
    # succeeded | retrying | failed | dead | paused: the delivery's status this attempt left behind
    outcome: Mapped[str] = mapped_column(sa.String(20))
    status_code: Mapped[int | None] = mapped_column(nullable=True)  # the vendor's HTTP status, when known
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    request_excerpt: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    response_excerpt: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


# Longest error, request or response excerpt kept per attempt, in characters.
ATTEMPT_TEXT_MAX = 2000


class RuleSetVersion(Base):
    """Every rules file an account ever applied (secrets redacted, as in ``rulesets``), for history and rollback."""

    __tablename__ = "ruleset_versions"
    __table_args__ = (sa.UniqueConstraint("account_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column()
    source: Mapped[str] = mapped_column(sa.Text)
    applied_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    # The audit actor who applied it ("operator-cli", "user:<id>", "api_key:<id>", "migration").
    actor: Mapped[str] = mapped_column(sa.String(100), default="service", server_default="service")
    supplied_by: Mapped[str] = mapped_column(sa.String(20), default="operator", server_default="operator")


class ReplayJob(Base):
    """A bulk replay of an account's deliveries matching a filter, run by a worker task; its progress."""

    __tablename__ = "replay_jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    filter: Mapped[dict] = mapped_column(sa.JSON, default=dict)
    # queued -> running -> finished (or failed: the task gave up; ``error`` says why)
    status: Mapped[str] = mapped_column(sa.String(20), default="queued")
    total: Mapped[int | None] = mapped_column(nullable=True)
    done: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    # The id of the last delivery looked at: a task started again continues after it.
    last_delivery_id: Mapped[int | None] = mapped_column(nullable=True)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    actor: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)


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
    """A change to an account (or, with no account, to the console's people), and who made it."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    # None for changes to no one account (an operator created).
    account_id: Mapped[str | None] = mapped_column(sa.String(64), index=True, nullable=True)
    kind: Mapped[str] = mapped_column(sa.String(50))
    detail: Mapped[str] = mapped_column(sa.Text)
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    # "service" (the service on its own), "user:<id>", "api_key:<id>" or "operator-cli".
    actor: Mapped[str] = mapped_column(sa.String(100), default="service", server_default="service")


def hash_token(token: str) -> str:
    """The stored form of a hook token (SHA-256 hex): a database leak does not reveal live URLs."""
    return hashlib.sha256(token.encode()).hexdigest()


# The engine claims and inserts with RETURNING (SQLite 3.35, March 2021; Debian 12 has 3.40).
MIN_SQLITE = (3, 35)


def make_engine(url: str) -> sa.Engine:
    """An engine; SQLite gets WAL and a busy timeout so web and workers can share the file."""
    if url.startswith("sqlite:///"):
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise RuntimeError(f"pbxrelay needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer (for RETURNING); "
                               f"this Python's sqlite3 module has {sqlite3.sqlite_version}: use a newer Python build "
                               f"or PostgreSQL")
        path = Path(url[len("sqlite:///"):].split("?", 1)[0])
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # Tenant data: 0600 from the start. SQLite gives its -wal and -shm files the database file's mode.
        private_file(path)
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
    engine = sa.create_engine(url, pool_size=5, max_overflow=5)
    ping_when_idle(engine)
    return engine


# A pooled connection idle this long is pinged before use. pool_pre_ping pinged on every checkout: a round trip
# per transaction (three per hook end to end), 9 % of the action worker's time under load. A connection in use a
# moment ago is alive; one the server dropped since (a restart) fails its first statement, SQLAlchemy then
# invalidates the whole pool, and the task is retried like any database hiccup.
PING_AFTER_IDLE_SECONDS = 5.0


def ping_when_idle(engine: sa.Engine) -> None:
    """Ping a pooled connection before use when it sat idle PING_AFTER_IDLE_SECONDS or more; a dead one is
    replaced (the pool retries the checkout with a new connection)."""
    @sa_event.listens_for(engine, "checkin")
    def _idle_since(_dbapi_conn, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa_event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn, record, _proxy) -> None:
        if time.monotonic() - record.info.get("idle_since", float("inf")) < PING_AFTER_IDLE_SECONDS:
            return
        try:
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
        except Exception as exc:  # the DB-API's own error classes: any failure means this connection is unusable
            raise sa.exc.DisconnectionError(f"pooled connection failed its ping: {type(exc).__name__}") from exc


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (Alembic upgrade head)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


@lru_cache(maxsize=4)
def session_factory(url: str) -> sessionmaker[Session]:
    """The process-wide session factory for ``url`` (engines are per process; reset after fork)."""
    return sessionmaker(make_engine(url), expire_on_commit=False)
