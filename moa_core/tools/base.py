"""The tool seam: what a tool is, what running one yields, and the runner that never raises.

A tool is a spec (offered to the model) plus an async callable taking the parsed arguments and
returning text. `run_tool` owns the shared limits: JSON parsing, the time limit, the output cap,
and turning every failure into a `ToolOutcome` the model can read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from moa_core.settings import ToolLimits
from moa_core.values import ToolSpec


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What a tool call produced: the result text, or an error text the model can read."""

    ok: bool
    output: str


class ToolError(Exception):
    """A refusal or failure whose message is meant for the model, shown as is."""


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool as the engine holds it. `run` may raise; `run_tool` turns that into an outcome.

    `timeout` overrides the shared limit for this tool (an MCP server's own timeout).
    """

    spec: ToolSpec
    run: Callable[[dict], Awaitable[str]]
    timeout: float | None = None


def parse_arguments(arguments_json: str) -> dict:
    """Parse a model's argument text; empty text means no arguments. Raises ToolError."""
    if not arguments_json.strip():
        return {}
    try:
        value = json.loads(arguments_json)
    except json.JSONDecodeError as e:
        raise ToolError(f"arguments are not valid JSON ({e.msg} at position {e.pos})") from None
    if not isinstance(value, dict):
        raise ToolError(f"arguments must be a JSON object, got {type(value).__name__}")
    return value


def cut_text(text: str, max_chars: int) -> str:
    """Keep the first `max_chars` characters and say how many were cut."""
    if len(text) <= max_chars:
        return text
    cut = len(text) - max_chars
    return f"{text[:max_chars]}\n[output cut: {cut} of {len(text)} characters omitted]"


async def run_tool(tool: Tool, arguments_json: str, limits: ToolLimits) -> ToolOutcome:
    """Run one tool call within `limits`. Never raises, except when the caller is cancelled."""
    name = tool.spec.name
    timeout = limits.timeout if tool.timeout is None else tool.timeout
    deadline = asyncio.timeout(timeout)
    try:
        arguments = parse_arguments(arguments_json)
        async with deadline:
            output = await tool.run(arguments)
    except ToolError as e:
        return ToolOutcome(False, cut_text(f"error: {name}: {e}", limits.max_output_chars))
    except TimeoutError as e:
        if deadline.expired():
            return ToolOutcome(False, f"error: {name} did not finish within {timeout:g} s")
        return ToolOutcome(False, cut_text(f"error: {name} timed out: {e}", limits.max_output_chars))
    except Exception as e:  # a tool bug must not break the turn; the model reads what happened
        detail = str(e) or type(e).__name__
        return ToolOutcome(
            False, cut_text(f"error: {name} failed: {type(e).__name__}: {detail}", limits.max_output_chars)
        )
    if not isinstance(output, str):
        output = str(output)
    return ToolOutcome(True, cut_text(output, limits.max_output_chars))
