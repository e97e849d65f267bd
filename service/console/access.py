"""Who is asking (Principal) and what they may do: the one authorization function ``require``."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.console.errors import Forbidden, NotFound
from service.store.access import Membership, User
from service.store.models import Account

ROLES = ("viewer", "editor", "owner")  # each role can do everything the ones before it can
# The least role each action needs. Operators may do every action in every account.
ACTIONS: Mapping[str, str] = MappingProxyType({
    "read": "viewer",
    "write_rules": "editor",
    "write_connections": "editor",
    "replay": "editor",
    "manage_members": "owner",
    "manage_api_keys": "owner",
    "manage_account": "owner",
})


@dataclass(frozen=True)
class Principal:
    """A signed-in user or an API key: its id, operator flag and role per account it belongs to."""

    kind: str  # "user" or "api_key"
    id: int
    name: str  # the user's email or the key's name, for pages and logs
    is_operator: bool = False
    roles: Mapping[str, str] = field(default_factory=dict)

    @property
    def actor(self) -> str:
        """How the audit log names this principal: ``user:<id>`` or ``api_key:<id>``."""
        return f"{self.kind}:{self.id}"

    def role_in(self, account_id: str) -> str | None:
        """The principal's role in the account (operators are owners everywhere), or None."""
        return "owner" if self.is_operator else self.roles.get(account_id)


def principal_for_user(session: Session, user: User) -> Principal:
    """The principal of a user, with its memberships read now."""
    rows = session.execute(sa.select(Membership.account_id, Membership.role).where(Membership.user_id == user.id))
    roles = {account_id: role for account_id, role in rows}
    return Principal(kind="user", id=user.id, name=user.email, is_operator=user.is_operator,
                     roles=MappingProxyType(roles))


def require(principal: Principal | None, account_id: str, action: str) -> str:
    """The principal's role if it may do ``action`` here; NotFound if it cannot see the account, else Forbidden."""
    if action not in ACTIONS:
        raise ValueError(f"action: unknown action {action!r} (one of {', '.join(ACTIONS)})")
    role = principal.role_in(account_id) if principal is not None else None
    if role is None:
        # The same answer as for an account that does not exist: another tenant's ids reveal nothing.
        raise NotFound("no such account")
    if ROLES.index(role) < ROLES.index(ACTIONS[action]):
        raise Forbidden(f"your role ({role}) does not allow {action.replace('_', ' ')} in this account")
    return role


def reachable_accounts(session: Session, principal: Principal) -> list[Account]:
    """The accounts the principal can see, by name: all of them for an operator."""
    query = sa.select(Account).order_by(Account.name, Account.id)
    if not principal.is_operator:
        query = query.where(Account.id.in_(list(principal.roles)))
    return list(session.scalars(query))
