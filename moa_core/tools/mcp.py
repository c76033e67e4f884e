"""One Model Context Protocol server the aggregator may use, kept connected.

Everything protocol is the official `mcp` SDK (ClientSession over its stdio or streamable HTTP
transport); this module owns the lifecycle around it: start, read the tool list (again on
`notifications/tools/list_changed`), notice a dead server (a call that lost the connection, or
a failed ping), restart it with backoff, and turn every failure of a call into a `ToolError`
the model can read. A stdio server gets only the variables named in `env_from` (and the SDK's
fixed safe set: HOME, PATH, USER, LOGNAME, SHELL, TERM), never the gateway's environment.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Literal

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp import types as mcp_types
from mcp.shared.exceptions import MCPError

from moa_core.tools.base import ToolError
from moa_core.tools.mcp_settings import McpServerSettings

log = logging.getLogger(__name__)

# JSON-RPC codes the SDK uses for a closed connection and for a request past its timeout.
CONNECTION_CLOSED = -32000
REQUEST_TIMEOUT = -32001
CLIENT_INFO = mcp_types.Implementation(name="moa-gateway", version="0.1.0")

State = Literal["starting", "up", "down", "stopped"]


class _ConnectionLost(Exception):
    pass


def describe_failure(error: BaseException) -> str:
    """One line for a failed start or a lost connection (task groups wrap the real cause)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, MCPError) and error.error.code == CONNECTION_CLOSED:
        return "the server closed the connection"
    if isinstance(error, TimeoutError):
        return str(error) or "the server did not answer in time"
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"command not found: {error.filename}"
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:300]


def render_result(result: mcp_types.CallToolResult) -> str:
    """A tool result as text: text blocks as is, other blocks named, structured data as JSON."""
    parts: list[str] = []
    for block in result.content:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource":
            resource = block.resource
            text = getattr(resource, "text", None)
            parts.append(text if text is not None else f"[resource {resource.uri} ({resource.mime_type or 'binary'})]")
        elif kind == "resource_link":
            parts.append(f"[resource link: {block.uri}]")
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} {block.mime_type}, {len(block.data) * 3 // 4} bytes, not shown]")
        else:
            parts.append(f"[{kind or 'unknown'} content, not shown]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


class McpConnection:
    """One configured server, supervised: connected, listed, pinged, restarted with backoff."""

    def __init__(self, settings: McpServerSettings, env: Mapping[str, str], *,
                 backoff: tuple[float, float] = (1.0, 60.0), ping_interval: float = 10.0):
        self.settings = settings
        self._env = env
        self._backoff = backoff
        self._ping_interval = ping_interval
        self._state: State = "stopped"
        self._error: str | None = None
        self._tools: tuple[mcp_types.Tool, ...] = ()
        self._listed = False
        self._came_up = False
        self._generation = 0
        self._session: ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._list_changed = False
        self._lost: ClientSession | None = None
        self._attempted = asyncio.Event()

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def state(self) -> State:
        return self._state

    @property
    def error(self) -> str | None:
        """Why the server is down (None while it is up)."""
        return self._error

    @property
    def tools(self) -> tuple[mcp_types.Tool, ...]:
        """The last tool list read (kept while the server is down, so its tools still answer)."""
        return self._tools

    @property
    def generation(self) -> int:
        """How many times the server came up (1 after the first start, 2 after a restart, ...)."""
        return self._generation

    @property
    def listed(self) -> bool:
        """Whether a tool list was ever read."""
        return self._listed

    async def start(self, wait: float | None = None) -> None:
        """Start supervising; wait up to `wait` s (default: its start timeout) for the first try."""
        if self._task is not None:
            return
        self._stopping.clear()
        self._attempted.clear()  # a start after a stop waits for its own first try
        self._state = "starting"
        self._task = asyncio.create_task(self._supervise(), name=f"mcp:{self.name}")
        try:
            await asyncio.wait_for(self._attempted.wait(), self.settings.start_timeout if wait is None else wait)
        except TimeoutError:
            pass  # still starting; turns meanwhile get a clear "not running" tool error

    async def stop(self) -> None:
        """Close the connection (in-flight calls end with a tool error) and stop the server."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        self._wake.set()
        try:
            # The SDK's stdio shutdown is bounded (stdin close, then TERM, then KILL: ~6 s).
            await asyncio.wait_for(asyncio.shield(task), 10.0)
        except TimeoutError:
            task.cancel()
        except Exception:
            log.warning("MCP server %s: stopping failed", self.name, exc_info=True)
        self._state, self._session = "stopped", None

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        """Call `tool` on the server; every failure is a ToolError naming the server."""
        session = self._session
        if session is None or self._state != "up":
            raise ToolError(self.down_text())
        try:
            result = await session.call_tool(tool, arguments, read_timeout_seconds=self.settings.timeout)
        except MCPError as error:
            code = error.error.code
            if code == CONNECTION_CLOSED:
                if self._stopping.is_set():
                    raise ToolError(f"MCP server '{self.name}' was stopped (the gateway is shutting down)") from None
                self._connection_lost(session)
                raise ToolError(f"MCP server '{self.name}' closed the connection during the call; "
                                "it is being restarted") from None
            if code == REQUEST_TIMEOUT:
                raise ToolError(f"MCP server '{self.name}' did not answer within {self.settings.timeout:g} s "
                                "(the call was cancelled)") from None
            raise ToolError(f"MCP server '{self.name}' refused the call: {error.error.message}") from None
        text = render_result(result)
        if result.is_error:
            raise ToolError(text or "the tool reported an error without a message")
        return text

    def down_text(self) -> str:
        reason = f": {self._error}" if self._error else ""
        if self._state == "starting":
            return f"MCP server '{self.name}' is still starting{reason}; try again shortly"
        if self._state == "stopped":
            return f"MCP server '{self.name}' is not running (stopped)"
        return f"MCP server '{self.name}' is not running{reason}; it is being restarted"

    # --- supervision ----------------------------------------------------------------------

    def _connection_lost(self, session: ClientSession) -> None:
        if self._session is session:
            self._lost = session
            self._wake.set()

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self._list_changed = True
            self._wake.set()

    async def _supervise(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._state, self._came_up = "starting", False
            try:
                await self._serve_once()
            except Exception as error:
                self._error = describe_failure(error)
            finally:
                self._session = None
            if self._stopping.is_set():
                break
            if self._came_up:  # it was serving: restart soon, not after the last long delay
                failures = 0
            self._state = "down"
            self._attempted.set()
            delay = min(self._backoff[1], self._backoff[0] * 2 ** failures)
            failures += 1
            log.warning("MCP server %s is down (%s); restarting in %.1f s", self.name, self._error, delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                pass
        self._state = "stopped"
        self._attempted.set()

    def _transport(self) -> AbstractAsyncContextManager[Any]:
        s = self.settings
        if s.url:
            import httpx2  # the SDK's HTTP client library

            headers = {header: self._env[var] for header, var in s.headers_env if self._env.get(var)}
            # Read timeout of 300 s as the SDK's default client: a server may hold an event stream open.
            client = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(s.timeout, read=300.0))
            return _http_transport(s.url, client)
        env = {name: self._env[name] for name in s.env_from if name in self._env}
        return stdio_client(StdioServerParameters(command=s.command[0], args=list(s.command[1:]), env=env))

    async def _serve_once(self) -> None:
        timeout = self.settings.start_timeout
        async with AsyncExitStack() as stack:
            streams = await stack.enter_async_context(self._transport())
            session = await stack.enter_async_context(
                ClientSession(*streams, message_handler=self._on_message, client_info=CLIENT_INFO))
            try:
                with anyio.fail_after(timeout):
                    await session.initialize()
                    self._list_changed = False
                    self._tools = await _list_tools(session)
            except TimeoutError:
                raise TimeoutError(f"no answer to initialize within {timeout:g} s") from None
            self._listed, self._came_up, self._error, self._lost = True, True, None, None
            self._session, self._state = session, "up"
            self._generation += 1
            self._attempted.set()
            log.info("MCP server %s is up: %d tool(s)", self.name, len(self._tools))
            await self._watch(session)

    async def _watch(self, session: ClientSession) -> None:
        """Return when stopping; raise when the connection is gone."""
        timeout = self.settings.timeout
        while True:
            with anyio.move_on_after(self._ping_interval) as idle:
                await self._wake.wait()
            self._wake.clear()
            if self._stopping.is_set():
                return
            if self._lost is session:
                raise _ConnectionLost("the connection was lost during a call")
            if self._list_changed:
                self._list_changed = False
                with anyio.fail_after(timeout):
                    self._tools = await _list_tools(session)
                log.info("MCP server %s: tool list changed (%d tool(s))", self.name, len(self._tools))
            elif idle.cancelled_caught:
                try:
                    with anyio.fail_after(timeout):
                        await session.send_ping()
                except TimeoutError:
                    raise TimeoutError(f"no answer to ping within {timeout:g} s") from None


async def _list_tools(session: ClientSession) -> tuple[mcp_types.Tool, ...]:
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _ in range(100):  # a server whose pages never end cannot hang us
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tuple(tools)


@asynccontextmanager
async def _http_transport(url: str, client: Any) -> AsyncIterator[Any]:
    """The SDK's streamable HTTP transport over our client (headers, timeouts), closed with it."""
    from mcp.client.streamable_http import streamable_http_client

    async with client, streamable_http_client(url, http_client=client) as streams:
        yield streams
