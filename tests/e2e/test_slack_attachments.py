"""Attachments on Slack, end to end: files shared in a mention or a thread reply, downloaded
from the fake Slack's url_private with the bot token (only from there), into the models."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from gateway.app import build_adapters, build_app
from gateway.config import load_config
from tests.e2e.test_slack_gateway import ADMIN_ID, CHANNEL, CONFIG, ENV, MEMBER_ID, World, summary_and_answers
from tests.fakes.provider_server import FakeProvider, Reply
from tests.fakes.slack_server import FakeSlack

VISION = """
[providers.eye]
api = "openai"
base_url = "{openai_base}"
api_key_env = "FAKE_KEY"
max_retries = 0
vision_models = ["ref-eye"]

[presets.default]
references = ["eye:ref-eye", "fake:ref-a"]
aggregator = "fake:agg"
reference_timeout = 5
"""


def gif() -> bytes:
    out = io.BytesIO()
    Image.new("P", (12, 9)).save(out, "GIF")
    return out.getvalue()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with FakeProvider() as models:
        slack = await FakeSlack(users={MEMBER_ID: "Alice", ADMIN_ID: "Root"}, bot_token=ENV["SLACK_BOT_TOKEN"]).start()
        base = CONFIG.replace('[presets.default]\nreferences = ["fake:ref-a", "fake:ref-b"]\naggregator = "fake:agg"\n'
                              'reference_timeout = 5\n', VISION)
        base = base.replace("edit_interval_s = 0.2\n", 'edit_interval_s = 0.2\nfiles_url = "{files_url}"\n')
        path = tmp_path / "moa-gateway.toml"
        path.write_text(base.format(db=tmp_path / "gw.db", openai_base=models.openai_base, base_url=slack.base_url,
                                    admin=ADMIN_ID, channel=CHANNEL, files_url=slack.files_url), encoding="utf-8")
        config = load_config(path)
        app = await build_app(config, build_adapters(config, ENV), env=ENV)
        try:
            await app.gateway.start()
            yield World(slack, models, app)
        finally:
            await app.gateway.shutdown(grace_s=1)
            await app.close()
            await slack.stop()


async def test_a_picture_shared_with_a_mention_reaches_the_vision_reference_with_the_bot_token(world: World) -> None:
    picture = gif()
    shared = world.slack.add_file(picture, "diagram.gif", "image/gif", original_w=12, original_h=9)
    world.models.reply("agg", Reply(text="A small diagram."))
    event = {**world.mention_event("what is this?"), "files": [shared]}
    await world.slack.push_event(event, event_id="Ev-photo")
    await world.answered()

    [(path, auth)] = world.slack.downloads
    assert path.endswith("/download/diagram.gif") and auth == f"Bearer {ENV['SLACK_BOT_TOKEN']}"
    eye = world.models.for_model("ref-eye")[0].body["messages"][-1]["content"]
    assert base64.b64decode(eye[1]["image_url"]["url"].split(",", 1)[1]) == picture
    assert world.models.for_model("ref-a")[0].body["messages"][-1]["content"] == (
        "what is this?\n[image: diagram.gif, 12×9, not visible to you]")
    assert world.models.for_model("agg")[0].body["messages"][-1]["content"].startswith(
        "what is this?\n[image: diagram.gif, 12×9, not visible to you]")
    summary, answers = summary_and_answers(world.slack.thread(CHANNEL, event["ts"]))
    lines = [b["text"]["text"] for b in summary["blocks"] if b["type"] == "section"]
    assert "saw the image" in lines[0] and "image as text only" in lines[1]
    assert answers and answers[0]["text"].startswith("A small diagram.")


async def test_a_text_file_in_a_thread_reply_is_inlined(world: World) -> None:
    world.models.reply("agg", Reply(text="First answer."))
    first = world.mention_event("hello")
    await world.slack.push_event(first, event_id="Ev-1")
    await world.answered()
    shared = world.slack.add_file(b"a,b\n1,2\n", "table.csv", "text/csv")
    reply = {"type": "message", "subtype": "file_share", "user": MEMBER_ID, "text": "sum column b",
             "ts": f"{float(first['ts']) + 1:.6f}", "thread_ts": first["ts"], "channel": CHANNEL,
             "channel_type": "channel", "parent_user_id": MEMBER_ID, "files": [shared]}
    await world.slack.push_event(reply, event_id="Ev-2")
    await world.answered(count=2)
    assert world.models.for_model("ref-a")[1].body["messages"][-1]["content"] == (
        "sum column b\n\nFile table.csv (8 characters):\n```csv\na,b\n1,2\n\n```")


async def test_files_elsewhere_or_refused_by_slack_are_named_and_the_question_goes_on(world: World) -> None:
    elsewhere = world.slack.add_file(b"x", "evil.txt", "text/plain")
    elsewhere["url_private_download"] = elsewhere["url_private_download"].replace(
        world.slack.files_url, world.models.url)
    event = {**world.mention_event("read these"), "files": [elsewhere]}
    await world.slack.push_event(event, event_id="Ev-evil")
    await world.answered()
    notice = await world.posted(CHANNEL, "Not used")
    assert "evil.txt: refused, the file is not on Slack's file service (127.0.0.1)" in notice["text"]
    assert world.slack.downloads == []
    assert world.models.for_model("ref-a")[0].body["messages"][-1]["content"] == "read these"
