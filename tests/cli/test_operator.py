"""What an operator relies on, through the real console script: check-config's verdict and exit
codes, a relative database beside the config file, `ask` recorded like `chat`, commands answered
in order with the turns of their chat, and provider failures that say what happened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.cli.kit import clean_env, fake_config, moa_gateway
from tests.fakes.provider_server import Reply


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "moa-gateway.toml"
    path.write_text(text)
    return path


# -- check-config ---------------------------------------------------------------------------------


async def test_check_config_verdicts_and_exit_codes(fake, tmp_path):
    ok = fake_config(fake.openai_base, extra='\n[telegram]\ntoken_env = "TEST_TG"\nallow_all = true\n')
    path = write(tmp_path, ok)
    ran = await moa_gateway("check-config", env=clean_env(tmp_path, TEST_KEY="k", TEST_TG="1:t"), cwd=tmp_path)
    assert (ran.code, ran.out.splitlines()[-1]) == (0, "config OK")

    write(tmp_path, fake_config(fake.openai_base))  # no platform: usable by ask and chat only
    ran = await moa_gateway("check-config", env=clean_env(tmp_path, TEST_KEY="k"), cwd=tmp_path)
    assert ran.code == 0 and ran.out.splitlines()[-1].startswith("config OK, but: no platform is configured")

    path.write_text(ok)  # variables named by the file but not set: an error, exit 1, not a warning
    ran = await moa_gateway("check-config", env=clean_env(tmp_path), cwd=tmp_path)
    assert ran.code == 1 and "warning" not in ran.out + ran.err
    last = ran.last_err_line
    assert last.startswith("error: 2 environment variable(s)") and "TEST_KEY" in last and "TEST_TG" in last

    path.write_text(ok.replace('api = "openai"', 'api = "nope"'))
    ran = await moa_gateway("check-config", env=clean_env(tmp_path), cwd=tmp_path)
    assert ran.code == 2 and ran.last_err_line.startswith("error: ") and "providers.fake.api" in ran.err

    ran = await moa_gateway("check-config", "--config", str(tmp_path / "absent.toml"), env=clean_env(tmp_path),
                            cwd=tmp_path)
    assert ran.code == 2 and "file not found" in ran.err and "moa-gateway init" in ran.err


# -- where the database is ------------------------------------------------------------------------


async def test_a_relative_database_is_beside_the_config_file(fake, tmp_path):
    config = write(tmp_path / "etc", fake_config(fake.openai_base, database="state/moa.db"))
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    ran = await moa_gateway("ask", "--config", str(config), "q", env=clean_env(tmp_path, TEST_KEY="k"),
                            cwd=elsewhere)
    assert ran.code == 0, ran.err
    assert (tmp_path / "etc" / "state" / "moa.db").exists()
    assert not list(elsewhere.rglob("*.db"))
    costs = await moa_gateway("costs", "--config", "etc/moa-gateway.toml", env=clean_env(tmp_path), cwd=tmp_path)
    assert costs.code == 0 and "fake:agg (aggregator)" in costs.out


# -- ask is recorded ------------------------------------------------------------------------------


async def test_ask_records_its_turn_and_costs_unless_no_store(fake, tmp_path):
    fake.reply("ref-a", Reply(text="advice", cost=0.5))
    fake.reply("agg", Reply(text="answer", cost=0.25))
    write(tmp_path, fake_config(fake.openai_base))
    env = clean_env(tmp_path, TEST_KEY="k")
    ran = await moa_gateway("ask", "what does it cost?", env=env, cwd=tmp_path)
    assert ran.code == 0, ran.err
    with sqlite3.connect(tmp_path / "moa.db") as db:
        turns = db.execute("SELECT platform, chat_id, prompt, status, answer FROM turns").fetchall()
        calls = db.execute("SELECT count(*), sum(cost_usd) FROM model_calls").fetchone()
    assert turns == [("terminal", "local", "what does it cost?", "done", "answer")]
    assert calls[0] == 3 and calls[1] == pytest.approx(0.75)

    costs = await moa_gateway("costs", env=env, cwd=tmp_path)
    assert costs.code == 0 and costs.out.strip().splitlines()[-1].split()[1].startswith("$0.75")
    # The terminal chat's /moa cost counts the ask too.
    chat = await moa_gateway("chat", env=env, cwd=tmp_path, stdin=b"/moa cost\n")
    assert "This chat — day" in chat.out and "$0.75" in chat.out

    again = await moa_gateway("ask", "--no-store", "not recorded", env=env, cwd=tmp_path)
    assert again.code == 0, again.err
    with sqlite3.connect(tmp_path / "moa.db") as db:
        assert db.execute("SELECT count(*) FROM turns WHERE prompt = 'not recorded'").fetchone()[0] == 0


# -- chat: commands in order ----------------------------------------------------------------------


async def test_chat_answers_a_command_after_the_turn_typed_before_it(fake, tmp_path):
    fake.reply("ref-a", Reply(text="advice", cost=0.125, delay=0.5))  # a turn that takes a moment
    fake.reply("agg", Reply(text="THE-ANSWER", cost=0.25))
    write(tmp_path, fake_config(fake.openai_base))
    ran = await moa_gateway("chat", env=clean_env(tmp_path, TEST_KEY="k"), cwd=tmp_path,
                            stdin=b"first question\n/moa cost\n/moa presets\n")
    assert ran.code == 0, ran.err
    out = ran.out
    assert out.index("THE-ANSWER") < out.index("This chat — day") < out.index("Presets:")
    report = out[out.index("This chat — day"):]
    assert "$0.375" in report.splitlines()[0] and "1 turn" in report.splitlines()[0]


# -- provider failures in words -------------------------------------------------------------------


async def test_provider_failures_say_what_happened(fake, tmp_path):
    env = clean_env(tmp_path, TEST_KEY="k")
    write(tmp_path, fake_config("http://127.0.0.1:9/v1"))  # nothing listens there
    ran = await moa_gateway("ask", "q", env=env, cwd=tmp_path)
    assert ran.code == 1 and "Traceback" not in ran.err
    assert "cannot connect to 127.0.0.1:9: Connection refused" in ran.last_err_line
    assert "Timeout" not in ran.err and "timed out" not in ran.err

    write(tmp_path, fake_config(fake.url))  # the base URL without its /v1: a 404
    ran = await moa_gateway("ask", "q", env=env, cwd=tmp_path)
    line = ran.last_err_line
    assert ran.code == 1 and "HTTP 404" in line
    assert f"called {fake.url}/chat/completions" in line and "usually end in /v1" in line

    fake.reply("agg", Reply(text="an answer that the server cuts short", chunk_chars=3, cut_after=3))
    write(tmp_path, fake_config(fake.openai_base))
    ran = await moa_gateway("ask", "q", env=env, cwd=tmp_path)
    line = ran.last_err_line
    assert ran.code == 1 and "stream ended early" in line
    assert "the server closed the connection before the response was complete" in line
    assert "TransferEncodingError" not in ran.err and "400" not in line
