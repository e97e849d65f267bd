"""What every API view shares: the runtime, the caller, the authorization call, pages and JSON answers."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable
from urllib.parse import urlencode

from flask import Response, g, json, request
from flask_openapi3 import Tag
from pydantic import BaseModel

from service.config import Settings
from service.console import access
from service.console.access import Principal
from service.console.history import Page
from service.queue import TaskQueue
from service.runtime import Runtime

TAGS = {name: Tag(name=name, description=text) for name, text in (
    ("accounts", "The accounts you can see, their settings, hook URLs and hook health"),
    ("connections", "Where actions go; secrets are write-only"),
    ("rules", "The rules document: read, validate, dry-run, apply, versions"),
    ("history", "Events, calls, deliveries and their attempts; replays"),
    ("data", "Opt-outs, quarantined hooks and dead letters"),
    ("people", "Members, invites and API keys"),
)}


@dataclass
class ApiContext:
    """The settings and runtime the views use, and the task queue they publish to (opened on first use)."""

    settings: Settings
    runtime: Runtime

    @cached_property
    def queue(self) -> TaskQueue:
        """Publishes tasks by name (replays, re-ingests, resumed connections)."""
        return TaskQueue(self.settings)


def principal() -> Principal:
    """The authenticated caller of this request (set before every API view)."""
    return g.api_principal


def require(account_id: str, action: str) -> Principal:
    """The caller, if it may do ``action`` in the account (404 for accounts it cannot see, 403 for its role)."""
    caller = principal()
    access.require(caller, account_id, action)
    return caller


def answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response of a model, a list of models, or plain data."""
    if isinstance(body, BaseModel):
        body = body.model_dump(mode="json")
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers.update(headers or {})
    return response


def dump(model: type[BaseModel], rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows (ORM objects or dataclasses) as the response model's JSON."""
    return [model.model_validate(row).model_dump(mode="json") for row in rows]


def page_answer(page: Page, model: type[BaseModel]) -> Response:
    """``{"items": [...], "next_cursor": ...}`` with a ``Link: <...>; rel="next"`` header when there is more."""
    headers = {}
    if page.next_cursor:
        args = {key: value for key, value in request.args.items() if key != "cursor"}
        args["cursor"] = page.next_cursor
        headers["Link"] = f'<{request.base_url}?{urlencode(args)}>; rel="next"'
    return answer({"items": dump(model, page.items), "next_cursor": page.next_cursor}, headers=headers)


def list_answer(items: list[dict[str, Any]]) -> Response:
    """A short list that is never paged, in the same shape as a page."""
    return answer({"items": items, "next_cursor": None})
