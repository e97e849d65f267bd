"""The delivery log, the quarantine, dead letters and paused connections."""

from __future__ import annotations

import json
import sys

import click

from service import accounts, engine
from service.cli.base import delivery_doc, enqueue_actions, fail_on_domain_errors, main, open_runtime
from service.store import queries
from service.store.models import Delivery

# --- delivery log ------------------------------------------------------------------------------------

@main.command()
@click.argument("account_id")
@click.option("--status", default=None, help="Only deliveries in this status.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@fail_on_domain_errors
def deliveries(account_id: str, status: str | None, limit: int, as_json: bool) -> None:
    """Show the delivery log of an account, newest first."""
    rt = open_runtime()
    with rt.sessions() as session:
        accounts.get_account(session, account_id)
        rows = queries.delivery_log(session, account_id, status=status, limit=limit)
    for d in rows:
        doc = {"id": d.id, "event": d.event_type, "event_key": d.event_key, "rule": d.rule_name,
               "action": f"{d.connection}.{d.action}", "status": d.status, "attempts": d.attempts,
               "external_id": d.external_id, "error": d.last_error, "updated_at": d.updated_at.isoformat(),
               "succeeded_at": d.succeeded_at.isoformat() if d.succeeded_at else None, "request_id": d.request_id,
               "next_attempt_at": d.next_attempt_at.isoformat() if d.next_attempt_at else None}
        if as_json:
            click.echo(json.dumps(doc))
        else:
            due = f" next {d.next_attempt_at:%H:%M:%S}" if d.next_attempt_at else ""
            click.echo(f"#{d.id} {d.updated_at:%Y-%m-%d %H:%M:%S} {d.status:<9}{due} x{d.attempts} {d.event_type:<24} "
                       f"{d.rule_name} -> {d.connection}.{d.action} {d.external_id or ''} {d.last_error or ''}")


@main.command()
@click.argument("account_id")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@fail_on_domain_errors
def quarantine(account_id: str, limit: int, as_json: bool) -> None:
    """Show deliveries kept but not processed (malformed, unknown type, duplicate), newest first."""
    rt = open_runtime()
    with rt.sessions() as session:
        accounts.get_account(session, account_id)
        rows = queries.quarantined(session, account_id, limit=limit)
    for q in rows:
        doc = {"id": q.id, "received_at": q.received_at.isoformat(), "reason": q.reason, "method": q.method,
               "content_type": q.content_type, "query_string": q.query_string, "body": q.body_text}
        click.echo(json.dumps(doc) if as_json else f"#{q.id} {q.received_at:%Y-%m-%d %H:%M:%S} {q.reason}")


# --- dead letters and paused connections ------------------------------------------------------------

@main.group("dead")
def dead_group() -> None:
    """Actions that gave up (dead: past the retry horizon; failed: permanent error; paused: auth)."""


@dead_group.command("list")
@click.option("--account", "account_id", default=None, help="Only this account.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def dead_list(account_id: str | None, limit: int, as_json: bool) -> None:
    """List dead, failed and paused actions, newest first."""
    rt = open_runtime()
    with rt.sessions() as session:
        rows = queries.dead_letters(session, account_id=account_id, limit=limit)
    for d in rows:
        doc = delivery_doc(d)
        click.echo(json.dumps(doc) if as_json else
                   f"#{d.id} {d.status:<6} {d.account_id} {d.event_type} {d.rule_name} -> {doc['action']}: "
                   f"{d.last_error or ''}")


@dead_group.command("show")
@click.argument("delivery_id", type=int)
def dead_show(delivery_id: int) -> None:
    """Show one action with its event and last error."""
    rt = open_runtime()
    with rt.sessions() as session:
        d = session.get(Delivery, delivery_id)
        if d is None:
            raise click.ClickException(f"no delivery {delivery_id}")
        event = queries.stored_event(session, d.account_id, d.event_key)
        doc = delivery_doc(d)
        doc["params"] = d.params
        doc["event_data"] = event.data if event else None
    click.echo(json.dumps(doc, indent=2, default=str))


@dead_group.command("replay")
@click.option("--delivery", "delivery_ids", multiple=True, type=int, help="A delivery id (repeatable).")
@click.option("--event", "event_key", default=None, help="Every dead/failed/paused action of this event key.")
@click.option("--account", "account_id", default=None, help="The account of --event.")
def dead_replay(delivery_ids: tuple[int, ...], event_key: str | None, account_id: str | None) -> None:
    """Replay actions by delivery or by event: back to pending, retry horizon restarted."""
    if not delivery_ids and not event_key:
        raise click.UsageError("give --delivery ID or --event KEY --account ACCOUNT_ID")
    if event_key and not account_id:
        raise click.UsageError("--event needs --account")
    rt = open_runtime()
    ids = list(delivery_ids)
    if event_key:
        with rt.sessions() as session:
            ids += queries.delivery_ids_of_event(session, account_id, event_key)
    replayed = engine.replay(rt, delivery_ids=ids)
    enqueue_actions(replayed)
    click.echo(f"replaying {len(replayed)} action(s): {', '.join(map(str, replayed)) or '-'}")
    if not replayed:
        sys.exit(1)


@dead_group.command("discard")
@click.argument("delivery_ids", nargs=-1, type=int, required=True)
def dead_discard(delivery_ids: tuple[int, ...]) -> None:
    """Mark actions as discarded (kept in the log, never retried)."""
    rt = open_runtime()
    with rt.sessions.begin() as session:
        count = queries.discard_dead(session, delivery_ids)
    click.echo(f"discarded {count} action(s)")
    if count == 0:
        sys.exit(1)


@main.group("connections")
def connections_group() -> None:
    """An account's connections and their circuit (paused after repeated auth failures)."""


@connections_group.command("list")
@click.argument("account_id")
@fail_on_domain_errors
def connections_list(account_id: str) -> None:
    """List connections (never their credentials) and whether each is paused."""
    rt = open_runtime()
    with rt.sessions() as session:
        accounts.get_account(session, account_id)
        rows = queries.connections_of(session, account_id)
    for row in rows:
        click.echo(f"{row.name}  {row.integration}  {'PAUSED: ' + row.paused_reason if row.paused_reason else 'ok'}")


@connections_group.command("resume")
@click.argument("account_id")
@click.argument("name")
@fail_on_domain_errors
def connections_resume(account_id: str, name: str) -> None:
    """Close a paused connection's circuit and replay the actions it kept."""

    rt = open_runtime()
    with rt.sessions() as session:
        accounts.connection_config(session, rt.box, account_id, name)
    ids = engine.resume_connection(rt, account_id, name)
    enqueue_actions(ids)
    click.echo(f"resumed {name}; replaying {len(ids)} paused action(s)")
