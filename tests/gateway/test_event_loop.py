"""The event loop is chosen at start-up (uvloop when installed, else asyncio) and named in the log;
`run`, `chat` and `ask` all start through that choice."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
import types
from pathlib import Path

import pytest

from gateway import cli
from gateway import loop as event_loop
from tests.cli.kit import clean_env, moa_gateway


class _MarkedLoop(asyncio.SelectorEventLoop):
    """Stands in for uvloop's Loop: a loop whose type says who made it."""


@pytest.fixture
def fake_uvloop(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("uvloop")
    module.new_event_loop = _MarkedLoop  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uvloop", module)
    return module


@pytest.fixture
def no_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` then raises ImportError


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_uvloop_is_used_when_installed_and_named_in_the_log(fake_uvloop, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.loop"):
        assert event_loop.run(_loop_type()) is _MarkedLoop
    assert "event loop: uvloop" in caplog.messages


def test_without_uvloop_the_standard_loop_runs_and_the_log_says_how_to_get_uvloop(no_uvloop, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.loop"):
        ran_on = event_loop.run(_loop_type())
    assert issubclass(ran_on, asyncio.BaseEventLoop) and ran_on is not _MarkedLoop
    assert "event loop: asyncio (install moa-gateway[fast] for uvloop)" in caplog.messages


def test_a_preference_overrides_the_default_choice(fake_uvloop, monkeypatch) -> None:
    assert event_loop.choose_loop("asyncio") == (None, "asyncio")
    assert event_loop.choose_loop("uvloop") == (_MarkedLoop, "uvloop")
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(ImportError):
        event_loop.choose_loop("uvloop")
    with pytest.raises(ValueError, match="unknown event loop"):
        event_loop.choose_loop("trio")


@pytest.mark.parametrize("argv", [["ask", "hello"], ["chat"]])
def test_ask_and_chat_start_through_the_choice(argv, tmp_path: Path, monkeypatch) -> None:
    started: list[str] = []

    def record(main, *, prefer=None):
        started.append(main.cr_code.co_name)
        main.close()
        return 0

    monkeypatch.setattr(event_loop, "run", record)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "moa-gateway.toml").write_text(
        '[providers.p]\napi = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        '[presets.default]\nreferences = ["p:a"]\naggregator = "p:b"\n'
    )
    assert cli.main(argv) == 0
    assert started == [argv[0]]


async def test_run_names_the_loop_in_its_start_up_log(tmp_path: Path) -> None:
    (tmp_path / "moa-gateway.toml").write_text(
        '[gateway]\ndatabase = "moa.db"\n[providers.p]\napi = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        '[presets.default]\nreferences = ["p:a"]\naggregator = "p:b"\n'
        '[telegram]\ntoken_env = "TOK"\nbase_url = "http://127.0.0.1:1/bot"\nallow_all = true\n'
    )
    ran = await moa_gateway("run", env=clean_env(tmp_path, TOK="123:x"), cwd=tmp_path)
    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio (install moa-gateway[fast] for uvloop)"
    assert f"gateway.loop: event loop: {expected}" in ran.err, ran.err
