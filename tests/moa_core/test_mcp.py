"""MCP tool servers against a real MCP server (the SDK's MCPServer) over stdio and streamable HTTP.

The fake in tests/fakes/mcp_server.py runs as a subprocess (stdio) or on 127.0.0.1 (HTTP). Each
test starts a toolbox, resolves a preset's entries into tools and runs them through `run_tool`,
as the engine does.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp.client.stdio import DEFAULT_INHERITED_ENV_VARS

from moa_core.settings import ToolLimits
from moa_core.tools import run_tool
from moa_core.tools.mcp_settings import McpServerSettings
from moa_core.tools.mcp_toolbox import McpToolbox, cut_head_tail, exposed_name, parse_entry
from tests.fakes.mcp_server import serve_http

FAKE = str(Path(__file__).resolve().parents[1] / "fakes" / "mcp_server.py")
LIMITS = ToolLimits(max_output_chars=1000)
FAST = {"backoff": (0.05, 0.2), "ping_interval": 0.2}


def stdio(name: str = "fake", *, env_from: tuple[str, ...] = (), timeout: float = 10.0,
          command: tuple[str, ...] | None = None, start_timeout: float = 30.0) -> McpServerSettings:
    return McpServerSettings(name, command=command or (sys.executable, FAKE, name), env_from=env_from,
                             timeout=timeout, start_timeout=start_timeout)


@pytest.fixture
async def toolboxes() -> AsyncIterator[list[McpToolbox]]:
    started: list[McpToolbox] = []
    yield started
    for box in started:
        await box.stop()


async def start(toolboxes: list[McpToolbox], *servers: McpServerSettings, env: dict | None = None,
                limits: ToolLimits = LIMITS) -> McpToolbox:
    box = McpToolbox({s.name: s for s in servers}, env or {}, limits, **FAST)
    toolboxes.append(box)
    await box.start()
    return box


async def call(box: McpToolbox, entries: list[str], name: str, arguments: dict | None = None):
    tools = box.tools_for(entries)
    assert name in tools, f"{name} not offered; offered: {sorted(tools)}"
    return await run_tool(tools[name], json.dumps(arguments or {}), LIMITS)


async def eventually(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def test_entries_and_names() -> None:
    assert parse_entry("mcp:search") == ("search", None)
    assert parse_entry("mcp:search/web_search") == ("search", "web_search")
    assert parse_entry("calculator") is None
    assert exposed_name("search", "web_search") == "search__web_search"
    assert exposed_name("wiki", "page.get") == "wiki__page_get"
    assert len(exposed_name("s", "x" * 100)) == 64


def test_cut_keeps_head_and_tail_and_says_so() -> None:
    text = "A" * 3000 + "Z" * 3000
    cut = cut_head_tail(text, 1000)
    assert len(cut) <= 1000
    assert cut.startswith("AAAA") and cut.endswith("ZZZZ")
    assert "characters omitted from the middle" in cut and "of 6000" in cut
    assert cut_head_tail("short", 1000) == "short"


async def test_stdio_server_tools_are_offered_and_answer(toolboxes) -> None:
    box = await start(toolboxes, stdio())
    tools = box.tools_for(["mcp:fake"])
    assert {"fake__echo", "fake__environment", "fake__crash", "fake__hang"} <= set(tools)
    spec = tools["fake__echo"].spec
    assert spec.description.startswith("Echo the text back")
    assert spec.parameters["properties"]["text"]["type"] == "string"
    outcome = await call(box, ["mcp:fake/echo"], "fake__echo", {"text": "hello"})
    assert outcome.ok and outcome.output == "fake echoes: hello"
    assert list(box.tools_for(["mcp:fake/echo"])) == ["fake__echo"]


async def test_http_server_tools_answer(toolboxes) -> None:
    async with serve_http("web") as url:
        box = await start(toolboxes, McpServerSettings("web", url=url, timeout=10))
        assert box.connections["web"].state == "up"
        outcome = await call(box, ["mcp:web"], "web__echo", {"text": "over http"})
        assert outcome.ok and outcome.output == "web echoes: over http"
        await box.stop()


async def test_tool_error_and_long_result(toolboxes) -> None:
    box = await start(toolboxes, stdio())
    failed = await call(box, ["mcp:fake"], "fake__fail", {"reason": "no such page"})
    assert not failed.ok and failed.output == "error: fake__fail: Error executing tool fail: no such page"
    big = await call(box, ["mcp:fake"], "fake__big", {"chars": 50_000})
    assert big.ok and len(big.output) <= LIMITS.max_output_chars
    assert big.output.startswith("AAA") and big.output.endswith("ZZZ")
    assert "omitted from the middle" in big.output


async def test_child_environment_holds_only_named_variables(toolboxes, monkeypatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "bot-secret-in-the-gateway-env")
    env = {"SEARCH_API_KEY": "search-key", "OTHER_SECRET": "other", **os.environ}
    box = await start(toolboxes, stdio(env_from=("SEARCH_API_KEY", "UNSET_VAR")), env=env)
    outcome = await call(box, ["mcp:fake"], "fake__environment")
    child = json.loads(outcome.output)
    assert child["SEARCH_API_KEY"] == "search-key"
    assert "TELEGRAM_BOT_TOKEN" not in child and "OTHER_SECRET" not in child
    # Python may coerce a C locale by setting LC_CTYPE in its own environment (PEP 538).
    extra = set(child) - {"SEARCH_API_KEY", *DEFAULT_INHERITED_ENV_VARS, "LC_CTYPE"}
    assert extra == set()
    assert "PATH" in child


async def test_crash_mid_call_is_a_tool_error_then_the_server_is_restarted(toolboxes) -> None:
    box = await start(toolboxes, stdio())
    crashed = await call(box, ["mcp:fake"], "fake__crash")
    assert not crashed.ok
    assert "MCP server 'fake' closed the connection during the call; it is being restarted" in crashed.output
    connection = box.connections["fake"]
    await eventually(lambda: connection.state != "up")
    down = await call(box, ["mcp:fake"], "fake__echo", {"text": "x"})
    if not down.ok:  # the restart may already be done; if not, the answer says why
        assert "MCP server 'fake' is" in down.output
    await eventually(lambda: connection.state == "up" and connection.generation == 2)
    again = await call(box, ["mcp:fake"], "fake__echo", {"text": "back"})
    assert again.ok and again.output == "fake echoes: back"


async def test_hang_past_the_timeout_is_a_tool_error_and_the_server_stays_up(toolboxes) -> None:
    box = await start(toolboxes, stdio(timeout=0.5))
    hung = await call(box, ["mcp:fake"], "fake__hang")
    assert hung == type(hung)(False, "error: fake__hang: MCP server 'fake' did not answer within 0.5 s "
                                     "(the call was cancelled)")
    assert box.connections["fake"].state == "up"
    outcome = await call(box, ["mcp:fake"], "fake__echo", {"text": "still here"})
    assert outcome.ok


@pytest.mark.parametrize("command", [("no-such-mcp-server-binary",), (sys.executable, "-c", "raise SystemExit(2)")])
async def test_a_server_that_never_starts_answers_a_clear_error(toolboxes, command) -> None:
    box = await start(toolboxes, stdio("broken", command=command, start_timeout=5))
    connection = box.connections["broken"]
    assert connection.state == "down" and connection.error
    assert box.tools_for(["mcp:broken"]) == {}  # its tools are not known yet
    outcome = await call(box, ["mcp:broken/echo"], "broken__echo", {"text": "x"})
    assert not outcome.ok
    assert outcome.output.startswith("error: broken__echo: MCP server 'broken' is")
    assert "restarted" in outcome.output or "starting" in outcome.output
    if command[0] == "no-such-mcp-server-binary":
        assert "no-such-mcp-server-binary" in connection.error


async def test_a_server_that_never_answers_initialize_times_out(toolboxes) -> None:
    silent = (sys.executable, "-c", "import time; time.sleep(60)")
    box = await start(toolboxes, stdio("silent", command=silent, start_timeout=0.5))
    await eventually(lambda: box.connections["silent"].error is not None)
    assert "initialize" in box.connections["silent"].error


async def test_http_server_not_listening_is_down(toolboxes) -> None:
    box = await start(toolboxes, McpServerSettings("gone", url="http://127.0.0.1:9/mcp", start_timeout=5))
    assert box.connections["gone"].state == "down"
    outcome = await call(box, ["mcp:gone/search"], "gone__search")
    assert not outcome.ok and "MCP server 'gone' is" in outcome.output


async def test_tool_list_changed_is_read_again(toolboxes) -> None:
    box = await start(toolboxes, stdio())
    assert "fake__extra" not in box.tools_for(["mcp:fake"])
    grown = await call(box, ["mcp:fake"], "fake__grow")
    assert grown.ok
    await eventually(lambda: "fake__extra" in box.tools_for(["mcp:fake"]))
    outcome = await call(box, ["mcp:fake"], "fake__extra")
    assert outcome.ok and outcome.output == "extra here"


async def test_stop_ends_an_in_flight_call_with_a_tool_error(toolboxes) -> None:
    box = await start(toolboxes, stdio())
    pending = asyncio.create_task(call(box, ["mcp:fake"], "fake__hang"))
    await asyncio.sleep(0.3)
    await box.stop()
    outcome = await asyncio.wait_for(pending, 5)
    assert not outcome.ok and "stopped" in outcome.output


async def test_a_cancelled_call_leaves_the_connection_usable(toolboxes) -> None:
    """A turn that ends (cancelled) mid-call cancels the call; the server keeps serving others."""
    box = await start(toolboxes, stdio())
    pending = asyncio.create_task(call(box, ["mcp:fake"], "fake__hang"))
    await asyncio.sleep(0.3)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert box.connections["fake"].state == "up"
    outcome = await call(box, ["mcp:fake"], "fake__echo", {"text": "next turn"})
    assert outcome.ok and outcome.output == "fake echoes: next turn"
    assert box.connections["fake"].generation == 1


async def test_a_stopped_server_can_be_started_again(toolboxes) -> None:
    box = await start(toolboxes, stdio())
    await box.stop()
    assert box.connections["fake"].state == "stopped"
    outcome = await call(box, ["mcp:fake"], "fake__echo", {"text": "x"})
    assert not outcome.ok and "not running (stopped)" in outcome.output
    await box.start()
    assert box.connections["fake"].state == "up"
    outcome = await call(box, ["mcp:fake"], "fake__echo", {"text": "again"})
    assert outcome.ok
