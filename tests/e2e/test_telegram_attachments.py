"""Attachments on Telegram, end to end: the real gateway and adapter against the fake Bot API
(getFile + the file download) and the fake provider (chat models and /audio/transcriptions)."""

from __future__ import annotations

import base64
import io
import time

import pytest
from PIL import Image

from tests.e2e.kit import (
    GROUP_ID,
    KEY_ENV,
    USER_ID,
    InProcess,
    query,
    start_in_process,
    texts,
    wait_until,
    write_config,
)
from tests.fakes.provider_server import FakeProvider, Reply
from tests.fakes.telegram_server import FakeTelegram, message_update, user

FOOTER = " tokens · "


def jpeg(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


def tables(provider: FakeProvider, **extra) -> dict:
    """Two providers on the fake: `eye` can see, `fake` cannot; a preset using both."""
    return {
        "providers.eye": {"api": "openai", "base_url": provider.openai_base, "api_key_env": KEY_ENV,
                          "price_in_per_mtok": 1.0, "price_out_per_mtok": 2.0, "max_retries": 0, "vision": True},
        "presets.default": {"references": ["eye:ref-eye", "fake:ref-a"], "aggregator": "eye:agg",
                            "reference_timeout": 15, "tools": []},
        **extra,
    }


@pytest.fixture
async def bot(tmp_path, provider, telegram):
    started: list[InProcess] = []

    async def start(telegram_options: dict | None = None, **extra) -> InProcess:
        running = await start_in_process(write_config(tmp_path, provider, telegram, tables=tables(provider, **extra),
                                                      telegram_options=telegram_options))
        started.append(running)
        return running

    yield start
    for running in started:
        await running.close()


def in_group(text: str | None = None, **fields) -> dict:
    chat = {"id": GROUP_ID, "type": "supergroup", "title": "Team"}
    return message_update(text, chat=chat, sender=user(USER_ID), date=int(time.time()), **fields)


def in_dm(text: str | None = None, **fields) -> dict:
    chat = {"id": USER_ID, "type": "private", "first_name": "Ada", "username": "ada"}
    return message_update(text, chat=chat, sender=user(USER_ID), date=int(time.time()), **fields)


async def answered(telegram: FakeTelegram, chat_id: int, count: int = 1) -> None:
    await wait_until(lambda: sum(FOOTER in t for t in texts(telegram, chat_id)) >= count,
                     f"{count} final answer(s) in chat {chat_id}",
                     explain=lambda: f"chat shows: {texts(telegram, chat_id)}")


def last_user_content(provider: FakeProvider, model: str, n: int = 0):
    return provider.for_model(model)[n].body["messages"][-1]["content"]


async def test_a_photo_with_a_moa_caption_is_seen_by_the_vision_reference_only(bot, provider, telegram, tmp_path):
    photo = jpeg(64, 48)
    small = telegram.add_file(jpeg(8, 6), name="small.jpg")
    large = telegram.add_file(photo, name="large.jpg")
    provider.reply("ref-eye", Reply(text="A red rectangle."))
    provider.reply("agg", Reply(text="It is a red picture PHOTO-MARK."))
    running = await bot()
    telegram.push_update(in_group(caption="/moa what is this?", photo=[
        {"file_id": small, "file_unique_id": "s", "width": 8, "height": 6, "file_size": 300},
        {"file_id": large, "file_unique_id": "l", "width": 64, "height": 48, "file_size": len(photo)},
    ]))
    await answered(telegram, GROUP_ID)
    await running.app.gateway.idle()

    # The largest size was fetched, through getFile and the bot's file URL.
    assert telegram.downloads == [telegram.files[large][0]]
    eye = last_user_content(provider, "ref-eye")
    assert eye[0] == {"type": "text", "text": "what is this?"}
    url = eye[1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,") and base64.b64decode(url.split(",", 1)[1]) == photo
    assert last_user_content(provider, "ref-a") == "what is this?\n[image: photo.jpg, 64×48, not visible to you]"
    agg = last_user_content(provider, "agg")
    assert base64.b64decode(agg[1]["image_url"]["url"].split(",", 1)[1]) == photo

    shown = texts(telegram, GROUP_ID)
    [summary] = [t for t in shown if "eye:ref-eye" in t]
    [answer] = [t for t in shown if "PHOTO-MARK" in t]
    assert shown.index(summary) < shown.index(answer)
    eye_line = next(line for line in summary.splitlines() if "eye:ref-eye" in line)
    text_line = next(line for line in summary.splitlines() if "fake:ref-a" in line)
    assert "saw the image" in eye_line and "image as text only" in text_line

    # Stored: the image's description, never its bytes.
    [row] = query(tmp_path / "gateway.db", "select content, images from messages where role = 'user'")
    assert row["content"] == "what is this?" and '"name": "photo.jpg"' in row["images"]
    assert '"width": 64' in row["images"]
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("gateway.db*"))
    assert photo[100:140] not in raw and base64.b64encode(photo)[:60] not in raw

    # A later turn gets the stand-in (keep_images_in_history is off).
    telegram.push_update(in_group("/moa and its colour?", message_id=11))
    await answered(telegram, GROUP_ID, 2)
    later = provider.for_model("ref-eye")[1].body["messages"]
    assert all(isinstance(m["content"], str) for m in later)
    assert "[image: photo.jpg, 64×48, shown in an earlier turn, not kept]" in later[-3]["content"]


async def test_kept_images_go_to_later_turns(bot, provider, telegram):
    photo = jpeg()
    running = await bot(attachments={"keep_images_in_history": True})
    telegram.push_update(in_dm(caption="what is this?", photo=[
        {"file_id": telegram.add_file(photo), "file_unique_id": "l", "width": 64, "height": 48}]))
    await answered(telegram, USER_ID)
    await running.app.gateway.idle()
    telegram.push_update(in_dm("and now?", message_id=11))
    await answered(telegram, USER_ID, 2)
    later = provider.for_model("ref-eye")[1].body["messages"]
    first_user = next(m for m in later if m["role"] == "user")
    assert base64.b64decode(first_user["content"][1]["image_url"]["url"].split(",", 1)[1]) == photo


async def test_a_text_file_is_inlined_and_cut_head_and_tail(bot, provider, telegram):
    body = "HEAD-" + "x" * 5000 + "MIDDLE" + "y" * 5000 + "-TAIL"
    file_id = telegram.add_file(body.encode(), name="log.txt")
    await bot(attachments={"text_max_chars": 1000})
    telegram.push_update(in_dm(caption="what went wrong?", document={
        "file_id": file_id, "file_unique_id": "d", "file_name": "log.txt", "mime_type": "text/plain",
        "file_size": len(body)}))
    await answered(telegram, USER_ID)
    content = last_user_content(provider, "ref-a")
    assert content.startswith("what went wrong?\n\nFile log.txt (10,016 characters), cut to its first 500 and "
                              "last 500 characters (text_max_chars = 1,000):\n```txt\nHEAD-")
    assert content.endswith("-TAIL\n```") and "MIDDLE" not in content
    assert "[… 9,016 characters left out …]" in content


async def test_a_voice_note_is_transcribed_into_the_question_and_its_cost_booked(bot, provider, telegram, tmp_path):
    voice = b"OggS-fake-voice-bytes" * 10
    provider.transcript("whisper-1", "What is the capital of France?",
                        usage={"type": "tokens", "input_tokens": 50, "output_tokens": 10})
    provider.reply("agg", Reply(text="Paris VOICE-MARK."))
    running = await bot(transcription={"provider": "fake", "model": "whisper-1"})
    telegram.push_update(in_dm(voice={"file_id": telegram.add_file(voice, name="voice.ogg"),
                                      "file_unique_id": "v", "duration": 2, "mime_type": "audio/ogg",
                                      "file_size": len(voice)}))
    await answered(telegram, USER_ID)
    await running.app.gateway.idle()

    [sent] = provider.transcriptions
    assert sent.data == voice and sent.model == "whisper-1" and sent.content_type == "audio/ogg"
    assert sent.authorization == "Bearer sk-e2e-not-a-secret"
    assert last_user_content(provider, "ref-a") == "What is the capital of France?"
    [summary] = [t for t in texts(telegram, USER_ID) if "fake:ref-a" in t]
    assert "heard: “What is the capital of France?”" in summary
    rows = query(tmp_path / "gateway.db", "select role, provider, model, status, input, output, cost_usd "
                 "from model_calls where role = 'transcription'")
    assert rows == [{"role": "transcription", "provider": "fake", "model": "whisper-1", "status": "ok",
                     "input": 50, "output": 10, "cost_usd": pytest.approx(50 / 1e6 + 10 * 2 / 1e6)}]


async def test_without_a_transcription_provider_the_reply_says_how_to_set_one(bot, provider, telegram):
    running = await bot()
    telegram.push_update(in_dm(voice={"file_id": telegram.add_file(b"OggS"), "file_unique_id": "v",
                                      "duration": 1, "mime_type": "audio/ogg"}))
    await wait_until(lambda: any("[transcription]" in t for t in texts(telegram, USER_ID)), "the how-to notice")
    await running.app.gateway.idle()
    assert provider.requests == [] and telegram.downloads == []
    assert 'provider = "NAME"' in texts(telegram, USER_ID)[0]


async def test_an_oversized_file_is_refused_by_name_and_the_question_goes_on(bot, provider, telegram):
    big = b"z" * 5000
    await bot(attachments={"max_bytes": 1000})
    telegram.push_update(in_dm(caption="summarise this please", document={
        "file_id": telegram.add_file(big, name="big.txt"), "file_unique_id": "b", "file_name": "big.txt",
        "mime_type": "text/plain", "file_size": len(big)}))
    await answered(telegram, USER_ID)
    shown = texts(telegram, USER_ID)
    assert "big.txt: 5 KB, over the 1000 bytes limit" in shown[0]
    assert telegram.downloads == []
    assert last_user_content(provider, "ref-a") == "summarise this please"


async def test_a_file_path_outside_the_file_service_is_refused(bot, provider, telegram, tmp_path):
    secret = tmp_path / "local-secret.txt"
    secret.write_text("LOCAL-SECRET")
    # A Bot API answer naming a local path: PTB would read it from this machine's disk.
    file_id = telegram.add_file(b"unused", file_path=str(secret))
    await bot()
    telegram.push_update(in_dm(caption="read this", document={
        "file_id": file_id, "file_unique_id": "x", "file_name": "notes.txt", "mime_type": "text/plain"}))
    await answered(telegram, USER_ID)
    assert "notes.txt: Telegram named a file outside its file service" in texts(telegram, USER_ID)[0]
    assert all("LOCAL-SECRET" not in str(r.body) for r in provider.requests)


async def test_over_budget_nothing_is_transcribed(bot, provider, telegram):
    running = await bot(transcription={"provider": "fake", "model": "whisper-1"},
                        budgets={"per_user_usd_day": 0.0})
    telegram.push_update(in_dm(voice={"file_id": telegram.add_file(b"OggS"), "file_unique_id": "v",
                                      "duration": 1, "mime_type": "audio/ogg"}))
    await wait_until(lambda: bool(texts(telegram, USER_ID)), "the refusal")
    await running.app.gateway.idle()
    assert "budget" in texts(telegram, USER_ID)[0].lower()
    assert provider.transcriptions == [] and telegram.downloads == [] and provider.requests == []


async def test_a_bare_moa_caption_asks_about_the_photo_alone(bot, provider, telegram):
    photo = jpeg()
    await bot()
    telegram.push_update(in_group(caption="/moa", photo=[
        {"file_id": telegram.add_file(photo), "file_unique_id": "l", "width": 64, "height": 48}]))
    await answered(telegram, GROUP_ID)
    assert last_user_content(provider, "ref-a") == "[image: photo.jpg, 64×48, not visible to you]"
    assert last_user_content(provider, "ref-eye") == [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(photo).decode()}}]


async def test_a_voice_note_without_speech_is_told_and_its_transcription_still_booked(bot, provider, telegram,
                                                                                       tmp_path):
    provider.transcript("whisper-1", "  ", usage={"type": "tokens", "input_tokens": 40, "output_tokens": 0})
    running = await bot(transcription={"provider": "fake", "model": "whisper-1"})
    telegram.push_update(in_dm(voice={"file_id": telegram.add_file(b"OggS-silence"), "file_unique_id": "v",
                                      "duration": 1, "mime_type": "audio/ogg"}))
    await wait_until(lambda: bool(texts(telegram, USER_ID)), "the notice")
    await running.app.gateway.idle()
    assert "voice.ogg: no speech was recognised" in texts(telegram, USER_ID)[0]
    await wait_until(lambda: query(tmp_path / "gateway.db", "select status from turns") == [{"status": "failed"}],
                     "the transcription booked on a failed turn")
    assert provider.requests == []  # no turn ran
    [row] = query(tmp_path / "gateway.db", "select t.status, m.role, m.input, m.cost_usd from model_calls m "
                  "join turns t on t.id = m.turn_id")
    assert row == {"status": "failed", "role": "transcription", "input": 40, "cost_usd": pytest.approx(40 / 1e6)}
    assert query(tmp_path / "gateway.db", "select count(*) as n from messages") == [{"n": 0}]


async def test_an_album_is_one_question_with_all_its_pictures(bot, provider, telegram):
    first, second = jpeg(30, 20), jpeg(20, 30)
    running = await bot(telegram_options={"album_wait_s": 0.3})
    items = [
        in_dm(caption="which one is taller?", message_id=20, photo=[
            {"file_id": telegram.add_file(first), "file_unique_id": "a", "width": 30, "height": 20}]),
        in_dm(message_id=21, photo=[
            {"file_id": telegram.add_file(second), "file_unique_id": "b", "width": 20, "height": 30}]),
    ]
    for item in items:
        item["message"]["media_group_id"] = "album-1"
        telegram.push_update(item)
    await answered(telegram, USER_ID)
    await running.app.gateway.idle()
    [request] = provider.for_model("ref-eye")  # one turn, not two
    parts = request.body["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "which one is taller?"}
    sent = [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in parts[1:]]
    assert sent == [first, second]
    assert last_user_content(provider, "ref-a") == ("which one is taller?\n[image: photo.jpg, 30×20, not visible "
                                                    "to you]\n[image: photo.jpg, 20×30, not visible to you]")
