"""Built-in tools the aggregator may call, and the runner that applies their limits.

`builtin_tools` builds the three built-ins over the fetch tool's own HTTP client
(`make_fetch_client`: it connects only to vetted addresses) and the injected clock;
presets pick from them by name (an allow-list). `run_tool` never raises: every failure becomes
a `ToolOutcome(ok=False)` whose text the model can read.
"""

from __future__ import annotations

from moa_core.clock import Clock
from moa_core.settings import ToolLimits
from moa_core.tools.base import Tool, ToolError, ToolOutcome, run_tool
from moa_core.tools.calculator import calculator_tool
from moa_core.tools.clock_tool import current_time_tool
from moa_core.tools.fetch import FetchClient, fetch_url_tool, make_fetch_client

__all__ = ["FetchClient", "Tool", "ToolError", "ToolOutcome", "builtin_tools", "make_fetch_client", "run_tool"]


def builtin_tools(limits: ToolLimits, http: FetchClient, clock: Clock) -> dict[str, Tool]:
    """The built-in tools by name: fetch_url, calculator, current_time."""
    tools = (fetch_url_tool(limits, http), calculator_tool(), current_time_tool(clock))
    return {tool.spec.name: tool for tool in tools}
