"""Slack adapter: slack-bolt AsyncApp (Socket Mode or HTTP mode) and slack-sdk's Web API client."""

from adapters.slack.adapter import SlackAdapter
from adapters.slack.settings import SlackSettings

__all__ = ["SlackAdapter", "SlackSettings"]
