"""Opt-outs, quarantined hooks (and sending one through ingest again) and dead letters."""

from __future__ import annotations

import sqlalchemy as sa
from flask_openapi3 import APIBlueprint

from service.api.base import TAGS, ApiContext, answer, page_answer, require
from service.api.models import (
    AccountPath,
    DeliveryOut,
    IdPath,
    NumberPath,
    OptOutBody,
    OptOutOut,
    PageQuery,
    QuarantineOut,
)
from service.api.problems import PROBLEM_RESPONSE as PROBLEM
from service.console import optouts
from service.console.errors import NotFound
from service.console.history import keyset_page, parse_row_id
from service.engine import operations
from service.events import aware
from service.queue import INGEST
from service.store.models import Delivery, QuarantinedDelivery
from service.store.queries import DEAD_STATUSES
from service.web.receiver import make_envelope


def add_routes(bp: APIBlueprint, api: ApiContext) -> None:
    """Register the opt-out, quarantine and dead-letter endpoints on ``bp``."""
    rt = api.runtime
    tag = [TAGS["data"]]

    @bp.get("/accounts/<account_id>/opt-outs", tags=tag)
    def list_opt_outs(path: AccountPath, query: PageQuery):
        """Numbers that must not be texted, newest first."""
        require(path.account_id, "read")
        with rt.sessions() as db:
            return page_answer(optouts.list_opt_outs(db, path.account_id, cursor=query.cursor, limit=query.limit),
                               OptOutOut)

    @bp.post("/accounts/<account_id>/opt-outs", tags=tag, responses={201: OptOutOut, 422: PROBLEM})
    def add_opt_out(path: AccountPath, body: OptOutBody):
        """Stop texting a number (201 when added, 200 when it was there already)."""
        caller = require(path.account_id, "write_rules")
        with rt.sessions.begin() as db:
            number, added = optouts.add_opt_out(db, rt, path.account_id, body.number, actor=caller.actor)
        return answer({"number": number, "added": added}, 201 if added else 200)

    @bp.delete("/accounts/<account_id>/opt-outs/<number>", tags=tag, responses={204: None, 404: PROBLEM})
    def remove_opt_out(path: NumberPath):
        """Allow texting a number again."""
        caller = require(path.account_id, "write_rules")
        with rt.sessions.begin() as db:
            optouts.remove_opt_out(db, rt, path.account_id, path.number, actor=caller.actor)
        return "", 204

    @bp.get("/accounts/<account_id>/quarantine", tags=tag)
    def list_quarantine(path: AccountPath, query: PageQuery):
        """Hooks that were authenticated but could not be processed, with the reason, newest first."""
        require(path.account_id, "read")
        with rt.sessions() as db:
            return page_answer(keyset_page(db, sa.select(QuarantinedDelivery).where(
                QuarantinedDelivery.account_id == path.account_id), QuarantinedDelivery.id,
                query.cursor, query.limit), QuarantineOut)

    @bp.post("/accounts/<account_id>/quarantine/<int:item_id>/reingest", tags=tag,
             responses={202: None, 404: PROBLEM})
    def reingest(path: IdPath):
        """Send a quarantined hook through ingest again (after a fix); it leaves the quarantine."""
        caller = require(path.account_id, "replay")
        if parse_row_id(path.item_id) is None:  # beyond the id column: PostgreSQL would refuse the query
            raise NotFound("no such quarantined hook")

        def publish(row: QuarantinedDelivery) -> str:
            envelope = make_envelope(source=row.source, account_id=row.account_id, method=row.method,
                                     content_type=row.content_type, query_string=row.query_string, body=row.body,
                                     headers={})
            envelope["received_at"] = aware(row.received_at).isoformat()  # when it really arrived
            api.queue.send(INGEST, [envelope], argsrepr="(envelope)")
            return envelope["request_id"]

        try:
            request_id = operations.reingest_quarantined(rt, path.account_id, path.item_id, publish=publish,
                                                         actor=caller.actor)
        except LookupError:
            raise NotFound("no such quarantined hook") from None
        return answer({"request_id": request_id}, 202)

    @bp.get("/accounts/<account_id>/dead-letters", tags=tag)
    def list_dead_letters(path: AccountPath, query: PageQuery):
        """Actions that gave up (dead, failed, paused), newest first; replay them from the deliveries."""
        require(path.account_id, "read")
        with rt.sessions() as db:
            return page_answer(keyset_page(db, sa.select(Delivery).where(
                Delivery.account_id == path.account_id, Delivery.status.in_(DEAD_STATUSES)), Delivery.id,
                query.cursor, query.limit), DeliveryOut)
