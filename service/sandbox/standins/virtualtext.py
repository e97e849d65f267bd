"""A VirtualText stand-in: the messages API as described on virtualtext.com/api-docs, in memory.

Reproduces (shared/reference/virtualtext-sms.md §2): ``POST /v1/messages`` with ``Authorization:
Bearer <key>`` and JSON ``{"to", "channel", "body", "idempotency_key"?, "from"?, "media"?}``
answering ``201 {"id": "msg_…", "status": "queued", "created_at": "<ISO-8601>"}``; ``GET
/v1/messages/<id>``; idempotency keys ("the same key sent twice does not send twice"): the same key
with the same request replays the first message (same status and body, header
``Idempotent-Replayed: true``), the same key with a different request answers 409.

Invented where the description is silent (say so when relying on it): the error body shape
``{"error": {"code", "message", "details": [{"field", "message"}]}}`` (the docs only promise "codes,
messages, and field-level details"); which status means what (400 unreadable JSON, 401 unknown
key, 403 disabled key, 404 unknown message, 409 idempotency conflict, 422 field validation, 429
with an integer ``Retry-After``); the per-key sliding-window rate limit (no limit is published); the
1600-character body limit; ``from`` having to be one of the key's numbers; idempotency keys never
expiring. Not reproduced: delivery status changes, contacts, webhooks, the older Textable
``POST /api/send`` API.

Test controls under ``/_standin/``: ``POST faults`` queues faults consumed one per API request, e.g.
``[{"status": 500}, {"status": 429, "retry_after": 2}, {"delay": 3}, {"body": "<html>oops", "status":
502}, {"status": 500, "commit": true}]`` (``delay`` alone delays then answers normally; ``commit``
performs the request, then answers with the fault); ``GET messages``; ``POST setup`` registers keys
``{"keys": [{"key", "numbers": [...], "disabled"?}], "rate_limit": {"max", "window"}}``; ``POST
reset`` forgets messages, idempotency records, faults and rate windows (with ``{"registrations":
true}`` the keys too).
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable

from flask import Flask, Response, request

from service.sandbox.standins.base import (
    FaultQueue,
    add_control_routes,
    answer_with_fault,
    fault_response,
    json_response,
    set_rate_limit,
)

# A ready account so `create_app()` works by hand and in the sandbox without setup.
DEFAULT_API_KEY = "pk_live_standin_demo_0000000000"
DEFAULT_NUMBER = "+12025550100"
BODY_MAX = 1600
MEDIA_MAX = 10
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_URL = re.compile(r"^https?://\S+$")
# Bare application/json, no charset: what this stand-in has always sent, unlike the others.
JSON_TYPE = "application/json"


class VirtualTextStandin:
    """The stand-in's world: API keys and their numbers, messages, idempotency records, faults."""

    def __init__(self, *, rate_limit_max: int | None = 10, rate_limit_window: float = 1.0) -> None:
        self.lock = threading.Lock()
        self.keys: dict[str, dict[str, Any]] = {}  # key -> {"numbers": [...], "disabled": bool}
        self.messages: list[dict[str, Any]] = []
        self.idempotency: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}  # (key, idem) -> (fingerprint, msg)
        self.calls: list[dict[str, Any]] = []
        self.faults = FaultQueue()
        # None disables the limit.
        self.rate_limit_max = rate_limit_max
        self.rate_limit_window = rate_limit_window
        self._recent: dict[str, deque[float]] = {}

    @classmethod
    def with_defaults(cls) -> "VirtualTextStandin":
        """A stand-in knowing DEFAULT_API_KEY with the number DEFAULT_NUMBER."""
        state = cls()
        state.add_key(DEFAULT_API_KEY, [DEFAULT_NUMBER])
        return state

    def add_key(self, key: str, numbers: list[str], *, disabled: bool = False) -> None:
        """Accept ``key``; its messages go out from ``numbers`` (the first is the default sender)."""
        with self.lock:
            self.keys[key] = {"numbers": list(numbers), "disabled": disabled}

    def disable_key(self, key: str) -> None:
        """Make ``key`` answer 403 from now on."""
        with self.lock:
            self.keys[key]["disabled"] = True

    def push_faults(self, faults: list[dict[str, Any]]) -> None:
        """Queue faults; each API request consumes the next one."""
        self.faults.push(faults)

    def reset(self, *, registrations: bool = False) -> None:
        """Forget messages, idempotency records, calls, faults and rate windows (and keys, if asked)."""
        with self.lock:
            self.messages.clear()
            self.idempotency.clear()
            self.calls.clear()
            self.faults.clear()
            self._recent.clear()
            if registrations:
                self.keys.clear()

    def sent(self) -> list[dict[str, Any]]:
        """Copies of every message accepted, oldest first."""
        with self.lock:
            return [dict(m) for m in self.messages]

    def _rate_limited(self, key: str) -> int | None:
        """Seconds to wait when ``key`` is over the limit, else None (and the request is counted)."""
        if self.rate_limit_max is None:
            return None
        now = time.monotonic()
        recent = self._recent.setdefault(key, deque())
        while recent and recent[0] <= now - self.rate_limit_window:
            recent.popleft()
        if len(recent) >= self.rate_limit_max:
            oldest = recent[0] if recent else now  # a limit of 0 refuses everything
            return max(1, math.ceil(oldest + self.rate_limit_window - now))
        recent.append(now)
        return None


def create_app(state: VirtualTextStandin | None = None) -> Flask:
    """The stand-in as a Flask app; ``app.extensions["virtualtext_standin"]`` is its state."""
    state = state or VirtualTextStandin.with_defaults()
    app = Flask("virtualtext_standin")
    app.extensions["virtualtext_standin"] = state

    @app.post("/v1/messages")
    def send() -> Response:
        return _with_fault(state, lambda: _send(state))

    @app.get("/v1/messages/<message_id>")
    def read(message_id: str) -> Response:
        return _with_fault(state, lambda: _read(state, message_id))

    @app.get("/v1/contacts")
    def contacts() -> Response:
        return _with_fault(state, lambda: _contacts(state))

    add_control_routes(app, state, error_body=lambda message: _error_body("invalid_request", message),
                       json_type=JSON_TYPE)

    @app.get("/_standin/messages")
    def messages() -> Response:
        # The key that sent each message stays out of the answer; tests in-process can read state.sent().
        return _json({"messages": [{k: v for k, v in m.items() if k != "api_key"} for m in state.sent()]})

    @app.post("/_standin/setup")
    def setup() -> Response:
        body = request.get_json(force=True, silent=True) or {}
        for key in body.get("keys", []):
            state.add_key(key["key"], key.get("numbers", [DEFAULT_NUMBER]), disabled=bool(key.get("disabled")))
        set_rate_limit(state, body)
        return _json({"ok": True})

    return app


def _with_fault(state: VirtualTextStandin, handle: Callable[[], Response]) -> Response:
    """Apply the next queued fault (if any) around the real handler ``handle``."""
    with state.lock:
        fault = state.faults.pop()
        state.calls.append({"path": request.path, "fault": fault, "at": time.time()})
    return answer_with_fault(fault, handle, lambda f: fault_response(f, _fault_body, json_type=JSON_TYPE))


def _fault_body(status: int) -> dict[str, Any]:
    code = "rate_limited" if status == 429 else ("internal_error" if status >= 500 else f"http_{status}")
    return _error_body(code, "injected fault")


_json = functools.partial(json_response, content_type=JSON_TYPE)


def _error_body(code: str, message: str, details: list[dict[str, str]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def _error(status: int, code: str, message: str, details: list[dict[str, str]] | None = None,
           headers: dict[str, str] | None = None) -> Response:
    return _json(_error_body(code, message, details), status, headers)


def _authenticate(state: VirtualTextStandin) -> tuple[str | None, Response | None]:
    """(key, None) for a usable key, else (None, the 401/403 answer). Call with the lock held."""
    header = request.headers.get("Authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else ""
    account = state.keys.get(key)
    if account is None:
        return None, _error(401, "unauthorized", "missing or invalid API key")
    if account["disabled"]:
        return None, _error(403, "forbidden", "this API key is disabled")
    return key, None


def _public(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in ("api_key", "idempotency_key")}


def _created(message: dict[str, Any]) -> dict[str, Any]:
    """The documented 201 body: only id, status and created_at."""
    return {k: message[k] for k in ("id", "status", "created_at")}


def _problems(body: dict[str, Any], numbers: list[str]) -> list[dict[str, str]]:
    """Field-level validation problems of a send request."""
    problems = []
    to = body.get("to")
    if not isinstance(to, str) or not _E164.match(to):
        problems.append({"field": "to", "message": "must be an E.164 phone number such as +12025550123"})
    channel = body.get("channel", "sms")
    if channel not in ("sms", "mms"):
        problems.append({"field": "channel", "message": "must be one of: sms, mms"})
    text = body.get("body")
    if not isinstance(text, str) or not text.strip():
        problems.append({"field": "body", "message": "is required"})
    elif len(text) > BODY_MAX:
        problems.append({"field": "body", "message": f"must be at most {BODY_MAX} characters"})
    sender = body.get("from")
    if sender is not None and sender not in numbers:
        problems.append({"field": "from", "message": "is not a number on this account"})
    media = body.get("media")
    if media is not None:
        if not isinstance(media, list) or not media or len(media) > MEDIA_MAX or not all(
                isinstance(u, str) and _URL.match(u) for u in media):
            problems.append({"field": "media", "message": f"must be a list of 1-{MEDIA_MAX} public http(s) URLs"})
        elif channel != "mms":
            problems.append({"field": "media", "message": "media needs channel mms"})
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 255):
        problems.append({"field": "idempotency_key", "message": "must be a string of 1-255 characters"})
    return problems


def _send(state: VirtualTextStandin) -> Response:
    body = request.get_json(silent=True)
    with state.lock:
        key, refusal = _authenticate(state)
        if refusal is not None:
            return refusal
        wait = state._rate_limited(key)
        if wait is not None:
            return _error(429, "rate_limited", "too many requests", headers={"Retry-After": str(wait)})
        if not isinstance(body, dict):
            return _error(400, "invalid_json", "the request body must be a JSON object")
        numbers = state.keys[key]["numbers"]
        problems = _problems(body, numbers)
        if problems:
            return _error(422, "validation_failed", "the message is invalid", problems)
        idem = body.get("idempotency_key")
        fingerprint = json.dumps({k: body.get(k) for k in ("to", "channel", "body", "from", "media")},
                                 sort_keys=True)
        if idem is not None and (key, idem) in state.idempotency:
            first_fingerprint, first = state.idempotency[(key, idem)]
            if first_fingerprint != fingerprint:
                return _error(409, "idempotency_conflict",
                              "this idempotency key was already used with different parameters")
            return _json(_created(first), 201, {"Idempotent-Replayed": "true"})
        message = {"id": f"msg_{uuid.uuid4().hex[:24]}", "status": "queued",
                   "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                   "to": body["to"], "from": body.get("from") or numbers[0], "channel": body.get("channel", "sms"),
                   "body": body["body"], "media": list(body.get("media") or []), "api_key": key,
                   "idempotency_key": idem}
        state.messages.append(message)
        if idem is not None:
            state.idempotency[(key, idem)] = (fingerprint, message)
    return _json(_created(message), 201)


def _read(state: VirtualTextStandin, message_id: str) -> Response:
    with state.lock:
        key, refusal = _authenticate(state)
        if refusal is not None:
            return refusal
        message = next((m for m in state.messages if m["id"] == message_id and m["api_key"] == key), None)
    if message is None:
        return _error(404, "not_found", f"no message {message_id}")
    return _json(_public(message))


def _contacts(state: VirtualTextStandin) -> Response:
    """GET /v1/contacts: the stand-in keeps no contacts, so an authorised key reads an empty page."""
    with state.lock:
        _key, refusal = _authenticate(state)
    return refusal if refusal is not None else _json({"data": [], "has_more": False})
