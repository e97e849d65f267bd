"""A local VirtualPBX / Kazoo Crossbar v2 stand-in: the API surface pbxrelay uses, with Kazoo's habits.

Habits reproduced (see shared/reference/virtualpbx-api.md): response envelopes with ``error`` as a
string and ``tokens {consumed, remaining}``; Kazoo error bodies; JWT-looking tokens that expire into
401 invalid_credentials; the per (client IP, account) token bucket (100, 10/s, auth 35) answering 429
without Retry-After; 405 invalid_method for PATCH where Kazoo has none; verb and Accept tunnelling;
opaque ``next_start_key`` pagination; Gregorian timestamps; CDR ranges capped at 31 days + 1 h;
``X-Request-ID`` honoured and echoed as ``x-request-id``.

A control surface under ``/_standin/`` lets another process seed data, expire tokens, inject faults
and run simulated calls (``pbxrelay sandbox``).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import time
import uuid
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any, Callable
from urllib.parse import unquote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Flask, Response, request

from integrations.virtualpbx.client import merge_patch
from integrations.virtualpbx.gregorian import GREGORIAN_UNIX_OFFSET

from .state import (
    HOOK_TYPES,
    Account,
    StandinOptions,
    StandinState,
    TokenInfo,
    new_id,
    normalise_webhook,
    webhook_errors,
)

__all__ = ["StandinOptions", "StandinState", "create_app"]

API_VERSION = "4.3.0"
NODE = "standin@virtualpbx.test"
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_CSV_COLUMNS = ("id", "call_id", "caller_id_number", "caller_id_name", "callee_id_number", "callee_id_name",
                "duration_seconds", "billing_seconds", "timestamp", "hangup_cause", "other_leg_call_id", "owner_id",
                "to", "from", "direction", "request", "authorizing_id", "cost", "dialed_number", "calling_from",
                "datetime", "unix_timestamp", "rfc_1036", "iso_8601", "call_type", "rate", "rate_name", "bridge_id",
                "recording_url", "media_server", "call_priority", "interaction_id")
_MEDIA_EXTENSIONS = {"audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/wav": "wav", "audio/x-wav": "wav",
                     "audio/mp4": "mp4"}


class _Reply(Exception):
    """Raised by handlers to answer right away (errors, non-JSON bodies)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class _Crossbar:
    """One Crossbar request: authentication, pacing, routing and the envelope around the answer."""

    def __init__(self, state: StandinState) -> None:
        self.state = state
        self.request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
        self.token: str | None = None
        self.token_info: TokenInfo | None = None
        self.consumed = 0.0
        self.remaining = state.options.bucket_capacity
        raw = request.get_data(cache=True)
        self.envelope: dict[str, Any] = {}
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                raise _Reply(self.error(400, "parse_error", {"message": "failed to parse request body"}))
            self.envelope = parsed if isinstance(parsed, dict) else {}
        self.body = self.envelope.get("data")
        tunnelled = request.args.get("verb") or self.envelope.get("verb")
        self.method = str(tunnelled).upper() if request.method == "POST" and tunnelled else request.method
        accept = request.args.get("accept") or self.envelope.get("accept") or request.headers.get("Accept", "")
        self.wants_csv = accept in ("csv", "text/csv") or accept.startswith("text/csv")

    # ---------------------------------------------------------------------------------- answers

    def _base(self) -> dict[str, Any]:
        return {"auth_token": self.token or "", "request_id": self.request_id, "node": NODE,
                "version": API_VERSION, "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                "tokens": {"consumed": int(self.consumed), "remaining": int(self.remaining)}}

    def reply(self, data: Any, status: int = 200, **extra: Any) -> Response:
        """A success envelope."""
        body = {**self._base(), "data": data, "status": "success", "revision": uuid.uuid4().hex, **extra}
        return self._json(body, status)

    def error(self, status: int, message: str, data: Any) -> Response:
        """A Kazoo error envelope: ``error`` is the HTTP code as a string."""
        body = {**self._base(), "data": data, "error": str(status), "message": message, "status": "error"}
        return self._json(body, status)

    def _json(self, body: dict[str, Any], status: int) -> Response:
        response = Response(json.dumps(body), status=status, mimetype="application/json")
        response.headers["x-request-id"] = self.request_id
        return response

    def fail(self, status: int, message: str, data: Any) -> _Reply:
        """An error reply to raise."""
        return _Reply(self.error(status, message, data))

    def not_found(self, what: str, ident: str) -> _Reply:
        """404 bad_identifier for an unknown id."""
        return self.fail(404, "bad_identifier", {"message": "bad identifier",
                                                 "not_found": f"The {what} {ident} could not be found"})

    def invalid_method(self) -> _Reply:
        """405 invalid_method."""
        return self.fail(405, "invalid_method", {"message": "invalid method"})

    # ------------------------------------------------------------------------ pacing and tokens

    def take_tokens(self, account_id: str, cost: float) -> None:
        """Kazoo's bucket per client IP + account; 429 too_many_requests when empty."""
        options = self.state.options
        key = f"{request.remote_addr}/{account_id}"
        now = time.monotonic()
        with self.state.lock:
            tokens, ts = self.state.buckets.get(key, (options.bucket_capacity, now))
            tokens = min(options.bucket_capacity, tokens + (now - ts) * options.bucket_refill)
            if tokens < cost:
                self.state.buckets[key] = (tokens, now)
                self.remaining = tokens
                raise self.fail(429, "too_many_requests", {"message": "too many requests"})
            self.state.buckets[key] = (tokens - cost, now)
        self.consumed, self.remaining = cost, tokens - cost

    def authenticate(self) -> TokenInfo:
        """The token's info, or 401 invalid_credentials when missing, unknown or expired."""
        token = (request.headers.get("X-Auth-Token") or self.envelope.get("auth_token")
                 or request.args.get("auth_token"))
        with self.state.lock:
            info = self.state.tokens.get(token or "")
        if info is None or info.expires <= self.state.now():
            raise self.fail(401, "invalid_credentials", {"message": "invalid credentials"})
        self.token, self.token_info = token, info
        return info

    def issue_token(self, account: Account, owner_id: str | None, method: str) -> str:
        """A new token for ``account``: JWT-shaped (unsigned in spirit) or opaque, per the options."""
        options = self.state.options
        now = self.state.now()
        expires = now + options.token_lifetime
        if options.jwt_tokens:
            header = {"alg": "RS256", "typ": "JWT", "kid": new_id()}
            claims = {"iss": "kazoo", "account_id": account.id, "owner_id": owner_id, "method": method,
                      "iat": int(now), "exp": int(expires), "jti": new_id()}
            token = ".".join(_b64url(json.dumps(part).encode()) for part in (header, claims))
            token += "." + _b64url(uuid.uuid4().bytes * 8)
        else:
            token = new_id() + new_id()
        with self.state.lock:
            self.state.tokens[token] = TokenInfo(account_id=account.id, owner_id=owner_id, method=method,
                                                 expires=expires)
        self.token = token
        return token

    # ----------------------------------------------------------------------------------- routing

    def handle(self, segments: list[str]) -> Response:
        """Answer the request for /v2/<segments>."""
        path = "/" + "/".join(segments)
        with self.state.lock:
            self.state.requests.append({"method": self.method, "http_method": request.method, "path": path,
                                        "query": request.args.to_dict(),
                                        "request_id": self.request_id,
                                        "auth_token": request.headers.get("X-Auth-Token")})
        fault = self.state.take_fault(self.method, path)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.raw_body is not None:
                response = Response(fault.raw_body, status=fault.status, content_type=fault.content_type)
                response.headers["x-request-id"] = self.request_id
            else:
                response = self.error(fault.status, fault.message, fault.data if fault.data is not None else {})
            response.headers.update(fault.headers)
            return response
        match segments:
            case ["api_auth"]:
                return self.api_auth()
            case ["user_auth"]:
                return self.user_auth()
            case ["token_auth"]:
                return self.token_auth()
            case ["webhooks"]:
                return self.available_hooks()
            case ["accounts", account_id, *rest]:
                return self.account_request(account_id, rest)
        raise self.fail(404, "bad_identifier", {"message": "bad identifier", "not_found": path})

    def api_auth(self) -> Response:
        """PUT /v2/api_auth {"data": {"api_key": ...}}."""
        if self.method != "PUT":
            raise self.invalid_method()
        api_key = (self.body or {}).get("api_key") if isinstance(self.body, dict) else None
        if not api_key:
            raise self.fail(400, "validation error",
                            {"api_key": {"required": {"message": "Field is required but missing"}}})
        with self.state.lock:
            account = next((a for a in self.state.accounts.values() if a.api_key == api_key), None)
        self.take_tokens(account.id if account else "", self.state.options.auth_cost)
        if account is None:
            raise self.fail(404, "bad_identifier", [api_key])
        self.check_account_status(account)
        self.issue_token(account, None, "cb_api_auth")
        return self.reply(self.auth_data(account, None), status=201)

    def user_auth(self) -> Response:
        """PUT /v2/user_auth with md5/sha1 credentials and an account name or realm."""
        if self.method != "PUT":
            raise self.invalid_method()
        body = self.body if isinstance(self.body, dict) else {}
        if not body.get("credentials"):
            raise self.fail(400, "validation error",
                            {"credentials": {"required": {"message": "Field is required but missing"}}})
        name, realm = body.get("account_name"), body.get("account_realm")
        with self.state.lock:
            account = next((a for a in self.state.accounts.values()
                            if (name and a.name.lower() == str(name).lower()) or (realm and a.realm == realm)), None)
        self.take_tokens(account.id if account else "", self.state.options.auth_cost)
        user_id = account.credentials.get(body["credentials"]) if account else None
        if account is None or user_id is None:
            raise self.fail(401, "invalid_credentials", {"message": "invalid credentials"})
        self.check_account_status(account)
        self.issue_token(account, user_id, "cb_user_auth")
        return self.reply(self.auth_data(account, user_id), status=201)

    @staticmethod
    def auth_data(account: Account, owner_id: str | None) -> dict[str, Any]:
        """The data block of a successful auth answer."""
        data = {"account_id": account.id, "account_name": account.name, "apps": [], "is_reseller": False,
                "language": "en-US", "reseller_id": account.reseller_id}
        if owner_id:
            data["owner_id"] = owner_id
        return data

    def token_auth(self) -> Response:
        """GET /v2/token_auth (is my token valid?) and DELETE (revoke it)."""
        info = self.authenticate()
        if self.method == "GET":
            account = self.state.accounts[info.account_id]
            return self.reply({**self.auth_data(account, info.owner_id), "id": self.token, "method": info.method})
        if self.method == "DELETE":
            with self.state.lock:
                self.state.tokens.pop(self.token or "", None)
            return self.reply({})
        raise self.invalid_method()

    def available_hooks(self) -> Response:
        """GET /v2/webhooks: the hook types this cluster offers (no token needed)."""
        if self.method != "GET":
            raise self.invalid_method()
        return self.reply([{"id": hook, "name": hook.replace("_", " ").title()} for hook in HOOK_TYPES
                           if hook != "all"])

    def check_account_status(self, account: Account) -> None:
        """423 locked for expired or disabled accounts."""
        if account.status != "active":
            raise self.fail(423, "locked", {"account": {account.status: {"message": f"account {account.status}"}}})

    def account_request(self, account_id: str, rest: list[str]) -> Response:
        """Everything under /v2/accounts/{A}/: token, ownership, status, pacing, then the resource."""
        info = self.authenticate()
        if info.account_id != account_id:
            raise self.fail(403, "forbidden", {"message": "forbidden",
                                                "cause": "token is not authorized for this account"})
        account = self.state.accounts.get(account_id)
        if account is None:
            raise self.not_found("account", account_id)
        self.check_account_status(account)
        self.take_tokens(account_id, self.state.options.call_cost)
        resources: dict[str, Callable[[Account, list[str]], Response]] = {
            "vmboxes": self.vmboxes, "cdrs": self.cdrs, "users": self.users, "devices": self.devices,
            "webhooks": self.webhooks, "sms": self.sms}
        if not rest and self.method == "GET":  # the account document itself
            return self.reply({"id": account.id, "name": account.name, "realm": account.realm,
                               "reseller_id": account.reseller_id, "enabled": account.status == "active"})
        if not rest or rest[0] not in resources:
            raise self.fail(404, "bad_identifier", {"message": "bad identifier", "not_found": "/".join(rest)})
        return resources[rest[0]](account, rest[1:])

    # ---------------------------------------------------------------------------------- listings

    def paginated(self, rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], list[Any]]) -> Response:
        """Answer a listing sorted by ``key`` (descending unless ?ascending=true), one page at a time."""
        ascending = request.args.get("ascending") == "true" or request.args.get("descending") == "false"
        rows = sorted(rows, key=key, reverse=not ascending)
        if request.args.get("paginate") == "false":
            return self.listing(rows, {})
        raw_size = request.args.get("page_size", str(self.state.options.default_page_size))
        if not raw_size.isdigit() or int(raw_size) < 1:
            raise self.fail(400, "validation error", {"page_size": {"minimum": {"message": "must be a positive integer",
                                                                                 "value": raw_size}}})
        page_size = int(raw_size)
        start = 0
        raw_key = request.args.get("start_key")
        if raw_key is not None:
            start_key = _decode_start_key(raw_key)
            if start_key is None:
                raise self.fail(400, "validation error", {"start_key": {"type": {"message": "invalid start key",
                                                                                  "value": raw_key}}})
            # The first row at or past the key, so a row deleted between pages does not derail paging.
            start = next((i for i, row in enumerate(rows)
                          if (key(row) >= start_key if ascending else key(row) <= start_key)), len(rows))
        page = rows[start:start + page_size]
        extra: dict[str, Any] = {"page_size": len(page)}
        if page:
            extra["start_key"] = _encode_start_key(key(page[0]))
        if start + page_size < len(rows):
            extra["next_start_key"] = _encode_start_key(key(rows[start + page_size]))
        return self.listing(page, extra)

    def listing(self, rows: list[dict[str, Any]], extra: dict[str, Any]) -> Response:
        """A listing envelope, or CSV when the client asked for text/csv."""
        # Keys starting with "_" are the standin's own sort keys, never part of Kazoo's answer.
        rows = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
        if self.wants_csv:
            return self.csv(rows)
        return self.reply(rows, **extra)

    def csv(self, rows: list[dict[str, Any]]) -> Response:
        """Rows as CSV with the CDR columns, named by X-File-Name or ?file_name=."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=_CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        name = request.headers.get("X-File-Name") or request.args.get("file_name") or "cdrs.csv"
        response = Response(out.getvalue(), status=200, mimetype="text/csv")
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        response.headers["x-request-id"] = self.request_id
        return response

    # --------------------------------------------------------------------------------- resources

    def vmboxes(self, account: Account, rest: list[str]) -> Response:
        """/vmboxes[/{B}[/messages[/{M}[/raw]]]]."""
        match rest:
            case []:
                self.only("GET")
                rows = [{"id": b["id"], "name": b["name"], "mailbox": b["mailbox"], "owner_id": b.get("owner_id"),
                         "messages": len(account.messages.get(b["id"], {}))} for b in account.vmboxes.values()]
                return self.paginated(rows, lambda r: [r["mailbox"], r["id"]])
            case [box_id]:
                box = self.lookup(account.vmboxes, "vmbox", box_id)
                return self.document(account.vmboxes, box_id, box, allow_patch=True)
        box_id = rest[0]
        self.lookup(account.vmboxes, "vmbox", box_id)
        messages = account.messages.setdefault(box_id, {})
        match rest[1:]:
            case ["messages"]:
                self.only("GET")
                return self.paginated(list(messages.values()), lambda m: [m["timestamp"], m["media_id"]])
            case ["messages", msg_id]:
                message = self.lookup(messages, "message", msg_id)
                if self.method == "DELETE":
                    with self.state.lock:
                        messages.pop(msg_id)
                        account.media.pop(msg_id, None)
                    return self.reply(message)
                # Kazoo's vmbox messages support POST (folder change) but not PATCH.
                return self.document(messages, msg_id, message, allow_patch=False, id_field="media_id")
            case ["messages", msg_id, "raw"]:
                self.only("GET")
                message = self.lookup(messages, "message", msg_id)
                return self.raw_media(account, account.vmboxes[box_id], message)
        raise self.not_found("path", "/".join(rest))

    def raw_media(self, account: Account, box: dict[str, Any], message: dict[str, Any]) -> Response:
        """The audio bytes with Content-Type and an attachment filename in the box's timezone."""
        audio, content_type = account.media[message["media_id"]]
        try:
            zone = ZoneInfo(box.get("timezone") or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            zone = ZoneInfo("UTC")
        local = datetime.fromtimestamp(message["timestamp"] - GREGORIAN_UNIX_OFFSET, tz=zone)
        extension = _MEDIA_EXTENSIONS.get(content_type, "bin")
        filename = f"{message['caller_id_number']}_{local:%Y-%m-%d_%H-%M-%S}.{extension}"
        response = Response(audio, status=200, content_type=content_type)
        response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        response.headers["x-request-id"] = self.request_id
        return response

    def cdrs(self, account: Account, rest: list[str]) -> Response:
        """/cdrs (range-checked listing, CSV), /cdrs/{id}, /cdrs/legs/{interaction id}."""
        self.only("GET")
        match rest:
            case []:
                start, end = self.cdr_range()
                rows = [cdr_row(doc) for doc in account.cdrs.values() if start <= doc["timestamp"] <= end]
                return self.paginated(rows, lambda r: [r["_written"], r["id"]])
            case ["legs", interaction_id]:
                leg = account.cdrs.get(interaction_id)
                wanted = leg["interaction_id"] if leg else interaction_id
                rows = [cdr_row(doc) for doc in account.cdrs.values() if doc.get("interaction_id") == wanted]
                if not rows:
                    raise self.not_found("interaction", interaction_id)
                return self.paginated(rows, lambda r: [r["_written"], r["id"]])
            case [cdr_id]:
                return self.reply(self.lookup(account.cdrs, "cdr", cdr_id))
        raise self.not_found("path", "/".join(rest))

    def cdr_range(self) -> tuple[int, int]:
        """created_from/created_to (Gregorian) with Kazoo's defaults and 31 days + 1 h limit."""
        max_range = self.state.options.cdr_max_range
        try:
            end = int(request.args.get("created_to", self.state.gregorian_now()))
            start = int(request.args.get("created_from", end - max_range))
        except ValueError:
            raise self.fail(400, "validation error", {"created_from": {"type": {"message": "must be an integer"}}})
        if end < start or end - start > max_range:
            raise self.fail(400, "validation error", {"created_from": {"date_range": {
                "message": f"created_from must be at most {max_range} seconds before created_to and not after it",
                "cause": start}}})
        return start, end

    def users(self, account: Account, rest: list[str]) -> Response:
        """/users and /users/{U}."""
        if not rest:
            self.only("GET")
            rows = [{k: u.get(k) for k in ("id", "username", "first_name", "last_name", "email", "presence_id",
                                           "priv_level")} for u in account.users.values()]
            return self.paginated(rows, lambda r: [r["id"]])
        if len(rest) == 1:
            return self.document(account.users, rest[0], self.lookup(account.users, "user", rest[0]),
                                 allow_patch=True)
        raise self.not_found("path", "/".join(rest))

    def devices(self, account: Account, rest: list[str]) -> Response:
        """/devices and /devices/{D}."""
        if not rest:
            self.only("GET")
            rows = [{"id": d["id"], "name": d["name"], "owner_id": d.get("owner_id"), "device_type": d["device_type"],
                     "enabled": d["enabled"], "username": d["sip"]["username"]} for d in account.devices.values()]
            return self.paginated(rows, lambda r: [r["id"]])
        if len(rest) == 1:
            return self.document(account.devices, rest[0], self.lookup(account.devices, "device", rest[0]),
                                 allow_patch=True)
        raise self.not_found("path", "/".join(rest))

    def webhooks(self, account: Account, rest: list[str]) -> Response:
        """/webhooks CRUD, collection PATCH re-enable, and /attempts."""
        match rest:
            case []:
                if self.method == "GET":
                    return self.paginated([_webhook_row(h) for h in account.webhooks.values()], lambda r: [r["id"]])
                if self.method == "PUT":
                    return self.reply(self.save_webhook(account, new_id(), self.require_object()), status=201)
                if self.method == "PATCH":
                    if self.require_object().get("re-enable") is not True:
                        raise self.fail(400, "validation error", {"re-enable": {"required": {
                            "message": "re-enable must be true"}}})
                    with self.state.lock:
                        for hook in account.webhooks.values():
                            if hook.get("disable_reason"):
                                self.enable_hook(hook)
                    return self.reply([_webhook_row(h) for h in account.webhooks.values()])
                raise self.invalid_method()
            case ["attempts"]:
                self.only("GET")
                return self.paginated(list(account.attempts), lambda a: [a["timestamp"], a["_seq"]])
            case [hook_id]:
                hook = self.lookup(account.webhooks, "webhook", hook_id)
                if self.method == "GET":
                    return self.reply(hook)
                if self.method == "DELETE":
                    with self.state.lock:
                        account.webhooks.pop(hook_id)
                    return self.reply(hook)
                if self.method == "POST":
                    return self.reply(self.save_webhook(account, hook_id, self.require_object()))
                if self.method == "PATCH":
                    return self.reply(self.save_webhook(account, hook_id, merge_patch(hook, self.require_object())))
                raise self.invalid_method()
            case [hook_id, "attempts"]:
                self.only("GET")
                self.lookup(account.webhooks, "webhook", hook_id)
                rows = [a for a in account.attempts if a["hook_id"] == hook_id]
                return self.paginated(rows, lambda a: [a["timestamp"], a["_seq"]])
        raise self.not_found("path", "/".join(rest))

    def save_webhook(self, account: Account, hook_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Validate and store a webhook doc; enabling it again clears the disabler's state."""
        problems = webhook_errors(doc)
        if not self.state.options.webhook_format and "format" in doc:
            problems["format"] = {"additionalProperties": {"message": "Additional properties are not allowed",
                                                           "value": doc["format"]}}
        if problems:
            raise self.fail(400, "validation error", problems)
        with self.state.lock:
            previous = account.webhooks.get(hook_id)
            stored = normalise_webhook(doc, hook_id=hook_id)
            if not self.state.options.webhook_format:
                stored.pop("format")  # an older cluster stores (and shows) no format: it always sends form-data
            if previous and previous.get("disable_reason") and not stored["enabled"]:
                stored["disable_reason"] = previous["disable_reason"]
            if stored["enabled"]:
                self.state.hook_failures.pop(hook_id, None)
            account.webhooks[hook_id] = stored
        return stored

    def enable_hook(self, hook: dict[str, Any]) -> None:
        """Re-enable a hook the disabler switched off."""
        hook["enabled"] = True
        hook.pop("disable_reason", None)
        self.state.hook_failures.pop(hook["id"], None)

    def sms(self, account: Account, rest: list[str]) -> Response:
        """PUT /sms (send), GET /sms (list), GET/DELETE /sms/{id}."""
        match rest:
            case []:
                if self.method == "GET":
                    return self.paginated(list(account.sms.values()), lambda m: [m["created"], m["id"]])
                if self.method == "PUT":
                    return self.send_sms(account)
                raise self.invalid_method()
            case [sms_id]:
                message = self.lookup(account.sms, "sms", sms_id)
                if self.method == "GET":
                    return self.reply(message)
                if self.method == "DELETE":
                    with self.state.lock:
                        account.sms.pop(sms_id)
                    return self.reply(message)
                raise self.invalid_method()
        raise self.not_found("path", "/".join(rest))

    def send_sms(self, account: Account) -> Response:
        """Validate like cb_sms: body 1-700 chars, to required, SMS enabled for the account."""
        body = self.require_object()
        problems: dict[str, Any] = {}
        text = body.get("body")
        if not text:
            problems["body"] = {"required": {"message": "Field is required but missing"}}
        elif not isinstance(text, str) or len(text) > 700:
            problems["body"] = {"maxLength": {"message": "String must not be more than 700 characters",
                                              "target": 700}}
        if not body.get("to"):
            problems["to"] = {"required": {"message": "Field is required but missing"}}
        if problems:
            raise self.fail(400, "validation error", problems)
        if not account.sms_enabled:
            raise self.fail(500, "account", {"message": "sms services not enabled for account"})
        created = self.state.gregorian_now()
        doc = {"id": self.request_id, "message_id": self.request_id,
               "from": body.get("from") or account.caller_id_number,
               "to": body["to"], "body": text, "route_type": "offnet" if _E164.match(str(body["to"])) else "onnet",
               "custom_vars": {"account_id": account.id, "reseller_id": account.reseller_id,
                               "authorizing_type": "account", "authorizing_id": account.id},
               "created": created,
               "date": format_datetime(datetime.fromtimestamp(created - GREGORIAN_UNIX_OFFSET, tz=timezone.utc),
                                       usegmt=True)}
        with self.state.lock:
            account.sms[doc["id"]] = doc
        return self.reply({k: v for k, v in doc.items() if k not in ("id", "created", "date")})

    # ---------------------------------------------------------------------------------- helpers

    def only(self, *methods: str) -> None:
        """405 unless the (tunnelled) method is one of ``methods``."""
        if self.method not in methods:
            raise self.invalid_method()

    def lookup(self, docs: dict[str, dict[str, Any]], what: str, ident: str) -> dict[str, Any]:
        """The document ``ident`` or 404 bad_identifier."""
        doc = docs.get(ident)
        if doc is None:
            raise self.not_found(what, ident)
        return doc

    def require_object(self) -> dict[str, Any]:
        """The envelope's data as an object, or 400."""
        if not isinstance(self.body, dict):
            raise self.fail(400, "validation error", {"data": {"type": {"message": "data must be an object"}}})
        return self.body

    def document(self, docs: dict[str, dict[str, Any]], ident: str, doc: dict[str, Any], *, allow_patch: bool,
                 id_field: str = "id") -> Response:
        """GET / POST (full replace) / PATCH (merge, when the resource has it) of a plain document."""
        if self.method == "GET":
            return self.reply(doc)
        if self.method == "POST" or (self.method == "PATCH" and allow_patch):
            body = self.require_object()
            updated = {**(body if self.method == "POST" else merge_patch(doc, body)), id_field: ident}
            with self.state.lock:
                docs[ident] = updated
            return self.reply(updated)
        raise self.invalid_method()


def _webhook_row(hook: dict[str, Any]) -> dict[str, Any]:
    row = {k: hook.get(k) for k in ("id", "hook", "name", "uri", "enabled")}
    if hook.get("disable_reason"):
        row["disable_reason"] = hook["disable_reason"]
    return row


def cdr_row(doc: dict[str, Any]) -> dict[str, Any]:
    """The listing row Kazoo computes from a full CDR doc (mostly strings; timestamp = call start)."""
    ccv = doc.get("custom_channel_vars") or {}
    duration = int(doc.get("duration_seconds") or 0)
    started = int(doc["timestamp"]) - duration
    unix = started - GREGORIAN_UNIX_OFFSET
    moment = datetime.fromtimestamp(unix, tz=timezone.utc)
    inbound = doc.get("call_direction") == "inbound"
    user_part = (doc.get("request") if inbound else doc.get("to") or "").split("@")[0]
    return {
        "id": doc["id"], "call_id": doc["call_id"], "caller_id_number": doc.get("caller_id_number"),
        "caller_id_name": doc.get("caller_id_name"), "callee_id_number": doc.get("callee_id_number"),
        "callee_id_name": doc.get("callee_id_name"), "duration_seconds": str(duration),
        "billing_seconds": str(doc.get("billing_seconds", 0)), "timestamp": str(started),
        "hangup_cause": doc.get("hangup_cause"), "other_leg_call_id": doc.get("other_leg_call_id"),
        "owner_id": ccv.get("owner_id"), "to": doc.get("to"), "from": doc.get("from"),
        "direction": doc.get("call_direction"), "request": doc.get("request"),
        "authorizing_id": ccv.get("authorizing_id"), "cost": "0", "dialed_number": user_part,
        "calling_from": doc.get("caller_id_number") if inbound else (doc.get("from_uri") or "").split("@")[0],
        "datetime": moment.strftime("%Y-%m-%d %H:%M:%S"), "unix_timestamp": str(unix),
        "rfc_1036": format_datetime(moment, usegmt=True), "iso_8601": moment.strftime("%Y-%m-%d"),
        "call_type": "", "rate": "0.0", "rate_name": "", "bridge_id": ccv.get("bridge_id"), "recording_url": "",
        "media_recordings": [], "media_server": doc.get("media_server", "fs1.virtualpbx.test"), "call_priority": "",
        "interaction_id": doc.get("interaction_id"),
        # Sort key (CDR views are keyed on the time the CDR was written); stripped from answers.
        "_written": int(doc["timestamp"]),
    }


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _encode_start_key(key: list[Any]) -> str:
    # Kazoo keys are URL-safe base64 of an Erlang term. Ours always end in "==" (the JSON is padded
    # with spaces to a length of 3n+1), so a client that trims or re-encodes the key instead of
    # passing it verbatim breaks visibly.
    text = json.dumps(["g2", *key])
    text += " " * ((1 - len(text)) % 3)
    return base64.urlsafe_b64encode(text.encode()).decode()


def _decode_start_key(raw: str) -> list[Any] | None:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except (ValueError, TypeError):
        return None
    if not isinstance(decoded, list) or not decoded or decoded[0] != "g2":
        return None
    return decoded[1:]


def _raw_segments() -> list[str]:
    """Path segments after /v2/, split before percent-decoding so an id may contain an encoded '/'."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.path
    raw_path = raw.split("?", 1)[0]
    return [unquote(s) for s in raw_path.split("/")[2:] if s != ""]


def create_app(state: StandinState | None = None) -> Flask:
    """The standin as a Flask app over ``state`` (a fresh, empty one when not given)."""
    state = state if state is not None else StandinState()
    app = Flask("virtualpbx_standin")
    app.config["STANDIN_STATE"] = state
    methods = ["GET", "PUT", "POST", "PATCH", "DELETE"]

    @app.route("/v2/<path:_path>", methods=methods)
    def crossbar(_path: str) -> Response:
        try:
            handler = _Crossbar(state)
            return handler.handle(_raw_segments())
        except _Reply as reply:
            return reply.response

    _control_routes(app, state)
    return app


def _control_routes(app: Flask, state: StandinState) -> None:
    """/_standin/*: seeding, inspection, token expiry, fault injection and call simulation over HTTP."""

    def body() -> dict[str, Any]:
        return request.get_json(silent=True) or {}

    @app.post("/_standin/seed")
    def seed() -> Any:
        return state.seed(body())

    @app.get("/_standin/state")
    def summary() -> Any:
        return state.summary()

    @app.post("/_standin/expire_tokens")
    def expire_tokens() -> Any:
        return {"expired": state.expire_tokens()}

    @app.post("/_standin/faults")
    def add_fault() -> Any:
        doc = body()
        fault = state.add_fault(int(doc.pop("status")), **doc)
        return {"status": fault.status, "times": fault.times}

    @app.delete("/_standin/faults")
    def clear_faults() -> Any:
        with state.lock:
            cleared = len(state.faults)
            state.faults.clear()
        return {"cleared": cleared}

    @app.post("/_standin/simulate")
    def simulate() -> Any:
        from .sender import WebhookSender
        from .simulator import CallSimulator

        doc = body()
        account_id = doc.get("account_id") or next(iter(state.accounts))
        sender = WebhookSender(state, retry_interval=float(doc.get("retry_interval", 2.0)))
        simulator = CallSimulator(state, account_id, sender=sender, seed=int(doc.get("seed", 0)))
        scenario = doc.get("scenario", "inbound_answered")
        if scenario == "mixed_hour":
            calls = simulator.mixed_hour(calls=int(doc.get("calls", 30)), shuffle=bool(doc.get("shuffle")),
                                         duplicate_rate=float(doc.get("duplicate_rate", 0.0)))
        else:
            calls = [simulator.run(scenario)]
        return {"calls": [call.summary() for call in calls], "deliveries": len(state.deliveries)}


# A fixed demo identity, so a developer can paste it into .env once and restart the sandbox freely.
DEMO_ACCOUNT_ID = "5a2d994fbae69b1d6b01eb9f0e7dfe62"
DEMO_API_KEY = hashlib.sha256(b"pbxrelay sandbox demo account").hexdigest()


def demo_state() -> StandinState:
    """The sandbox's seeded world: one account, three users with desk phones, a voicemail box."""
    state = StandinState()
    account = state.add_account(account_id=DEMO_ACCOUNT_ID, name="Demo Dental", api_key=DEMO_API_KEY,
                                realm="demo.sip.virtualpbx.test", caller_id_number="+15551230000")
    people = [("Alice", "Reception", "101"), ("Bob", "Billing", "102"), ("Carol", "Clinic", "103")]
    for index, (first, last, extension) in enumerate(people, start=1):
        user = state.add_user(account.id, first_name=first, last_name=last, extension=extension,
                              user_id=f"{index:02d}" + "a" * 30, password="demo-password")
        state.add_device(account.id, owner_id=user["id"], name=f"{first}'s desk phone",
                         device_id=f"{index:02d}" + "d" * 30)
    box = state.add_vmbox(account.id, owner_id="01" + "a" * 30, mailbox="101", name="Reception voicemail",
                          box_id="b0" + "0" * 30, timezone_name="America/New_York")
    state.add_message(account.id, box["id"], caller_id_number="+15555550123", caller_id_name="Pat Patient",
                      call_id="demo-call-0001", length_ms=4580, transcription="Hi, I need to move my appointment.")
    return state
