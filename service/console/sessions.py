"""Server-side console sessions: created at sign-in, ended by idle or absolute expiry, or revoked."""

from __future__ import annotations

import secrets
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.console.audit import audit
from service.events import aware
from service.store.access import ConsoleSession, User
from service.store.models import hash_token, utcnow

# last_seen_at is written at most this often, so a busy page does not write on every request.
TOUCH_SECONDS = 60


def create_session(session: Session, user: User, *, absolute_seconds: int, user_agent: str | None = None,
                   ip: str | None = None) -> str:
    """Start a session for ``user``; returns the cookie value (only its hash is stored)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(ConsoleSession(id=hash_token(token), user_id=user.id, created_at=now, last_seen_at=now,
                               expires_at=now + timedelta(seconds=absolute_seconds),
                               user_agent=(user_agent or "")[:300] or None, ip=(ip or "")[:64] or None))
    return token


def load_session(session: Session, token: str | None, *, idle_seconds: int) -> tuple[ConsoleSession, User] | None:
    """The live session and its user for a cookie value; None when unknown, revoked, expired, idle or disabled."""
    if not token:
        return None
    row = session.get(ConsoleSession, hash_token(token))
    if row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    if aware(row.expires_at) <= now or aware(row.last_seen_at) + timedelta(seconds=idle_seconds) <= now:
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled_at is not None:
        return None
    if (now - aware(row.last_seen_at)).total_seconds() >= TOUCH_SECONDS:
        row.last_seen_at = now
    return row, user


def revoke_session(session: Session, token: str | None) -> None:
    """End one session (signing out); an unknown token is ignored."""
    if token:
        session.execute(sa.update(ConsoleSession).where(ConsoleSession.id == hash_token(token),
                                                        ConsoleSession.revoked_at.is_(None))
                        .values(revoked_at=utcnow()))


def revoke_all_sessions(session: Session, user_id: int, *, actor: str) -> int:
    """End every live session of a user (sign out everywhere), audited; returns how many were live."""
    result = session.execute(sa.update(ConsoleSession).where(ConsoleSession.user_id == user_id,
                                                             ConsoleSession.revoked_at.is_(None))
                             .values(revoked_at=utcnow()))
    audit(session, None, "signed_out_everywhere", f"user {user_id}: {result.rowcount} session(s) ended", actor)
    return result.rowcount
