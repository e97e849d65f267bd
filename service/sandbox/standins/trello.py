"""A Trello stand-in: the parts of Trello's REST API that pbxrelay uses, in memory.

Reproduces (per developer.atlassian.com/cloud/trello/rest and observed Trello answers):
auth by the ``Authorization: OAuth oauth_consumer_key="KEY", oauth_token="TOKEN"`` header (or, as Trello
also allows, ``key``/``token`` in the query string or the body), answering 401 with Trello's plain-text
reasons (``invalid key``; ``invalid token``; ``unauthorized permission requested`` for a missing
token, a read-only token writing, or a board the token's member is not on); ``POST /1/cards`` with
a JSON or form body (``idList`` required and 24-hex else 400 ``invalid value for idList``; an
unknown list 404; ``name``/``desc`` up to 16384 UTF-16 units; ``pos`` top/bottom/number; ``due``
ISO date or null; ``idLabels``/``idMembers`` as comma-separated strings or arrays, checked against
the board) returning the full card JSON; ``GET /1/lists/{id}/cards`` (open cards by position,
``fields`` filter); ``POST /1/cards/{id}/attachments`` with a multipart ``file`` (``name``,
``mimeType``) or a ``url``, and ``GET`` of the same path; 404 ``The requested resource was not
found.`` and 400 ``invalid id`` for path ids; per-token (100/10 s) and per-key (300/10 s) sliding
windows answering 429 ``{"error": "API_TOKEN_LIMIT_EXCEEDED" | "API_KEY_LIMIT_EXCEEDED", "message":
"Rate limit exceeded"}`` with no Retry-After, and the ``x-rate-limit-api-{token,key}-*`` headers
on every answer.

Assumed, not documented by Trello: an upload over the board's limit (10 MB free) is answered 413
with a plain-text body; an attachment request with neither file nor url is 400.

Test controls under ``/_standin/``: ``POST faults`` queues faults consumed one per vendor request,
e.g. ``[{"status": 500}, {"status": 429, "retry_after": 2}, {"delay": 3}, {"status": 500,
"commit": true}, {"status": 200, "body": "<html>"}]`` (``delay`` alone delays then answers
normally; ``commit`` performs the request, then answers with the fault); ``GET cards`` (every card
with its attachments: size and sha256 of uploaded files); ``GET calls``; ``POST setup`` registers
keys, tokens and boards with lists, labels and members, the rate limits and the upload limit;
``POST reset`` forgets cards, calls, faults and rate windows, and with ``{"registrations": true}``
the registrations too.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any

from flask import Flask, Response, request

from service.sandbox.standins.base import (
    FaultQueue,
    add_control_routes,
    answer_with_fault,
    fault_response,
    json_response,
    request_arguments,
)

# A ready-made workspace so `create_app()` works by hand and in the sandbox without setup.
DEFAULT_KEY = "0123456789abcdef0123456789abcdef"
DEFAULT_TOKEN = "ATTAstandin" + "0" * 56
DEFAULT_MEMBER = "5f0000000000000000000001"
DEFAULT_BOARD = "5f00000000000000000000b1"
DEFAULT_LISTS = {"5f00000000000000000000a1": "Voicemail", "5f00000000000000000000a2": "Missed calls"}
DEFAULT_LABELS = {"5f00000000000000000000c1": ("Urgent", "red"), "5f00000000000000000000c2": ("Sales", "green")}

TEXT_MAX = 16_384
ATTACHMENT_NAME_MAX = 256
FREE_ATTACHMENT_BYTES = 10 * 1024 * 1024
NOT_FOUND = "The requested resource was not found."
NO_PERMISSION = "unauthorized permission requested"
_ID = re.compile(r"^[0-9a-fA-F]{24}$")
POS_STEP = 16384.0


class TrelloStandin:
    """The stand-in's state: keys, tokens, boards/lists/labels/members, cards, attachments, faults."""

    def __init__(self, *, token_limit: int | None = 100, key_limit: int | None = 300, window: float = 10.0,
                 attachment_max_bytes: int = FREE_ATTACHMENT_BYTES) -> None:
        self.lock = threading.Lock()
        self.keys: set[str] = set()
        self.tokens: dict[str, dict[str, Any]] = {}
        self.boards: dict[str, dict[str, Any]] = {}
        self.lists: dict[str, dict[str, Any]] = {}
        self.cards: dict[str, dict[str, Any]] = {}
        self.attachments: dict[str, list[dict[str, Any]]] = {}
        self.calls: list[dict[str, Any]] = []
        self.faults = FaultQueue()
        # Trello: 100 requests / 10 s per token, 300 / 10 s per key; None disables a limit.
        self.token_limit, self.key_limit, self.window = token_limit, key_limit, window
        self.attachment_max_bytes = attachment_max_bytes
        self._recent: dict[str, deque[float]] = {}
        self._ids = itertools.count(1)

    @classmethod
    def with_defaults(cls) -> "TrelloStandin":
        """DEFAULT_KEY/DEFAULT_TOKEN, one board with the DEFAULT_LISTS, DEFAULT_LABELS and DEFAULT_MEMBER."""
        state = cls()
        state.load_defaults()
        return state

    def load_defaults(self) -> None:
        """Register the demo workspace (DEFAULT_KEY, DEFAULT_TOKEN, board, lists, labels, member)."""
        self.add_key(DEFAULT_KEY)
        self.add_token(DEFAULT_TOKEN, DEFAULT_KEY, member=DEFAULT_MEMBER)
        self.add_board(DEFAULT_BOARD, "Calls", members=[DEFAULT_MEMBER], lists=DEFAULT_LISTS, labels=DEFAULT_LABELS)

    # -- registration ------------------------------------------------------------------------

    def add_key(self, key: str) -> None:
        """Accept ``key`` as an API key."""
        with self.lock:
            self.keys.add(key)

    def add_token(self, token: str, key: str, *, member: str, scopes: set[str] | frozenset[str] = frozenset(
            {"read", "write"})) -> None:
        """Accept ``token``, issued for ``key`` to ``member``, with these scopes (read, write)."""
        with self.lock:
            self.tokens[token] = {"key": key, "member": member, "scopes": frozenset(scopes), "revoked": False}

    def revoke_token(self, token: str) -> None:
        """Make ``token`` answer 401 invalid token from now on."""
        with self.lock:
            self.tokens[token]["revoked"] = True

    def add_board(self, board_id: str, name: str, *, members: list[str], lists: dict[str, str],
                  labels: dict[str, tuple[str, str]] | None = None) -> None:
        """Create a board with members, lists {id: name} and labels {id: (name, color)}."""
        with self.lock:
            self.boards[board_id] = {"id": board_id, "name": name, "members": set(members), "next_short": 1,
                                     "labels": {lid: {"id": lid, "idBoard": board_id, "name": n, "color": c}
                                                for lid, (n, c) in (labels or {}).items()}}
            for list_id, list_name in lists.items():
                self.lists[list_id] = {"id": list_id, "name": list_name, "idBoard": board_id, "closed": False}

    def push_faults(self, faults: list[dict[str, Any]]) -> None:
        """Queue faults; each vendor request consumes the next one."""
        self.faults.push(faults)

    def reset(self, *, registrations: bool = False) -> None:
        """Forget cards, attachments, calls, faults and rate windows; with ``registrations`` also every
        key, token and board (so one running server can serve many tests)."""
        with self.lock:
            for store in (self.cards, self.attachments, self.calls, self.faults, self._recent):
                store.clear()
            if registrations:
                for store in (self.keys, self.tokens, self.boards, self.lists):
                    store.clear()

    # -- inspection ----------------------------------------------------------------------------

    def cards_in(self, list_id: str) -> list[dict[str, Any]]:
        """Copies of the cards in ``list_id`` (open and archived) with their attachments, by position."""
        with self.lock:
            return [self._card_view(c) for c in sorted(self.cards.values(), key=lambda c: c["pos"])
                    if c["idList"] == list_id]

    def all_cards(self) -> list[dict[str, Any]]:
        """Copies of every card with its attachments, in creation order."""
        with self.lock:
            return [self._card_view(c) for c in self.cards.values()]

    def calls_to(self, method: str, route: str) -> int:
        """How many vendor requests matched ``method`` and ``route`` (e.g. "POST", "/1/cards")."""
        with self.lock:
            return sum(1 for c in self.calls if c["method"] == method and c["route"] == route)

    # -- internals (call with the lock held) ---------------------------------------------------

    def _card_view(self, card: dict[str, Any]) -> dict[str, Any]:
        return {**card, "attachments": [dict(a) for a in self.attachments.get(card["id"], [])]}

    def _new_id(self) -> str:
        return f"{int(time.time()):08x}{next(self._ids):016x}"

    def _rate_limited(self, bucket: str, limit: int | None) -> bool:
        """True when ``bucket`` is over ``limit`` in the sliding window; else the request is counted."""
        if limit is None:
            return False
        now = time.monotonic()
        recent = self._recent.setdefault(bucket, deque())
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        if len(recent) >= limit:
            return True
        recent.append(now)
        return False

    def _remaining(self, bucket: str, limit: int | None) -> int:
        return max(0, (limit or 0) - len(self._recent.get(bucket, ())))


def create_app(state: TrelloStandin | None = None) -> Flask:
    """The stand-in as a Flask app; ``app.extensions["trello_standin"]`` is its :class:`TrelloStandin`."""
    state = state or TrelloStandin.with_defaults()
    app = Flask("trello_standin")
    app.extensions["trello_standin"] = state

    @app.post("/1/cards")
    def create_card() -> Response:
        return _vendor(state, "/1/cards", "write", lambda args, auth: _create_card(state, args, auth))

    @app.get("/1/members/me")
    def member_me() -> Response:
        return _vendor(state, "/1/members/me", "read", lambda args, auth: _json({"id": auth["member"],
                                                                                 "username": auth["member"]}))

    @app.get("/1/lists/<list_id>/cards")
    def list_cards(list_id: str) -> Response:
        return _vendor(state, "/1/lists/{id}/cards", "read", lambda args, auth: _list_cards(state, list_id, args, auth))

    @app.route("/1/cards/<card_id>/attachments", methods=["GET", "POST"])
    def attachments(card_id: str) -> Response:
        scope = "write" if request.method == "POST" else "read"
        handler = _add_attachment if request.method == "POST" else _get_attachments
        return _vendor(state, "/1/cards/{id}/attachments", scope,
                       lambda args, auth: handler(state, card_id, args, auth))

    @app.errorhandler(404)
    def unknown_route(_error) -> Response:
        return _text(f"Cannot {request.method} {request.path}", 404)

    add_control_routes(app, state)

    @app.get("/_standin/cards")
    def cards() -> Response:
        return _json({"cards": state.all_cards()})

    @app.get("/_standin/calls")
    def calls() -> Response:
        with state.lock:
            return _json({"calls": list(state.calls)})

    @app.post("/_standin/setup")
    def setup() -> Response:
        body = request.get_json(force=True, silent=True) or {}
        for key in body.get("keys", []):
            state.add_key(key)
        for token in body.get("tokens", []):
            state.add_token(token["token"], token["key"], member=token["member"],
                            scopes=set(token.get("scopes", ("read", "write"))))
        for board in body.get("boards", []):
            state.add_board(board["id"], board.get("name", "Board"), members=board.get("members", []),
                            lists={lst["id"]: lst.get("name", "List") for lst in board.get("lists", [])},
                            labels={lab["id"]: (lab.get("name", ""), lab.get("color", "green"))
                                    for lab in board.get("labels", [])})
        with state.lock:
            if "rate_limit" in body:
                limit = body["rate_limit"] or {}
                state.token_limit, state.key_limit = limit.get("token"), limit.get("key")
                state.window = float(limit.get("window", 10.0))
            if "attachment_max_bytes" in body:
                state.attachment_max_bytes = int(body["attachment_max_bytes"])
        return _json({"ok": True})

    return app


# -- plumbing ---------------------------------------------------------------------------------

_json = json_response


def _text(body: str, status: int, headers: dict[str, str] | None = None) -> Response:
    """Trello answers most errors with a bare text reason, not JSON."""
    return Response(body, status=status, headers=headers or {}, content_type="text/plain; charset=utf-8")


def _vendor(state: TrelloStandin, route: str, scope: str, handle) -> Response:
    """Record the call, apply the next fault, check auth and rate limits, then run ``handle``."""
    with state.lock:
        fault = state.faults.pop()
        state.calls.append({"method": request.method, "route": route, "path": request.path, "fault": fault,
                            "at": time.time(), "auth": _auth_source()})
    return answer_with_fault(fault, lambda: _authorised(state, scope, handle),
                             lambda f: fault_response(f, _fault_body))


def _authorised(state: TrelloStandin, scope: str, handle) -> Response:
    args = request_arguments()
    if args is None:
        return _text("invalid json", 400)
    key, token = str(args.pop("key", "") or ""), str(args.pop("token", "") or "")
    header = _oauth_header()
    if header is not None:
        key, token = header
    with state.lock:
        if key not in state.keys:
            return _text("invalid key", 401)
        if not token:
            return _text(NO_PERMISSION, 401)
        grant = state.tokens.get(token)
        if grant is None or grant["revoked"] or grant["key"] != key:
            return _text("invalid token", 401)
        if scope not in grant["scopes"]:
            return _text(NO_PERMISSION, 401)
        token_bucket, key_bucket = f"token:{token}", f"key:{key}"
        if state._rate_limited(key_bucket, state.key_limit):
            response = _json({"error": "API_KEY_LIMIT_EXCEEDED", "message": "Rate limit exceeded"}, 429)
        elif state._rate_limited(token_bucket, state.token_limit):
            response = _json({"error": "API_TOKEN_LIMIT_EXCEEDED", "message": "Rate limit exceeded"}, 429)
        else:
            response = handle(args, grant)
        for name, bucket, limit in (("token", token_bucket, state.token_limit), ("key", key_bucket, state.key_limit)):
            if limit is not None:
                response.headers[f"x-rate-limit-api-{name}-interval-ms"] = str(int(state.window * 1000))
                response.headers[f"x-rate-limit-api-{name}-max"] = str(limit)
                response.headers[f"x-rate-limit-api-{name}-remaining"] = str(state._remaining(bucket, limit))
        return response


# Trello's header form: OAuth oauth_consumer_key="KEY", oauth_token="TOKEN" (either order, optional spaces).
_OAUTH_PARAM = re.compile(r'\s*(\w+)\s*=\s*"([^"]*)"\s*(?:,|$)')


def _oauth_header() -> tuple[str, str] | None:
    """(key, token) from an ``Authorization: OAuth ...`` header; None without one (query/body auth applies)."""
    raw = request.headers.get("Authorization", "")
    scheme, _, rest = raw.partition(" ")
    if scheme.lower() != "oauth":
        return None
    fields = dict(_OAUTH_PARAM.findall(rest))
    return fields.get("oauth_consumer_key", ""), fields.get("oauth_token", "")


def _auth_source() -> str | None:
    """Where a request carried its credentials ("header", "params"), for tests that check the client's choice."""
    if _oauth_header() is not None:
        return "header"
    names = set(request.args) | (set(request.form) if request.mimetype != "application/json" else set())
    if request.mimetype == "application/json":
        body = request.get_json(silent=True)
        names |= set(body) if isinstance(body, dict) else set()
    return "params" if names & {"key", "token"} else None


def _fault_body(status: int) -> Any:
    if status == 429:
        return {"error": "API_TOKEN_LIMIT_EXCEEDED", "message": "Rate limit exceeded"}
    return {401: "invalid token", 403: "Forbidden", 404: NOT_FOUND}.get(status, "Internal Server Error")


# -- cards ------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _id_list(value: Any) -> list[str] | None:
    """Trello takes id lists as a comma-separated string or an array; None when neither."""
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _parse_due(value: Any) -> tuple[bool, str | None]:
    if value in (None, "", "null"):
        return True, None
    if not isinstance(value, str):
        return False, None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False, None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return True, parsed.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _visible_board(state: TrelloStandin, board_id: str, grant: dict[str, Any]) -> bool:
    return grant["member"] in state.boards[board_id]["members"]


def _create_card(state: TrelloStandin, args: dict[str, Any], grant: dict[str, Any]) -> Response:
    list_id = args.get("idList")
    if not isinstance(list_id, str) or not _ID.match(list_id):
        return _text("invalid value for idList", 400)
    lst = state.lists.get(list_id)
    if lst is None:
        return _text("could not find the board that the card belongs to", 404)
    board = state.boards[lst["idBoard"]]
    if not _visible_board(state, board["id"], grant):
        return _text(NO_PERMISSION, 401)
    name, desc = args.get("name", ""), args.get("desc", "")
    if not isinstance(name, str) or _utf16_len(name) > TEXT_MAX:
        return _text("invalid value for name", 400)
    if not isinstance(desc, str) or _utf16_len(desc) > TEXT_MAX:
        return _text("invalid value for desc", 400)
    ok, due = _parse_due(args.get("due"))
    if not ok:
        return _text("invalid value for due", 400)
    labels, members = _id_list(args.get("idLabels")), _id_list(args.get("idMembers"))
    if labels is None or any(lab not in board["labels"] for lab in labels):
        return _text("invalid value for idLabels", 400)
    if members is None or any(m not in board["members"] for m in members):
        return _text("invalid value for idMembers", 400)
    in_list = [c["pos"] for c in state.cards.values() if c["idList"] == list_id]
    pos = args.get("pos", "bottom")
    if pos == "top":
        pos = min(in_list) / 2 if in_list else POS_STEP
    elif pos == "bottom":
        pos = max(in_list) + POS_STEP if in_list else POS_STEP
    else:
        try:
            pos = float(pos)
        except (TypeError, ValueError):
            return _text("invalid value for pos", 400)
        if pos < 0:
            return _text("invalid value for pos", 400)
    card_id = state._new_id()
    short_link = hashlib.sha256(card_id.encode()).hexdigest()[:8]
    id_short = board["next_short"]
    board["next_short"] += 1
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:128]
    card = {"id": card_id, "name": name, "desc": desc, "descData": {"emoji": {}}, "idList": list_id,
            "idBoard": board["id"], "idShort": id_short, "shortLink": short_link,
            "url": f"https://trello.com/c/{short_link}/{id_short}-{slug}",
            "shortUrl": f"https://trello.com/c/{short_link}", "idLabels": list(labels),
            "labels": [dict(board["labels"][lab]) for lab in labels], "idMembers": list(members),
            "idMembersVoted": [], "idChecklists": [], "checkItemStates": [], "idAttachmentCover": None,
            "manualCoverAttachment": False, "due": due, "dueComplete": False, "dueReminder": None,
            "start": None, "pos": pos, "closed": False, "subscribed": False, "email": None,
            "dateLastActivity": _now(),
            "badges": {"attachmentsByType": {"trello": {"board": 0, "card": 0}}, "location": False, "votes": 0,
                       "viewingMemberVoted": False, "subscribed": False, "fogbugz": "", "checkItems": 0,
                       "checkItemsChecked": 0, "checkItemsEarliestDue": None, "comments": 0, "attachments": 0,
                       "description": bool(desc), "due": due, "dueComplete": False, "start": None},
            "cover": {"idAttachment": None, "color": None, "idUploadedBackground": None, "size": "normal",
                      "brightness": "dark", "idPlugin": None},
            "stickers": [], "limits": {}}
    state.cards[card_id] = card
    return _json({**card, "attachments": []})


def _list_cards(state: TrelloStandin, list_id: str, args: dict[str, Any], grant: dict[str, Any]) -> Response:
    if not _ID.match(list_id):
        return _text("invalid id", 400)
    lst = state.lists.get(list_id)
    if lst is None:
        return _text(NOT_FOUND, 404)
    if not _visible_board(state, lst["idBoard"], grant):
        return _text(NO_PERMISSION, 401)
    fields = str(args.get("fields") or "all")
    wanted = None if fields == "all" else {f.strip() for f in fields.split(",")} | {"id"}
    cards = sorted((c for c in state.cards.values() if c["idList"] == list_id and not c["closed"]),
                   key=lambda c: c["pos"])
    return _json([{k: v for k, v in c.items() if wanted is None or k in wanted} for c in cards])


def _card_for(state: TrelloStandin, card_id: str, grant: dict[str, Any]) -> tuple[dict | None, Response | None]:
    if not _ID.match(card_id):
        return None, _text("invalid id", 400)
    card = state.cards.get(card_id)
    if card is None:
        return None, _text(NOT_FOUND, 404)
    if not _visible_board(state, card["idBoard"], grant):
        return None, _text(NO_PERMISSION, 401)
    return card, None


def _get_attachments(state: TrelloStandin, card_id: str, args: dict[str, Any], grant: dict[str, Any]) -> Response:
    card, error = _card_for(state, card_id, grant)
    if error is not None:
        return error
    fields = str(args.get("fields") or "all")
    wanted = None if fields == "all" else {f.strip() for f in fields.split(",")} | {"id"}
    # The stored sha256 is a stand-in extra for tests, never part of Trello's answer.
    return _json([{k: v for k, v in a.items() if k != "sha256" and (wanted is None or k in wanted)}
                  for a in state.attachments.get(card_id, [])])


def _add_attachment(state: TrelloStandin, card_id: str, args: dict[str, Any], grant: dict[str, Any]) -> Response:
    card, error = _card_for(state, card_id, grant)
    if error is not None:
        return error
    upload = request.files.get("file")
    url = args.get("url")
    name = args.get("name")
    mime = args.get("mimeType")
    if name is not None and (not isinstance(name, str) or len(name) > ATTACHMENT_NAME_MAX):
        return _text("invalid value for name", 400)
    if mime is not None and (not isinstance(mime, str) or len(mime) > ATTACHMENT_NAME_MAX):
        return _text("invalid value for mimeType", 400)
    attachment = {"id": state._new_id(), "date": _now(), "edgeColor": None, "idMember": grant["member"],
                  "previews": [], "pos": POS_STEP * (len(state.attachments.get(card_id, [])) + 1)}
    if upload is not None:
        content = upload.read()
        if len(content) > state.attachment_max_bytes:
            return _text("request entity too large", 413)
        file_name = upload.filename or "upload"
        attachment.update({"bytes": len(content), "isUpload": True, "fileName": file_name,
                           "mimeType": mime or upload.mimetype or "", "name": name or file_name,
                           "url": f"https://trello.com/1/cards/{card_id}/attachments/{attachment['id']}/download/"
                                  f"{file_name}",
                           "sha256": hashlib.sha256(content).hexdigest()})
    elif isinstance(url, str) and url.startswith(("http://", "https://")):
        attachment.update({"bytes": None, "isUpload": False, "fileName": None, "mimeType": mime or "",
                           "name": name or url, "url": url})
    else:
        return _text("invalid value for url", 400)
    state.attachments.setdefault(card_id, []).append(attachment)
    card["badges"]["attachments"] += 1
    card["dateLastActivity"] = _now()
    return _json({k: v for k, v in attachment.items() if k != "sha256"})
