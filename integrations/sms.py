"""What every SMS provider shares: the ``send_sms`` params, number normalisation, consent and quiet hours.

Both providers (the Dash/Kazoo API in ``integrations.virtualpbx`` and VirtualText in
``integrations.virtualtext``) call :func:`prepare_sms` first, so a message is checked the same way
whichever provider a connection uses:

1. the recipient (and sender, if any) is normalised to E.164, or the action fails permanently;
2. the body is stripped and held to the provider's limit (rules should truncate in the template);
3. a number that opted out (STOP, or a CRM flag) is never texted: permanent ``opted_out``;
4. inside the connection's quiet hours (account-local time) the action is deferred, not dropped:
   RetryableError ``deferred`` with ``retry_after`` = seconds until the quiet period ends.

Permanent checks run before the quiet-hours check so a message that can never be sent fails at once
instead of waiting for the morning; consent is re-checked on every attempt, so a STOP received while
a message waits out quiet hours still stops it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from datetime import time as dtime
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import AfterValidator, ConfigDict, Field, field_validator

from integrations.base import ActionContext, ParamsModel, PermanentError, RetryableError

# Kazoo's sms.json schema: body 1-700 characters (virtualpbx-api.md §7).
DASH_MAX_BODY = 700
# VirtualText publishes no body limit. 1600 characters is the usual ceiling of a concatenated SMS
# (10 segments) at US carriers; the stand-in enforces the same number.
VIRTUALTEXT_MAX_BODY = 1600
# A deferral never asks to come back sooner than this, so the quiet-hours edge is not polled.
MIN_DEFER_SECONDS = 60.0
MEDIA_MAX = 10
# How much of a rejected number is echoed in the error: enough to recognise it, never a wall of text.
_ECHO_MAX = 40

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_QUIET_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


def _check_quiet_hours(value: str | None) -> str | None:
    if value is not None:
        match = _QUIET_HOURS.match(value)
        if match is None:
            raise ValueError("quiet_hours must look like '21:00-08:00' (24-hour HH:MM-HH:MM, account-local time)")
        if match.group(1, 2) == match.group(3, 4):
            raise ValueError("quiet_hours start and end are equal: that would never (or always) allow texting")
    return value


# A connection setting: "HH:MM-HH:MM" in the account's time zone; an end before the start spans midnight.
QuietHours = Annotated[str | None, AfterValidator(_check_quiet_hours)]


def _check_e164(value: str | None) -> str | None:
    if value is not None and not _E164.match(value):
        raise ValueError("must be an E.164 number such as +12025550123")
    return value


# A connection setting holding a sender number; it must already be E.164 (no region guessing in config).
E164Number = Annotated[str | None, AfterValidator(_check_e164)]


class SendSmsParams(ParamsModel):
    """Params of ``send_sms``: ``to`` and ``body`` required; ``from`` optional; ``media`` (VirtualText only)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: str = Field(min_length=1, max_length=300)
    body: str
    from_: str | None = Field(default=None, alias="from", min_length=1, max_length=300)
    media: list[str] | None = Field(default=None, min_length=1, max_length=MEDIA_MAX)

    @field_validator("media")
    @classmethod
    def _media_urls(cls, value: list[str] | None) -> list[str] | None:
        for url in value or ():
            # Providers fetch media from the public internet: anything but http(s) cannot work.
            if not re.match(r"^https?://[^\s/]+\S*$", url):
                raise ValueError(f"media entries must be public http(s) URLs, got {url[:80]!r}")
        return value


@dataclass(frozen=True)
class PreparedSms:
    """A message that passed every check: E.164 numbers, a stripped body within the provider's limit."""

    to: str
    body: str
    from_: str | None = None
    media: tuple[str, ...] = ()


def normalise_number(raw: str, region: str | None) -> str:
    """``raw`` as E.164 (``region`` applies to numbers without +country code), or PermanentError."""
    text = str(raw).strip()
    echo = text if len(text) <= _ECHO_MAX else text[:_ECHO_MAX] + "…"
    where = f"for region {region}" if region else "without a default region (give a +country code)"
    invalid = PermanentError(f"cannot send to {echo!r}: not a valid phone number {where}", code="invalid_number")
    # Control characters (NUL, CR/LF inside the value) mean corrupted or smuggled data, not a number;
    # format characters (the bidi marks phones add when a number is copied) are fine and ignored.
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise invalid
    if text[:4].lower() == "tel:":
        text = text[4:]  # RFC 3966 URIs, as CRMs put them in click-to-call fields
    try:
        number = phonenumbers.parse(text, region or None)
    except phonenumbers.NumberParseException:
        raise invalid from None
    # is_valid (not just is_possible): an unassigned area code can never receive a text, so it is a
    # rule/data problem to fix, not something to hand to the carrier.
    if not phonenumbers.is_valid_number(number):
        raise invalid
    if number.extension:
        raise PermanentError(f"cannot send to {echo!r}: an extension cannot receive text messages",
                             code="invalid_number")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    # phonenumbers accepts some national numbers (long German ones) past E.164's 15 digits;
    # neither provider takes those.
    if not _E164.match(e164):
        raise invalid
    return e164


def parse_quiet_hours(value: str) -> tuple[dtime, dtime]:
    """(start, end) of a validated ``"HH:MM-HH:MM"`` setting."""
    start, end = value.split("-")
    return dtime.fromisoformat(start), dtime.fromisoformat(end)


def quiet_seconds_left(quiet_hours: str, tz_name: str, now: datetime) -> float | None:
    """Seconds until the quiet period containing ``now`` ends (local wall clock of ``tz_name``), else None."""
    try:
        zone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PermanentError(f"account time zone {tz_name!r} is unknown; cannot apply quiet hours",
                             code="bad_timezone") from None
    start, end = parse_quiet_hours(quiet_hours)
    local = now.astimezone(zone)
    wall = local.time().replace(tzinfo=None)
    inside = start <= wall < end if start < end else (wall >= start or wall < end)
    if not inside:
        return None
    # The next local `end` after now, rebuilt from the wall clock so a DST change during the night
    # (23 or 25 real hours in that day) is honoured; a wall time inside a spring-forward gap takes
    # the pre-transition offset, as zoneinfo does (02:30 on that morning means 03:30 summer time).
    ends = datetime.combine(local.date(), end, tzinfo=zone)
    if ends <= local:
        ends = datetime.combine(local.date() + timedelta(days=1), end, tzinfo=zone)
    return (ends.astimezone(timezone.utc) - now.astimezone(timezone.utc)).total_seconds()


def prepare_sms(params: SendSmsParams, ctx: ActionContext, *, max_body: int, quiet_hours: str | None = None,
                default_from: str | None = None, allow_media: bool = False,
                now: datetime | None = None) -> PreparedSms:
    """Run every provider-independent check on one message, or raise Permanent/Retryable (``deferred``)."""
    to = normalise_number(params.to, ctx.region)
    sender = params.from_ or default_from
    from_ = normalise_number(sender, ctx.region) if sender else None
    body = params.body.strip()
    if not body:
        raise PermanentError("send_sms: the message body is empty", code="empty_body")
    if len(body) > max_body:
        raise PermanentError(f"send_sms: the message body has {len(body)} characters, more than this provider's "
                             f"limit of {max_body}; truncate it in the rule's template", code="body_too_long")
    if params.media and not allow_media:
        raise PermanentError("send_sms: this provider cannot send media (MMS); remove `media` or use a "
                             "VirtualText connection", code="media_unsupported")
    if ctx.opted_out(to):
        raise PermanentError(f"send_sms: {to} is on the account's opt-out list (STOP reply or CRM flag); not sent",
                             code="opted_out")
    if quiet_hours:
        left = quiet_seconds_left(quiet_hours, ctx.timezone, now or datetime.now(timezone.utc))
        if left is not None:
            wait = max(MIN_DEFER_SECONDS, left)
            raise RetryableError(f"send_sms: inside quiet hours {quiet_hours} ({ctx.timezone}); deferred "
                                 f"{wait:.0f}s until they end", retry_after=wait, code="deferred")
    return PreparedSms(to=to, body=body, from_=from_, media=tuple(params.media or ()))
