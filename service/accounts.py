"""Accounts, their hook tokens, connections and rules files: the operator-facing domain functions."""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
import yaml
from sqlalchemy.orm import Session

from service import rules as rules_mod
from service.secrets import SecretBox
from service.store.models import Account, Connection, RuleSet, hash_token

ACCOUNT_ID = re.compile(r"^[0-9a-f]{32}$")


class AccountError(ValueError):
    """An operator request about accounts that cannot be carried out; the message says why."""


# The two hook endpoints, each with its own token: a CRM's URL must not open the Kazoo hook, nor the reverse.
HOOK_KINDS = ("virtualpbx", "crm")


@dataclass(frozen=True)
class NewAccount:
    """An account just created, with its VirtualPBX hook token and its (different) CRM hook token."""

    account: Account
    token: str
    crm_token: str


def validate_account_id(account_id: str) -> str:
    """Kazoo account ids are 32 lower-case hex characters."""
    if not ACCOUNT_ID.match(account_id or ""):
        raise AccountError(f"invalid account id {account_id!r}: expected 32 hex characters (Kazoo's account id)")
    return account_id


def validate_timezone(name: str) -> str:
    """An IANA time zone name such as America/New_York."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise AccountError(f"unknown time zone {name!r}: use an IANA name such as America/New_York") from None
    return name


def add_account(session: Session, account_id: str, *, name: str, box: SecretBox, timezone: str = "UTC") -> NewAccount:
    """Create an account with a fresh 192-bit hook token, stored hashed (for lookup) and encrypted (for connect)."""
    validate_account_id(account_id)
    validate_timezone(timezone)
    if not name.strip():
        raise AccountError("account name must not be empty")
    if session.get(Account, account_id) is not None:
        raise AccountError(f"account {account_id} exists already (use `pbxrelay accounts rotate-token` for a new URL)")
    account = Account(id=account_id, name=name.strip(), timezone=timezone)
    token = _issue_token(account, "virtualpbx", box)
    crm_token = _issue_token(account, "crm", box)
    session.add(account)
    session.flush()
    return NewAccount(account=account, token=token, crm_token=crm_token)


def _issue_token(account: Account, kind: str, box: SecretBox) -> str:
    """Give ``account`` a fresh 192-bit token for the ``kind`` endpoint, replacing the previous one."""
    token = secrets.token_urlsafe(24)
    if kind == "crm":
        account.crm_token_hash = hash_token(token)
        account.crm_token_encrypted = box.encrypt({"token": token})
    else:
        account.hook_token_hash = hash_token(token)
        account.hook_token_encrypted = box.encrypt({"token": token})
    return token


def rotate_token(session: Session, account_id: str, *, box: SecretBox, kind: str = "virtualpbx") -> str:
    """Issue a new token for one of the account's hook endpoints (its old URL stops working; the other is kept)."""
    if kind not in HOOK_KINDS:
        raise AccountError(f"unknown hook kind {kind!r}: expected one of {', '.join(HOOK_KINDS)}")
    token = _issue_token(get_account(session, account_id), kind, box)
    session.flush()
    return token


def ensure_crm_token(account: Account, box: SecretBox) -> str | None:
    """Issue a CRM token for an account that has none (created before 0003r); the new token, else None."""
    if account.crm_token_hash is not None:
        return None
    return _issue_token(account, "crm", box)


def hook_token(account: Account, box: SecretBox, kind: str = "virtualpbx") -> str:
    """The account's current token for the ``kind`` endpoint (decrypted), to build its URL."""
    encrypted = account.crm_token_encrypted if kind == "crm" else account.hook_token_encrypted
    if not encrypted:
        flag = " --crm" if kind == "crm" else ""
        raise AccountError(f"account {account.id} has no stored {kind} hook token; run "
                           f"`pbxrelay accounts rotate-token {account.id}{flag}`")
    return box.decrypt(encrypted)["token"]


def get_account(session: Session, account_id: str) -> Account:
    """The account, or AccountError naming the id."""
    account = session.get(Account, account_id)
    if account is None:
        raise AccountError(f"no account {account_id} (add it with `pbxrelay accounts add`)")
    return account


@dataclass(frozen=True)
class HookAccount:
    """What the receiver needs of the account a hook token opens."""

    account_id: str
    crm_secret_encrypted: str | None  # the CRM hook's signing secret, encrypted (None: unsigned)
    crm_unsigned: bool  # the rules file opted in to unsigned CRM hooks (`crm: {signing: none}`)


def hook_account(connection: sa.Connection, token: str, kind: str) -> HookAccount | None:
    """The account ``token`` opens on the ``kind`` endpoint: one indexed row, read without the ORM (hot path)."""
    if not token or len(token) > 200:
        return None
    digest = hash_token(token)
    column = Account.crm_token_hash if kind == "crm" else Account.hook_token_hash
    row = connection.execute(sa.select(Account.id, column, Account.crm_secret_encrypted, Account.crm_unsigned)
                             .where(column == digest)).first()
    if row is None or not hmac.compare_digest(row[1] or "", digest):
        return None
    return HookAccount(row[0], row[2], bool(row[3]))


def token_epoch_key(namespace: str) -> str:
    """The Redis key whose value changes whenever a hook token is revoked (see ``revoke_cached_tokens``)."""
    return f"{namespace}:hook-token-epoch"


def revoke_cached_tokens(redis, namespace: str) -> None:
    """After a token change is committed: every receiver's token cache is stale from now on.

    A fresh random value rather than a counter: a Redis that lost the key must not bring back a
    value some receiver cached entries under.
    """
    redis.set(token_epoch_key(namespace), secrets.token_hex(8))


def hook_url(public_url: str, token: str, kind: str = "virtualpbx") -> str:
    """The URL VirtualPBX (or a CRM) posts to for this token."""
    return f"{public_url}/hooks/{kind}/{token}"


def apply_rules_file(session: Session, path: Path, *, registry: dict, box: SecretBox) -> RuleSet:
    """Validate and store a rules file atomically: account settings, encrypted connections and rules."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise AccountError(f"{path}: cannot read: {exc}") from None
    return apply_rules(session, text, filename=str(path), base_dir=path.parent, registry=registry, box=box)


def apply_rules(session: Session, text: str, *, filename: str, base_dir: Path, registry: dict,
                box: SecretBox) -> RuleSet:
    """Apply rules text: everything is validated first; nothing is written unless all of it is valid."""
    parsed = rules_mod.load_rules(text, filename=filename, registry=registry)
    account = get_account(session, parsed.account.id)
    stored = {c.name: c for c in session.scalars(sa.select(Connection).where(Connection.account_id == account.id))}

    previous = {name: box.decrypt(row.config_encrypted) for name, row in stored.items()}
    resolved: dict[str, tuple[str, dict]] = {}
    errors: list[str] = []
    for name, spec in parsed.connections.items():
        try:
            config = rules_mod.validate_connection(
                name, spec, registry, base_dir=base_dir, filename=filename,
                resolve=lambda conn, key: previous.get(conn, {}).get(key))
        except rules_mod.RulesError as exc:
            errors.append(str(exc))
            continue
        resolved[name] = (spec.integration, config)
    if errors:
        raise AccountError("\n".join(errors))

    crm_secret = None
    if parsed.crm is not None:
        previous_secret = box.decrypt(account.crm_secret_encrypted)["secret"] if account.crm_secret_encrypted else None
        try:
            crm_secret = rules_mod.resolve_crm_secret(parsed.crm, base_dir=base_dir, stored=previous_secret,
                                                      filename=filename)
        except rules_mod.RulesError as exc:
            raise AccountError(str(exc)) from None
    account.crm_secret_encrypted = box.encrypt({"secret": crm_secret}) if crm_secret else None
    account.crm_unsigned = parsed.crm is not None and parsed.crm.signing == "none"
    if parsed.crm is not None:
        ensure_crm_token(account, box)
    account.name = parsed.account.name or account.name
    account.timezone = parsed.account.timezone
    for name, connection in stored.items():
        if name not in resolved:
            session.delete(connection)
    for name, (integration, config) in resolved.items():
        row = stored.get(name) or Connection(account_id=account.id, name=name)
        row.integration = integration
        row.config_encrypted = box.encrypt(config)
        row.paused_reason = None
        session.add(row)

    redacted = export_document(parsed, registry)
    ruleset = session.get(RuleSet, account.id)
    if ruleset is None:
        ruleset = RuleSet(account_id=account.id, source=redacted, version=1)
        session.add(ruleset)
    else:
        ruleset.source = redacted
        ruleset.version += 1
        ruleset.applied_at = sa.func.now()
    session.flush()
    return ruleset


def export_document(parsed, registry: dict) -> str:
    """The rules file as YAML with every secret replaced by ``stored:`` (safe to print and to re-apply)."""
    doc = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["connections"] = {name: rules_mod.redact_connection(spec, registry[spec.integration].Config)
                          for name, spec in parsed.connections.items()}
    secret = parsed.crm.signing_secret if parsed.crm else None
    if secret and not secret.startswith(("env:", "file:", rules_mod.STORED_REFERENCE)):
        doc["crm"]["signing_secret"] = rules_mod.STORED_REFERENCE
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def export_rules(session: Session, account_id: str) -> str:
    """The applied rules file of an account, secrets redacted."""
    get_account(session, account_id)
    ruleset = session.get(RuleSet, account_id)
    if ruleset is None:
        raise AccountError(f"account {account_id} has no rules yet (apply a file with `pbxrelay rules apply`)")
    return ruleset.source


def connection_config(session: Session, box: SecretBox, account_id: str, name: str) -> tuple[Connection, dict]:
    """A connection row and its decrypted config; AccountError when it is gone."""
    row = session.scalars(sa.select(Connection).where(Connection.account_id == account_id,
                                                      Connection.name == name)).first()
    if row is None:
        raise AccountError(f"connection {name!r} no longer exists for account {account_id}")
    return row, box.decrypt(row.config_encrypted)
