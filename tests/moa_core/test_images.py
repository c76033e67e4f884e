"""Images in a turn: both wire formats (streamed and not), who sees them, stand-ins, estimates."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from moa_core.advisory import advisory_view, view_key, with_guidance
from moa_core.clock import SystemClock
from moa_core.engine import MoaEngine
from moa_core.images import can_see, estimated_tokens, for_model
from moa_core.providers.base import CompletionRequest
from moa_core.providers.client import ProviderClient
from moa_core.settings import EngineSettings, ProviderSettings
from moa_core.trace import TraceWriter
from moa_core.values import ImagePart, Message
from tests.fakes.provider_server import FakeProvider, Reply
from tests.moa_core.engine_kit import ENV, preset, providers

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # the wire does not look inside
PHOTO = ImagePart("photo.png", "image/png", PNG, 1280, 720, hashlib.sha256(PNG).hexdigest())
B64 = base64.b64encode(PNG).decode()


def seeing(fake: FakeProvider) -> dict[str, ProviderSettings]:
    return {
        **providers(fake),
        "eye": ProviderSettings("eye", "openai", fake.openai_base, "FAKE_OPENAI_KEY", vision=True),
        "aeye": ProviderSettings("aeye", "anthropic", fake.anthropic_base, "FAKE_ANTHROPIC_KEY", vision=True),
        "some": ProviderSettings("some", "openai", fake.openai_base, "FAKE_OPENAI_KEY",
                                 vision_models=("sees",)),
    }


def request(fake, provider: str, messages, stream: bool) -> CompletionRequest:
    return CompletionRequest(seeing(fake)[provider], "m", tuple(messages), stream=stream)


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_wire_sends_image_url_parts_with_a_data_url(fake, http, stream):
    client = ProviderClient(http, env=ENV, clock=SystemClock())
    completion = await client.complete(request(fake, "eye", [Message("user", "what is this?", images=(PHOTO,))],
                                               stream))
    assert completion.text == "answer from m"
    (message,) = fake.requests[0].body["messages"]
    assert message == {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}},
        ],
    }
    sent = message["content"][1]["image_url"]["url"].split(",", 1)[1]
    assert base64.b64decode(sent) == PNG


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_wire_sends_base64_image_blocks_before_the_text(fake, http, stream):
    client = ProviderClient(http, env=ENV, clock=SystemClock())
    await client.complete(request(fake, "aeye", [Message("system", "s"),
                                                 Message("user", "what is this?", images=(PHOTO,))], stream))
    body = fake.requests[0].body
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}},
                {"type": "text", "text": "what is this?"},
            ],
        }
    ]


@pytest.mark.parametrize("wire", ["eye", "aeye"])
async def test_an_image_without_its_bytes_goes_as_text_on_both_wires(fake, http, wire):
    client = ProviderClient(http, env=ENV, clock=SystemClock())
    described = ImagePart("old.jpg", "image/jpeg", b"", 640, 480)
    await client.complete(request(fake, wire, [Message("user", "and now?", images=(described,))], False))
    (message,) = fake.requests[0].body["messages"]
    assert message["content"] == "and now?\n[image: old.jpg, 640×480, shown in an earlier turn, not kept]"


def test_for_model_gives_a_model_that_cannot_see_a_stand_in():
    (text_only,) = for_model([Message("user", "what is this?", images=(PHOTO,))], sees=False)
    assert text_only.images == ()
    assert text_only.content == "what is this?\n[image: photo.png, 1280×720, not visible to you]"
    (seen,) = for_model([Message("user", "what is this?", images=(PHOTO,))], sees=True)
    assert seen.images == (PHOTO,) and seen.content == "what is this?"


def test_vision_is_declared_per_provider_or_per_model(fake):
    settings = seeing(fake)
    assert can_see(settings["eye"], "anything")
    assert can_see(settings["some"], "sees") and not can_see(settings["some"], "blind")
    assert not can_see(settings["oa"], "gpt-4o")


def test_advisory_view_keeps_images_with_their_user_turn_and_the_key_tells_them_apart():
    convo = [Message("user", "", images=(PHOTO,)), Message("user", "what is this?")]
    (turn,) = advisory_view(convo)
    assert turn.images == (PHOTO,) and turn.content == "what is this?"
    without = advisory_view([Message("user", "what is this?")])
    assert view_key((turn,), "p", ["a"]) != view_key(without, "p", ["a"])
    (guided,) = with_guidance((turn,), "<advice/>")
    assert guided.images == (PHOTO,) and guided.content.endswith("<advice/>")


def test_image_token_estimate_uses_the_size_and_errs_high_without_it():
    assert estimated_tokens(ImagePart("a", "image/png", b"x", 750, 100)) == 100
    assert estimated_tokens(ImagePart("a", "image/png", b"x", 4000, 3000)) == 1600
    assert estimated_tokens(ImagePart("a", "image/png", b"x")) == 1600


async def test_unreported_usage_of_an_image_call_is_estimated_with_the_image(fake, http):
    client = ProviderClient(http, env=ENV, clock=SystemClock())
    fake.reply("m", Reply(text="a cat", send_usage=False), Reply(text="a cat", send_usage=False))
    with_image = await client.complete(request(fake, "eye", [Message("user", "q", images=(PHOTO,))], False))
    without = await client.complete(request(fake, "eye", [Message("user", "q")], False))
    assert with_image.usage.source == "estimated"
    assert with_image.usage.input == without.usage.input + estimated_tokens(PHOTO)


def _engine(fake, http, *presets_, trace_dir=None) -> MoaEngine:
    clock = SystemClock()
    settings = EngineSettings(providers=seeing(fake), presets={p.name: p for p in presets_},
                              save_traces=trace_dir is not None, trace_dir=str(trace_dir or "traces"))
    return MoaEngine(settings, ProviderClient(http, env=ENV, clock=clock), tools={}, clock=clock,
                     tracer=TraceWriter(trace_dir, clock) if trace_dir is not None else None)


@pytest.mark.parametrize("stream", [False, True])
async def test_the_vision_reference_gets_the_bytes_the_text_reference_a_stand_in(fake, http, tmp_path, stream):
    p = preset(refs=("eye:ref-eye", "oa:ref-text"), agg="aeye:agg", stream=stream)
    moa = _engine(fake, http, p, trace_dir=tmp_path)
    result = await moa.run_turn("p", [Message("user", "what is this?", images=(PHOTO,))])

    eye_user = fake.for_model("ref-eye")[0].body["messages"][-1]
    assert eye_user["content"][1]["image_url"]["url"] == f"data:image/png;base64,{B64}"
    text_user = fake.for_model("ref-text")[0].body["messages"][-1]
    assert text_user["content"] == "what is this?\n[image: photo.png, 1280×720, not visible to you]"
    agg_blocks = fake.for_model("agg")[0].body["messages"][-1]["content"]
    assert agg_blocks[0]["source"]["data"] == B64
    assert [r.saw_images for r in result.references] == [True, False]
    # Traces describe the image; they never hold its bytes.
    trace = (tmp_path / next(p.name for p in tmp_path.iterdir())).read_text()
    assert B64 not in trace and json.loads(trace.splitlines()[0])["aggregator"]["input"][-1]["images"][0] == {
        "name": "photo.png", "media_type": "image/png", "bytes": len(PNG), "sha256": PHOTO.digest,
    }


async def test_an_aggregator_that_cannot_see_gets_the_stand_in_and_no_image_means_no_mark(fake, http):
    moa = _engine(fake, http, preset(refs=("eye:ref-eye",), agg="oa:agg"))
    await moa.run_turn("p", [Message("user", "what is this?", images=(PHOTO,))], session="a")
    assert "not visible to you" in fake.for_model("agg")[0].body["messages"][-1]["content"]
    result = await moa.run_turn("p", [Message("user", "hello")], session="b")
    assert result.references[0].saw_images is None
