"""The provider-independent SMS checks: numbers, body limits, consent, quiet hours (fixed clocks, DST)."""

from __future__ import annotations

import pickle
import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from integrations.base import ActionContext, PermanentError, RetryableError
from integrations.sms import (
    DASH_MAX_BODY,
    MIN_DEFER_SECONDS,
    VIRTUALTEXT_MAX_BODY,
    QuietHours,
    SendSmsParams,
    normalise_number,
    prepare_sms,
    quiet_seconds_left,
)

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
NY = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")


def ctx(**kwargs) -> ActionContext:
    """An ActionContext for a US account in New York unless told otherwise."""
    return ActionContext(**{"account_id": "acc", "idempotency_key": "k", "timezone": "America/New_York",
                            "region": "US", **kwargs})


def params(**kwargs) -> SendSmsParams:
    """Validated send_sms params (``from`` by its alias, as rules render it)."""
    return SendSmsParams.model_validate({"to": "+12025550123", "body": "Your appointment is at 3pm", **kwargs})


def at(zone: ZoneInfo, *args: int) -> datetime:
    """A fixed aware clock reading in ``zone``."""
    return datetime(*args, tzinfo=zone)


# -- numbers ---------------------------------------------------------------------------------------

NUMBERS = {
    "us-e164": ("+12025550123", "US", "+12025550123"),
    "us-formatted-with-plus": ("+1 (202) 555-0123", "US", "+12025550123"),
    "us-national-dashes": ("202-555-0123", "US", "+12025550123"),
    "us-national-dots-spaces": (" 202.555.0123 ", "US", "+12025550123"),
    "us-with-trunk-1": ("1 202 555 0123", "US", "+12025550123"),
    "us-tollfree": ("(800) 555-0199", "US", "+18005550199"),
    "tel-uri": ("tel:+1-202-555-0123", "US", "+12025550123"),
    "tel-uri-upper": ("TEL:+12025550123", None, "+12025550123"),
    "canada-in-us-region": ("613-555-0123", "US", "+16135550123"),
    "uk-mobile-national": ("07911 123456", "GB", "+447911123456"),
    "uk-london-national": ("020 7946 0958", "GB", "+442079460958"),
    "uk-international-with-us-region": ("+44 7911 123456", "US", "+447911123456"),
    "uk-00-prefix-from-gb": ("0044 7911 123456", "GB", "+447911123456"),
    "us-number-from-uk-account": ("+1 202 555 0123", "GB", "+12025550123"),
    "no-region-but-plus": ("+61 412 345 678", None, "+61412345678"),
    "fullwidth-digits": ("＋１２０２５５５０１２３", "US", "+12025550123"),
    "bidi-marks-from-copy-paste": ("\u202a+1 202 555 0123\u202c", "US", "+12025550123"),
    "label-before-number": ("mobile: (202) 555-0123", "US", "+12025550123"),
}


@pytest.mark.parametrize("raw,region,expected", list(NUMBERS.values()), ids=list(NUMBERS))
def test_numbers_normalise_to_e164(raw, region, expected):
    assert normalise_number(raw, region) == expected


REJECTED = {
    "words": ("xyz", "US"),
    "empty": ("", "US"),
    "too-short": ("12345", "US"),
    "too-long": ("+1202555012345678901", "US"),
    "unassigned-us-area-code-555": ("+1 (555) 123-4567", "US"),
    "unassigned-area-code-national": ("555-123-4567", "US"),
    "national-without-region": ("202-555-0123", None),
    "uk-national-read-as-us": ("07911 123456", "US"),
    "extension": ("+1 202 555 0123 ext. 12", "US"),
    "tel-with-extension": ("tel:+12025550123;ext=5", "US"),
    "sql": ("'; DROP TABLE contacts; --", "US"),
    "html": ("<script>alert(1)</script>", "US"),
    "newline-smuggling": ("+12025550123\nBcc: +12025550124", "US"),
    "nul": ("\x00+12025550123", "US"),
    "trailing-nul": ("+12025550123\x00", "US"),
    "trailing-words": ("202-555-0123 please", "US"),
    "huge": ("9" * 10_000, "US"),
    "unknown-region": ("202-555-0123", "ZZ"),
    "longer-than-e164-allows": ("20100000000000", "DE"),  # phonenumbers calls it valid: 16 digits as E.164
}


@pytest.mark.parametrize("raw,region", list(REJECTED.values()), ids=list(REJECTED))
def test_bad_numbers_are_a_clear_permanent_error(raw, region):
    with pytest.raises(PermanentError) as info:
        normalise_number(raw, region)
    assert info.value.code == "invalid_number"
    assert len(str(info.value)) < 200  # a 10 kB "number" is not echoed back whole
    assert str(info.value).startswith("cannot send to ")


def test_rejection_names_the_number_and_region():
    with pytest.raises(PermanentError, match=r"^cannot send to 'xyz': not a valid phone number for region US$"):
        normalise_number("xyz", "US")
    with pytest.raises(PermanentError, match=r"without a default region \(give a \+country code\)"):
        normalise_number("202-555-0123", None)


@settings(max_examples=400, deadline=None)
@given(raw=st.one_of(st.text(max_size=40),
                     st.from_regex(r"(tel:)?\+?[0-9 ()./-]{0,20}", fullmatch=True)),
       region=st.sampled_from(["US", "GB", "DE", "IN", None, "", "ZZ"]))
def test_normalise_returns_valid_e164_or_a_permanent_error(raw, region):
    try:
        out = normalise_number(raw, region)
    except PermanentError:
        return
    assert E164.match(out), out
    assert phonenumbers.is_valid_number(phonenumbers.parse(out))


# -- params ----------------------------------------------------------------------------------------

def test_params_take_from_by_its_alias_and_reject_unknown_keys():
    assert params(**{"from": "+12025550100"}).from_ == "+12025550100"
    with pytest.raises(ValidationError):
        SendSmsParams.model_validate({"to": "+12025550123", "body": "hi", "cc": "+12025550124"})
    with pytest.raises(ValidationError):
        SendSmsParams.model_validate({"body": "hi"})


@pytest.mark.parametrize("media", [[], ["ftp://example.com/a.png"], ["javascript:alert(1)"], ["https://x/"] * 11])
def test_params_reject_bad_media(media):
    with pytest.raises(ValidationError):
        params(media=media)


# -- body ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [DASH_MAX_BODY, VIRTUALTEXT_MAX_BODY])
def test_body_at_the_limit_passes_and_one_over_is_permanent_naming_the_limit(limit):
    assert prepare_sms(params(body="x" * limit), ctx(), max_body=limit).body == "x" * limit
    with pytest.raises(PermanentError, match=rf"limit of {limit}; truncate it in the rule's template") as info:
        prepare_sms(params(body="x" * (limit + 1)), ctx(), max_body=limit)
    assert info.value.code == "body_too_long"


def test_limit_counts_characters_not_bytes():
    body = "é" * DASH_MAX_BODY  # 1400 bytes in UTF-8, 700 characters
    assert prepare_sms(params(body=body), ctx(), max_body=DASH_MAX_BODY).body == body


def test_body_is_stripped_before_the_limit_applies():
    padded = "  " + "x" * DASH_MAX_BODY + "\n\n"
    assert prepare_sms(params(body=padded), ctx(), max_body=DASH_MAX_BODY).body == "x" * DASH_MAX_BODY


@pytest.mark.parametrize("body", ["", "   ", "\n\t "])
def test_empty_body_is_permanent(body):
    with pytest.raises(PermanentError) as info:
        prepare_sms(params(body=body), ctx(), max_body=DASH_MAX_BODY)
    assert info.value.code == "empty_body"


def test_media_only_where_the_provider_allows_it():
    media = ["https://cdn.example.com/map.png"]
    with pytest.raises(PermanentError) as info:
        prepare_sms(params(media=media), ctx(), max_body=DASH_MAX_BODY)
    assert info.value.code == "media_unsupported"
    prepared = prepare_sms(params(media=media), ctx(), max_body=VIRTUALTEXT_MAX_BODY, allow_media=True)
    assert prepared.media == tuple(media)


def test_numbers_use_the_account_region_and_the_default_sender():
    prepared = prepare_sms(params(to="07911 123456"), ctx(region="GB"), max_body=DASH_MAX_BODY,
                           default_from="+442079460958")
    assert (prepared.to, prepared.from_) == ("+447911123456", "+442079460958")
    explicit = prepare_sms(params(**{"from": "(202) 555-0100"}), ctx(), max_body=DASH_MAX_BODY,
                           default_from="+12025550199")
    assert explicit.from_ == "+12025550100"


def test_a_bad_sender_is_permanent_too():
    with pytest.raises(PermanentError, match="cannot send to 'nobody'"):
        prepare_sms(params(**{"from": "nobody"}), ctx(), max_body=DASH_MAX_BODY)


# -- consent ---------------------------------------------------------------------------------------

def test_opted_out_is_permanent_and_asked_in_e164():
    asked: list[str] = []

    def opted_out(number: str) -> bool:
        asked.append(number)
        return number == "+12025550123"

    with pytest.raises(PermanentError,
                       match=r"\+12025550123 is on the account.s opt-out list \(STOP reply or CRM flag\)") as info:
        prepare_sms(params(to="(202) 555-0123"), ctx(opted_out=opted_out), max_body=DASH_MAX_BODY)
    assert info.value.code == "opted_out"
    assert asked == ["+12025550123"]
    assert prepare_sms(params(to="202-555-0124"), ctx(opted_out=opted_out), max_body=DASH_MAX_BODY)


def test_opt_out_wins_over_quiet_hours():
    # Deferring an opted-out message would only postpone the refusal (and keep it queued all night).
    with pytest.raises(PermanentError) as info:
        prepare_sms(params(), ctx(opted_out=lambda n: True), max_body=DASH_MAX_BODY, quiet_hours="00:00-23:59",
                    now=at(NY, 2025, 1, 15, 12, 0))
    assert info.value.code == "opted_out"


# -- quiet hours -----------------------------------------------------------------------------------

QUIET = {
    # name: (quiet_hours, zone, local clock reading, seconds left or None)
    "overnight-evening": ("21:00-08:00", NY, (2025, 1, 15, 22, 30), 9.5 * 3600),
    "overnight-at-start": ("21:00-08:00", NY, (2025, 1, 15, 21, 0), 11 * 3600),
    "overnight-after-midnight": ("21:00-08:00", NY, (2025, 1, 16, 3, 15), 4.75 * 3600),
    "overnight-one-minute-before-end": ("21:00-08:00", NY, (2025, 1, 16, 7, 59), 60),
    "overnight-at-end-is-open": ("21:00-08:00", NY, (2025, 1, 16, 8, 0), None),
    "overnight-daytime-is-open": ("21:00-08:00", NY, (2025, 1, 16, 12, 0), None),
    "overnight-just-before-start": ("21:00-08:00", NY, (2025, 1, 15, 20, 59), None),
    "same-day-range": ("12:00-14:00", NY, (2025, 1, 15, 13, 0), 3600),
    "same-day-range-outside": ("12:00-14:00", NY, (2025, 1, 15, 14, 0), None),
    # DST: the night clocks spring forward (2025-03-09 02:00 EST -> 03:00 EDT) has one hour less.
    "spring-forward-night": ("21:00-08:00", NY, (2025, 3, 8, 21, 0), 10 * 3600),
    "spring-forward-after-change": ("21:00-08:00", NY, (2025, 3, 9, 4, 0), 4 * 3600),
    # ... and the night they fall back (2025-11-02 02:00 EDT -> 01:00 EST) one hour more.
    "fall-back-night": ("21:00-08:00", NY, (2025, 11, 1, 21, 0), 12 * 3600),
    # An end inside the spring-forward gap (02:30 does not exist that day) is read with the standard
    # offset: 02:30 EST = 03:30 EDT, 3.5 real hours after 23:00 EST.
    "end-inside-spring-gap": ("22:00-02:30", NY, (2025, 3, 8, 23, 0), 3.5 * 3600),
    "london-bst-start-night": ("21:00-08:00", LONDON, (2025, 3, 29, 22, 0), 9 * 3600),
}


@pytest.mark.parametrize("quiet,zone,clock,left", list(QUIET.values()), ids=list(QUIET))
def test_quiet_seconds_left(quiet, zone, clock, left):
    now = at(zone, *clock)
    assert quiet_seconds_left(quiet, str(zone), now) == left
    # The same instant given in UTC gives the same answer: only the account's wall clock matters.
    assert quiet_seconds_left(quiet, str(zone), now.astimezone(timezone.utc)) == left


def test_fall_back_night_at_the_repeated_hour():
    first = datetime(2025, 11, 2, 5, 30, tzinfo=timezone.utc)  # 01:30 EDT
    second = first + timedelta(hours=1)  # 01:30 EST, the same wall time an hour later
    assert quiet_seconds_left("21:00-08:00", "America/New_York", first) == 7.5 * 3600
    assert quiet_seconds_left("21:00-08:00", "America/New_York", second) == 6.5 * 3600


def test_inside_quiet_hours_the_message_is_deferred_not_dropped():
    with pytest.raises(RetryableError) as info:
        prepare_sms(params(), ctx(), max_body=DASH_MAX_BODY, quiet_hours="21:00-08:00",
                    now=at(NY, 2025, 1, 15, 22, 30))
    assert info.value.code == "deferred"
    assert info.value.retry_after == 9.5 * 3600
    assert "quiet hours 21:00-08:00 (America/New_York)" in str(info.value)
    again = pickle.loads(pickle.dumps(info.value))
    assert (type(again), again.code, again.retry_after) == (RetryableError, "deferred", 9.5 * 3600)


def test_deferral_is_at_least_a_minute():
    with pytest.raises(RetryableError) as info:
        prepare_sms(params(), ctx(), max_body=DASH_MAX_BODY, quiet_hours="21:00-08:00",
                    now=at(NY, 2025, 1, 16, 7, 59, 50))
    assert info.value.retry_after == MIN_DEFER_SECONDS


def test_outside_quiet_hours_and_without_them_the_message_passes():
    morning = at(NY, 2025, 1, 16, 9, 0)
    assert prepare_sms(params(), ctx(), max_body=DASH_MAX_BODY, quiet_hours="21:00-08:00", now=morning)
    assert prepare_sms(params(), ctx(timezone="Not/AZone"), max_body=DASH_MAX_BODY, now=morning)


def test_quiet_hours_use_the_account_time_zone():
    utc_evening = datetime(2025, 1, 15, 22, 30, tzinfo=timezone.utc)  # 17:30 in New York, 22:30 in London
    assert prepare_sms(params(), ctx(), max_body=DASH_MAX_BODY, quiet_hours="21:00-08:00", now=utc_evening)
    with pytest.raises(RetryableError):
        prepare_sms(params(), ctx(timezone="Europe/London"), max_body=DASH_MAX_BODY, quiet_hours="21:00-08:00",
                    now=utc_evening)


def test_unknown_time_zone_with_quiet_hours_is_permanent():
    with pytest.raises(PermanentError) as info:
        prepare_sms(params(), ctx(timezone="Mars/Olympus_Mons"), max_body=DASH_MAX_BODY, quiet_hours="21:00-08:00")
    assert info.value.code == "bad_timezone"


class _WithQuietHours(BaseModel):
    quiet_hours: QuietHours = None


@pytest.mark.parametrize("value", ["21:00-08:00", "00:00-06:30", "12:00-13:00", None])
def test_quiet_hours_setting_accepts(value):
    assert _WithQuietHours(quiet_hours=value).quiet_hours == value


@pytest.mark.parametrize("value", ["21-8", "9pm-8am", "24:00-08:00", "21:00-08:60", "21:00 - 08:00", "08:00-08:00",
                                   "21:00", ""])
def test_quiet_hours_setting_rejects(value):
    with pytest.raises(ValidationError):
        _WithQuietHours(quiet_hours=value)
