"""What a `[mcp.NAME]` section configures, apart from the SDK that connects to it.

Config validation (gateway/mcp_config.py) and the toolbox read these values; importing them
must not import the `mcp` SDK (about 0.3 s and its pydantic models at start-up), which only a
gateway with MCP servers configured needs: `moa_core.tools.mcp` imports it, when a server starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A server name is a prefix of the names the model sees ("search" -> "search__web_search").
SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class McpServerSettings:
    """A `[mcp.NAME]` section: a stdio `command` or a streamable HTTP `url` (exactly one).

    `env_from` names variables passed to a stdio server; `headers_env` maps an HTTP header to
    the variable holding its value. Values are read from the environment at connect time.
    """

    name: str
    command: tuple[str, ...] = ()
    env_from: tuple[str, ...] = ()
    url: str | None = None
    headers_env: tuple[tuple[str, str], ...] = ()
    timeout: float = 30.0  # each call, each tool listing, each ping
    start_timeout: float = 30.0  # from spawn or connect to the first tool list

    @property
    def transport(self) -> str:
        return "http" if self.url else "stdio"


__all__ = ["SERVER_NAME", "McpServerSettings"]
