"""MCP tool servers through the whole gateway: config, app wiring, engine, storage, chat.

A real MCP server (tests/fakes/mcp_server.py, the SDK's MCPServer) over stdio and over
streamable HTTP on 127.0.0.1; the fake provider's aggregator calls its tools.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path

import pytest

from adapters.contract import Progress
from adapters.telegram.render import render_progress
from gateway.app import build_app
from gateway.config import AccessRules, PlatformSection, parse_config
from gateway.storage import open_store
from moa_core.clock import SystemClock
from tests.fakes.mcp_server import serve_http
from tests.fakes.provider_server import FakeProvider, Reply
from tests.fakes.recording_adapter import RecordingAdapter

FAKE = str(Path(__file__).resolve().parents[1] / "fakes" / "mcp_server.py")
ENV = {"FAKE_KEY": "sk-fake-secret", "TELEGRAM_BOT_TOKEN": "never-for-tools", "SEARCH_KEY": "k"}


def raw_config(fake: FakeProvider, tmp_path: Path, mcp: dict, tools: list[str], **preset) -> dict:
    return {
        "gateway": {"database": str(tmp_path / "gw.db"), "default_preset": "default",
                    "save_traces": True, "trace_dir": str(tmp_path / "traces")},
        "providers": {"fake": {"api": "openai", "base_url": fake.openai_base, "api_key_env": "FAKE_KEY",
                               "price_in_per_mtok": 1.0, "price_out_per_mtok": 2.0, "max_retries": 0}},
        "presets": {"default": {"references": ["fake:ref"], "aggregator": "fake:agg", "tools": tools,
                                **preset}},
        "mcp": mcp,
    }


async def start_app(raw: dict, tmp_path: Path):
    config = parse_config(raw, tmp_path / "test.toml")
    access = AccessRules(admins=frozenset({"admin"}), allowed_chats=frozenset({"c1"}))
    config = dataclasses.replace(config, platforms={"fakechat": PlatformSection("fakechat", access)})
    chat = RecordingAdapter()
    app = await build_app(config, {chat.platform: chat}, env=ENV)
    await app.gateway.start()
    return app, chat


async def stop_app(app) -> None:
    await app.gateway.shutdown()
    await app.close()


def tool_messages(fake: FakeProvider, model: str = "agg") -> list[list[dict]]:
    """The tool-result messages of each request the aggregator got, in order."""
    return [[m for m in r.body["messages"] if m["role"] == "tool"] for r in fake.requests if r.model == model]


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_the_aggregator_calls_an_mcp_tool_and_reads_its_result(fake, tmp_path, transport):
    fake.reply("ref", Reply(text="Advice: look it up."), Reply(text="Advice: answer now."))
    fake.reply("agg", Reply(tool_calls=[("call_1", "kb__echo", {"text": "moa"})]), Reply(text="MoA means moa."))
    async with serve_http("kb") as url:
        server = {"url": url} if transport == "http" else {"command": [sys.executable, FAKE, "kb"]}
        app, chat = await start_app(raw_config(fake, tmp_path, {"kb": {**server, "timeout": 10}}, ["mcp:kb"],
                                               fanout="per_iteration"), tmp_path)
        try:
            await chat.push(chat.message("/moa what is moa?"))
            await app.gateway.idle()
        finally:
            await stop_app(app)

    [first, second] = [r for r in fake.requests if r.model == "agg"]
    offered = {t["function"]["name"] for t in first.body["tools"]}
    assert {"kb__echo", "kb__environment", "kb__hang"} <= offered
    assert tool_messages(fake)[1] == [{"role": "tool", "tool_call_id": "call_1", "content": "kb echoes: moa"}]
    [answer] = chat.final_answers()
    assert answer.text == "MoA means moa."
    # The progress line shows the tool while it runs (Telegram: "🔧 kb__echo…"), then the answer stage.
    progress = [item for _, _, item, _ in chat.log if isinstance(item, Progress)]
    tool_lines = [p for p in progress if p.stage == "tool"]
    assert [p.detail for p in tool_lines] == ["kb__echo"]
    assert render_progress(tool_lines[0])[0].plain == "🔧 kb__echo…"
    assert progress[-1].stage == "aggregating"
    # The advisory view of the second fan-out holds the tool call and its result as text.
    advice_input = json.dumps([r.body for r in fake.requests if r.model == "ref"][1])
    assert "[tool call: kb__echo" in advice_input and "kb echoes: moa" in advice_input
    # Traces hold the aggregator's input with the tool result.
    traces = list((tmp_path / "traces").glob("*.jsonl"))
    assert traces and "kb echoes: moa" in traces[0].read_text()
    # Stored (the database reopened): the call rows of both steps, and the answer in the history.
    store = await open_store(str(tmp_path / "gw.db"), SystemClock())
    try:
        rows = await store.query("select role, step, status from model_calls order by id", dicts=True)
        sessions = await store.query("select id from sessions", dicts=True)
        history = await store.history(sessions[0]["id"])
    finally:
        await store.close()
    assert [(r["role"], r["step"], r["status"]) for r in rows] == [
        ("reference", 1, "ok"), ("aggregator", 1, "ok"), ("reference", 2, "ok"), ("aggregator", 2, "ok")]
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]
    assert history[2].content == "kb echoes: moa" and history[-1].content == "MoA means moa."


async def test_broken_servers_answer_tool_errors_and_the_gateway_keeps_serving(fake, tmp_path):
    mcp = {
        "kb": {"command": [sys.executable, FAKE, "kb"], "timeout": 1, "env_from": ["SEARCH_KEY"]},
        "gone": {"command": ["no-such-mcp-program"]},
    }
    fake.reply("ref", Reply(text="Advice."), Reply(text="Advice 2."))
    fake.reply(
        "agg",
        Reply(tool_calls=[("c1", "kb__hang", {}), ("c2", "gone__search", {"q": "x"}), ("c3", "kb__crash", {})]),
        Reply(text="Tools failed; here is what I know."),
        Reply(tool_calls=[("c4", "kb__environment", {})]),
        Reply(text="Second turn answered."),
    )
    app, chat = await start_app(raw_config(fake, tmp_path, mcp, ["mcp:kb", "mcp:gone/search"]), tmp_path)
    try:
        await chat.push(chat.message("/moa first"))
        await app.gateway.idle()
        connection = app.runtime.mcp.connections["kb"]
        async with asyncio.timeout(15):  # restarted after the crash
            while not (connection.state == "up" and connection.generation == 2):
                await asyncio.sleep(0.02)
        await chat.push(chat.message("/moa second"))
        await app.gateway.idle()
    finally:
        await stop_app(app)

    errors = [m["content"] for m in tool_messages(fake)[1]]
    assert errors[0] == "error: kb__hang: MCP server 'kb' did not answer within 1 s (the call was cancelled)"
    assert errors[1].startswith("error: gone__search: MCP server 'gone' is not running: command not found: "
                                "no-such-mcp-program")
    assert errors[2] == ("error: kb__crash: MCP server 'kb' closed the connection during the call; "
                         "it is being restarted")
    answers = [a.text for a in chat.final_answers()]
    assert answers == ["Tools failed; here is what I know.", "Second turn answered."]
    # The restarted server runs with only the named variables: no bot token, no provider key.
    environment = tool_messages(fake)[3][-1]
    assert environment["tool_call_id"] == "c4"
    child = json.loads(environment["content"])
    assert child["SEARCH_KEY"] == "k"
    assert "TELEGRAM_BOT_TOKEN" not in child and "FAKE_KEY" not in child
