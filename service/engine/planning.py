"""Planning: an account's parsed rules, and the delivery rows each event's matching rules create."""

from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import Row
from sqlalchemy.orm import Session

from service import rules as rules_mod
from service.events import Event
from service.rules import AccountSpec
from service.runtime import Runtime
from service.store import queries
from service.store.models import Account, Delivery, RuleSet

# account id -> (version, source, parsed rules). The source is compared too: a version number alone can
# repeat (an account deleted and added again, a restored database), and equal strings compare cheaply.
_RULES_CACHE: dict[str, tuple[int, str, Any]] = {}


def ruleset_of(session: Session, rt: Runtime, account_id: str):
    """The parsed rules of an account, cached per process while its stored rules stay the same."""
    return parsed_rules(rt, account_id, session.get(RuleSet, account_id))


def parsed_rules(rt: Runtime, account_id: str, row: RuleSet | queries.StoredRules | None):
    """The parsed rules of an account's stored rules (None without them), from the per-process cache when
    unchanged."""
    if row is None:
        return None
    cached = _RULES_CACHE.get(account_id)
    if cached and cached[0] == row.version and cached[1] == row.source:
        return cached[2]
    parsed = rules_mod.load_rules(row.source, filename=f"<rules of {account_id}>", registry=rt.registry)
    _RULES_CACHE[account_id] = (row.version, row.source, parsed)
    return parsed


def plan_deliveries(session: Session, rt: Runtime, ruleset, account: Account | queries.AccountRef, event: Event, *,
                    request_id: str | None = None) -> list[int]:
    """Create a delivery row for each matching rule action; return the ids that need a task.

    ``request_id`` is the receiver's id of the request behind it, carried to the action's log lines.

    The row keeps the action's templates, not their output: they render when the action runs
    (:func:`service.engine.delivery.execute_delivery`), so a slow template costs its own account's
    action task and never the ingest that every account shares.
    """
    if ruleset is None:
        return []
    ids = []
    for planned in rules_mod.plan(ruleset, event):
        delivery_id = queries.insert_if_new(session, Delivery, {
            "account_id": account.id, "event_key": event.key[:300], "event_type": event.type,
            "rule_name": planned.rule_name, "action_index": planned.index, "connection": planned.connection,
            "integration": planned.integration, "action": planned.action, "status": "pending",
            "params": planned.params_template, "rendered": False, "request_id": request_id})
        if delivery_id is not None:  # (None: planned before by a re-delivered task; that row is authoritative)
            ids.append(delivery_id)
    return ids


def render_params(rt: Runtime, delivery: Delivery | Row, event: Event, account: AccountSpec) -> dict[str, Any]:
    """A planned delivery's templates rendered with its event; TemplateError (permanent) when one fails."""
    planned = rules_mod.PlannedAction(rule_name=delivery.rule_name, index=delivery.action_index,
                                      connection=delivery.connection, integration=delivery.integration,
                                      action=delivery.action, params_template=dict(delivery.params or {}))
    return rules_mod.render_action(planned, event, account, escape=template_escape(rt, delivery.integration))


def template_escape(rt: Runtime, integration: str) -> Callable[[str], str] | None:
    """The escaping an integration wants for event values in its templates."""
    cls = rt.registry.get(integration)
    return cls.template_escape if cls else None
