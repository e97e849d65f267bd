"""HTTP details shared by the integration clients."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


def retry_after_seconds(value: str | None, default: float, *, longest: float = math.inf) -> float:
    """Seconds a Retry-After value asks for (delta-seconds or an HTTP date); ``default`` when absent, unreadable,
    not positive or over ``longest``."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return default
    return seconds if 0 < seconds <= longest else default
