"""Calls: a searchable list (number, outcome, direction, time), and one call's timeline."""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import Blueprint, request

from service.config import Settings
from service.console import history
from service.console.pages import filters
from service.console.pages.common import account_page, render
from service.events import aware
from service.runtime import Runtime

PAGE_SIZE = 50
CLOCK_SKEW = timedelta(minutes=1)  # a PBX time further than this from when it arrived is shown next to it


def timeline(detail: history.CallDetail) -> list[tuple[datetime, str, object, datetime | None]]:
    """The call's story in order: (when, kind, row, PBX time) for each leg hook, derived event, delivery, attempt.

    Hooks and events are placed by when pbxrelay received them, not by the PBX's clock, so they sort against
    deliveries and attempts (which pbxrelay times); the PBX's time is given too when it is more than a minute off.
    """
    entries = []
    for kind, rows in (("hook", detail.legs), ("event", detail.events)):
        for e in rows:
            received, occurred = aware(e.received_at), aware(e.occurred_at)
            entries.append((received, kind, e, occurred if abs(occurred - received) > CLOCK_SKEW else None))
    for item in detail.deliveries:
        entries.append((aware(item.delivery.created_at), "delivery", item.delivery, None))
        entries += [(aware(a.started_at), "attempt", (item.delivery, a), None) for a in item.attempts]
    order = {"hook": 0, "event": 1, "delivery": 2, "attempt": 3}
    return sorted(entries, key=lambda entry: (entry[0], order[entry[1]]))


def register(bp: Blueprint, settings: Settings, runtime: Runtime) -> None:
    """The call list and the call page."""

    @bp.get("/accounts/<account_id>/calls")
    def calls_page(account_id: str):
        """The account's calls, newest first, filtered by the query string."""
        page = account_page(runtime, account_id)
        args = request.args

        def fetch(cursor: str | None) -> history.Page:
            flt = filters.call_filter(args, page.account.timezone)
            with runtime.sessions() as db:
                return history.list_calls(db, account_id, flt, cursor=cursor, limit=PAGE_SIZE)

        listing = filters.list_page(args, filters.CALL_FIELDS, fetch)
        return render("console/pages/calls.html", page, "calls", calls=listing.found.items, error=listing.error,
                      args=args, outcomes=history.CALL_OUTCOMES, directions=history.CALL_DIRECTIONS,
                      next_url=listing.next_url, first_url=listing.first_url), (400 if listing.error else 200)

    @bp.get("/accounts/<account_id>/calls/<path:call_key>")
    def call_page(account_id: str, call_key: str):
        """One call: its legs, the call events derived from them, the rules matched, deliveries and attempts."""
        page = account_page(runtime, account_id)
        with runtime.sessions() as db:
            detail = history.call_detail(db, account_id, call_key)
        return render("console/pages/call.html", page, "calls", call=detail, timeline=timeline(detail))
