"""Deliveries: the log with filters and saved filters, one delivery with its attempts, one event; replay one or
all matching (a bulk job whose progress the page polls)."""

from __future__ import annotations

from flask import Blueprint, redirect, request, url_for

from service.config import Settings
from service.console import history, replay
from service.console.errors import ConsoleError
from service.console.pages import filters
from service.console.pages.common import account_page, render
from service.engine.operations import REPLAYABLE_STATUSES
from service.runtime import Runtime

PAGE_SIZE = 50


def register(bp: Blueprint, settings: Settings, runtime: Runtime) -> None:
    """The delivery log, a delivery's page, an event's page, replays and the replay job's progress fragment."""

    @bp.get("/accounts/<account_id>/deliveries")
    def deliveries_page(account_id: str):
        """The delivery log, filtered by its query string (bookmarkable), a page at a time."""
        page = account_page(runtime, account_id)
        args = request.args

        def fetch(cursor: str | None) -> history.Page:
            flt = filters.delivery_filter(args, page.account.timezone)
            with runtime.sessions() as db:
                return history.list_deliveries(db, account_id, flt, cursor=cursor, limit=PAGE_SIZE)

        listing = filters.list_page(args, filters.DELIVERY_FIELDS, fetch)
        statuses = [s for s in args.getlist("status") if s]
        saved = next((key for key, _ in filters.SAVED_DELIVERY_FILTERS if statuses == [key]
                      and not any(args.get(k) for k in filters.DELIVERY_FIELDS if k != "status")), None)
        return render("console/pages/deliveries.html", page, "deliveries", deliveries=listing.found.items,
                      error=listing.error, replayable=REPLAYABLE_STATUSES,
                      args=args, statuses=statuses, saved=saved, saved_filters=filters.SAVED_DELIVERY_FILTERS,
                      all_statuses=history.DELIVERY_STATUSES, next_url=listing.next_url,
                      first_url=listing.first_url,
                      filter_fields=[(k, v) for k in filters.DELIVERY_FIELDS if k != "status"
                                     for v in args.getlist(k)[:1] if v]), (400 if listing.error else 200)

    @bp.get("/accounts/<account_id>/deliveries/<delivery_id>")
    def delivery_page(account_id: str, delivery_id: str):
        """One delivery: what it was to do, and each attempt (scrubbed request and response excerpts)."""
        page = account_page(runtime, account_id)
        with runtime.sessions() as db:
            delivery = history.get_delivery(db, account_id, delivery_id)
            attempts = history.delivery_attempts(db, account_id, delivery.id)
        return render("console/pages/delivery.html", page, "deliveries", delivery=delivery, attempts=attempts,
                      replayed=request.args.get("replayed"))

    @bp.post("/accounts/<account_id>/deliveries/<delivery_id>/replay")
    def replay_delivery_page(account_id: str, delivery_id: str):
        """Replay one delivery now."""
        page = account_page(runtime, account_id, "replay")
        try:
            delivery = replay.replay_delivery(runtime, account_id, delivery_id, actor=page.principal.actor)
        except ConsoleError as exc:  # not replayable (it succeeded, or is still on its way)
            return render("console/pages/message.html", page, "deliveries", title="Replay", message=str(exc)), 400
        return redirect(url_for("console.delivery_page", account_id=account_id, delivery_id=delivery.id,
                                replayed=1))

    @bp.post("/accounts/<account_id>/deliveries/replay")
    def replay_matching_page(account_id: str):
        """Replay every delivery the posted filter matches: a job, shown with its progress."""
        page = account_page(runtime, account_id, "replay")
        try:
            flt = filters.delivery_filter(request.form, page.account.timezone)
            job = replay.start_bulk_replay(runtime, account_id, flt, actor=page.principal.actor)
        except ConsoleError as exc:  # a status that cannot be replayed, or a job of this account still running
            return render("console/pages/message.html", page, "deliveries", title="Replay", message=str(exc)), 400
        return redirect(url_for("console.replay_job_page", account_id=account_id, job_id=job.id))

    @bp.get("/accounts/<account_id>/replay-jobs/<job_id>")
    def replay_job_page(account_id: str, job_id: str):
        """A bulk replay's progress: the whole page, or (htmx polling) just its fragment."""
        page = account_page(runtime, account_id)
        with runtime.sessions() as db:
            job = replay.get_replay_job(db, account_id, job_id)
        fragment = request.headers.get("HX-Request") == "true"
        return render("console/pages/_replay_progress.html" if fragment else "console/pages/replay_job.html",
                      page, "deliveries", job=job)

    @bp.post("/accounts/<account_id>/events/<path:event_id>/replan")
    def replan_event_page(account_id: str, event_id: str):
        """Match the event against today's rules: create what was never planned, redo what gave up."""
        page = account_page(runtime, account_id, "replay")
        try:
            done = replay.replan_event(runtime, account_id, event_id, actor=page.principal.actor)
        except ConsoleError as exc:
            return render("console/pages/message.html", page, "deliveries", title="Re-plan", message=str(exc)), 400
        return redirect(url_for("console.event_page", account_id=account_id, event_id=done.event_key,
                                replanned=f"{len(done.created)} created, {len(done.replayed)} replayed, "
                                          f"{len(done.unchanged)} left as they were"))

    @bp.get("/accounts/<account_id>/events/<path:event_id>")
    def event_page(account_id: str, event_id: str):
        """One stored event: its data and the deliveries it caused."""
        page = account_page(runtime, account_id)
        with runtime.sessions() as db:
            ref = int(event_id) if event_id.isascii() and event_id.isdigit() else event_id  # an id, else a key
            event = history.get_event(db, account_id, ref)
            caused = history.list_deliveries(db, account_id, history.DeliveryFilter(event_key=event.key),
                                             limit=history.MAX_LIMIT)
        return render("console/pages/event.html", page, "deliveries", event=event, deliveries=caused.items,
                      replanned=request.args.get("replanned"))
