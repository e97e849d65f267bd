"""Time helpers shared by integrations and (through service.events) the service."""

from __future__ import annotations

from datetime import datetime, timezone


def aware(moment: datetime) -> datetime:
    """``moment`` as an aware datetime, reading a naive one as UTC (SQLite, webhook and HTTP-date values carry
    UTC without saying so; reading them as server-local time would shift them)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
