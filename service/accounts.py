"""Accounts, their hook tokens, connections and rules files: the operator-facing domain functions."""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
import yaml
from sqlalchemy.orm import Session

from service import rules as rules_mod
from service.console.audit import CLI_ACTOR
from service.secrets import SecretBox
from service.store import queries
from service.store.models import Account, AccountLink, Connection, RuleSet, RuleSetVersion, hash_token

ACCOUNT_ID = re.compile(r"^[0-9a-f]{32}$")
# Config keys that say where a connection goes and whose it is. A connection keeping a stored secret
# (`stored:`) must keep these too: otherwise a changed URL or account would carry the secret elsewhere.
BINDING_KEYS = ("api_url", "webhook_url", "account_id")


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


def linked_sub_accounts(session: Session, account_id: str) -> set[str]:
    """The Kazoo sub-account ids the operator linked to ``account_id`` (its connections may name them)."""
    return set(session.scalars(sa.select(AccountLink.sub_account_id).where(AccountLink.account_id == account_id)))


def binding_problem(session: Session, account_id: str, integration: type, config: dict[str, Any]) -> str | None:
    """Why a stored connection may not act for the vendor account it names (checked again at use), or None."""
    field = integration.account_field
    if not field or config.get(field) == account_id or config.get(field) in linked_sub_accounts(session, account_id):
        return None
    return (f"{field} {config.get(field)} is neither account {account_id} nor a sub-account linked to it; "
            f"re-apply the rules with the account's own id")


def link_sub_account(session: Session, account_id: str, sub_account_id: str) -> None:
    """Let ``account_id``'s connections name the Kazoo sub-account ``sub_account_id`` (operator only)."""
    get_account(session, account_id)
    validate_account_id(sub_account_id)
    if sub_account_id == account_id:
        raise AccountError("an account is always bound to itself; link a different (sub-)account id")
    if sub_account_id not in linked_sub_accounts(session, account_id):
        session.add(AccountLink(account_id=account_id, sub_account_id=sub_account_id))
        session.flush()


def unlink_sub_account(session: Session, account_id: str, sub_account_id: str) -> bool:
    """Remove a sub-account link; False when there was none. Connections already applied stay until re-applied."""
    return bool(session.execute(sa.delete(AccountLink).where(AccountLink.account_id == account_id,
                                                             AccountLink.sub_account_id == sub_account_id)).rowcount)


def apply_rules_file(session: Session, path: Path, *, registry: dict, box: SecretBox, account_id: str | None = None,
                     allow_private_urls: bool = False) -> RuleSet:
    """The operator's `rules apply FILE`: read a file on this server and apply it as operator-supplied rules.

    ``account_id`` is the account named on the command line; None takes the file's own ``account.id``.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise AccountError(f"{path}: cannot read: {exc}") from None
    return apply_rules(session, text, account_id=account_id, filename=str(path), base_dir=path.parent,
                       registry=registry, box=box, supplied_by=rules_mod.OPERATOR,
                       allow_private_urls=allow_private_urls)


def apply_rules(session: Session, text: str, *, account_id: str | None, filename: str, base_dir: Path,
                registry: dict, box: SecretBox, supplied_by: str, allow_private_urls: bool = False,
                tenant_env_prefix: str | None = None, actor: str = CLI_ACTOR) -> RuleSet:
    """Apply rules text to ``account_id``: everything is validated first; nothing is written unless all of it is valid.

    ``supplied_by`` is ``"operator"`` (the CLI) or ``"tenant"`` (the console/API, which must also name
    the authenticated caller's account: only the operator may leave ``account_id`` to the file).
    Tenants' env:/file: references are refused (env: names under ``tenant_env_prefix`` excepted). The
    file's ``account.id`` must be ``account_id``; a connection's Kazoo account must be the account's own
    or a sub-account the operator linked; ``stored:`` keeps a secret only when its URL and account stay.
    Each apply is kept as a new ``ruleset_versions`` row naming ``actor`` (the audit actor: the console passes
    ``Principal.actor``), for the console's history, diff and rollback.
    """
    if supplied_by not in rules_mod.SUPPLIERS:
        raise AccountError(f"supplied_by must be one of {', '.join(rules_mod.SUPPLIERS)}, not {supplied_by!r}")
    if account_id is None and supplied_by != rules_mod.OPERATOR:
        raise AccountError("rules supplied by a tenant are applied to the caller's account: account_id is required")
    parsed = rules_mod.load_rules(text, filename=filename, registry=registry)
    if account_id is not None and parsed.account.id != account_id.lower():
        raise AccountError(f"{filename}: account.id: the file is for account {parsed.account.id}, but it is "
                           f"being applied to account {account_id}; nothing was changed")
    account = get_account(session, parsed.account.id)
    stored = {c.name: c for c in session.scalars(sa.select(Connection).where(Connection.account_id == account.id))}
    bound_ids = {account.id} | linked_sub_accounts(session, account.id)

    previous = {name: box.decrypt(row.config_encrypted) for name, row in stored.items()}
    resolved: dict[str, tuple[str, dict]] = {}
    errors: list[str] = []
    for name, spec in parsed.connections.items():
        try:
            config = rules_mod.validate_connection(
                name, spec, registry, base_dir=base_dir, filename=filename,
                resolve=lambda conn, key: previous.get(conn, {}).get(key), supplied_by=supplied_by,
                env_prefix=tenant_env_prefix, allow_private_urls=allow_private_urls)
        except rules_mod.RulesError as exc:
            errors.append(str(exc))
            continue
        errors.extend(f"{filename}: {problem}" for problem in _binding_problems(
            name, spec, config, registry, bound_ids=bound_ids, stored=stored.get(name), previous=previous.get(name)))
        resolved[name] = (spec.integration, config)
    if errors:
        raise AccountError("\n".join(errors))

    crm_secret = None
    if parsed.crm is not None:
        previous_secret = box.decrypt(account.crm_secret_encrypted)["secret"] if account.crm_secret_encrypted else None
        try:
            crm_secret = rules_mod.resolve_crm_secret(parsed.crm, base_dir=base_dir, stored=previous_secret,
                                                      filename=filename, supplied_by=supplied_by,
                                                      env_prefix=tenant_env_prefix)
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
    # Past every version kept, too: the history must never get two rows with one number.
    last_kept = session.scalar(sa.select(sa.func.max(RuleSetVersion.version)).where(
        RuleSetVersion.account_id == account.id)) or 0
    if ruleset is None:
        ruleset = RuleSet(account_id=account.id, source=redacted, version=last_kept + 1, supplied_by=supplied_by)
        session.add(ruleset)
    else:
        ruleset.source = redacted
        ruleset.version = max(ruleset.version, last_kept) + 1
        ruleset.applied_at = sa.func.now()
        ruleset.supplied_by = supplied_by
    session.flush()
    session.refresh(ruleset, ["applied_at"])
    session.add(RuleSetVersion(account_id=account.id, version=ruleset.version, source=redacted,
                               applied_at=ruleset.applied_at, actor=actor, supplied_by=supplied_by))
    session.flush()
    return ruleset


def _binding_problems(name: str, spec: rules_mod.ConnectionSpec, config: dict[str, Any], registry: dict, *,
                      bound_ids: set[str], stored: Connection | None, previous: dict | None) -> list[str]:
    """Why a resolved connection may not be bound as given: a foreign Kazoo account, or stored: moved elsewhere."""
    problems = []
    account_field = registry[spec.integration].account_field
    if account_field and config.get(account_field) not in bound_ids:
        problems.append(f"connections.{name}.{account_field}: {config.get(account_field)} is neither this account "
                        f"nor a sub-account the operator linked to it (`pbxrelay accounts link-subaccount`)")
    keeps_stored = any(value == rules_mod.STORED_REFERENCE for value in spec.settings.values())
    if keeps_stored and stored is not None and previous is not None:
        if stored.integration != spec.integration:
            problems.append(f"connections.{name}.integration: changes from {stored.integration} to "
                            f"{spec.integration} while a value is kept with stored:; give every secret again")
        for key in BINDING_KEYS:
            if config.get(key) != previous.get(key):
                problems.append(f"connections.{name}.{key}: changes while a secret is kept with stored:; "
                                f"give the secret again to use it with a new {key}")
    return problems


def _mask_url_password(value: str) -> str:
    """``scheme://user:***@host...`` for a URL whose userinfo holds a password; anything else unchanged."""
    if "://" not in value or "@" not in value:
        return value
    try:
        netloc = urlsplit(value).netloc
    except ValueError:
        return value
    userinfo, at, host = netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not at or not colon:
        return value
    return value.replace(netloc, f"{user}:***@{host}", 1)


def mask_url_passwords(doc: Any) -> Any:
    """``doc`` (YAML data) with every password inside a URL's userinfo replaced by ``***``."""
    if isinstance(doc, str):
        return _mask_url_password(doc)
    if isinstance(doc, dict):
        return {key: mask_url_passwords(value) for key, value in doc.items()}
    if isinstance(doc, list):
        return [mask_url_passwords(item) for item in doc]
    return doc


def export_document(parsed, registry: dict) -> str:
    """The rules file as YAML with every secret replaced by ``stored:`` and URL passwords masked."""
    doc = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["connections"] = {name: rules_mod.redact_connection(spec, registry[spec.integration].Config)
                          for name, spec in parsed.connections.items()}
    secret = parsed.crm.signing_secret if parsed.crm else None
    if secret and not secret.startswith(("env:", "file:", rules_mod.STORED_REFERENCE)):
        doc["crm"]["signing_secret"] = rules_mod.STORED_REFERENCE
    return yaml.safe_dump(mask_url_passwords(doc), sort_keys=False, allow_unicode=True)


def export_rules(session: Session, account_id: str) -> str:
    """The applied rules file of an account, secrets redacted and URL passwords masked."""
    get_account(session, account_id)
    ruleset = session.get(RuleSet, account_id)
    if ruleset is None:
        raise AccountError(f"account {account_id} has no rules yet (apply a file with `pbxrelay rules apply`)")
    # Rule sets applied before URL passwords were masked at apply time still hold them: mask on the way out.
    return yaml.safe_dump(mask_url_passwords(yaml.safe_load(ruleset.source)), sort_keys=False, allow_unicode=True)


def connection_config(session: Session, box: SecretBox, account_id: str, name: str) -> tuple[Connection, dict]:
    """A connection row and its decrypted config; AccountError when it is gone."""
    row = queries.connection_named(session, account_id, name)
    if row is None:
        raise AccountError(f"connection {name!r} no longer exists for account {account_id}")
    return row, box.decrypt(row.config_encrypted)
