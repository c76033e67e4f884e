"""`[mcp.NAME]` sections, `mcp:` tool entries, `check-config` and `moa-gateway tools`, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
FAKE = str(ROOT / "tests" / "fakes" / "mcp_server.py")

BASE = """
[gateway]
database = "x.db"

[providers.p]
api = "openai"
base_url = "http://127.0.0.1:9/v1"

[presets.default]
references = ["p:ref"]
aggregator = "p:agg"
tools = ["calculator", "mcp:search/web_search", "mcp:wiki"]

[mcp.search]
command = ["uvx", "some-mcp-server", "--flag"]
env_from = ["SEARCH_API_KEY"]

[mcp.wiki]
url = "https://wiki.example.com/mcp"
headers_env = { Authorization = "WIKI_TOKEN" }
timeout = 30
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "moa-gateway.toml"
    path.write_text(text)
    return load_config(path)


def test_the_issue_example_loads(tmp_path):
    config = load(tmp_path, BASE)
    search, wiki = config.mcp["search"], config.mcp["wiki"]
    assert search.command == ("uvx", "some-mcp-server", "--flag") and search.env_from == ("SEARCH_API_KEY",)
    assert search.transport == "stdio" and search.timeout == 30.0
    assert wiki.url == "https://wiki.example.com/mcp" and wiki.headers_env == (("Authorization", "WIKI_TOKEN"),)
    assert wiki.transport == "http"
    assert config.engine.presets["default"].tools == ("calculator", "mcp:search/web_search", "mcp:wiki")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('command = ["uvx", "some-mcp-server", "--flag"]', 'command = []'), "mcp.search.command: must name the program"),
        (('command = ["uvx", "some-mcp-server", "--flag"]', ''), "mcp.search.command: set exactly one of"),
        (('url = "https://wiki.example.com/mcp"', 'url = "https://w/mcp"\ncommand = ["x"]'), "mcp.wiki.command: set exactly one"),
        (('url = "https://wiki.example.com/mcp"', 'url = "ftp://wiki/mcp"'), "mcp.wiki.url: must start with http"),
        (('env_from = ["SEARCH_API_KEY"]', 'env_from = ["sk-live-123"]'), "mcp.search.env_from: 'sk-live-123' is not the NAME"),
        (('env_from = ["SEARCH_API_KEY"]', 'headers_env = { A = "B" }'), "mcp.search.headers_env: applies to HTTP"),
        (('headers_env = { Authorization = "WIKI_TOKEN" }', 'headers_env = { Authorization = "Bearer abc def" }'),
         "mcp.wiki.headers_env.Authorization: must be the NAME of an environment variable"),
        (('headers_env = { Authorization = "WIKI_TOKEN" }', 'env_from = ["X"]'), "mcp.wiki.env_from: applies to stdio"),
        (("timeout = 30", "timeout = 0"), "mcp.wiki.timeout: must be greater than 0"),
        (("timeout = 30", 'timeot = 3'), "mcp.wiki.timeot: unknown key"),
        (("[mcp.wiki]", "[mcp.wi__ki]"), "mcp.wi__ki: a server name is"),
        (('"mcp:wiki"]', '"mcp:nope"]'), "presets.default.tools: preset 'default': 'mcp:nope' names MCP server "
                                         "'nope', which is not configured (configured: search, wiki)"),
        (('"mcp:wiki"]', '"mcp:wiki/"]'), "presets.default.tools: preset 'default': 'mcp:wiki/': the tool name"),
        (('"mcp:wiki"]', '"shell"]'), "unknown tool 'shell' (available: fetch_url, calculator, current_time, "
                                      "mcp:search, mcp:wiki)"),
    ],
)
def test_bad_mcp_config_names_the_key(tmp_path, change, expected):
    old, new = change
    assert old in BASE
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BASE.replace(old, new, 1))
    assert str(tmp_path / "moa-gateway.toml") in str(caught.value)
    assert expected in str(caught.value)


async def run_cli(tmp_path: Path, *args: str, config: str, env_extra: dict | None = None) -> tuple[int, str, str]:
    path = tmp_path / "moa-gateway.toml"
    path.write_text(config)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


TOOLS_CONFIG = BASE.replace('["uvx", "some-mcp-server", "--flag"]', json.dumps([sys.executable, FAKE, "search"])) \
    .replace('"mcp:search/web_search"', '"mcp:search/echo", "mcp:search/absent"') \
    .replace('url = "https://wiki.example.com/mcp"', 'url = "http://127.0.0.1:9/mcp"\nstart_timeout = 5')


async def test_check_config_names_unset_variables_and_missing_programs(tmp_path):
    code, out, err = await run_cli(tmp_path, "check-config", config=BASE.replace('"uvx"', '"no-such-program-x"'))
    assert code == 1 and "Traceback" not in err
    assert "environment variable SEARCH_API_KEY is not set (mcp.search.env_from)" in err
    assert "environment variable WIKI_TOKEN is not set (mcp.wiki.headers_env.Authorization)" in err
    assert "program 'no-such-program-x' not found (mcp.search.command)" in err


async def test_tools_lists_each_presets_tools_with_source_state_and_description(tmp_path):
    code, out, err = await run_cli(tmp_path, "tools", config=TOOLS_CONFIG)
    assert "Traceback" not in err
    assert code == 1 and "warning: not running: mcp:wiki (http)" in err  # one server is down
    lines = out.splitlines()
    assert lines[0] == "default: 4 tool(s)"
    assert lines[1].split()[:3] == ["calculator", "built-in", "up"]
    echo = next(line for line in lines if "search__echo" in line)
    assert echo.split()[1:4] == ["mcp:search", "(stdio)", "up"] and "Echo the text back" in echo
    absent = next(line for line in lines if "search__absent" in line)
    assert "the server has no tool 'absent'" in absent
    wiki = next(line for line in lines if "wiki__" in line)
    assert "DOWN" in wiki and "MCP server 'wiki' is not running" in wiki

    code, out, err = await run_cli(tmp_path, "tools", "--json", config=TOOLS_CONFIG)
    rows = json.loads(out)["presets"]["default"]
    assert [r["name"] for r in rows] == ["calculator", "search__echo", "search__absent", "wiki__*"]
    assert rows[1]["up"] is True and rows[1]["source"] == "mcp:search (stdio)" and rows[3]["up"] is False


def test_mcp_secrets_are_masked_in_logs_like_every_configured_secret(tmp_path):
    from gateway.secrets import configured_secrets, secret_env_names

    config = load(tmp_path, BASE)
    assert {"SEARCH_API_KEY", "WIKI_TOKEN"} <= set(secret_env_names(config))
    env = {"SEARCH_API_KEY": "search-key-0123456789", "WIKI_TOKEN": "Bearer wiki-token-abcdef"}
    assert set(configured_secrets(config, env)) == set(env.values())
