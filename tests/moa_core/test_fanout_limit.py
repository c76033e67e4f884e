"""A fan-out asks at most `max_concurrent` references at once; under the limit, all at once."""

from __future__ import annotations

import asyncio

import pytest

from moa_core.clock import SystemClock
from moa_core.fanout import fan_out
from moa_core.settings import Preset, ProviderSettings, Slot
from moa_core.values import Completion, Message, Usage


class CountingClient:
    """A ModelClient that notes the most calls it had in flight at one time."""

    honours_deadline = True

    def __init__(self) -> None:
        self.running = self.most = 0

    async def complete(self, request, on_text=None) -> Completion:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.02)
        finally:
            self.running -= 1
        return Completion(f"advice from {request.model}", (), "stop", Usage(input=1, output=1))


async def nothing(result) -> None:
    pass


@pytest.mark.parametrize(("references", "limit", "most"), [(4, 2, 2), (4, 4, 4), (3, 8, 3), (2, 0, 1)])
async def test_references_in_flight_never_exceed_the_limit(references, limit, most):
    providers = {"p": ProviderSettings("p", "openai", "http://127.0.0.1:9/v1", price_in_per_mtok=0,
                                       price_out_per_mtok=0)}
    preset = Preset("x", tuple(Slot("p", f"ref-{i}") for i in range(references)), Slot("p", "agg"))
    client = CountingClient()
    outcome = await fan_out(client=client, providers=providers, preset=preset, view=[Message("user", "q")],
                            step=1, clock=SystemClock(), max_concurrent=limit, on_result=nothing)
    assert [r.text for r in outcome.results] == [f"advice from ref-{i}" for i in range(references)]
    assert client.most == most
