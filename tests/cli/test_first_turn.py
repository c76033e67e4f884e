"""A newcomer's first minutes, through the real console script: no config at all (the built-in
default from the variables they already have), `init`, questions on stdin, what `ask`, `chat`
and `presets` print."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.builtin import NO_VARIABLES, VARIABLES, builtin_config, ollama_base_url
from gateway.config import ConfigError
from tests.cli.kit import ROOT, clean_env, fake_config, moa_gateway
from tests.fakes.provider_server import FakeProvider, Reply


@pytest.fixture
async def fake():
    async with FakeProvider() as server:
        server.models = ["local-big", "local-small"]
        yield server


def data_db(tmp_path: Path) -> Path:
    return tmp_path / "xdg-data" / "moa-gateway" / "moa-gateway.db"


async def test_no_config_and_no_variables_names_them_all_and_exits_2(tmp_path):
    for args in (("ask", "hello"), ("chat",)):
        ran = await moa_gateway(*args, env=clean_env(tmp_path), cwd=tmp_path, stdin=b"")
        assert ran.code == 2, ran.err
        for name in VARIABLES:
            assert name in ran.err
        assert "moa-gateway init" in ran.err and "Traceback" not in ran.err


async def test_zero_config_ask_on_an_openai_compatible_server(fake, tmp_path):
    fake.reply("local-big", Reply(text="BUILTIN-ANSWER"))
    env = clean_env(tmp_path, OPENAI_API_KEY="sk-local-not-secret", OPENAI_BASE_URL=fake.openai_base)
    ran = await moa_gateway("ask", "What is MoA?", env=env, cwd=tmp_path)
    assert ran.code == 0, ran.err
    assert "BUILTIN-ANSWER" in ran.out
    # Said once, on stderr: which preset and models, where the database is, how to write a config.
    notices = [line for line in ran.err.splitlines() if "built-in preset" in line]
    assert len(notices) == 1, ran.err
    assert "local-big" in notices[0] and "local-small" in notices[0] and "moa-gateway init" in notices[0]
    assert str(data_db(tmp_path)) in notices[0]
    models = sorted(r.model for r in fake.requests)
    assert models == ["local-big", "local-big", "local-small"]  # two references + the aggregator
    assert fake.requests[0].headers["authorization"] == "Bearer sk-local-not-secret"
    assert "sk-local-not-secret" not in ran.out + ran.err
    with sqlite3.connect(data_db(tmp_path)) as db:  # in the user's data folder, not the cwd
        assert db.execute("SELECT count(*) FROM turns").fetchone()[0] == 1
    assert not list(tmp_path.glob("*.db"))


async def test_zero_config_chat_on_a_local_ollama(fake, tmp_path):
    fake.reply("local-big", Reply(text="OLLAMA-ANSWER"))
    env = clean_env(tmp_path, OLLAMA_HOST=fake.url.removeprefix("http://"))
    ran = await moa_gateway("chat", env=env, cwd=tmp_path, stdin=b"hello there\n")
    assert ran.code == 0, ran.err
    assert "OLLAMA-ANSWER" in ran.out
    assert sum("built-in preset" in line for line in ran.err.splitlines()) == 1
    assert "on ollama" in ran.err
    assert data_db(tmp_path).exists()


async def test_zero_config_with_a_local_server_that_is_down_says_so(tmp_path):
    env = clean_env(tmp_path, OLLAMA_HOST="127.0.0.1:1")
    ran = await moa_gateway("ask", "hi", env=env, cwd=tmp_path)
    assert ran.code == 2 and "Traceback" not in ran.err
    assert "http://127.0.0.1:1/v1/models" in ran.err and "OLLAMA_HOST" in ran.err


def test_builtin_presets_for_each_hosted_provider(tmp_path):
    for variable, provider in (("OPENROUTER_API_KEY", "openrouter"), ("OPENAI_API_KEY", "openai"),
                               ("ANTHROPIC_API_KEY", "anthropic")):
        built = builtin_config({variable: "k"}, data=tmp_path)
        preset = built.config.engine.presets["default"]
        assert built.provider == provider and {s.provider for s in preset.references} == {provider}
        assert 2 <= len(preset.references) <= 3 and preset.aggregator.provider == provider
        assert built.config.gateway.database == str(tmp_path / "moa-gateway.db")
        assert built.config.engine.providers[provider].api_key_env == variable
    # The first present variable wins, in the documented order.
    both = builtin_config({"ANTHROPIC_API_KEY": "k", "OPENROUTER_API_KEY": "k"}, data=tmp_path)
    assert both.provider == "openrouter"
    with pytest.raises(ConfigError) as error:
        builtin_config({"OPENAI_BASE_URL": "http://x/v1"}, data=tmp_path)
    assert str(error.value) == NO_VARIABLES


def test_ollama_host_as_ollama_reads_it():
    assert ollama_base_url("127.0.0.1:11434") == "http://127.0.0.1:11434/v1"
    assert ollama_base_url("0.0.0.0") == "http://127.0.0.1:11434/v1"
    assert ollama_base_url("https://gpu.example:8443/") == "https://gpu.example:8443/v1"


async def test_init_writes_the_example_config_and_never_overwrites(tmp_path):
    env = clean_env(tmp_path)
    ran = await moa_gateway("init", env=env, cwd=tmp_path)
    assert ran.code == 0, ran.err
    written = (tmp_path / "moa-gateway.toml").read_text()
    assert written == (ROOT / "deploy" / "moa-gateway.example.toml").read_text()
    assert "moa-gateway check-config" in ran.out
    (tmp_path / "moa-gateway.toml").write_text(written + "\n# mine\n")
    again = await moa_gateway("init", env=env, cwd=tmp_path)
    assert again.code == 2 and "not overwriting" in again.err
    assert (tmp_path / "moa-gateway.toml").read_text().endswith("# mine\n")
    # The written file is found without --config and is valid; only its variables are missing.
    check = await moa_gateway("check-config", env=env, cwd=tmp_path)
    assert check.code == 1 and "OPENROUTER_API_KEY" in check.last_err_line


@pytest.mark.parametrize("how", ["dash", "no-prompt"])
async def test_ask_reads_the_question_from_stdin(fake, tmp_path, how):
    (tmp_path / "moa-gateway.toml").write_text(fake_config(fake.openai_base))
    args = ("ask", "-") if how == "dash" else ("ask",)
    ran = await moa_gateway(*args, env=clean_env(tmp_path, TEST_KEY="k"), cwd=tmp_path,
                            stdin=b"a question\nover two lines\n")
    assert ran.code == 0, ran.err
    sent = fake.for_model("ref-a")[0].body["messages"]
    assert sent[-1] == {"role": "user", "content": "a question\nover two lines"}


async def test_ask_with_no_prompt_on_empty_stdin_is_a_usage_error(fake, tmp_path):
    (tmp_path / "moa-gateway.toml").write_text(fake_config(fake.openai_base))
    ran = await moa_gateway("ask", env=clean_env(tmp_path, TEST_KEY="k"), cwd=tmp_path, stdin=b"")
    assert ran.code == 2 and "empty" in ran.err and not fake.requests


async def test_the_footer_reads_the_same_in_ask_and_chat(fake, tmp_path):
    fake.reply("agg", Reply(text="ANSWER"))
    (tmp_path / "moa-gateway.toml").write_text(fake_config(fake.openai_base))
    env = clean_env(tmp_path, TEST_KEY="k")
    asked = await moa_gateway("ask", "q", env=env, cwd=tmp_path)
    chatted = await moa_gateway("chat", env=env, cwd=tmp_path, stdin=b"q\n")
    assert asked.code == 0 and chatted.code == 0, asked.err + chatted.err

    def footer(out: str) -> str:
        return next(line for line in out.splitlines() if " references · " in line)

    assert footer(asked.out).startswith("-- default · 2 references")
    assert footer(chatted.out).startswith("-- default · 2 references")


async def test_presets_names_the_default_once(fake, tmp_path):
    (tmp_path / "moa-gateway.toml").write_text(fake_config(fake.openai_base))
    ran = await moa_gateway("presets", env=clean_env(tmp_path), cwd=tmp_path)
    assert ran.code == 0, ran.err
    assert ran.out.splitlines()[:2] == ["default preset: default", "default"]
    assert "default (default)" not in ran.out
