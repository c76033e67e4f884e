"""Fixtures shared by the end-to-end tests: a fake model provider, a fake Telegram, and real
gateway processes that are killed at the end whatever happened."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.kit import GatewayProcess
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


@pytest.fixture
async def spawn():
    """Start `moa-gateway run` processes; every one is killed at the end, whatever happened."""
    started: list[GatewayProcess] = []

    async def start(config: Path, name: str) -> GatewayProcess:
        process = GatewayProcess(config, name)
        started.append(process)
        return await process.start()

    yield start
    for process in started:
        await process.kill()
