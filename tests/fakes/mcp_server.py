"""A real MCP server built with the official SDK's MCPServer (v1's FastMCP), for tests.

Run over stdio as a subprocess (`python tests/fakes/mcp_server.py`), or serve it over streamable
HTTP on 127.0.0.1 inside the test's event loop (`serve_http`). Its tools exercise what the
gateway must survive: `echo`, `environment` (the process's variable names and values), `crash`
(the process exits mid-call), `hang` (never answers in time), `big` (a long result), `fail`
(a tool error), `grow` (adds a tool and announces tools/list_changed).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError


def build_server(name: str = "fake") -> MCPServer:
    server = MCPServer(name, log_level="WARNING")

    @server.tool(description="Echo the text back, prefixed with the server's name.")
    def echo(text: str) -> str:
        return f"{name} echoes: {text}"

    @server.tool(description="The environment variables this server process holds, as JSON.")
    def environment() -> str:
        return json.dumps(dict(os.environ), sort_keys=True)

    @server.tool(description="Exit the server process in the middle of the call.")
    def crash() -> str:
        sys.stdout.flush()
        os._exit(3)

    @server.tool(description="Sleep for the given seconds before answering.")
    async def hang(seconds: float = 3600.0) -> str:
        await asyncio.sleep(seconds)
        return "woke up"

    @server.tool(description="A long text of the given length: 'A' * n/2 then 'Z' * n/2.")
    def big(chars: int) -> str:
        return "A" * (chars // 2) + "Z" * (chars - chars // 2)

    @server.tool(description="Always fails with a tool error.")
    def fail(reason: str = "it broke") -> str:
        raise ToolError(reason)

    @server.tool(description="Add a tool named `extra` and tell the client the tool list changed.")
    async def grow(ctx: Context) -> str:
        def extra() -> str:
            """A tool that exists only after grow was called."""
            return "extra here"

        server.add_tool(extra, name="extra", description="Added at run time by grow.")
        await ctx.request_context.session.send_tool_list_changed()
        return "grown"

    return server


@asynccontextmanager
async def serve_http(name: str = "fake") -> AsyncIterator[str]:
    """Serve the fake over streamable HTTP on 127.0.0.1 (a free port); yields the /mcp URL."""
    import uvicorn

    app = build_server(name).streamable_http_app()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 5)
        except TimeoutError:
            task.cancel()
        sock.close()


if __name__ == "__main__":
    build_server(sys.argv[1] if len(sys.argv) > 1 else "fake").run("stdio")
