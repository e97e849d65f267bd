"""Invite links: single-use and expiring; accepting one sets the password (new users) and the membership."""

from __future__ import annotations

import secrets
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.console import passwords, users
from service.console.audit import audit
from service.console.errors import ConsoleError
from service.events import aware
from service.store.access import Invite, User
from service.store.models import Account, hash_token, utcnow

INVITE_HOURS = 72


class InviteError(ConsoleError):
    """The invite link cannot be used (unknown, used or expired); the message says which, for the person holding it."""


def create_invite(session: Session, account_id: str, email: str, role: str, *, actor: str,
                  hours: int = INVITE_HOURS) -> str:
    """An invite for ``email`` to join the account as ``role``; returns the token (only its hash is stored)."""
    address = users.normalize_email(email)
    users.validate_role(role)
    if not 1 <= hours <= 24 * 30:
        raise ConsoleError("hours: an invite lasts between 1 hour and 30 days")
    if session.get(Account, account_id) is None:
        raise ConsoleError(f"account_id: no account {account_id}")
    token = secrets.token_urlsafe(32)
    session.add(Invite(token_hash=hash_token(token), account_id=account_id, email=address, role=role,
                       created_by=actor, expires_at=utcnow() + timedelta(hours=hours)))
    audit(session, account_id, "member_invited", f"{address} invited as {role}, valid {hours} h", actor)
    return token


def invite_url(public_url: str, token: str) -> str:
    """The link to hand to the invited person."""
    return f"{public_url.rstrip('/')}/console/invite/{token}"


def find_invite(session: Session, token: str) -> Invite:
    """The usable invite for ``token``, or InviteError saying why it cannot be used."""
    invite = session.scalar(sa.select(Invite).where(Invite.token_hash == hash_token(token or "")))
    if invite is None:
        raise InviteError("This invite link is not valid. Ask for a new one.")
    if invite.used_at is not None:
        raise InviteError("This invite link has been used already. Sign in, or ask for a new one.")
    if aware(invite.expires_at) <= utcnow():
        raise InviteError("This invite link has expired. Ask for a new one.")
    return invite


def accept_invite(session: Session, token: str, password: str) -> User:
    """Use the invite once: a new user sets ``password``; an existing one proves it is theirs. Returns the user."""
    invite = find_invite(session, token)
    user = users.find_user(session, invite.email)
    if user is None:
        passwords.check_policy(password)
    elif user.disabled_at is not None:
        raise InviteError("This user is disabled. Ask the operator.")
    elif not passwords.verify_password(user.password_hash, password or ""):
        # Holding the link must not be enough to take over an existing user: they confirm their password.
        raise ConsoleError("password: wrong password for this existing user (enter the one you sign in with)")
    # The conditional update makes the link single-use even when two people click it at once.
    claimed = session.execute(sa.update(Invite).where(Invite.id == invite.id, Invite.used_at.is_(None))
                              .values(used_at=utcnow()))
    if claimed.rowcount != 1:
        raise InviteError("This invite link has been used already. Sign in, or ask for a new one.")
    if user is None:  # created on the inviter's authority
        user = users.create_user(session, invite.email, password, is_operator=False, actor=invite.created_by)
    users.set_role(session, invite.account_id, user, invite.role, actor=f"user:{user.id}")
    audit(session, invite.account_id, "invite_accepted", f"{user.email} joined as {invite.role}", f"user:{user.id}")
    return user
