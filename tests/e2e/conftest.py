"""Fixtures shared by the end-to-end tests: a fake model provider and a fake Telegram."""

from __future__ import annotations

import pytest

from tests.fakes.provider_server import FakeProvider
from tests.fakes.telegram_server import FakeTelegram


@pytest.fixture
async def provider():
    async with FakeProvider() as server:
        yield server


@pytest.fixture
async def telegram():
    server = FakeTelegram()
    await server.start()
    yield server
    await server.stop()
