"""`moa-gateway tools` and the MCP part of `check-config`.

`tools` starts the MCP servers the presets use (as `run` would), and lists every tool each
preset offers the aggregator: its name as the model sees it, its source, whether its server is
up, and its description. `mcp_problems` names unset variables and missing programs without
starting anything.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import TextIO

from gateway.config import Config
from gateway.runtime import build_engine
from moa_core.clock import SystemClock
from moa_core.tools import builtin_tools
from moa_core.tools.mcp_toolbox import ToolListing, parse_entry


def mcp_problems(config: Config, env: Mapping[str, str]) -> list[str]:
    """Lines naming each unset variable and each program not found, by config key."""
    problems = []
    for name, server in config.mcp.items():
        for variable in server.env_from:
            if not env.get(variable, "").strip():
                problems.append(f"environment variable {variable} is not set (mcp.{name}.env_from)")
        for header, variable in server.headers_env:
            if not env.get(variable, "").strip():
                problems.append(f"environment variable {variable} is not set (mcp.{name}.headers_env.{header})")
        if server.command:
            program = server.command[0]
            found = os.path.exists(program) if os.sep in program else shutil.which(program, path=env.get("PATH"))
            if not found:
                problems.append(f"program {program!r} not found (mcp.{name}.command)")
    return problems


async def preset_tools(config: Config, env: Mapping[str, str], only: str | None = None
                       ) -> dict[str, list[ToolListing]]:
    """Each preset's tools, in the order its `tools` entries name them, with the servers started."""
    runtime = build_engine(config, env=env)
    try:
        await runtime.start()
        builtins = builtin_tools(config.engine.tool_limits, runtime.fetch_http, SystemClock())
        out: dict[str, list[ToolListing]] = {}
        for name, preset in config.engine.presets.items():
            if only is not None and name != only:
                continue
            rows: list[ToolListing] = []
            for entry in preset.tools:
                if entry in builtins:
                    rows.append(ToolListing(entry, "built-in", builtins[entry].spec.description, True))
                elif parse_entry(entry) is not None and runtime.mcp is not None:
                    rows.extend(runtime.mcp.listing([entry]))
            out[name] = rows
        return out
    finally:
        await runtime.aclose()


def print_tools(listings: Mapping[str, list[ToolListing]], out: TextIO) -> None:
    for preset, rows in listings.items():
        print(f"{preset}: {len(rows)} tool(s)" if rows else f"{preset}: no tools", file=out)
        name_width = max((len(r.name) for r in rows), default=0)
        source_width = max((len(r.source) for r in rows), default=0)
        for row in rows:
            state = "DOWN" if not row.up else "none" if row.note else "up  "  # none: no such tool
            text = row.note if row.note else _first_line(row.description)
            print(f"  {row.name:<{name_width}}  {row.source:<{source_width}}  {state}  {text}".rstrip(), file=out)


def listings_json(listings: Mapping[str, list[ToolListing]]) -> dict:
    return {"presets": {preset: [{"name": r.name, "source": r.source, "description": r.description,
                                  "up": r.up, "note": r.note or None} for r in rows]
                        for preset, rows in listings.items()}}


def _first_line(text: str, width: int = 90) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"
