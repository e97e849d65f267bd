"""An account's members for the console and the API: list, invite (a link shown once), change role, remove.

Thin on purpose: the rules (roles, last owner, single-use invites) live in ``users`` and ``invites``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.console import invites, users
from service.console.errors import NotFound
from service.console.history import parse_row_id
from service.store.access import Invite, Membership, User
from service.store.models import utcnow


@dataclass(frozen=True)
class Member:
    """One member: the user's id and email, and the role here."""

    user_id: int
    email: str
    role: str


@dataclass(frozen=True)
class PendingInvite:
    """An invite not used yet and not expired (its token is never kept, so never shown again)."""

    id: int
    email: str
    role: str
    expires_at: datetime


def list_members(session: Session, account_id: str) -> list[Member]:
    """The account's members by email."""
    return [Member(user.id, user.email, role) for user, role in users.members(session, account_id)]


def pending_invites(session: Session, account_id: str) -> list[PendingInvite]:
    """Invites to the account still waiting to be used, newest first."""
    rows = session.scalars(sa.select(Invite).where(Invite.account_id == account_id, Invite.used_at.is_(None),
                                                   Invite.expires_at > utcnow()).order_by(Invite.id.desc()))
    return [PendingInvite(row.id, row.email, row.role, row.expires_at) for row in rows]


def invite_member(session: Session, account_id: str, email: str, role: str, *, public_url: str,
                  actor: str) -> str:
    """Invite ``email`` as ``role``; returns the invite link (shown once: only its hash is stored)."""
    return invites.invite_url(public_url, invites.create_invite(session, account_id, email, role, actor=actor))


def change_role(session: Session, account_id: str, user_id: int, role: str, *, actor: str) -> Member:
    """Give a member another role (NotFound for a user who is not a member; the last owner stays owner)."""
    if parse_row_id(user_id) is None:  # beyond the id column (PostgreSQL would refuse the query): no such user
        raise NotFound("no such member")
    user = session.scalar(sa.select(User).join(Membership, Membership.user_id == User.id)
                          .where(User.id == user_id, Membership.account_id == account_id))
    if user is None:
        raise NotFound("no such member")
    membership = users.set_role(session, account_id, user, role, actor=actor)
    return Member(user.id, user.email, membership.role)


def remove_member(session: Session, account_id: str, user_id: int, *, actor: str) -> None:
    """Take a member out of the account (the last owner cannot be removed)."""
    if parse_row_id(user_id) is None:
        raise NotFound("no such member")
    users.remove_member(session, account_id, user_id, actor=actor)
