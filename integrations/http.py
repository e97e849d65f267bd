"""HTTP details shared by the integration clients."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from integrations.timeutil import aware

# No vendor has a reason to make us wait longer than an hour; a bigger hint is capped, not ignored.
LONGEST_RETRY_AFTER = 3600.0


def retry_after_seconds(source: str | Mapping[str, Any] | None, *,
                        longest: float = LONGEST_RETRY_AFTER) -> float | None:
    """Seconds a Retry-After asks for, from the header value or a header map; None when absent or unreadable.

    Takes delta-seconds or an HTTP date (RFC 9110 §10.2.3); a zero, negative, past or garbage value is None
    (the caller picks its vendor's default), and a value over ``longest`` is capped to it.
    """
    value = _header(source, "retry-after") if isinstance(source, Mapping) else source
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (aware(parsedate_to_datetime(value)) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError, IndexError):
            return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return min(seconds, longest)


def _header(headers: Mapping[str, Any], name: str) -> Any:
    """A header's value from any header map (case-insensitive; slack_sdk hands over lists of values)."""
    for key, raw in headers.items():
        if isinstance(key, str) and key.lower() == name:
            return raw[0] if isinstance(raw, (list, tuple)) and raw else raw
    return None
