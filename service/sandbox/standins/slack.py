"""A Slack stand-in: the parts of the Web API and incoming webhooks that pbxrelay uses, in memory.

Reproduces (per docs.slack.dev): ``POST|GET /api/<method>`` with JSON, form or query arguments;
Bearer (or form ``token``) auth answering HTTP 200 ``{"ok": false, "error": ...}`` for
``not_authed``/``invalid_auth``/``token_revoked``/``missing_scope``; chat.postMessage channel
resolution by ID, ``#name`` or ``name`` (``channel_not_found``, ``is_archived``, ``not_in_channel``),
text/blocks/metadata validation (``no_text``, ``invalid_blocks``, ``msg_too_long``,
``invalid_metadata_format``), unique ``1700000000.000100``-style ts; conversations.history (IDs
only, newest first, ``oldest``/``latest``/``limit``/``cursor``, metadata only with
``include_all_metadata``, thread replies left out) and conversations.replies; a per-channel
sliding-window rate limit answering HTTP 429 with an integer ``Retry-After`` and
``{"ok": false, "error": "ratelimited"}``; incoming webhooks at ``/services/T/B/X`` answering
200 ``ok`` or 400/403/404/410/429 with a plain-text code.

Test controls under ``/_standin/``: ``POST faults`` queues faults consumed one per vendor request,
e.g. ``[{"status": 500}, {"status": 429, "retry_after": 2}, {"delay": 3}, {"body": "<html>oops",
"status": 502}, {"status": 500, "commit": true}]`` (``delay`` alone delays then answers normally;
``commit`` performs the request, then answers with the fault); ``GET messages``; ``GET calls``;
``POST setup`` registers tokens/channels/webhooks (and the rate limit, and ``answer_delay_ms``: every
vendor request then waits that long before it is handled, like a real Slack's 100-300 ms); ``POST reset``
forgets messages, calls, faults and rate windows, and with ``{"registrations": true}`` the registrations too.
Each recorded message has ``received_at`` (Unix time it was posted; not part of Slack's own answers).
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from collections import deque
from typing import Any

from flask import Flask, Response, request

from service.sandbox.standins.base import (
    FaultQueue,
    add_control_routes,
    answer_with_fault,
    fault_response,
    json_response,
    request_arguments,
    set_rate_limit,
)

DEFAULT_SCOPES = frozenset({"chat:write", "channels:history", "groups:history"})
# A default workspace so `create_app()` is usable by hand and by the sandbox without any setup.
DEFAULT_TOKEN = "xoxb-standin-0000-token"
DEFAULT_CHANNEL_ID = "C0STANDIN1"
DEFAULT_CHANNEL_NAME = "calls"
DEFAULT_WEBHOOK_PATH = "T0STANDIN/B0STANDIN/standinwebhooksecret"

TEXT_MAX = 40_000
BLOCKS_MAX = 50
HISTORY_LIMIT_MAX = 999
BOT_ID = "B0STANDIN"
BOT_USER = "U0STANDINBOT"


class SlackStandin:
    """The stand-in's workspace state: tokens, channels, webhooks, messages and the fault queue."""

    def __init__(self, *, rate_limit_max: int | None = 5, rate_limit_window: float = 1.0,
                 answer_delay: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.tokens: dict[str, frozenset[str]] = {}
        self.revoked: set[str] = set()
        self.channels: dict[str, dict[str, Any]] = {}
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.messages: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.faults = FaultQueue()
        # Slack: about one message per second per channel with short bursts; None disables the limit.
        self.rate_limit_max = rate_limit_max
        self.rate_limit_window = rate_limit_window
        self.answer_delay = answer_delay  # seconds every vendor request waits (outside the lock)
        self._recent: dict[str, deque[float]] = {}
        self._last_micros = 0

    @classmethod
    def with_defaults(cls) -> "SlackStandin":
        """A workspace with DEFAULT_TOKEN, channel DEFAULT_CHANNEL_ID (#calls) and DEFAULT_WEBHOOK_PATH."""
        state = cls()
        state.add_token(DEFAULT_TOKEN)
        state.add_channel(DEFAULT_CHANNEL_ID, DEFAULT_CHANNEL_NAME)
        state.add_webhook(DEFAULT_CHANNEL_ID, DEFAULT_WEBHOOK_PATH)
        return state

    # -- registration ------------------------------------------------------------------------

    def add_token(self, token: str, scopes: set[str] | frozenset[str] = DEFAULT_SCOPES) -> None:
        """Accept ``token`` with these OAuth scopes."""
        with self.lock:
            self.tokens[token] = frozenset(scopes)
            self.revoked.discard(token)

    def revoke_token(self, token: str) -> None:
        """Make ``token`` answer token_revoked from now on."""
        with self.lock:
            self.revoked.add(token)

    def add_channel(self, channel_id: str, name: str, *, is_member: bool = True, is_archived: bool = False) -> None:
        """Create a channel; ``is_member`` says whether the bot has joined it."""
        with self.lock:
            self.channels[channel_id] = {"id": channel_id, "name": name, "is_member": is_member,
                                         "is_archived": is_archived}

    def archive_channel(self, channel_id: str) -> None:
        """Archive a channel (posts get is_archived, webhooks 410)."""
        with self.lock:
            self.channels[channel_id]["is_archived"] = True

    def add_webhook(self, channel_id: str, path: str) -> str:
        """Register an incoming webhook ``/services/<path>`` posting into ``channel_id``; returns the path."""
        with self.lock:
            self.webhooks[path.strip("/")] = {"channel": channel_id, "revoked": False}
        return path.strip("/")

    def revoke_webhook(self, path: str) -> None:
        """Make the webhook answer 403 invalid_token."""
        with self.lock:
            self.webhooks[path.strip("/")]["revoked"] = True

    def push_faults(self, faults: list[dict[str, Any]]) -> None:
        """Queue faults; each vendor request consumes the next one."""
        self.faults.push(faults)

    def reset(self, *, registrations: bool = False) -> None:
        """Forget messages, calls, faults and rate-limit windows; with ``registrations`` also every
        token, channel and webhook (so one running server can serve many tests)."""
        with self.lock:
            self.messages.clear()
            self.calls.clear()
            self.faults.clear()
            self._recent.clear()
            if registrations:
                self.tokens.clear()
                self.revoked.clear()
                self.channels.clear()
                self.webhooks.clear()

    # -- inspection ----------------------------------------------------------------------------

    def messages_in(self, channel_id: str) -> list[dict[str, Any]]:
        """Copies of the messages recorded in one channel, oldest first."""
        with self.lock:
            return [dict(m) for m in self.messages if m["channel"] == channel_id]

    def calls_to(self, endpoint: str) -> int:
        """How many requests reached ``endpoint`` (a Web API method name, or "webhook")."""
        with self.lock:
            return sum(1 for c in self.calls if c["endpoint"] == endpoint)

    # -- internals (call with the lock held) ---------------------------------------------------

    def _next_ts(self) -> str:
        micros = max(int(time.time() * 1_000_000), self._last_micros + 1)  # strictly increasing, unique
        self._last_micros = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _rate_limited(self, channel_id: str) -> int | None:
        """Seconds to wait when this channel is over the limit, else None (and the post is counted)."""
        if self.rate_limit_max is None:
            return None
        now = time.monotonic()
        recent = self._recent.setdefault(channel_id, deque())
        while recent and recent[0] <= now - self.rate_limit_window:
            recent.popleft()
        if len(recent) >= self.rate_limit_max:
            return max(1, math.ceil(recent[0] + self.rate_limit_window - now))
        recent.append(now)
        return None

    def _resolve(self, ref: str) -> dict[str, Any] | None:
        if ref in self.channels:
            return self.channels[ref]
        name = ref[1:] if ref.startswith("#") else ref
        return next((c for c in self.channels.values() if c["name"] == name), None)


def create_app(state: SlackStandin | None = None) -> Flask:
    """The stand-in as a Flask app; ``app.extensions["slack_standin"]`` is its :class:`SlackStandin`."""
    state = state or SlackStandin.with_defaults()
    app = Flask("slack_standin")
    app.extensions["slack_standin"] = state

    @app.route("/api/<method>", methods=["GET", "POST"])
    def web_api(method: str) -> Response:
        handler = _API_METHODS.get(method)
        return _with_fault(state, method, "api", lambda: _call_api(state, method, handler))

    @app.post("/services/<team>/<bot>/<secret>")
    def webhook(team: str, bot: str, secret: str) -> Response:
        return _with_fault(state, "webhook", "webhook", lambda: _incoming_webhook(state, f"{team}/{bot}/{secret}"))

    add_control_routes(app, state, error_body=lambda message: {"ok": False, "error": message},
                       answer_fields={"ok": True})

    @app.get("/_standin/messages")
    def messages() -> Response:
        with state.lock:
            return _json({"ok": True, "messages": [dict(m) for m in state.messages]})

    @app.get("/_standin/calls")
    def calls() -> Response:
        with state.lock:
            return _json({"ok": True, "calls": list(state.calls)})

    @app.post("/_standin/setup")
    def setup() -> Response:
        body = request.get_json(force=True, silent=True) or {}
        delay_ms = body.get("answer_delay_ms", None)
        if delay_ms is not None and (isinstance(delay_ms, bool) or not isinstance(delay_ms, (int, float))
                                     or not 0 <= delay_ms <= 60_000):  # checked before anything is applied
            return _error("answer_delay_ms must be a number of milliseconds from 0 to 60000", 400)
        for token in body.get("tokens", []):
            state.add_token(token["token"], set(token.get("scopes", DEFAULT_SCOPES)))
        for channel in body.get("channels", []):
            state.add_channel(channel["id"], channel["name"], is_member=channel.get("is_member", True),
                              is_archived=channel.get("is_archived", False))
        for hook in body.get("webhooks", []):
            state.add_webhook(hook["channel"], hook["path"])
        if delay_ms is not None:
            with state.lock:
                state.answer_delay = delay_ms / 1000.0
        set_rate_limit(state, body)
        return _json({"ok": True})

    return app


# -- faults -----------------------------------------------------------------------------------

def _with_fault(state: SlackStandin, endpoint: str, kind: str, handle) -> Response:
    """Apply the next queued fault (if any) around the real handler ``handle``."""
    with state.lock:
        fault = state.faults.pop()
        state.calls.append({"endpoint": endpoint, "fault": fault, "at": time.time()})
        delay = state.answer_delay
    if delay:
        time.sleep(delay)
    return answer_with_fault(fault, handle, lambda f: fault_response(f, lambda status: _fault_body(status, kind)))


def _fault_body(status: int, kind: str) -> Any:
    """What Slack would say for ``status``: a Web API error object, or a webhook's plain-text code."""
    code = "ratelimited" if status == 429 else ("internal_error" if status >= 500 else f"http_{status}")
    return {"ok": False, "error": code} if kind == "api" else ("rate_limited" if status == 429 else code)


# -- Web API ----------------------------------------------------------------------------------

_json = json_response


def _error(code: str, status: int = 200, **extra: Any) -> Response:
    return _json({"ok": False, "error": code, **extra}, status)


def _token(args: dict[str, Any]) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    token = args.get("token")
    return str(token) if token else None


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true")


def _call_api(state: SlackStandin, method: str, handler) -> Response:
    if handler is None:
        return _error("unknown_method", 404)
    args = request_arguments()
    if args is None:
        return _error("invalid_json")
    token = _token(args)
    if token is None:
        return _error("not_authed")
    with state.lock:
        if token in state.revoked:
            return _error("token_revoked")
        scopes = state.tokens.get(token)
        if scopes is None:
            return _error("invalid_auth")
        return handler(state, args, scopes)


def _decode_json_arg(value: Any) -> Any:
    """Form bodies carry blocks/metadata as JSON strings; JSON bodies carry them as values."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value  # left as a string: validation reports it as the wrong type
    return value


def _blocks_problem(blocks: Any) -> str | None:
    if not isinstance(blocks, list):
        return "blocks must be an array"
    if len(blocks) > BLOCKS_MAX:
        return f"no more than {BLOCKS_MAX} items allowed [json-pointer:/blocks]"
    for index, block in enumerate(blocks):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str) or not block["type"]:
            return f"missing required field: type [json-pointer:/blocks/{index}]"
    return None


def _post_message(state: SlackStandin, args: dict[str, Any], scopes: frozenset[str]) -> Response:
    if "chat:write" not in scopes:
        return _error("missing_scope", needed="chat:write", provided=",".join(sorted(scopes)))
    channel = state._resolve(str(args.get("channel") or ""))
    if channel is None:
        return _error("channel_not_found")
    if channel["is_archived"]:
        return _error("is_archived")
    if not channel["is_member"]:
        return _error("not_in_channel")
    text = args.get("text")
    text = text if isinstance(text, str) else ("" if text is None else str(text))
    blocks = _decode_json_arg(args.get("blocks")) if args.get("blocks") not in (None, "") else None
    if blocks is not None and (problem := _blocks_problem(blocks)):
        return _error("invalid_blocks", errors=[problem],
                      response_metadata={"messages": [f"[ERROR] {problem}"]})
    if not text and not blocks and not args.get("attachments"):
        return _error("no_text")
    if len(text) > TEXT_MAX:
        return _error("msg_too_long")
    metadata = _decode_json_arg(args.get("metadata")) if args.get("metadata") not in (None, "") else None
    if metadata is not None and not (isinstance(metadata, dict) and isinstance(metadata.get("event_type"), str)
                                     and isinstance(metadata.get("event_payload"), dict)):
        return _error("invalid_metadata_format")
    wait = state._rate_limited(channel["id"])
    if wait is not None:
        return _json({"ok": False, "error": "ratelimited"}, 429, {"Retry-After": str(wait)})
    message = {"type": "message", "subtype": "bot_message", "bot_id": BOT_ID, "user": BOT_USER, "text": text,
               "ts": state._next_ts()}
    for key, value in (("blocks", blocks), ("metadata", metadata), ("thread_ts", args.get("thread_ts")),
                       ("username", args.get("username")), ("icon_emoji", args.get("icon_emoji"))):
        if value not in (None, ""):
            message[key] = value
    state.messages.append({**message, "channel": channel["id"], "via": "api", "received_at": time.time()})
    return _json({"ok": True, "channel": channel["id"], "ts": message["ts"], "message": message})


def _readable_channel(state: SlackStandin, args: dict[str, Any], scopes: frozenset[str]):
    """The channel for a read method, or the error response Slack would give."""
    ref = str(args.get("channel") or "")
    channel = state.channels.get(ref)  # IDs only: names are channel_not_found for conversations.*
    if channel is None:
        return None, _error("channel_not_found")
    needed = "groups:history" if ref.startswith("G") else "channels:history"
    if needed not in scopes:
        return None, _error("missing_scope", needed=needed, provided=",".join(sorted(scopes)))
    if not channel["is_member"]:
        return None, _error("not_in_channel")
    return channel, None


def _page(messages: list[dict[str, Any]], args: dict[str, Any]) -> Response:
    """One page of ``messages`` honouring oldest/latest/limit/cursor and include_all_metadata."""
    try:
        oldest, latest = float(args.get("oldest") or 0), float(args.get("latest") or "inf")
        limit = min(max(int(args.get("limit") or 100), 1), HISTORY_LIMIT_MAX)
        start = int(base64.b64decode(args["cursor"]).decode().split(":", 1)[1]) if args.get("cursor") else 0
    except (ValueError, IndexError):
        return _error("invalid_arguments")
    selected = [m for m in messages if oldest < float(m["ts"]) <= latest]
    page = selected[start:start + limit]
    more = start + limit < len(selected)
    keep_metadata = _truthy(args.get("include_all_metadata"))
    out = [{k: v for k, v in m.items()
            if k not in ("channel", "via", "received_at") and (keep_metadata or k != "metadata")}
           for m in page]
    cursor = base64.b64encode(f"next:{start + limit}".encode()).decode() if more else ""
    return _json({"ok": True, "messages": out, "has_more": more, "pin_count": 0,
                  "response_metadata": {"next_cursor": cursor}})


def _history(state: SlackStandin, args: dict[str, Any], scopes: frozenset[str]) -> Response:
    channel, error = _readable_channel(state, args, scopes)
    if error is not None:
        return error
    # Thread replies are not part of a channel's history (unless broadcast, which we do not model).
    top_level = [m for m in state.messages
                 if m["channel"] == channel["id"] and m.get("thread_ts") in (None, m["ts"])]
    return _page(sorted(top_level, key=lambda m: float(m["ts"]), reverse=True), args)


def _replies(state: SlackStandin, args: dict[str, Any], scopes: frozenset[str]) -> Response:
    channel, error = _readable_channel(state, args, scopes)
    if error is not None:
        return error
    parent_ts = str(args.get("ts") or "")
    thread = [m for m in state.messages if m["channel"] == channel["id"]
              and (m["ts"] == parent_ts or m.get("thread_ts") == parent_ts)]
    if not any(m["ts"] == parent_ts for m in thread):
        return _error("thread_not_found")
    return _page(sorted(thread, key=lambda m: float(m["ts"])), args)


def _auth_test(state: SlackStandin, args: dict[str, Any], scopes: frozenset[str]) -> Response:
    return _json({"ok": True, "url": "https://standin.slack.com/", "team": "Stand-in", "user": "pbxrelay",
                  "team_id": "T0STANDIN", "user_id": BOT_USER, "bot_id": BOT_ID})


_API_METHODS = {"chat.postMessage": _post_message, "conversations.history": _history,
                "conversations.replies": _replies, "auth.test": _auth_test}


# -- incoming webhooks ------------------------------------------------------------------------

def _text_response(body: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status=status, headers=headers or {}, content_type="text/html")


def _incoming_webhook(state: SlackStandin, path: str) -> Response:
    if request.mimetype == "application/json":
        payload = request.get_json(silent=True)
    else:  # the legacy form encoding: payload=<json>
        payload = _decode_json_arg(request.form.get("payload", ""))
    with state.lock:
        hook = state.webhooks.get(path)
        if hook is None:
            return _text_response("no_service", 404)
        if hook["revoked"]:
            return _text_response("invalid_token", 403)
        channel = state.channels.get(hook["channel"])
        if channel is None:
            return _text_response("channel_not_found", 404)
        if channel["is_archived"]:
            return _text_response("channel_is_archived", 410)
        if not isinstance(payload, dict):
            return _text_response("invalid_payload", 400)
        text = payload.get("text") if isinstance(payload.get("text"), str) else ""
        blocks = payload.get("blocks")
        if blocks is not None and _blocks_problem(blocks):
            return _text_response("invalid_blocks", 400)
        if not text and not blocks and not payload.get("attachments"):
            return _text_response("no_text", 400)
        if len(text) > TEXT_MAX:
            return _text_response("msg_too_long", 400)
        wait = state._rate_limited(channel["id"])
        if wait is not None:
            return _text_response("rate_limited", 429, {"Retry-After": str(wait)})
        message = {"type": "message", "subtype": "bot_message", "bot_id": BOT_ID, "text": text,
                   "ts": state._next_ts()}
        for key in ("blocks", "thread_ts", "username", "icon_emoji"):
            if payload.get(key) not in (None, ""):
                message[key] = payload[key]
        state.messages.append({**message, "channel": channel["id"], "via": "webhook", "received_at": time.time()})
    return _text_response("ok", 200)
