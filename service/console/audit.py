"""The audit log of changes made through the console, the API or the CLI, with who made each."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.store.models import AuditEntry

CLI_ACTOR = "operator-cli"


def audit(session: Session, account_id: str | None, kind: str, detail: str, actor: str) -> AuditEntry:
    """Record one change (account_id None for changes to no one account); ``actor`` is Principal.actor or CLI_ACTOR."""
    if not actor:
        raise ValueError("actor: every audited change names who made it")
    entry = AuditEntry(account_id=account_id, kind=kind, detail=detail, actor=actor)
    session.add(entry)
    return entry


def audit_entries(session: Session, account_id: str | None, limit: int = 100) -> list[AuditEntry]:
    """The newest audit entries of an account (or of no account when None), newest first."""
    where = AuditEntry.account_id.is_(None) if account_id is None else AuditEntry.account_id == account_id
    return list(session.scalars(sa.select(AuditEntry).where(where)
                                .order_by(AuditEntry.id.desc()).limit(limit)))
