"""Trello integration: create_card with plain requests against the REST API (key/token auth)."""

from integrations.trello.integration import CreateCardParams, TrelloConfig, TrelloIntegration

__all__ = ["CreateCardParams", "TrelloConfig", "TrelloIntegration"]
