"""What happened: events, calls (legs, call events, deliveries), deliveries with their attempts."""

from __future__ import annotations

from flask_openapi3 import APIBlueprint

from service.api.base import TAGS, ApiContext, answer, page_answer, require
from service.api.models import (
    AccountPath,
    AttemptOut,
    CallDetailOut,
    CallOut,
    CallPath,
    CallsQuery,
    DeliveriesQuery,
    DeliveryDetailOut,
    DeliveryFilterBody,
    DeliveryOut,
    EventOut,
    EventPath,
    EventsQuery,
    IdPath,
)
from service.api.problems import PROBLEM_RESPONSE as PROBLEM
from service.console import history


def delivery_filter(query: DeliveryFilterBody) -> history.DeliveryFilter:
    """The delivery filter of a list (or bulk replay) request; ConsoleError names a bad field."""
    statuses = tuple(part.strip() for part in (query.status or "").split(",") if part.strip())
    return history.DeliveryFilter(status=statuses, connection=query.connection, rule_name=query.rule,
                                  event_type=query.event_type, event_key=query.event_key, since=query.since,
                                  until=query.until)


def add_routes(bp: APIBlueprint, api: ApiContext) -> None:
    """Register the history endpoints on ``bp``."""
    rt = api.runtime
    tag = [TAGS["history"]]

    @bp.get("/accounts/<account_id>/events", tags=tag)
    def list_events(path: AccountPath, query: EventsQuery):
        """Stored events, newest first, filtered by type and time (since inclusive, until exclusive)."""
        require(path.account_id, "read")
        flt = history.EventFilter(type=query.type, since=query.since, until=query.until)
        with rt.sessions() as db:
            return page_answer(history.list_events(db, path.account_id, flt, cursor=query.cursor,
                                                   limit=query.limit), EventOut)

    @bp.get("/accounts/<account_id>/events/<path:ref>", tags=tag, responses={200: EventOut, 404: PROBLEM})
    def get_event(path: EventPath):
        """One stored event, by id or key."""
        require(path.account_id, "read")
        ref = int(path.ref) if path.ref.isdigit() else path.ref
        with rt.sessions() as db:
            return answer(EventOut.model_validate(history.get_event(db, path.account_id, ref)))

    @bp.get("/accounts/<account_id>/calls", tags=tag)
    def list_calls(path: AccountPath, query: CallsQuery):
        """Calls, newest first, filtered by number, outcome, direction and time."""
        require(path.account_id, "read")
        flt = history.CallFilter(number=query.number, outcome=query.outcome, direction=query.direction,
                                 since=query.since, until=query.until)
        with rt.sessions() as db:
            return page_answer(history.list_calls(db, path.account_id, flt, cursor=query.cursor, limit=query.limit),
                               CallOut)

    @bp.get("/accounts/<account_id>/calls/<path:call_key>", tags=tag, responses={200: CallDetailOut, 404: PROBLEM})
    def get_call(path: CallPath):
        """One call: its legs' hooks, the call events derived from them, and the deliveries with attempts."""
        require(path.account_id, "read")
        with rt.sessions() as db:
            return answer(CallDetailOut.model_validate(history.call_detail(db, path.account_id, path.call_key)))

    @bp.get("/accounts/<account_id>/deliveries", tags=tag)
    def list_deliveries(path: AccountPath, query: DeliveriesQuery):
        """Deliveries (one action of one rule for one event), newest first, filtered."""
        require(path.account_id, "read")
        flt = delivery_filter(query)
        with rt.sessions() as db:
            return page_answer(history.list_deliveries(db, path.account_id, flt, cursor=query.cursor,
                                                       limit=query.limit), DeliveryOut)

    @bp.get("/accounts/<account_id>/deliveries/<int:item_id>", tags=tag,
            responses={200: DeliveryDetailOut, 404: PROBLEM})
    def get_delivery(path: IdPath):
        """One delivery with its rendered params and every attempt (scrubbed request and response excerpts)."""
        require(path.account_id, "read")
        with rt.sessions() as db:
            delivery = history.get_delivery(db, path.account_id, path.item_id)
            attempts = history.delivery_attempts(db, path.account_id, path.item_id)
            body = {**DeliveryOut.model_validate(delivery).model_dump(), "params": delivery.params or {},
                    "attempts": [AttemptOut.model_validate(a).model_dump() for a in attempts]}
        return answer(DeliveryDetailOut.model_validate(body))
