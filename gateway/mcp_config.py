"""The `[mcp.NAME]` config sections and the `mcp:` entries of a preset's `tools`, validated.

gateway/config.py calls these with its table readers, so every error names the file and key.
A section is a stdio server (`command` + `env_from`) or a streamable HTTP one (`url` +
`headers_env`); secrets are named, never written inline.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from moa_core.tools.mcp_settings import SERVER_NAME, McpServerSettings
from moa_core.tools.mcp_toolbox import PREFIX, parse_entry

_KEYS = ("command", "env_from", "url", "headers_env", "timeout", "start_timeout")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def mcp_servers(top: Any, section: Callable[[str, Any], Any]) -> dict[str, McpServerSettings]:
    """`top` reads the `mcp` table; `section(key, table)` makes a reader for one `[mcp.NAME]`."""
    out: dict[str, McpServerSettings] = {}
    for name, table in top.table.items():
        if not SERVER_NAME.match(name) or "__" in name:
            raise top.error(name, "a server name is letters, digits, '-' and '_' (no '__'): the model sees "
                                  "its tools as NAME__TOOL")
        r = section(f"mcp.{name}", table)
        r.known(*_KEYS)
        command = r.strings("command")
        url = r.text("url")
        if "command" in r.table and not command:
            raise r.error("command", "must name the program to run")
        if bool(command) == (url is not None):
            raise r.error("command", "set exactly one of command = [\"program\", \"arg\", ...] (a stdio "
                                     "server) or url = \"https://...\" (a streamable HTTP server)")
        if url is not None and not url.startswith(("http://", "https://")):
            raise r.error("url", f"must start with http:// or https://, got {url!r}")
        env_from = r.strings("env_from")
        if env_from and url is not None:
            raise r.error("env_from", "applies to stdio servers (command); an HTTP server takes headers_env")
        for variable in env_from:
            if not _VARIABLE.match(variable):
                raise r.error("env_from", f"{variable!r} is not the NAME of an environment variable")
        headers = r.get("headers_env", dict, {})
        if headers and url is None:
            raise r.error("headers_env", "applies to HTTP servers (url); a stdio server takes env_from")
        for header, variable in headers.items():
            if not isinstance(variable, str) or not _VARIABLE.match(variable):
                raise r.error(f"headers_env.{header}", "must be the NAME of an environment variable holding "
                                                       "the header's value")
        out[name] = McpServerSettings(
            name=name,
            command=command,
            env_from=env_from,
            url=url,
            headers_env=tuple(headers.items()),
            timeout=r.number("timeout", 30.0, positive=True),
            start_timeout=r.number("start_timeout", 30.0, positive=True),
        )
    return out


def tool_entry_problem(entry: str, builtins: Sequence[str], servers: Mapping[str, McpServerSettings]) -> str | None:
    """Why a preset's `tools` entry is not usable, or None when it is."""
    parsed = parse_entry(entry)
    if parsed is None:
        if entry in builtins:
            return None
        mcp = ", ".join(f"{PREFIX}{name}" for name in servers)
        return f"unknown tool {entry!r} (available: {', '.join(builtins)}{', ' + mcp if mcp else ''})"
    server, tool = parsed
    if server not in servers:
        known = ", ".join(sorted(servers)) or "none; add an [mcp.NAME] section"
        return f"{entry!r} names MCP server '{server}', which is not configured (configured: {known})"
    if tool is not None and not tool.strip():
        return f"{entry!r}: the tool name after '/' is empty"
    if "/" in entry.removeprefix(PREFIX) and tool is None:
        return f"{entry!r}: the tool name after '/' is empty"
    return None
