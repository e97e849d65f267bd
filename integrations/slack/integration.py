"""Slack: post messages with a bot token (Web API chat.postMessage) or an incoming webhook.

Failure decisions live in two functions, one per transport: :func:`classify_api_failure` and
:func:`classify_webhook_failure`. Neither client retries or sleeps in-process (``retry_handlers=[]``):
a 429 or a network error becomes a :class:`RetryableError` that the task runner reschedules, and a
429 also shuts the shared per-channel bucket for Retry-After seconds so other workers hold off too.

Delivery guarantees:
- Bot token, channel given as an ID (``C…``/``G…``/``D…``): effectively exactly-once. Every message
  carries the action's idempotency key as message metadata; a retry first looks for it in the
  channel history (or the thread's replies) of the last day and reports the earlier message.
- Bot token, channel given as a name (``#calls``), or history unreadable (missing
  ``channels:history`` scope, bot not in channel): at-least-once. conversations.history only takes
  IDs, and a retry after an ambiguous failure (timeout, 5xx) may post a second copy.
- Incoming webhook: at-least-once; a webhook can neither read history nor return a message ts.
"""

from __future__ import annotations

import http.client
import re
import time
from typing import Any, Literal, Mapping
from urllib.parse import urlsplit

import requests
from pydantic import ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.internal_utils import _build_unexpected_body_error_message, convert_bool_to_0_or_1
from slack_sdk.web.slack_response import SlackResponse
from slack_sdk.webhook import WebhookClient, WebhookResponse

from integrations.base import (
    ActionContext,
    ActionResult,
    AuthError,
    ConfigModel,
    Integration,
    IntegrationError,
    ParamsModel,
    PermanentError,
    RetryableError,
    checked_url,
    excerpt,
    scrub,
)
from integrations.http import credential_key, pooled_session, retry_after_seconds
from integrations.netguard import assert_url_public, guarded_session
from integrations.slack.cards import call_card, escape_mrkdwn

DEFAULT_API_URL = "https://slack.com/api/"
# Where an incoming-webhook URL may point without the operator's private-URL switch.
WEBHOOK_HOSTS = ("hooks.slack.com",)

# Pacing per channel, shared by every worker through the Redis limiter. Slack's chat.postMessage
# tier allows "1 message per second per channel, short bursts >1 allowed" without saying how long a
# burst may be. Capacity 1 never relies on that unspecified allowance: a paced message waits under
# a second, while a 429 costs a Retry-After penalty, and Slack warns that apps which keep sending
# after 429s risk being disabled.
CHANNEL_BURST = 1.0
CHANNEL_PER_SECOND = 1.0
# Used when a 429 carries no (readable) Retry-After; Slack normally sends integer seconds.
DEFAULT_RETRY_AFTER = 1.0

# Slack documents these limits for chat.postMessage: text is truncated beyond 40,000 characters,
# and a message holds at most 50 blocks.
TEXT_MAX = 40_000
BLOCKS_MAX = 50

METADATA_EVENT_TYPE = "pbxrelay_delivery"
# How far back a retry looks for its earlier delivery: the task runner's retry horizon (24 h).
DEDUPE_LOOKBACK_SECONDS = 24 * 3600
DEDUPE_PAGE = 100

# conversations.history / .replies accept only conversation IDs, never "#name".
_CONVERSATION_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")
# slack_sdk turns an unparseable body into {"ok": False, "error": "<this prefix>: <body excerpt>"}.
_NON_JSON_PREFIX = "Received a response in a non-JSON format"

# Web API error codes (docs.slack.dev/reference/methods/chat.postMessage and the shared error list).
_AUTH_ERRORS = {
    "invalid_auth": "the token is not valid",
    "not_authed": "no token was sent",
    "account_inactive": "the token belongs to a deleted user or workspace",
    "token_revoked": "the token has been revoked",
    "token_expired": "the token has expired",
    "no_permission": "the token lacks the permissions for this method",
    "missing_scope": "the token lacks a required scope",
    "not_allowed_token_type": "this kind of token cannot call chat.postMessage",
    "ekm_access_denied": "workspace administrators have suspended posting",
    "team_access_not_granted": "the token has no access to this workspace",
}
_TRANSIENT_ERRORS = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout",
                     "team_added_to_org"}
_PERMANENT_REASONS = {
    "channel_not_found": "the channel does not exist or the bot cannot see it (private channels: use the ID)",
    "is_archived": "the channel is archived",
    "not_in_channel": "the bot is not a member of the channel: invite it, or add the chat:write.public scope",
    "msg_too_long": "the message text is too long",
    "msg_blocks_too_long": "the blocks are too long in total",
    "no_text": "the message has no text",
    "invalid_blocks": "Slack rejected the Block Kit blocks",
    "invalid_blocks_format": "the blocks are not a JSON array of block objects",
    "invalid_arguments": "Slack rejected the arguments",
    "invalid_metadata_format": "Slack rejected the message metadata",
    "invalid_metadata_schema": "Slack rejected the message metadata",
    "metadata_too_large": "the message metadata is too large",
    "restricted_action": "workspace settings prevent posting to this channel",
    "restricted_action_read_only_channel": "the channel is read-only",
    "restricted_action_thread_only_channel": "the channel only accepts thread replies",
    "restricted_action_non_threadable_channel": "the channel does not accept thread replies",
    "cannot_reply_to_message": "this message cannot be replied to",
    "thread_not_found": "thread_ts does not name a message in this channel",
    "too_many_attachments": "too many attachments",
}

# Incoming-webhook errors are HTTP statuses with a plain-text code body (docs.slack.dev
# messaging/sending-messages-using-incoming-webhooks#handling_errors).
_WEBHOOK_AUTH = {"invalid_token": "the webhook has been revoked",
                 "no_service": "the webhook URL is disabled or removed",
                 "no_team": "the workspace of this webhook no longer exists",
                 "team_disabled": "the workspace of this webhook is disabled",
                 "action_prohibited": "workspace administrators blocked this webhook"}
_WEBHOOK_PERMANENT = {"channel_is_archived": "the webhook's channel is archived",
                      "channel_not_found": "the webhook's channel no longer exists",
                      "invalid_payload": "Slack could not parse the payload",
                      "no_text": "the message has no text",
                      "invalid_blocks": "Slack rejected the Block Kit blocks",
                      "too_many_attachments": "too many attachments",
                      "posting_to_general_channel_denied": "only admins may post to this channel",
                      "user_not_found": "the webhook's user no longer exists"}

# What a broken connection or timeout looks like from urllib: URLError, TimeoutError and
# ConnectionResetError are OSErrors; a half-read response raises http.client errors.
_TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


class SlackConfig(ConfigModel):
    """A Slack connection: exactly one of a bot token (Web API) or an incoming-webhook URL."""

    # pydantic puts the raw input into validation errors; for a token or webhook URL that is the secret.
    model_config = ConfigDict(hide_input_in_errors=True)
    allowed_hosts = ("slack.com",)

    bot_token: SecretStr | None = None
    webhook_url: SecretStr | None = None
    default_channel: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^\S+$")
    # Seconds per HTTP request; short enough that a hung Slack never pins a worker thread for long.
    timeout: float = Field(default=10.0, gt=0, le=60)

    @field_validator("bot_token")
    @classmethod
    def _bot_token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("xoxb-", "xoxp-")):
            raise ValueError("bot_token must be a Slack bot token (xoxb-…) or user token (xoxp-…)")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url_shape(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # The guard's messages never quote the path, which is the secret part of a webhook URL.
        if value is not None:
            checked_url(value.get_secret_value(), field="webhook_url", allowed_hosts=WEBHOOK_HOSTS, info=info)
        return value

    @model_validator(mode="after")
    def _exactly_one_credential(self) -> "SlackConfig":
        if (self.bot_token is None) == (self.webhook_url is None):
            raise ValueError("set exactly one of bot_token or webhook_url")
        return self


class PostMessageParams(ParamsModel):
    """Params of ``post_message``: ``text`` is always required, as the notification/fallback text."""

    channel: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^\S+$")
    text: str = Field(min_length=1, max_length=TEXT_MAX)
    blocks: list[dict[str, Any]] | None = Field(default=None, min_length=1, max_length=BLOCKS_MAX)
    layout: Literal["call_card"] | None = None
    thread_ts: str | None = Field(default=None, pattern=r"^\d{1,12}\.\d{1,9}$")
    username: str | None = Field(default=None, min_length=1, max_length=80)
    icon_emoji: str | None = Field(default=None, pattern=r"^:[A-Za-z0-9_+'-]+:$")

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text must not be blank: it is the notification and accessibility fallback")
        return value

    @field_validator("blocks")
    @classmethod
    def _blocks_have_types(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for index, block in enumerate(value or ()):
            if not isinstance(block.get("type"), str) or not block["type"]:
                raise ValueError(f"block {index} has no 'type' string")
        return value

    @model_validator(mode="after")
    def _one_source_of_blocks(self) -> "PostMessageParams":
        if self.blocks is not None and self.layout is not None:
            raise ValueError("give either blocks or layout, not both")
        return self


class SlackIntegration(Integration):
    """Posts call notifications to Slack channels."""

    key = "slack"
    name = "Slack"
    Config = SlackConfig
    actions = {"post_message": PostMessageParams}
    default_api_url = DEFAULT_API_URL
    # Event values (a caller ID name like "<!channel>") must not become Slack mentions or links.
    template_escape = staticmethod(escape_mrkdwn)

    def secrets(self) -> list[str]:
        """The token or webhook URL, plus the webhook's path and secret part, which proxies echo on their own."""
        values = super().secrets()
        if self.config.webhook_url is not None:
            path = urlsplit(self.config.webhook_url.get_secret_value()).path
            values += [path, path.removeprefix("/services/"), path.rstrip("/").rsplit("/", 1)[-1]]
        return values

    def check(self, ctx: ActionContext) -> str:
        """auth.test for a bot token; for a webhook, an empty text, which Slack refuses with no_text (posts nothing)."""
        if self.config.webhook_url is None:
            try:
                response = self._web_client(ctx).auth_test()
            except (SlackApiError, SlackRequestError, *_TRANSPORT_ERRORS) as exc:
                raise classify_api_failure("auth.test", exc, channel="", secrets=self.secrets()) from None
            return f"token of {response.get('user')} in workspace {response.get('team')}"
        assert_url_public(self.config.webhook_url.get_secret_value(), field="webhook_url",
                          allow_private=ctx.allow_private_urls)
        client = WebhookClient(self.config.webhook_url.get_secret_value(), timeout=self.config.timeout,
                               retry_handlers=[])
        try:
            error = classify_webhook_failure(client.send_dict({"text": ""}), secrets=self.secrets())
        except (SlackRequestError, *_TRANSPORT_ERRORS) as exc:
            error = classify_webhook_failure(exc, secrets=self.secrets())
        if error is None or error.code == "no_text":  # a live webhook answers an empty message with no_text
            return "the incoming webhook is live"
        raise error

    def post_message(self, params: PostMessageParams, ctx: ActionContext) -> ActionResult:
        """Post one message (text + optional Block Kit), paced per channel, deduplicated on retries."""
        blocks = params.blocks
        if params.layout == "call_card":
            try:
                blocks = call_card(ctx.event)
            except ValueError as exc:
                raise PermanentError(f"slack.post_message: {exc}", code="bad_layout") from None
        if self.config.webhook_url is not None:
            return self._post_via_webhook(params, blocks, ctx)
        return self._post_via_api(params, blocks, ctx)

    # -- Web API (bot token) -------------------------------------------------------------------

    def _web_client(self, ctx: ActionContext) -> WebApi:
        token = self.config.bot_token.get_secret_value()
        # One keep-alive session per bot token; its guarded adapter checks each new connection's address after
        # DNS and pins the socket to it, so a pooled connection only ever goes where the check allowed.
        session = pooled_session(("slack", credential_key(token), ctx.allow_private_urls),
                                 lambda: guarded_session(allow_private=ctx.allow_private_urls, field="api_url"))
        return WebApi(session, self.base_url(ctx.api_urls), token, self.config.timeout)

    def _post_via_api(self, params: PostMessageParams, blocks: list | None, ctx: ActionContext) -> ActionResult:
        channel = params.channel or self.config.default_channel
        if not channel:
            raise PermanentError("slack.post_message: no channel: set `channel` on the action or "
                                 "`default_channel` on the connection", code="no_channel")
        bucket = f"slack:{ctx.connection_id}:{channel}"
        ctx.pace(bucket, capacity=CHANNEL_BURST, per_second=CHANNEL_PER_SECOND)
        client = self._web_client(ctx)
        if ctx.attempt > 1:
            earlier = self._find_earlier_delivery(client, channel, params.thread_ts, ctx.idempotency_key)
            if earlier is not None:
                return ActionResult(external_id=f"{channel}:{earlier}", deduplicated=True,
                                    detail="already posted by an earlier attempt")
        try:
            response = client.chat_postMessage(
                channel=channel, text=params.text, blocks=blocks, thread_ts=params.thread_ts,
                username=params.username, icon_emoji=params.icon_emoji,
                metadata={"event_type": METADATA_EVENT_TYPE,
                          "event_payload": {"idempotency_key": ctx.idempotency_key}})
        except (SlackApiError, SlackRequestError, *_TRANSPORT_ERRORS) as exc:
            error = classify_api_failure("chat.postMessage", exc, channel=channel, secrets=self.secrets())
            if error.code == "ratelimited":
                ctx.penalise(bucket, error.retry_after)
            raise error from None
        return ActionResult(external_id=f"{response.get('channel') or channel}:{response.get('ts')}")

    def _find_earlier_delivery(self, client: WebApi, channel: str, thread_ts: str | None,
                               idempotency_key: str) -> str | None:
        """The ts of a message carrying ``idempotency_key`` posted in the last day, if history is readable."""
        if not _CONVERSATION_ID.match(channel):
            return None  # names are not accepted by conversations.* : this delivery is at-least-once
        oldest = f"{time.time() - DEDUPE_LOOKBACK_SECONDS:.6f}"
        method = "conversations.replies" if thread_ts else "conversations.history"
        try:
            if thread_ts:  # replies never show up in history; look inside the thread instead
                response = client.conversations_replies(channel=channel, ts=thread_ts, oldest=oldest,
                                                        limit=DEDUPE_PAGE, include_all_metadata=True)
            else:
                response = client.conversations_history(channel=channel, oldest=oldest, limit=DEDUPE_PAGE,
                                                        include_all_metadata=True)
        except (SlackApiError, SlackRequestError, *_TRANSPORT_ERRORS) as exc:
            error = classify_api_failure(method, exc, channel=channel, secrets=self.secrets())
            if error.retryable:
                # Slack or the network is struggling: posting now would likely fail too, and waiting
                # keeps the exactly-once check instead of gambling on a duplicate.
                raise error from None
            return None  # unreadable history (scope, membership): fall through, at-least-once
        for message in response.get("messages") or ():
            metadata = message.get("metadata") or {}
            payload = metadata.get("event_payload") or {}
            if metadata.get("event_type") == METADATA_EVENT_TYPE and payload.get("idempotency_key") == idempotency_key:
                return message.get("ts")
        return None

    # -- Incoming webhook ----------------------------------------------------------------------

    def _post_via_webhook(self, params: PostMessageParams, blocks: list | None, ctx: ActionContext) -> ActionResult:
        if params.channel:
            raise PermanentError("slack.post_message: an incoming webhook always posts to the channel chosen when "
                                 "it was created; remove `channel` or connect with a bot token", code="channel_fixed")
        # One webhook URL is one channel; the connection id names it without exposing the URL.
        bucket = f"slack:{ctx.connection_id}:webhook"
        ctx.pace(bucket, capacity=CHANNEL_BURST, per_second=CHANNEL_PER_SECOND)
        assert_url_public(self.config.webhook_url.get_secret_value(), field="webhook_url",
                          allow_private=ctx.allow_private_urls)
        client = WebhookClient(self.config.webhook_url.get_secret_value(), timeout=self.config.timeout,
                               retry_handlers=[])
        body = {"text": params.text, "blocks": blocks, "thread_ts": params.thread_ts,
                "username": params.username, "icon_emoji": params.icon_emoji}
        try:
            response: WebhookResponse | None = client.send_dict(body)
            error = classify_webhook_failure(response, secrets=self.secrets())
        except (SlackRequestError, *_TRANSPORT_ERRORS) as exc:
            error = classify_webhook_failure(exc, secrets=self.secrets())
        if error is None:
            return ActionResult(detail="posted via incoming webhook (Slack returns no message id)")
        if error.code == "ratelimited":
            ctx.penalise(bucket, error.retry_after)
        raise error


class WebApi:
    """The Slack Web API methods pbxrelay calls, as slack-sdk's WebClient sends them (JSON body for posts, query
    for reads, no nulls), over a pooled keep-alive session; answers and errors are slack-sdk's own types."""

    def __init__(self, session: requests.Session, base_url: str, token: str, timeout: float) -> None:
        self.session, self.base_url, self.timeout = session, base_url, timeout
        self._headers = {"Authorization": f"Bearer {token}"}

    def chat_postMessage(self, **kwargs: Any) -> SlackResponse:  # noqa: N802 (slack-sdk's name)
        """chat.postMessage with a JSON body."""
        return self._call("chat.postMessage", "POST", kwargs)

    def auth_test(self, **kwargs: Any) -> SlackResponse:
        """auth.test (POST): whose token this is (the connection test's harmless call)."""
        return self._call("auth.test", "POST", kwargs)

    def conversations_history(self, **kwargs: Any) -> SlackResponse:
        """conversations.history (GET)."""
        return self._call("conversations.history", "GET", kwargs)

    def conversations_replies(self, **kwargs: Any) -> SlackResponse:
        """conversations.replies (GET)."""
        return self._call("conversations.replies", "GET", kwargs)

    def _call(self, method: str, verb: str, args: dict[str, Any]) -> SlackResponse:
        """Send one call; raises SlackApiError for a non-200 or ``ok: false`` answer, as WebClient does."""
        url = self.base_url + method
        args = {k: v for k, v in args.items() if v is not None}
        if verb == "POST":
            answer = self.session.post(url, json=args, headers=self._headers, timeout=self.timeout)
        else:
            # Booleans as "1"/"0", which Slack reads (as slack-sdk sends them).
            answer = self.session.get(url, params=convert_bool_to_0_or_1(args), headers=self._headers,
                                      timeout=self.timeout)
        try:
            data = answer.json()
        except ValueError:
            data = {"ok": False, "error": _build_unexpected_body_error_message(answer.text)}
        return SlackResponse(client=None, http_verb=verb, api_url=url, req_args={}, data=data,
                             headers=dict(answer.headers), status_code=answer.status_code).validate()


def classify_api_failure(method: str, exc: Exception, *, channel: str, secrets: list[str]) -> IntegrationError:
    """Decide retry vs permanent for a failed Web API call (SlackApiError or transport error)."""
    where = f"slack {method} (channel {channel!r})"
    if not isinstance(exc, SlackApiError):
        if isinstance(exc, _TRANSPORT_ERRORS):
            return RetryableError(scrub(f"{where}: network error: {type(exc).__name__}: {exc}", secrets),
                                  code="network")
        return PermanentError(scrub(f"{where}: request refused by the client: {exc}", secrets), code="client")
    response = exc.response
    status = int(response.status_code)
    data = response.data if isinstance(response.data, Mapping) else {}
    error = str(data.get("error") or "")
    body = ""
    if error.startswith(_NON_JSON_PREFIX):  # not a Slack error code: the body was not JSON at all
        body, error = f" with a non-JSON body: {error[len(_NON_JSON_PREFIX):].lstrip(': ')!r}", ""
    if status == 429 or error == "ratelimited":
        retry_after = retry_after_seconds(response.headers or {}) or DEFAULT_RETRY_AFTER
        return RetryableError(f"{where}: rate limited by Slack, retry after {retry_after:g}s", status=status,
                              retry_after=retry_after, code="ratelimited")
    what = error or f"HTTP {status}{body}"
    if status in (401, 403) or error in _AUTH_ERRORS:
        reason = _AUTH_ERRORS.get(error, "credentials rejected") + _error_details(data)
        return AuthError(scrub(f"{where}: {what}: {reason}", secrets), status=status, code=error or f"http_{status}")
    if body:
        cls = RetryableError if status >= 500 else PermanentError
        return cls(scrub(f"{where}: {what}", secrets), status=status, code="malformed_response")
    if status >= 500 or error in _TRANSIENT_ERRORS:
        return RetryableError(scrub(f"{where}: Slack error {what}", secrets), status=status,
                              code=error or f"http_{status}")
    reason = _PERMANENT_REASONS.get(error, "Slack refused the request") + _error_details(data)
    return PermanentError(scrub(f"{where}: {what}: {reason}", secrets), status=status,
                          code=error or f"http_{status}")


def classify_webhook_failure(outcome: WebhookResponse | Exception, *, secrets: list[str]) -> IntegrationError | None:
    """Decide the outcome of an incoming-webhook post: None on success, else the error to raise."""
    where = "slack incoming webhook"
    if isinstance(outcome, Exception):
        if isinstance(outcome, _TRANSPORT_ERRORS):
            return RetryableError(scrub(f"{where}: network error: {type(outcome).__name__}: {outcome}", secrets),
                                  code="network")
        return PermanentError(scrub(f"{where}: request refused by the client: {outcome}", secrets), code="client")
    status, body = int(outcome.status_code), (outcome.body or "").strip()
    if status == 200 and body == "ok":
        return None
    code = body if re.fullmatch(r"[a-z_]{2,64}", body) else ""
    if status == 429:
        retry_after = retry_after_seconds(outcome.headers or {}) or DEFAULT_RETRY_AFTER
        return RetryableError(f"{where}: rate limited by Slack, retry after {retry_after:g}s", status=status,
                              retry_after=retry_after, code="ratelimited")
    if status >= 500:
        # Scrub before cutting: a secret straddling the cut would survive as an unmatchable prefix.
        shown = code or excerpt(scrub(body, secrets))
        return RetryableError(scrub(f"{where}: HTTP {status} {shown!r}", secrets), status=status,
                              code=code or f"http_{status}")
    if code in _WEBHOOK_AUTH or (status in (401, 403) and code not in _WEBHOOK_PERMANENT):
        reason = _WEBHOOK_AUTH.get(code, "credentials rejected")
        return AuthError(scrub(f"{where}: HTTP {status} {code or 'error'}: {reason}", secrets), status=status,
                         code=code or f"http_{status}")
    if code:
        reason = _WEBHOOK_PERMANENT.get(code, "Slack refused the message")
        return PermanentError(scrub(f"{where}: HTTP {status} {code}: {reason}", secrets), status=status, code=code)
    shown = excerpt(scrub(body, secrets))
    return PermanentError(scrub(f"{where}: HTTP {status} with an unexpected body: {shown!r}", secrets),
                          status=status, code="malformed_response")


def _error_details(data: Mapping[str, Any]) -> str:
    """Slack's extra explanation of an error (invalid_blocks lists each problem), kept short."""
    messages = data.get("errors") or (data.get("response_metadata") or {}).get("messages") or []
    if data.get("needed"):
        messages = [f"needed scope {data['needed']}", *messages]
    if not isinstance(messages, list) or not messages:
        return ""
    return " (" + excerpt("; ".join(str(m) for m in messages[:5])) + ")"
