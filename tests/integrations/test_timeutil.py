"""The one naive-as-UTC helper (service.events re-exports it)."""

from datetime import datetime, timedelta, timezone

from integrations.timeutil import aware
from service import events


def test_naive_is_read_as_utc_and_aware_is_kept():
    assert aware(datetime(2026, 1, 2, 3, 4)) == datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
    plus_two = datetime(2026, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=2)))
    assert aware(plus_two) is plus_two


def test_service_code_uses_the_same_helper():
    assert events.aware is aware
