"""The account pages of the console, one module per section; ``register`` adds them to the /console blueprint."""

from __future__ import annotations

from flask import Blueprint

from service.config import Settings
from service.console.pages import connections, overview
from service.console.pages import settings as settings_page
from service.runtime import Runtime


def register(bp: Blueprint, settings: Settings, runtime: Runtime) -> None:
    """Add every section's routes to the console blueprint."""
    for section in (overview, connections, settings_page):
        section.register(bp, settings, runtime)
