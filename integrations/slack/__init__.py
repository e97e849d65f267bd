"""Slack integration: chat.postMessage with a bot token, or an incoming webhook."""

from integrations.slack.client import PostMessageParams, SlackConfig, SlackIntegration

__all__ = ["PostMessageParams", "SlackConfig", "SlackIntegration"]
