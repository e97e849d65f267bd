"""Users and their memberships: create, authenticate by password, give and take roles, list members."""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.console import passwords
from service.console.access import ROLES
from service.console.audit import audit
from service.console.errors import ConsoleError, NotFound
from service.store.access import Membership, User
from service.store.models import Account, utcnow

EMAIL = re.compile(r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$")  # no NUL: PostgreSQL text cannot hold it


def normalize_email(email: str) -> str:
    """The stored form of an email address (trimmed, lower-case), or a ConsoleError naming the field."""
    value = (email or "").strip().lower()
    if len(value) > 320 or not EMAIL.match(value):
        raise ConsoleError(f"email: {email!r} is not an email address")
    return value


def validate_role(role: str) -> str:
    """One of owner, editor, viewer."""
    if role not in ROLES:
        raise ConsoleError(f"role: must be one of owner, editor, viewer (got {role!r})")
    return role


def find_user(session: Session, email: str) -> User | None:
    """The user with this email (any case), or None."""
    return session.scalar(sa.select(User).where(User.email == normalize_email(email)))


def create_user(session: Session, email: str, password: str, *, is_operator: bool, actor: str) -> User:
    """A new user with a hashed password; an existing email (any case) is a ConsoleError."""
    address = normalize_email(email)
    if find_user(session, address) is not None:
        raise ConsoleError(f"email: a user {address} exists already")
    user = User(email=address, password_hash=passwords.hash_password(password), is_operator=is_operator)
    session.add(user)
    session.flush()
    audit(session, None, "operator_added" if is_operator else "user_added", f"user {user.id} ({address})", actor)
    return user


def authenticate(session: Session, email: str, password: str) -> User | None:
    """The user if the email and password match and the user is enabled, else None (same time either way)."""
    try:
        user = find_user(session, email)
    except ConsoleError:
        user = None
    stored = user.password_hash if user is not None else passwords.dummy_hash()
    matched = passwords.verify_password(stored, password or "")
    if user is None or not matched or user.disabled_at is not None:
        return None
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash_password(password)
    user.last_login_at = utcnow()
    return user


def set_password(session: Session, user: User, password: str, *, actor: str) -> None:
    """Replace a user's password (policy checked); the caller decides whether to end its sessions."""
    user.password_hash = passwords.hash_password(password)
    audit(session, None, "password_changed", f"user {user.id}", actor)


def disable_user(session: Session, user: User, *, actor: str) -> None:
    """Stop a user signing in (sessions are checked against this on every request)."""
    user.disabled_at = utcnow()
    audit(session, None, "user_disabled", f"user {user.id} ({user.email})", actor)


def set_role(session: Session, account_id: str, user: User, role: str, *, actor: str) -> Membership:
    """Make the user a member of the account with ``role`` (adding or changing the membership)."""
    validate_role(role)
    if session.get(Account, account_id) is None:
        raise ConsoleError(f"account_id: no account {account_id}")
    membership = session.scalar(sa.select(Membership).where(Membership.user_id == user.id,
                                                            Membership.account_id == account_id))
    if membership is None:
        membership = Membership(user_id=user.id, account_id=account_id, role=role)
        session.add(membership)
    elif membership.role != role:
        _keep_an_owner(session, account_id, membership)
        membership.role = role
    else:
        return membership
    session.flush()
    audit(session, account_id, "member_role", f"{user.email} is {role}", actor)
    return membership


def remove_member(session: Session, account_id: str, user_id: int, *, actor: str) -> None:
    """Take a user out of the account (NotFound when not a member; the last owner cannot be removed)."""
    membership = session.scalar(sa.select(Membership).where(Membership.user_id == user_id,
                                                            Membership.account_id == account_id))
    if membership is None:
        raise NotFound("no such member")
    _keep_an_owner(session, account_id, membership)
    session.delete(membership)
    audit(session, account_id, "member_removed", f"user {user_id}", actor)


def _keep_an_owner(session: Session, account_id: str, leaving: Membership) -> None:
    """Refuse to demote or remove the account's last owner: nobody could manage it then but an operator."""
    if leaving.role != "owner":
        return
    owners = session.scalar(sa.select(sa.func.count()).select_from(Membership)
                            .where(Membership.account_id == account_id, Membership.role == "owner"))
    if owners <= 1:
        raise ConsoleError("role: the account's last owner cannot be removed or demoted")


def members(session: Session, account_id: str) -> list[tuple[User, str]]:
    """The account's members and their roles, by email."""
    rows = session.execute(sa.select(User, Membership.role).join(Membership, Membership.user_id == User.id)
                           .where(Membership.account_id == account_id).order_by(User.email))
    return [(user, role) for user, role in rows]
