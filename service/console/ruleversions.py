"""The history of an account's rules: every applied version, the difference between two, and rolling back.

``service.accounts.apply_rules`` writes a ``ruleset_versions`` row on every apply (the redacted source, who
applied it, operator- or tenant-supplied), so this module only reads, except for :func:`rollback`, which
applies an old version's source again through ``apply_rules``: the same validation as any save, a new
version on top (history is never rewritten), and an audit entry naming the actor.

Signatures (as implemented):

- ``list_versions(session, account_id, *, cursor=None, limit=50) -> history.Page[RuleSetVersion]`` (newest first)
- ``get_version(session, account_id, version) -> RuleSetVersion``
- ``diff_versions(session, account_id, a, b) -> str`` (unified diff from version a to version b; "" when equal)
- ``rollback(rt, account_id, version, *, actor, supplied_by=None) -> RuleSetVersion`` (the new version);
  ``rollback_by(rt, account_id, version, principal)`` picks the supplier for a console or API caller

``rollback``'s ``supplied_by`` defaults to the old version's own. The console passes ``"tenant"`` for a principal
who is not an operator, so a tenant's rollback never applies rules with an operator's privileges (an old
operator version that reads ``env:`` or ``file:`` is then refused with the reason). Invalid rules (a connection
whose ``stored:`` secret is gone, a field no longer accepted) raise ``service.accounts.AccountError``, a
ValueError whose message names the file position and field, and nothing is changed.
"""

from __future__ import annotations

import difflib

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import accounts
from service import rules as rules_mod
from service.console import history
from service.console.access import Principal
from service.console.audit import audit
from service.console.errors import NotFound
from service.runtime import Runtime
from service.store.models import RuleSetVersion


def list_versions(session: Session, account_id: str, *, cursor: str | None = None,
                  limit: int = 50) -> history.Page[RuleSetVersion]:
    """A page of the account's applied rules versions, newest first."""
    query = sa.select(RuleSetVersion).where(RuleSetVersion.account_id == account_id)
    return history.keyset_page(session, query, RuleSetVersion.id, cursor, limit)


def get_version(session: Session, account_id: str, version: int | str) -> RuleSetVersion:
    """One applied version of the account's rules by its number; NotFound otherwise."""
    number = history.parse_row_id(version)
    row = session.scalars(sa.select(RuleSetVersion).where(
        RuleSetVersion.account_id == account_id, RuleSetVersion.version == number)).first() if number else None
    if row is None:
        raise NotFound("no such rules version")
    return row


def diff_versions(session: Session, account_id: str, a: int | str, b: int | str) -> str:
    """The unified diff from version ``a`` to version ``b`` of the account's rules ("" when they are the same)."""
    old, new = get_version(session, account_id, a), get_version(session, account_id, b)
    return "".join(difflib.unified_diff(old.source.splitlines(keepends=True), new.source.splitlines(keepends=True),
                                        fromfile=f"version {old.version}", tofile=f"version {new.version}"))


def rollback(rt: Runtime, account_id: str, version: int | str, *, actor: str,
             supplied_by: str | None = None) -> RuleSetVersion:
    """Apply an old version's rules again (validated like any save) as a new version; audited with ``actor``."""
    with rt.sessions.begin() as session:
        old = get_version(session, account_id, version)
        supplier = supplied_by or old.supplied_by
        ruleset = accounts.apply_rules(
            session, old.source, account_id=account_id, filename=f"<rules version {old.version}>",
            base_dir=rt.settings.var_dir, registry=rt.registry, box=rt.box, supplied_by=supplier,
            allow_private_urls=rt.settings.allow_private_urls,
            tenant_env_prefix=rt.settings.tenant_env_prefix if supplier == rules_mod.TENANT else None, actor=actor)
        audit(session, account_id, "rules_rolled_back",
              f"rules version {old.version} applied again as version {ruleset.version}", actor)
        return get_version(session, account_id, ruleset.version)


def rollback_by(rt: Runtime, account_id: str, version: int | str, principal: Principal) -> RuleSetVersion:
    """Roll back for a console or API caller: a member's rollback is the tenant's, whoever applied that version."""
    # An operator's keeps the old version's supplier; a tenant never applies rules with an operator's privileges.
    supplier = None if principal.is_operator else rules_mod.TENANT
    return rollback(rt, account_id, version, actor=principal.actor, supplied_by=supplier)
