"""settle_heap, checked in a child process so the test process's own collector is untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import gc, json
from genai_prices import data_snapshot
from gateway.heap import YOUNG_COLLECTION_THRESHOLD, settle_heap
before = gc.get_freeze_count()
settle_heap()
snapshot = data_snapshot.get_snapshot()
print(json.dumps({
    "before": before,
    "frozen": gc.get_freeze_count(),
    "threshold": gc.get_threshold(),
    "expected": YOUNG_COLLECTION_THRESHOLD,
    "table_frozen": not gc.is_tracked(snapshot) or snapshot not in gc.get_objects(),
}))
"""


def test_settle_heap_freezes_start_up_objects_and_spaces_young_collections():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
    probe = json.loads(out.stdout)
    assert probe["frozen"] - probe["before"] > 10_000  # SDKs and the price table, not a handful
    assert probe["threshold"][0] == probe["expected"] > 700
    assert probe["table_frozen"]  # loaded before the freeze, so out of the collector's view


BURST = """
import asyncio, gc, json, subprocess, sys
from gateway.heap import settle_heap
from moa_core.clock import SystemClock
from moa_core.engine import MoaEngine
from moa_core.providers.client import ProviderClient
from moa_core.providers.http import make_http_client
from moa_core.settings import EngineSettings, Preset, ProviderSettings, Slot
from moa_core.values import Message

fake = subprocess.Popen([sys.executable, "bench/fake_provider_process.py"], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, text=True)
url = fake.stdout.readline().strip()

async def main():
    http = make_http_client()
    provider = ProviderSettings("p", "openai", url + "/v1", None, max_retries=0)
    # Answers 100 ms late: every call of the round is in flight at once, as at a real burst.
    preset = Preset("p", tuple(Slot("p", f"ref{i}-100") for i in range(4)), Slot("p", "agg-100"), max_steps=1)
    clock = SystemClock()
    engine = MoaEngine(EngineSettings({"p": provider}, {"p": preset}, max_concurrent_references=64),
                       ProviderClient(http, env={}, clock=clock), tools={}, clock=clock)
    async def round_(first):
        results = await asyncio.gather(*(engine.run_turn("p", [Message("user", f"q{first + i}")],
                                                         session=f"s{first + i}") for i in range(200)))
        assert all(r.error is None for r in results)
    await round_(0)  # connections opened, caches filled: what a running gateway holds already
    young = gc.get_stats()[0]["collections"]
    await round_(1000)
    await http.aclose()
    return gc.get_stats()[0]["collections"] - young

settle_heap()
gc.collect(0)  # the round starts from an empty young generation, as between bursts
try:
    print(json.dumps({"young_collections": asyncio.run(main())}))
finally:
    fake.stdin.close()
    fake.wait(timeout=10)
"""


def test_a_burst_of_200_turns_of_4_references_triggers_no_young_collection():
    # Each young collection walks every young object, and in a burst those are the calls in
    # flight (about 60k objects for 200 turns x 4 references): a collection mid-burst is pure
    # cost, as nearly all of them are still alive.
    out = subprocess.run([sys.executable, "-c", BURST], cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"young_collections": 0}
