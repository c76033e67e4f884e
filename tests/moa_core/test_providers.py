"""ProviderClient against FakeProvider: both wire formats, streaming, usage, retries, deadlines."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moa_core.clock import SystemClock
from moa_core.providers import openai_wire
from moa_core.providers.base import CompletionRequest, MissingApiKey, ProviderError, ProviderTimeout
from moa_core.providers.client import ProviderClient, retry_after_seconds
from moa_core.providers.sse import ServerEvent, SseDecoder
from moa_core.settings import ProviderSettings
from moa_core.values import Message, ToolCall, ToolSpec, Usage
from tests.fakes.provider_server import FakeProvider, Reply

KEY = "sk-test-SECRET-1234567890"
ENV = {"OPENAI_KEY": KEY, "ANTHROPIC_KEY": KEY}
WIRES = ["openai", "anthropic"]
QUESTION = (Message("system", "Be brief."), Message("user", "What is two plus two?"))
WEATHER = ToolSpec(
    "weather", "Weather of a city", {"type": "object", "properties": {"city": {"type": "string"}}}
)


class FakeClock:
    """Real monotonic time plus whatever `sleep` was asked to skip; records the sleeps."""

    def __init__(self) -> None:
        self.skipped = 0.0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)

    def monotonic(self) -> float:
        return time.monotonic() + self.skipped

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.skipped += seconds
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(http, clock) -> ProviderClient:
    return ProviderClient(http, env=ENV, clock=clock, rng=lambda: 0.5)


def provider(fake: FakeProvider, wire: str, **options) -> ProviderSettings:
    base = fake.openai_base if wire == "openai" else fake.anthropic_base
    key_env = "OPENAI_KEY" if wire == "openai" else "ANTHROPIC_KEY"
    return ProviderSettings(
        name=f"fake-{wire}", api=wire, base_url=base, **{"api_key_env": key_env, **options}
    )


def ask(fake: FakeProvider, wire: str, model: str = "m", messages=QUESTION, **fields) -> CompletionRequest:
    options = fields.pop("options", {})
    return CompletionRequest(provider(fake, wire, **options), model, tuple(messages), **fields)


class Collector:
    def __init__(self) -> None:
        self.pieces: list[str] = []

    async def __call__(self, text: str) -> None:
        self.pieces.append(text)


# --- streaming and parsing -------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
async def test_streamed_text_arrives_in_deltas(fake, client, wire):
    fake.reply("m", Reply(text="Four, because two and two make four.", chunk_chars=5))
    got = Collector()
    completion = await client.complete(ask(fake, wire, stream=True), got)
    assert len(got.pieces) > 3
    assert "".join(got.pieces) == completion.text == "Four, because two and two make four."
    assert completion.finish_reason == "stop"
    assert completion.usage.source == "reported"


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("stream", [True, False])
async def test_two_parallel_tool_calls_joined_by_index(fake, client, wire, stream):
    args_a, args_b = {"city": "Paris", "units": "metric"}, {"city": "Reykjavik", "days": [1, 2, 3]}
    fake.reply(
        "m",
        Reply(
            text="Checking." if wire == "anthropic" else "",
            tool_calls=[("call_a", "weather", args_a), ("call_b", "weather", args_b)],
            chunk_chars=4,
        ),
    )
    completion = await client.complete(ask(fake, wire, tools=(WEATHER,), stream=stream))
    assert [(c.id, c.name) for c in completion.tool_calls] == [("call_a", "weather"), ("call_b", "weather")]
    assert [json.loads(c.arguments) for c in completion.tool_calls] == [args_a, args_b]
    assert completion.finish_reason == "tool_calls"


@pytest.mark.parametrize("stream", [True, False])
async def test_anthropic_tool_use_input_object_becomes_json_text(fake, client, stream):
    fake.reply("m", Reply(tool_calls=[("toolu_1", "weather", {"city": "Oslo"})]))
    completion = await client.complete(ask(fake, "anthropic", tools=(WEATHER,), stream=stream))
    assert completion.tool_calls == (ToolCall("toolu_1", "weather", json.dumps({"city": "Oslo"})),)
    tools = fake.requests[0].body["tools"]
    assert tools == [
        {"name": "weather", "description": "Weather of a city", "input_schema": WEATHER.parameters}
    ]


def decode_all(chunks: list[bytes]) -> list[ServerEvent]:
    decoder = SseDecoder()
    events = [e for chunk in chunks for e in decoder.feed(chunk)]
    return events + decoder.close()


def test_openai_stream_tolerates_null_choices():
    events = decode_all([b'data: {"choices": null}\n\ndata: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'])
    acc = openai_wire.StreamAccumulator()
    assert [acc.feed(e) for e in events] == ["", "hi"]


def test_sse_parser_handles_split_crlf_comments_and_multiline_data():
    chunks = [
        b": keep-alive\r",
        b"\nevent: a\r\ndata: one\r",
        b"\ndata: two\r\n\r",
        b"\n",
        b'data: {"x"',
        b": 1}\n\n",
        b"data: last\n",
    ]
    events = decode_all(chunks)
    assert events == [ServerEvent("a", "one\ntwo"), ServerEvent(None, '{"x": 1}'), ServerEvent(None, "last")]
    assert decode_all([b'data: complete\n\ndata: {"half']) == [ServerEvent(None, "complete")]


SSE_STREAM = (
    "\ufeffevent: message_start\r\ndata: {\"a\": \"h\u00e9llo \u2028 \u4e16\u754c\"}\r\n\r\n"
    ": comment\rdata: one\rdata: two\r\rid: 7\ndata:no-space\n\ndata: last\n"
).encode()
SSE_EVENTS = [
    ServerEvent("message_start", '{"a": "h\u00e9llo \u2028 \u4e16\u754c"}'),
    ServerEvent(None, "one\ntwo"),
    ServerEvent(None, "no-space"),
    ServerEvent(None, "last"),
]


def test_sse_decoder_whole_stream():
    assert decode_all([SSE_STREAM]) == SSE_EVENTS


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SSE_STREAM)), max_size=12))
def test_sse_decoder_gives_the_same_events_however_the_bytes_are_split(cuts):
    """Cuts fall anywhere: inside CRLF pairs, the byte-order mark and multi-byte characters."""
    bounds = [0, *sorted(cuts), len(SSE_STREAM)]
    chunks = [SSE_STREAM[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    assert decode_all(chunks) == SSE_EVENTS


# --- usage and cost ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_openai_cached_tokens_are_subtracted_from_input(fake, client, stream):
    fake.reply(
        "m",
        Reply(
            text="ok", usage={"input": 100, "cache_read": 30, "cache_write": 5, "output": 20, "reasoning": 7}
        ),
    )
    completion = await client.complete(ask(fake, "openai", stream=stream))
    assert completion.usage == Usage(input=100, cache_read=30, cache_write=5, output=20, reasoning=7)


@pytest.mark.parametrize("stream", [True, False])
async def test_anthropic_cache_fields_are_separate(fake, client, stream):
    fake.reply(
        "m", Reply(text="ok", usage={"input": 12, "cache_read": 3000, "cache_write": 400, "output": 55})
    )
    completion = await client.complete(ask(fake, "anthropic", stream=stream))
    assert completion.usage == Usage(input=12, cache_read=3000, cache_write=400, output=55)


@pytest.mark.parametrize("stream", [True, False])
async def test_provider_cost_is_requested_and_read(fake, client, stream):
    fake.reply("m", Reply(text="ok", cost=0.00123))
    completion = await client.complete(ask(fake, "openai", stream=stream, options={"request_cost": True}))
    assert completion.provider_cost_usd == pytest.approx(0.00123)
    assert fake.requests[0].body["usage"] == {"include": True}


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("stream", [True, False])
async def test_missing_usage_is_estimated_not_zero(fake, client, wire, stream):
    fake.reply("m", Reply(text="x" * 40, send_usage=False))
    completion = await client.complete(ask(fake, wire, stream=stream))
    assert completion.usage.source == "estimated"
    assert completion.usage.output == 10
    assert completion.usage.input >= len("Be brief.What is two plus two?") // 4


# --- retries --------------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
async def test_429_waits_retry_after_then_succeeds(fake, client, clock, wire):
    fake.reply("m", Reply(status=429, retry_after=7), Reply(text="finally"))
    completion = await client.complete(ask(fake, wire, stream=True, deadline=clock.monotonic() + 60))
    assert completion.text == "finally"
    assert clock.sleeps == [7.0]
    assert len(fake.requests) == 2


async def test_429_real_wait_is_honoured(fake, http):
    fake.reply("m", Reply(status=429, retry_after=0.15), Reply(text="ok"))
    client = ProviderClient(http, env=ENV, clock=SystemClock())
    started = time.monotonic()
    assert (await client.complete(ask(fake, "openai"))).text == "ok"
    assert time.monotonic() - started >= 0.15


async def test_retry_after_past_the_deadline_gives_up_with_the_error(fake, client, clock):
    fake.reply("m", Reply(status=429, retry_after=120))
    with pytest.raises(ProviderError) as info:
        await client.complete(ask(fake, "openai", deadline=clock.monotonic() + 30))
    assert info.value.status == 429 and not isinstance(info.value, ProviderTimeout)
    assert clock.sleeps == [] and len(fake.requests) == 1


@pytest.mark.parametrize(("wire", "status"), [("openai", 500), ("anthropic", 529)])
async def test_server_error_then_success_with_jittered_backoff(fake, client, clock, wire, status):
    fake.reply("m", Reply(status=status), Reply(status=status), Reply(text="ok"))
    completion = await client.complete(ask(fake, wire))
    assert completion.text == "ok"
    assert clock.sleeps == [0.375, 0.75]  # 0.5 * 2**n scaled by jitter 0.75 (rng 0.5)


async def test_retries_are_capped_by_max_retries(fake, client):
    fake.reply("m", Reply(status=503))
    with pytest.raises(ProviderError) as info:
        await client.complete(ask(fake, "openai", options={"max_retries": 2}))
    assert info.value.status == 503 and info.value.retryable
    assert len(fake.requests) == 3
    assert "fake-openai:m" in str(info.value) and "503" in str(info.value)


async def test_client_errors_are_not_retried(fake, client):
    fake.reply("m", Reply(status=400))
    with pytest.raises(ProviderError) as info:
        await client.complete(ask(fake, "anthropic"))
    assert info.value.status == 400 and not info.value.retryable
    assert "invalid_request_error" in str(info.value)
    assert len(fake.requests) == 1


async def test_connection_errors_are_retried(http, clock):
    closed = ProviderSettings("down", "openai", "http://127.0.0.1:9/v1", max_retries=2)
    client = ProviderClient(http, env={}, clock=clock, rng=lambda: 0.0)
    with pytest.raises(ProviderError, match="down:m: connection failed"):
        await client.complete(CompletionRequest(closed, "m", QUESTION))
    assert clock.sleeps == [0.25, 0.5]


async def test_anthropic_overloaded_event_before_output_is_retried(fake, client):
    fake.reply("m", Reply(text="ok", error_event="overloaded_error"), Reply(text="second try"))
    completion = await client.complete(ask(fake, "anthropic", stream=True))
    assert completion.text == "second try" and len(fake.requests) == 2


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("stream", [True, False])
async def test_malformed_json_is_a_clear_non_retryable_error(fake, client, wire, stream):
    fake.reply("m", Reply(text="some text", malformed=True))
    with pytest.raises(ProviderError, match="(not valid JSON|malformed)") as info:
        await client.complete(ask(fake, wire, stream=stream))
    assert not info.value.retryable
    assert len(fake.requests) == 1


@pytest.mark.parametrize("wire", WIRES)
async def test_stream_cut_after_output_is_not_retried(fake, client, wire):
    fake.reply(
        "m", Reply(text="a long answer that gets cut", chunk_chars=4, cut_after=4), Reply(text="again")
    )
    got = Collector()
    with pytest.raises(ProviderError, match="stream ended early") as info:
        await client.complete(ask(fake, wire, stream=True), got)
    assert got.pieces and not info.value.retryable
    assert len(fake.requests) == 1
    assert info.value.usage.source == "estimated" and info.value.usage.output > 0


async def test_stream_cut_before_output_is_retried(fake, client):
    fake.reply("m", Reply(text="answer", cut_after=1), Reply(text="answer"))
    got = Collector()
    completion = await client.complete(ask(fake, "openai", stream=True), got)
    assert completion.text == "answer" and got.pieces == ["answer"]
    assert len(fake.requests) == 2


async def test_on_text_errors_propagate_untouched_and_are_not_retried(fake, client):
    class Broken(Exception):
        pass

    async def sink(text: str) -> None:
        raise Broken("chat is gone")

    with pytest.raises(Broken):
        await client.complete(ask(fake, "openai", stream=True), sink)
    assert len(fake.requests) == 1


# --- deadlines -------------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
async def test_hanging_server_times_out_at_the_deadline(fake, http, wire):
    fake.reply("m", Reply(hang=True))
    clock = SystemClock()
    client = ProviderClient(http, env=ENV, clock=clock)
    started = clock.monotonic()
    with pytest.raises(ProviderTimeout):
        await client.complete(ask(fake, wire, stream=True, deadline=started + 0.3))
    assert 0.25 <= clock.monotonic() - started < 1.5


async def test_provider_timeout_caps_a_call_without_deadline(fake, http):
    fake.reply("m", Reply(delay=2))
    client = ProviderClient(http, env=ENV, clock=SystemClock())
    with pytest.raises(ProviderTimeout):
        await client.complete(ask(fake, "openai", options={"timeout": 0.2}))


# --- request shapes, keys, headers ---------------------------------------------------------------


async def test_openai_request_body(fake, client):
    messages = (
        Message("system", "sys"),
        Message("user", "weather?"),
        Message("assistant", "", (ToolCall("c1", "weather", '{"city": "Oslo"}'),)),
        Message("tool", "rainy", tool_call_id="c1", name="weather"),
    )
    await client.complete(
        ask(fake, "openai", messages=messages, tools=(WEATHER,), temperature=0.3, stream=True)
    )
    body = fake.requests[0].body
    assert fake.requests[0].path == "/v1/chat/completions"
    assert "max_tokens" not in body
    assert body["temperature"] == 0.3
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert "usage" not in body
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "rainy"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather of a city",
                "parameters": WEATHER.parameters,
            },
        }
    ]


async def test_max_tokens_only_when_set(fake, client):
    await client.complete(ask(fake, "openai", max_tokens=256))
    await client.complete(ask(fake, "openai"))
    await client.complete(ask(fake, "anthropic"))
    await client.complete(ask(fake, "anthropic", max_tokens=99))
    bodies = [r.body for r in fake.requests]
    assert bodies[0]["max_tokens"] == 256 and "max_tokens" not in bodies[1]
    assert "tools" not in bodies[1] and "temperature" not in bodies[1]
    assert bodies[2]["max_tokens"] == 8192 and bodies[3]["max_tokens"] == 99


async def test_anthropic_system_lifted_and_tool_results_merged(fake, client):
    messages = (
        Message("system", "You are terse."),
        Message("system", "Use tools."),
        Message("user", "Weather in Oslo and Bergen?"),
        Message(
            "assistant",
            "Looking.",
            (ToolCall("t1", "weather", '{"city": "Oslo"}'), ToolCall("t2", "weather", '{"city": "Bergen"}')),
        ),
        Message("tool", "rain", tool_call_id="t1"),
        Message("tool", "sun", tool_call_id="t2"),
    )
    await client.complete(ask(fake, "anthropic", messages=messages, tools=(WEATHER,)))
    rec = fake.requests[0]
    assert rec.path == "/v1/messages"
    assert rec.body["system"] == "You are terse.\n\nUse tools."
    assert rec.body["messages"] == [
        {"role": "user", "content": "Weather in Oslo and Bergen?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "t2", "name": "weather", "input": {"city": "Bergen"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "rain"},
                {"type": "tool_result", "tool_use_id": "t2", "content": "sun"},
            ],
        },
    ]


async def test_auth_headers(fake, client):
    await client.complete(ask(fake, "openai"))
    await client.complete(ask(fake, "anthropic"))
    keyless = CompletionRequest(ProviderSettings("local", "openai", fake.openai_base + "/"), "m", QUESTION)
    await client.complete(keyless)
    openai, anthropic, local = fake.requests
    assert openai.headers["Authorization"] == f"Bearer {KEY}" and "x-api-key" not in openai.headers
    assert anthropic.headers["x-api-key"] == KEY and "authorization" not in anthropic.headers
    assert anthropic.headers["anthropic-version"] == "2023-06-01"
    assert anthropic.headers["content-type"] == "application/json"
    assert "authorization" not in local.headers and local.path == "/v1/chat/completions"


@pytest.mark.parametrize("value", [None, "", "  "])
async def test_missing_api_key_names_the_variable(fake, http, value):
    env = {} if value is None else {"OPENAI_KEY": value}
    client = ProviderClient(http, env=env, clock=FakeClock())
    with pytest.raises(MissingApiKey, match="OPENAI_KEY"):
        await client.complete(ask(fake, "openai"))
    assert fake.requests == []


@pytest.mark.parametrize("wire", WIRES)
async def test_key_never_appears_in_errors(fake, http, wire):
    clock = FakeClock()
    client = ProviderClient(http, env=ENV, clock=clock)
    cases = [
        Reply(status=401),
        Reply(status=500),
        Reply(malformed=True),
        Reply(text="abcdefgh" * 4, cut_after=4),
        Reply(hang=True),
    ]
    for n, reply in enumerate(cases):
        fake.reply(f"m{n}", reply)
        with pytest.raises(ProviderError) as info:
            await client.complete(
                ask(
                    fake,
                    wire,
                    model=f"m{n}",
                    stream=n >= 3,
                    deadline=clock.monotonic() + 0.5,
                    options={"max_retries": 1},
                )
            )
        assert KEY not in str(info.value) and KEY not in repr(info.value.args)
        assert f"fake-{wire}:m{n}" in str(info.value)
    fake.reply("echo", Reply(status=401))
    with pytest.raises(ProviderError) as info:
        await client.complete(ask(fake, wire, model="echo"))
    assert "bad key" in str(info.value) and "***" in str(info.value) and "401" in str(info.value)
    assert KEY not in str(info.value)


# --- helpers and the fake itself ----------------------------------------------------------------


def test_retry_after_parses_seconds_and_http_dates():
    clock = FakeClock()
    assert retry_after_seconds("3", clock) == 3.0
    assert retry_after_seconds("0.5", clock) == 0.5
    assert retry_after_seconds("Wed, 01 Jan 2025 12:00:30 GMT", clock) == 30.0
    assert retry_after_seconds("Wed, 01 Jan 2025 11:00:00 GMT", clock) == 0.0
    assert retry_after_seconds("soon", clock) is None


async def test_concurrent_calls_share_the_client(fake, client):
    fake.barrier(20)
    results = await asyncio.gather(
        *(client.complete(ask(fake, WIRES[n % 2], model=f"m{n}", stream=True)) for n in range(20))
    )
    assert [r.text for r in results] == [f"answer from m{n}" for n in range(20)]
    assert len(fake.for_model("m3")) == 1
