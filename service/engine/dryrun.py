"""Dry run: what payloads would do, with no side effect, derived by the same correlator production uses."""

from __future__ import annotations

from typing import Any

from integrations.base import PermanentError
from service import accounts
from service import rules as rules_mod
from service.engine.planning import ruleset_of, template_escape
from service.events import Event
from service.pbx.calls import CallCorrelator, MemoryCallWindow
from service.pbx.payloads import to_hook_event
from service.runtime import Runtime


def derive_events(account_id: str, payloads: list[dict[str, Any]]) -> tuple[list[Event], list[Event]]:
    """(raw hook events, call events) that these payloads give in this order, once each call has settled.

    The correlator is production's, on an in-memory window; events are kept once per key, as the
    events table keeps them, so a repeated hook or a re-proposed call event counts once.
    """
    correlator = CallCorrelator(MemoryCallWindow())
    stored: dict[str, Event] = {}  # by key, as the events table keeps them
    raws: list[Event] = []
    derived: list[Event] = []
    to_finalize: list[str] = []

    def store(event: Event, into: list[Event]) -> bool:
        if event.key in stored:
            return False
        stored[event.key] = event
        into.append(event)
        return True

    for payload in payloads:
        raw = to_hook_event(payload, account_id=account_id)
        if not store(raw, raws):
            continue
        correlation = correlator.observe(raw)
        for event in correlation.events:
            store(event, derived)
        if correlation.finalize_call and correlation.finalize_call not in to_finalize:
            to_finalize.append(correlation.finalize_call)
    for call_key in to_finalize:
        for event in correlator.finalize(account_id, call_key):
            store(event, derived)
    return raws, derived


def dry_run(rt: Runtime, account_id: str, payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """Show what payloads would do: parsed events, call events, matching rules and rendered actions."""
    with rt.sessions() as session:
        account = accounts.get_account(session, account_id)
        ruleset = ruleset_of(session, rt, account_id)
    raws, derived = derive_events(account_id, payloads)
    return _report(rt, account, ruleset, raws, derived)


def dry_run_text(rt: Runtime, account_id: str, text: str, *, payloads: list[dict[str, Any]] = (),
                 events: list[Event] = (), filename: str = "rules", max_actions: int | None = None) -> dict[str, Any]:
    """Dry run rules text that is not applied (an editor's draft) on payloads and/or already stored events.

    The text is validated as ``apply_rules`` validates a file (RulesError listing every problem; an
    AccountError when it names another account) and stored nowhere. ``max_actions`` bounds how many
    actions are rendered, since each template may take its whole budget and this runs in a request.
    """
    parsed = rules_mod.load_rules(text, filename=filename, registry=rt.registry)
    if parsed.account.id != account_id.lower():
        raise accounts.AccountError(f"{filename}: account.id: the rules are for account {parsed.account.id}, "
                                    f"not this account ({account_id})")
    with rt.sessions() as session:
        account = accounts.get_account(session, account_id)
    raws, derived = derive_events(account_id, list(payloads))
    return _report(rt, account, parsed, raws, [*derived, *events], max_actions=max_actions)


def _report(rt: Runtime, account, ruleset, raws: list[Event], derived: list[Event], *,
            max_actions: int | None = None) -> dict[str, Any]:
    """The dry-run answer: events, call events, and each planned action rendered (or its error)."""
    actions = []
    for event in [*raws, *derived]:
        for planned in (rules_mod.plan(ruleset, event) if ruleset else []):
            entry: dict[str, Any] = {"event": event.type, "rule": planned.rule_name, "use": planned.connection,
                     "integration": planned.integration, "action": planned.action}
            if max_actions is not None and len(actions) >= max_actions:
                entry["error"] = f"not rendered: a dry run renders at most {max_actions} actions"
            else:
                try:
                    entry["with"] = rules_mod.render_action(planned, event, ruleset.account,
                                                            escape=template_escape(rt, planned.integration))
                except PermanentError as exc:
                    entry["error"] = str(exc)
            actions.append(entry)
    return {"account": {"id": account.id, "name": account.name},
            "event": raws[0].to_json() if len(raws) == 1 else None, "events": [e.to_json() for e in raws],
            "call_events": [e.to_json() for e in derived], "actions": actions}
