"""A tenant's data is theirs: export all of an account, delete all of it, and purge what is past retention.

Every table with an ``account_id`` column is found through the SQLAlchemy metadata, so a table added
later is exported, deleted and checked by the tests without anyone remembering this module. Columns
named ``*_hash`` or ``*_encrypted`` hold credentials or hook tokens and never leave in an export.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Iterator

import sqlalchemy as sa

from service import rules as rules_mod
from service.accounts import AccountError
from service.runtime import Runtime
from service.store.models import Account, Base, Connection, Delivery, QuarantinedDelivery, StoredEvent, utcnow
from service.web.spool import Spool

log = logging.getLogger(__name__)

EXPORT_FORMAT = "pbxrelay.account-export/1"
PAGE_ROWS = 500
# Deliveries that will never run again; only these (and events no unfinished delivery needs) are purged.
FINISHED_STATUSES = ("succeeded", "failed", "dead", "discarded")
PURGE_BATCH_ROWS = 1000
# One scheduled run deletes at most this many batches per table and account; the next run continues.
PURGE_MAX_BATCHES = 50
_HIDDEN_SUFFIXES = ("_hash", "_encrypted")


def account_tables() -> list[sa.Table]:
    """Every table holding rows of one account (it has an ``account_id`` column), in dependency order."""
    return [t for t in Base.metadata.sorted_tables if "account_id" in t.c]


def _plain(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (bytes, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    return value


def _row_doc(table: sa.Table, row: sa.Row) -> dict[str, Any]:
    return {c.name: _plain(row._mapping[c]) for c in table.c if not c.name.endswith(_HIDDEN_SUFFIXES)}


def _pages(rt: Runtime, table: sa.Table, account_id: str) -> Iterator[sa.Row]:
    """The account's rows of ``table``, PAGE_ROWS per query (keyset on the primary key), one short session each."""
    order = list(table.primary_key.columns)[0]
    last = None
    while True:
        query = sa.select(table).where(table.c.account_id == account_id).order_by(order).limit(PAGE_ROWS)
        if last is not None:
            query = query.where(order > last)
        with rt.sessions() as session:
            rows = session.execute(query).all()
        yield from rows
        if len(rows) < PAGE_ROWS:
            return
        last = rows[-1]._mapping[order]


def _connection_doc(rt: Runtime, row: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A connection as exported: its settings with every secret field shown as ``stored:`` (as rules export does)."""
    integration = rt.registry.get(row["integration"])
    spec = rules_mod.ConnectionSpec.model_validate({**config, "integration": row["integration"]})
    settings = (rules_mod.redact_connection(spec, integration.Config) if integration is not None
                else {"integration": row["integration"]})  # an integration no longer installed: name only
    return {**row, "config": settings}


def export_account(rt: Runtime, account_id: str) -> Iterator[str]:
    """Everything stored about an account as one JSON document, yielded in pieces (rows are read page by page)."""
    with rt.sessions() as session:
        account = session.get(Account, account_id)
        if account is None:
            raise AccountError(f"no account {account_id} (add it with `pbxrelay accounts add`)")
        account_doc = _row_doc(Account.__table__, session.execute(
            sa.select(Account.__table__).where(Account.id == account_id)).one())
        account_doc["crm_signing_secret"] = "stored:" if account.crm_secret_encrypted else None
    yield "{" + f'"format": {json.dumps(EXPORT_FORMAT)}, "exported_at": {json.dumps(utcnow().isoformat())}, '
    yield f'"account": {json.dumps(account_doc)}'
    for table in account_tables():
        yield f', "{table.name}": ['
        for index, row in enumerate(_pages(rt, table, account_id)):
            doc = _row_doc(table, row)
            if table.name == Connection.__tablename__:
                doc = _connection_doc(rt, doc, rt.box.decrypt(row.config_encrypted))
            yield ("" if index == 0 else ", ") + json.dumps(doc, default=str)
        yield "]"
    yield "}\n"


# --------------------------------------------------------------------------------------------- delete

@dataclass
class Deletion:
    """What deleting an account removed."""

    account_id: str
    rows: dict[str, int] = field(default_factory=dict)
    redis_keys: int = 0
    spool_entries: int = 0

    @property
    def found_anything(self) -> bool:
        """Whether any row, key or spool entry of the account existed."""
        return bool(sum(self.rows.values()) or self.redis_keys or self.spool_entries)


def _connection_key_patterns(rt: Runtime, account_id: str | None) -> dict[str, set[str]]:
    """Redis key patterns named by connection settings (not by our account id), per account (None: all)."""
    query = sa.select(Connection)
    if account_id is not None:
        query = query.where(Connection.account_id == account_id)
    patterns: dict[str, set[str]] = {}
    with rt.sessions() as session:
        rows = [(c.account_id, c.integration, c.config_encrypted) for c in session.scalars(query)]
    for owner, integration_key, encrypted in rows:
        integration = rt.registry.get(integration_key)
        if integration is None:
            continue
        try:
            # Only the key names are needed, nothing is reached: any stored URL will do.
            instance = integration(integration.Config.model_validate(rt.box.decrypt(encrypted),
                                                                     context={"allow_private_urls": True}))
        except Exception as exc:  # a config that no longer validates names no keys; keep going
            log.warning("connection of %s (%s) names no Redis keys: %s", owner, integration_key, type(exc).__name__)
            continue
        patterns.setdefault(owner, set()).update(instance.redis_key_patterns(rt.settings.namespace, owner))
    return patterns


def _delete_rows(rt: Runtime, table: sa.Table, where, *, max_batches: int | None = None) -> int:
    """Delete the rows of ``table`` matching ``where`` in batches of PURGE_BATCH_ROWS, one transaction each."""
    key = list(table.primary_key.columns)[0]
    total, batches = 0, 0
    while max_batches is None or batches < max_batches:
        with rt.sessions.begin() as session:
            ids = list(session.scalars(sa.select(key).where(where).limit(PURGE_BATCH_ROWS)))
            if ids:
                session.execute(sa.delete(table).where(key.in_(ids)))
        total += len(ids)
        batches += 1
        if len(ids) < PURGE_BATCH_ROWS:
            break
    return total


def _delete_spooled(rt: Runtime, account_id: str) -> int:
    """Remove the account's envelopes waiting in the local spool (a drainer that took one first gets it)."""
    spool = Spool(rt.settings.var_dir / "spool", max_events=rt.settings.spool_max_events)
    removed = 0
    for path in spool.pending():
        try:
            envelope = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue  # claimed meanwhile, or not an envelope: not ours to judge
        if isinstance(envelope, dict) and envelope.get("account_id") == account_id:
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                continue  # a drainer claimed it: ingest finds no account and stores nothing
    return removed


def _delete_redis(rt: Runtime, account_id: str, connection_patterns: set[str]) -> int:
    """Delete every key of the namespace naming the account, and its connections' keys whose names hide the id."""
    ns = rt.settings.namespace
    patterns = {f"{ns}:*{account_id}*"} | connection_patterns
    deleted = 0
    for pattern in sorted(patterns):
        batch = []
        for key in rt.redis.scan_iter(pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += rt.redis.delete(*batch)
                batch = []
        if batch:
            deleted += rt.redis.delete(*batch)
    return deleted


def delete_account(rt: Runtime, account_id: str) -> Deletion:
    """Delete every row, Redis key, spool entry and voicemail link of an account; safe to run again.

    The account row goes first (its connections and rules with it), so the receiver and the workers
    stop taking or acting on its data; then its rows in every other table, its Redis keys and spool
    entries, and a second sweep of the tables for anything a task in flight committed meanwhile.
    """
    result = Deletion(account_id=account_id)
    mine = _connection_key_patterns(rt, account_id).get(account_id, set())
    # The account row first, with what references it: the receiver, the workers and voicemail links
    # (media.read_link wants the account) stop at once; ingest of a deleted account stores nothing.
    with rt.sessions.begin() as session:
        for table in account_tables():
            if any(fk.column.table.name == Account.__tablename__ for fk in table.foreign_keys):
                result.rows[table.name] = session.execute(
                    sa.delete(table).where(table.c.account_id == account_id)).rowcount
        result.rows["accounts"] = session.execute(sa.delete(Account).where(Account.id == account_id)).rowcount
    for sweep in range(2):
        for table in account_tables():
            result.rows[table.name] = result.rows.get(table.name, 0) + _delete_rows(
                rt, table, table.c.account_id == account_id)
        if sweep == 0:
            result.spool_entries = _delete_spooled(rt, account_id)
            # After the rows: a task that read the account before it went may still have written a key.
            result.redis_keys = _delete_redis(rt, account_id, mine)
    return result


# -------------------------------------------------------------------------------------------- retention

def retention_days(rt: Runtime, account_id: str) -> int:
    """The account's retention: its rules file's account.retention_days, else PBXRELAY_RETENTION_DAYS."""
    from service.engine.planning import ruleset_of

    with rt.sessions() as session:
        ruleset = ruleset_of(session, rt, account_id)
    configured = ruleset.account.retention_days if ruleset is not None else None
    return configured or rt.settings.retention_days


def purge_account(rt: Runtime, account_id: str, now: datetime,
                  max_batches: int | None = PURGE_MAX_BATCHES) -> dict[str, int]:
    """Delete the account's quarantined hooks, finished deliveries and events older than its retention."""
    cutoff = now - timedelta(days=retention_days(rt, account_id))
    unfinished = sa.select(Delivery.id).where(Delivery.account_id == StoredEvent.account_id,
                                              Delivery.event_key == StoredEvent.key,
                                              Delivery.status.not_in(FINISHED_STATUSES))
    return {
        "deliveries": _delete_rows(rt, Delivery.__table__, sa.and_(
            Delivery.account_id == account_id, Delivery.status.in_(FINISHED_STATUSES), Delivery.updated_at < cutoff),
            max_batches=max_batches),
        # An event a delivery still waits for stays: the action reads it when it runs.
        "events": _delete_rows(rt, StoredEvent.__table__, sa.and_(
            StoredEvent.account_id == account_id, StoredEvent.received_at < cutoff, ~sa.exists(unfinished)),
            max_batches=max_batches),
        "quarantine": _delete_rows(rt, QuarantinedDelivery.__table__, sa.and_(
            QuarantinedDelivery.account_id == account_id, QuarantinedDelivery.received_at < cutoff),
            max_batches=max_batches),
    }


def purge_expired(rt: Runtime, now: datetime | None = None) -> dict[str, int]:
    """Purge every account's rows past its retention (bounded batches); totals by table."""
    now = now or utcnow()
    with rt.sessions() as session:
        account_ids = list(session.scalars(sa.select(Account.id).order_by(Account.id)))
    totals: dict[str, int] = {}
    for account_id in account_ids:
        try:
            purged = purge_account(rt, account_id, now)
        except rules_mod.RulesError as exc:
            # Rules that no longer load hide the account's own retention: keep its data rather than guess.
            log.warning("retention of %s skipped: its rules do not load (%s)", account_id, exc)
            continue
        for table, count in purged.items():
            totals[table] = totals.get(table, 0) + count
    return totals
