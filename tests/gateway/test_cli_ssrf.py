"""fetch_url's SSRF guard seen from outside: `moa-gateway ask` run as the console script, its
aggregator asking to fetch loopback targets. DNS rebinding is played by a `sitecustomize` on the
subprocess's path that answers `rebind.test` with a public address first and 127.0.0.1 after
(what a hostile name server does), so the real resolver path of the real process is tested."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from aiohttp import web

from tests.fakes.provider_server import FakeProvider, Reply

ROOT = Path(__file__).resolve().parents[2]
REBINDING_DNS = '''
import socket

_real = socket.getaddrinfo
_asked = [0]


def _rebinding(host, port, *args, **kwargs):
    if host != "rebind.test":
        return _real(host, port, *args, **kwargs)
    _asked[0] += 1
    address = "93.184.215.14" if _asked[0] == 1 else "127.0.0.1"
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 80)))]


socket.getaddrinfo = _rebinding

# uvloop (the `fast` extra) resolves in C, past socket.getaddrinfo: keep the process on asyncio's
# loop so this stand-in is the resolver it asks (the vetting itself is the same on either loop).
import sys

sys.modules["uvloop"] = None
'''


@pytest.fixture
async def secret_site():
    """A loopback server with something an attacker wants; it records every request."""
    hits: list[str] = []

    async def secret(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="SECRET-METADATA", content_type="text/plain")

    async def bounce(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound(f"http://rebind.test:{request.url.port}/secret")

    app = web.Application()
    app.router.add_get("/secret", secret)
    app.router.add_get("/bounce", bounce)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1], hits
    finally:
        await runner.cleanup()


async def ask_fetching(fake: FakeProvider, tmp_path: Path, url: str, allowed_hosts: tuple[str, ...] = ()) -> str:
    """Run one `ask` whose aggregator calls fetch_url(url); return what the tool told it."""
    fake.reply("agg", Reply(tool_calls=[("c1", "fetch_url", {"url": url})]), Reply(text="done"))
    config = tmp_path / "moa-gateway.toml"
    config.write_text(f"""
[gateway]
database = "{tmp_path / 'moa.db'}"

[providers.local]
api = "openai"
base_url = "{fake.openai_base}"

[presets.default]
references = ["local:ref"]
aggregator = "local:agg"
tools = ["fetch_url"]

[tools]
fetch_allowed_hosts = {json.dumps(list(allowed_hosts))}
""")
    (tmp_path / "dns").mkdir(exist_ok=True)
    (tmp_path / "dns" / "sitecustomize.py").write_text(REBINDING_DNS)
    script = Path(sys.executable).with_name("moa-gateway")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]
    process = await asyncio.create_subprocess_exec(
        *command, "ask", "--json", "--config", str(config), "fetch it",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": f"{tmp_path / 'dns'}{os.pathsep}{ROOT}"}, cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    second = fake.for_model("agg")[-1].body["messages"]
    return next(m["content"] for m in second if m["role"] == "tool")


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:{port}/secret",
    "http://localhost:{port}/secret",
    "http://[::ffff:127.0.0.1]:{port}/secret",
    "http://rebind.test:{port}/secret",  # public to the check, 127.0.0.1 to the connection
])
async def test_ask_refuses_loopback_targets(fake, tmp_path, secret_site, target):
    port, hits = secret_site
    told = await ask_fetching(fake, tmp_path, target.format(port=port))
    assert "refused to fetch" in told and "SECRET-METADATA" not in told
    assert hits == []


async def test_ask_refuses_a_redirect_to_a_rebinding_name(fake, tmp_path, secret_site):
    port, hits = secret_site
    told = await ask_fetching(fake, tmp_path, f"http://127.0.0.1:{port}/bounce", allowed_hosts=("127.0.0.1",))
    assert "refused to fetch 'rebind.test'" in told and "SECRET-METADATA" not in told
    assert hits == ["/bounce"]
