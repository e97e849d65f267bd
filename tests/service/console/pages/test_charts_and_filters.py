"""The plain functions behind the pages: chart geometry and reading a list's query string."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from werkzeug.datastructures import MultiDict

from service.console.errors import ConsoleError
from service.console.pages import charts, filters


def test_stacked_chart_geometry():
    """Bars stack bottom-up in the preferred order, the tallest fills the plot, empty hours have no segments."""
    chart = charts.stacked_chart(["08", "09", "10"], [{"missed": 1, "answered": 3}, {}, {"answered": 2, "odd": 2}],
                                 ("answered", "missed"), width=330, height=120, top=10, bottom=20, left=30)
    first, empty, third = chart.columns
    assert [s.key for s in first.segments] == ["answered", "missed"] and empty.segments == []
    assert first.segments[0].start + first.segments[0].size == 100  # sits on the baseline (height - bottom)
    assert first.segments[1].start == 10 and first.total == 4  # the tallest bar reaches the top of the plot
    assert third.segments[1].colour == charts.GREY  # an unknown series is grey, not missing
    assert chart.legend[:2] == [("answered", charts.COLOURS["answered"]), ("missed", charts.COLOURS["missed"])]
    assert [t for t, _ in chart.ticks] == [0, 2, 4]
    assert charts.stacked_chart(["00"], [{}], ()).ticks == [(0, 198)]


def test_share_bar_adds_up_to_the_whole():
    """A connection's deliveries split into percentages in status order."""
    bar = charts.share_bar({"failed": 1, "succeeded": 3}, ("succeeded", "failed"))
    assert [(s.key, s.start, s.size) for s in bar] == [("succeeded", 0.0, 75.0), ("failed", 75.0, 25.0)]


def test_delivery_filter_from_a_query_string():
    """Repeated statuses, the rule field, and local times in the account's zone become the history filter."""
    flt = filters.delivery_filter(MultiDict([("status", "failed"), ("status", "dead"), ("rule", "r"),
                                             ("since", "2026-11-28T09:00")]), "America/New_York")
    assert flt.status == ("failed", "dead") and flt.rule_name == "r"
    assert flt.since == datetime(2026, 11, 28, 14, 0, tzinfo=timezone.utc)
    day = filters.local_bound("until", "2026-11-28", "UTC")
    assert day == datetime(2026, 11, 28, tzinfo=timezone.utc)
    for bad in ("yesterday", "2026-13-01", "9" * 50):
        with pytest.raises(ConsoleError, match="^since: "):
            filters.local_bound("since", bad, "UTC")


def test_pager_query_string_keeps_only_the_lists_fields():
    """The "Older" link keeps the filter, replaces the cursor and drops foreign parameters."""
    args = MultiDict([("status", "failed"), ("status", "dead"), ("cursor", "old"), ("evil", "x")])
    assert filters.query_string(args, filters.DELIVERY_FIELDS, cursor="new") == "status=failed&status=dead&cursor=new"
