"""Overview, the account's home: today's calls and deliveries, the Kazoo hooks' health, paused connections."""

from __future__ import annotations

from flask import Blueprint, redirect, request, url_for

from service.config import Settings
from service.console import access
from service.console.pages.common import account_page, render, signed_in
from service.runtime import Runtime
from service.store import queries


def register(bp: Blueprint, settings: Settings, runtime: Runtime) -> None:
    """The overview page and the account switcher."""

    @bp.get("/accounts/<account_id>/")
    def account(account_id: str):
        """The account's overview."""
        page = account_page(runtime, account_id)
        with runtime.sessions() as db:
            paused = [c for c in queries.connections_of(db, account_id) if c.paused_reason]
        return render("console/pages/overview.html", page, "overview", paused=paused)

    @bp.get("/switch")
    def switch_account():
        """The account switcher's target: that account's overview (404 for an account out of reach)."""
        account_id = request.args.get("account", "")
        access.require(signed_in(), account_id, "read")
        return redirect(url_for("console.account", account_id=account_id))
