"""The Slack adapter in HTTP mode: signed Events API and slash-command requests on 127.0.0.1,
verified by slack-bolt; the Web API is the fake Slack."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import aiohttp
import pytest

from adapters.contract import InboundMessage
from adapters.slack import SlackAdapter, SlackSettings
from tests.fakes.slack_server import BOT_USER_ID, FakeSlack, command_body, event_body, sign

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    server = await FakeSlack().start()
    yield server
    await server.stop()


@pytest.fixture
async def received() -> list[InboundMessage]:
    return []


@pytest.fixture
async def slack(fake: FakeSlack, received: list[InboundMessage]) -> AsyncIterator[SlackAdapter]:
    async def on_inbound(message: InboundMessage) -> None:
        received.append(message)

    settings = SlackSettings(
        bot_token="xoxb-test",
        signing_secret=SECRET,
        base_url=fake.base_url,
        http_host="127.0.0.1",
        http_port=0,
    )
    adapter = SlackAdapter(settings)
    await adapter.start(on_inbound)
    yield adapter
    await adapter.stop()


async def post(
    adapter: SlackAdapter,
    body: str,
    headers: dict[str, str],
    content_type: str,
) -> tuple[int, str, dict[str, str]]:
    url = f"http://127.0.0.1:{adapter.http_port}{adapter.settings.http_path}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body.encode(), headers={**headers, "Content-Type": content_type}) as resp,
    ):
        return resp.status, await resp.text(), dict(resp.headers)


def form(fake: FakeSlack, text: str, trigger_id: str = "trig-http") -> str:
    return urlencode(
        command_body(text, user_id="U1", channel_id="C1", trigger_id=trigger_id, base=fake.base_url)
    )


async def test_a_bad_signature_is_refused(fake: FakeSlack, slack: SlackAdapter, received: list) -> None:
    body = form(fake, "hello")
    headers = sign("not-the-secret", body)
    status, _, _ = await post(slack, body, headers, "application/x-www-form-urlencoded")
    assert status == 401
    headers = {**sign(SECRET, body), "X-Slack-Signature": "v0=" + "0" * 64}
    status, _, _ = await post(slack, body, headers, "application/x-www-form-urlencoded")
    assert status == 401
    assert received == [] and fake.calls_to("chat.postMessage") == []


async def test_a_stale_signature_is_refused(fake: FakeSlack, slack: SlackAdapter, received: list) -> None:
    body = form(fake, "hello")
    headers = sign(SECRET, body, timestamp=int(time.time()) - 301)
    status, _, _ = await post(slack, body, headers, "application/x-www-form-urlencoded")
    assert status == 401 and received == []


async def test_a_signed_slash_command_is_acked_then_forwarded(
    fake: FakeSlack, slack: SlackAdapter, received: list
) -> None:
    body = form(fake, "+deep why is the sky blue")
    started = time.monotonic()
    status, _, _ = await post(slack, body, sign(SECRET, body), "application/x-www-form-urlencoded")
    assert status == 200 and time.monotonic() - started < 3.0
    await fake.wait_for(lambda: received)
    (message,) = received
    assert message.text == "/moa +deep why is the sky blue" and message.event_id == "cmd:trig-http"
    assert "C1" not in fake.messages  # no echo until the gateway has accepted the command
    threaded = await slack.accepted(message)
    (root,) = fake.messages["C1"]
    assert threaded.thread_id == root["ts"] and root["text"] == "<@U1> asked: /moa +deep why is the sky blue"


@pytest.mark.parametrize("timestamp", ["abc", "", "1.5e9", "-1"])
async def test_a_timestamp_that_is_not_a_number_is_refused_with_401(
    fake: FakeSlack, slack: SlackAdapter, received: list, timestamp: str
) -> None:
    body = form(fake, "hello")
    headers = {**sign(SECRET, body), "X-Slack-Request-Timestamp": timestamp}
    status, _, _ = await post(slack, body, headers, "application/x-www-form-urlencoded")
    assert status == 401 and received == []


async def test_a_signed_event_and_its_retry_are_acked_with_the_same_event_id(
    fake: FakeSlack, slack: SlackAdapter, received: list
) -> None:
    event = {
        "type": "app_mention",
        "user": "U1",
        "text": f"<@{BOT_USER_ID}> hi",
        "ts": "1700000600.000100",
        "channel": "C1",
    }
    body = json.dumps(event_body(event, event_id="EvHttp"))
    status, _, headers = await post(slack, body, sign(SECRET, body), "application/json")
    assert status == 200 and "X-Slack-No-Retry" not in headers
    retry = {**sign(SECRET, body), "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    status, _, headers = await post(slack, body, retry, "application/json")
    assert status == 200 and headers.get("X-Slack-No-Retry") == "1"
    await fake.wait_for(lambda: len(received) == 2)
    assert [m.event_id for m in received] == ["EvHttp", "EvHttp"]
    assert received[0].thread_id == "1700000600.000100" and received[0].text == "hi"


async def test_url_verification_is_answered(slack: SlackAdapter) -> None:
    body = json.dumps({"token": "t", "challenge": "c-123", "type": "url_verification"})
    status, text, _ = await post(slack, body, sign(SECRET, body), "application/json")
    assert status == 200 and "c-123" in text


def test_http_mode_needs_a_signing_secret() -> None:
    with pytest.raises(ValueError, match="signing_secret"):
        SlackAdapter(SlackSettings(bot_token="xoxb-1"))
