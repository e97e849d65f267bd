"""Slack integration: chat.postMessage with a bot token, or an incoming webhook."""

from integrations.slack.integration import PostMessageParams, SlackConfig, SlackIntegration

__all__ = ["PostMessageParams", "SlackConfig", "SlackIntegration"]
