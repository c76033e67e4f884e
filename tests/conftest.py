"""Fixtures for every test folder: the storage backends (see tests/backends.py), the loopback
fake model provider (`fake`) and the pooled HTTP client the engine uses (`http`). A test module
may define its own `fake` (a platform's fake server), which then takes precedence."""

import pytest

from moa_core.providers.http import make_http_client
from tests.backends import backend, pg_database
from tests.fakes.provider_server import FakeProvider

__all__ = ["backend", "fake", "http", "pg_database"]


@pytest.fixture
async def fake():
    async with FakeProvider() as server:
        yield server


@pytest.fixture
async def http():
    client = make_http_client()
    yield client
    await client.aclose()
