"""Slack adapter: slack-bolt AsyncApp (Socket Mode or HTTP mode) and slack-sdk's Web API client.

`settings` holds the `[slack]` section, `normalize` reads events and slash commands into
`InboundMessage`s, `render` turns outbound values into payloads, `delivery` posts, updates and
retries them, and `adapter` runs the connection and reads what comes in.
"""

from adapters.slack.adapter import SlackAdapter
from adapters.slack.settings import SlackSettings

__all__ = ["SlackAdapter", "SlackSettings"]
