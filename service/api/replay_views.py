"""Replays: one delivery, one event re-planned with today's rules, every delivery matching a filter (a job)."""

from __future__ import annotations

from flask_openapi3 import APIBlueprint
from werkzeug.exceptions import Conflict

from service.api.base import TAGS, ApiContext, answer, require
from service.api.history_views import delivery_filter
from service.api.models import AccountPath, DeliveryFilterBody, DeliveryOut, EventPath, IdPath, ReplayJobOut
from service.api.problems import PROBLEM_RESPONSE as PROBLEM
from service.console import replay
from service.console.errors import ConsoleError


def add_routes(bp: APIBlueprint, api: ApiContext) -> None:
    """Register the replay endpoints on ``bp``."""
    rt = api.runtime
    tag = [TAGS["history"]]

    @bp.post("/accounts/<account_id>/deliveries/<int:item_id>/replay", tags=tag,
             responses={200: DeliveryOut, 404: PROBLEM, 422: PROBLEM})
    def replay_delivery(path: IdPath):
        """Put a delivery that gave up (dead, failed, paused, discarded) back to pending and run it again."""
        caller = require(path.account_id, "replay")
        delivery = replay.replay_delivery(rt, path.account_id, path.item_id, actor=caller.actor, tasks=api.queue)
        return answer(DeliveryOut.model_validate(delivery))

    @bp.post("/accounts/<account_id>/events/<path:ref>/replan", tags=tag, responses={404: PROBLEM})
    def replan_event(path: EventPath):
        """Match a stored event against today's rules: create what was never planned, redo what gave up."""
        caller = require(path.account_id, "replay")
        done = replay.replan_event(rt, path.account_id, path.ref, actor=caller.actor, tasks=api.queue)
        return answer({"event_key": done.event_key, "created": done.created, "replayed": done.replayed,
                       "unchanged": done.unchanged})

    @bp.post("/accounts/<account_id>/replays", tags=tag, responses={202: ReplayJobOut, 409: PROBLEM})
    def start_replay(path: AccountPath, body: DeliveryFilterBody):
        """Replay every delivery matching the filter (default: failed and dead) as a job; 202 with the job."""
        caller = require(path.account_id, "replay")
        try:
            job = replay.start_bulk_replay(rt, path.account_id, delivery_filter(body), actor=caller.actor,
                                           tasks=api.queue)
        except ConsoleError as exc:
            field, _, message = str(exc).partition(": ")
            if field == "replay":  # another job of the account is still running
                raise Conflict(message) from None
            raise
        return answer(ReplayJobOut.model_validate(job), 202,
                      {"Location": f"/api/v1/accounts/{path.account_id}/replays/{job.id}"})

    @bp.get("/accounts/<account_id>/replays/<int:item_id>", tags=tag, responses={200: ReplayJobOut, 404: PROBLEM})
    def get_replay(path: IdPath):
        """A replay job's progress: status, total, done, failed."""
        require(path.account_id, "read")
        with rt.sessions() as db:
            return answer(ReplayJobOut.model_validate(replay.get_replay_job(db, path.account_id, path.item_id)))
