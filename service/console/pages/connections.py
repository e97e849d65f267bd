"""Connections: each with its circuit (paused after repeated auth failures); resume a paused one."""

from __future__ import annotations

from flask import Blueprint, abort, redirect, request, url_for

from service import accounts
from service.config import Settings
from service.console.pages.common import ActionSender, account_page, render
from service.engine.operations import resume_connection
from service.runtime import Runtime
from service.store import queries


def resume(runtime: Runtime, sender: ActionSender, account_id: str, name: str, *, actor: str) -> int:
    """Close a connection's circuit and send the actions it kept; how many. AccountError for no such connection."""
    with runtime.sessions() as db:
        if not any(c.name == name for c in queries.connections_of(db, account_id)):
            raise accounts.AccountError(f"connection: no connection named {name!r}")
    ids = resume_connection(runtime, account_id, name, actor=actor)
    sender.send(ids)
    return len(ids)


def safe_next(account_id: str, fallback: str) -> str:
    """Where to go after a form: the ``next`` field when it is one of this account's pages, else ``fallback``."""
    target = request.form.get("next", "")
    return target if target.startswith(f"/console/accounts/{account_id}/") else fallback


def register(bp: Blueprint, settings: Settings, runtime: Runtime) -> None:
    """The connections page and its forms."""
    sender = ActionSender(settings)

    @bp.get("/accounts/<account_id>/connections")
    def connections_page(account_id: str):
        """The account's connections and their state."""
        page = account_page(runtime, account_id)
        with runtime.sessions() as db:
            rows = queries.connections_of(db, account_id)
        return render("console/pages/connections.html", page, "connections", connections=rows)

    @bp.post("/accounts/<account_id>/connections/<name>/resume")
    def resume_connection_page(account_id: str, name: str):
        """Resume a paused connection: its kept actions are sent again."""
        page = account_page(runtime, account_id, "write_connections")
        try:
            resume(runtime, sender, account_id, name, actor=page.principal.actor)
        except accounts.AccountError:
            abort(404)
        return redirect(safe_next(account_id, url_for("console.connections_page", account_id=account_id)))
