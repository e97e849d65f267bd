"""Account settings for the console and the API: name, time zone, retention, hook URLs and their health,
token rotation, connecting the hooks with VirtualPBX, and the one way they change the rules document.

Name, time zone and retention live in the rules file's ``account:`` section, and connections in its
``connections:``: the rules document is the single source of truth, so every change here edits the stored
document and applies it again through ``accounts.apply_rules`` as tenant-supplied rules (validated whole,
atomic, versioned), never by writing the columns behind its back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlalchemy as sa
import yaml
from sqlalchemy.orm import Session

from service import accounts, tenant_data
from service import rules as rules_mod
from service.console.audit import audit
from service.console.errors import ConsoleError, NotFound
from service.engine import operations
from service.runtime import Runtime
from service.store.models import Account, Connection, RuleSet, StoredEvent

RULES_FILENAME = "rules.yaml"
# Which stored events prove that a hook endpoint is receiving.
HOOK_EVENT_TYPES: dict[str, Callable[[Any], Any]] = {
    "virtualpbx": lambda column: column.like("virtualpbx.%"),
    "crm": lambda column: column == "crm.event",
}


@dataclass(frozen=True)
class HookStatus:
    """One hook endpoint: its URL (holding the token) and when it last delivered an event."""

    kind: str
    url: str | None
    last_received_at: datetime | None


@dataclass(frozen=True)
class AccountSettings:
    """What the settings page and ``GET /accounts/{id}`` show."""

    id: str
    name: str
    timezone: str
    retention_days: int | None  # the rules file's own; None means the service default
    effective_retention_days: int
    rules_version: int | None
    hooks: list[HookStatus]
    paused_connections: list[str]


def account_settings(rt: Runtime, account_id: str, *, with_urls: bool = True) -> AccountSettings:
    """The account's settings, hook health and (``with_urls``: they hold the hook tokens) hook URLs."""
    with rt.sessions() as session:
        account = session.get(Account, account_id)
        if account is None:  # operators reach every id: one that does not exist is not found, as for tenants
            raise NotFound("no such account")
        ruleset = session.get(RuleSet, account_id)
        section = (yaml.safe_load(ruleset.source) or {}).get("account", {}) if ruleset else {}
        configured = section.get("retention_days")
        hooks = [HookStatus(kind, _hook_url(rt, account, kind) if with_urls else None,
                            _last_received(session, account_id, kind))
                 for kind in accounts.HOOK_KINDS]
        paused = list(session.scalars(sa.select(Connection.name).where(
            Connection.account_id == account_id, Connection.paused_reason.is_not(None)).order_by(Connection.name)))
        return AccountSettings(id=account.id, name=account.name, timezone=account.timezone,
                               retention_days=configured,
                               effective_retention_days=configured or rt.settings.retention_days,
                               rules_version=ruleset.version if ruleset else None, hooks=hooks,
                               paused_connections=paused)


def _hook_url(rt: Runtime, account: Account, kind: str) -> str | None:
    try:
        return accounts.hook_url(rt.settings.public_url, accounts.hook_token(account, rt.box, kind), kind)
    except accounts.AccountError:  # no stored token of this kind yet
        return None


def _last_received(session: Session, account_id: str, kind: str) -> datetime | None:
    return session.scalar(sa.select(sa.func.max(StoredEvent.received_at)).where(
        StoredEvent.account_id == account_id, HOOK_EVENT_TYPES[kind](StoredEvent.type)))


def apply_tenant_rules(session: Session, rt: Runtime, account_id: str, text: str, *, actor: str,
                       what: str = "rules applied") -> RuleSet:
    """Apply rules text as the tenant's (the path account only, no env:/file:), audited with the actor."""
    ruleset = accounts.apply_rules(session, text, account_id=account_id, filename=RULES_FILENAME,
                                   base_dir=Path(rt.settings.var_dir), registry=rt.registry, box=rt.box,
                                   supplied_by=rules_mod.TENANT, allow_private_urls=rt.settings.allow_private_urls,
                                   tenant_env_prefix=rt.settings.tenant_env_prefix, actor=actor)
    audit(session, account_id, "rules_applied", f"version {ruleset.version}: {what}", actor)
    return ruleset


def current_document(session: Session, account_id: str) -> dict[str, Any]:
    """The applied rules document (secrets as ``stored:``), or a minimal one for an account without rules."""
    account = accounts.get_account(session, account_id)
    ruleset = session.get(RuleSet, account_id)
    if ruleset is None:
        return {"account": {"id": account.id, "name": account.name, "timezone": account.timezone}}
    return yaml.safe_load(ruleset.source)


def edit_rules(rt: Runtime, account_id: str, edit: Callable[[dict[str, Any]], None], *, actor: str,
               what: str) -> RuleSet:
    """Change the rules document with ``edit`` and apply the result whole, in one transaction."""
    with rt.sessions.begin() as session:
        document = current_document(session, account_id)
        edit(document)
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        return apply_tenant_rules(session, rt, account_id, text, actor=actor, what=what)


UNSET = object()


def update_settings(rt: Runtime, account_id: str, *, actor: str, name: Any = UNSET, timezone: Any = UNSET,
                    retention_days: Any = UNSET) -> AccountSettings:
    """Change name, time zone and/or retention (None: back to the service default) through the rules document."""
    changes = {key: value for key, value in (("name", name), ("timezone", timezone),
                                             ("retention_days", retention_days)) if value is not UNSET}

    def edit(document: dict[str, Any]) -> None:
        section = document.setdefault("account", {})
        for key, value in changes.items():
            if value is None:
                section.pop(key, None)
            else:
                section[key] = value

    if changes:
        edit_rules(rt, account_id, edit, actor=actor, what="settings: " + ", ".join(sorted(changes)))
    return account_settings(rt, account_id)


def rotate_hook_token(rt: Runtime, account_id: str, kind: str, *, actor: str) -> str:
    """A new token (and URL) for one hook endpoint; the old URL stops working at once. Returns the new URL."""
    with rt.sessions.begin() as session:
        token = accounts.rotate_token(session, account_id, box=rt.box, kind=kind)
        audit(session, account_id, "token_rotated", f"{kind} hook token rotated", actor)
    accounts.revoke_cached_tokens(rt.redis, rt.settings.namespace)
    return accounts.hook_url(rt.settings.public_url, token, kind)


def connect_hooks(rt: Runtime, account_id: str, *, actor: str):
    """Register the hooks the rules need with VirtualPBX (idempotent); the ConnectReport."""
    return operations.connect_account(rt, account_id, actor=actor)


def export_account(rt: Runtime, account_id: str, *, actor: str) -> Iterator[str]:
    """Everything stored about the account as one JSON document, in pieces (audited before the first)."""
    with rt.sessions.begin() as session:
        accounts.get_account(session, account_id)
        audit(session, account_id, "account_exported", "full export of the account's data", actor)
    return tenant_data.export_account(rt, account_id)


def delete_account(rt: Runtime, account_id: str, *, confirm: str, actor: str) -> tenant_data.Deletion:
    """Delete the account and all its data, once ``confirm`` repeats its id; audited outside the account."""
    if confirm != account_id:
        raise ConsoleError("confirm: give the account's id to delete it and every piece of its data")
    result = tenant_data.delete_account(rt, account_id)
    with rt.sessions.begin() as session:  # the account's own audit log went with it: this entry is nobody's
        audit(session, None, "account_deleted", f"account {account_id}: {sum(result.rows.values())} rows, "
                                                f"{result.redis_keys} Redis keys, {result.spool_entries} spooled hooks",
              actor)
    return result
