"""Shared pieces of the end-to-end tests: a real config file pointing at the fake Bot API and the
fake model provider, the real gateway in this process or as a `moa-gateway run` subprocess,
Telegram updates stamped now, and bounded waits that say what they were waiting for."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.contract import InboundMessage
from gateway.app import App, build_adapters, build_app
from gateway.config import load_config
from tests.fakes.provider_server import FakeProvider
from tests.fakes.telegram_server import TOKEN, FakeTelegram, message_update, user

ROOT = Path(__file__).resolve().parents[2]
TOKEN_ENV = "E2E_TELEGRAM_TOKEN"
KEY_ENV = "E2E_PROVIDER_KEY"
ENV = {TOKEN_ENV: TOKEN, KEY_ENV: "sk-e2e-not-a-secret"}

GROUP_ID = -1001234567890
FORUM_ID = -1009876543210
STRANGER_GROUP_ID = -1005555555555
USER_ID = 42
ADMIN_ID = 7
WAIT_S = 20.0


# -- config --------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _toml(tables: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
        lines.append("")
    return "\n".join(lines)


def write_config(
    tmp_path: Path,
    provider: FakeProvider,
    telegram: FakeTelegram,
    *,
    gateway: dict[str, Any] | None = None,
    telegram_options: dict[str, Any] | None = None,
    tables: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """A moa-gateway.toml in `tmp_path`: providers at `provider`, [telegram] at `telegram`;
    `tables` adds sections or replaces whole ones (e.g. "presets.default")."""
    extra = tables or {}
    tables = {
        "gateway": {
            "database": str(tmp_path / "gateway.db"),
            "default_preset": "default",
            "shutdown_grace_s": 10.0,
            **(gateway or {}),
        },
        "providers.fake": {
            "api": "openai",
            "base_url": provider.openai_base,
            "api_key_env": KEY_ENV,
            "price_in_per_mtok": 1.0,
            "price_out_per_mtok": 2.0,
            "max_retries": 0,
        },
        "presets.default": {
            "references": ["fake:ref-a", "fake:ref-b"],
            "aggregator": "fake:agg",
            "reference_timeout": 15,
            "tools": [],
        },
        "presets.deep": {"references": ["fake:deep-ref"], "aggregator": "fake:deep-agg", "tools": []},
        "telegram": {
            "token_env": TOKEN_ENV,
            "base_url": telegram.base_url,
            "base_file_url": telegram.base_file_url,
            "admins": [str(ADMIN_ID)],
            "allowed_chats": [str(GROUP_ID), str(FORUM_ID), str(USER_ID)],
            "edit_interval_s": 0.2,
            **(telegram_options or {}),
        },
    }
    tables.update(extra)
    path = tmp_path / "moa-gateway.toml"
    path.write_text(_toml(tables), encoding="utf-8")
    return path


# -- Telegram updates ----------------------------------------------------------------------------


def group_update(text: str, *, chat_id: int = GROUP_ID, sender: int = USER_ID, message_id: int = 10,
                 thread_id: int | None = None, update_id: int | None = None) -> dict[str, Any]:
    """A supergroup (or forum topic, with `thread_id`) message sent now."""
    chat: dict[str, Any] = {"id": chat_id, "type": "supergroup", "title": "Team"}
    if thread_id is not None:
        chat["is_forum"] = True
    return message_update(text, chat=chat, sender=user(sender, first_name=f"U{sender}", username=f"u{sender}"),
                          message_id=message_id, date=int(time.time()), thread_id=thread_id,
                          update_id=update_id)


def dm_update(text: str, *, sender: int = USER_ID, message_id: int = 10) -> dict[str, Any]:
    chat = {"id": sender, "type": "private", "first_name": "Ada", "username": "ada"}
    return message_update(text, chat=chat, sender=user(sender), message_id=message_id, date=int(time.time()))


def texts(telegram: FakeTelegram, chat_id: int) -> list[str]:
    return [message.text for message in telegram.chat(chat_id)]


def with_marker(telegram: FakeTelegram, chat_id: int, marker: str) -> list[str]:
    return [text for text in texts(telegram, chat_id) if marker in text]


# -- waits ---------------------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S,
                     explain: Callable[[], str] | None = None) -> None:
    """Poll `predicate` until true; fail naming `what` (and `explain()`) after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        await asyncio.sleep(0.02)


# -- the gateway in this process -----------------------------------------------------------------


@dataclass
class InProcess:
    """The real app (adapters from the config, SQLite file, engine) with a spy on its intake."""

    app: App
    inbound: list[InboundMessage] = field(default_factory=list)

    async def close(self) -> None:
        try:
            await self.app.gateway.shutdown(grace_s=2)
        finally:
            await self.app.close()


async def start_in_process(config_path: Path) -> InProcess:
    config = load_config(config_path)
    adapters = build_adapters(config, ENV)
    app = await build_app(config, adapters, env=ENV)
    running = InProcess(app)
    handle = app.gateway.handle_inbound

    async def spy(message: InboundMessage) -> None:
        running.inbound.append(message)
        await handle(message)

    app.gateway.handle_inbound = spy  # type: ignore[method-assign]
    try:
        await app.gateway.start()
    except BaseException:
        await app.close()
        raise
    return running


# -- the gateway as a process --------------------------------------------------------------------


class GatewayProcess:
    """`python -m gateway.cli run --config F`, its output in a log file next to the config."""

    def __init__(self, config_path: Path, name: str = "run") -> None:
        self.config_path = config_path
        self.log_path = config_path.with_name(f"{name}.log")
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> GatewayProcess:
        env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config_path),
                cwd=str(self.config_path.parent), env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=log,
            )
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self) -> str:
        return "--- gateway log (tail) ---\n" + "\n".join(self.log().splitlines()[-40:])

    async def wait_logged(self, text: str, timeout: float = WAIT_S) -> None:
        await wait_until(lambda: text in self.log() or self.exited, f"log line {text!r}", timeout, self.tail)
        assert text in self.log(), f"the gateway exited before logging {text!r}\n{self.tail()}"

    @property
    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    async def signal(self, signum: int) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signum)

    async def wait(self, timeout: float = WAIT_S) -> int:
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"the gateway did not exit within {timeout:.0f} s\n{self.tail()}") from None

    async def kill(self) -> None:
        """SIGKILL (no cleanup of any kind) and reap; safe to call twice."""
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.process.wait(), 10)


# -- the database, read as any other process would ------------------------------------------------


def query(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    connection = sqlite3.connect(db_path, timeout=10)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute(sql, params)]
    finally:
        connection.close()
