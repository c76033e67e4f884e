"""The configured MCP servers as tools: preset entries, model-facing names, limits, status.

A preset's `tools` names MCP tools as `"mcp:NAME"` (every tool of server NAME) or
`"mcp:NAME/TOOL"` (one); the model sees `NAME__TOOL`. `tools_for` resolves a preset's entries
against the servers' current tool lists at the start of each turn. Each tool runs with its
server's timeout, and a long result is cut to the tool output limit keeping head and tail,
with the cut stated. A server that is down still offers the tools it had (or, never having
started, the tools a preset names one by one); calling one answers a clear tool error.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moa_core.settings import ToolLimits
from moa_core.tools.base import Tool
from moa_core.tools.mcp_settings import McpServerSettings
from moa_core.values import ToolSpec

if TYPE_CHECKING:
    from moa_core.tools.mcp import McpConnection

PREFIX = "mcp:"
_WIRE_NAME = re.compile(r"[^A-Za-z0-9_-]")
_MAX_NAME = 64  # the longest tool name the providers' wire formats accept
_MAX_DESCRIPTION = 1024
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def parse_entry(entry: str) -> tuple[str, str | None] | None:
    """`"mcp:NAME"` -> (NAME, None); `"mcp:NAME/TOOL"` -> (NAME, TOOL); anything else -> None."""
    if not entry.startswith(PREFIX):
        return None
    server, _, tool = entry.removeprefix(PREFIX).partition("/")
    return server, (tool or None)


def exposed_name(server: str, tool: str) -> str:
    """The name the model sees: NAME__TOOL, limited to the characters and length wires accept."""
    return _WIRE_NAME.sub("_", f"{server}__{tool}")[:_MAX_NAME]


def cut_head_tail(text: str, max_chars: int) -> str:
    """Keep the head and the tail within `max_chars` in all, stating how much was cut."""
    if len(text) <= max_chars:
        return text
    marker = f"\n[result cut: {{}} of {len(text)} characters omitted from the middle]\n"
    keep = max(0, max_chars - len(marker.format(len(text))))
    head = keep // 2 + keep % 2
    tail = keep // 2
    return text[:head] + marker.format(len(text) - keep) + (text[len(text) - tail:] if tail else "")


@dataclass(frozen=True, slots=True)
class ToolListing:
    """One tool a preset can use, for `moa-gateway tools`."""

    name: str
    source: str  # "built-in" or "mcp:NAME (stdio|http)"
    description: str
    up: bool
    note: str = ""  # why the server is down, or that a named tool is missing


class McpToolbox:
    """All configured MCP servers: started and stopped together, resolved into tools per turn."""

    def __init__(self, servers: Mapping[str, McpServerSettings], env: Mapping[str, str], limits: ToolLimits,
                 **connection_options: Any):
        if servers:  # the SDK is imported only by a gateway that has servers (moa_core.tools.mcp_settings)
            from moa_core.tools.mcp import McpConnection
        self.connections = {name: McpConnection(s, env, **connection_options) for name, s in servers.items()}
        self._limits = limits

    async def start(self) -> None:
        """Start every server at once; wait for each one's first try (up to its timeout)."""
        await asyncio.gather(*(c.start() for c in self.connections.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.connections.values()))

    def tools_for(self, entries: Sequence[str]) -> dict[str, Tool]:
        """The MCP tools a preset's `tools` entries name, by the names the model sees."""
        out: dict[str, Tool] = {}
        for entry in entries:
            parsed = parse_entry(entry)
            if parsed is None or parsed[0] not in self.connections:
                continue
            connection = self.connections[parsed[0]]
            for tool in self._resolve(connection, parsed[1]):
                out.setdefault(tool.spec.name, tool)
        return out

    def _resolve(self, connection: McpConnection, only: str | None) -> list[Tool]:
        known = {tool.name: tool for tool in connection.tools}
        if only is None:
            return [self._tool(connection, t.name, t.description or "", t.input_schema) for t in known.values()]
        if only in known:
            t = known[only]
            return [self._tool(connection, t.name, t.description or "", t.input_schema)]
        if connection.state != "up" and not connection.listed:
            # Never listed: offer the named tool so a call answers why the server is not there.
            return [self._tool(connection, only, f"Tool '{only}' of MCP server '{connection.name}'.", _EMPTY_SCHEMA)]
        return []

    def _tool(self, connection: McpConnection, tool: str, description: str, schema: dict[str, Any]) -> Tool:
        limit = self._limits.max_output_chars

        async def run(arguments: dict) -> str:
            return cut_head_tail(await connection.call(tool, arguments), limit)

        spec = ToolSpec(exposed_name(connection.name, tool), description[:_MAX_DESCRIPTION],
                        schema if schema.get("type") == "object" else _EMPTY_SCHEMA)
        # A little over the server's timeout: the SDK's own request timeout answers first, clearly.
        return Tool(spec, run, timeout=connection.settings.timeout + 5.0)

    def listing(self, entries: Sequence[str]) -> list[ToolListing]:
        """What `moa-gateway tools` shows for a preset's MCP entries."""
        out: list[ToolListing] = []
        for entry in entries:
            parsed = parse_entry(entry)
            if parsed is None or parsed[0] not in self.connections:
                continue
            connection = self.connections[parsed[0]]
            up = connection.state == "up"
            source = f"{PREFIX}{connection.name} ({connection.settings.transport})"
            note = "" if up else connection.down_text()
            tools = self._resolve(connection, parsed[1])
            for tool in tools:
                out.append(ToolListing(tool.spec.name, source, tool.spec.description, up, note))
            if not tools:
                name = exposed_name(connection.name, parsed[1]) if parsed[1] else f"{connection.name}__*"
                missing = (f"the server has no tool '{parsed[1]}'" if up and parsed[1]
                           else "the server lists no tools" if up else note)
                out.append(ToolListing(name, source, "", up, missing))
        return out
