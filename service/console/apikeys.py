"""Per-account API keys: shown once, stored as SHA-256, named, scoped read or write, revocable, last use kept."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.console.access import Principal
from service.console.audit import audit
from service.console.errors import ConsoleError, NotFound
from service.console.history import parse_row_id
from service.events import aware
from service.store.access import ApiKey
from service.store.models import Account, hash_token, utcnow

KEY_PREFIX = "pbx_"
SHOWN_PREFIX = 12  # "pbx_" and 8 characters: enough to tell keys apart in a list, useless to an attacker
SCOPES = {"read": "viewer", "write": "editor"}  # the role a key acts with; keys never manage members or keys
# last_used_at is written at most this often, so a busy integration does not write on every request.
LAST_USED_SECONDS = 60


@dataclass(frozen=True)
class NewApiKey:
    """A key just created, with the only copy of its secret."""

    key: ApiKey
    secret: str


def create_api_key(session: Session, account_id: str, name: str, scope: str, *, actor: str) -> NewApiKey:
    """A new key for the account (32 random bytes); the secret is returned now and never again."""
    name = (name or "").strip()
    if not 1 <= len(name) <= 100 or "\x00" in name:
        raise ConsoleError("name: an API key needs a name of 1 to 100 characters, without NUL")
    if scope not in SCOPES:
        raise ConsoleError(f"scope: must be read or write (got {scope!r})")
    if session.get(Account, account_id) is None:
        raise ConsoleError(f"account_id: no account {account_id}")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(account_id=account_id, name=name, prefix=secret[:SHOWN_PREFIX], key_hash=hash_token(secret),
                 scope=scope, created_by=actor)
    session.add(key)
    session.flush()
    audit(session, account_id, "api_key_created", f"key {key.id} {name!r} ({scope})", actor)
    return NewApiKey(key=key, secret=secret)


def list_api_keys(session: Session, account_id: str) -> list[ApiKey]:
    """The account's keys, revoked ones included, newest first."""
    return list(session.scalars(sa.select(ApiKey).where(ApiKey.account_id == account_id)
                                .order_by(ApiKey.id.desc())))


def revoke_api_key(session: Session, account_id: str, key_id: int, *, actor: str) -> ApiKey:
    """Revoke one of the account's keys (NotFound for another account's key); revoking twice changes nothing."""
    key = session.get(ApiKey, key_id) if parse_row_id(key_id) is not None else None  # in the id column's range
    if key is None or key.account_id != account_id:
        raise NotFound("no such API key")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        audit(session, account_id, "api_key_revoked", f"key {key.id} {key.name!r}", actor)
    return key


def authenticate_api_key(session: Session, header: str | None) -> Principal | None:
    """The principal of an ``Authorization: Bearer pbx_...`` header, or None when absent, unknown or revoked."""
    scheme, _, secret = (header or "").strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret.startswith(KEY_PREFIX):
        return None
    key = session.scalar(sa.select(ApiKey).where(ApiKey.key_hash == hash_token(secret)))
    if key is None or key.revoked_at is not None:
        return None
    now = utcnow()
    if key.last_used_at is None or now - aware(key.last_used_at) >= timedelta(seconds=LAST_USED_SECONDS):
        key.last_used_at = now
    return Principal(kind="api_key", id=key.id, name=key.name,
                     roles=MappingProxyType({key.account_id: SCOPES[key.scope]}))
