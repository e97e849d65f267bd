"""Kazoo's clock: seconds since 0000-01-01 UTC ("Gregorian seconds"), as its API and hooks send them."""

from __future__ import annotations

from datetime import datetime, timezone

# Kazoo counts seconds from 0000-01-01 UTC (Gregorian seconds); Python's datetime starts at year 1.
GREGORIAN_UNIX_OFFSET = 62167219200


def gregorian_to_datetime(value: int | float | str) -> datetime:
    """Convert Kazoo Gregorian seconds to an aware UTC datetime; ValueError when it is not a sane time."""
    seconds = float(value)
    unix = seconds - GREGORIAN_UNIX_OFFSET
    if not 0 <= unix < 32503680000:  # 1970 .. 3000: anything else is not a Gregorian timestamp
        raise ValueError(f"not a Gregorian timestamp: {value!r}")
    return datetime.fromtimestamp(unix, tz=timezone.utc)


def datetime_to_gregorian(moment: datetime) -> int:
    """Convert an aware datetime to Kazoo Gregorian seconds."""
    return int(moment.timestamp()) + GREGORIAN_UNIX_OFFSET
