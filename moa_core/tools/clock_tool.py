"""The `current_time` tool: the injected clock's time in a named IANA time zone."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from moa_core.clock import Clock
from moa_core.tools.base import Tool, ToolError
from moa_core.values import ToolSpec

SPEC = ToolSpec(
    name="current_time",
    description="The current date and time (ISO-8601) and weekday, in UTC or a given IANA time zone.",
    parameters={
        "type": "object",
        "properties": {
            "timezone": {
                "type": "string",
                "description": "IANA time zone name such as Europe/Paris or America/New_York; default UTC.",
            }
        },
    },
)


def zone_named(name: str) -> ZoneInfo:
    """The IANA zone `name`; raises ToolError with a readable message when there is none."""
    if name.upper() in ("UTC", "Z"):
        name = "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: malformed keys ("..", absolute paths) or non-TZif files; OSError: directories.
        raise ToolError(
            f"unknown time zone {name!r}; use an IANA name such as UTC, Europe/Berlin or Asia/Tokyo"
        ) from None


def current_time_tool(clock: Clock) -> Tool:
    async def run(arguments: dict) -> str:
        name = arguments.get("timezone") or "UTC"
        if not isinstance(name, str):
            raise ToolError("argument 'timezone' must be a string")
        local = clock.now().astimezone(zone_named(name.strip()))
        return f"{local.isoformat(timespec='seconds')} ({local.strftime('%A')}, {name.strip()})"

    return Tool(SPEC, run)
