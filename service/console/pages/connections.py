"""Connections: each with its circuit state; add or change one (secrets write-only), test it, resume it."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, request, url_for

from service.config import Settings
from service.console import connections
from service.console.errors import ConsoleError, NotFound
from service.console.pages.common import REFUSED, AccountPage, ActionSender, account_page, render
from service.runtime import Runtime

MAX_FIELD = 20_000  # a service-account key is a few KB; nothing a form sends is near this


def form_fields(integration: type) -> list[dict[str, Any]]:
    """The fields of an integration's connection form: name, secret?, required?, long text?, help, default."""
    secret = connections.secret_keys(integration)
    return [{"name": name, "secret": name in secret, "required": info.is_required(),
             "long": name == "credentials", "help": info.description or "",
             "default": None if info.is_required() or info.default is None else str(info.default)}
            for name, info in integration.Config.model_fields.items()]


def settings_from_form(integration: type, form) -> dict[str, Any]:
    """The posted settings of a connection: blank fields left out (a blank secret keeps the stored one)."""
    settings = {}
    for field in form_fields(integration):
        value = form.get(f"field.{field['name']}", "")
        if len(value) > MAX_FIELD:
            raise ConsoleError(f"{field['name']}: at most {MAX_FIELD} characters")
        if value.strip():
            settings[field["name"]] = value if field["secret"] else value.strip()
    return settings


def safe_next(account_id: str, fallback: str) -> str:
    """Where to go after a form: the ``next`` field when it is one of this account's pages, else ``fallback``."""
    target = request.form.get("next", "")
    return target if target.startswith(f"/console/accounts/{account_id}/") else fallback


def register(bp: Blueprint, settings: Settings, runtime: Runtime) -> None:
    """The connections page and its forms."""
    sender = ActionSender(settings)

    def show(page: AccountPage, status: int = 200, **context):
        return render("console/pages/connections.html", page, "connections",
                      connections=connections.list_connections(runtime, page.account.id),
                      integrations=sorted(runtime.registry), **context), status

    def edit_form(page: AccountPage, name: str, integration: str, status: int = 200, error: str | None = None):
        cls = runtime.registry.get(integration)
        if cls is None:
            return show(page, 400, error=f"integration: unknown integration {integration[:50]!r}")
        try:
            current = connections.get_connection(runtime, page.account.id, name)
        except NotFound:
            current = None
        return render("console/pages/connection_edit.html", page, "connections", name=name, integration=integration,
                      fields=form_fields(cls), current=current if current and current.integration == integration
                      else None, error=error), status

    @bp.get("/accounts/<account_id>/connections")
    def connections_page(account_id: str):
        """The account's connections and their state."""
        return show(account_page(runtime, account_id))

    @bp.get("/accounts/<account_id>/connections/edit")
    def connection_edit_page(account_id: str):
        """The form to add a connection or change one's settings and credentials."""
        page = account_page(runtime, account_id, "write_connections")
        name = request.args.get("name", "").strip()
        if not name or len(name) > 100:
            return show(page, 400, error="name: give the connection a name (at most 100 characters)")
        integration = request.args.get("integration", "")
        if not integration:
            try:
                integration = connections.get_connection(runtime, account_id, name).integration
            except NotFound:
                return show(page, 400, error="integration: choose the integration of a new connection")
        return edit_form(page, name, integration)

    @bp.post("/accounts/<account_id>/connections/<name>")
    def connection_save(account_id: str, name: str):
        """Create or replace a connection through the rules document (a blank secret keeps the stored one)."""
        page = account_page(runtime, account_id, "write_connections")
        integration = request.form.get("integration", "")
        cls = runtime.registry.get(integration)
        if cls is None:
            return show(page, 400, error=f"integration: unknown integration {integration[:50]!r}")
        try:
            connections.put_connection(runtime, account_id, name, integration, settings_from_form(cls, request.form),
                                       actor=page.principal.actor)
        except REFUSED as exc:
            return edit_form(page, name, integration, 400, str(exc))
        return redirect(url_for("console.connections_page", account_id=account_id, saved=name))

    @bp.post("/accounts/<account_id>/connections/<name>/delete")
    def connection_delete(account_id: str, name: str):
        """Delete a connection no rule uses."""
        page = account_page(runtime, account_id, "write_connections")
        try:
            connections.delete_connection(runtime, account_id, name, actor=page.principal.actor)
        except REFUSED as exc:  # still used by a rule: say which
            return show(page, 400, error=str(exc))
        return redirect(url_for("console.connections_page", account_id=account_id))

    @bp.post("/accounts/<account_id>/connections/<name>/test")
    def connection_test(account_id: str, name: str):
        """Make the connection's one harmless vendor call; the page shows the result."""
        page = account_page(runtime, account_id, "write_connections")
        result = connections.test_connection(runtime, account_id, name)
        return show(page, tested=name, result=result)

    @bp.post("/accounts/<account_id>/connections/<name>/resume")
    def resume_connection_page(account_id: str, name: str):
        """Resume a paused connection: its kept actions are sent again."""
        page = account_page(runtime, account_id, "write_connections")
        sender.send(connections.resume_connection(runtime, account_id, name, actor=page.principal.actor))
        return redirect(safe_next(account_id, url_for("console.connections_page", account_id=account_id)))
