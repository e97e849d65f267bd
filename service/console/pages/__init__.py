"""The account pages of the console, one module per section; ``register`` adds them to the /console blueprint."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from flask import Blueprint, g

from service.config import Settings
from service.console.pages import calls, connections, deliveries, overview
from service.console.pages import settings as settings_page
from service.events import aware
from service.runtime import Runtime


def local_time(value: datetime | None, tz: str | None = None) -> str:
    """A stored time in the account's zone (the page's), to the second; naive values are UTC."""
    if value is None:
        return ""
    zone = ZoneInfo(tz or g.get("account_tz") or "UTC")
    return aware(value).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def short_time(value: datetime | None) -> str:
    """A stored time in the account's zone, short for lists: the time alone when it is today, else with the date."""
    if value is None:
        return ""
    zone = ZoneInfo(g.get("account_tz") or "UTC")
    local = aware(value).astimezone(zone)
    return local.strftime("%H:%M:%S" if local.date() == datetime.now(zone).date() else "%Y-%m-%d %H:%M")


def iso_time(value: datetime | None) -> str:
    """A stored time as ISO 8601 UTC, for <time datetime=...>."""
    return aware(value).isoformat() if value is not None else ""


def register(bp: Blueprint, settings: Settings, runtime: Runtime) -> None:
    """Add every section's routes and the pages' template filters to the console blueprint."""
    bp.add_app_template_filter(local_time, "localtime")
    bp.add_app_template_filter(iso_time, "isotime")
    bp.add_app_template_filter(short_time, "shorttime")
    for section in (overview, calls, deliveries, connections, settings_page):
        section.register(bp, settings, runtime)
