"""VirtualText (VirtualPBX Business SMS): ``send_sms`` through ``POST {base}/v1/messages``.

Built on the newer public description (virtualtext.com/api-docs, see shared/reference/virtualtext-sms.md
§2): Bearer API key, JSON ``{"to", "channel", "body", "idempotency_key", "from"?, "media"?}``,
``201 {"id", "status", "created_at"}``. Not verified against a live account.

Delivery guarantee: exactly-once end to end. Every request carries the action's idempotency key,
which is stable across retries; VirtualText answers a repeated key with the first message instead of
sending again, so a retry after a timeout, a 5xx or a worker crash cannot text twice. A 409 (the same
key with a different body, i.e. the rule's template rendered differently on the retry) is permanent.

Failure decisions live in one function, :func:`classify_failure`. The client never retries or
sleeps in-process: a 429 becomes a RetryableError and shuts the connection's shared bucket for
Retry-After seconds, so other workers hold off too.
"""

from __future__ import annotations

from typing import Any, Mapping

import requests
from pydantic import ConfigDict, Field, SecretStr, field_validator

from integrations.base import (
    ActionContext,
    ActionResult,
    AuthError,
    ConfigModel,
    Integration,
    IntegrationError,
    PermanentError,
    RetryableError,
    excerpt,
    scrub,
)
from integrations.http import retry_after_seconds
from integrations.netguard import guarded_session
from integrations.sms import VIRTUALTEXT_MAX_BODY, E164Number, QuietHours, SendSmsParams, prepare_sms

DEFAULT_API_URL = "https://api.virtualpbx.com"
# VirtualText publishes no rate limit. One message a second with a burst of five keeps a fleet of
# workers polite; a 429 still shuts the bucket for the server's Retry-After.
BURST = 5.0
PER_SECOND = 1.0
# Used when a 429 carries no (readable) Retry-After.
DEFAULT_RETRY_AFTER = 5.0
_EXCERPT = 200


class VirtualTextConfig(ConfigModel):
    """A VirtualText connection: an API key (Bearer), an optional sender number, quiet hours."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    allowed_hosts = ("api.virtualpbx.com",)

    # Keys look like pk_live_…; the older description uses "<accountUid>:<accessToken>". Both are
    # accepted as long as the value can travel in a header.
    api_key: SecretStr
    # Without it VirtualText picks the account's number.
    from_number: E164Number = None
    quiet_hours: QuietHours = None
    timeout: float = Field(default=10.0, gt=0, le=60)

    @field_validator("api_key")
    @classmethod
    def _header_safe(cls, value: SecretStr) -> SecretStr:
        # Unlike Trello's query-string check: the key travels in an Authorization header, where only printables fit.
        raw = value.get_secret_value()
        if len(raw) < 8 or any(c.isspace() or not c.isprintable() for c in raw):
            raise ValueError("api_key must be the VirtualText API key (e.g. pk_live_…), without spaces")
        return value


class VirtualTextIntegration(Integration):
    """Sends SMS/MMS through the VirtualText API, exactly once per action thanks to idempotency keys."""

    key = "virtualtext"
    name = "VirtualText"
    Config = VirtualTextConfig
    actions = {"send_sms": SendSmsParams}
    default_api_url = DEFAULT_API_URL

    def check(self, ctx: ActionContext) -> str:
        """GET /v1/contacts?limit=1: a read the API key must be allowed, which sends nothing."""
        base = self.base_url(ctx.api_urls).rstrip("/")
        headers = {"Authorization": f"Bearer {self.config.api_key.get_secret_value()}", "Accept": "application/json"}
        try:
            with guarded_session(allow_private=ctx.allow_private_urls, field="api_url") as session:
                response = session.get(f"{base}/v1/contacts", params={"limit": 1}, headers=headers,
                                       timeout=self.config.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise classify_failure(exc, secrets=self.secrets()) from None
        if response.status_code == 200 and isinstance(_json(response), dict):
            return "the API key is accepted"
        raise classify_failure(response, secrets=self.secrets())

    def send_sms(self, params: SendSmsParams, ctx: ActionContext) -> ActionResult:
        """Send one message; a retry with the same idempotency key returns the first message, never a second."""
        message = prepare_sms(params, ctx, max_body=VIRTUALTEXT_MAX_BODY, quiet_hours=self.config.quiet_hours,
                              default_from=self.config.from_number, allow_media=True)
        bucket = f"virtualtext:{ctx.connection_id}"
        ctx.pace(bucket, capacity=BURST, per_second=PER_SECOND)
        payload: dict[str, Any] = {"to": message.to, "channel": "mms" if message.media else "sms",
                                   "body": message.body, "idempotency_key": ctx.idempotency_key}
        if message.from_:
            payload["from"] = message.from_
        if message.media:
            payload["media"] = list(message.media)
        base = self.base_url(ctx.api_urls).rstrip("/")
        headers = {"Authorization": f"Bearer {self.config.api_key.get_secret_value()}",
                   "Accept": "application/json"}
        try:
            with guarded_session(allow_private=ctx.allow_private_urls, field="api_url") as session:
                response = session.post(f"{base}/v1/messages", json=payload, headers=headers,
                                        timeout=self.config.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise classify_failure(exc, secrets=self.secrets()) from None
        doc = _json(response)
        if response.status_code in (200, 201) and isinstance(doc, dict) and isinstance(doc.get("id"), str):
            replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
            return ActionResult(external_id=doc["id"], deduplicated=replayed,
                                detail=("already sent by an earlier attempt" if replayed else None))
        error = classify_failure(response, secrets=self.secrets())
        if error.code == "rate_limited":
            ctx.penalise(bucket, error.retry_after)
        raise error


def classify_failure(outcome: requests.Response | Exception, *, secrets: list[str]) -> IntegrationError:
    """Decide retry vs permanent for a failed VirtualText call (an error answer or a transport error)."""
    where = "virtualtext POST /v1/messages"
    if isinstance(outcome, Exception):
        if isinstance(outcome, requests.Timeout):
            return RetryableError(scrub(f"{where}: timed out: {outcome}", secrets), code="timeout")
        if isinstance(outcome, requests.ConnectionError):
            return RetryableError(scrub(f"{where}: network error: {outcome}", secrets), code="network")
        return PermanentError(scrub(f"{where}: request refused by the client: {outcome}", secrets), code="client")
    status = outcome.status_code
    doc = _json(outcome)
    code, reason = _error_text(doc)
    if doc is None:
        text = outcome.text.strip()
        reason = f"non-JSON body {excerpt(text, _EXCERPT)!r}"
    what = scrub(f"{where}: HTTP {status} {code + ': ' if code else ''}{reason}".rstrip(": "), secrets)
    if status == 429:
        retry_after = retry_after_seconds(outcome.headers) or DEFAULT_RETRY_AFTER
        return RetryableError(f"{where}: rate limited by VirtualText, retry after {retry_after:g}s", status=status,
                              retry_after=retry_after, code="rate_limited")
    if status in (401, 403):
        return AuthError(what, status=status, code=code or f"http_{status}")
    if status == 409:
        return PermanentError(what + " (the idempotency key was used for a different message)", status=status,
                              code=code or "idempotency_conflict")
    if status >= 500:
        return RetryableError(what, status=status, code=code or f"http_{status}")
    if status < 300:
        # Answered "sent" but unreadable (a proxy page, a truncated body). Retrying is safe: the same
        # idempotency key makes VirtualText return the first message instead of sending again.
        return RetryableError(what, status=status, code="malformed_response")
    return PermanentError(what, status=status, code=code or f"http_{status}")


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_text(doc: Any) -> tuple[str, str]:
    """(code, message with field details) from an error body; the shape is not published, so be lenient."""
    if not isinstance(doc, Mapping):
        return "", ""
    error = doc.get("error")
    if isinstance(error, Mapping):
        code, message, details = str(error.get("code") or ""), str(error.get("message") or ""), error.get("details")
    else:  # Textable's older API answers {"errors": [...]}; a bare {"message": ...} is common elsewhere
        code, message, details = "", str(doc.get("message") or ""), doc.get("errors")
    parts = []
    for item in details if isinstance(details, list) else ():
        if isinstance(item, Mapping):
            field = item.get("field")
            parts.append(f"{field}: {item.get('message', '')}" if field else str(item.get("message", "")))
        else:
            parts.append(str(item))
    if parts:
        message = f"{message} ({'; '.join(parts[:5])})".strip()
    return code, message[:_EXCERPT * 2]

