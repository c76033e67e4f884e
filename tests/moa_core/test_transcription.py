"""Transcriber against the fake provider's /audio/transcriptions: the form, usage, prices, failures."""

from __future__ import annotations

import pytest

from moa_core.clock import SystemClock
from moa_core.settings import ProviderSettings
from moa_core.transcription import Transcriber, TranscriptionFailed

KEY = "sk-transcribe-SECRET"


def transcriber(fake, http, **kw) -> Transcriber:
    provider = ProviderSettings("stt", "openai", fake.openai_base, "STT_KEY", price_in_per_mtok=1.0,
                                price_out_per_mtok=2.0)
    return Transcriber(http, provider, "whisper-1", env={"STT_KEY": KEY}, clock=SystemClock(), **kw)


async def test_the_audio_goes_as_a_multipart_file_and_token_usage_is_priced(fake, http):
    fake.transcript("whisper-1", " hello there ", usage={"type": "tokens", "input_tokens": 100, "output_tokens": 5})
    got = await transcriber(fake, http).transcribe(b"OggS-audio", "voice.ogg", "audio/ogg")
    [sent] = fake.transcriptions
    assert (sent.data, sent.filename, sent.content_type, sent.authorization) == (
        b"OggS-audio", "voice.ogg", "audio/ogg", f"Bearer {KEY}")
    assert got.text == "hello there"
    call = got.call
    assert (call.role, call.provider, call.model, call.status) == ("transcription", "stt", "whisper-1", "ok")
    assert (call.usage.input, call.usage.output) == (100, 5)
    assert call.cost.usd == pytest.approx(100 / 1e6 + 5 * 2 / 1e6) and call.cost.source == "config"


async def test_seconds_are_priced_per_minute_when_configured_else_unknown(fake, http):
    fake.transcript("whisper-1", "hi", usage={"type": "duration", "seconds": 30})
    priced = await transcriber(fake, http, price_per_minute=0.006).transcribe(b"a", "a.mp3", "audio/mpeg")
    assert priced.call.cost.usd == pytest.approx(0.003) and priced.call.cost.source == "config"
    fake.transcript("whisper-1", "hi")
    unknown = await transcriber(fake, http).transcribe(b"a", "a.mp3", "audio/mpeg")
    assert unknown.call.cost.usd is None and unknown.call.usage.source == "unknown"


async def test_a_failure_is_a_failed_call_record_without_the_key(fake, http):
    fake.transcript("whisper-1", "", status=401)
    with pytest.raises(TranscriptionFailed) as caught:
        await transcriber(fake, http).transcribe(b"a", "a.ogg", "audio/ogg")
    assert caught.value.call.status == "failed" and "HTTP 401" in str(caught.value)
    assert KEY not in str(caught.value)
