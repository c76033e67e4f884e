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
