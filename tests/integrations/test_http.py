"""The one Retry-After parser every integration uses."""

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from integrations.http import LONGEST_RETRY_AFTER, retry_after_seconds


@pytest.mark.parametrize("value, expected", [("5", 5.0), ("0.5", 0.5), (" 7 ", 7.0), (b"3", 3.0)])
def test_delta_seconds(value, expected):
    assert retry_after_seconds(value) == expected


def test_http_date_in_the_future():
    when = datetime.now(timezone.utc) + timedelta(seconds=120)
    assert 100 < retry_after_seconds(format_datetime(when, usegmt=True)) <= 120


@pytest.mark.parametrize("value", [None, "", "  ", "0", "-3", "soon", "nan", "inf", "-inf",
                                   "Wed, 21 Oct 2015 07:28:00 GMT", "Mon, 99 Foo 2015", [], 5])
def test_absent_past_negative_or_garbage_is_none(value):
    assert retry_after_seconds(value) is None


def test_a_huge_value_is_capped_not_ignored():
    assert retry_after_seconds("999999") == LONGEST_RETRY_AFTER
    assert retry_after_seconds("90", longest=60) == 60


@pytest.mark.parametrize("headers", [{"Retry-After": "4"}, {"retry-after": "4"}, {"RETRY-AFTER": ["4", "9"]},
                                     {"Content-Type": "text/plain", "Retry-After": ("4",)}])
def test_header_maps_of_any_case_and_list_values(headers):
    assert retry_after_seconds(headers) == 4.0


def test_header_map_without_it_is_none():
    assert retry_after_seconds({"Content-Type": "application/json"}) is None
    assert retry_after_seconds({}) is None


def test_http_date_without_a_zone_is_read_as_utc():
    when = datetime.now(timezone.utc) + timedelta(seconds=120)
    naive_form = when.strftime("%a, %d %b %Y %H:%M:%S -0000")  # RFC 2822's "no zone information"
    assert 100 < retry_after_seconds(naive_form) <= 120
