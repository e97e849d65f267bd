"""Deliveries: the log with filters and saved filters, one delivery with its attempts, one event; replay one or
all matching (a bulk job whose progress the page polls)."""

from __future__ import annotations

from flask import Blueprint, request

from service.config import Settings
from service.console import history
from service.console.errors import ConsoleError
from service.console.pages import filters
from service.console.pages.common import account_page, render
from service.runtime import Runtime

PAGE_SIZE = 50


def register(bp: Blueprint, settings: Settings, runtime: Runtime) -> None:
    """The delivery log, a delivery's page, an event's page, replays and the replay job's progress fragment."""

    @bp.get("/accounts/<account_id>/deliveries")
    def deliveries_page(account_id: str):
        """The delivery log, filtered by its query string (bookmarkable), a page at a time."""
        page = account_page(runtime, account_id)
        args, error, found = request.args, None, history.Page(items=[])
        try:
            flt = filters.delivery_filter(args, page.account.timezone)
            with runtime.sessions() as db:
                found = history.list_deliveries(db, account_id, flt, cursor=args.get("cursor") or None,
                                                limit=PAGE_SIZE)
        except ConsoleError as exc:
            error = str(exc)
        later = filters.query_string(args, filters.DELIVERY_FIELDS, cursor=found.next_cursor)
        statuses = [s for s in args.getlist("status") if s]
        saved = next((key for key, _ in filters.SAVED_DELIVERY_FILTERS if statuses == [key]
                      and not any(args.get(k) for k in filters.DELIVERY_FIELDS if k != "status")), None)
        return render("console/pages/deliveries.html", page, "deliveries", deliveries=found.items, error=error,
                      args=args, statuses=statuses, saved=saved, saved_filters=filters.SAVED_DELIVERY_FILTERS,
                      all_statuses=history.DELIVERY_STATUSES, next_url=f"?{later}" if found.next_cursor else None,
                      first_url=("?" + filters.query_string(args, filters.DELIVERY_FIELDS)) if args.get("cursor")
                      else None,
                      filter_fields=[(k, v) for k in filters.DELIVERY_FIELDS if k != "status"
                                     for v in args.getlist(k)[:1] if v]), (400 if error else 200)

    @bp.get("/accounts/<account_id>/deliveries/<delivery_id>")
    def delivery_page(account_id: str, delivery_id: str):
        """One delivery: what it was to do, and each attempt (scrubbed request and response excerpts)."""
        page = account_page(runtime, account_id)
        with runtime.sessions() as db:
            delivery = history.get_delivery(db, account_id, delivery_id)
            attempts = history.delivery_attempts(db, account_id, delivery.id)
        return render("console/pages/delivery.html", page, "deliveries", delivery=delivery, attempts=attempts,
                      replayed=request.args.get("replayed"))

    @bp.get("/accounts/<account_id>/events/<path:event_id>")
    def event_page(account_id: str, event_id: str):
        """One stored event: its data and the deliveries it caused."""
        page = account_page(runtime, account_id)
        with runtime.sessions() as db:
            ref = int(event_id) if event_id.isascii() and event_id.isdigit() else event_id  # an id, else a key
            event = history.get_event(db, account_id, ref)
            caused = history.list_deliveries(db, account_id, history.DeliveryFilter(event_key=event.key),
                                             limit=history.MAX_LIMIT)
        return render("console/pages/event.html", page, "deliveries", event=event, deliveries=caused.items)
