"""Planning: an account's parsed rules, and the delivery rows each event's matching rules create."""

from __future__ import annotations

from typing import Any, Callable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from integrations.base import PermanentError, scrub
from service.events import Event
from service import rules as rules_mod
from service.runtime import Runtime
from service.store.models import (Account, Delivery, RuleSet)

_RULES_CACHE: dict[str, tuple[int, Any]] = {}


def ruleset_of(session: Session, rt: Runtime, account_id: str):
    """The parsed rules of an account, cached per process until its version changes."""
    row = session.get(RuleSet, account_id)
    if row is None:
        return None
    cached = _RULES_CACHE.get(account_id)
    if cached and cached[0] == row.version:
        return cached[1]
    parsed = rules_mod.load_rules(row.source, filename=f"<rules of {account_id}>", registry=rt.registry)
    _RULES_CACHE[account_id] = (row.version, parsed)
    return parsed


def plan_deliveries(session: Session, rt: Runtime, ruleset, account: Account, event: Event, *,
                    request_id: str | None = None) -> list[int]:
    """Create a delivery row for each matching rule action (``request_id``: the receiver's id of the request
    behind it, for the logs); return the ids that need a task."""
    if ruleset is None:
        return []
    ids = []
    for planned in rules_mod.plan(ruleset, event):
        delivery = Delivery(account_id=account.id, event_key=event.key[:300], event_type=event.type,
                            rule_name=planned.rule_name, action_index=planned.index,
                            connection=planned.connection, integration=planned.integration,
                            action=planned.action, status="pending", params={}, request_id=request_id)
        try:
            delivery.params = rules_mod.render_action(planned, event, ruleset.account,
                                                      escape=template_escape(rt, planned.integration))
        except PermanentError as exc:
            delivery.status = "failed"
            delivery.last_error = scrub(str(exc))[:2000]
        try:
            with session.begin_nested():
                session.add(delivery)
        except IntegrityError:
            continue  # planned before (a re-delivered task): the existing row is authoritative
        if delivery.status == "pending":
            ids.append(delivery.id)
    return ids


def template_escape(rt: Runtime, integration: str) -> Callable[[str], str] | None:
    """The escaping an integration wants for event values in its templates."""
    cls = rt.registry.get(integration)
    return cls.template_escape if cls else None
