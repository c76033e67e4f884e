"""Attachments as adapters describe them: Telegram and Discord payloads, kinds, file-service URLs."""

from __future__ import annotations

import pytest

from adapters.contract import Attachment
from adapters.discord.normalize import interaction_to_inbound, message_to_inbound
from adapters.download import on_file_service
from adapters.files import attachment_kind, heard_line, media_type_of, sight_note
from tests.adapters.test_discord_normalize import BOT, interaction, message
from tests.adapters.test_telegram_normalize import normalize
from tests.fakes.telegram_server import message_update


@pytest.mark.parametrize("name, media_type, kind", [
    ("photo.jpg", "image/jpeg", "image"),
    ("notes.md", "application/octet-stream", "text"),
    ("main.py", "text/x-python", "text"),
    ("data.json", "application/json", "text"),
    ("Dockerfile", "application/octet-stream", "text"),
    ("logo.svg", "image/svg+xml", "text"),
    ("voice.ogg", "audio/ogg", "audio"),
    ("report.pdf", "application/pdf", "other"),
])
def test_kinds_by_media_type_or_name(name, media_type, kind):
    assert attachment_kind(name, media_type) == kind


def test_media_type_drops_parameters_or_is_guessed_from_the_name():
    assert media_type_of("a.txt", "text/plain; charset=utf-8") == "text/plain"
    assert media_type_of("a.csv", None) == "text/csv"
    assert media_type_of("blob", "") == "application/octet-stream"


def test_summary_words():
    assert sight_note(None) == "" and sight_note(True) == "saw the image"
    assert sight_note(False) == "image as text only"
    assert heard_line("  what\n is  this ") == "heard: “what is this”"
    assert heard_line("x" * 400).endswith("…”") and heard_line(None) == ""


def test_telegram_photo_largest_size_document_and_voice():
    update = message_update(None, caption="/moa what is this?", photo=[
        {"file_id": "small", "file_unique_id": "a", "width": 90, "height": 60, "file_size": 10},
        {"file_id": "big", "file_unique_id": "b", "width": 1280, "height": 720, "file_size": 900},
    ])
    inbound = normalize(update)
    assert inbound.text == "/moa what is this?" and inbound.is_command
    assert inbound.attachments == (Attachment("image", "photo.jpg", "image/jpeg", 900, "big", 1280, 720),)
    doc = normalize(message_update(None, document={"file_id": "d", "file_unique_id": "d", "file_name": "log.csv",
                                                   "mime_type": "text/csv", "file_size": 5}))
    assert doc.text == "" and doc.attachments == (Attachment("text", "log.csv", "text/csv", 5, "d"),)
    voice = normalize(message_update(None, voice={"file_id": "v", "file_unique_id": "v", "duration": 3}))
    assert voice.attachments == (Attachment("audio", "voice.ogg", "audio/ogg", None, "v"),)
    assert normalize(message_update(None)) is None  # neither text nor file


def test_discord_message_attachments_and_the_ask_option():
    item = {"id": "55", "filename": "shot.png", "content_type": "image/png", "size": 1234,
            "url": "https://cdn.discordapp.com/attachments/1/55/shot.png?ex=1", "width": 64, "height": 32}
    inbound = message_to_inbound(message(content="", attachments=[item]), bot_user_id=BOT)
    assert inbound is not None and inbound.text == ""
    assert inbound.attachments == (Attachment("image", "shot.png", "image/png", 1234, item["url"], 64, 32),)
    ask = interaction("ask", {"prompt": "what is this?"})
    ask["data"]["options"][0]["options"].append({"type": 11, "name": "attachment", "value": "55"})
    ask["data"]["resolved"] = {"attachments": {"55": item}}
    command = interaction_to_inbound(ask)
    assert command is not None and command.text == "/moa what is this?"
    assert [a.name for a in command.attachments] == ["shot.png"]


@pytest.mark.parametrize("url, ok", [
    ("https://cdn.discordapp.com/attachments/1/2/a.png?ex=1", True),
    ("https://CDN.discordapp.com/attachments/1/2/a.png", True),
    ("http://cdn.discordapp.com/attachments/1/2/a.png", False),  # another scheme
    ("https://cdn.discordapp.com:8443/attachments/1/2/a.png", False),  # another port
    ("https://cdn.discordapp.com.evil.example/attachments/1/2/a.png", False),
    ("https://evil.example/attachments/1/2/a.png", False),
    ("https://cdn.discordapp.com/avatars/1/2.png", False),  # not under the prefix
    ("https://cdn.discordapp.com/attachments/../emojis/1.png", False),
    ("https://cdn.discordapp.com/attachmentsX/1.png", False),
    ("not a url", False),
])
def test_only_urls_under_the_file_service_prefix_are_fetched(url, ok):
    assert on_file_service(url, ["https://cdn.discordapp.com/attachments"]) is ok


async def test_slack_answers_a_download_without_the_bot_token_with_its_sign_in_page_and_we_stop_there():
    import aiohttp

    from adapters.contract import AttachmentError
    from adapters.download import download
    from tests.fakes.slack_server import FakeSlack

    slack = await FakeSlack(bot_token="xoxb-right").start()
    try:
        shared = slack.add_file(b"a,b\n", "t.csv", "text/csv")
        async with aiohttp.ClientSession() as session:
            prefixes = [slack.files_url + "/"]
            ok = await download(session, shared["url_private"], name="t.csv", service="Slack", prefixes=prefixes,
                                max_bytes=100, headers={"Authorization": "Bearer xoxb-right"})
            assert ok == b"a,b\n"
            with pytest.raises(AttachmentError, match=r"t.csv: the download from Slack failed \(HTTP 302\)"):
                await download(session, shared["url_private"], name="t.csv", service="Slack", prefixes=prefixes,
                               max_bytes=100, headers={"Authorization": "Bearer xoxb-wrong"})
            with pytest.raises(AttachmentError, match="over the 3 byte limit"):
                await download(session, shared["url_private"], name="t.csv", service="Slack", prefixes=prefixes,
                               max_bytes=3, headers={"Authorization": "Bearer xoxb-right"})
        assert [auth for _, auth in slack.downloads] == ["Bearer xoxb-right", "Bearer xoxb-wrong", "Bearer xoxb-right"]
    finally:
        await slack.stop()


def test_an_album_merges_into_its_captioned_item():
    from adapters.telegram.normalize import merge_album

    def item(message_id: int, caption: str | None, file_id: str) -> dict:
        update = message_update(None, caption=caption, message_id=message_id, photo=[
            {"file_id": file_id, "file_unique_id": file_id, "width": 10, "height": 10}])
        update["message"]["media_group_id"] = "g"
        return update

    parts = [normalize(item(12, None, "c")), normalize(item(11, "compare", "b")), normalize(item(10, None, "a"))]
    merged = merge_album(parts)
    assert merged.text == "compare" and merged.message_id == "11"
    assert [a.ref for a in merged.attachments] == ["a", "b", "c"]
