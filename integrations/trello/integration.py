"""Trello: one card per call or voicemail, with the recording attached, over Trello's REST API.

Plain ``requests`` against the documented REST API rather than py-trello (sdks.md §1): py-trello
hard-codes api.trello.com, sets no timeout, has no 429 handling, raises unpicklable exceptions and
puts the token into error text.

Credentials: the user copies the API key from https://trello.com/app-key and, on the same page,
follows the "Token" link to authorise a token with scopes ``read,write`` (expiration "never" for
an always-on relay). Both travel in Trello's ``Authorization: OAuth oauth_consumer_key="KEY",
oauth_token="TOKEN"`` header, never in the query string, so no URL (and no ``requests`` exception
text quoting one, no proxy or server access log) carries them; error texts are still scrubbed of both.

Failure decisions live in one function, :func:`classify_failure`. Nothing retries or sleeps in
process: a 429, 5xx or network error becomes a :class:`RetryableError`; a 429 also shuts the
shared token (or key) bucket so every worker holds off.

Delivery guarantee (``dedupe`` on, the default): one card per idempotency key. Every card's
description ends with a marker line ``pbxrelay-id: <idempotency key>`` (plus ``voicemail-id:``
when the event has one). Attempt 1 creates without looking, since nothing can exist yet. Any
later attempt first reads the list's open cards for the marker, because a crash or timeout
between Trello creating the card and us recording the delivery can only be detected by looking;
when found, the recording is attached if it is still missing and the result is ``deduplicated``.
Known gap: a card someone moves to another list or archives between two attempts is not found,
and a second card is created. With ``dedupe`` off, retries are at-least-once.

Descriptions longer than Trello's 16,384 characters are cut, with a visible note, rather than
losing the whole card over a long transcript; names past the limit are rejected (a name that long
is a template bug, not data).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests
from pydantic import ConfigDict, Field, SecretStr, field_validator

from integrations.base import (
    ActionContext,
    ActionResult,
    AuthError,
    ConfigModel,
    Integration,
    IntegrationError,
    MediaTooLarge,
    ParamsModel,
    PermanentError,
    RetryableError,
    excerpt,
    scrub,
)
from integrations.http import retry_after_seconds
from integrations.netguard import guarded_session

DEFAULT_API_URL = "https://api.trello.com"

# Trello's documented limits (developer.atlassian.com/cloud/trello/guides/rest-api/rate-limits):
# 100 requests per 10 s per token, 300 per 10 s per API key. Shared by every worker via Redis.
TOKEN_CAPACITY, TOKEN_PER_SECOND = 100.0, 10.0
KEY_CAPACITY, KEY_PER_SECOND = 300.0, 30.0
# Trello rarely sends Retry-After; its windows are 10 s long, so waiting one window is enough.
DEFAULT_RETRY_AFTER = 10.0

# Card name and description limit (Trello's card schema: maxLength 16384). Trello is JavaScript, so
# we count UTF-16 code units: an emoji is two.
TEXT_MAX = 16_384
# Trello's free-plan upload limit is 10 MB per file; paid plans allow 250 MB.
FREE_ATTACHMENT_BYTES = 10 * 1024 * 1024
PAID_ATTACHMENT_BYTES = 250 * 1024 * 1024
ATTACHMENT_NAME_MAX = 256

MARKER_PREFIX = "pbxrelay-id: "
VOICEMAIL_PREFIX = "voicemail-id: "
TRUNCATION_NOTE = "\n\n[… cut by pbxrelay: Trello allows 16384 characters]"
# Every attachment we add is named with this prefix, so a retry can tell whether it already exists
# without downloading the recording again.
ATTACHMENT_NAME = "Voicemail recording"

_ID_PATTERN = r"^[0-9a-fA-F]{24}$"


def utf16_len(text: str) -> int:
    """Length as Trello (JavaScript) counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def _cut_utf16(text: str, units: int) -> str:
    """The longest prefix of ``text`` within ``units`` UTF-16 code units, never splitting a character."""
    return text.encode("utf-16-le")[:units * 2].decode("utf-16-le", errors="ignore")


class TrelloConfig(ConfigModel):
    """A Trello connection: API key and token (https://trello.com/app-key), sent in the Authorization header."""

    # pydantic echoes raw input in validation errors; for key and token that is the secret.
    model_config = ConfigDict(hide_input_in_errors=True)
    allowed_hosts = ("api.trello.com",)

    api_key: SecretStr
    token: SecretStr
    # Seconds per socket operation; short enough that a hung Trello never pins a worker for long.
    timeout: float = Field(default=10.0, gt=0, le=120)

    @field_validator("api_key", "token")
    @classmethod
    def _credential_shape(cls, value: SecretStr) -> SecretStr:
        # Real keys and tokens are plain ASCII letters and digits: refuse what would break the header's quoted
        # string (quotes, backslashes, commas, control characters) and URL syntax, which no real one holds.
        raw = value.get_secret_value()
        if (len(raw) < 8 or not raw.isascii() or not raw.isprintable() or any(c.isspace() for c in raw)
                or any(c in raw for c in "&#?/=\"\\,")):
            raise ValueError("must be the key or token exactly as shown on https://trello.com/app-key")
        return value


class CreateCardParams(ParamsModel):
    """Params of ``create_card``; ids are Trello's 24-hex object ids (not short links or names)."""

    list_id: str = Field(pattern=_ID_PATTERN)
    name: str = Field(min_length=1)
    desc: str = ""
    # Our sanity bound, not Trello's: more than 50 labels or members on one card is a rule mistake.
    labels: list[str] = Field(default_factory=list, max_length=50)
    members: list[str] = Field(default_factory=list, max_length=50)
    # ISO 8601; without an offset it is read in the account's time zone. "" (an empty template) = none.
    due: datetime | None = None
    position: Literal["top", "bottom"] = "bottom"
    attach_audio: bool = True
    audio_max_bytes: int = Field(default=FREE_ATTACHMENT_BYTES, gt=0, le=PAID_ATTACHMENT_BYTES)
    dedupe: bool = True

    @field_validator("name")
    @classmethod
    def _name_fits(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name must not be blank")
        if utf16_len(value) > TEXT_MAX:
            raise ValueError(f"name is longer than Trello's {TEXT_MAX} characters")
        return value

    @field_validator("labels", "members")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(_ID_PATTERN, item):
                raise ValueError(f"{item[:40]!r} is not a Trello id (24 hex characters)")
        return value

    @field_validator("due", mode="before")
    @classmethod
    def _empty_due_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


class TrelloIntegration(Integration):
    """Creates Trello cards for calls and voicemails, with the recording attached."""

    key = "trello"
    name = "Trello"
    Config = TrelloConfig
    actions = {"create_card": CreateCardParams}
    default_api_url = DEFAULT_API_URL

    def check(self, ctx: ActionContext) -> str:
        """GET /1/members/me: the member the token acts as."""
        with _TrelloApi(self, ctx) as api:
            me = api.call("GET", "/1/members/me", "read the token's member", dict, params={"fields": "username"})
        return f"token of Trello member {me.get('username') or me['id']}"

    def create_card(self, params: CreateCardParams, ctx: ActionContext) -> ActionResult:
        """Create one card (deduplicated on retries) and attach the voicemail audio or a link to it."""
        body = {"idList": params.list_id, "name": params.name, "desc": _description(params.desc, ctx),
                "pos": params.position, "due": _due_utc(params.due, ctx.timezone),
                "idLabels": ",".join(params.labels), "idMembers": ",".join(params.members)}
        with _TrelloApi(self, ctx) as api:
            if params.dedupe and ctx.attempt > 1:
                earlier = _find_card(api, params.list_id, _marker(ctx))
                if earlier is not None:
                    detail = "already created by an earlier attempt"
                    if params.attach_audio:
                        detail += "; " + _ensure_audio(api, earlier["id"], params, ctx)
                    return ActionResult(external_id=earlier["id"], url=earlier.get("shortUrl"), deduplicated=True,
                                        detail=detail)
            card = api.call("POST", "/1/cards", "create card", dict, json=body)
            detail = _attach_audio(api, card["id"], params, ctx) if params.attach_audio else "audio not requested"
            return ActionResult(external_id=card["id"], url=card.get("shortUrl") or card.get("url"), detail=detail)


class _TrelloApi:
    """One action's HTTP session: every request paced on both shared buckets, every failure classified."""

    def __init__(self, integration: TrelloIntegration, ctx: ActionContext) -> None:
        config: TrelloConfig = integration.config
        self.ctx = ctx
        self.base = integration.base_url(ctx.api_urls).rstrip("/")
        self.timeout = config.timeout
        key, token = config.api_key.get_secret_value(), config.token.get_secret_value()
        self.secrets = integration.secrets()
        self.token_bucket = f"trello:token:{hashlib.sha256(token.encode()).hexdigest()[:16]}"
        self.key_bucket = f"trello:key:{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        # A session per action: requests.Session is not documented thread-safe (psf/requests#2766).
        # Guarded: checked after DNS and pinned to that address; Trello never needs a redirect.
        self.session = guarded_session(allow_private=ctx.allow_private_urls, field="api_url")
        self.session.headers["Authorization"] = f'OAuth oauth_consumer_key="{key}", oauth_token="{token}"'

    def __enter__(self) -> "_TrelloApi":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.session.close()

    def call(self, method: str, path: str, what: str, expect: type, *, params: dict | None = None,
             **kwargs: Any) -> Any:
        """Send one request and return its JSON (of type ``expect``), or raise the classified error."""
        self.ctx.pace(self.token_bucket, capacity=TOKEN_CAPACITY, per_second=TOKEN_PER_SECOND)
        self.ctx.pace(self.key_bucket, capacity=KEY_CAPACITY, per_second=KEY_PER_SECOND)
        outcome: requests.Response | requests.RequestException
        try:
            outcome = self.session.request(method, self.base + path, params=params,
                                           timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            outcome = exc
        # Classified outside the except block, so the error carries no __context__ quoting the URL.
        if isinstance(outcome, requests.Response) and 200 <= outcome.status_code < 300:
            try:
                data = outcome.json()
            except ValueError:
                data = None
            # Every single object we use (card, attachment) is a Trello model with an id.
            if isinstance(data, expect) and (expect is not dict or isinstance(data.get("id"), str)):
                return data
        error = classify_failure(what, outcome, self.secrets)
        if error.status == 429:
            bucket = self.key_bucket if error.code == "API_KEY_LIMIT_EXCEEDED" else self.token_bucket
            self.ctx.penalise(bucket, error.retry_after)
        raise error


def _marker(ctx: ActionContext) -> str:
    return MARKER_PREFIX + ctx.idempotency_key


def _description(desc: str, ctx: ActionContext) -> str:
    """The user's description, cut to fit, followed by the marker lines a retry searches for."""
    tail = "\n\n---\n" + _marker(ctx)
    data = ctx.event.get("data") if isinstance(ctx.event, dict) else None
    voicemail_id = data.get("voicemail_id") if isinstance(data, dict) else None
    if isinstance(voicemail_id, (str, int)) and str(voicemail_id).strip():
        tail += "\n" + VOICEMAIL_PREFIX + " ".join(str(voicemail_id).split())[:200]
    budget = TEXT_MAX - utf16_len(tail)
    if utf16_len(desc) > budget:
        desc = _cut_utf16(desc, budget - utf16_len(TRUNCATION_NOTE)) + TRUNCATION_NOTE
    return desc + tail


def _due_utc(due: datetime | None, tz_name: str) -> str | None:
    """``due`` as UTC ISO 8601; a time without offset is local time in the account's time zone."""
    if due is None:
        return None
    if due.tzinfo is None:
        try:
            due = due.replace(tzinfo=ZoneInfo(tz_name))
        except (ZoneInfoNotFoundError, ValueError):
            raise PermanentError(f"trello create card: unknown account time zone {tz_name!r} for a due date "
                                 "without offset", code="bad_timezone") from None
    return due.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _find_card(api: _TrelloApi, list_id: str, marker: str) -> dict | None:
    """The open card in ``list_id`` whose description has the ``marker`` line, if any."""
    cards = api.call("GET", f"/1/lists/{list_id}/cards", "find earlier card", list,
                     params={"fields": "id,desc,shortUrl"})
    for card in cards:
        if isinstance(card, dict) and isinstance(card.get("id"), str) \
                and marker in str(card.get("desc") or "").splitlines():
            return card
    return None


def _ensure_audio(api: _TrelloApi, card_id: str, params: CreateCardParams, ctx: ActionContext) -> str:
    """Attach the audio to an earlier attempt's card unless that attempt already did."""
    attachments = api.call("GET", f"/1/cards/{card_id}/attachments", "list attachments", list,
                           params={"fields": "id,name"})
    if any(isinstance(a, dict) and str(a.get("name") or "").startswith(ATTACHMENT_NAME) for a in attachments):
        return "audio already attached"
    return _attach_audio(api, card_id, params, ctx)


def _attach_audio(api: _TrelloApi, card_id: str, params: CreateCardParams, ctx: ActionContext) -> str:
    """Attach the recording (or a link when it is too large); say what happened for the delivery log.

    The card already exists here, so a problem that retrying cannot fix is reported in the result
    instead of failing the delivery. Retryable problems are raised: the retry finds the card and
    attaches then. An AuthError from the media source is not ours to raise: it would pause the Trello
    connection for a VirtualPBX problem.
    """
    try:
        media = ctx.media(params.audio_max_bytes)
    except MediaTooLarge as exc:
        if not exc.url:
            return "audio not attached: too large, and no link to it is available"
        data = {"url": exc.url, "name": f"{ATTACHMENT_NAME} (link: larger than {params.audio_max_bytes} bytes)"}
        try:
            api.call("POST", f"/1/cards/{card_id}/attachments", "attach audio link", dict, data=data)
        except PermanentError as error:
            if isinstance(error, AuthError):
                raise
            return f"audio link not attached: {error}"
        return "audio too large: link attached"
    except PermanentError as error:
        return f"audio not attached: {error}"
    if media is None:
        return "no audio for this event"
    name = f"{ATTACHMENT_NAME} - {media.filename}"
    name = _cut_utf16(name, ATTACHMENT_NAME_MAX)
    try:
        api.call("POST", f"/1/cards/{card_id}/attachments", "attach audio", dict,
                 data={"name": name, "mimeType": media.content_type[:256]},
                 files={"file": (media.filename or "voicemail", media.content, media.content_type)})
    except PermanentError as error:
        if isinstance(error, AuthError):
            raise
        return f"audio not attached: {error}"
    return f"audio attached ({len(media.content)} bytes)"


# Trello answers 401 with a plain-text reason (not JSON).
_AUTH_REASONS = {
    "invalid key": ("invalid_key", "the API key is not valid: copy it again from https://trello.com/app-key"),
    "invalid app key": ("invalid_key", "the API key is not valid: copy it again from https://trello.com/app-key"),
    "invalid token": ("invalid_token", "the token is not valid, expired or revoked: generate a new one"),
    "expired token": ("invalid_token", "the token has expired: generate a new one"),
    "unauthorized permission requested": ("unauthorized_permission",
                                          "the token lacks write scope or access to this board"),
    "unauthorized card permission requested": ("unauthorized_permission",
                                               "the token lacks write scope or access to this card"),
}


def classify_failure(what: str, outcome: requests.Response | requests.RequestException,
                     secrets: list[str]) -> IntegrationError:
    """Decide retry vs permanent for a failed request: an exception, an error status, or an unusable 2xx body."""
    where = f"trello {what}"
    if isinstance(outcome, requests.RequestException):
        text = f"{type(outcome).__name__}: {outcome}"
        if isinstance(outcome, requests.Timeout):
            return RetryableError(scrub(f"{where}: timed out: {text}", secrets), code="timeout")
        if isinstance(outcome, (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
                                requests.exceptions.InvalidURL)):
            return PermanentError(scrub(f"{where}: bad Trello API URL: {text}", secrets), code="bad_url")
        return RetryableError(scrub(f"{where}: network error: {text}", secrets), code="network")
    status = outcome.status_code
    # Scrub before cutting: a secret cut in half by the excerpt no longer matches, and half leaks.
    body = excerpt(scrub(outcome.text.strip(), secrets))
    said = scrub(f"{where}: HTTP {status} {body!r}", secrets)
    if status == 429:
        limit = _json_error(outcome) or "rate_limited"
        retry_after = retry_after_seconds(outcome.headers) or DEFAULT_RETRY_AFTER
        return RetryableError(scrub(f"{where}: rate limited by Trello ({limit}), retry after {retry_after:g}s",
                                    secrets), status=status, retry_after=retry_after, code=limit)
    if status >= 500:
        return RetryableError(said, status=status, code=f"http_{status}")
    if 200 <= status < 300:
        return PermanentError(f"{said}: not the JSON Trello documents", status=status, code="malformed_response")
    if status == 401:
        code, reason = _AUTH_REASONS.get(outcome.text.strip().lower(), ("http_401", "credentials rejected"))
        return AuthError(f"{said}: {reason}", status=status, code=code)
    if status == 403:
        return AuthError(f"{said}: access forbidden", status=status, code="http_403")
    if status == 404:
        return PermanentError(f"{said}: the list or card does not exist, or this token cannot see it",
                              status=status, code="not_found")
    if status == 400:
        return PermanentError(f"{said}: Trello rejected a value", status=status, code="invalid_value")
    if status == 413:
        return PermanentError(f"{said}: the file is larger than this board's upload limit", status=status,
                              code="too_large")
    return PermanentError(said, status=status, code=f"http_{status}")


def _json_error(response: requests.Response) -> str | None:
    """The ``error`` field of a JSON error body (API_TOKEN_LIMIT_EXCEEDED …), if there is one."""
    try:
        data = response.json()
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) and error.replace("_", "").isalnum() else None


