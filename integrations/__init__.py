"""The explicit integration registry: one line per integration, keyed by its folder name."""

from __future__ import annotations

from integrations.base import Integration
from integrations.google_sheets import GoogleSheetsIntegration
from integrations.slack import SlackIntegration
from integrations.trello import TrelloIntegration
from integrations.virtualpbx import VirtualPBXIntegration
from integrations.virtualtext import VirtualTextIntegration

REGISTRY: dict[str, type[Integration]] = {
    cls.key: cls
    for cls in (
        SlackIntegration,
        GoogleSheetsIntegration,
        TrelloIntegration,
        VirtualPBXIntegration,
        VirtualTextIntegration,
    )
}
