"""Overview, the account's home: today's calls and deliveries, the Kazoo hooks' health, paused connections."""

from __future__ import annotations

from flask import Blueprint, redirect, request, url_for

from service.config import Settings
from service.console import access, history
from service.console.pages import charts
from service.console.pages.common import account_page, render, signed_in
from service.runtime import Runtime

# Deliveries per connection: done first, then what is still moving, then what needs a person.
DELIVERY_ORDER = ("succeeded", "pending", "running", "retrying", "paused", "failed", "dead", "discarded")


def register(bp: Blueprint, settings: Settings, runtime: Runtime) -> None:
    """The overview page and the account switcher."""

    @bp.get("/accounts/<account_id>/")
    def account(account_id: str):
        """The account's overview."""
        page = account_page(runtime, account_id)
        with runtime.sessions() as db:
            figures = history.overview(db, account_id)
        hours = [f"{h:02d}" for h in range(24)]
        # Two sizes of one chart (CSS shows one): SVG text scales with the picture, and a phone needs it larger.
        chart = charts.stacked_chart(hours, figures.calls_by_hour, history.CALL_OUTCOMES)
        small = charts.stacked_chart(hours, figures.calls_by_hour, history.CALL_OUTCOMES, width=360, height=180)
        bars = {name: charts.share_bar(counts, DELIVERY_ORDER) for name, counts in figures.deliveries.items()}
        return render("console/pages/overview.html", page, "overview", figures=figures, chart=chart, small=small,
                      bars=bars)

    @bp.get("/switch")
    def switch_account():
        """The account switcher's target: that account's overview (404 for an account out of reach)."""
        account_id = request.args.get("account", "")
        access.require(signed_in(), account_id, "read")
        return redirect(url_for("console.account", account_id=account_id))
