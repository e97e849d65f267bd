"""VirtualPBX as an action target: ``send_sms`` through the Dash (Kazoo) API, ``PUT /v2/accounts/{A}/sms``.

The checks shared with VirtualText (E.164, body limit, opt-out, quiet hours) are in
:func:`integrations.sms.prepare_sms`; errors come from :class:`VirtualPBXClient` already sorted into
Retryable / Permanent / Auth (``errors.py``). The client paces calls on Kazoo's per-account bucket
and caches the auth token in Redis, shared by every worker.

Delivery guarantee: Kazoo has no idempotency key, so a retry (``ctx.attempt > 1``) first lists the
account's messages (``GET /v2/accounts/{A}/sms``, newest first) for one with the same recipient and
body sent since shortly before the triggering event, and reports it instead of sending again.
Every message this integration sends is claimed for its idempotency key in Redis, so a retry never
adopts a message another delivery sent with the same text. What is left is at-least-once:

- Kazoo sends asynchronously and writes the listed copy to the account's MODB on its own schedule;
  a retry that lists before that write happened sends a second copy;
- another sender (a person in the Dash UI, another tool) texting the same body to the same number
  inside the window makes a retry report that message instead of sending;
- without Redis (``ctx.redis`` None) there are no claims, and two deliveries with identical text
  to one number inside the window may be reported as one;
- the lookup reads at most ``DEDUPE_MAX_PAGES`` pages; a busier account falls through and sends;
- a listing Kazoo refuses for good (403 for a restricted token, 400) falls through and sends; one it
  fails transiently (timeout, 429, 5xx) defers the retry instead.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable

import requests
from pydantic import ConfigDict, Field, SecretStr, model_validator

from integrations.base import ActionContext, ActionResult, ConfigModel, Integration, PermanentError
from integrations.netguard import guarded_session
from integrations.sms import (
    DASH_MAX_BODY,
    E164Number,
    PreparedSms,
    QuietHours,
    SendSmsParams,
    normalise_number,
    prepare_sms,
)
from integrations.timeutil import aware
from integrations.virtualpbx.gregorian import datetime_to_gregorian

from . import errors as E
from .client import VirtualPBXClient

DEFAULT_API_URL = "https://public-api.virtualpbx.com:8443"
# The task runner's retry horizon: no retry of ours can be about a message older than this.
DEDUPE_LOOKBACK = timedelta(hours=24)
# A CRM stamps events with its own clock; a message sent for an event is looked for from this long
# before the event's time, so a CRM clock running ahead does not hide our earlier send.
EVENT_CLOCK_SLACK = timedelta(hours=1)
DEDUPE_PAGE_SIZE = 50
DEDUPE_MAX_PAGES = 10
# Claims outlive the retry horizon with a margin.
CLAIM_TTL_SECONDS = 2 * 24 * 3600


class VirtualPBXConfig(ConfigModel):
    """A VirtualPBX connection: the Kazoo account and exactly one auth mode (API key, or user login)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    # The default API listens on 8443, so that port is allowed for this host alone.
    allowed_hosts = ("public-api.virtualpbx.com:8443",)

    account_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    api_key: SecretStr | None = None
    username: str | None = Field(default=None, min_length=1, max_length=254)
    password: SecretStr | None = None
    account_name: str | None = Field(default=None, min_length=1, max_length=128)
    # Kazoo picks the account's caller ID when no sender is given; the number must be on the account.
    default_from: E164Number = None
    quiet_hours: QuietHours = None
    timeout: float = Field(default=10.0, gt=0, le=60)

    @model_validator(mode="after")
    def _exactly_one_auth_mode(self) -> "VirtualPBXConfig":
        login = (self.username, self.password, self.account_name)
        if self.api_key is not None:
            if any(v is not None for v in login):
                raise ValueError("give either api_key or username + password + account_name, not both")
        elif any(v is None for v in login):
            raise ValueError("give api_key, or all of username, password and account_name")
        return self


class VirtualPBXIntegration(Integration):
    """Sends SMS through the VirtualPBX Dash (Kazoo) API."""

    key = "virtualpbx"
    name = "VirtualPBX"
    Config = VirtualPBXConfig
    actions = {"send_sms": SendSmsParams}
    default_api_url = DEFAULT_API_URL
    account_field = "account_id"

    def check(self, ctx: ActionContext) -> str:
        """Authenticate and GET /v2/accounts/{A}: the account document, read-only."""
        with guarded_session(allow_private=ctx.allow_private_urls, field="api_url") as session:
            client = self.client(api_urls=ctx.api_urls, redis=ctx.redis, namespace=ctx.namespace, session=session,
                                 owner=ctx.account_id, seal=ctx.seal, unseal=ctx.unseal)
            account = client.get_account()
        return f"signed in to VirtualPBX account {account.get('name') or self.config.account_id}"

    def send_sms(self, params: SendSmsParams, ctx: ActionContext) -> ActionResult:
        """Queue one SMS with Kazoo (200 = accepted, not delivered); on a retry, report an earlier send."""
        message = prepare_sms(params, ctx, max_body=DASH_MAX_BODY, quiet_hours=self.config.quiet_hours,
                              default_from=self.config.default_from)
        with guarded_session(allow_private=ctx.allow_private_urls, field="api_url") as session:
            client = self.client(api_urls=ctx.api_urls, redis=ctx.redis, namespace=ctx.namespace, session=session,
                                 owner=ctx.account_id, seal=ctx.seal, unseal=ctx.unseal)
            if ctx.attempt > 1:
                try:
                    earlier = self._find_earlier_send(client, message, ctx)
                except E.VirtualPBXError as exc:
                    if exc.retryable:
                        raise  # Kazoo is struggling: sending blind now could duplicate, so wait
                    earlier = None  # the listing is refused (token restrictions): at-least-once
                if earlier is not None:
                    return ActionResult(external_id=earlier, deduplicated=True,
                                        detail="already sent by an earlier attempt")
            sent = client.send_sms(message.to, message.body, from_=message.from_)
        message_id = str(sent.get("message_id") or "") if isinstance(sent, dict) else ""
        if message_id:
            self._record(ctx, message_id)
        return ActionResult(external_id=message_id or None)

    def client(self, *, api_urls: dict[str, str], redis=None, namespace: str = "pbxrelay",
               session: requests.Session | None = None, owner: str | None = None, allow_private: bool = False,
               seal: Callable[[str], str] | None = None,
               unseal: Callable[[str], str | None] | None = None) -> VirtualPBXClient:
        """A Crossbar client for this connection: SMS here; voicemail audio, onboarding and reconciliation elsewhere.

        ``owner`` is our account the connection belongs to (keys the token cache and bucket); without
        ``session`` the client gets a guarded one (no redirects, no private hosts unless allowed).
        """
        config = self.config
        codec = {"seal": seal, "unseal": unseal} if seal and unseal else {}
        base = self.base_url(api_urls)
        return VirtualPBXClient(
            base, account_id=config.account_id,
            api_key=config.api_key.get_secret_value() if config.api_key else None,
            username=config.username,
            password=config.password.get_secret_value() if config.password else None,
            account_name=config.account_name, redis=redis, namespace=namespace, timeout=config.timeout,
            session=session or guarded_session(allow_private=allow_private, field="api_url"), owner=owner, **codec)

    # -- exactly-once on retries ----------------------------------------------------------------

    def _claim_key(self, ctx: ActionContext, message_id: str) -> str:
        return f"{ctx.namespace}:virtualpbx:sms-claim:{self.config.account_id}:{message_id}"

    def _record(self, ctx: ActionContext, message_id: str) -> None:
        """Claim a message this delivery just sent, so no other delivery's retry adopts it."""
        if ctx.redis is not None:
            ctx.redis.set(self._claim_key(ctx, message_id), ctx.idempotency_key, ex=CLAIM_TTL_SECONDS)

    def _adopt(self, ctx: ActionContext, message_id: str) -> bool:
        """Claim a listed message for this delivery; False when another delivery already holds it."""
        if ctx.redis is None:
            return True
        key = self._claim_key(ctx, message_id)
        if ctx.redis.set(key, ctx.idempotency_key, nx=True, ex=CLAIM_TTL_SECONDS):
            return True
        holder = ctx.redis.get(key)
        return (holder.decode() if isinstance(holder, bytes) else holder) == ctx.idempotency_key

    def _find_earlier_send(self, client: VirtualPBXClient, message: PreparedSms, ctx: ActionContext) -> str | None:
        """The message_id of a listed message matching this one (same to and body) inside the window."""
        now = datetime.now(timezone.utc)
        since = _window_start(ctx.event, now)
        params: dict[str, Any] = {"created_from": datetime_to_gregorian(since),
                                  "created_to": datetime_to_gregorian(now)}
        pages = client.iter_pages(client.account_path("sms"), params, page_size=DEDUPE_PAGE_SIZE)
        for _, envelope in zip(range(DEDUPE_MAX_PAGES), pages):
            rows = envelope.data if isinstance(envelope.data, list) else []
            any_in_window = False
            for row in rows:
                sent_at = _row_time(row)
                if sent_at is not None and sent_at < since:
                    continue
                any_in_window = True
                message_id = str(row.get("message_id") or row.get("id") or "")
                if message_id and _same_message(row, message, ctx.region) and self._adopt(ctx, message_id):
                    return message_id
            if rows and not any_in_window:
                return None  # newest first: everything further back is older still
        return None


def _window_start(event: dict[str, Any], now: datetime) -> datetime:
    """Where a retry's search begins: just before the triggering event, never before the retry horizon."""
    floor = now - DEDUPE_LOOKBACK
    try:
        occurred = datetime.fromisoformat(str(event["occurred_at"]))
    except (KeyError, ValueError):
        return floor
    return max(floor, aware(occurred) - EVENT_CLOCK_SLACK)


def _row_time(row: dict[str, Any]) -> datetime | None:
    """A listing row's send time from its RFC 1036 ``date``, or None when absent or unreadable."""
    try:
        moment = parsedate_to_datetime(str(row["date"]))
    except (KeyError, TypeError, ValueError):
        return None
    return aware(moment)


def _same_message(row: dict[str, Any], message: PreparedSms, region: str) -> bool:
    """Whether a listed row is this message: same body and recipient (compared as E.164), same sender if set."""
    if row.get("body") != message.body or not _same_number(row.get("to"), message.to, region):
        return False
    return message.from_ is None or _same_number(row.get("from"), message.from_, region)


def _same_number(listed: Any, e164: str, region: str) -> bool:
    # Kazoo may store a number as given or in its own normal form (+1…, 1…): compare normalised.
    if not isinstance(listed, str) or not listed:
        return False
    if listed == e164:
        return True
    try:
        return normalise_number(listed, region) == e164
    except PermanentError:  # an unreadable listed number simply is not ours
        return False
