"""An account's connections for the console and the API: list, show, create or replace, delete, test, resume.

Connections are the ``connections:`` section of the rules document: writes edit it and apply it again
(see ``settings.edit_rules``). Secrets are write-only: they are shown as set or not set, a write that
leaves a secret out keeps the stored one (``stored:``), and a test's vendor error is scrubbed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from integrations.base import ActionContext, IntegrationError, scrub
from service import accounts
from service import rules as rules_mod
from service.console.errors import ConsoleError, NotFound
from service.console.settings import current_document, edit_rules
from service.engine import operations
from service.runtime import Runtime
from service.store import queries
from service.store.models import Account, Connection


class ConnectionInUse(ConsoleError):
    """The connection cannot be deleted: rules (or the account's alerts) still use it."""


@dataclass(frozen=True)
class ConnectionView:
    """A connection as shown: its integration, its non-secret settings, which secrets are set, and its state."""

    name: str
    integration: str
    settings: dict[str, Any]
    secrets: dict[str, bool]
    paused_reason: str | None
    updated_at: datetime


@dataclass(frozen=True)
class TestResult:
    """The outcome of one harmless vendor call: ok, what it saw or why it failed, and how long it took."""

    ok: bool
    detail: str
    duration_ms: int
    retryable: bool = False


def secret_keys(integration: type) -> set[str]:
    """The Config keys of an integration that hold secrets (the ones rules export shows as ``stored:``)."""
    every = rules_mod.ConnectionSpec.model_validate({"integration": integration.key,
                                                     **{key: "x" for key in integration.Config.model_fields}})
    redacted = rules_mod.redact_connection(every, integration.Config)
    return {key for key, value in redacted.items() if value == rules_mod.STORED_REFERENCE}


def _view(rt: Runtime, row: Connection) -> ConnectionView:
    integration = rt.registry.get(row.integration)
    config = rt.box.decrypt(row.config_encrypted)
    hidden = secret_keys(integration) if integration is not None else set(config)
    return ConnectionView(name=row.name, integration=row.integration,
                          settings={k: v for k, v in config.items() if k not in hidden},
                          secrets={k: config.get(k) is not None for k in sorted(hidden)},
                          paused_reason=row.paused_reason, updated_at=row.updated_at)


def _row(session, account_id: str, name: str) -> Connection:
    if "\x00" in name:  # no stored name holds one, and PostgreSQL refuses it in a query
        raise NotFound("no such connection")
    row = queries.connection_named(session, account_id, name)
    if row is None:
        raise NotFound("no such connection")
    return row


def list_connections(rt: Runtime, account_id: str) -> list[ConnectionView]:
    """The account's connections by name, secrets shown only as set or not set."""
    with rt.sessions() as session:
        rows = session.scalars(sa.select(Connection).where(Connection.account_id == account_id)
                               .order_by(Connection.name))
        return [_view(rt, row) for row in rows]


def get_connection(rt: Runtime, account_id: str, name: str) -> ConnectionView:
    """One connection (NotFound when the account has none by that name)."""
    with rt.sessions() as session:
        return _view(rt, _row(session, account_id, name))


def put_connection(rt: Runtime, account_id: str, name: str, integration: str, settings: dict[str, Any], *,
                   actor: str) -> tuple[ConnectionView, bool]:
    """Create or replace a connection; a secret left out keeps its stored value. (view, created)."""
    cls = rt.registry.get(integration)
    if cls is None:
        raise ConsoleError(f"integration: unknown integration {integration!r} "
                           f"(one of {', '.join(sorted(rt.registry))})")
    if "integration" in settings:
        raise ConsoleError("settings.integration: give the integration once, outside settings")
    with rt.sessions() as session:
        created = session.scalar(sa.select(Connection.id).where(Connection.account_id == account_id,
                                                                Connection.name == name)) is None

    def edit(document: dict[str, Any]) -> None:
        connections = document.get("connections") or {}
        document["connections"] = connections
        previous = connections.get(name) or {}
        kept = {key: rules_mod.STORED_REFERENCE for key in secret_keys(cls)
                if key not in settings and previous.get(key) is not None and previous.get("integration") == integration}
        connections[name] = {"integration": integration, **kept, **settings}

    edit_rules(rt, account_id, edit, actor=actor, what=f"connection {name} {'created' if created else 'replaced'}")
    return get_connection(rt, account_id, name), created


def delete_connection(rt: Runtime, account_id: str, name: str, *, actor: str) -> None:
    """Remove a connection no rule uses (ConnectionInUse names the rules that do)."""
    with rt.sessions() as session:
        _row(session, account_id, name)
        document = current_document(session, account_id)
    users = [rule.get("name", "?") for rule in document.get("rules") or []
             if any(step.get("use") == name for step in rule.get("do") or [] if isinstance(step, dict))]
    if (document.get("account") or {}).get("alert_connection") == name:
        users.append("account.alert_connection")
    if users:
        raise ConnectionInUse(f"name: connection {name!r} is used by {', '.join(map(repr, users))}; "
                              "change those first")
    edit_rules(rt, account_id, lambda doc: (doc.get("connections") or {}).pop(name, None), actor=actor,
               what=f"connection {name} deleted")


def test_connection(rt: Runtime, account_id: str, name: str) -> TestResult:
    """Make the connection's one harmless vendor call (``Integration.check``) and say how it went."""
    with rt.sessions() as session:
        row = _row(session, account_id, name)
        account = session.get(Account, account_id)
        config = rt.box.decrypt(row.config_encrypted)
        problem = accounts.binding_problem(session, account_id, rt.registry[row.integration], config) \
            if row.integration in rt.registry else f"integration {row.integration!r} is not installed"
    if problem:
        return TestResult(ok=False, detail=problem, duration_ms=0)
    cls = rt.registry[row.integration]
    started = time.monotonic()
    try:
        integration = cls(cls.Config.model_validate(config,
                                                    context={"allow_private_urls": rt.settings.allow_private_urls}))
    except ValueError:  # pydantic.ValidationError (its text would quote the secrets): stored before today's checks
        return TestResult(ok=False, detail="the stored settings are no longer valid; save the connection again",
                          duration_ms=0)
    ctx = ActionContext(account_id=account_id, idempotency_key=f"{account_id}:check:{name}",
                        connection_id=f"{account_id}:{name}", timezone=account.timezone, api_urls=rt.api_urls(),
                        acquire=rt.limiter.acquire, penalise=rt.limiter.penalise, redis=rt.redis,
                        namespace=rt.settings.namespace, allow_private_urls=rt.settings.allow_private_urls,
                        seal=rt.box.seal, unseal=rt.box.unseal)
    try:
        detail, ok, retryable = integration.check(ctx), True, False
    except IntegrationError as exc:
        detail, ok, retryable = scrub(str(exc), integration.secrets()), False, exc.retryable
    return TestResult(ok=ok, detail=detail, duration_ms=int((time.monotonic() - started) * 1000),
                      retryable=retryable)


def resume_connection(rt: Runtime, account_id: str, name: str, *, actor: str) -> list[int]:
    """Close a paused connection's circuit; its paused deliveries are pending again (enqueue the ids returned)."""
    with rt.sessions() as session:
        _row(session, account_id, name)
    return operations.resume_connection(rt, account_id, name, actor=actor)
